//! The operator console: its page (embedded in the binary: `console/`), the state it
//! keeps while the platform runs (the sync lag over the last hour, the backup job, the
//! last verification of each backup, a short-lived cache of the storage report) and the
//! data of its panels. Every panel is also JSON under `/api/admin/` (`http.rs`), for
//! scripts, with the same functions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use sovereign_db::migrate::MigrationState;
use sovereign_db_plugins::DatabaseMode;
use sovereign_kernel::AppState;
use sovereign_kernel::activity::PluginActivity;
use sovereign_kernel::host::HostState;
use sovereign_ops::inspect::{InspectReport, TableUsage};

use crate::plugin_logs::LogEntry;
use crate::{App, PlatformError, PluginStore};

/// The page and its files, embedded at build time.
pub const INDEX_HTML: &str = include_str!("console/index.html");
/// The page's script.
pub const CONSOLE_JS: &str = include_str!("console/console.js");
/// The page's styles.
pub const CONSOLE_CSS: &str = include_str!("console/console.css");

/// How often the sync lag is sampled, and how much history is kept (one hour).
pub const LAG_EVERY: Duration = Duration::from_secs(2);
const LAG_SAMPLES: usize = 1800;
/// How often the storage report (`dbstat` over every file: seconds on big files) is
/// measured again, in the background: panels read the last one and never wait for it.
pub const STORAGE_EVERY: Duration = Duration::from_secs(30);

/// What the console keeps while the platform runs.
#[derive(Default)]
pub struct Console {
    lag: Mutex<VecDeque<LagSample>>,
    backup: Mutex<Option<BackupJob>>,
    verified: Mutex<HashMap<String, Verification>>,
    storage: Mutex<Option<(Instant, Arc<InspectReport>)>>,
    /// The last integrity check of each store file, by path.
    integrity: Mutex<HashMap<PathBuf, IntegrityCheck>>,
}

/// How often every store file's integrity is checked (`PRAGMA quick_check`, read-only).
pub const INTEGRITY_EVERY: Duration = Duration::from_secs(600);

/// The result of a store file's last integrity check.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrityCheck {
    /// Whether `quick_check` answered `ok`.
    pub ok: bool,
    /// Its answer (the first problems when not ok).
    pub message: String,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
}

/// The sync picture at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct LagSample {
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
    /// The largest lag of any slice (age of its oldest unapplied change), ms.
    pub lag_ms: i64,
    /// Unapplied changes over all slices.
    pub backlog_rows: u64,
    /// The mirror's watermark.
    pub watermark: i64,
}

