//! [`TrustedPluginStore`], the handle for kernel and operator code (sync, purge,
//! inspection). Plugins never get one.

use std::path::{Path, PathBuf};

use sovereign_db::rusqlite::config::DbConfig;
use sovereign_db::rusqlite::{self, Connection};
use sovereign_db::{OpenOptions, StoreKind};

use sovereign_db::rusqlite::OptionalExtension;

use crate::mirror::{MIRROR_PREFIX, MirrorBatch, MirrorCatalog, MirrorSlice};
use crate::{PluginStoreError, check_plugin_id, migration_scope};

/// A trusted connection to a plugin store file. Triggers and views are switched off on
/// it: plugins may create both in their namespace, and trusted code must never run
/// plugin-authored SQL as a side effect of touching plugin tables.
pub struct TrustedPluginStore {
    conn: Connection,
    path: PathBuf,
}

/// Makes a trusted connection run no plugin-authored SQL as a side effect (triggers,
/// views, functions in the schema) and enforce no plugin foreign keys: the fence refuses
/// keys into mirror tables, and plugin data must never veto the platform's writes
/// (mirror batches, purges).
fn ignore_plugin_code(conn: &Connection) -> Result<(), PluginStoreError> {
    for config in [
        DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW,
        DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA,
    ] {
        conn.set_db_config(config, false)?;
    }
    conn.pragma_update(None, "foreign_keys", false)?;
    Ok(())
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
        ignore_plugin_code(&conn)?;
        crate::system::prepare(&conn)?;
        Ok(TrustedPluginStore {
            conn,
            path: path.to_owned(),
        })
    }

    /// Opens an existing plugin store or mirror file read-only, for reports (`sv
    /// doctor`, `sv sync:status`) that must work on a read-only data directory. A store
    /// never synced answers like an empty one.
    pub fn open_read_only(
        path: &Path,
        kind: &StoreKind,
    ) -> Result<TrustedPluginStore, PluginStoreError> {
        let conn =
            sovereign_db::open_database(path, &OpenOptions::plugins().existing().read_only())?;
        sovereign_db::store::expect(&conn, kind)?;
        ignore_plugin_code(&conn)?;
        let sqlite = PluginStoreError::Sqlite;
        let has_state: bool = conn
            .query_row(
                "SELECT count(*) = 2 FROM main.sqlite_schema
                 WHERE name IN ('_sv_mirror_state', '_sv_mirror_slices')",
                [],
                |r| r.get(0),
            )
            .map_err(sqlite)?;
        if !has_state {
            // Empty stand-ins in the (writable, in-memory) temp schema.
            conn.execute_batch(
                &include_str!("../system_migrations/0002_mirror_state.sql")
                    .replace("CREATE TABLE", "CREATE TEMP TABLE"),
            )
            .map_err(sqlite)?;
        }
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
            .map_err(PluginStoreError::Sqlite)
    }

    /// The schema objects (`type`, `name`) in plugin `id`'s namespace.
    pub fn plugin_objects(&self, id: &str) -> Result<Vec<(String, String)>, PluginStoreError> {
        check_plugin_id(id)?;
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
        run().map_err(PluginStoreError::Sqlite)
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
        run().map_err(PluginStoreError::Sqlite)
    }

    /// Copies every object of plugin `id` (tables with their rows, indexes, views,
    /// triggers, AUTOINCREMENT counters and migration tracking rows) from `source` into
    /// this store, in one transaction, checking row counts. Refuses if this store already
    /// holds objects of the plugin. Returns `(table, rows)` per copied table.
    pub fn copy_plugin_from(
        &self,
        source: &TrustedPluginStore,
        id: &str,
    ) -> Result<Vec<(String, u64)>, PluginStoreError> {
        if !self.plugin_objects(id)?.is_empty() {
            return Err(PluginStoreError::Refused(format!(
                "{} already holds tables of plugin {id}; refusing to overwrite them",
                self.path.display()
            )));
        }
        let sqlite = PluginStoreError::Sqlite;
        self.conn
            .execute(
                "ATTACH DATABASE ?1 AS sv_move_source",
                [source.path.display().to_string()],
            )
            .map_err(sqlite)?;
        let result = self.copy_attached(id);
        let detached = self
            .conn
            .execute_batch("DETACH DATABASE sv_move_source")
            .map_err(sqlite);
        let copied = result?;
        detached?;
        Ok(copied)
    }

    fn copy_attached(&self, id: &str) -> Result<Vec<(String, u64)>, PluginStoreError> {
        let prefix = format!("{id}__");
        let run = || -> rusqlite::Result<Vec<(String, u64)>> {
            let tx = rusqlite::Transaction::new_unchecked(
                &self.conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            let objects: Vec<(String, String, String)> = tx
                .prepare(
                    "SELECT type, name, sql FROM sv_move_source.sqlite_schema
                     WHERE sql IS NOT NULL AND lower(substr(tbl_name, 1, ?2)) = ?1
                     ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, rowid",
                )?
                .query_map(rusqlite::params![prefix, prefix.len() as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            let mut copied = Vec::new();
            for (kind, name, sql) in &objects {
                tx.execute_batch(sql)?;
                if kind == "table" {
                    let quoted = name.replace('"', "\"\"");
                    let rows = tx.execute(
                        &format!("INSERT INTO main.\"{quoted}\" SELECT * FROM sv_move_source.\"{quoted}\""),
                        [],
                    )? as u64;
                    let expected: i64 = tx.query_row(
                        &format!("SELECT count(*) FROM sv_move_source.\"{quoted}\""),
                        [],
                        |r| r.get(0),
                    )?;
                    if expected as u64 != rows {
                        return Err(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
                            Some(format!(
                                "copied {rows} rows of {name} but the source has {expected}"
                            )),
                        ));
                    }
                    copied.push((name.clone(), rows));
                }
            }
            let has = |schema: &str, table: &str| -> rusqlite::Result<bool> {
                tx.query_row(
                    &format!("SELECT count(*) > 0 FROM {schema}.sqlite_schema WHERE name = ?1"),
                    [table],
                    |r| r.get(0),
                )
            };
            if has("sv_move_source", "sqlite_sequence")? && has("main", "sqlite_sequence")? {
                tx.execute(
                    "INSERT INTO main.sqlite_sequence (name, seq) SELECT name, seq FROM sv_move_source.sqlite_sequence
                     WHERE lower(substr(name, 1, ?2)) = ?1",
                    rusqlite::params![prefix, prefix.len() as i64],
                )?;
            }
            if has("sv_move_source", "_sv_migrations")? {
                tx.execute_batch(
                    "CREATE TABLE IF NOT EXISTS main._sv_migrations (
                        scope TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,
                        checksum TEXT NOT NULL, applied_at TEXT NOT NULL, PRIMARY KEY (scope, version)) STRICT",
                )?;
                tx.execute(
                    "INSERT INTO main._sv_migrations SELECT * FROM sv_move_source._sv_migrations WHERE scope = ?1",
                    [migration_scope(id)],
                )?;
            }
            tx.commit()?;
            Ok(copied)
        };
        run().map_err(PluginStoreError::Sqlite)
    }
}

