//! A throwaway MariaDB server started by the project's `scripts/mariadb` (as an
//! unprivileged user when run as root), for tests and benchmarks: real servers, never
//! mocks.

use std::path::Path;

use sovereign_db::throwaway::ThrowawayServer;

/// A running throwaway server; stopped when dropped (its directory is removed).
pub struct Server(ThrowawayServer);

impl Server {
    /// Starts a server with `script` (`scripts/mariadb`) in a new temporary directory.
    pub fn start(script: &Path) -> std::io::Result<Server> {
        ThrowawayServer::start(script).map(Server)
    }

    /// The administrator's URL (`mysql://sv_admin:...@127.0.0.1:PORT/mysql`).
    pub fn admin_url(&self) -> &str {
        self.0.admin_url()
    }

    /// A URL for `account` with `password` on `database` of this server.
    pub fn url(&self, account: &str, password: &str, database: &str) -> String {
        format!(
            "mysql://{account}:{password}@127.0.0.1:{}/{database}",
            self.0.port()
        )
    }
}
