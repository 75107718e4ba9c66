//! A throwaway database server started by one of the project's scripts
//! (`scripts/postgres`, `scripts/mariadb`: `start DIR` prints the administrator's URL,
//! `stop DIR` stops it), for tests and benchmarks: real servers, never mocks.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running throwaway server; stopped when dropped (its directory is removed).
pub struct ThrowawayServer {
    dir: tempfile::TempDir,
    script: PathBuf,
    admin_url: String,
    port: u16,
}

impl ThrowawayServer {
    /// Starts a server with `script` in a new temporary directory.
    pub fn start(script: &Path) -> std::io::Result<ThrowawayServer> {
        let dir = tempfile::tempdir()?;
        let out = Command::new(script).arg("start").arg(dir.path()).output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "{} start failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let admin_url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let port = admin_url
            .rsplit(':')
            .next()
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no port in {admin_url:?}")))?;
        Ok(ThrowawayServer {
            dir,
            script: script.to_owned(),
            admin_url,
            port,
        })
    }

    /// The administrator's URL the script printed.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for ThrowawayServer {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}