/// The mirror side of sync: applied by trusted code only (the kernel today, the host's
/// sync applier once it runs separately).
impl TrustedPluginStore {
    /// Opens (creating if needed) a separate mirror file (`data/mirror.db`), for the
    /// layout where plugin connections attach the mirror read-only.
    pub fn open_mirror_file(path: &Path) -> Result<TrustedPluginStore, PluginStoreError> {
        Self::open(path, &StoreKind::Mirror)
    }

    /// The last outbox sequence number applied to this mirror (0 if none).
    pub fn mirror_watermark(&self) -> Result<i64, PluginStoreError> {
        self.conn
            .query_row(
                "SELECT coalesce((SELECT value FROM _sv_mirror_state WHERE key = 'watermark'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(PluginStoreError::Sqlite)
    }

    /// When the mirror last applied a batch (unix ms, 0 if never).
    pub fn mirror_applied_at_ms(&self) -> Result<i64, PluginStoreError> {
        self.conn
            .query_row(
                "SELECT coalesce((SELECT value FROM _sv_mirror_state WHERE key = 'applied_at_ms'), 0)",
                [],
                |r| r.get(0),
            )
            .map_err(PluginStoreError::Sqlite)
    }

    /// The projection a mirror table was built with (JSON of [`MirrorSlice`]).
    pub fn mirror_spec(&self, slice: &str) -> Result<Option<MirrorSlice>, PluginStoreError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT spec FROM _sv_mirror_slices WHERE slice = ?1",
                [slice],
                |r| r.get(0),
            )
            .optional()
            .map_err(PluginStoreError::Sqlite)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Every slice this mirror holds, with its spec.
    pub fn mirror_specs(&self) -> Result<Vec<MirrorSlice>, PluginStoreError> {
        let run = || -> rusqlite::Result<Vec<String>> {
            self.conn
                .prepare("SELECT spec FROM _sv_mirror_slices ORDER BY slice")?
                .query_map([], |r| r.get(0))?
                .collect()
        };
        let texts = run().map_err(PluginStoreError::Sqlite)?;
        texts
            .iter()
            .map(|t| {
                serde_json::from_str(t)
                    .map_err(|e| PluginStoreError::MirrorState(format!("slice spec {t:?}: {e}")))
            })
            .collect()
    }

