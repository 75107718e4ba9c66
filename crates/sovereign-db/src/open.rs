//! The one place that opens a SQLite file with Sovereign's settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How to open a database file.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Create the file (and missing parent directories) if it does not exist.
    pub create: bool,
    /// Unix permission bits for a newly created file (and so for its `-wal`/`-shm`,
    /// which SQLite creates with the main file's mode).
    pub file_mode: u32,
    /// Open read-only (no WAL switch, no writes).
    pub read_only: bool,
    /// How long a statement waits for another connection's lock before `SQLITE_BUSY`.
    pub busy_timeout: Duration,
}

impl OpenOptions {
    /// Options for the kernel's `core.db`: created owner-only (0600).
    pub fn core() -> Self {
        Self {
            create: true,
            file_mode: 0o600,
            read_only: false,
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// Options for the plugin store: created 0600 as well; nobody but the platform's
    /// user has business reading plugin data either.
    pub fn plugins() -> Self {
        Self::core()
    }

    /// Opens an existing file only, never creating it.
    pub fn existing(mut self) -> Self {
        self.create = false;
        self
    }

    /// Opens read-only (implies not creating).
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self.create = false;
        self
    }

    /// Sets the busy timeout.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }
}

/// Why a database file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file does not exist and creation was not requested.
    #[error("database file {0} does not exist (run `sv dev` or `sv migrate:deploy` to create it)")]
    Missing(PathBuf),
    /// A directory or the file itself could not be created.
    #[error("cannot create {path}: {source}")]
    Create {
        /// The path that could not be created.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The database (or its directory, `-wal` or `-shm`) cannot be written by this
    /// process, and it was opened for writing.
    #[error(
        "{what} is not writable by this process (a leftover of a run as another user, or a \
         read-only directory?): fix its owner or mode (`chmod 600`), or remove a stale -shm \
         or empty -wal while the platform is stopped; read-only commands (`sv migrate:status`, \
         `sv doctor`, `sv backup`, `sv sync:status`) still work"
    )]
    NotWritable {
        /// The database file.
        path: PathBuf,
        /// Which file or directory, in words.
        what: String,
    },
    /// SQLite refused to open the file or to apply a setting.
    #[error("cannot open SQLite database {path}: {reason}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error code, when it gave one.
        code: Option<rusqlite::ErrorCode>,
        /// What went wrong and, where we can tell, what to do (SQLite's message is
        /// part of it, once).
        reason: String,
    },
}

/// SQLite's message for `error`, and for the failures an operator can fix, which file
/// and what to do: a file that is not a database, or a file or directory this process
/// may not write.
fn describe(path: &Path, error: &rusqlite::Error) -> String {
    let message = match error {
        rusqlite::Error::SqliteFailure(_, Some(message)) => message.clone(),
        other => other.to_string(),
    };
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => format!(
            "{message}: the file is not a SQLite database (or is damaged); check the URL, or restore it with `sv restore`"
        ),
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen) => {
            match unwritable(path) {
                Some(which) => format!(
                    "{message}: {which} is not writable by this process; fix its owner or mode, \
                     or use a read-only command (`sv migrate:status`, `sv doctor`, `sv backup`)"
                ),
                None => message,
            }
        }
        _ => message,
    }
}

/// The first of the database's directory, file, `-wal` and `-shm` that exists and
/// that this process may not write, in words (`the file data/core.db-shm`).
pub fn unwritable(path: &Path) -> Option<String> {
    let writable = |p: &Path| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut candidates = vec![
        (
            dir.to_path_buf(),
            format!("the directory {}", dir.display()),
        ),
        (path.to_path_buf(), format!("the file {}", path.display())),
    ];
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        candidates.push((side.clone(), format!("the file {}", side.display())));
    }
    candidates
        .into_iter()
        .find(|(p, _)| p.exists() && !writable(p))
        .map(|(_, what)| what)
}

/// Opens `path` with WAL journaling, `synchronous=NORMAL`, foreign keys on and a busy
/// timeout.
///
/// `synchronous=NORMAL` is deliberate: in WAL mode it never corrupts the database and
/// keeps every committed transaction across an application crash; only a power loss or
/// OS crash may roll back the last transactions before the next checkpoint. That is the
/// usual trade for a server on SQLite and keeps commits off `fsync`.
pub fn open_database(path: &Path, options: &OpenOptions) -> Result<Connection, OpenError> {
    let sqlite_err = |source: rusqlite::Error| OpenError::Sqlite {
        path: path.to_owned(),
        code: source.sqlite_error_code(),
        reason: describe(path, &source),
    };
    if !path.exists() {
        if !options.create {
            return Err(OpenError::Missing(path.to_owned()));
        }
        create_private_file(path, options.file_mode)?;
    }
    // SQLite would quietly open a write-protected file read-only, or fail on the first
    // write because of a stale read-only -shm: say which file at once instead.
    if !options.read_only
        && let Some(what) = unwritable(path)
    {
        return Err(OpenError::NotWritable {
            path: path.to_owned(),
            what,
        });
    }
    // URI filenames let trusted code ATTACH another file read-only (`file:...?mode=ro`).
    let flags = if options.read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let mut conn = Connection::open_with_flags(path, flags).map_err(sqlite_err)?;
    if options.read_only
        && let Err(e) = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
    {
        // A WAL database in a directory this process cannot write: readers need the
        // `-shm` index, which cannot be created. Without a `-wal` (a clean shutdown)
        // the file alone is the whole database and can be read as immutable.
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let cannot_write = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
        );
        if !(cannot_write && std::fs::metadata(&wal).map_or(true, |m| m.len() == 0)) {
            return Err(sqlite_err(e));
        }
        tracing::debug!(path = %path.display(), "reading as immutable: no -shm can be created");
        conn = Connection::open_with_flags(immutable_uri(path), flags).map_err(sqlite_err)?;
    }
    conn.busy_timeout(options.busy_timeout)
        .map_err(sqlite_err)?;
    if !options.read_only {
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(sqlite_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "could not switch to WAL journaling");
        }
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
        .map_err(sqlite_err)?;
    Ok(conn)
}

/// `file:<path>?immutable=1`, with the characters URIs reserve escaped.
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for c in path.display().to_string().chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", c as u32)),
            other => uri.push(other),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// Creates an empty file with `mode` (and its parent directories), so that SQLite never
/// creates it with the process umask.
fn create_private_file(path: &Path, mode: u32) -> Result<(), OpenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let create_err = |source| OpenError::Create {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| OpenError::Create {
            path: parent.to_owned(),
            source,
        })?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(_) => Ok(()),
        // Somebody else created it between our check and now: fine, open theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(create_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_missing_directories_and_an_owner_only_file_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/deeper/core.db");
        let conn = open_database(&path, &OpenOptions::core()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let journal: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_named_once_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core.db");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        let err = open_database(&path, &OpenOptions::core()).unwrap_err();
        let text = format!("{:#}", anyhow_like(&err));
        assert_eq!(text.matches("file is not a database").count(), 1, "{text}");
        assert!(text.contains("sv restore"), "{text}");
    }

    /// The error and its sources, as `anyhow`'s `{:#}` prints them.
    fn anyhow_like(err: &OpenError) -> String {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        text
    }

    #[test]
    fn refuses_to_create_when_asked_for_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.db");
        let err = open_database(&path, &OpenOptions::core().existing()).unwrap_err();
        assert!(matches!(err, OpenError::Missing(_)), "{err}");
        assert!(!path.exists());
    }
}
