//! Starting the platform: the checks before serving, a development start's setup, and
//! the running kernel with its extension host, sync worker and signal handling.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sovereign_db_core::CoreLocation;
use sovereign_db_core::mysql_kernels::KernelRegistration;
use sovereign_db_core::users::{self, NewUser, Role};
use sovereign_db_plugins::DatabaseMode;
pub use sovereign_kernel::RuntimeLock;
use sovereign_kernel::host::HostCommand;
use sovereign_kernel::{Kernel, KernelOptions};
use sovereign_protocol::StoreLogin;
use sovereign_sync::worker::{SyncTarget, SyncWaker, SyncWorker};

use crate::plugins::{Approval, Installed};
use crate::{App, PlatformError, PluginStore};

/// Login sessions last a day.
const SESSION_TTL_SECONDS: i64 = 24 * 60 * 60;

/// The e-mail address of the admin that a development start creates on an empty install.
pub const FIRST_ADMIN_EMAIL: &str = "admin@sovereign.local";

/// Takes this process's runtime lock: the data directory's (one platform per data
/// directory) when a store is SQLite; its own under `<data dir>/kernels/` when both are
/// on one database server (kernels share the databases, not files).
pub fn lock(app: &App) -> Result<RuntimeLock, PlatformError> {
    if app.shares_stores() {
        clear_stale_kernel_files(app);
    }
    Ok(RuntimeLock::acquire(&app.runtime_file("lock"))?)
}

