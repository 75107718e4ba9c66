//! `doctor`: what an operator should know about an installation, as findings.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use sovereign_kernel::RuntimeLock;
use sovereign_kernel::health::{CoreDbProbe, ExtensionHost, Health};
use sovereign_kernel::host::HostState;
use sovereign_protocol::SandboxStatus;

use crate::{App, PlatformError, PluginStore};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Worth reading; no action needed.
    Warn,
    /// Needs action.
    Fail,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// How serious.
    pub level: Level,
    /// What was checked (`files`, `permissions`, `integrity`, `migrations`, ...).
    pub check: &'static str,
    /// What was found, and what to do about it.
    pub detail: String,
}

/// Every finding, in the order checked.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The most serious level found.
    pub fn worst(&self) -> Level {
        self.findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    fn add(&mut self, level: Level, check: &'static str, detail: String) {
        self.findings.push(Finding {
            level,
            check,
            detail,
        });
    }
}

/// Checks files, permissions, integrity, migrations, the registry, sync, the sandbox,
/// disk space and whether the platform runs. Read-only: works on a read-only data
/// directory and next to a running platform.
pub fn report(app: &App) -> Result<Report, PlatformError> {
    let mut report = Report { findings: vec![] };
    let mut files: Vec<(&'static str, PathBuf)> = Vec::new();
    if let Some(core) = app.config().core_db_path() {
        files.push(("core store", core));
    }
    match app.plugin_store() {
        PluginStore::Sqlite(_) => {
            let layout = app.layout("sv doctor")?;
            files.push(("plugin store", layout.plugins.clone()));
            if let Some(m) = &layout.mirror_file {
                files.push(("mirror file", m.clone()));
            }
            for (_, path) in layout.isolated_files()? {
                files.push(("isolated plugin file", path));
            }
        }
        PluginStore::Postgres(store) => check_postgres_store(&mut report, app, store),
        PluginStore::Mysql(store) => check_mysql_store(&mut report, app, store),
    }
    let mut total_bytes = 0u64;
    for (what, path) in &files {
        total_bytes += check_file(&mut report, what, path);
    }

    match crate::migrations::not_applied(app) {
        Ok(list) if list.is_empty() => report.add(
            Level::Ok,
            "migrations",
            "every migration of every scope is applied".into(),
        ),
        // `sv serve` refuses to start like this.
        Ok(list) => report.add(
            Level::Fail,
            "migrations",
            format!("{}; run `sv migrate:deploy`", list.join(", ")),
        ),
        Err(e) => report.add(Level::Fail, "migrations", e.to_string()),
    }

    match registry_problems(app) {
        Ok(problems) if problems.is_empty() => report.add(
            Level::Ok,
            "registry",
            "every installed plugin id is valid and unreserved".into(),
        ),
        Ok(problems) => {
            for problem in problems {
                report.add(Level::Fail, "registry", problem);
            }
        }
        Err(e) => report.add(Level::Fail, "registry", e.to_string()),
    }

    check_sync(&mut report, app);
    check_sandbox(&mut report, app);

    match free_bytes(&app.config().data_dir_path()) {
        Some(free) if free < total_bytes => report.add(
            Level::Fail,
            "disk",
            format!(
                "{free} bytes free, a backup needs about {total_bytes}; free space or back up elsewhere"
            ),
        ),
        Some(free) => report.add(
            Level::Ok,
            "disk",
            format!("{free} bytes free; a backup needs about {total_bytes}"),
        ),
        None => report.add(
            Level::Warn,
            "disk",
            "cannot read free space of the data directory".into(),
        ),
    }
    let local: Vec<String> = app
        .running_locks()
        .iter()
        .filter_map(|lock| RuntimeLock::holder(lock))
        .collect();
    match local.as_slice() {
        [] => report.add(Level::Ok, "platform", "not running here".into()),
        [pid] => report.add(Level::Ok, "platform", format!("running (pid {pid})")),
        pids => report.add(
            Level::Ok,
            "platform",
            format!(
                "{} kernels running here (pids {})",
                pids.len(),
                pids.join(", ")
            ),
        ),
    }
    Ok(report)
}

/// Presence, owner, mode, writability and `quick_check` of one store file; returns its
/// size with its WAL.
fn check_file(report: &mut Report, what: &str, path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        report.add(
            Level::Fail,
            "files",
            format!("{what} {} is missing", path.display()),
        );
        return 0;
    };
    let bytes = meta.len()
        + std::fs::metadata(format!("{}-wal", path.display()))
            .map(|m| m.len())
            .unwrap_or(0);
    let mode = meta.permissions().mode() & 0o777;
    let uid = rustix::process::geteuid().as_raw();
    if let Some(what) = sovereign_db::open::unwritable(path) {
        report.add(
            Level::Fail,
            "permissions",
            format!(
                "{what} is not writable by this user (uid {uid}): `sv serve` cannot use {}; fix its owner or mode, or remove a stale -shm or empty -wal while the platform is stopped",
                path.display()
            ),
        );
    } else if mode & 0o077 != 0 {
        // Others can read credentials and sessions: that needs action.
        report.add(
            Level::Fail,
            "permissions",
            format!(
                "{} is mode {mode:o}; run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        );
    } else if meta.uid() != uid {
        report.add(
            Level::Warn,
            "permissions",
            format!(
                "{} is owned by uid {}, not {uid}",
                path.display(),
                meta.uid()
            ),
        );
    } else {
        report.add(
            Level::Ok,
            "files",
            format!("{what} {} ({} bytes, mode 600)", path.display(), meta.len()),
        );
    }
    let checked =
        sovereign_db::open_database(path, &sovereign_db::OpenOptions::plugins().read_only())
            .map_err(PlatformError::from)
            .and_then(|c| Ok(c.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))?));
    match checked {
        Ok(result) if result == "ok" => report.add(
            Level::Ok,
            "integrity",
            format!("{} passes quick_check", path.display()),
        ),
        Ok(result) => report.add(
            Level::Fail,
            "integrity",
            format!("{}: {result}; restore from a backup", path.display()),
        ),
        Err(e) => report.add(Level::Fail, "integrity", format!("{}: {e}", path.display())),
    }
    bytes
}

