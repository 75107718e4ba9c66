//! `sv dev` and `sv serve`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use sovereign_config::Config;
use sovereign_db_core::users::{self, NewUser, Role};
use sovereign_kernel::{Kernel, KernelOptions, RuntimeLock};

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
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Address to listen on (`SV_BIND`, default 127.0.0.1).
    #[arg(long)]
    pub bind: Option<IpAddr>,
}

pub fn dev(config: &Config) -> anyhow::Result<ExitCode> {
    let lock = RuntimeLock::acquire(&config.lock_file_path())?;
    for applied in migrate::deploy_all(config)? {
        println!("migrated {applied}");
    }
    ensure_first_admin(config)?;
    start(
        config,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), config.port.value),
        lock,
    )
}

pub fn serve(config: &Config) -> anyhow::Result<ExitCode> {
    let lock = RuntimeLock::acquire(&config.lock_file_path())?;
    let core = config.core_db_path();
    if !core.exists() {
        bail!(
            "{} does not exist; create and migrate it with `sv migrate:deploy` (or use `sv dev`)",
            core.display()
        );
    }
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
    )
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
fn start_sync(config: &Config) -> anyhow::Result<SyncWorker> {
    let settings = plugin_support::sync_settings(config)?;
    let core = sovereign_db_core::open_existing(&config.core_db_path())?;
    sovereign_sync::capture::install(&core, &settings.catalog)?;
    let mirror_config = config.clone();
    let mirror_settings = settings.clone();
    Ok(SyncWorker::spawn(
        settings,
        SyncTarget {
            core_path: config.core_db_path(),
            open_mirror: Box::new(move || mirror_settings.open_mirror(&mirror_config)),
        },
    ))
}

fn start(config: &Config, listen: SocketAddr, lock: RuntimeLock) -> anyhow::Result<ExitCode> {
    let sync = start_sync(config)?;
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
        })
        .await?;
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
        kernel.serve(shutdown).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })?;
    sync.stop();
    drop(lock);
    Ok(ExitCode::SUCCESS)
}
