//! Operating the files: backups, their verification, restores and splitting a legacy
//! single-file install.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sovereign_kernel::RuntimeLock;
use sovereign_ops::backup::{BackupOptions, ByteProgress};
pub use sovereign_ops::split::Destination;
use sovereign_ops::split::{CopiedTable, Mapping, SplitPlan};

use crate::{App, PlatformError};

/// Completes a restore that died half-way (from its journal) before anything touches
/// the data; `true` if there was one. Every `sv` command runs it first.
pub fn finish_interrupted_restore(
    config: &sovereign_config::Config,
) -> Result<bool, PlatformError> {
    Ok(sovereign_ops::restore::finish_interrupted(
        &config.data_dir_path(),
    )?)
}

/// What to back up.
#[derive(Debug, Clone, Default)]
pub struct BackupRequest {
    /// The backup directory to create (default: `backups/sv-backup-<time>`).
    pub out: Option<PathBuf>,
    /// Back up `core.db` only.
    pub core_only: bool,
    /// Plugins whose data is left out.
    pub exclude_plugins: Vec<String>,
}

/// A backup written.
#[derive(Debug, Clone)]
pub struct BackupDone {
    /// Where.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: sovereign_ops::backup::Manifest,
    /// How long it took.
    pub took: Duration,
}

/// Takes an online backup of `core.db`, the plugin store and the isolated plugin files,
/// or (both stores on PostgreSQL) dumps of both databases.
pub fn backup(
    app: &App,
    request: &BackupRequest,
    progress: ByteProgress<'_>,
) -> Result<BackupDone, PlatformError> {
    let dir = request.out.clone().unwrap_or_else(|| {
        app.config()
            .base_dir
            .join("backups")
            .join(format!("sv-backup-{}", sovereign_ops::stamp()))
    });
    let started = Instant::now();
    let options = BackupOptions {
        out: dir.clone(),
        include_plugin_data: !request.core_only,
        exclude_plugins: request.exclude_plugins.clone(),
    };
    let manifest = if let Some(stores) = app.mysql_stores("backing up one store on MySQL")? {
        sovereign_ops::my_backup::backup(&stores, &options, &|| plugin_accounts(app), progress)?
    } else if let Some(stores) = app.postgres_stores("backing up")? {
        sovereign_ops::pg_backup::backup(&stores, &options, progress)?
    } else {
        sovereign_ops::backup::backup(&app.layout("backup")?, &options, progress)?
    };
    Ok(BackupDone {
        dir,
        manifest,
        took: started.elapsed(),
    })
}

/// Verifies a backup: checksums, integrity, schema versions, manifest.
pub fn verify(dir: &Path) -> Result<sovereign_ops::backup::Manifest, PlatformError> {
    Ok(sovereign_ops::backup::verify(dir)?)
}

/// A restore done.
#[derive(Debug, Clone)]
pub struct Restored {
    /// What was restored and where the replaced files went.
    pub report: sovereign_ops::restore::RestoreReport,
    /// The running platform this restore stopped first.
    pub stopped_pid: Option<i32>,
}

