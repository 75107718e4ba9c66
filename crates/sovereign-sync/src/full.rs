//! Full resync: rebuilds mirror tables from the core in one transaction, at a watermark
//! taken from the same snapshot, so incremental sync continues exactly from there.

use std::path::Path;

use sovereign_db::rusqlite::{self, Connection};
use sovereign_db_plugins::TrustedPluginStore;
use sovereign_db_plugins::mirror::{MirrorCatalog, MirrorSlice};
use sovereign_postgres::mirror::{ColumnKind, PgMirror};

use crate::{Mirror, Progress, SyncError, ident, now_ms, publish};

/// The highest core outbox sequence number ever given, read in `schema` (`main` or the
/// attached `sv_core`): the watermark of a rebuild from the same snapshot.
fn outbox_high_water(conn: &Connection, schema: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        &format!(
            "SELECT max(coalesce((SELECT max(seq) FROM {schema}._sv_change_outbox), 0),
                        coalesce((SELECT seq FROM {schema}.sqlite_sequence WHERE name = '_sv_change_outbox'), 0))"
        ),
        [],
        |r| r.get(0),
    )
}

/// Rows copied per statement, so long builds can report progress.
const CHUNK: i64 = 100_000;

/// What a full resync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullReport {
    /// The watermark the mirror now stands at.
    pub watermark: i64,
    /// Rows per slice.
    pub rows: Vec<(String, u64)>,
    /// Slices whose tables were dropped because they are no longer configured.
    pub dropped: Vec<String>,
}

/// One line per change a full resync makes, for operators to read first.
pub fn plan(mirror: &Mirror, catalog: &MirrorCatalog) -> Result<Vec<String>, SyncError> {
    let built = mirror.specs()?;
    let mut steps = Vec::new();
    for slice in catalog.slices() {
        match built.iter().find(|b| b.name == slice.name) {
            None => steps.push(format!(
                "create {} from {} ({}){}",
                slice.table_name(),
                slice.source_table,
                slice.columns.join(", "),
                slice
                    .filter
                    .as_deref()
                    .map(|f| format!(" where {f}"))
                    .unwrap_or_default()
            )),
            Some(b) if b == slice => steps.push(format!(
                "rebuild {} (unchanged projection)",
                slice.table_name()
            )),
            Some(b) => {
                let added: Vec<&String> = slice
                    .columns
                    .iter()
                    .filter(|c| !b.columns.contains(c))
                    .collect();
                let removed: Vec<&String> = b
                    .columns
                    .iter()
                    .filter(|c| !slice.columns.contains(c))
                    .collect();
                let mut what = Vec::new();
                if !added.is_empty() {
                    what.push(format!("add columns {added:?}"));
                }
                if !removed.is_empty() {
                    what.push(format!(
                        "remove columns {removed:?} (plugins granted them lose them)"
                    ));
                }
                if b.filter != slice.filter {
                    what.push(format!("filter {:?} -> {:?}", b.filter, slice.filter));
                }
                if b.source_table != slice.source_table {
                    what.push(format!(
                        "source {} -> {}",
                        b.source_table, slice.source_table
                    ));
                }
                if b.allow_secret != slice.allow_secret {
                    what.push(format!(
                        "allowed secret columns {:?} -> {:?}",
                        b.allow_secret, slice.allow_secret
                    ));
                }
                steps.push(format!(
                    "rebuild {}: {}",
                    slice.table_name(),
                    what.join("; ")
                ));
            }
        }
    }
    for b in &built {
        if catalog.slice(&b.name).is_none() {
            steps.push(format!(
                "drop {} (slice no longer configured)",
                b.table_name()
            ));
        }
    }
    Ok(steps)
}

/// Rebuilds every configured slice from the core and drops slices no longer
/// configured, at the watermark of the same snapshot; then acknowledges the watermark
/// to the core, which prunes its outbox. A SQLite mirror copies from `core_path`
/// attached read-only; a PostgreSQL mirror gets the rows by binary `COPY`, read in one
/// read transaction of `core`.
pub fn full_resync(
    core: &Connection,
    core_path: &Path,
    mirror: &Mirror,
    catalog: &MirrorCatalog,
    progress: Progress<'_>,
) -> Result<FullReport, SyncError> {
    crate::capture::validate(core, catalog)?;
    let dropped: Vec<String> = mirror
        .specs()?
        .into_iter()
        .filter(|b| catalog.slice(&b.name).is_none())
        .map(|b| b.name)
        .collect();
    let total: u64 = catalog
        .slices()
        .iter()
        .map(|s| count_source(core, s))
        .sum::<rusqlite::Result<u64>>()?;
    let (watermark, rows) = match mirror {
        Mirror::Sqlite(store) => {
            rebuild_sqlite(core_path, store, catalog, &dropped, total, progress)?
        }
        Mirror::Postgres(pg) => rebuild_postgres(
            core,
            &mut pg.borrow_mut(),
            catalog,
            &dropped,
            total,
            progress,
        )?,
    };
    publish::acknowledge(core, watermark)?;
    Ok(FullReport {
        watermark,
        rows,
        dropped,
    })
}

type Rebuilt = (i64, Vec<(String, u64)>);

