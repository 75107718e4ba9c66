//! Reconcile: compares the core projection and the mirror by SHA-256 checksums over
//! primary-key chunks, lists exactly the rows that differ, and repairs only those.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use mysql::prelude::Queryable;
use sha2::{Digest, Sha256};
use sovereign_db::rusqlite::{self, Connection};
use sovereign_db_core::{CoreAccess, CoreHandle};
use sovereign_db_plugins::TrustedPluginStore;
use sovereign_db_plugins::mirror::{MirrorCatalog, MirrorSlice};
use sovereign_db_plugins::value::SqlValue;
use sovereign_mysql::mirror::MyMirror;
use sovereign_postgres::mirror::PgMirror;

use crate::publish::{project_row, project_row_mysql, project_row_postgres};
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
            .map(|i| row.get_ref(i).map(SqlValue::from_ref))
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
            report.repaired = repair_rows(
                conn,
                &SqliteSide {
                    conn,
                    schema: "sv_core",
                },
                catalog,
                &report.differences,
            )?;
        }
        Ok(report)
    })();
    let detached = conn.execute_batch("DETACH DATABASE sv_core");
    let report = result?;
    detached?;
    Ok(report)
}

/// The core's side of a comparison, read in one transaction (one snapshot).
trait CoreSide {
    /// Rows of every slice's source, for progress.
    fn count(&self, catalog: &MirrorCatalog) -> Result<u64, SyncError>;
    /// Keys with outbox entries of `slice` after `watermark` (changes not applied yet).
    fn pending(&self, slice: &MirrorSlice, watermark: i64) -> Result<HashSet<i64>, SyncError>;
    /// Up to [`CHUNK`] projected rows of `slice` with keys after `after`, in key order.
    fn chunk(&self, slice: &MirrorSlice, after: i64) -> Result<Vec<Row>, SyncError>;
    /// The projected row of `key`, if it is in the slice.
    fn project(&self, slice: &MirrorSlice, key: i64) -> Result<Option<Vec<SqlValue>>, SyncError>;
}

/// A SQLite core: its connection in a read transaction, and the schema the core is in
/// there (`main`, or `sv_core` attached to the mirror's connection).
struct SqliteSide<'a> {
    conn: &'a Connection,
    schema: &'static str,
}

/// The SELECT of a slice's projection in `table` (the source, qualified as needed), a
/// chunk after parameter `param` (`?1` on SQLite, `$1` on PostgreSQL).
fn core_chunk_sql(slice: &MirrorSlice, table: &str, param: &str) -> String {
    let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
    let key = ident(slice.key_column());
    let filter = slice
        .filter
        .as_deref()
        .map(|f| format!(" AND ({f})"))
        .unwrap_or_default();
    format!(
        "SELECT {} FROM {table} WHERE {key} > {param}{filter} ORDER BY {key} LIMIT {CHUNK}",
        columns.join(", ")
    )
}