/// The PostgreSQL plugin store answers its owner, and every installed plugin's role
/// logs in with the password the core keeps, unprivileged and owning its schema.
fn check_postgres_store(report: &mut Report, app: &App, store: &crate::PgPluginStore) {
    match store.connect_owner().and_then(|mut owner| {
        owner
            .query_one("SHOW server_version", &[])
            .map(|row| row.get::<_, String>(0))
            .map_err(|source| {
                sovereign_postgres::PgError::Statement {
                    statement: "SHOW server_version".into(),
                    source,
                }
                .into()
            })
    }) {
        Ok(version) => report.add(
            Level::Ok,
            "plugin store",
            format!("PostgreSQL {version} at {} answers", store.describe()),
        ),
        Err(e) => return report.add(Level::Fail, "plugin store", e.to_string()),
    }
    check_plugin_logins(report, app, &|id| {
        format!("role svp_{id} logs in, unprivileged, owning schema {id}")
    });
}

/// The MySQL plugin store answers its account, and every installed plugin's account
/// logs in with the password the core keeps.
fn check_mysql_store(report: &mut Report, app: &App, store: &crate::MyPluginStore) {
    let version = store.connect_owner().and_then(|mut owner| {
        mysql::prelude::Queryable::query_first::<String, _>(&mut owner, "SELECT VERSION()").map_err(
            |source| {
                sovereign_mysql::MyError::Statement {
                    statement: "SELECT VERSION()".into(),
                    source,
                }
                .into()
            },
        )
    });
    match version {
        Ok(version) => report.add(
            Level::Ok,
            "plugin store",
            format!(
                "MySQL {} at {} answers",
                version.unwrap_or_default(),
                store.describe()
            ),
        ),
        Err(e) => return report.add(Level::Fail, "plugin store", e.to_string()),
    }
    check_plugin_logins(report, app, &|id| {
        format!("account svp_{id} logs in to {}", store.describe_plugin(id))
    });
}

/// Every installed plugin's own login to the plugin store's server works (`ok` says
/// what it reached); a failing one says to reinstall.
fn check_plugin_logins(report: &mut Report, app: &App, ok: &dyn Fn(&str) -> String) {
    let plugins = match app
        .open_migrated_core_read_only()
        .and_then(|core| Ok(sovereign_db_core::plugins::list(&core)?))
    {
        Ok(plugins) => plugins,
        Err(e) => return report.add(Level::Fail, "plugin store", e.to_string()),
    };
    for plugin in plugins {
        match crate::plugins::open_fenced(app, &plugin.id) {
            Ok(_) => report.add(
                Level::Ok,
                "plugin store",
                format!("plugin {}: {}", plugin.id, ok(&plugin.id)),
            ),
            Err(e) => report.add(
                Level::Fail,
                "plugin store",
                format!(
                    "plugin {}: {e}; reinstall it (`sv plugins install`) to reset its login",
                    plugin.id
                ),
            ),
        }
    }
}

