//! Incremental sync: batches read from the core outbox, applied to the mirror together
//! with its watermark, then acknowledged and pruned from the outbox.

use std::collections::HashMap;

use mysql::prelude::Queryable;
use sovereign_db::rusqlite::{self, Connection, OptionalExtension};
use sovereign_db_core::{CoreAccess, CoreHandle};
use sovereign_db_plugins::mirror::{MirrorBatch, MirrorCatalog, MirrorChange, MirrorSlice};
use sovereign_db_plugins::value::SqlValue;

use crate::{Mirror, SyncError, ident, now_ms};

/// The SELECT of `slice`'s projected rows whose key equals `param` (`?1` on SQLite, `$1`
/// or `ANY($1::bigint[])` on PostgreSQL; the key is the first column) in `table` (the
/// source table, qualified as needed).
fn project_sql(slice: &MirrorSlice, table: &str, param: &str) -> String {
    let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
    let filter = slice
        .filter
        .as_deref()
        .map(|f| format!(" AND ({f})"))
        .unwrap_or_default();
    format!(
        "SELECT {} FROM {table} WHERE {} = {param}{filter}",
        columns.join(", "),
        ident(slice.key_column())
    )
}

/// The SELECT of `slice`'s projected rows whose keys are among `keys` (integers, so
/// written into the text) on a MySQL core.
fn project_keys_sql(slice: &MirrorSlice, keys: &[i64]) -> String {
    let list: Vec<String> = keys.iter().map(i64::to_string).collect();
    let key = ident(slice.key_column());
    project_sql(slice, &ident(&slice.source_table), "NULL").replacen(
        &format!("{key} = NULL"),
        &format!("{key} IN ({})", list.join(", ")),
        1,
    )
}

/// The projected current row of `key` in `slice` on a MySQL core.
pub(crate) fn project_row_mysql(
    core: &mut impl Queryable,
    slice: &MirrorSlice,
    key: i64,
) -> Result<Option<Vec<SqlValue>>, SyncError> {
    let sql = project_sql(slice, &ident(&slice.source_table), "?");
    core.exec_first::<mysql::Row, _, _>(sql, (key,))?
        .map(sovereign_mysql::values::row_values)
        .transpose()
        .map_err(SyncError::from)
}

