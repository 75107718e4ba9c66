//! Reconcile: compares the core projection and the mirror by SHA-256 checksums over
//! primary-key chunks, lists exactly the rows that differ, and repairs only those.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use sha2::{Digest, Sha256};
use sovereign_db::rusqlite::{self, Connection};
use sovereign_db_plugins::TrustedPluginStore;
use sovereign_db_plugins::mirror::{MirrorCatalog, MirrorSlice};
use sovereign_db_plugins::value::SqlValue;

use crate::publish::{project_row, value_of};
use crate::{Progress, SyncError, ident};

/// Keys per checksum chunk.
pub const CHUNK: usize = 1000;

/// How a mirror row differs from the core projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceKind {
    /// In the projection, not in the mirror.
    Missing,
    /// In the mirror, not in the projection.
    Extra,
    /// In both, with different values.
    Different,
}

/// One row that differs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// Slice.
    pub slice: String,
    /// Primary key.
    pub key: i64,
    /// How.
    pub kind: DifferenceKind,
}

/// The outcome of a reconcile.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReconcileReport {
    /// Chunks compared.
    pub chunks: u64,
    /// Chunks whose checksums differed.
    pub chunks_differing: u64,
    /// Rows that differ and are not explained by changes still waiting in the outbox.
    pub differences: Vec<Difference>,
    /// Rows that differ only because their change is not applied yet.
    pub pending: u64,
    /// Rows repaired (with `repair`).
    pub repaired: u64,
}

type Row = (i64, Vec<SqlValue>);

fn digest(rows: &[Row]) -> [u8; 32] {
    let mut h = Sha256::new();
    for (key, values) in rows {
        h.update(key.to_le_bytes());
        for v in values {
            match v {
                SqlValue::Null => h.update([0]),
                SqlValue::Integer(i) => {
                    h.update([1]);
                    h.update(i.to_le_bytes());
                }
                SqlValue::Real(f) => {
                    h.update([2]);
                    h.update(f.to_bits().to_le_bytes());
                }
                SqlValue::Text(t) => {
                    h.update([3]);
                    h.update((t.len() as u64).to_le_bytes());
                    h.update(t.as_bytes());
                }
                SqlValue::Blob(b) => {
                    h.update([4]);
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(b);
                }
            }
        }
    }
    h.finalize().into()
}

fn read_rows(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    n: usize,
) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |row| {
        let values = (0..n)
            .map(|i| row.get_ref(i).map(value_of))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let key = match values[0] {
            SqlValue::Integer(k) => k,
            _ => i64::MIN,
        };
        Ok((key, values))
    })?;
    rows.collect()
}

/// Compares every slice; with `repair`, rewrites exactly the drifted rows from the core.
pub fn reconcile(
    core_path: &Path,
    mirror: &TrustedPluginStore,
    catalog: &MirrorCatalog,
    repair: bool,
    progress: Progress<'_>,
) -> Result<ReconcileReport, SyncError> {
    let conn = mirror.connection();
    conn.execute(
        "ATTACH DATABASE ?1 AS sv_core",
        [format!("file:{}?mode=ro", core_path.display())],
    )?;
    let result = (|| -> Result<ReconcileReport, SyncError> {
        let mut report = compare(conn, mirror, catalog, progress)?;
        if repair && !report.differences.is_empty() {
            report.repaired = repair_rows(conn, catalog, &report.differences)?;
        }
        Ok(report)
    })();
    let detached = conn.execute_batch("DETACH DATABASE sv_core");
    let report = result?;
    detached?;
    Ok(report)
}

fn compare(
    conn: &Connection,
    mirror: &TrustedPluginStore,
    catalog: &MirrorCatalog,
    progress: Progress<'_>,
) -> Result<ReconcileReport, SyncError> {
    let watermark = mirror.mirror_watermark()?;
    // One read transaction over both files: the mirror and the core seen at one moment.
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Deferred)?;
    let mut report = ReconcileReport::default();
    let total: u64 = catalog
        .slices()
        .iter()
        .map(|s| {
            tx.query_row(
                &format!("SELECT count(*) FROM sv_core.{}", ident(&s.source_table)),
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
        .sum::<rusqlite::Result<u64>>()?;
    let mut done = 0u64;
    for slice in catalog.slices() {
        let pending: HashSet<i64> = tx
            .prepare("SELECT DISTINCT row_key FROM sv_core._sv_change_outbox WHERE slice = ?1 AND seq > ?2")?
            .query_map(rusqlite::params![slice.name, watermark], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let n = slice.columns.len();
        let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
        let key = ident(slice.key_column());
        let filter = slice
            .filter
            .as_deref()
            .map(|f| format!(" AND ({f})"))
            .unwrap_or_default();
        let core_sql = format!(
            "SELECT {} FROM sv_core.{} WHERE {key} > ?1{filter} ORDER BY {key} LIMIT {CHUNK}",
            columns.join(", "),
            ident(&slice.source_table)
        );
        let mirror_sql = format!(
            "SELECT {} FROM main.{} WHERE {key} > ?1 AND {key} <= ?2 ORDER BY {key}",
            columns.join(", "),
            ident(&slice.table_name())
        );
        let mut after = i64::MIN;
        loop {
            let core_rows = read_rows(&tx, &core_sql, &[&after], n)?;
            // The last chunk reaches to the end of the key space, so extra mirror rows
            // beyond the core's last key are compared too.
            let upto = if core_rows.len() < CHUNK {
                i64::MAX
            } else {
                core_rows.last().map_or(i64::MAX, |r| r.0)
            };
            let mirror_rows = read_rows(&tx, &mirror_sql, &[&after, &upto], n)?;
            report.chunks += 1;
            if digest(&core_rows) != digest(&mirror_rows) {
                report.chunks_differing += 1;
                diff_chunk(slice, &core_rows, &mirror_rows, &pending, &mut report);
            }
            done += core_rows.len() as u64;
            progress(done.min(total), total);
            if upto == i64::MAX {
                break;
            }
            after = upto;
        }
    }
    tx.finish()?;
    Ok(report)
}

fn diff_chunk(
    slice: &MirrorSlice,
    core: &[Row],
    mirror: &[Row],
    pending: &HashSet<i64>,
    report: &mut ReconcileReport,
) {
    let core: BTreeMap<i64, &Vec<SqlValue>> = core.iter().map(|(k, v)| (*k, v)).collect();
    let mirror: BTreeMap<i64, &Vec<SqlValue>> = mirror.iter().map(|(k, v)| (*k, v)).collect();
    let keys: std::collections::BTreeSet<i64> = core.keys().chain(mirror.keys()).copied().collect();
    for key in keys {
        let kind = match (core.get(&key), mirror.get(&key)) {
            (Some(_), None) => DifferenceKind::Missing,
            (None, Some(_)) => DifferenceKind::Extra,
            (Some(a), Some(b)) if a != b => DifferenceKind::Different,
            _ => continue,
        };
        if pending.contains(&key) {
            report.pending += 1;
        } else {
            report.differences.push(Difference {
                slice: slice.name.clone(),
                key,
                kind,
            });
        }
    }
}

fn repair_rows(
    conn: &Connection,
    catalog: &MirrorCatalog,
    differences: &[Difference],
) -> Result<u64, SyncError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let mut repaired = 0;
    for d in differences {
        let Some(slice) = catalog.slice(&d.slice) else {
            continue;
        };
        let row = project_row(&tx, "sv_core", slice, d.key)?;
        sovereign_db_plugins::mirror::write_mirror_row(&tx, slice, d.key, row.as_deref())?;
        repaired += 1;
    }
    tx.commit()?;
    Ok(repaired)
}