/// The console's backup job: one at a time.
#[derive(Debug, Clone, Serialize)]
pub struct BackupJob {
    /// The backup directory's name.
    pub name: String,
    /// `running`, `verifying`, `done` or `failed`.
    pub state: &'static str,
    /// Bytes copied so far and in all.
    pub copied_bytes: u64,
    /// Bytes to copy.
    pub total_bytes: u64,
    /// How long it took (when done).
    pub took_ms: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The last verification of a backup in this process.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// Whether every check passed.
    pub ok: bool,
    /// What failed, or what was checked.
    pub message: String,
    /// When (ms since the Unix epoch).
    pub at_ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Console {
    /// A console with no history yet.
    pub fn new() -> Arc<Console> {
        Arc::default()
    }

    /// Samples the sync picture every [`LAG_EVERY`] and measures the storage report every
    /// [`STORAGE_EVERY`], each on a thread of its own, for as long as the console lives.
    pub fn start_sampler(self: &Arc<Self>, app: App) -> std::io::Result<()> {
        let console: Weak<Console> = Arc::downgrade(self);
        let storage_app = app.clone();
        std::thread::Builder::new()
            .name("sv-console-storage".into())
            .spawn(move || {
                let mut checked: Option<Instant> = None;
                while let Some(console) = console.upgrade() {
                    console.measure_storage(&storage_app);
                    if checked.is_none_or(|at| at.elapsed() >= INTEGRITY_EVERY) {
                        console.check_integrity(&storage_app);
                        checked = Some(Instant::now());
                    }
                    drop(console);
                    std::thread::sleep(STORAGE_EVERY);
                }
            })?;
        let console: Weak<Console> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("sv-console-sampler".into())
            .spawn(move || {
                while let Some(console) = console.upgrade() {
                    match crate::sync::status(&app) {
                        Ok(status) => console.record_lag(LagSample {
                            at_ms: now_ms(),
                            lag_ms: status.slices.iter().map(|s| s.lag_ms).max().unwrap_or(0),
                            backlog_rows: status.slices.iter().map(|s| s.backlog_rows).sum(),
                            watermark: status.slices.first().map_or(0, |s| s.watermark),
                        }),
                        Err(e) => {
                            tracing::debug!(error = %e, "console: cannot sample the sync status")
                        }
                    }
                    drop(console);
                    std::thread::sleep(LAG_EVERY);
                }
            })?;
        Ok(())
    }

    fn record_lag(&self, sample: LagSample) {
        let mut lag = self.lag.lock().unwrap_or_else(|e| e.into_inner());
        if lag.len() >= LAG_SAMPLES {
            lag.pop_front();
        }
        lag.push_back(sample);
    }

    /// The sync samples of the last hour, oldest first.
    pub fn lag_history(&self) -> Vec<LagSample> {
        self.lag
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The last storage report (measured now if there is none yet).
    pub fn storage(&self, app: &App) -> Result<Arc<InspectReport>, PlatformError> {
        if let Some((_, report)) = &*self.storage.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(report.clone());
        }
        let report = Arc::new(crate::plugins::inspect(app, None)?);
        *self.storage.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), report.clone()));
        Ok(report)
    }

    fn measure_storage(&self, app: &App) {
        if let crate::PluginStore::Postgres(_) | crate::PluginStore::Mysql(_) = app.plugin_store() {
            return;
        }
        match crate::plugins::inspect(app, None) {
            Ok(report) => {
                *self.storage.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), Arc::new(report)))
            }
            Err(e) => tracing::warn!(error = %e, "console: cannot measure the plugins' storage"),
        }
    }

    fn check_integrity(&self, app: &App) {
        // The SQLite files' integrity; a PostgreSQL plugin store checks its own pages.
        let mut files: Vec<PathBuf> = app.config().core_db_path().into_iter().collect();
        let Ok(layout) = app.plugin_files("checking the stores") else {
            return;
        };
        files.push(layout.plugins.clone());
        files.extend(layout.mirror_file.clone());
        files.extend(
            layout
                .isolated_files()
                .unwrap_or_default()
                .into_iter()
                .map(|(_, path)| path),
        );
        for file in files.into_iter().filter(|f| f.exists()) {
            let answer = sovereign_db::open_database(
                &file,
                &sovereign_db::OpenOptions::plugins().read_only(),
            )
            .map_err(|e| e.to_string())
            .and_then(|conn| {
                let mut stmt = conn
                    .prepare("PRAGMA quick_check(5)")
                    .map_err(|e| e.to_string())?;
                let rows = stmt
                    .query_map([], |r| r.get::<_, String>(0))
                    .map_err(|e| e.to_string())?;
                rows.collect::<Result<Vec<String>, _>>()
                    .map_err(|e| e.to_string())
            });
            let check = match answer {
                Ok(lines) if lines == ["ok"] => IntegrityCheck {
                    ok: true,
                    message: "ok".into(),
                    at_ms: now_ms(),
                },
                Ok(lines) => IntegrityCheck {
                    ok: false,
                    message: lines.join("; "),
                    at_ms: now_ms(),
                },
                Err(e) => IntegrityCheck {
                    ok: false,
                    message: format!("cannot check: {e}"),
                    at_ms: now_ms(),
                },
            };
            if !check.ok {
                tracing::error!(file = %file.display(), problem = %check.message, "a store failed its integrity check");
            }
            self.integrity
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(file, check);
        }
    }

    /// Measures the storage report again now (after a change to the plugins' data).
    pub fn storage_changed(&self, app: &App) {
        self.measure_storage(app);
    }

    /// Starts a backup and its verification on a thread of its own; refused while one runs.
    pub fn start_backup(self: &Arc<Self>, app: App) -> Result<BackupJob, PlatformError> {
        let name = format!("sv-backup-{}", sovereign_ops::stamp());
        let job = BackupJob {
            name: name.clone(),
            state: "running",
            copied_bytes: 0,
            total_bytes: 0,
            took_ms: None,
            error: None,
        };
        {
            let mut current = self.backup.lock().unwrap_or_else(|e| e.into_inner());
            if current
                .as_ref()
                .is_some_and(|j| matches!(j.state, "running" | "verifying"))
            {
                return Err(PlatformError::BackupRunning);
            }
            *current = Some(job.clone());
        }
        let console = self.clone();
        let update = move |f: &dyn Fn(&mut BackupJob)| {
            if let Some(job) = console
                .backup
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                f(job);
            }
        };
        let console = self.clone();
        std::thread::Builder::new()
            .name("sv-console-backup".into())
            .spawn(move || {
                let dir = backups_dir(&app).join(&name);
                let request = crate::ops::BackupRequest {
                    out: Some(dir.clone()),
                    ..Default::default()
                };
                let progress = |copied: u64, total: u64| {
                    update(&|job| {
                        job.copied_bytes = copied;
                        job.total_bytes = total;
                    })
                };
                let started = Instant::now();
                match crate::ops::backup(&app, &request, &progress) {
                    Ok(_) => {
                        update(&|job| job.state = "verifying");
                        let verification = console.verify(&app, &name);
                        let took = started.elapsed().as_millis() as u64;
                        update(&|job| {
                            job.took_ms = Some(took);
                            match &verification {
                                Ok(v) if v.ok => job.state = "done",
                                Ok(v) => {
                                    job.state = "failed";
                                    job.error = Some(v.message.clone());
                                }
                                Err(e) => {
                                    job.state = "failed";
                                    job.error = Some(e.to_string());
                                }
                            }
                        });
                    }
                    Err(e) => update(&|job| {
                        job.state = "failed";
                        job.error = Some(e.to_string());
                    }),
                }
            })
            .map_err(|source| PlatformError::Io {
                what: "starting the backup thread".into(),
                source,
            })?;
        Ok(job)
    }

    /// The console's last backup job, if any.
    pub fn backup_job(&self) -> Option<BackupJob> {
        self.backup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Verifies backup `name` (a directory under `backups/`) and remembers the result.
    pub fn verify(&self, app: &App, name: &str) -> Result<Verification, PlatformError> {
        let dir = backup_dir(app, name)?;
        let verification = match crate::ops::verify(&dir) {
            Ok(manifest) => Verification {
                ok: true,
                message: format!(
                    "{} files, checksums, integrity and schema versions match",
                    manifest.files.len()
                ),
                at_ms: now_ms(),
            },
            Err(e) => Verification {
                ok: false,
                message: e.to_string(),
                at_ms: now_ms(),
            },
        };
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), verification.clone());
        Ok(verification)
    }
}

