//! `sv`, Sovereign's command-line tool. Thin: parsing and printing here, the work in the
//! crates it calls.

mod config_cmd;
mod migrate;
mod mysql_cmd;
mod ops_cmd;
mod plugins_cmd;
mod postgres_cmd;
mod run;
mod sync_cmd;
mod users_cmd;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sovereign_config::{Config, Overrides};
use sovereign_platform::App;

/// Sovereign: a platform kernel whose plugins cannot reach core data.
#[derive(Parser)]
#[command(name = "sv", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Configuration flags shared by every command (they win over the environment, `.env`
/// and `sovereign.toml`).
#[derive(Args, Clone)]
struct GlobalArgs {
    /// Core store URL (`DATABASE_URL`), e.g. `file:data/core.db`.
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Plugin store URL (`PLUGIN_DATABASE_URL`), e.g. `file:data/plugins.db`.
    #[arg(long, global = true, value_name = "URL")]
    plugin_database_url: Option<String>,
    /// Directory of the default database files and runtime files (`SV_DATA_DIR`).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Directory of plugin packages (`SV_PLUGINS_DIR`).
    #[arg(long, global = true, value_name = "DIR")]
    plugins_dir: Option<PathBuf>,
    /// A TOML configuration file instead of `./sovereign.toml` (`SV_CONFIG`).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the effective configuration and where each value came from.
    Config(config_cmd::ConfigArgs),
    /// Development start: create missing files, apply migrations, serve on 127.0.0.1.
    Dev(run::ServerArgs),
    /// Production start: refuses to run with pending migrations.
    Serve(run::ServeArgs),
    /// Apply pending migrations.
    #[command(name = "migrate:deploy")]
    MigrateDeploy(migrate::DeployArgs),
    /// Show applied, pending and changed migrations.
    #[command(name = "migrate:status")]
    MigrateStatus(migrate::StatusArgs),
    /// Migrations, as plain subcommands (`sv migrate deploy --scope core`).
    Migrate {
        #[command(subcommand)]
        command: migrate::MigrateCommand,
    },
    /// Install, list, remove plugins; run SQL as a plugin.
    Plugins {
        #[command(subcommand)]
        command: plugins_cmd::PluginsCommand,
    },
    /// Catch the mirror up, or rebuild it with --full.
    #[command(name = "sync:run")]
    SyncRun(sync_cmd::RunArgs),
    /// Sync status per slice.
    #[command(name = "sync:status")]
    SyncStatus(sync_cmd::StatusArgs),
    /// Compare core and mirror; --repair fixes what differs.
    #[command(name = "sync:reconcile")]
    SyncReconcile(sync_cmd::ReconcileArgs),
    /// What a full resync would change.
    #[command(name = "sync:plan")]
    SyncPlan,
    /// Sync, as plain subcommands (`sv sync run --full`).
    Sync {
        #[command(subcommand)]
        command: sync_cmd::SyncCommand,
    },
    /// Take an online backup of core.db, plugins.db and the isolated plugin files.
    Backup(ops_cmd::BackupArgs),
    /// Verify a backup: checksums, integrity, schema versions, manifest.
    #[command(name = "backup:verify")]
    BackupVerify(ops_cmd::VerifyArgs),
    /// Restore a verified backup, moving the current files aside.
    Restore(ops_cmd::RestoreArgs),
    /// Split a legacy single-file install into core.db and the plugin store.
    #[command(name = "migrate:split")]
    MigrateSplit(ops_cmd::SplitArgs),
    /// Move a stopped SQLite install into PostgreSQL (both stores), checked table by table.
    #[command(name = "migrate:to-postgres")]
    MigrateToPostgres(postgres_cmd::ToPostgresArgs),
    /// Move a stopped SQLite install into MySQL/MariaDB (both stores), checked table by
    /// table.
    #[command(name = "migrate:to-mysql")]
    MigrateToMysql(mysql_cmd::ToMysqlArgs),
    /// What an operator should know, in one report (exit 1 when something needs action).
    Doctor,
    /// Run the extension host (started by `sv dev`/`sv serve`, not by hand).
    #[command(hide = true)]
    Host(run::HostArgs),
    /// PostgreSQL: create the databases, roles and grants `DATABASE_URL` and
    /// `PLUGIN_DATABASE_URL` name (`--apply`), or print the SQL for a DBA (`--print`).
    #[command(name = "postgres:roles")]
    PostgresRoles(postgres_cmd::RolesArgs),
    /// MySQL/MariaDB: create the databases, accounts and provisioning procedures the
    /// `mysql://` store URLs name (`--apply`), or print the SQL for a DBA (`--print`).
    #[command(name = "mysql:roles")]
    MysqlRoles(postgres_cmd::RolesArgs),
    /// Manage users.
    Users {
        #[command(subcommand)]
        command: users_cmd::UsersCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SV_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal, and never when NO_COLOR is set (no-color.org).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text the message
/// before it already ends with (errors that print their source as part of themselves).
pub(crate) fn report(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    // The extension host gets everything it may know on its command line; it reads no
    // configuration, environment or `.env` (which could name core.db).
    if let Command::Host(args) = &cli.command {
        return run::host(args);
    }
    // These commands need only the two URLs (flags, environment, or sovereign.toml), and
    // run before the stores they make exist.
    if let Command::PostgresRoles(args) = &cli.command {
        return postgres_cmd::roles(
            args,
            cli.global.database_url.clone(),
            cli.global.plugin_database_url.clone(),
        );
    }
    if let Command::MysqlRoles(args) = &cli.command {
        return mysql_cmd::roles(
            args,
            cli.global.database_url.clone(),
            cli.global.plugin_database_url.clone(),
        );
    }
    let bind = match &cli.command {
        Command::Serve(args) => args.bind,
        _ => None,
    };
    let port = match &cli.command {
        Command::Dev(args) => args.port,
        Command::Serve(args) => args.server.port,
        _ => None,
    };
    let config = load_config(&cli.global, port, bind)?;
    // A restore that died half-way is completed before anything touches the data.
    if sovereign_platform::ops::finish_interrupted_restore(&config)? {
        eprintln!("warning: completed a restore that had been interrupted");
    }
    let app = App::new(config)?;
    match cli.command {
        Command::Config(args) => config_cmd::run(&app, &args),
        Command::Dev(args) => run::dev(&app, &args),
        Command::Serve(args) => run::serve(&app, &args.server),
        Command::MigrateDeploy(args) => migrate::deploy(&app, &args),
        Command::MigrateStatus(args) => migrate::status(&app, &args),
        Command::MigrateToPostgres(args) => postgres_cmd::to_postgres(&app, &args),
        Command::MigrateToMysql(args) => mysql_cmd::to_mysql(&app, &args),
        Command::Migrate { command } => match command {
            migrate::MigrateCommand::Deploy(args) => migrate::deploy(&app, &args),
            migrate::MigrateCommand::Status(args) => migrate::status(&app, &args),
        },
        Command::Users { command } => users_cmd::run(&app, command),
        Command::Plugins { command } => plugins_cmd::run(&app, command),
        Command::SyncRun(args) => sync_cmd::dispatch(&app, sync_cmd::SyncCommand::Run(args)),
        Command::SyncStatus(args) => sync_cmd::dispatch(&app, sync_cmd::SyncCommand::Status(args)),
        Command::SyncReconcile(args) => {
            sync_cmd::dispatch(&app, sync_cmd::SyncCommand::Reconcile(args))
        }
        Command::SyncPlan => sync_cmd::dispatch(&app, sync_cmd::SyncCommand::Plan),
        Command::Sync { command } => sync_cmd::dispatch(&app, command),
        Command::Backup(args) => ops_cmd::run_backup(&app, &args),
        Command::BackupVerify(args) => ops_cmd::run_verify(&args),
        Command::Restore(args) => ops_cmd::run_restore(&app, &args),
        Command::MigrateSplit(args) => ops_cmd::run_split(&app, &args),
        Command::Doctor => ops_cmd::run_doctor(&app),
        Command::Host(_) | Command::PostgresRoles(_) | Command::MysqlRoles(_) => {
            unreachable!("handled before the configuration is read")
        }
    }
}

fn load_config(
    global: &GlobalArgs,
    port: Option<u16>,
    bind: Option<IpAddr>,
) -> anyhow::Result<Config> {
    let overrides = Overrides {
        database_url: global.database_url.clone(),
        plugin_database_url: global.plugin_database_url.clone(),
        data_dir: global.data_dir.clone(),
        plugins_dir: global.plugins_dir.clone(),
        port,
        bind,
        config_file: global.config.clone(),
    };
    Ok(Config::from_process(&overrides)?)
}
