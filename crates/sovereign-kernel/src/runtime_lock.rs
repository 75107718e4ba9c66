//! The lock file a running platform holds, so that operator commands that replace files
//! (restore, split) can tell it is running.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An exclusive lock on `<data dir>/sv.lock`, released when dropped or when the process
/// dies (the kernel releases `flock`s of dead processes).
#[derive(Debug)]
pub struct RuntimeLock {
    _file: File,
    path: PathBuf,
}

/// The lock is held by somebody else, or the file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeLockError {
    /// Another process holds it.
    #[error(
        "the platform is already running with this data directory (lock {path} held by pid {pid})"
    )]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The pid written by the holder.
        pid: String,
    },
    /// I/O failure.
    #[error("cannot use lock file {path}: {source}{}", hint(source))]
    Io {
        /// The lock file.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
}

/// What to do about a lock file that cannot be written.
fn hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            "; a running platform writes its data directory: fix the directory's owner or \
             mode (read-only commands such as `sv doctor`, `sv migrate:status` and `sv backup` \
             work without it)"
        }
        _ => "",
    }
}

impl RuntimeLock {
    /// Takes the lock and writes this process's pid into it.
    pub fn acquire(path: &Path) -> Result<RuntimeLock, RuntimeLockError> {
        let io = |source| RuntimeLockError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(RuntimeLockError::Held {
                    path: path.to_owned(),
                    pid: first_line(path),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(RuntimeLock {
            _file: file,
            path: path.to_owned(),
        })
    }

    /// Records the address the platform serves on (second line of the lock file), so
    /// operator tools such as `sv doctor` can ask the running platform.
    pub fn record_address(&mut self, address: &str) -> std::io::Result<()> {
        use std::io::Seek;
        self._file.set_len(0)?;
        self._file.seek(std::io::SeekFrom::Start(0))?;
        write!(self._file, "{}\n{address}\n", std::process::id())?;
        self._file.flush()
    }

    /// The address a running platform recorded, if the lock is held.
    pub fn address(path: &Path) -> Option<String> {
        Self::holder(path)?;
        std::fs::read_to_string(path)
            .ok()?
            .lines()
            .nth(1)
            .map(str::to_owned)
    }

    /// Whether some process holds the lock at `path` now; returns its pid if so.
    pub fn holder(path: &Path) -> Option<String> {
        let file = OpenOptions::new().read(true).write(true).open(path).ok()?;
        match file.try_lock() {
            Ok(()) => None,
            Err(_) => Some(first_line(path)),
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid line of a lock file.
fn first_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}