fn backups_dir(app: &App) -> PathBuf {
    app.config().base_dir.join("backups")
}

/// The directory of backup `name`; a name that is not a plain directory name is refused.
fn backup_dir(app: &App, name: &str) -> Result<PathBuf, PlatformError> {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    let dir = backups_dir(app).join(name);
    if !plain || !dir.join("manifest.json").is_file() {
        return Err(PlatformError::NoSuchBackup {
            name: name.to_owned(),
        });
    }
    Ok(dir)
}

/// One installed plugin as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginOverview {
    /// Plugin id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `shared` or `isolated`.
    pub mode: &'static str,
    /// Whether its routes are served.
    pub enabled: bool,
    /// The plugin API its component uses, as checked at install (`null`: installed
    /// before installs recorded it).
    pub api_version: Option<String>,
    /// Bytes its tables take (from the storage report, measured every 30 s).
    pub used_bytes: u64,
    /// Its storage quota.
    pub quota_bytes: u64,
    /// Its tables: rows and bytes.
    pub tables: Vec<TableUsage>,
    /// Requests, errors and latency of the last minutes (none before its first request).
    pub activity: Option<PluginActivity>,
    /// Statements the fence denied since the host started.
    pub denials: u64,
    /// Why the host could not load it, if it could not.
    pub load_error: Option<String>,
    /// The newest warning or error it logged.
    pub last_problem: Option<LogEntry>,
}

