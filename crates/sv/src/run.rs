//! `sv dev` and `sv serve`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use sovereign_config::Config;
use sovereign_db_core::users::{self, NewUser, Role};
use sovereign_db_plugins::mirror::{MirrorBatch, MirrorCatalog};
use sovereign_kernel::host::{CallError, HostCommand, HostHandle};
use sovereign_kernel::{Kernel, KernelOptions, RuntimeLock};
use sovereign_protocol::MirrorSliceSpec;
use sovereign_sync::SyncError;
use sovereign_sync::worker::Push;

use sovereign_sync::worker::{SyncTarget, SyncWorker};

use crate::{migrate, plugin_support};

/// Login sessions last a day.
const SESSION_TTL_SECONDS: i64 = 24 * 60 * 60;

/// The e-mail address of the admin that `sv dev` creates on an empty install.
pub const FIRST_ADMIN_EMAIL: &str = "admin@sovereign.local";

#[derive(Args)]
pub struct ServerArgs {
    /// HTTP port (`SV_PORT`, default 8080; 0 picks a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Refuse to run plugins if the extension host cannot be sandboxed with Landlock.
    #[arg(long)]
    pub require_sandbox: bool,
    /// Set up an existing but empty (0-byte) core store as a new install.
    #[arg(long)]
    pub init: bool,
}

/// Arguments of the extension host process (given by the kernel, not by hand).
#[derive(Args)]
pub struct HostArgs {
    /// The kernel's socket.
    #[arg(long)]
    socket: PathBuf,
    /// The shared plugin store.
    #[arg(long)]
    plugins_db: PathBuf,
    /// The directory of isolated plugin files.
    #[arg(long)]
    isolated_dir: PathBuf,
    /// The plugin packages.
    #[arg(long)]
    packages: PathBuf,
    /// The mirror file (read-only ATTACH layout).
    #[arg(long)]
    mirror_file: Option<PathBuf>,
    /// Exit rather than run unsandboxed.
    #[arg(long)]
    require_sandbox: bool,
    /// Request threads.
    #[arg(long, default_value_t = 4)]
    workers: usize,
}

/// The extension host process.
pub fn host(args: &HostArgs) -> anyhow::Result<ExitCode> {
    sovereign_host::run(sovereign_host::HostOptions {
        socket: args.socket.clone(),
        location: sovereign_db_plugins::StoreLocation {
            shared_store: args.plugins_db.clone(),
            isolated_dir: args.isolated_dir.clone(),
            mirror_file: args.mirror_file.clone(),
        },
        packages: args.packages.clone(),
        require_sandbox: args.require_sandbox,
        workers: args.workers,
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Address to listen on (`SV_BIND`, default 127.0.0.1).
    #[arg(long)]
    pub bind: Option<IpAddr>,
}

pub fn dev(config: &Config, args: &ServerArgs) -> anyhow::Result<ExitCode> {
    let lock = RuntimeLock::acquire(&config.lock_file_path())?;
    check_core_file(config, args.init)?;
    for applied in migrate::deploy_all(config)? {
        println!("migrated {applied}");
    }
    ensure_first_admin(config)?;
    install_packages(config)?;
    start(
        config,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), config.port.value),
        lock,
        args.require_sandbox,
    )
}

/// `sv dev` installs the plugin packages of the plugins directory that are not installed
/// yet (approving the mirror columns they ask for: this is a development start).
fn install_packages(config: &Config) -> anyhow::Result<()> {
    let dir = config.plugins_dir_path();
    for id in sovereign_db_plugins::discover_plugins(&dir)? {
        let package = dir.join(&id);
        if package.join("plugin.json").exists()
            && plugin_support::registered(config, &id)?.is_none()
        {
            println!("installing plugin package {}", package.display());
            // One broken package (say, not built yet) does not stop the platform.
            if let Err(e) = crate::plugins_cmd::install(config, &package, true) {
                tracing::error!(package = %package.display(), error = %format!("{e:#}"), "plugin package not installed");
            }
        }
    }
    Ok(())
}

