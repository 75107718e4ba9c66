//! Reconcile: compares the core projection and the mirror by SHA-256 checksums over
//! primary-key chunks, lists exactly the rows that differ, and repairs only those.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use sha2::{Digest, Sha256};
use sovereign_db::rusqlite::{self, Connection};
use sovereign_db_plugins::TrustedPluginStore;
use sovereign_db_plugins::mirror::{MirrorCatalog, MirrorSlice};
use sovereign_db_plugins::value::SqlValue;
use sovereign_postgres::mirror::PgMirror;

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

/// The core's side of a comparison: its connection, read in one transaction, the
/// schema the core is in there (`main`, or `sv_core` attached), and the mirror's
/// watermark when the comparison began.
struct CoreSide<'a> {
    conn: &'a Connection,
    schema: &'static str,
    watermark: i64,
}

/// The mirror's rows of a slice with keys in `(after, upto]`.
type MirrorRange<'a> = &'a mut dyn FnMut(&MirrorSlice, i64, i64) -> Result<Vec<Row>, SyncError>;

/// The SELECT of a slice's projection in core schema `schema`, a chunk after `?1`.
fn core_chunk_sql(slice: &MirrorSlice, schema: &str) -> String {
    let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
    let key = ident(slice.key_column());
    let filter = slice
        .filter
        .as_deref()
        .map(|f| format!(" AND ({f})"))
        .unwrap_or_default();
    format!(
        "SELECT {} FROM {schema}.{} WHERE {key} > ?1{filter} ORDER BY {key} LIMIT {CHUNK}",
        columns.join(", "),
        ident(&slice.source_table)
    )
}

/// Keys with outbox entries of `slice` after `watermark`, in core schema `schema`.
fn pending_keys(
    conn: &Connection,
    schema: &str,
    slice: &MirrorSlice,
    watermark: i64,
) -> rusqlite::Result<HashSet<i64>> {
    conn.prepare(&format!(
        "SELECT DISTINCT row_key FROM {schema}._sv_change_outbox WHERE slice = ?1 AND seq > ?2"
    ))?
    .query_map(rusqlite::params![slice.name, watermark], |r| r.get(0))?
    .collect()
}

/// Compares every slice chunk by chunk (checksums first, rows only where they differ).
fn compare_sides(
    core: &CoreSide<'_>,
    mirror_range: MirrorRange<'_>,
    catalog: &MirrorCatalog,
    progress: Progress<'_>,
) -> Result<ReconcileReport, SyncError> {
    let total = count_sources(core.conn, core.schema, catalog)?;
    let mut report = ReconcileReport::default();
    let mut done = 0u64;
    for slice in catalog.slices() {
        let pending = pending_keys(core.conn, core.schema, slice, core.watermark)?;
        let mut after = i64::MIN;
        loop {
            let core_rows = read_rows(
                core.conn,
                &core_chunk_sql(slice, core.schema),
                &[&after],
                slice.columns.len(),
            )?;
            // The last chunk reaches to the end of the key space, so extra mirror rows
            // beyond the core's last key are compared too.
            let upto = if core_rows.len() < CHUNK {
                i64::MAX
            } else {
                core_rows.last().map_or(i64::MAX, |r| r.0)
            };
            let mirror_rows = mirror_range(slice, after, upto)?;
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
    Ok(report)
}

fn count_sources(
    conn: &Connection,
    schema: &str,
    catalog: &MirrorCatalog,
) -> rusqlite::Result<u64> {
    catalog
        .slices()
        .iter()
        .map(|s| {
            conn.query_row(
                &format!("SELECT count(*) FROM {schema}.{}", ident(&s.source_table)),
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
        .sum()
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
    // Both sides in one SQLite connection: the mirror in `main`, the core attached.
    let report = compare_sides(
        &CoreSide {
            conn: &tx,
            schema: "sv_core",
            watermark,
        },
        &mut |slice, after, upto| {
            let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
            let key = ident(slice.key_column());
            let sql = format!(
                "SELECT {} FROM main.{} WHERE {key} > ?1 AND {key} <= ?2 ORDER BY {key}",
                columns.join(", "),
                ident(&slice.table_name())
            );
            Ok(read_rows(&tx, &sql, &[&after, &upto], slice.columns.len())?)
        },
        catalog,
        progress,
    )?;
    tx.finish()?;
    Ok(report)
}

/// Compares the core's projection with the mirror on PostgreSQL; with `repair`,
/// rewrites exactly the drifted rows (in one PostgreSQL transaction). The two are read
/// separately: a change committed meanwhile may show as a difference, which a second
/// run no longer reports.
pub fn reconcile_postgres(
    core: &Connection,
    mirror: &mut PgMirror,
    catalog: &MirrorCatalog,
    repair: bool,
    progress: Progress<'_>,
) -> Result<ReconcileReport, SyncError> {
    let watermark = mirror.watermark()?;
    // The core's side from one snapshot.
    let tx = rusqlite::Transaction::new_unchecked(core, rusqlite::TransactionBehavior::Deferred)?;
    let mut report = compare_sides(
        &CoreSide {
            conn: &tx,
            schema: "main",
            watermark,
        },
        &mut |slice, after, upto| Ok(mirror.rows(slice, after, upto)?),
        catalog,
        progress,
    )?;
    if repair && !report.differences.is_empty() {
        let mut fixes = Vec::new();
        for d in &report.differences {
            if let Some(slice) = catalog.slice(&d.slice) {
                fixes.push((slice, d.key, project_row(&tx, "main", slice, d.key)?));
            }
        }
        report.repaired = mirror.repair(&fixes)?;
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
