//! The plugin datastore (the RFC's `@sovereign/db-plugins`).
//!
//! This crate never sees `core.db`: it depends on `sovereign-db` only, and a test in `sv`
//! checks that through `cargo metadata`.

pub mod fence;
pub mod manifest;
pub mod mirror;
mod plugin_db;
mod trusted;
pub mod value;

use std::path::{Path, PathBuf};

pub use manifest::{DatabaseMode, Limits, Manifest, ManifestError};
pub use plugin_db::{
    FenceError, MAX_RESULT_BYTES, MAX_RESULT_ROWS, Outcome, PluginDb, PluginDbConfig,
    StoreLocation, denial_counts,
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
    /// A SQLite failure in the store's own (trusted) operations.
    #[error("plugin store: {0}")]
    Sqlite(String),
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

/// The migration scope of plugin `id` in `_sv_migrations`.
pub fn migration_scope(id: &str) -> String {
    format!("plugin:{id}")
}

/// Opens (creating if needed) the shared plugin store and checks it is one: a file marked
/// as the core store is refused, so plugin migrations can never land in `core.db`.
pub fn open_shared_store(path: &Path) -> Result<Connection, PluginStoreError> {
    let conn = sovereign_db::open_database(path, &OpenOptions::plugins())?;
    sovereign_db::store::claim(&conn, &StoreKind::Plugins)?;
    Ok(conn)
}

/// The migrations of plugin `id`, read from `<plugins_dir>/<id>/migrations/`.
pub fn plugin_migrations(plugins_dir: &Path, id: &str) -> Result<MigrationSet, PluginStoreError> {
    if !is_valid_plugin_id(id) {
        return Err(PluginStoreError::BadId(id.to_owned()));
    }
    Ok(MigrationSet::from_dir(
        &migration_scope(id),
        &plugins_dir.join(id).join("migrations"),
    )?)
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
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if !is_valid_plugin_id(&id) {
            return Err(PluginStoreError::BadId(id));
        }
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
    fn the_core_store_cannot_be_opened_as_the_plugin_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core.db");
        let conn = sovereign_db::open_database(&path, &OpenOptions::core()).unwrap();
        sovereign_db::store::claim(&conn, &StoreKind::Core).unwrap();
        let err = open_shared_store(&path).unwrap_err();
        assert!(matches!(err, PluginStoreError::Store(_)), "{err}");
    }
}