/// Removes the lock and socket files of kernels that are gone (killed: nobody holds
/// their lock).
fn clear_stale_kernel_files(app: &App) {
    let Ok(entries) = std::fs::read_dir(app.kernels_dir()) else {
        return;
    };
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if path.extension().is_some_and(|e| e == "lock") && RuntimeLock::holder(&path).is_none() {
            let _ = std::fs::remove_file(path.with_extension("sock"));
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The first administrator, created on an empty install; its password is shown once.
#[derive(Debug, Clone)]
pub struct FirstAdmin {
    /// Login e-mail.
    pub email: String,
    /// The generated password.
    pub password: String,
}

/// What a development start set up.
#[derive(Debug, Default)]
pub struct DevSetup {
    /// Migrations applied, as `scope: file`.
    pub migrated: Vec<String>,
    /// The first administrator, if the install was empty.
    pub first_admin: Option<FirstAdmin>,
    /// Packages of the plugins directory installed now.
    pub installed: Vec<Installed>,
    /// Packages that could not be installed, and why (the platform starts anyway).
    pub not_installed: Vec<(PathBuf, PlatformError)>,
}

/// A development start: checks `core.db`, applies every pending migration, creates the
/// first administrator of an empty install and installs the packages of the plugins
/// directory that are not installed yet (approving the mirror columns they ask for).
pub fn dev_setup(app: &App, init: bool) -> Result<DevSetup, PlatformError> {
    check_core_file(app, init)?;
    let mut setup = DevSetup {
        migrated: crate::migrations::deploy_all(app)?,
        first_admin: ensure_first_admin(app)?,
        ..DevSetup::default()
    };
    for package in crate::plugins::uninstalled_packages(app)? {
        match crate::plugins::install(app, &package, Approval::Given) {
            Ok(installed) => setup.installed.push(installed),
            Err(e) => setup.not_installed.push((package, e)),
        }
    }
    Ok(setup)
}

/// A production start's checks: `core.db` exists and passes them, and no migration of
/// any scope is pending.
pub fn serve_checks(app: &App, init: bool) -> Result<(), PlatformError> {
    if let Some(core) = app.config().core_db_path() {
        if !core.exists() {
            return Err(PlatformError::CoreMissingForServe { path: core });
        }
        check_core_file(app, init)?;
    }
    let pending = crate::migrations::not_applied(app)?;
    if !pending.is_empty() {
        return Err(PlatformError::PendingMigrations { pending });
    }
    Ok(())
}

/// Checks `core.db` before serving. An existing 0-byte file is not a new install: it is
/// what a failed copy, a full disk or a truncation leaves, and setting it up afresh would
/// hide the loss behind a new administrator, so it needs `init`. A store with content
/// must pass `PRAGMA quick_check` (its time is logged). A missing file is a development
/// start's new install. A core store on PostgreSQL has no file: the server keeps its
/// integrity, and a database that is not the core store is refused when opened.
pub fn check_core_file(app: &App, init: bool) -> Result<(), PlatformError> {
    let Some(core) = app.config().core_db_path() else {
        return Ok(());
    };
    let Ok(meta) = std::fs::metadata(&core) else {
        return Ok(());
    };
    if meta.is_file() && meta.len() == 0 {
        if init {
            return Ok(());
        }
        return Err(PlatformError::EmptyCore { path: core });
    }
    let started = std::time::Instant::now();
    let rows = (|| -> Result<Vec<String>, PlatformError> {
        let conn = sovereign_db::open_database(
            &core,
            &sovereign_db::OpenOptions::core().existing().read_only(),
        )?;
        let mut stmt = conn.prepare("PRAGMA quick_check(5)")?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    })()
    .map_err(|e| PlatformError::CoreUncheckable {
        path: core.clone(),
        source: Box::new(e),
    })?;
    if rows != ["ok"] {
        return Err(PlatformError::CoreDamaged {
            path: core,
            problems: rows.join("; "),
        });
    }
    tracing::info!(
        file = %core.display(),
        ms = started.elapsed().as_millis() as u64,
        "core store passed quick_check"
    );
    Ok(())
}

/// Creates the first administrator of an empty install.
fn ensure_first_admin(app: &App) -> Result<Option<FirstAdmin>, PlatformError> {
    let conn = app.core_location().open_existing()?;
    if users::count(&conn)? > 0 {
        return Ok(None);
    }
    let password = sovereign_db_core::password::generate();
    users::create(
        &conn,
        &NewUser {
            email: FIRST_ADMIN_EMAIL.into(),
            password: password.clone(),
            display_name: "Administrator".into(),
            avatar_url: None,
            role: Role::Admin,
            tenant_id: 1,
        },
    )?;
    Ok(Some(FirstAdmin {
        email: FIRST_ADMIN_EMAIL.into(),
        password,
    }))
}

/// How the platform serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Refuse to run plugins if the extension host cannot be sandboxed.
    pub require_sandbox: bool,
    /// The executable to start the extension host with (`<exe> host ...`).
    pub host_executable: PathBuf,
}

/// Runs the platform until SIGINT or SIGTERM: the kernel (HTTP API), the supervised
/// extension host, the sync worker (woken by the kernel's commits) and SIGUSR1 to
/// restart the host. `on_listening` is told the bound address once it serves.
pub fn serve(
    app: &App,
    mut lock: RuntimeLock,
    options: &ServeOptions,
    on_listening: &mut dyn FnMut(SocketAddr),
) -> Result<(), PlatformError> {
    let host = host_command(app, options)?;
    // On a MySQL core, register before serving: refused beside kernels this one may not
    // run with (see `mysql_kernels`), or while a restore runs.
    let registration = match app.core_location() {
        CoreLocation::Mysql(url) => Some(KernelRegistration::register(
            &url,
            &format!("pid {} (starting)", std::process::id()),
            app.shares_stores(),
        )?),
        CoreLocation::File(_) | CoreLocation::Postgres(_) => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| PlatformError::Io {
            what: "starting the async runtime".into(),
            source,
        })?;
    runtime.block_on(async {
        let waker = SyncWaker::default();
        let wake = waker.clone();
        let console = crate::console::Console::new();
        console
            .start_sampler(app.clone())
            .map_err(|source| PlatformError::Io {
                what: "starting the console's sync sampler".into(),
                source,
            })?;
        let kernel = Kernel::bind(&KernelOptions {
            core: app.core_location(),
            plugin_store_probe: plugin_store_probe(app),
            listen: options.listen,
            session_ttl_seconds: SESSION_TTL_SECONDS,
            host: Some(host),
            event_handlers: crate::events::handlers(),
            on_core_commit: Some(Arc::new(move || wake.wake())),
            routes: crate::http::routes(Arc::new(app.clone()), console.clone()),
            on_plugin_log: {
                let writer = crate::plugin_logs::LogWriter::new(crate::plugin_logs::log_dir(app));
                Some(Arc::new(move |lines| writer.append(lines)))
            },
        })
        .await?;
        let signals = |source| PlatformError::Io {
            what: "installing signal handlers".into(),
            source,
        };
        // `sv plugins host restart` signals SIGUSR1: restart the host, also out of a crash loop.
        if let Some(host) = kernel.host() {
            let mut usr1 =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                    .map_err(signals)?;
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    host.restart();
                }
            });
        }
        // Installing capture connects to the core store (blocking).
        let metrics = kernel.metrics();
        let name = kernel.name();
        if let Some(registration) = &registration {
            tokio::task::block_in_place(|| registration.rename(&name))?;
        }
        let sync = tokio::task::block_in_place(|| start_sync(app, waker, metrics, name))?;
        lock.record_address(&kernel.local_addr().to_string())
            .map_err(|source| PlatformError::Io {
                what: "recording the address in the lock file".into(),
                source,
            })?;
        let shutdown = sovereign_kernel::shutdown_signal().map_err(signals)?;
        on_listening(kernel.local_addr());
        let host = kernel.host();
        kernel
            .serve(shutdown)
            .await
            .map_err(|source| PlatformError::Io {
                what: "serving HTTP".into(),
                source,
            })?;
        if let Some(host) = host {
            host.stop(std::time::Duration::from_secs(5)).await;
        }
        let _ = tokio::task::spawn_blocking(move || sync.stop()).await;
        tracing::info!("stopped");
        Ok::<(), PlatformError>(())
    })?;
    drop(registration);
    drop(lock);
    Ok(())
}

