//! A small pool of core store connections (`core.db`, or the core database on
//! PostgreSQL), each opened by `CoreLocation::open_existing` so every connection carries
//! the same settings. After work that changed rows, the pool calls its commit hook (the
//! sync worker's wake-up).

use std::sync::Arc;
use std::time::Duration;

use sovereign_db_core::{CoreConn, CoreError, CoreLocation};

use crate::error::ApiError;
use crate::metrics::Metrics;

struct CoreConnections {
    location: CoreLocation,
}

impl r2d2::ManageConnection for CoreConnections {
    type Connection = CoreConn;
    type Error = CoreError;

    fn connect(&self) -> Result<CoreConn, CoreError> {
        let conn = self.location.open_existing()?;
        if let CoreConn::Sqlite(conn) = &conn {
            conn.busy_handler(Some(wait_for_write_lock))?;
        }
        Ok(conn)
    }

    fn is_valid(&self, conn: &mut CoreConn) -> Result<(), CoreError> {
        match conn {
            CoreConn::Sqlite(conn) => conn.execute_batch("")?,
            CoreConn::Postgres(pg) => pg.client_mut().batch_execute("")?,
            CoreConn::Mysql(my) => my.ping()?,
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut CoreConn) -> bool {
        match conn {
            // A MySQL connection that broke fails its next `is_valid`.
            CoreConn::Sqlite(_) | CoreConn::Mysql(_) => false,
            CoreConn::Postgres(pg) => pg.client_mut().is_closed(),
        }
    }
}

/// Waits for `core.db`'s write lock in short sleeps and gives up after about 5 s.
/// SQLite's own handler (`busy_timeout`) sleeps up to 100 ms between retries, which
/// under many concurrent writers leaves the lock free while everyone sleeps.
fn wait_for_write_lock(retries: i32) -> bool {
    /// Longest sleep between two tries.
    const MAX_SLEEP_US: u64 = 2_000;
    /// Tries before giving up (about 5 s of sleeping).
    const MAX_RETRIES: i32 = 2_500;
    if retries >= MAX_RETRIES {
        return false;
    }
    let sleep_us = (100u64 << retries.clamp(0, 5)).min(MAX_SLEEP_US);
    std::thread::sleep(Duration::from_micros(sleep_us));
    true
}

/// Called after work on a pooled connection changed rows in `core.db`.
pub type CommitHook = Arc<dyn Fn() + Send + Sync>;

/// The kernel's connections to the core store.
#[derive(Clone)]
pub struct CorePool {
    pool: r2d2::Pool<CoreConnections>,
    on_commit: Option<CommitHook>,
}

impl CorePool {
    /// Opens the pool; fails at once if the core store is missing, unreachable or not
    /// the core store. `on_commit` runs after each piece of work that changed rows.
    pub fn open(
        location: &CoreLocation,
        on_commit: Option<CommitHook>,
    ) -> Result<CorePool, crate::StartError> {
        // Fail with the store's own message (missing file, wrong store, refused login)
        // rather than a pool time-out.
        drop(location.open_existing()?);
        let pool = r2d2::Pool::builder()
            .max_size(8)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(5))
            .build(CoreConnections {
                location: location.clone(),
            })?;
        Ok(CorePool { pool, on_commit })
    }

    /// Runs `f` on `conn`, then the commit hook if `f` changed rows.
    fn with_hook<T>(&self, conn: &CoreConn, f: impl FnOnce(&CoreConn) -> T) -> T {
        let before = conn.total_changes();
        let out = f(conn);
        if let Some(hook) = &self.on_commit
            && conn.total_changes() != before
        {
            hook();
        }
        out
    }

    /// Runs `f` with a core connection on the calling (blocking) thread.
    pub fn run_blocking<T>(
        &self,
        f: impl FnOnce(&CoreConn) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        let conn = self
            .pool
            .get()
            .map_err(|e| CoreError::Unavailable(e.to_string()))?;
        self.with_hook(&conn, f)
    }

    /// Runs `f` with a core connection on the blocking thread pool, for the kernel's own
    /// work (the watchdog, the event sink).
    pub async fn call<T, F>(&self, f: F) -> Result<T, CoreError>
    where
        T: Send + 'static,
        F: FnOnce(&CoreConn) -> Result<T, CoreError> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || pool.run_blocking(f))
            .await
            .unwrap_or_else(|e| Err(CoreError::Unavailable(format!("core task failed: {e}"))))
    }

    /// Runs `f` for an HTTP handler with a core connection on the blocking thread pool.
    /// Database errors are counted under the `core` scope.
    pub async fn run<T, F>(&self, metrics: &Metrics, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&CoreConn) -> Result<T, ApiError> + Send + 'static,
    {
        let pool = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let conn = pool
                .pool
                .get()
                .map_err(|e| ApiError::unavailable(format!("core store busy: {e}")))?;
            pool.with_hook(&conn, f)
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
