//! Each plugin's own log: the lines it logged while serving requests, which the running
//! platform appends to `<data>/logs/plugins/<id>.log` (one JSON object a line, owner-only;
//! past 1 MiB the file moves to `<id>.log.1` and a new one starts). `sv plugins logs`
//! shows and follows it, `sv plugins dev` prints it beside the build output, and
//! operators read it at `/api/admin/plugins/{id}/logs`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sovereign_protocol::{LogLevel, PluginLogLine};

use crate::{App, PlatformError};

/// Past this size a plugin's log moves to `<id>.log.1` (replacing the older one).
pub const ROTATE_BYTES: u64 = 1024 * 1024;

/// One line of a plugin's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Severity.
    pub level: LogLevel,
    /// What the plugin logged.
    pub message: String,
}

/// The directory of the plugins' logs.
pub fn log_dir(app: &App) -> PathBuf {
    app.config().data_dir_path().join("logs/plugins")
}

/// The current log file of plugin `id`.
pub fn log_file(app: &App, id: &str) -> PathBuf {
    log_dir(app).join(format!("{id}.log"))
}

/// Appends plugins' log lines to their files; what the running platform hands the kernel.
pub struct LogWriter {
    dir: PathBuf,
    open: Mutex<HashMap<String, (File, u64)>>,
}

impl LogWriter {
    /// A writer into `dir` (created owner-only when the first line arrives).
    pub fn new(dir: PathBuf) -> Arc<LogWriter> {
        Arc::new(LogWriter {
            dir,
            open: Mutex::default(),
        })
    }

    /// Appends `lines`; a failure is logged (a plugin's log never fails its request).
    pub fn append(&self, lines: Vec<PluginLogLine>) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for line in lines {
            if let Err(e) = self.append_one(&mut open, line) {
                tracing::warn!(error = %e, "cannot write a plugin's log");
            }
        }
    }

    fn append_one(
        &self,
        open: &mut HashMap<String, (File, u64)>,
        line: PluginLogLine,
    ) -> std::io::Result<()> {
        // Ids were checked at install; a line naming anything else is not written.
        if sovereign_db_plugins::check_plugin_id(&line.plugin).is_err() {
            return Ok(());
        }
        let path = self.dir.join(format!("{}.log", line.plugin));
        let rotate = open
            .get(&line.plugin)
            .is_some_and(|(_, size)| *size >= ROTATE_BYTES);
        if rotate {
            open.remove(&line.plugin);
            std::fs::rename(&path, self.dir.join(format!("{}.log.1", line.plugin)))?;
        }
        if !open.contains_key(&line.plugin) {
            let file = open_for_append(&self.dir, &path)?;
            let size = file.metadata()?.len();
            open.insert(line.plugin.clone(), (file, size));
        }
        let Some((file, size)) = open.get_mut(&line.plugin) else {
            return Ok(());
        };
        let mut text = serde_json::to_vec(&LogEntry {
            at_ms: line.at_ms,
            level: line.level,
            message: line.message,
        })
        .map_err(std::io::Error::other)?;
        text.push(b'\n');
        file.write_all(&text)?;
        *size += text.len() as u64;
        Ok(())
    }
}

