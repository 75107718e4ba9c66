//! [`TrustedPluginStore`], the handle for kernel and operator code (sync, purge,
//! inspection). Plugins never get one.

use std::path::{Path, PathBuf};

use sovereign_db::rusqlite::config::DbConfig;
use sovereign_db::rusqlite::{self, Connection};
use sovereign_db::{OpenOptions, StoreKind};

use crate::mirror::MirrorSlice;
use crate::{PluginStoreError, is_valid_plugin_id, migration_scope};

/// A trusted connection to a plugin store file. Triggers and views are switched off on
/// it: plugins may create both in their namespace, and trusted code must never run
/// plugin-authored SQL as a side effect of touching plugin tables.
pub struct TrustedPluginStore {
    conn: Connection,
    path: PathBuf,
}

impl TrustedPluginStore {
    /// Opens (creating if needed) the shared plugin store.
    pub fn open_shared(path: &Path) -> Result<TrustedPluginStore, PluginStoreError> {
        Self::open(path, &StoreKind::Plugins)
    }

    /// Opens (creating if needed) plugin `id`'s isolated file.
    pub fn open_isolated(path: &Path, id: &str) -> Result<TrustedPluginStore, PluginStoreError> {
        Self::open(path, &StoreKind::IsolatedPlugin(id.to_owned()))
    }

    fn open(path: &Path, kind: &StoreKind) -> Result<TrustedPluginStore, PluginStoreError> {
        let conn = sovereign_db::open_database(path, &OpenOptions::plugins())?;
        sovereign_db::store::claim(&conn, kind)?;
        let sqlite = |e: rusqlite::Error| PluginStoreError::Sqlite(e.to_string());
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)
            .map_err(sqlite)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false)
            .map_err(sqlite)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)
            .map_err(sqlite)?;
        Ok(TrustedPluginStore {
            conn,
            path: path.to_owned(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for trusted code (sync applier, inspection).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Creates the mirror table of `slice` if it does not exist.
    pub fn ensure_mirror(&self, slice: &MirrorSlice) -> Result<(), PluginStoreError> {
        self.conn
            .execute_batch(&slice.create_table_sql())
            .map_err(|e| PluginStoreError::Sqlite(e.to_string()))
    }

    /// The schema objects (`type`, `name`) in plugin `id`'s namespace.
    pub fn plugin_objects(&self, id: &str) -> Result<Vec<(String, String)>, PluginStoreError> {
        if !is_valid_plugin_id(id) {
            return Err(PluginStoreError::BadId(id.to_owned()));
        }
        let prefix = format!("{id}__");
        let run = || -> rusqlite::Result<Vec<(String, String)>> {
            let mut stmt = self.conn.prepare(
                "SELECT type, name FROM sqlite_schema
                 WHERE lower(substr(name, 1, ?2)) = ?1 OR lower(substr(tbl_name, 1, ?2)) = ?1
                 ORDER BY type, name",
            )?;
            let rows = stmt.query_map(rusqlite::params![prefix, prefix.len() as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            rows.collect()
        };
        run().map_err(|e| PluginStoreError::Sqlite(e.to_string()))
    }

    /// Drops every table, view and trigger of plugin `id` and its migration tracking
    /// rows, in one transaction. Returns what was dropped.
    pub fn drop_plugin_data(&self, id: &str) -> Result<Vec<String>, PluginStoreError> {
        let objects = self.plugin_objects(id)?;
        let run = || -> rusqlite::Result<Vec<String>> {
            let tx = rusqlite::Transaction::new_unchecked(
                &self.conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            let mut dropped = Vec::new();
            for kind in ["trigger", "view", "table"] {
                for (_, name) in objects.iter().filter(|(t, _)| t == kind) {
                    tx.execute_batch(&format!(
                        "DROP {} IF EXISTS \"{}\"",
                        kind.to_uppercase(),
                        name.replace('"', "\"\"")
                    ))?;
                    dropped.push(format!("{kind} {name}"));
                }
            }
            let has_tracking: bool = tx.query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE name = '_sv_migrations'",
                [],
                |r| r.get(0),
            )?;
            if has_tracking {
                tx.execute(
                    "DELETE FROM _sv_migrations WHERE scope = ?1",
                    [migration_scope(id)],
                )?;
            }
            tx.commit()?;
            Ok(dropped)
        };
        run().map_err(|e| PluginStoreError::Sqlite(e.to_string()))
    }
}