impl CoreSide for SqliteSide<'_> {
    fn count(&self, catalog: &MirrorCatalog) -> Result<u64, SyncError> {
        let mut total = 0u64;
        for slice in catalog.slices() {
            total += self.conn.query_row(
                &format!(
                    "SELECT count(*) FROM {}.{}",
                    self.schema,
                    ident(&slice.source_table)
                ),
                [],
                |r| r.get::<_, i64>(0),
            )? as u64;
        }
        Ok(total)
    }

    fn pending(&self, slice: &MirrorSlice, watermark: i64) -> Result<HashSet<i64>, SyncError> {
        Ok(self
            .conn
            .prepare(&format!(
                "SELECT DISTINCT row_key FROM {}._sv_change_outbox WHERE slice = ?1 AND seq > ?2",
                self.schema
            ))?
            .query_map(rusqlite::params![slice.name, watermark], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    fn chunk(&self, slice: &MirrorSlice, after: i64) -> Result<Vec<Row>, SyncError> {
        Ok(read_rows(
            self.conn,
            &core_chunk_sql(
                slice,
                &format!("{}.{}", self.schema, ident(&slice.source_table)),
                "?1",
            ),
            &[&after],
            slice.columns.len(),
        )?)
    }

    fn project(&self, slice: &MirrorSlice, key: i64) -> Result<Option<Vec<SqlValue>>, SyncError> {
        Ok(project_row(self.conn, self.schema, slice, key)?)
    }
}

/// A MySQL core in a read-only consistent-snapshot transaction.
struct MysqlSide<'a>(RefCell<mysql::Transaction<'a>>);

impl CoreSide for MysqlSide<'_> {
    fn count(&self, catalog: &MirrorCatalog) -> Result<u64, SyncError> {
        let mut total = 0u64;
        for slice in catalog.slices() {
            let sql = format!("SELECT count(*) FROM {}", ident(&slice.source_table));
            total += self.0.borrow_mut().query_first::<u64, _>(sql)?.unwrap_or(0);
        }
        Ok(total)
    }

    fn pending(&self, slice: &MirrorSlice, watermark: i64) -> Result<HashSet<i64>, SyncError> {
        Ok(self
            .0
            .borrow_mut()
            .exec::<i64, _, _>(
                "SELECT DISTINCT row_key FROM _sv_change_outbox WHERE slice = ? AND seq > ?",
                (&slice.name, watermark),
            )?
            .into_iter()
            .collect())
    }

    fn chunk(&self, slice: &MirrorSlice, after: i64) -> Result<Vec<Row>, SyncError> {
        let sql = core_chunk_sql(slice, &ident(&slice.source_table), "?");
        self.0
            .borrow_mut()
            .exec::<mysql::Row, _, _>(sql, (after,))?
            .into_iter()
            .map(|row| {
                let values = sovereign_mysql::values::row_values(row)?;
                let key = match values[0] {
                    SqlValue::Integer(k) => k,
                    _ => i64::MIN,
                };
                Ok((key, values))
            })
            .collect()
    }

    fn project(&self, slice: &MirrorSlice, key: i64) -> Result<Option<Vec<SqlValue>>, SyncError> {
        project_row_mysql(&mut *self.0.borrow_mut(), slice, key)
    }
}

/// A PostgreSQL core in a read-only repeatable-read transaction.
struct PostgresSide<'a>(RefCell<postgres::Transaction<'a>>);

impl<'a> PostgresSide<'a> {
    fn begin(core: &'a mut postgres::Client) -> Result<Self, SyncError> {
        Ok(PostgresSide(RefCell::new(crate::snapshot(core)?)))
    }

    fn rows(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, SyncError> {
        self.0
            .borrow_mut()
            .query(sql, params)?
            .iter()
            .map(|row| {
                let values = sovereign_postgres::row_values(row)?;
                let key = match values[0] {
                    SqlValue::Integer(k) => k,
                    _ => i64::MIN,
                };
                Ok((key, values))
            })
            .collect()
    }
}

impl CoreSide for PostgresSide<'_> {
    fn count(&self, catalog: &MirrorCatalog) -> Result<u64, SyncError> {
        let mut total = 0u64;
        for slice in catalog.slices() {
            let sql = format!("SELECT count(*) FROM {}", ident(&slice.source_table));
            total += self.0.borrow_mut().query_one(&sql, &[])?.get::<_, i64>(0) as u64;
        }
        Ok(total)
    }

