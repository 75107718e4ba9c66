//! Operating the dual-file layout on production data: consistent online backups with a
//! manifest, verification, restores that never lose the files they replace, the split of
//! a legacy single-file install, and plugin data inspection and purging.
//!
//! Nothing here deletes an operator's data: replaced files are moved aside, purges write
//! a backup first, sources are opened read-only.

pub mod backup;
pub mod inspect;
pub mod my_backup;
pub mod my_store;
pub mod my_table_copy;
pub mod pg_backup;
pub mod restore;
pub mod split;
pub mod table_copy;

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A sortable timestamp for directory names (UTC, milliseconds).
pub fn stamp() -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(FORMAT)
        .expect("the format has only numeric fields")
}

/// Now, as SQLite's `strftime('%Y-%m-%dT%H:%M:%fZ')` writes it (UTC, milliseconds).
pub(crate) fn now_rfc3339() -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(FORMAT)
        .expect("the format has only numeric fields")
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A problem an operator must fix first; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// A backup failed verification; nothing was changed.
    #[error("the backup at {dir} failed verification:{}", problems.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
    Invalid {
        /// The backup directory.
        dir: PathBuf,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// File system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// SQLite.
    #[error("{context}: {error}")]
    Sqlite {
        /// What was being done.
        context: String,
        /// The error (its message is part of this error's, once: not a source).
        error: sovereign_db::rusqlite::Error,
    },
    /// The plugin store.
    #[error(transparent)]
    Plugins(#[from] sovereign_db_plugins::PluginStoreError),
    /// The core store.
    #[error(transparent)]
    Core(#[from] sovereign_db_core::CoreError),
    /// Sync.
    #[error(transparent)]
    Sync(#[from] sovereign_sync::SyncError),
    /// A PostgreSQL store or one of PostgreSQL's client programs.
    #[error(transparent)]
    Postgres(#[from] sovereign_postgres::PgError),
    /// A MySQL store or one of MySQL's client programs.
    #[error(transparent)]
    Mysql(#[from] sovereign_mysql::MyError),
}

/// Creates `dir` (and its parents) readable by its owner only.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), OpsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("restricting {}", dir.display())))
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> OpsError {
    let context = context.into();
    move |source| OpsError::Io { context, source }
}

pub(crate) fn sqlite(
    context: impl Into<String>,
) -> impl FnOnce(sovereign_db::rusqlite::Error) -> OpsError {
    let context = context.into();
    move |error| OpsError::Sqlite { context, error }
}

/// Hex SHA-256 and size of a file.
pub fn file_digest(path: &Path) -> Result<(String, u64), OpsError> {
    let mut file = std::fs::File::open(path).map_err(io(format!("reading {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// The database files of one installation.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `core.db`.
    pub core: PathBuf,
    /// The shared plugin store.
    pub plugins: PathBuf,
    /// The directory of isolated plugin files.
    pub isolated_dir: PathBuf,
    /// The mirror's own file in the read-only ATTACH layout.
    pub mirror_file: Option<PathBuf>,
    /// The data directory (lock file, journals, default backup place).
    pub data_dir: PathBuf,
}

impl Layout {
    /// The isolated plugin files that exist, as `(id, path)`.
    pub fn isolated_files(&self) -> Result<Vec<(String, PathBuf)>, OpsError> {
        isolated_files_in(&self.isolated_dir)
    }
}

/// The SQLite plugin store files alone (what inspecting, purging and vacuuming plugin
/// data work on, whichever backend the core store is on).
#[derive(Debug, Clone)]
pub struct PluginFiles {
    /// The shared plugin store.
    pub plugins: PathBuf,
    /// The directory of isolated plugin files.
    pub isolated_dir: PathBuf,
    /// The mirror's own file in the read-only ATTACH layout.
    pub mirror_file: Option<PathBuf>,
}

impl PluginFiles {
    /// The isolated plugin files that exist, as `(id, path)`.
    pub fn isolated_files(&self) -> Result<Vec<(String, PathBuf)>, OpsError> {
        isolated_files_in(&self.isolated_dir)
    }
}

/// The plugin files (`<id>.db`) in `isolated_dir`, as `(id, path)`, by id.
fn isolated_files_in(isolated_dir: &Path) -> Result<Vec<(String, PathBuf)>, OpsError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(isolated_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(format!("listing {}", isolated_dir.display()))(e)),
    };
    for entry in entries {
        let path = entry.map_err(io("listing isolated plugin files"))?.path();
        if let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".db"))
            .filter(|id| sovereign_db_plugins::is_installable_plugin_id(id))
        {
            out.push((id.to_owned(), path));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes a database file with its `-wal` and `-shm`.
pub(crate) fn remove_db_files(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
