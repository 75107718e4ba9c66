//! A throwaway PostgreSQL cluster started by the project's `scripts/postgres` (as an
//! unprivileged user when run as root), for tests and benchmarks: real servers, never
//! mocks.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running throwaway cluster; stopped when dropped (its directory is removed).
pub struct Cluster {
    dir: tempfile::TempDir,
    script: PathBuf,
    admin_url: String,
    port: u16,
}

impl Cluster {
    /// Starts a cluster with `script` (`scripts/postgres`) in a new temporary directory.
    pub fn start(script: &Path) -> std::io::Result<Cluster> {
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
        Ok(Cluster {
            dir,
            script: script.to_owned(),
            admin_url,
            port,
        })
    }

    /// The superuser's URL (`postgres://sv_admin:...@127.0.0.1:PORT/postgres`).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// A URL for `role` with `password` on `database` of this cluster.
    pub fn url(&self, role: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{role}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}