/// The plugins panel.
pub fn plugins(
    app: &App,
    console: &Console,
    state: &AppState,
) -> Result<Vec<PluginOverview>, PlatformError> {
    let storage = console.storage(app)?;
    let activity = state.metrics().plugin_activity();
    let host = state.host().map(|h| (h.state(), h.denials()));
    let mut out = Vec::new();
    for record in crate::plugins::list(app)? {
        let manifest = &record.manifest;
        let usage = storage.plugins.iter().find(|u| u.id == manifest.id);
        let load_error = match host.as_ref().map(|(state, _)| state) {
            Some(HostState::Running { plugins, .. }) => plugins
                .iter()
                .find(|p| p.id == manifest.id)
                .and_then(|p| p.error.clone()),
            _ => None,
        };
        let last_problem = crate::plugin_logs::recent_of_installed(app, &manifest.id, 200)?
            .into_iter()
            .rev()
            .find(|e| e.level >= sovereign_protocol::LogLevel::Warn);
        out.push(PluginOverview {
            id: manifest.id.clone(),
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            mode: match manifest.database {
                DatabaseMode::Shared => "shared",
                DatabaseMode::Isolated => "isolated",
            },
            enabled: record.enabled,
            api_version: manifest.plugin_api.clone(),
            used_bytes: usage.map_or(0, |u| u.bytes),
            quota_bytes: u64::from(manifest.limits.storage_mb) * 1024 * 1024,
            tables: usage.map(|u| u.tables.clone()).unwrap_or_default(),
            activity: activity.iter().find(|a| a.plugin == manifest.id).cloned(),
            denials: host
                .as_ref()
                .and_then(|(_, denials)| denials.iter().find(|(id, _)| *id == manifest.id))
                .map_or(0, |(_, n)| *n),
            load_error,
            last_problem,
        });
    }
    Ok(out)
}

/// One store file.
#[derive(Debug, Clone, Serialize)]
pub struct StoreFile {
    /// `core`, `plugins`, `mirror` or `plugin:<id>`.
    pub role: String,
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its write-ahead log's size.
    pub wal_bytes: u64,
    /// Its last integrity check (every 10 minutes while the platform runs).
    pub integrity: Option<IntegrityCheck>,
}

/// One migration and where it stands.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationRow {
    /// `core`, `system`, `plugin:<id>`.
    pub scope: String,
    /// `NNNN_name.sql`.
    pub file: String,
    /// `applied`, `pending`, `changed` or `unknown`.
    pub state: &'static str,
}

/// The stores panel.
#[derive(Debug, Clone, Serialize)]
pub struct StoresPanel {
    /// The database files.
    pub files: Vec<StoreFile>,
    /// Highest applied migration per scope.
    pub schema_versions: BTreeMap<String, u32>,
    /// Migrations not cleanly applied.
    pub pending: Vec<MigrationRow>,
    /// The storage report's age in seconds (it is measured every 30 s).
    pub storage_age_s: u64,
}

fn file_sizes(role: String, path: &Path) -> StoreFile {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    StoreFile {
        role,
        bytes: size(path),
        wal_bytes: size(Path::new(&wal)),
        path: path.to_owned(),
        integrity: None,
    }
}

/// A PostgreSQL store in the panel: its database's size (the server keeps its own WAL
/// and checks its own pages).
fn database_size(
    role: &str,
    shown: &str,
    client: &mut postgres::Client,
) -> Result<StoreFile, PlatformError> {
    let query = "SELECT pg_database_size(current_database())";
    let bytes: i64 = client
        .query_one(query, &[])
        .map_err(|source| sovereign_postgres::PgError::Statement {
            statement: query.into(),
            source,
        })?
        .get(0);
    Ok(StoreFile {
        role: role.to_owned(),
        path: PathBuf::from(shown),
        bytes: bytes.max(0) as u64,
        wal_bytes: 0,
        integrity: None,
    })
}