    fn pending(&self, slice: &MirrorSlice, watermark: i64) -> Result<HashSet<i64>, SyncError> {
        Ok(self
            .0
            .borrow_mut()
            .query(
                "SELECT DISTINCT row_key FROM _sv_change_outbox WHERE slice = $1 AND seq > $2",
                &[&slice.name, &watermark],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn chunk(&self, slice: &MirrorSlice, after: i64) -> Result<Vec<Row>, SyncError> {
        let sql = core_chunk_sql(slice, &ident(&slice.source_table), "$1");
        self.rows(&sql, &[&after])
    }

    fn project(&self, slice: &MirrorSlice, key: i64) -> Result<Option<Vec<SqlValue>>, SyncError> {
        Ok(project_row_postgres(&mut *self.0.borrow_mut(), slice, key)?)
    }
}

/// The mirror's rows of a slice with keys in `(after, upto]`.
type MirrorRange<'a> = &'a mut dyn FnMut(&MirrorSlice, i64, i64) -> Result<Vec<Row>, SyncError>;

/// Compares every slice chunk by chunk (checksums first, rows only where they differ).
/// `watermark` is the mirror's when the comparison began.
fn compare_sides(
    core: &dyn CoreSide,
    watermark: i64,
    mirror_range: MirrorRange<'_>,
    catalog: &MirrorCatalog,
    progress: Progress<'_>,
) -> Result<ReconcileReport, SyncError> {
    let total = core.count(catalog)?;
    let mut report = ReconcileReport::default();
    let mut done = 0u64;
    for slice in catalog.slices() {
        let pending = core.pending(slice, watermark)?;
        let mut after = i64::MIN;
        loop {
            let core_rows = core.chunk(slice, after)?;
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

/// The mirror's rows of `slice` in `(after, upto]` on a SQLite mirror connection.
fn sqlite_mirror_range(
    conn: &Connection,
    slice: &MirrorSlice,
    after: i64,
    upto: i64,
) -> Result<Vec<Row>, SyncError> {
    let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
    let key = ident(slice.key_column());
    let sql = format!(
        "SELECT {} FROM main.{} WHERE {key} > ?1 AND {key} <= ?2 ORDER BY {key}",
        columns.join(", "),
        ident(&slice.table_name())
    );
    Ok(read_rows(
        conn,
        &sql,
        &[&after, &upto],
        slice.columns.len(),
    )?)
}

/// Compares a core on a database server (PostgreSQL, MySQL) with a SQLite mirror; with
/// `repair`, rewrites exactly the drifted rows (in one transaction of the mirror). The
/// two are read separately: a change committed meanwhile may show as a difference,
/// which a second run no longer reports.
pub fn reconcile_from_server_core(
    core: &dyn CoreAccess,
    mirror: &TrustedPluginStore,
    catalog: &MirrorCatalog,
    repair: bool,
    progress: Progress<'_>,
) -> Result<ReconcileReport, SyncError> {
    let watermark = mirror.mirror_watermark()?;
    let conn = mirror.connection();
    with_core_side(core, &mut |side| {
        let mut report = compare_sides(
            side,
            watermark,
            &mut |slice, after, upto| sqlite_mirror_range(conn, slice, after, upto),
            catalog,
            progress,
        )?;
        if repair && !report.differences.is_empty() {
            report.repaired = repair_rows(conn, side, catalog, &report.differences)?;
        }
        Ok(report)
    })
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
        &SqliteSide {
            conn: &tx,
            schema: "sv_core",
        },
        watermark,
        &mut |slice, after, upto| sqlite_mirror_range(&tx, slice, after, upto),
        catalog,
        progress,
    )?;
    tx.finish()?;
    Ok(report)
}

/// A mirror on a database server, as reconcile reads and repairs it.
pub trait ServerMirror {
    /// The last core outbox sequence number applied.
    fn watermark(&mut self) -> Result<i64, SyncError>;
    /// The mirror's rows of `slice` with keys in `(after, upto]`, in key order.
    fn rows(&mut self, slice: &MirrorSlice, after: i64, upto: i64) -> Result<Vec<Row>, SyncError>;
    /// Rewrites rows in one transaction; returns how many.
    fn repair(
        &mut self,
        fixes: &[(&MirrorSlice, i64, Option<Vec<SqlValue>>)],
    ) -> Result<u64, SyncError>;
}

impl ServerMirror for PgMirror {
    fn watermark(&mut self) -> Result<i64, SyncError> {
        Ok(PgMirror::watermark(self)?)
    }
    fn rows(&mut self, slice: &MirrorSlice, after: i64, upto: i64) -> Result<Vec<Row>, SyncError> {
        Ok(PgMirror::rows(self, slice, after, upto)?)
    }
    fn repair(
        &mut self,
        fixes: &[(&MirrorSlice, i64, Option<Vec<SqlValue>>)],
    ) -> Result<u64, SyncError> {
        Ok(PgMirror::repair(self, fixes)?)
    }
}

impl ServerMirror for MyMirror {
    fn watermark(&mut self) -> Result<i64, SyncError> {
        Ok(MyMirror::watermark(self)?)
    }
    fn rows(&mut self, slice: &MirrorSlice, after: i64, upto: i64) -> Result<Vec<Row>, SyncError> {
        Ok(MyMirror::rows(self, slice, after, upto)?)
    }
    fn repair(
        &mut self,
        fixes: &[(&MirrorSlice, i64, Option<Vec<SqlValue>>)],
    ) -> Result<u64, SyncError> {
        Ok(MyMirror::repair(self, fixes)?)
    }
}

/// Compares the core's projection with a mirror on a database server (PostgreSQL,
/// MySQL); with `repair`, rewrites exactly the drifted rows (in one transaction of the
/// mirror). The two are read separately: a change committed meanwhile may show as a
/// difference, which a second run no longer reports.
pub fn reconcile_server_mirror(
    core: &dyn CoreAccess,
    mirror: &mut dyn ServerMirror,
    catalog: &MirrorCatalog,
    repair: bool,
    progress: Progress<'_>,
) -> Result<ReconcileReport, SyncError> {
    let watermark = mirror.watermark()?;
    let mut run = |side: &dyn CoreSide| -> Result<ReconcileReport, SyncError> {
        let mut report = compare_sides(
            side,
            watermark,
            &mut |slice, after, upto| mirror.rows(slice, after, upto),
            catalog,
            progress,
        )?;
        if repair && !report.differences.is_empty() {
            let mut fixes = Vec::new();
            for d in &report.differences {
                if let Some(slice) = catalog.slice(&d.slice) {
                    fixes.push((slice, d.key, side.project(slice, d.key)?));
                }
            }
            report.repaired = mirror.repair(&fixes)?;
        }
        Ok(report)
    };
    with_core_side(core, &mut run)
}

/// Runs `f` on the core's side read from one snapshot (a read transaction).
fn with_core_side<T>(
    core: &dyn CoreAccess,
    f: &mut dyn FnMut(&dyn CoreSide) -> Result<T, SyncError>,
) -> Result<T, SyncError> {
    match core.core_handle() {
        CoreHandle::Sqlite(conn) => {
            let tx = rusqlite::Transaction::new_unchecked(
                conn,
                rusqlite::TransactionBehavior::Deferred,
            )?;
            let value = f(&SqliteSide {
                conn: &tx,
                schema: "main",
            })?;
            tx.finish()?;
            Ok(value)
        }
        CoreHandle::Postgres(pg) => pg.with_client(|client| {
            let side = PostgresSide::begin(client)?;
            let value = f(&side)?;
            side.0.into_inner().commit()?;
            Ok(value)
        }),
        CoreHandle::Mysql(my) => my.with_conn(|conn| {
            let side = MysqlSide(RefCell::new(crate::mysql_snapshot(conn)?));
            let value = f(&side)?;
            side.0.into_inner().commit()?;
            Ok(value)
        }),
    }
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
    core: &dyn CoreSide,
    catalog: &MirrorCatalog,
    differences: &[Difference],
) -> Result<u64, SyncError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let mut repaired = 0;
    for d in differences {
        let Some(slice) = catalog.slice(&d.slice) else {
            continue;
        };
        let row = core.project(slice, d.key)?;
        sovereign_db_plugins::mirror::write_mirror_row(&tx, slice, d.key, row.as_deref())?;
        repaired += 1;
    }
    tx.commit()?;
    Ok(repaired)
}