fn check_sync(report: &mut Report, app: &App) {
    let status = (|| -> Result<sovereign_sync::status::SyncStatus, PlatformError> {
        let core = app.core_location().open_existing_read_only()?;
        let mirror = app.sync_settings().open_mirror_read_only(app.config())?;
        Ok(sovereign_sync::status::status(
            &core,
            &mirror,
            app.mirror_catalog(),
        )?)
    })();
    let status = match status {
        Ok(status) => status,
        Err(e) => return report.add(Level::Fail, "sync", e.to_string()),
    };
    // Kernels sharing a PostgreSQL core: who serves it, and who publishes the mirror.
    let kernels = app
        .core_location()
        .open_existing_read_only()
        .map_err(PlatformError::from)
        .and_then(|core| Ok(sovereign_db_core::health::kernels(&core)?));
    match kernels {
        Ok(Some(kernels)) if kernels.running.is_empty() => {
            report.add(Level::Ok, "kernels", "no kernel serves the core now".into())
        }
        Ok(Some(kernels)) => report.add(
            if kernels.sync_leader.is_some() {
                Level::Ok
            } else {
                Level::Warn
            },
            "kernels",
            format!(
                "{} serving the core ({}); sync leader: {}",
                kernels.running.len(),
                kernels.running.join(", "),
                kernels
                    .sync_leader
                    .as_deref()
                    .unwrap_or("none (changing hands)")
            ),
        ),
        Ok(None) => {}
        Err(e) => report.add(Level::Warn, "kernels", e.to_string()),
    }
    for s in &status.slices {
        let detail = format!(
            "slice {}: backlog {} rows, lag {} ms, watermark {}",
            s.slice, s.backlog_rows, s.lag_ms, s.watermark
        );
        if !s.built {
            report.add(
                Level::Warn,
                "sync",
                format!("{detail}; the mirror is not built: run `sv sync:run`"),
            );
        } else if s.lag_ms > 60_000 {
            report.add(
                Level::Warn,
                "sync",
                format!("{detail}; is the platform running? `sv sync:run` catches up"),
            );
        } else {
            report.add(Level::Ok, "sync", detail);
        }
    }
    if let Some((error, at)) = status.last_error {
        report.add(
            Level::Warn,
            "sync",
            format!("last sync error at {at}: {error}"),
        );
    }
}

fn check_sandbox(report: &mut Report, app: &App) {
    let running = app
        .running_locks()
        .first()
        .and_then(|lock| RuntimeLock::address(lock))
        .and_then(|addr| platform_health(&addr));
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    if let Some(health) = running {
        match health.extension_host {
            ExtensionHost::Watched(HostState::Running {
                sandbox: SandboxStatus::Enforced,
                core_db_probe: CoreDbProbe::Refused { error },
                ..
            }) => report.add(
                Level::Ok,
                "sandbox",
                format!(
                    "the running extension host is sandboxed; opening core.db was refused ({error})"
                ),
            ),
            ExtensionHost::Watched(HostState::Running {
                sandbox: SandboxStatus::Enforced,
                core_db_probe: CoreDbProbe::NoCoreFile,
                ..
            }) => report.add(
                Level::Ok,
                "sandbox",
                "the running extension host is sandboxed; the core store is on PostgreSQL and \
                 the host holds no login for it"
                    .into(),
            ),
            ExtensionHost::Watched(HostState::Running {
                sandbox,
                core_db_probe,
                ..
            }) => report.add(
                Level::Fail,
                "sandbox",
                format!(
                    "the running extension host is NOT fully sandboxed: {sandbox:?} / core.db probe: {core_db_probe}"
                ),
            ),
            ExtensionHost::Watched(state) => report.add(
                Level::Warn,
                "sandbox",
                format!("the extension host is not running: {state}"),
            ),
            ExtensionHost::Disabled(_) => report.add(
                Level::Warn,
                "sandbox",
                "the platform runs without an extension host".into(),
            ),
        }
    } else if lsm.split(',').any(|m| m.trim() == "landlock") {
        report.add(
            Level::Ok,
            "sandbox",
            "the kernel offers Landlock for sandboxing the extension host".into(),
        );
    } else if lsm.is_empty() {
        report.add(Level::Warn, "sandbox", "cannot tell whether the kernel offers Landlock (/sys/kernel/security/lsm is not readable)".into());
    } else {
        report.add(
            Level::Warn,
            "sandbox",
            format!(
                "the kernel does not offer Landlock (LSMs: {}); the extension host cannot be sandboxed",
                lsm.trim()
            ),
        );
    }
}

/// Registered plugins whose id is malformed, reserved (a namespace the platform or
/// SQLite owns) or equal to another's but for case; and plugins the host could not load.
fn registry_problems(app: &App) -> Result<Vec<String>, PlatformError> {
    let core = app.core_location().open_existing_read_only()?;
    let plugins = sovereign_db_core::plugins::list(&core)?;
    let mut problems = Vec::new();
    for (i, plugin) in plugins.iter().enumerate() {
        if let Err(e) = sovereign_db_plugins::check_plugin_id(&plugin.id) {
            problems.push(format!(
                "installed plugin {:?}: {e}; remove it with `sv plugins remove {}` and reinstall it under another id",
                plugin.id, plugin.id
            ));
        }
        if let Some(other) = plugins[..i]
            .iter()
            .find(|p| p.id.eq_ignore_ascii_case(&plugin.id))
        {
            problems.push(format!(
                "installed plugins {:?} and {:?} differ only by case and share one namespace; remove one",
                other.id, plugin.id
            ));
        }
        if let sovereign_db_core::plugins::LoadState::Failed { error, at } = &plugin.load {
            problems.push(format!(
                "plugin {} could not be loaded by the extension host ({at}): {error}",
                plugin.id
            ));
        }
    }
    Ok(problems)
}

/// `GET /health` of the running platform at `addr` (plain HTTP on loopback).
fn platform_health(addr: &str) -> Option<Health> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .get(format!("http://{addr}/health"))
        .call()
        .ok()?
        .body_mut()
        .read_json()
        .ok()
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail * stat.f_frsize)
}