fn rebuild_sqlite(
    core_path: &Path,
    mirror: &TrustedPluginStore,
    catalog: &MirrorCatalog,
    dropped: &[String],
    total: u64,
    progress: Progress<'_>,
) -> Result<Rebuilt, SyncError> {
    let conn = mirror.connection();
    conn.execute(
        "ATTACH DATABASE ?1 AS sv_core",
        [format!("file:{}?mode=ro", core_path.display())],
    )?;
    let slices: Vec<&MirrorSlice> = catalog.slices().iter().collect();
    let mut done = 0u64;
    let result = mirror.rebuild_slices(
        &slices,
        dropped,
        now_ms(),
        // The first read of the core in this transaction fixes its snapshot.
        &mut |tx| outbox_high_water(tx, "sv_core"),
        &mut |tx, slice| {
            let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
            let key = ident(slice.key_column());
            let filter = slice.filter.as_deref().map(|f| format!(" AND ({f})")).unwrap_or_default();
            let sql = format!(
                "INSERT INTO main.{} SELECT {} FROM sv_core.{} WHERE {key} > ?1{filter} ORDER BY {key} LIMIT {CHUNK}",
                ident(&slice.table_name()),
                columns.join(", "),
                ident(&slice.source_table),
            );
            let last_key = format!("SELECT max({key}) FROM main.{}", ident(&slice.table_name()));
            let mut copied = 0u64;
            let mut after = i64::MIN;
            loop {
                let n = tx.prepare_cached(&sql)?.execute([after])? as u64;
                copied += n;
                done += n;
                progress(done, total);
                if n < CHUNK as u64 {
                    break;
                }
                after = tx.query_row(&last_key, [], |r| r.get(0))?;
            }
            Ok(copied)
        },
    );
    let detached = conn.execute_batch("DETACH DATABASE sv_core");
    let rebuilt = result?;
    detached?;
    Ok(rebuilt)
}

/// The PostgreSQL type of each of `slice`'s columns, from the core's declared types.
fn column_kinds(core: &Connection, slice: &MirrorSlice) -> rusqlite::Result<Vec<ColumnKind>> {
    let declared: Vec<(String, String)> = core
        .prepare(&format!(
            "SELECT name, type FROM pragma_table_info('{}')",
            slice.source_table.replace('\'', "''")
        ))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(slice
        .columns
        .iter()
        .map(|column| {
            declared
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(column))
                .map_or(ColumnKind::Blob, |(_, ty)| ColumnKind::from_declared(ty))
        })
        .collect())
}

fn rebuild_postgres(
    core: &Connection,
    mirror: &mut PgMirror,
    catalog: &MirrorCatalog,
    dropped: &[String],
    total: u64,
    progress: Progress<'_>,
) -> Result<Rebuilt, SyncError> {
    // One read transaction: its first read fixes the snapshot the rows come from.
    core.execute_batch("BEGIN DEFERRED")?;
    let result = (|| -> Result<Rebuilt, SyncError> {
        let watermark = outbox_high_water(core, "main")?;
        let mut rebuild = mirror.rebuild()?;
        for name in dropped {
            rebuild.drop_slice(name)?;
        }
        let mut done = 0u64;
        let mut counts = Vec::new();
        for slice in catalog.slices() {
            let kinds = column_kinds(core, slice)?;
            rebuild.create_slice(slice, &kinds)?;
            let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
            let filter = slice
                .filter
                .as_deref()
                .map(|f| format!(" WHERE ({f})"))
                .unwrap_or_default();
            let sql = format!(
                "SELECT {} FROM main.{}{filter} ORDER BY {}",
                columns.join(", "),
                ident(&slice.source_table),
                ident(slice.key_column())
            );
            let mut statement = core.prepare(&sql)?;
            let mut rows = statement.query([])?;
            let mut chunk = Vec::with_capacity(CHUNK as usize);
            let mut copied = 0u64;
            loop {
                let row = rows.next()?;
                if let Some(row) = row {
                    chunk.push(
                        (0..columns.len())
                            .map(|i| row.get_ref(i).map(publish::value_of))
                            .collect::<rusqlite::Result<Vec<_>>>()?,
                    );
                }
                if chunk.len() == CHUNK as usize || (row.is_none() && !chunk.is_empty()) {
                    copied += rebuild.copy_rows(slice, &kinds, &chunk)?;
                    done += chunk.len() as u64;
                    progress(done, total);
                    chunk.clear();
                }
                if row.is_none() {
                    break;
                }
            }
            counts.push((slice.name.clone(), copied));
        }
        rebuild.finish(watermark, now_ms())?;
        Ok((watermark, counts))
    })();
    let ended = core.execute_batch("COMMIT");
    let rebuilt = result?;
    ended?;
    Ok(rebuilt)
}

fn count_source(core: &Connection, slice: &MirrorSlice) -> rusqlite::Result<u64> {
    let filter = slice
        .filter
        .as_deref()
        .map(|f| format!(" WHERE ({f})"))
        .unwrap_or_default();
    core.query_row(
        &format!(
            "SELECT count(*) FROM {}{filter}",
            ident(&slice.source_table)
        ),
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
}