fn open_for_append(dir: &Path, path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The last `count` lines of installed plugin `id`'s log (from the rotated file too),
/// oldest first. A plugin that never logged has none.
pub fn recent(app: &App, id: &str, count: usize) -> Result<Vec<LogEntry>, PlatformError> {
    crate::plugins::get(app, id)?;
    recent_of_installed(app, id, count)
}

/// [`recent`] for an id the caller took from the registry (no second look-up).
pub(crate) fn recent_of_installed(
    app: &App,
    id: &str,
    count: usize,
) -> Result<Vec<LogEntry>, PlatformError> {
    let current = log_file(app, id);
    let mut entries = Vec::new();
    for path in [current.with_extension("log.1"), current] {
        entries.extend(read_entries(&path, 0)?.0);
    }
    let skip = entries.len().saturating_sub(count);
    Ok(entries.split_off(skip))
}

/// Follows a plugin's log from where it ends now: each [`read_new`](Self::read_new)
/// returns the lines written since, across a rotation.
pub struct LogFollower {
    plugin: String,
    path: PathBuf,
    /// The file being read (its inode), and how far.
    inode: Option<u64>,
    offset: u64,
}

impl LogFollower {
    /// Starts at the current end of plugin `id`'s log.
    pub fn new(app: &App, id: &str) -> LogFollower {
        let path = log_file(app, id);
        let (inode, offset) = match std::fs::metadata(&path) {
            Ok(m) => (Some(m.ino()), m.len()),
            Err(_) => (None, 0),
        };
        LogFollower {
            plugin: id.to_owned(),
            path,
            inode,
            offset,
        }
    }

    /// The plugin followed.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The lines written since the last call.
    pub fn read_new(&mut self) -> Result<Vec<LogEntry>, PlatformError> {
        let inode = std::fs::metadata(&self.path).ok().map(|m| m.ino());
        let mut entries = Vec::new();
        if self.inode.is_some() && inode != self.inode {
            // Rotated: the rest of the file being read is `.1` now; then the new file.
            entries = read_entries(&self.path.with_extension("log.1"), self.offset)?.0;
            self.offset = 0;
        }
        self.inode = inode;
        let (new, end) = read_entries(&self.path, self.offset)?;
        entries.extend(new);
        self.offset = end;
        Ok(entries)
    }
}

/// The complete lines of `path` from byte `from` and the offset after the last one (a
/// line still being written is left for the next read). A missing file has none.
fn read_entries(path: &Path, from: u64) -> Result<(Vec<LogEntry>, u64), PlatformError> {
    let io = |source| PlatformError::Io {
        what: format!("reading {}", path.display()),
        source,
    };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], from)),
        Err(e) => return Err(io(e)),
    };
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut reader = BufReader::new(file);
    let mut entries = Vec::new();
    let mut offset = from;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(io)?;
        if read == 0 || line.last() != Some(&b'\n') {
            break;
        }
        offset += read as u64;
        match serde_json::from_slice::<LogEntry>(&line) {
            Ok(entry) => entries.push(entry),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipping a malformed log line")
            }
        }
    }
    Ok((entries, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(plugin: &str, message: String) -> PluginLogLine {
        PluginLogLine {
            plugin: plugin.into(),
            at_ms: 1,
            level: LogLevel::Info,
            message,
        }
    }

    #[test]
    fn lines_are_appended_rotated_followed_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs/plugins");
        let writer = LogWriter::new(logs.clone());
        let path = logs.join("tasks.log");
        let mut follower = LogFollower {
            plugin: "tasks".into(),
            path: path.clone(),
            inode: None,
            offset: 0,
        };
        assert!(follower.read_new().unwrap().is_empty(), "no file yet");
        writer.append(vec![
            line("tasks", "one".into()),
            line("tasks", "two".into()),
        ]);
        writer.append(vec![line("../core", "escape".into())]);
        let read: Vec<String> = follower
            .read_new()
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(read, ["one", "two"]);
        assert!(!dir.path().join("logs/core.log").exists());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Past the rotation size the file moves aside; the follower reads across it.
        let big = "x".repeat(4000);
        let n = (ROTATE_BYTES / 4000) as usize + 2;
        writer.append(
            (0..n)
                .map(|i| line("tasks", format!("{i} {big}")))
                .collect(),
        );
        let read = follower.read_new().unwrap();
        assert_eq!(read.len(), n, "every line once across the rotation");
        assert!(logs.join("tasks.log.1").exists());
        assert!(
            read.last()
                .unwrap()
                .message
                .starts_with(&format!("{} ", n - 1))
        );
        // A half-written line waits for its end.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"at_ms\":2,")
            .unwrap();
        assert!(follower.read_new().unwrap().is_empty());
    }
}
