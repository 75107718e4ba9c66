//! A throwaway PostgreSQL cluster started by the project's `scripts/postgres` (as an
//! unprivileged user when run as root), for tests and benchmarks: real servers, never
//! mocks.

use std::path::Path;

use sovereign_db::throwaway::ThrowawayServer;

/// A running throwaway cluster; stopped when dropped (its directory is removed).
pub struct Cluster(ThrowawayServer);

impl Cluster {
    /// Starts a cluster with `script` (`scripts/postgres`) in a new temporary directory.
    pub fn start(script: &Path) -> std::io::Result<Cluster> {
        ThrowawayServer::start(script).map(Cluster)
    }

    /// The superuser's URL (`postgres://sv_admin:...@127.0.0.1:PORT/postgres`).
    pub fn admin_url(&self) -> &str {
        self.0.admin_url()
    }

    /// A URL for `role` with `password` on `database` of this cluster.
    pub fn url(&self, role: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{role}:{password}@127.0.0.1:{}/{database}",
            self.0.port()
        )
    }
}
