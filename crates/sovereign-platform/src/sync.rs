//! Running, inspecting and reconciling the core -> plugins mirror by hand.

use sovereign_db_core::CoreConn;
use sovereign_sync::publish::{CatchUp, RebuildReason};
use sovereign_sync::{SyncError, capture, full, publish, reconcile, status};

use crate::{App, PlatformError};

/// Progress of a long job: `(done, total)`.
pub type Progress<'a> = &'a dyn Fn(u64, u64);

/// What `run` did.
#[derive(Debug, Clone)]
pub struct SyncRun {
    /// The full rebuild, if one ran.
    pub rebuild: Option<Rebuild>,
    /// The incremental catch-up after it.
    pub caught_up: CatchUp,
}

/// A full rebuild and why it ran.
#[derive(Debug, Clone)]
pub struct Rebuild {
    /// Why (`None`: asked for with `full`).
    pub reason: Option<RebuildReason>,
    /// The steps it took, as `plan` reports them.
    pub plan: Vec<String>,
    /// What it built.
    pub report: full::FullReport,
}

/// Catches the mirror up; rebuilds it first when `full` is asked for or the mirror
/// needs it (fresh, behind the pruned outbox, slices changed). A changed projection
/// needs `full`: it is refused with the plan otherwise.
pub fn run(
    app: &App,
    full_rebuild: bool,
    progress: Progress<'_>,
) -> Result<SyncRun, PlatformError> {
    let settings = app.sync_settings();
    let core = app.open_migrated_core()?;
    capture::install(&core, &settings.catalog)?;
    let mirror = app.open_mirror()?;
    let reason = match publish::needs_rebuild(&core, &mirror, &settings.catalog) {
        Ok(reason) => reason,
        Err(SyncError::ProjectionChanged(slice)) if !full_rebuild => {
            return Err(PlatformError::ProjectionChanged {
                slice,
                plan: full::plan(&mirror, &settings.catalog)?,
            });
        }
        Err(SyncError::ProjectionChanged(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let rebuild = if full_rebuild || reason.is_some() {
        let plan = full::plan(&mirror, &settings.catalog)?;
        let report = full::full_resync(&core, &mirror, &settings.catalog, progress)?;
        Some(Rebuild {
            reason,
            plan,
            report,
        })
    } else {
        None
    };
    let caught_up = publish::catch_up(&core, &mirror, &settings.catalog, settings.batch_size)?;
    publish::set_state(&core, "last_error", "")?;
    Ok(SyncRun { rebuild, caught_up })
}

/// Per slice: watermark, backlog, lag; the last error. Read-only.
pub fn status(app: &App) -> Result<status::SyncStatus, PlatformError> {
    let core = app.open_migrated_core_read_only()?;
    let mirror = app.sync_settings().open_mirror_read_only(app.config())?;
    Ok(status::status(&core, &mirror, app.mirror_catalog())?)
}

/// Compares core and mirror by checksums; with `repair`, rewrites exactly the rows that
/// differ.
pub fn reconcile(
    app: &App,
    repair: bool,
    progress: Progress<'_>,
) -> Result<reconcile::ReconcileReport, PlatformError> {
    let core = app.open_migrated_core()?;
    capture::validate(&core, app.mirror_catalog())?;
    let catalog = app.mirror_catalog();
    Ok(match (&core, app.open_mirror()?) {
        (CoreConn::Sqlite(_), sovereign_sync::Mirror::Sqlite(store)) => reconcile::reconcile(
            &app.core_file("sv sync:reconcile")?,
            &store,
            catalog,
            repair,
            progress,
        )?,
        (CoreConn::Postgres(_) | CoreConn::Mysql(_), sovereign_sync::Mirror::Sqlite(store)) => {
            reconcile::reconcile_from_server_core(&core, &store, catalog, repair, progress)?
        }
        (_, sovereign_sync::Mirror::Postgres(pg)) => reconcile::reconcile_server_mirror(
            &core,
            &mut *pg.borrow_mut(),
            catalog,
            repair,
            progress,
        )?,
        (_, sovereign_sync::Mirror::Mysql(my)) => reconcile::reconcile_server_mirror(
            &core,
            &mut *my.borrow_mut(),
            catalog,
            repair,
            progress,
        )?,
    })
}

/// What a full resync would change, one line per step.
pub fn plan(app: &App) -> Result<Vec<String>, PlatformError> {
    let core = app.open_migrated_core()?;
    capture::validate(&core, app.mirror_catalog())?;
    let mirror = app.open_mirror()?;
    Ok(full::plan(&mirror, app.mirror_catalog())?)
}
