//! Plugin migrations behind the fence, and the trusted statements of the store itself.

use super::*;

impl PluginDb {
    /// Applies the plugin's pending migrations, each statement behind the fence, so a
    /// migration cannot create or touch anything outside the plugin's namespace. The
    /// tracking rows (scope `plugin:<id>`) are written by this trusted code. Each
    /// migration commits on its own.
    pub fn migrate(&self, set: &MigrationSet) -> Result<Vec<String>, PluginStoreError> {
        self.migrate_fenced(set, false)
    }

    /// Like [`migrate`](Self::migrate), but all pending migrations in one transaction:
    /// after a failure nothing of any of them remains (what an install needs).
    pub fn migrate_all_or_nothing(
        &self,
        set: &MigrationSet,
    ) -> Result<Vec<String>, PluginStoreError> {
        self.migrate_fenced(set, true)
    }

    pub(super) fn migrate_fenced(
        &self,
        set: &MigrationSet,
        all_or_nothing: bool,
    ) -> Result<Vec<String>, PluginStoreError> {
        let _internal = Internal::enter(&self.guard);
        let mut runner = |_conn: &Connection, sql: &str| {
            self.guard.internal.store(false, Ordering::SeqCst);
            let result = self
                .execute(sql, &[])
                .map(|_| ())
                .map_err(|e| e.to_string());
            self.guard.internal.store(true, Ordering::SeqCst);
            result
        };
        let result = if all_or_nothing {
            set.deploy_all_or_nothing_with(&self.conn, &mut runner)
        } else {
            set.deploy_with(&self.conn, &mut runner)
        };
        Ok(result?)
    }

    /// The migration status of `set` in this plugin's database.
    pub fn migration_status(
        &self,
        set: &MigrationSet,
    ) -> Result<Vec<sovereign_db::MigrationStatus>, PluginStoreError> {
        let _internal = Internal::enter(&self.guard);
        Ok(set.status(&self.conn)?)
    }

    /// Runs one of the host's own fixed statements through the statement cache.
    pub(super) fn internal_exec(&self, sql: &str) -> Result<(), FenceError> {
        let _internal = Internal::enter(&self.guard);
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.raw_execute())
            .map(|_| ())
            .map_err(|e| self.sql_error(e.to_string()))
    }

    pub(super) fn internal_batch(&self, sql: &str) -> Result<(), FenceError> {
        let _internal = Internal::enter(&self.guard);
        self.conn
            .execute_batch(sql)
            .map_err(|e| self.sql_error(e.to_string()))
    }
}
