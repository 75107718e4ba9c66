//! The storage quota: checked after every write, measured per plugin b-tree when near.

use super::*;

impl PluginDb {
    /// Pages of the file in use (not on the free list): a cheap measure of growth.
    pub(super) fn used_pages(&self) -> Result<i64, FenceError> {
        Ok(self.pragma_i64("PRAGMA main.page_count")?
            - self.pragma_i64("PRAGMA main.freelist_count")?)
    }

    /// Storage quota of the shared store, checked inside the write's transaction: an
    /// upper bound of the plugin's bytes is kept from the file's page count (one cheap
    /// pragma); only when that bound passes the quota are the plugin's own b-trees
    /// measured exactly with `dbstat`. Isolated files are capped by `max_page_count`.
    pub(super) fn check_quota(&self) -> Result<(), FenceError> {
        if self.mode == DatabaseMode::Isolated {
            return Ok(());
        }
        let quota_bytes = u64::from(self.limits.storage_mb) * 1024 * 1024;
        let pages = self.pragma_i64("PRAGMA main.page_count")?;
        if let Some(state) = self.quota.get() {
            // Whatever the plugin added since the measurement came from new pages or
            // from pages that were free then.
            let bound = (pages - state.pages_at_measure).max(0) + state.free_at_measure;
            if state.measured_bytes + bound as u64 * self.page_size as u64 <= quota_bytes {
                return Ok(());
            }
        }
        let free = self.pragma_i64("PRAGMA main.freelist_count")?;
        let measured = self.measure_bytes()?;
        self.quota.set(Some(QuotaState {
            measured_bytes: measured,
            pages_at_measure: pages,
            free_at_measure: free,
        }));
        if measured > quota_bytes {
            return Err(FenceError::Quota {
                plugin: self.plugin.clone(),
                used_bytes: measured,
                quota_bytes,
            });
        }
        Ok(())
    }

    pub(super) fn pragma_i64(&self, sql: &str) -> Result<i64, FenceError> {
        let _internal = Internal::enter(&self.guard);
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(|e| self.sql_error(e.to_string()))
    }

    /// Bytes on disk of the plugin's tables and indexes, from `dbstat`.
    pub fn measure_bytes(&self) -> Result<u64, FenceError> {
        let _internal = Internal::enter(&self.guard);
        let run = || -> rusqlite::Result<u64> {
            let names: Vec<String> = self
                .conn
                .prepare_cached(
                    "SELECT name FROM main.sqlite_schema WHERE type IN ('table', 'index')
                     AND lower(substr(tbl_name, 1, ?2)) = ?1",
                )?
                .query_map(
                    rusqlite::params![format!("{}__", self.plugin), self.plugin.len() as i64 + 2],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
            let mut total = 0u64;
            let mut stmt = self
                .conn
                .prepare_cached("SELECT pgsize FROM dbstat('main', 1) WHERE name = ?1")?;
            for name in names {
                let size: Option<i64> = stmt.query_row([&name], |r| r.get(0)).optional()?;
                total += size.unwrap_or(0) as u64;
            }
            Ok(total)
        };
        run().map_err(|e| self.sql_error(e.to_string()))
    }
}
