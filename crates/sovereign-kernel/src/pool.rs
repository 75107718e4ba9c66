//! A small pool of `core.db` connections, each opened by `sovereign_db_core::open_existing`
//! so every connection carries the same pragmas.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sovereign_db::rusqlite::Connection;
use sovereign_db_core::CoreError;

use crate::error::ApiError;
use crate::metrics::Metrics;

struct CoreConnections {
    path: PathBuf,
}

impl r2d2::ManageConnection for CoreConnections {
    type Connection = Connection;
    type Error = CoreError;

    fn connect(&self) -> Result<Connection, CoreError> {
        sovereign_db_core::open_existing(&self.path)
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), CoreError> {
        conn.execute_batch("")?;
        Ok(())
    }

    fn has_broken(&self, _conn: &mut Connection) -> bool {
        false
    }
}

/// The kernel's connections to `core.db`.
#[derive(Clone)]
pub struct CorePool {
    pool: r2d2::Pool<CoreConnections>,
}

impl CorePool {
    /// Opens the pool; fails at once if `core.db` is missing or not the core store.
    pub fn open(path: &Path) -> Result<CorePool, crate::StartError> {
        // Fail with the store's own message (missing file, wrong store) rather than a
        // pool time-out.
        drop(sovereign_db_core::open_existing(path)?);
        let pool = r2d2::Pool::builder()
            .max_size(8)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(5))
            .build(CoreConnections {
                path: path.to_owned(),
            })?;
        Ok(CorePool { pool })
    }

    /// Runs `f` with a core connection on the calling (blocking) thread.
    pub fn run_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        let conn = self
            .pool
            .get()
            .map_err(|e| CoreError::Unavailable(e.to_string()))?;
        f(&conn)
    }

    /// Runs `f` with a core connection on the blocking thread pool. Database errors are
    /// counted under the `core` scope.
    pub async fn run<T, F>(&self, metrics: &Metrics, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let result = tokio::task::spawn_blocking(move || {
            let conn = pool
                .get()
                .map_err(|e| ApiError::unavailable(format!("core store busy: {e}")))?;
            f(&conn)
        })
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("core task failed: {e}"))));
        if let Err(e) = &result
            && e.is_database_error()
        {
            metrics.database_error("core");
        }
        result
    }
}