/// How `/health` checks the plugin store: the SQLite file opens and is a plugin store,
/// or the PostgreSQL store's owner connects and answers.
fn plugin_store_probe(app: &App) -> sovereign_kernel::PluginStoreProbe {
    match app.plugin_store() {
        PluginStore::Sqlite(location) => {
            sovereign_kernel::sqlite_plugin_store_probe(location.shared_store.clone())
        }
        PluginStore::Postgres(store) => {
            let store = store.clone();
            Arc::new(move || {
                let mut owner = store.connect_owner().map_err(|e| e.to_string())?;
                owner
                    .batch_execute("SELECT 1")
                    .map_err(|e| format!("the PostgreSQL plugin store: {e}"))
            })
        }
        PluginStore::Mysql(store) => {
            let store = store.clone();
            Arc::new(move || {
                let mut owner = store.connect_owner().map_err(|e| e.to_string())?;
                mysql::prelude::Queryable::query_drop(&mut owner, "SELECT 1")
                    .map_err(|e| format!("the MySQL plugin store: {e}"))
            })
        }
    }
}

/// Installs change capture and starts the sync worker (near-real-time or scheduled),
/// the one writer of the mirror while the platform runs.
fn start_sync(
    app: &App,
    waker: SyncWaker,
    metrics: Arc<sovereign_kernel::Metrics>,
    kernel_name: String,
) -> Result<SyncWorker, PlatformError> {
    let settings = app.sync_settings().clone();
    let location = app.core_location();
    sovereign_sync::capture::install(&location.open_existing()?, &settings.catalog)?;
    let mirror_config = app.config().clone();
    let mirror_settings = settings.clone();
    Ok(SyncWorker::spawn(
        settings,
        SyncTarget {
            core: location,
            open_mirror: Arc::new(move || mirror_settings.open_mirror(&mirror_config)),
            observe: Some(Box::new(move |changes, took| {
                metrics.observe_sync_batch(changes, took.as_secs_f64())
            })),
            waker,
            kernel_name,
        },
    ))
}

