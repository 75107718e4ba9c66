//! The plugin datastore (the RFC's `@sovereign/db-plugins`).
//!
//! This crate never sees `core.db`: it depends on `sovereign-db` only, and a test in `sv`
//! checks that through `cargo metadata`.

pub mod deadline;
pub mod fence;
mod fenced;
mod functions;
pub mod manifest;
pub mod mirror;
mod plugin_db;
pub mod sql_lex;
pub mod system;
mod trusted;
pub mod value;

use std::path::{Path, PathBuf};

pub use fenced::{FencedConnection, OutboxEvent};
pub use manifest::{Backend, DatabaseMode, Limits, Manifest, ManifestError};
pub use plugin_db::{
    CursorId, FenceError, MAX_NESTING, MAX_OPEN_CURSORS, MAX_RESULT_ROWS, Outcome, PluginDb,
    PluginDbConfig, StoreLocation, denial_counts, limit_sqlite_heap,
};
pub use trusted::TrustedPluginStore;
pub use value::SqlValue;

use sovereign_db::rusqlite::Connection;
use sovereign_db::{MigrationError, MigrationSet, OpenError, OpenOptions, StoreError, StoreKind};

/// Errors of the plugin store.
#[derive(Debug, thiserror::Error)]
pub enum PluginStoreError {
    /// Opening a file failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The file is not the store it should be (for example `core.db`).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A migration problem.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// A plugin id is malformed.
    #[error(
        "{0:?} is not a valid plugin id: use 1 to 32 lowercase ASCII letters, digits and single \
         underscores, starting with a letter (no `__`, no trailing `_`)"
    )]
    BadId(String),
    /// A plugin id is well formed but reserved.
    #[error("{id:?} cannot be a plugin id: {why}")]
    ReservedId {
        /// The id.
        id: String,
        /// Why it is reserved.
        why: String,
    },
    /// A SQLite failure in the store's own (trusted) operations. SQLite's error is kept
    /// whole (its code tells the kind); its message is part of this one, once.
    #[error("plugin store: {0}")]
    Sqlite(sovereign_db::rusqlite::Error),
    /// The operation would overwrite or lose data; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The mirror's bookkeeping cannot be read.
    #[error("the mirror's bookkeeping is unreadable: {0}; rebuild it with `sv sync:run --full`")]
    MirrorState(String),
    /// A manifest problem.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The plugins directory could not be read.
    #[error("cannot read plugins directory {path}: {source}")]
    ReadDir {
        /// Directory.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
}

impl From<sovereign_db::rusqlite::Error> for PluginStoreError {
    fn from(e: sovereign_db::rusqlite::Error) -> Self {
        PluginStoreError::Sqlite(e)
    }
}

/// Whether `id` is a valid plugin id: lowercase ASCII letters, digits and single
/// underscores, starting with a letter, at most 32 characters, no `__`, not ending in `_`.
pub fn is_valid_plugin_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('_')
        && !id.contains("__")
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Ids whose namespace (`<id>__`) or name the platform or SQLite itself owns.
const RESERVED_IDS: &[(&str, &str)] = &[
    (
        "core",
        "its namespace `core__` holds the mirror of core data",
    ),
    (
        "sv",
        "`sv` and `_sv_` names belong to the platform's bookkeeping",
    ),
    (
        "sqlite",
        "SQLite reserves every name starting with `sqlite_`",
    ),
    ("main", "`main` is the name of SQLite's main schema"),
    ("temp", "`temp` is the name of SQLite's temporary schema"),
    (
        "temporary",
        "`temporary` is a SQLite keyword naming the temporary schema",
    ),
    (
        "mirror",
        "`mirror` is the schema isolated plugins read the mirror from",
    ),
    ("pragma", "`pragma_` names are SQLite's pragma functions"),
    ("dbstat", "`dbstat` is SQLite's storage statistics table"),
];

/// Prefixes (`<prefix>_...`) of ids whose namespace would collide with SQLite or the
/// platform: `sqlite_x__t` is a name SQLite reserves, `pragma_x` a pragma function, `sv_`
/// and `core_` are kept for the platform.
const RESERVED_ID_PREFIXES: &[&str] = &["sqlite_", "pragma_", "sv_", "core_"];

/// Why `id` may not be a plugin id although it is well formed, if it is reserved. Ids
/// are compared without regard to case, as SQLite compares names.
pub fn reserved_id(id: &str) -> Option<String> {
    let lower = id.to_ascii_lowercase();
    if let Some((name, why)) = RESERVED_IDS.iter().find(|(name, _)| *name == lower) {
        return Some(format!("the id {name:?} is reserved: {why}"));
    }
    if lower.starts_with('_') {
        return Some("ids starting with `_` are reserved for the platform".into());
    }
    RESERVED_ID_PREFIXES
        .iter()
        .find(|prefix| lower.starts_with(*prefix))
        .map(|prefix| format!("ids starting with `{prefix}` are reserved: their namespace would collide with names SQLite or the platform owns"))
}

