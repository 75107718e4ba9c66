//! Incremental sync: batches read from the core outbox, applied to the mirror together
//! with its watermark, then acknowledged and pruned from the outbox.

use sovereign_db::rusqlite::{self, Connection, OptionalExtension};
use sovereign_db_plugins::mirror::{MirrorBatch, MirrorCatalog, MirrorChange, MirrorSlice};
use sovereign_db_plugins::value::SqlValue;

use crate::{Mirror, SyncError, ident, now_ms};

/// The projected current row of `key` in `slice`, or `None` if it is not in the slice.
/// `schema` names the core database on `core` (`main`, or an attachment).
pub fn project_row(
    core: &Connection,
    schema: &str,
    slice: &MirrorSlice,
    key: i64,
) -> rusqlite::Result<Option<Vec<SqlValue>>> {
    let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
    let filter = slice
        .filter
        .as_deref()
        .map(|f| format!(" AND ({f})"))
        .unwrap_or_default();
    let sql = format!(
        "SELECT {} FROM {schema}.{} WHERE {} = ?1{filter}",
        columns.join(", "),
        ident(&slice.source_table),
        ident(slice.key_column())
    );
    let n = columns.len();
    core.prepare_cached(&sql)?
        .query_row([key], |row| {
            (0..n)
                .map(|i| row.get_ref(i).map(value_of))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .optional()
}

pub(crate) fn value_of(v: rusqlite::types::ValueRef<'_>) -> SqlValue {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
    }
}

/// The next batch after `watermark`: up to `limit` outbox rows, each changed row once,
/// with its projection as of now. Reading the rows in the same read transaction as the
/// outbox makes the batch at least as new as every change it covers; later changes get
/// later sequence numbers and later batches.
pub fn next_batch(
    core: &Connection,
    catalog: &MirrorCatalog,
    watermark: i64,
    limit: usize,
) -> Result<Option<MirrorBatch>, SyncError> {
    let tx = rusqlite::Transaction::new_unchecked(core, rusqlite::TransactionBehavior::Deferred)?;
    let entries: Vec<(i64, String, i64)> = tx
        .prepare_cached("SELECT seq, slice, row_key FROM _sv_change_outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
        .query_map(rusqlite::params![watermark, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let Some(upto_seq) = entries.last().map(|e| e.0) else {
        return Ok(None);
    };
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
            row: project_row(&tx, "main", slice, key)?,
            slice: slice_name,
            key,
        });
    }
    tx.finish()?;
    Ok(Some(MirrorBatch { upto_seq, changes }))
}

/// Records that the mirror applied everything up to `seq` and prunes those outbox rows.
pub fn acknowledge(core: &Connection, seq: i64) -> Result<(), SyncError> {
    let tx = rusqlite::Transaction::new_unchecked(core, rusqlite::TransactionBehavior::Immediate)?;
    tx.prepare_cached("DELETE FROM _sv_change_outbox WHERE seq <= ?1")?
        .execute([seq])?;
    set_state(&tx, "acked_seq", &seq.to_string())?;
    tx.commit()?;
    Ok(())
}

/// Writes a core-side sync state value (`acked_seq`, `last_error`, ...).
pub fn set_state(core: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    core.prepare_cached(
        "INSERT INTO _sv_sync_state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
    )?
    .execute([key, value])?;
    Ok(())
}

/// A core-side sync state value with when it was written.
pub fn get_state(core: &Connection, key: &str) -> rusqlite::Result<Option<(String, String)>> {
    core.query_row(
        "SELECT value, updated_at FROM _sv_sync_state WHERE key = ?1",
        [key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
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
    core: &Connection,
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
    let acked: i64 = get_state(core, "acked_seq")?
        .and_then(|(v, _)| v.parse().ok())
        .unwrap_or(0);
    if watermark < acked {
        let oldest_kept: Option<i64> =
            core.query_row("SELECT min(seq) FROM _sv_change_outbox", [], |r| r.get(0))?;
        // Rows after the watermark were pruned unless the outbox still reaches back.
        if oldest_kept.is_none_or(|oldest| oldest > watermark + 1) {
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
    core: &Connection,
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
    core: &Connection,
    mirror: &Mirror,
    catalog: &MirrorCatalog,
    batch_size: usize,
    apply: Applier<'_>,
) -> Result<CatchUp, SyncError> {
    let mut report = CatchUp {
        watermark: mirror.watermark()?,
        ..CatchUp::default()
    };
    while let Some(batch) = next_batch(core, catalog, report.watermark, batch_size)? {
        if apply(&batch)? {
            report.batches += 1;
            report.changes += batch.changes.len() as u64;
        }
        report.watermark = batch.upto_seq;
    }
    Ok(report)
}