/// How the kernel starts the extension host: the executable in host mode, with an
/// empty environment (but the log filter) and only the plugin store paths.
fn host_command(app: &App, options: &ServeOptions) -> Result<HostCommand, PlatformError> {
    let socket = app.runtime_file("sock");
    let mut args: Vec<std::ffi::OsString> = vec![
        "host".into(),
        "--socket".into(),
        socket.clone().into(),
        "--packages".into(),
        app.config().plugins_dir_path().into(),
    ];
    let store_login = match app.plugin_store() {
        PluginStore::Sqlite(location) => {
            args.extend([
                "--plugins-db".into(),
                location.shared_store.clone().into(),
                "--isolated-dir".into(),
                location.isolated_dir.clone().into(),
            ]);
            if let Some(mirror) = &location.mirror_file {
                args.push("--mirror-file".into());
                args.push(mirror.clone().into());
            }
            None
        }
        // The host gets no SQLite store: each plugin's spec carries its own login.
        PluginStore::Postgres(store) => {
            let store = store.clone();
            Some(sovereign_kernel::host::StoreLoginFn(Arc::new(
                move |id: &str, mode: DatabaseMode, password: &str| StoreLogin::Postgres {
                    url: store.plugin_login(id, mode, password),
                },
            )))
        }
        PluginStore::Mysql(store) => {
            let store = store.clone();
            Some(sovereign_kernel::host::StoreLoginFn(Arc::new(
                move |id: &str, _mode: DatabaseMode, password: &str| StoreLogin::Mysql {
                    url: store.plugin_login(id, password),
                },
            )))
        }
    };
    if options.require_sandbox {
        args.push("--require-sandbox".into());
    }
    let env = std::env::var("SV_LOG")
        .map(|v| vec![("SV_LOG".to_owned(), v)])
        .unwrap_or_default();
    Ok(HostCommand {
        program: options.host_executable.clone(),
        args,
        env,
        socket,
        core_db: app.config().core_db_path(),
        store_login,
        before_start: {
            let app = app.clone();
            Some(sovereign_kernel::host::BeforeStart(Arc::new(move || {
                crate::packages::sync_plugins_dir(&app)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })))
        },
    })
}

/// The pids of the platforms running from this data directory (one when a store is
/// SQLite; each kernel on this machine when both are PostgreSQL), from their lock files.
pub fn running_pids(app: &App) -> Result<Vec<i32>, PlatformError> {
    let mut pids = Vec::new();
    for lock in app.running_locks() {
        if let Some(pid) = RuntimeLock::holder(&lock) {
            pids.push(parse_pid(&lock, &pid)?);
        }
    }
    if pids.is_empty() {
        return Err(PlatformError::NotRunning {
            lock: app.runtime_file("lock"),
        });
    }
    Ok(pids)
}

pub(crate) fn parse_pid(lock: &Path, pid: &str) -> Result<i32, PlatformError> {
    pid.parse().map_err(|_| PlatformError::BadLockFile {
        lock: lock.to_owned(),
        content: pid.to_owned(),
    })
}

/// Sends `signal` to the platform process `pid` (read from its lock file).
pub(crate) fn signal(pid: i32, signal: rustix::process::Signal) -> Result<(), PlatformError> {
    let target = rustix::process::Pid::from_raw(pid).ok_or(PlatformError::BadPid { pid })?;
    rustix::process::kill_process(target, signal).map_err(|e| PlatformError::Io {
        what: format!("cannot signal pid {pid}"),
        source: e.into(),
    })
}