/// A MySQL store in the panel: its database's data and index bytes (the server keeps its
/// own logs and checks its own pages).
fn mysql_database_size(
    role: &str,
    shown: &str,
    conn: &mut mysql::Conn,
) -> Result<StoreFile, PlatformError> {
    use mysql::prelude::Queryable;
    let query = "SELECT CAST(COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) AS SIGNED)
                 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()";
    let bytes: i64 = conn
        .query_first(query)
        .map_err(|source| sovereign_mysql::MyError::Statement {
            statement: query.into(),
            source,
        })?
        .unwrap_or(0);
    Ok(StoreFile {
        role: role.to_owned(),
        path: PathBuf::from(shown),
        bytes: bytes.max(0) as u64,
        wal_bytes: 0,
        integrity: None,
    })
}

/// The stores panel: files, sizes, schema versions and what is not applied.
pub fn stores(app: &App, console: &Console) -> Result<StoresPanel, PlatformError> {
    let mut files = Vec::new();
    match app.core_location() {
        sovereign_db_core::CoreLocation::File(core) => files.push(file_sizes("core".into(), &core)),
        sovereign_db_core::CoreLocation::Postgres(url) => {
            let mut core = sovereign_db_core::PgCore::connect(&url)?;
            files.push(database_size("core", &url.to_string(), core.client_mut())?);
        }
        sovereign_db_core::CoreLocation::Mysql(url) => {
            let mut core = sovereign_db_core::MyCore::connect(&url)?;
            files.push(mysql_database_size(
                "core",
                &url.to_string(),
                core.conn_mut(),
            )?);
        }
    }
    match app.plugin_store() {
        PluginStore::Postgres(store) => files.push(database_size(
            "plugins",
            &format!("postgres://{}", store.describe()),
            &mut store.connect_owner()?,
        )?),
        PluginStore::Mysql(store) => files.push(mysql_database_size(
            "plugins",
            &format!("mysql://{}", store.describe()),
            &mut store.connect_owner()?,
        )?),
        PluginStore::Sqlite(_) => {
            let layout = app.plugin_files("the stores panel")?;
            files.push(file_sizes("plugins".into(), &layout.plugins));
            if let Some(mirror) = &layout.mirror_file {
                files.push(file_sizes("mirror".into(), mirror));
            }
            for (id, path) in layout.isolated_files()? {
                files.push(file_sizes(format!("plugin:{id}"), &path));
            }
        }
    }
    {
        let checks = console.integrity.lock().unwrap_or_else(|e| e.into_inner());
        for file in &mut files {
            file.integrity = checks.get(&file.path).cloned();
        }
    }
    let mut schema_versions = BTreeMap::new();
    let mut pending = Vec::new();
    for target in crate::migrations::targets(app, crate::migrations::Scope::All, None)? {
        for status in target.status()? {
            let state = match status.state {
                MigrationState::Applied { .. } => {
                    let highest = schema_versions.entry(status.scope.clone()).or_insert(0);
                    *highest = (*highest).max(status.version);
                    continue;
                }
                MigrationState::Pending => "pending",
                MigrationState::Changed { .. } => "changed",
                MigrationState::Unknown { .. } => "unknown",
            };
            pending.push(MigrationRow {
                scope: status.scope,
                file: status.file_name,
                state,
            });
        }
    }
    let storage_age_s = console
        .storage
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or(0, |(at, _)| at.elapsed().as_secs());
    Ok(StoresPanel {
        files,
        schema_versions,
        pending,
        storage_age_s,
    })
}

/// The host panel.
#[derive(Debug, Clone, Serialize)]
pub struct HostPanel {
    /// Running, starting, crash loop or stopped, with the sandbox and the `core.db` probe.
    pub state: Option<HostState>,
    /// The state in words.
    pub summary: String,
    /// The sandbox in words (while running).
    pub sandbox: Option<String>,
    /// What the host answered when asked to open `core.db` (while running).
    pub core_db_probe: Option<String>,
    /// The host process's resident memory, KiB (while running).
    pub memory_kib: Option<u64>,
    /// Statements the fence denied per plugin since the host started.
    pub denials: Vec<(String, u64)>,
}