/// Restores a verified backup, moving the current files aside. A running platform is
/// refused unless `stop`, in which case it is stopped (SIGTERM) and waited for (30 s).
/// `before_swap` runs before each file is swapped in.
pub fn restore(
    app: &App,
    backup_dir: &Path,
    stop: bool,
    before_swap: &mut dyn FnMut(usize),
) -> Result<Restored, PlatformError> {
    let mysql = app.mysql_stores("restoring one store on MySQL")?;
    let postgres = match mysql {
        Some(_) => None,
        None => app.postgres_stores("restoring")?,
    };
    let layout = match (&mysql, &postgres) {
        (None, None) => Some(app.layout("restore")?),
        _ => None,
    };
    // Verify before anything else: a bad backup must not even stop the platform.
    let manifest = sovereign_ops::backup::verify(backup_dir)?;
    let backend = |postgres: bool, mysql: bool| match (postgres, mysql) {
        (true, _) => "PostgreSQL",
        (_, true) => "MySQL",
        _ => "SQLite",
    };
    let of_backup = backend(
        !manifest.postgres_dumps.is_empty(),
        !manifest.mysql_dumps.is_empty(),
    );
    let here = backend(postgres.is_some(), mysql.is_some());
    if of_backup != here {
        return Err(PlatformError::BackupOfOtherBackend {
            dir: backup_dir.to_owned(),
            backup: of_backup,
            here,
        });
    }
    let mut stopped_pid = None;
    for lock_path in app.running_locks() {
        let Some(pid) = RuntimeLock::holder(&lock_path) else {
            continue;
        };
        if !stop {
            return Err(PlatformError::RunningRefusesRestore {
                pid,
                lock: lock_path,
            });
        }
        let pid = crate::run::parse_pid(&lock_path, &pid)?;
        crate::run::signal(pid, rustix::process::Signal::TERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while RuntimeLock::holder(&lock_path).is_some() {
            if Instant::now() > deadline {
                return Err(PlatformError::DidNotStop { pid });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        stopped_pid = Some(pid);
    }
    // Files: the data directory's lock keeps a platform from starting meanwhile. A
    // PostgreSQL core: kernels on any machine hold the "running" lock shared; holding it
    // exclusively until the restore ends refuses running ones and holds up new ones. A
    // MySQL core: the kernels' gate, taken when no kernel is registered, does the same.
    let _held = if mysql.is_some() || postgres.is_some() {
        let core = app.core_location().open_existing()?;
        if !sovereign_db_core::health::exclude_kernels(&core)? {
            let kernels = sovereign_db_core::health::kernels(&core)?
                .map(|k| k.running)
                .unwrap_or_default();
            return Err(PlatformError::KernelsRunning {
                backend: if mysql.is_some() {
                    "MySQL"
                } else {
                    "PostgreSQL"
                },
                kernels,
            });
        }
        Held::Core { _connection: core }
    } else {
        Held::Lock {
            _lock: crate::run::lock(app)?,
        }
    };
    let refused = |e: PlatformError| {
        sovereign_ops::OpsError::Refused(format!("reading the core's plugins: {e}"))
    };
    let report = match (&mysql, &postgres, &layout) {
        (Some(stores), _, _) => {
            before_swap(2);
            sovereign_ops::my_backup::restore(stores, backup_dir, &|| plugin_accounts(app))?
        }
        (None, Some(stores), _) => {
            before_swap(2);
            let roles = || restored_plugin_roles(app).map_err(refused);
            sovereign_ops::pg_backup::restore(stores, backup_dir, &roles)?
        }
        (None, None, Some(layout)) => {
            sovereign_ops::restore::restore(backup_dir, layout, before_swap)?
        }
        (None, None, None) => {
            unreachable!("a layout is read whenever the stores are SQLite files")
        }
    };
    Ok(Restored {
        report,
        stopped_pid,
    })
}

/// The roles of the plugins a just restored PostgreSQL core has installed, with the
/// passwords it keeps for them.
fn restored_plugin_roles(app: &App) -> Result<Vec<sovereign_postgres::PluginRole>, PlatformError> {
    let core = app.open_migrated_core()?;
    let mut roles = Vec::new();
    for record in sovereign_db_core::plugins::list(&core)? {
        match sovereign_db_core::plugins::store_login(&core, &record.id)? {
            Some(password) => roles.push(crate::plugins::serving_role(
                &record.manifest,
                &password,
                &record.grants,
            )),
            None => tracing::warn!(
                plugin = %record.id,
                "the restored core keeps no PostgreSQL login for this plugin; reinstall it"
            ),
        }
    }
    Ok(roles)
}

/// The accounts of the plugins the MySQL core has installed (during a restore, once it
/// is restored, the restored core's), with the passwords it keeps for them and their
/// approved mirror columns.
fn plugin_accounts(
    app: &App,
) -> Result<Vec<sovereign_ops::my_backup::PluginAccount>, sovereign_ops::OpsError> {
    let read = || -> Result<_, PlatformError> {
        let core = app.open_migrated_core()?;
        let mut accounts = Vec::new();
        for record in sovereign_db_core::plugins::list(&core)? {
            match sovereign_db_core::plugins::store_login(&core, &record.id)? {
                Some(password) => accounts.push(sovereign_ops::my_backup::PluginAccount {
                    id: record.id.clone(),
                    password,
                    grants: record.grants.clone(),
                    connection_limit: crate::plugins::serving_connection_limit(),
                }),
                None => tracing::warn!(
                    plugin = %record.id,
                    "the core keeps no MySQL login for this plugin; reinstall it"
                ),
            }
        }
        Ok(accounts)
    };
    read().map_err(|e| sovereign_ops::OpsError::Refused(format!("reading the core's plugins: {e}")))
}

/// Reads one `TABLE=PLUGIN` or `TABLE=skip` attribution.
pub fn parse_mapping(text: &str) -> Result<(String, Mapping), PlatformError> {
    let bad = |why: &str| PlatformError::BadMapping {
        text: text.to_owned(),
        why: why.to_owned(),
    };
    let (table, target) = text
        .split_once('=')
        .ok_or_else(|| bad("expected TABLE=PLUGIN or TABLE=skip"))?;
    let mapping = if target == "skip" {
        Mapping::Skip
    } else if sovereign_db_plugins::is_installable_plugin_id(target) {
        Mapping::Plugin(target.to_owned())
    } else {
        return Err(bad(&format!(
            "{target:?} is neither `skip` nor a valid, unreserved plugin id"
        )));
    };
    Ok((table.to_owned(), mapping))
}

/// How a legacy single file would be split, table by table.
pub fn plan_split(
    from: &Path,
    mappings: &BTreeMap<String, Mapping>,
) -> Result<SplitPlan, PlatformError> {
    if !from.exists() {
        return Err(PlatformError::NoSuchFile {
            path: from.to_owned(),
        });
    }
    Ok(sovereign_ops::split::plan(from, mappings)?)
}

/// A split done.
#[derive(Debug, Clone)]
pub struct Split {
    /// The tables copied.
    pub copied: Vec<CopiedTable>,
    /// The mirror built from the new core, rows per slice.
    pub mirror_rows: Vec<(String, u64)>,
}

/// Splits a legacy single file by `plan` into `core.db` and the plugin stores (the
/// source stays unchanged), then builds the mirror from the new core. Refused while a
/// table is unattributed.
pub fn split(app: &App, from: &Path, plan: &SplitPlan) -> Result<Split, PlatformError> {
    if !plan.unattributed.is_empty() {
        return Err(PlatformError::Unattributed {
            count: plan.unattributed.len(),
        });
    }
    let copied = sovereign_ops::split::split(from, plan, &app.layout("split")?)?;
    let core_path = app.core_file("split")?;
    let core = sovereign_db_core::open_existing(&core_path)?;
    sovereign_sync::capture::install(&core, app.mirror_catalog())?;
    let mirror = app.open_mirror()?;
    let report =
        sovereign_sync::full::full_resync(&core, &mirror, app.mirror_catalog(), &|_, _| {})?;
    Ok(Split {
        copied,
        mirror_rows: report.rows,
    })
}

/// What keeps platforms from starting while a restore runs.
enum Held {
    /// The data directory's runtime lock.
    Lock { _lock: crate::run::RuntimeLock },
    /// A core connection holding the kernels' "running" lock exclusively.
    Core {
        _connection: sovereign_db_core::CoreConn,
    },
}