pub fn serve(config: &Config, args: &ServerArgs) -> anyhow::Result<ExitCode> {
    let lock = RuntimeLock::acquire(&config.lock_file_path())?;
    let core = config.core_db_path();
    if !core.exists() {
        bail!(
            "{} does not exist; create and migrate it with `sv migrate:deploy` (or use `sv dev`)",
            core.display()
        );
    }
    check_core_file(config, args.init)?;
    let pending = migrate::not_applied(config)?;
    if !pending.is_empty() {
        bail!(
            "refusing to start: {} migration(s) are not applied:\n  {}\nrun `sv migrate:deploy` (see `sv migrate:status`) and start again",
            pending.len(),
            pending.join("\n  ")
        );
    }
    start(
        config,
        SocketAddr::new(config.bind.value, config.port.value),
        lock,
        args.require_sandbox,
    )
}

/// Checks `core.db` before serving. An existing 0-byte file is not a new install: it is
/// what a failed copy, a full disk or a truncation leaves, and setting it up afresh would
/// hide the loss behind a new administrator, so it needs `--init`. A store with content
/// must pass `PRAGMA quick_check` (its time is logged). A missing file is `sv dev`'s new
/// install.
fn check_core_file(config: &Config, init: bool) -> anyhow::Result<()> {
    let core = config.core_db_path();
    let Ok(meta) = std::fs::metadata(&core) else {
        return Ok(());
    };
    if meta.is_file() && meta.len() == 0 {
        if init {
            return Ok(());
        }
        bail!(
            "{} exists but is empty (0 bytes), so it holds no core store. If it should hold your \
             data, restore it (`sv restore BACKUP`); if this is a new install, start again with \
             --init (or delete the file)",
            core.display()
        );
    }
    let started = std::time::Instant::now();
    let advice =
        "run `sv doctor` for the details and `sv restore BACKUP` to restore the last good backup";
    let rows = (|| -> anyhow::Result<Vec<String>> {
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
    .with_context(|| {
        format!(
            "refusing to serve: cannot check {}; {advice}",
            core.display()
        )
    })?;
    if rows != ["ok"] {
        bail!(
            "refusing to serve: {} failed its integrity check (PRAGMA quick_check: {}); {advice}",
            core.display(),
            rows.join("; ")
        );
    }
    tracing::info!(
        file = %core.display(),
        ms = started.elapsed().as_millis() as u64,
        "core store passed quick_check"
    );
    Ok(())
}

/// How the kernel starts the extension host: this executable in host mode, with an
/// empty environment (but the log filter) and only the plugin store paths.
fn host_command(config: &Config, require_sandbox: bool) -> anyhow::Result<HostCommand> {
    let location = plugin_support::store_location(config)?;
    let socket = config.data_dir_path().join("host.sock");
    let mut args: Vec<std::ffi::OsString> = vec![
        "host".into(),
        "--socket".into(),
        socket.clone().into(),
        "--plugins-db".into(),
        location.shared_store.into(),
        "--isolated-dir".into(),
        location.isolated_dir.into(),
        "--packages".into(),
        config.plugins_dir_path().into(),
    ];
    if let Some(mirror) = location.mirror_file {
        args.push("--mirror-file".into());
        args.push(mirror.into());
    }
    if require_sandbox {
        args.push("--require-sandbox".into());
    }
    let env = std::env::var("SV_LOG")
        .map(|v| vec![("SV_LOG".to_owned(), v)])
        .unwrap_or_default();
    Ok(HostCommand {
        program: std::env::current_exe().context("finding the sv executable")?,
        args,
        env,
        socket,
        core_db: config.core_db_path(),
    })
}

/// Creates the first administrator of an empty install and prints its password once.
fn ensure_first_admin(config: &Config) -> anyhow::Result<()> {
    let conn = sovereign_db_core::open_existing(&config.core_db_path())?;
    if users::count(&conn)? > 0 {
        return Ok(());
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
    println!("created the first administrator (this password is shown only once):");
    println!("  e-mail:   {FIRST_ADMIN_EMAIL}");
    println!("  password: {password}");
    Ok(())
}

/// Installs change capture and starts the sync worker (near-real-time or scheduled).
/// Installs change capture and starts the sync worker (near-real-time or scheduled).
/// With the mirror in the plugin store, batches are pushed to the running extension host,
/// which applies them; while the host is unavailable they are applied here.
fn start_sync(
    config: &Config,
    host: Option<HostHandle>,
    metrics: std::sync::Arc<sovereign_kernel::Metrics>,
) -> anyhow::Result<SyncWorker> {
    let settings = plugin_support::sync_settings(config)?;
    let core = sovereign_db_core::open_existing(&config.core_db_path())?;
    sovereign_sync::capture::install(&core, &settings.catalog)?;
    let mirror_config = config.clone();
    let mirror_settings = settings.clone();
    let push = host
        .filter(|_| settings.layout == sovereign_sync::MirrorLayout::PluginStore)
        .map(|host| -> Push {
            let runtime = tokio::runtime::Handle::current();
            Box::new(move |catalog: &MirrorCatalog, batch: &MirrorBatch| {
                if !matches!(
                    host.state(),
                    sovereign_kernel::host::HostState::Running { .. }
                ) {
                    return None;
                }
                match runtime.block_on(host.apply_mirror(slice_specs(catalog), batch.clone())) {
                    Ok(applied) => Some(Ok(applied)),
                    Err(CallError::Unavailable { .. }) => None,
                    Err(e) => Some(Err(SyncError::Applier(format!("{e:?}")))),
                }
            })
        });
    Ok(SyncWorker::spawn(
        settings,
        SyncTarget {
            core_path: config.core_db_path(),
            open_mirror: Box::new(move || mirror_settings.open_mirror(&mirror_config)),
            push,
            observe: Some(Box::new(move |changes, took| {
                metrics.observe_sync_batch(changes, took.as_secs_f64())
            })),
        },
    ))
}

/// The slices as the host needs them to write mirror tables (names and columns only).
fn slice_specs(catalog: &MirrorCatalog) -> Vec<MirrorSliceSpec> {
    catalog
        .slices()
        .iter()
        .map(|s| MirrorSliceSpec {
            name: s.name.clone(),
            columns: s.columns.clone(),
        })
        .collect()
}

fn start(
    config: &Config,
    listen: SocketAddr,
    mut lock: RuntimeLock,
    require_sandbox: bool,
) -> anyhow::Result<ExitCode> {
    let host = host_command(config, require_sandbox)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let kernel = Kernel::bind(&KernelOptions {
            core_db: config.core_db_path(),
            plugins_db: config.plugins_db_path(),
            listen,
            session_ttl_seconds: SESSION_TTL_SECONDS,
            host: Some(host),
        })
        .await?;
        // `sv plugins host restart` signals SIGUSR1: restart the host, also out of a crash loop.
        if let Some(host) = kernel.host() {
            let mut usr1 =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    host.restart();
                }
            });
        }
        let sync = start_sync(config, kernel.host(), kernel.metrics())?;
        lock.record_address(&kernel.local_addr().to_string())?;
        let shutdown = sovereign_kernel::shutdown_signal()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "core store:   {}", config.core_db_path().display())?;
        writeln!(out, "plugin store: {}", config.plugins_db_path().display())?;
        writeln!(
            out,
            "Sovereign is running at http://{}",
            kernel.local_addr()
        )?;
        out.flush()?;
        drop(out);
        let host = kernel.host();
        kernel.serve(shutdown).await?;
        if let Some(host) = host {
            host.stop(std::time::Duration::from_secs(5)).await;
        }
        tokio::task::spawn_blocking(move || sync.stop()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })?;
    drop(lock);
    Ok(ExitCode::SUCCESS)
}
