//! `sv sync:status`: per slice the watermark, the backlog, the lag, the last error.

use mysql::prelude::Queryable;
use serde::Serialize;
use sovereign_db_core::{CoreAccess, CoreHandle};
use sovereign_db_plugins::mirror::MirrorCatalog;

use crate::{Mirror, SyncError, now_ms, publish};

/// The sync state of one slice.
#[derive(Debug, Clone, Serialize)]
pub struct SliceStatus {
    /// Slice.
    pub slice: String,
    /// The mirror's watermark (shared by all slices of a mirror).
    pub watermark: i64,
    /// Outbox rows of this slice not yet applied.
    pub backlog_rows: u64,
    /// Age of the oldest unapplied change, in milliseconds (0 when caught up).
    pub lag_ms: i64,
    /// Whether the mirror table was built with the configured projection.
    pub built: bool,
}

/// The whole sync picture.
#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    /// Per slice.
    pub slices: Vec<SliceStatus>,
    /// When the mirror last applied a batch (unix ms; 0 if never).
    pub last_applied_at_ms: i64,
    /// The last error of the sync worker, with when it happened, if the last run failed.
    pub last_error: Option<(String, String)>,
}

/// Reads the status; the core read is cheap (indexed outbox), the mirror read is the
/// watermark only.
pub fn status(
    core: &dyn CoreAccess,
    mirror: &Mirror,
    catalog: &MirrorCatalog,
) -> Result<SyncStatus, SyncError> {
    let watermark = mirror.watermark()?;
    let specs = mirror.specs()?;
    let now = now_ms();
    let mut slices = Vec::new();
    for slice in catalog.slices() {
        let (backlog, oldest): (i64, Option<i64>) = match core.core_handle() {
            CoreHandle::Sqlite(conn) => conn.query_row(
                "SELECT count(*), min(at_ms) FROM _sv_change_outbox WHERE slice = ?1 AND seq > ?2",
                sovereign_db::rusqlite::params![slice.name, watermark],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?,
            CoreHandle::Postgres(pg) => {
                let row = pg.with_client(|client| {
                    client.query_one(
                        "SELECT count(*), min(at_ms) FROM _sv_change_outbox
                         WHERE slice = $1 AND seq > $2",
                        &[&slice.name, &watermark],
                    )
                })?;
                (row.get(0), row.get(1))
            }
            CoreHandle::Mysql(my) => my
                .with_conn(|conn| {
                    conn.exec_first(
                        "SELECT count(*), min(at_ms) FROM _sv_change_outbox
                         WHERE slice = ? AND seq > ?",
                        (&slice.name, watermark),
                    )
                })?
                .unwrap_or((0, None)),
        };
        slices.push(SliceStatus {
            slice: slice.name.clone(),
            watermark,
            backlog_rows: backlog as u64,
            lag_ms: oldest.map_or(0, |at| (now - at).max(0)),
            built: specs.iter().any(|s| s == slice),
        });
    }
    let last_error = publish::get_state(core, "last_error")?.filter(|(v, _)| !v.is_empty());
    Ok(SyncStatus {
        slices,
        last_applied_at_ms: mirror.applied_at_ms()?,
        last_error,
    })
}