    /// Applies a batch and advances the watermark in one transaction. A batch at or
    /// below the watermark changes nothing, so re-applying is harmless. Returns whether it
    /// was applied.
    pub fn apply_batch(
        &self,
        catalog: &MirrorCatalog,
        batch: &MirrorBatch,
        now_ms: i64,
    ) -> Result<bool, PluginStoreError> {
        let run = || -> rusqlite::Result<bool> {
            let tx = rusqlite::Transaction::new_unchecked(
                &self.conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            let watermark: i64 = tx.query_row(
                "SELECT coalesce((SELECT value FROM _sv_mirror_state WHERE key = 'watermark'), 0)",
                [],
                |r| r.get(0),
            )?;
            if batch.upto_seq <= watermark {
                return Ok(false);
            }
            for change in &batch.changes {
                let Some(slice) = catalog.slice(&change.slice) else {
                    continue;
                };
                crate::mirror::write_mirror_row(&tx, slice, change.key, change.row.as_deref())?;
            }
            tx.execute(
                "INSERT INTO _sv_mirror_state (key, value)
                 VALUES ('watermark', ?1), ('applied_at_ms', ?2), ('applied_by_pid', ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rusqlite::params![batch.upto_seq, now_ms, std::process::id()],
            )?;
            tx.commit()?;
            Ok(true)
        };
        run().map_err(PluginStoreError::Sqlite)
    }

    /// In one transaction: reads the watermark the rebuild will stand at (`watermark`,
    /// called first, so a snapshot of the source taken there is the one `fill` sees),
    /// drops the mirror tables of `dropped` slices, recreates each of `slices` and has
    /// `fill` copy its rows, records the specs, and sets the watermark.
    pub fn rebuild_slices(
        &self,
        slices: &[&MirrorSlice],
        dropped: &[String],
        now_ms: i64,
        watermark: &mut dyn FnMut(&Connection) -> rusqlite::Result<i64>,
        fill: &mut dyn FnMut(&Connection, &MirrorSlice) -> rusqlite::Result<u64>,
    ) -> Result<(i64, Vec<(String, u64)>), PluginStoreError> {
        // Each slice's spec as stored (a `MirrorSlice` is plain data: it always serializes).
        let specs: Vec<String> = slices
            .iter()
            .map(|slice| serde_json::to_string(slice).expect("a mirror slice serializes"))
            .collect();
        let mut run = || -> rusqlite::Result<(i64, Vec<(String, u64)>)> {
            let tx = rusqlite::Transaction::new_unchecked(
                &self.conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            let watermark = watermark(&tx)?;
            let mut counts = Vec::new();
            for name in dropped {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS \"{MIRROR_PREFIX}{name}\""))?;
                tx.execute("DELETE FROM _sv_mirror_slices WHERE slice = ?1", [name])?;
            }
            for (slice, spec) in slices.iter().zip(&specs) {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS \"{}\"", slice.table_name()))?;
                tx.execute_batch(&slice.create_table_sql())?;
                let rows = fill(&tx, slice)?;
                tx.execute(
                    "INSERT INTO _sv_mirror_slices (slice, spec) VALUES (?1, ?2)
                     ON CONFLICT (slice) DO UPDATE SET spec = excluded.spec",
                    rusqlite::params![slice.name, spec],
                )?;
                counts.push((slice.name.clone(), rows));
            }
            tx.execute(
                "INSERT INTO _sv_mirror_state (key, value) VALUES ('watermark', ?1), ('applied_at_ms', ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rusqlite::params![watermark, now_ms],
            )?;
            tx.commit()?;
            Ok((watermark, counts))
        };
        run().map_err(PluginStoreError::Sqlite)
    }
}