/// The projected current row of `key` in `slice`, or `None` if it is not in the slice.
/// `schema` names the core database on `core` (`main`, or an attachment).
pub fn project_row(
    core: &Connection,
    schema: &str,
    slice: &MirrorSlice,
    key: i64,
) -> rusqlite::Result<Option<Vec<SqlValue>>> {
    let sql = project_sql(
        slice,
        &format!("{schema}.{}", ident(&slice.source_table)),
        "?1",
    );
    let n = slice.columns.len();
    core.prepare_cached(&sql)?
        .query_row([key], |row| {
            (0..n)
                .map(|i| row.get_ref(i).map(SqlValue::from_ref))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .optional()
}

/// The projected current row of `key` in `slice` on a PostgreSQL core.
pub(crate) fn project_row_postgres(
    core: &mut impl postgres::GenericClient,
    slice: &MirrorSlice,
    key: i64,
) -> Result<Option<Vec<SqlValue>>, postgres::Error> {
    let sql = project_sql(slice, &ident(&slice.source_table), "$1");
    core.query_opt(&sql, &[&key])?
        .map(|row| sovereign_postgres::row_values(&row))
        .transpose()
}

/// Projects one row of a slice by key (`None`: not in the slice).
type Project<'a> = &'a mut dyn FnMut(&MirrorSlice, i64) -> Result<Option<Vec<SqlValue>>, SyncError>;

/// The changes of a batch: each changed row of `entries` once, with its projection.
fn changes_of(
    entries: Vec<(i64, String, i64)>,
    catalog: &MirrorCatalog,
    project: Project<'_>,
) -> Result<Vec<MirrorChange>, SyncError> {
    let mut seen = std::collections::HashSet::new();
    let mut changes = Vec::new();
    for (_, slice_name, key) in entries {
        if !seen.insert((slice_name.clone(), key)) {
            continue;
        }
        let Some(slice) = catalog.slice(&slice_name) else {
            continue;
        };
        changes.push(MirrorChange {
            row: project(slice, key)?,
            slice: slice_name,
            key,
        });
    }
    Ok(changes)
}

/// The next batch after `watermark`: up to `limit` outbox rows, each changed row once,
/// with its projection as of now. Reading the rows after the outbox (on SQLite in the
/// same read transaction, on PostgreSQL in the next statement) makes the batch at least
/// as new as every change it covers; later changes get later sequence numbers and later
/// batches, and applying a newer row twice changes nothing.
pub fn next_batch(
    core: &dyn CoreAccess,
    catalog: &MirrorCatalog,
    watermark: i64,
    limit: usize,
) -> Result<Option<MirrorBatch>, SyncError> {
    match core.core_handle() {
        CoreHandle::Sqlite(core) => {
            let tx = rusqlite::Transaction::new_unchecked(
                core,
                rusqlite::TransactionBehavior::Deferred,
            )?;
            let entries: Vec<(i64, String, i64)> = tx
                .prepare_cached("SELECT seq, slice, row_key FROM _sv_change_outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
                .query_map(rusqlite::params![watermark, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let Some(upto_seq) = entries.last().map(|e| e.0) else {
                return Ok(None);
            };
            let drained = entries.len() < limit;
            let changes = changes_of(entries, catalog, &mut |slice, key| {
                Ok(project_row(&tx, "main", slice, key)?)
            })?;
            tx.finish()?;
            Ok(Some(MirrorBatch {
                upto_seq,
                changes,
                drained,
            }))
        }
        CoreHandle::Postgres(pg) => {
            // No transaction: rows read after the outbox are at least as new as every
            // change it lists (a later change gets a later sequence number and comes
            // again). Prepared statements: one round trip each.
            let outbox = pg.prepared(
                "SELECT seq, slice, row_key FROM _sv_change_outbox WHERE seq > $1
                 ORDER BY seq LIMIT $2",
            )?;
            let entries: Vec<(i64, String, i64)> = pg
                .with_client(|c| c.query(&outbox, &[&watermark, &(limit as i64)]))?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            server_batch(entries, catalog, limit, &mut |slice, keys| {
                let project = pg.prepared(&project_sql(
                    slice,
                    &ident(&slice.source_table),
                    "ANY($1::bigint[])",
                ))?;
                pg.with_client(|c| c.query(&project, &[&keys]))?
                    .iter()
                    .map(|row| Ok(sovereign_postgres::row_values(row)?))
                    .collect()
            })
        }
        CoreHandle::Mysql(my) => my.with_conn(|conn| {
            // Autocommit: each statement reads the newest committed rows, so rows read
            // after the outbox are at least as new as every change it lists.
            let entries: Vec<(i64, String, i64)> = conn.exec(
                "SELECT seq, slice, row_key FROM _sv_change_outbox WHERE seq > ?
                 ORDER BY seq LIMIT ?",
                (watermark, limit as u64),
            )?;
            server_batch(entries, catalog, limit, &mut |slice, keys| {
                conn.query::<mysql::Row, _>(project_keys_sql(slice, keys))?
                    .into_iter()
                    .map(|row| Ok(sovereign_mysql::values::row_values(row)?))
                    .collect()
            })
        }),
    }
}

/// Projects the rows of `keys` in a slice, each row's first value its key.
type ProjectKeys<'a> =
    &'a mut dyn FnMut(&MirrorSlice, &[i64]) -> Result<Vec<Vec<SqlValue>>, SyncError>;

/// The batch of outbox `entries` (read with `limit`) on a database server: one
/// projection query per slice for the whole batch (a round trip per row would cap the
/// rate the mirror can follow).
fn server_batch(
    entries: Vec<(i64, String, i64)>,
    catalog: &MirrorCatalog,
    limit: usize,
    project: ProjectKeys<'_>,
) -> Result<Option<MirrorBatch>, SyncError> {
    let Some(upto_seq) = entries.last().map(|e| e.0) else {
        return Ok(None);
    };
    let mut rows: HashMap<(String, i64), Vec<SqlValue>> = HashMap::new();
    for slice in catalog.slices() {
        let keys: Vec<i64> = entries
            .iter()
            .filter(|(_, name, _)| *name == slice.name)
            .map(|(_, _, key)| *key)
            .collect();
        if keys.is_empty() {
            continue;
        }
        for values in project(slice, &keys)? {
            if let Some(SqlValue::Integer(key)) = values.first() {
                rows.insert((slice.name.clone(), *key), values);
            }
        }
    }
    let drained = entries.len() < limit;
    let changes = changes_of(entries, catalog, &mut |slice, key| {
        Ok(rows.remove(&(slice.name.clone(), key)))
    })?;
    Ok(Some(MirrorBatch {
        upto_seq,
        changes,
        drained,
    }))
}

/// Records that the mirror applied everything up to `seq` and prunes those outbox rows.
pub fn acknowledge(core: &dyn CoreAccess, seq: i64) -> Result<(), SyncError> {
    match core.core_handle() {
        CoreHandle::Sqlite(core) => {
            let tx = rusqlite::Transaction::new_unchecked(
                core,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            tx.prepare_cached("DELETE FROM _sv_change_outbox WHERE seq <= ?1")?
                .execute([seq])?;
            set_state(&tx, "acked_seq", &seq.to_string())?;
            tx.commit()?;
        }
        CoreHandle::Postgres(pg) => pg.with_client(|client| -> Result<(), postgres::Error> {
            let mut tx = client.transaction()?;
            tx.execute("DELETE FROM _sv_change_outbox WHERE seq <= $1", &[&seq])?;
            set_state_postgres(&mut tx, "acked_seq", &seq.to_string())?;
            tx.commit()
        })?,
        CoreHandle::Mysql(my) => my.with_conn(|conn| -> Result<(), mysql::Error> {
            let mut tx = conn.start_transaction(mysql::TxOpts::default())?;
            tx.exec_drop("DELETE FROM _sv_change_outbox WHERE seq <= ?", (seq,))?;
            set_state_mysql(&mut tx, "acked_seq", &seq.to_string())?;
            tx.commit()
        })?,
    }
    Ok(())
}

fn set_state_postgres(
    core: &mut impl postgres::GenericClient,
    key: &str,
    value: &str,
) -> Result<(), postgres::Error> {
    core.execute(
        "INSERT INTO _sv_sync_state (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = sv_now_text()",
        &[&key, &value],
    )?;
    Ok(())
}

fn set_state_mysql(core: &mut impl Queryable, key: &str, value: &str) -> Result<(), mysql::Error> {
    core.exec_drop(
        "INSERT INTO _sv_sync_state (\"key\", value) VALUES (?, ?)
         ON DUPLICATE KEY UPDATE value = VALUES(value),
             updated_at = CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')",
        (key, value),
    )
}

/// Writes a core-side sync state value (`acked_seq`, `last_error`, ...).
pub fn set_state(core: &dyn CoreAccess, key: &str, value: &str) -> Result<(), SyncError> {
    match core.core_handle() {
        CoreHandle::Sqlite(core) => {
            core.prepare_cached(
                "INSERT INTO _sv_sync_state (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            )?
            .execute([key, value])?;
        }
        CoreHandle::Postgres(pg) => {
            pg.with_client(|client| set_state_postgres(client, key, value))?
        }
        CoreHandle::Mysql(my) => my.with_conn(|conn| set_state_mysql(conn, key, value))?,
    }
    Ok(())
}

/// A core-side sync state value with when it was written.
pub fn get_state(core: &dyn CoreAccess, key: &str) -> Result<Option<(String, String)>, SyncError> {
    Ok(match core.core_handle() {
        CoreHandle::Sqlite(core) => core
            .query_row(
                "SELECT value, updated_at FROM _sv_sync_state WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?,
        CoreHandle::Postgres(pg) => pg
            .with_client(|client| {
                client.query_opt(
                    "SELECT value, updated_at FROM _sv_sync_state WHERE key = $1",
                    &[&key],
                )
            })?
            .map(|r| (r.get(0), r.get(1))),
        CoreHandle::Mysql(my) => my.with_conn(|conn| {
            conn.exec_first(
                "SELECT value, updated_at FROM _sv_sync_state WHERE \"key\" = ?",
                (key,),
            )
        })?,
    })
}

/// The oldest sequence number still in the core outbox.
fn oldest_kept(core: &dyn CoreAccess) -> Result<Option<i64>, SyncError> {
    Ok(match core.core_handle() {
        CoreHandle::Sqlite(core) => {
            core.query_row("SELECT min(seq) FROM _sv_change_outbox", [], |r| r.get(0))?
        }
        CoreHandle::Postgres(pg) => pg
            .with_client(|client| client.query_one("SELECT min(seq) FROM _sv_change_outbox", &[]))?
            .get(0),
        CoreHandle::Mysql(my) => my
            .with_conn(|conn| conn.query_first("SELECT min(seq) FROM _sv_change_outbox"))?
            .flatten(),
    })
}

/// What the core last acknowledged (0 if nothing yet).
pub fn acked_seq(core: &dyn CoreAccess) -> Result<i64, SyncError> {
    match get_state(core, "acked_seq")? {
        None => Ok(0),
        Some((value, _)) => value.parse().map_err(|_| SyncError::BadState {
            key: "acked_seq",
            value,
        }),
    }
}

/// Why the mirror cannot simply continue from its watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebuildReason {
    /// It was never built (fresh plugin store).
    Fresh,
    /// It is behind what the core already pruned (restored from an older backup).
    BehindPrunedOutbox {
        /// The mirror's watermark.
        watermark: i64,
        /// What the core acknowledged and pruned.
        acked: i64,
    },
    /// Slices were added or removed.
    SlicesChanged,
}

/// Whether the mirror needs a full rebuild before incremental sync can continue.
/// A changed projection of an existing slice is an error, not a reason: it needs the
/// operator (`sv sync:plan`, then `sv sync:run --full`).
pub fn needs_rebuild(
    core: &dyn CoreAccess,
    mirror: &Mirror,
    catalog: &MirrorCatalog,
) -> Result<Option<RebuildReason>, SyncError> {
    let specs = mirror.specs()?;
    if specs.is_empty() && !catalog.slices().is_empty() {
        return Ok(Some(RebuildReason::Fresh));
    }
    for slice in catalog.slices() {
        if let Some(built) = specs.iter().find(|s| s.name == slice.name)
            && built != slice
        {
            return Err(SyncError::ProjectionChanged(slice.name.clone()));
        }
    }
    if specs.len() != catalog.slices().len()
        || catalog
            .slices()
            .iter()
            .any(|s| !specs.iter().any(|b| b.name == s.name))
    {
        return Ok(Some(RebuildReason::SlicesChanged));
    }
    let watermark = mirror.watermark()?;
    let acked = acked_seq(core)?;
    if watermark < acked {
        // Rows after the watermark were pruned unless the outbox still reaches back.
        if oldest_kept(core)?.is_none_or(|oldest| oldest > watermark + 1) {
            return Ok(Some(RebuildReason::BehindPrunedOutbox { watermark, acked }));
        }
    }
    Ok(None)
}

/// What a catch-up did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CatchUp {
    /// Batches applied.
    pub batches: u64,
    /// Row changes applied.
    pub changes: u64,
    /// The watermark afterwards.
    pub watermark: i64,
}

/// Applies batches until the outbox is drained, on this process's trusted connection.
pub fn catch_up(
    core: &dyn CoreAccess,
    mirror: &Mirror,
    catalog: &MirrorCatalog,
    batch_size: usize,
) -> Result<CatchUp, SyncError> {
    let report = catch_up_with(core, mirror, catalog, batch_size, &|batch| {
        mirror.apply_batch(catalog, batch, now_ms())
    })?;
    acknowledge(core, report.watermark)?;
    Ok(report)
}

/// Applies a batch somewhere (here, or in the extension host); `Ok(false)` if it was
/// already applied.
pub type Applier<'a> = &'a dyn Fn(&MirrorBatch) -> Result<bool, SyncError>;

/// Like [`catch_up`], with batches applied by `apply`; the watermark is read from
/// `mirror`. Does not acknowledge: the caller calls [`acknowledge`] with the returned
/// watermark when it suits it (pruning is only ever up to what was applied).
pub fn catch_up_with(
    core: &dyn CoreAccess,
    mirror: &Mirror,
    catalog: &MirrorCatalog,
    batch_size: usize,
    apply: Applier<'_>,
) -> Result<CatchUp, SyncError> {
    catch_up_from(core, mirror, catalog, batch_size, None, apply)
}

/// Like [`catch_up_with`], from the mirror's watermark as the caller last left it
/// (`known`; `None`: read it): the mirror's one writer knows it. A batch at or below
/// the real watermark changes nothing, so a stale `known` costs a read, never a change.
pub fn catch_up_from(
    core: &dyn CoreAccess,
    mirror: &Mirror,
    catalog: &MirrorCatalog,
    batch_size: usize,
    known: Option<i64>,
    apply: Applier<'_>,
) -> Result<CatchUp, SyncError> {
    let mut report = CatchUp {
        watermark: match known {
            Some(watermark) => watermark,
            None => mirror.watermark()?,
        },
        ..CatchUp::default()
    };
    while let Some(batch) = next_batch(core, catalog, report.watermark, batch_size)? {
        if apply(&batch)? {
            report.batches += 1;
            report.changes += batch.changes.len() as u64;
        }
        report.watermark = batch.upto_seq;
        // Later commits wake the worker again (or its poll finds them).
        if batch.drained {
            break;
        }
    }
    Ok(report)
}
