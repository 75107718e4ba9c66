//! `sv postgres:roles`: the PostgreSQL roles, databases and grants the two store URLs
//! name (RFC-0003), printed for a DBA or applied as an administrator.

use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sovereign_platform::App;
use sovereign_platform::to_postgres::{self, MoveOptions, MoveTarget, TargetState};
use sovereign_postgres::RolePlan;

/// `sv postgres:roles` and `sv mysql:roles`: print the plan, or apply it as an
/// administrator.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["print", "apply"])))]
pub struct RolesArgs {
    /// An administrator's URL, used only with --apply: on PostgreSQL a superuser (or a
    /// CREATEROLE + CREATEDB role), on MySQL an account with CREATE USER and GRANT OPTION
    /// (it becomes the definer of the provisioning procedures).
    #[arg(long, value_name = "URL")]
    pub(crate) admin_url: Option<String>,
    /// Print the SQL (for `psql -v ON_ERROR_STOP=1 -f` or `mariadb <`); it holds the
    /// passwords.
    #[arg(long)]
    pub(crate) print: bool,
    /// Create or update the databases, roles or accounts, and grants now.
    #[arg(long)]
    pub(crate) apply: bool,
}

/// The store URLs come from `--database-url` / `--plugin-database-url`, the
/// environment (`DATABASE_URL`, `PLUGIN_DATABASE_URL`), or `sovereign.toml`, as for
/// every other command.
pub fn roles(
    args: &RolesArgs,
    database_url: Option<String>,
    plugin_database_url: Option<String>,
) -> anyhow::Result<ExitCode> {
    let read = sovereign_config::Config::from_process(&Default::default());
    let config = read.as_ref().ok();
    // A core store that stays on SQLite (DATABASE_URL unset or `file:`) gets no roles.
    let core = database_url
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .or_else(|| Some(config?.core_postgres_url()?.expose().to_owned()))
        .filter(|url| !url.trim().starts_with("file:"));
    let plugins = plugin_database_url
        .or_else(|| std::env::var("PLUGIN_DATABASE_URL").ok())
        .or_else(|| Some(config?.plugins_postgres_url()?.expose().to_owned()))
        .ok_or_else(|| {
            let unread = match &read {
                Err(e) => format!(" (and the configuration could not be read: {e})"),
                Ok(_) => String::new(),
            };
            anyhow::anyhow!(
                "PLUGIN_DATABASE_URL is not set{unread}: give the plugin store's postgres:// \
                 URL with its role and password"
            )
        })?;
    let plan = RolePlan::new(core.as_deref(), &plugins, vec![])?;
    if args.print {
        print!("{}", plan.print());
        return Ok(ExitCode::SUCCESS);
    }
    let admin = args
        .admin_url
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--apply needs --admin-url"))?;
    let ran = plan.apply(admin)?;
    let databases = if core.is_some() {
        "the core and plugin databases"
    } else {
        "the plugin database (the core store stays on SQLite)"
    };
    println!("applied {ran} statements: {databases}, their roles and grants");
    Ok(ExitCode::SUCCESS)
}

/// The two databases a move fills, as their owners log in.
#[derive(Args)]
pub struct MoveUrls {
    /// The core database, as its owner (`svc_core`: `postgres://...` or `mysql://...`).
    #[arg(
        long,
        value_name = "URL",
        env = "SV_MOVE_CORE_URL",
        hide_env_values = true
    )]
    pub(crate) core_url: String,
    /// The plugin database, as its owner (`svc_plugins`).
    #[arg(
        long,
        value_name = "URL",
        env = "SV_MOVE_PLUGINS_URL",
        hide_env_values = true
    )]
    pub(crate) plugins_url: String,
}

/// `sv migrate:to-postgres`: the two target URLs and how to move.
#[derive(Args)]
pub struct ToPostgresArgs {
    #[command(flatten)]
    urls: MoveUrls,
    /// Print the plan (tables, rows, plugins, the target's state) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The target holds what an interrupted move of this install left: clear it and
    /// start again, or check the moved data and finish.
    #[arg(long)]
    resume: bool,
    /// Move plugins whose packages do not support PostgreSQL as disabled (their data
    /// stays in the SQLite files).
    #[arg(long)]
    disable_unsupported: bool,
}

/// Moves the stopped SQLite install into PostgreSQL, or prints the plan.
pub fn to_postgres(app: &App, args: &ToPostgresArgs) -> anyhow::Result<ExitCode> {
    let target = MoveTarget::parse(&args.urls.core_url, &args.urls.plugins_url)?;
    let plan = to_postgres::plan(app, &target)?;
    if args.dry_run {
        println!(
            "move {} (and its plugin files) to {} and {}:",
            plan.source_core.display(),
            target.describe_core(),
            target.describe_plugins()
        );
        for table in &plan.tables {
            println!(
                "  {:<24} {:<32} {:>10} rows",
                table.store, table.table, table.rows
            );
        }
        println!("  {} rows in all", plan.rows());
        for plugin in &plan.plugins {
            println!(
                "plugin {} ({}): {}",
                plugin.id,
                plugin.mode.as_str(),
                plugin.action
            );
        }
        println!(
            "target: {}",
            match &plan.target {
                TargetState::Empty => "empty".to_owned(),
                TargetState::PluginSideOnly => {
                    "holds a plugin side without a core (an interrupted move): --resume clears it"
                        .to_owned()
                }
                TargetState::Moved(from) => {
                    format!("holds an install moved from {from}: --resume checks and finishes it")
                }
                TargetState::Foreign(what) => format!("not empty ({what}): refused"),
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    let bar = ProgressBar::new(plan.rows());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:<32} [{bar:30}] {human_pos}/{human_len} rows ({per_sec}, eta {eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let report = to_postgres::run(
        app,
        &target,
        MoveOptions {
            resume: args.resume,
            disable_unsupported: args.disable_unsupported,
        },
        &mut |step| {
            bar.set_message(step.table.to_owned());
            bar.inc(step.rows);
        },
    );
    bar.finish_and_clear();
    let report = report?;
    for table in &report.tables {
        println!("  {:<24} {:<32} {}", table.store, table.table, table.digest);
    }
    println!(
        "{} {} rows in {:.2} s ({:.0} rows/s); both sides match, table by table",
        if report.resumed { "checked" } else { "moved" },
        report.rows(),
        report.copy_seconds,
        report.rows() as f64 / report.copy_seconds.max(1e-9)
    );
    println!(
        "mirror rebuilt ({} rows) and reconciled: no differences",
        report.mirror_rows
    );
    for id in &report.disabled {
        println!("plugin {id} is registered disabled: its package does not support PostgreSQL");
    }
    println!(
        "done in {:.1} s. Next: set DATABASE_URL and PLUGIN_DATABASE_URL to the new URLs \
         (the platform's own logins) and start; keep the SQLite files until you have checked it",
        report.seconds
    );
    Ok(ExitCode::SUCCESS)
}
