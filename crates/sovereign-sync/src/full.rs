//! Full resync: rebuilds mirror tables from the core in one transaction, at a watermark
//! taken from the same snapshot, so incremental sync continues exactly from there.

use std::path::Path;

use sovereign_db::rusqlite::{self, Connection};
use sovereign_db_plugins::TrustedPluginStore;
use sovereign_db_plugins::mirror::{MirrorCatalog, MirrorSlice};

use crate::{Progress, SyncError, ident, now_ms, publish};

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
pub fn plan(
    mirror: &TrustedPluginStore,
    catalog: &MirrorCatalog,
) -> Result<Vec<String>, SyncError> {
    let built = mirror.mirror_specs()?;
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

/// Rebuilds every configured slice from `core_path`, attached read-only to the trusted
/// mirror connection, and drops slices no longer configured. Then acknowledges the
/// watermark to the core, which prunes its outbox.
pub fn full_resync(
    core: &Connection,
    core_path: &Path,
    mirror: &TrustedPluginStore,
    catalog: &MirrorCatalog,
    progress: Progress<'_>,
) -> Result<FullReport, SyncError> {
    crate::capture::validate(core, catalog)?;
    let dropped: Vec<String> = mirror
        .mirror_specs()?
        .into_iter()
        .filter(|b| catalog.slice(&b.name).is_none())
        .map(|b| b.name)
        .collect();
    let total: u64 = catalog
        .slices()
        .iter()
        .map(|s| count_source(core, s))
        .sum::<rusqlite::Result<u64>>()?;
    let conn = mirror.connection();
    conn.execute(
        "ATTACH DATABASE ?1 AS sv_core",
        [format!("file:{}?mode=ro", core_path.display())],
    )?;
    let slices: Vec<&MirrorSlice> = catalog.slices().iter().collect();
    let mut done = 0u64;
    let result = mirror.rebuild_slices(
        &slices,
        &dropped,
        now_ms(),
        &mut |tx| {
            // The first read of the core in this transaction fixes its snapshot.
            tx.query_row(
                "SELECT max(coalesce((SELECT max(seq) FROM sv_core._sv_change_outbox), 0),
                            coalesce((SELECT seq FROM sv_core.sqlite_sequence WHERE name = '_sv_change_outbox'), 0))",
                [],
                |r| r.get(0),
            )
        },
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
    let (watermark, rows) = result?;
    detached?;
    publish::acknowledge(core, watermark)?;
    Ok(FullReport {
        watermark,
        rows,
        dropped,
    })
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