/// Whether `id` may be installed: well formed and not reserved.
pub fn is_installable_plugin_id(id: &str) -> bool {
    is_valid_plugin_id(id) && reserved_id(id).is_none()
}

/// Checks that `id` is well formed and not reserved.
pub fn check_plugin_id(id: &str) -> Result<(), PluginStoreError> {
    if !is_valid_plugin_id(id) {
        return Err(PluginStoreError::BadId(id.to_owned()));
    }
    match reserved_id(id) {
        Some(why) => Err(PluginStoreError::ReservedId {
            id: id.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// The migration scope of plugin `id` in `_sv_migrations`.
pub fn migration_scope(id: &str) -> String {
    format!("plugin:{id}")
}

/// Opens (creating if needed) the shared plugin store and checks it is one: a file marked
/// as the core store is refused, so plugin migrations can never land in `core.db`.
pub fn open_shared_store(path: &Path) -> Result<Connection, PluginStoreError> {
    let conn = sovereign_db::open_database(path, &OpenOptions::plugins())?;
    sovereign_db::store::claim(&conn, &StoreKind::Plugins)?;
    system::prepare(&conn)?;
    Ok(conn)
}

/// The migrations of plugin `id`, read from `<plugins_dir>/<id>/migrations/`.
pub fn plugin_migrations(plugins_dir: &Path, id: &str) -> Result<MigrationSet, PluginStoreError> {
    plugin_migrations_for(plugins_dir, id, Backend::Sqlite)
}

/// The migrations of plugin `id` for `backend`: `<plugins_dir>/<id>/migrations/`, or its
/// backend's subdirectory (`migrations/postgres/`).
pub fn plugin_migrations_for(
    plugins_dir: &Path,
    id: &str,
    backend: Backend,
) -> Result<MigrationSet, PluginStoreError> {
    check_plugin_id(id)?;
    let mut dir = plugins_dir.join(id).join("migrations");
    if let Some(subdir) = backend.migrations_subdir() {
        dir.push(subdir);
    }
    Ok(MigrationSet::from_dir(&migration_scope(id), &dir)?)
}

/// The plugin packages found in `plugins_dir`: every subdirectory with a `plugin.json` or
/// a `migrations/` directory, by id. A missing directory has none.
pub fn discover_plugins(plugins_dir: &Path) -> Result<Vec<String>, PluginStoreError> {
    let read_err = |source| PluginStoreError::ReadDir {
        path: plugins_dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(plugins_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(read_err(e)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let path = entry.map_err(read_err)?.path();
        if !(path.join("plugin.json").is_file() || path.join("migrations").is_dir()) {
            continue;
        }
        // A directory whose name is not UTF-8 cannot be a plugin id: say so.
        let Some(id) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            return Err(PluginStoreError::BadId(path.display().to_string()));
        };
        check_plugin_id(&id)?;
        ids.push(id);
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_ids_follow_the_manifest_rules() {
        for ok in ["tasks", "a", "my_plugin2", "x1_y2_z3"] {
            assert!(is_valid_plugin_id(ok), "{ok}");
        }
        for bad in [
            "",
            "Tasks",
            "1tasks",
            "_x",
            "x_",
            "a__b",
            "core-x",
            "a b",
            &"a".repeat(33),
        ] {
            assert!(!is_valid_plugin_id(bad), "{bad}");
        }
    }

    #[test]
    fn ids_that_collide_with_platform_or_sqlite_names_are_reserved() {
        for reserved in [
            "core",
            "CORE",
            "Core",
            "sv",
            "_sv",
            "_x",
            "sqlite",
            "sqlite_x",
            "main",
            "temp",
            "mirror",
            "pragma",
            "pragma_table",
            "dbstat",
            "sv_x",
            "core_users",
        ] {
            assert!(reserved_id(reserved).is_some(), "{reserved}");
            assert!(!is_installable_plugin_id(reserved), "{reserved}");
        }
        for ok in [
            "tasks",
            "notes",
            "coreutils",
            "svelte",
            "maintenance",
            "temperature",
        ] {
            assert_eq!(reserved_id(ok), None, "{ok}");
            assert!(is_installable_plugin_id(ok), "{ok}");
        }
    }

    #[test]
    fn the_core_store_cannot_be_opened_as_the_plugin_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core.db");
        let conn = sovereign_db::open_database(&path, &OpenOptions::core()).unwrap();
        sovereign_db::store::claim(&conn, &StoreKind::Core).unwrap();
        let err = open_shared_store(&path).unwrap_err();
        assert!(matches!(err, PluginStoreError::Store(_)), "{err}");
    }
}