/// A process's resident memory from `/proc/<pid>/status`, KiB.
fn resident_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The host panel (no host: the platform runs without plugins).
pub fn host(state: &AppState) -> HostPanel {
    let host = state.host().map(|h| h.state());
    let (sandbox, core_db_probe) = match &host {
        Some(HostState::Running {
            sandbox,
            core_db_probe,
            ..
        }) => (
            Some(match sandbox {
                sovereign_protocol::SandboxStatus::Enforced => {
                    "enforced (Landlock: plugin stores and packages only)".to_owned()
                }
                sovereign_protocol::SandboxStatus::Partial(why) => format!("partial: {why}"),
                sovereign_protocol::SandboxStatus::Unavailable(why) => {
                    format!("UNAVAILABLE: {why}")
                }
            }),
            Some(core_db_probe.to_string()),
        ),
        _ => (None, None),
    };
    let memory_kib = match &host {
        Some(HostState::Running { pid, .. }) => resident_kib(*pid),
        _ => None,
    };
    HostPanel {
        memory_kib,
        summary: host
            .as_ref()
            .map_or("none: this platform runs without plugins".to_owned(), |h| {
                h.to_string()
            }),
        sandbox,
        core_db_probe,
        state: host,
        denials: state.host().map(|h| h.denials()).unwrap_or_default(),
    }
}

/// One backup as the console lists it.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    /// Its directory's name under `backups/`.
    pub name: String,
    /// When it was taken.
    pub created_at: String,
    /// Bytes of its files.
    pub bytes: u64,
    /// Its files.
    pub files: usize,
    /// Whether it holds plugin data.
    pub includes_plugin_data: bool,
    /// How long it took (backups taken by this console only).
    pub took_ms: Option<u64>,
    /// Its last verification in this process.
    pub verification: Option<Verification>,
}

/// The newest `limit` backups under `backups/`, newest first.
pub fn backups(
    app: &App,
    console: &Console,
    limit: usize,
) -> Result<Vec<BackupSummary>, PlatformError> {
    let dir = backups_dir(app);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(PlatformError::Io {
                what: format!("listing {}", dir.display()),
                source,
            });
        }
    };
    let verified = console
        .verified
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let job = console.backup_job();
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(text) = std::fs::read(entry.path().join("manifest.json")) else {
            continue;
        };
        let manifest: sovereign_ops::backup::Manifest = match serde_json::from_slice(&text) {
            Ok(manifest) => manifest,
            Err(e) => {
                tracing::warn!(backup = %name, error = %e, "console: unreadable backup manifest");
                continue;
            }
        };
        out.push(BackupSummary {
            took_ms: job
                .as_ref()
                .filter(|j| j.name == name)
                .and_then(|j| j.took_ms),
            verification: verified.get(&name).cloned(),
            created_at: manifest.created_at.clone(),
            bytes: manifest.files.iter().map(|f| f.size).sum(),
            files: manifest.files.len(),
            includes_plugin_data: manifest.includes_plugin_data,
            name,
        });
    }
    out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.name.cmp(&a.name)));
    out.truncate(limit);
    Ok(out)
}

/// A page of the audit log, newest first (`plugin`: entries about that plugin only).
pub fn audit(
    app: &App,
    plugin: Option<&str>,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<sovereign_db_core::audit::AuditEntry>, PlatformError> {
    let target = plugin.map(|p| format!("plugin:{p}"));
    Ok(sovereign_db_core::audit::page(
        &app.open_migrated_core_read_only()?,
        target.as_deref(),
        before,
        limit,
    )?)
}

/// A page of the core's event inbox, newest first, filtered.
pub fn events(
    app: &App,
    filter: &sovereign_db_core::events::EventFilter,
    limit: u32,
) -> Result<Vec<sovereign_db_core::events::StoredEvent>, PlatformError> {
    Ok(sovereign_db_core::events::page(
        &app.open_migrated_core_read_only()?,
        filter,
        limit,
    )?)
}
