//! `sv dev`, `sv serve` and `sv host`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sovereign_platform::App;
use sovereign_platform::run::{self, ServeOptions};

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
    /// The shared plugin store (absent: the plugin store is on PostgreSQL).
    #[arg(long, requires = "isolated_dir")]
    plugins_db: Option<PathBuf>,
    /// The directory of isolated plugin files.
    #[arg(long, requires = "plugins_db")]
    isolated_dir: Option<PathBuf>,
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
        location: match (&args.plugins_db, &args.isolated_dir) {
            (Some(shared_store), Some(isolated_dir)) => Some(sovereign_db_plugins::StoreLocation {
                shared_store: shared_store.clone(),
                isolated_dir: isolated_dir.clone(),
                mirror_file: args.mirror_file.clone(),
            }),
            _ => None,
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

pub fn dev(app: &App, args: &ServerArgs) -> anyhow::Result<ExitCode> {
    let lock = run::lock(app)?;
    let setup = run::dev_setup(app, args.init)?;
    for applied in &setup.migrated {
        println!("migrated {applied}");
    }
    if let Some(admin) = &setup.first_admin {
        println!("created the first administrator (this password is shown only once):");
        println!("  e-mail:   {}", admin.email);
        println!("  password: {}", admin.password);
    }
    for installed in &setup.installed {
        println!(
            "installed plugin package {} {} ({} mode)",
            installed.id,
            installed.version,
            installed.mode.as_str()
        );
    }
    // One broken package (say, not built yet) does not stop the platform.
    for (package, error) in setup.not_installed {
        let error = crate::report(&anyhow::Error::from(error));
        tracing::error!(package = %package.display(), %error, "plugin package not installed");
    }
    start(
        app,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), app.config().port.value),
        lock,
        args.require_sandbox,
    )
}

pub fn serve(app: &App, args: &ServerArgs) -> anyhow::Result<ExitCode> {
    let lock = run::lock(app)?;
    run::serve_checks(app, args.init)?;
    start(
        app,
        SocketAddr::new(app.config().bind.value, app.config().port.value),
        lock,
        args.require_sandbox,
    )
}

fn start(
    app: &App,
    listen: SocketAddr,
    lock: run::RuntimeLock,
    require_sandbox: bool,
) -> anyhow::Result<ExitCode> {
    let options = ServeOptions {
        listen,
        require_sandbox,
        host_executable: std::env::current_exe().context("finding the sv executable")?,
    };
    run::serve(app, lock, &options, &mut |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "core store:   {}", app.core_location());
        let _ = writeln!(
            out,
            "plugin store: {}",
            match app.config().plugins_db_path() {
                Some(path) => path.display().to_string(),
                None => app.config().plugin_database_url.value.to_string(),
            }
        );
        let _ = writeln!(out, "Sovereign is running at http://{addr}");
        let _ = out.flush();
    })?;
    Ok(ExitCode::SUCCESS)
}
