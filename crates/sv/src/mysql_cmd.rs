//! `sv mysql:roles`: the MySQL/MariaDB accounts, databases and grants the two store URLs
//! name (RFC-0003 in MySQL's terms), printed for a DBA or applied as an administrator;
//! `sv migrate:to-mysql`: a SQLite install moved into them.

use std::process::ExitCode;

use clap::Args;
use sovereign_mysql::RolePlan;
use sovereign_platform::App;
use sovereign_platform::to_mysql::{self, MysqlTarget};

use crate::postgres_cmd::RolesArgs;

/// The store URLs come from `--database-url` / `--plugin-database-url`, the
/// environment (`DATABASE_URL`, `PLUGIN_DATABASE_URL`), or `sovereign.toml`, as for
/// every other command; a core URL that is not `mysql://` stays where it is and gets
/// nothing.
pub fn roles(
    args: &RolesArgs,
    database_url: Option<String>,
    plugin_database_url: Option<String>,
) -> anyhow::Result<ExitCode> {
    let read = sovereign_config::Config::from_process(&Default::default());
    let config = read.as_ref().ok();
    let is_mysql = |url: &String| url.starts_with("mysql://") || url.starts_with("mariadb://");
    let core = database_url
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .or_else(|| Some(config?.core_mysql_url()?.expose().to_owned()))
        .filter(is_mysql);
    let plugins = plugin_database_url
        .or_else(|| std::env::var("PLUGIN_DATABASE_URL").ok())
        .or_else(|| Some(config?.plugins_mysql_url()?.expose().to_owned()))
        .filter(is_mysql)
        .ok_or_else(|| {
            let unread = match &read {
                Err(e) => format!(" (and the configuration could not be read: {e})"),
                Ok(_) => String::new(),
            };
            anyhow::anyhow!(
                "no mysql:// plugin store URL{unread}: give --plugin-database-url (or \
                 PLUGIN_DATABASE_URL, or plugin_database_url in sovereign.toml) as \
                 mysql://svc_plugins:PASSWORD@HOST:PORT/DATABASE"
            )
        })?;
    let plan = RolePlan::new(core.as_deref(), &plugins)?;
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
        "the plugin database"
    };
    println!(
        "applied {ran} statements: {databases}, their accounts and the provisioning procedures"
    );
    Ok(ExitCode::SUCCESS)
}

/// `sv migrate:to-mysql`: the two target URLs.
#[derive(Args)]
pub struct ToMysqlArgs {
    #[command(flatten)]
    urls: crate::postgres_cmd::MoveUrls,
    /// Print the plan (tables, rows, plugins, whether the target can take it) and change
    /// nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Prints the plan, or moves and prints every table's digest.
pub fn to_mysql(app: &App, args: &ToMysqlArgs) -> anyhow::Result<ExitCode> {
    let target = MysqlTarget::parse(&args.urls.core_url, &args.urls.plugins_url)?;
    if args.dry_run {
        let plan = to_mysql::plan(app, &target)?;
        println!(
            "move the SQLite install to {} and {}:",
            target.describe_core(),
            target.describe_plugins()
        );
        for table in &plan.tables {
            println!(
                "  {:<24} {:<32} {:>10} rows",
                table.store, table.table, table.rows
            );
        }
        println!("plugins: {}", plan.plugins.join(", "));
        match &plan.refused {
            None => println!("target: empty, the move can go ahead"),
            Some(why) => println!("refused: {why}"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = to_mysql::run(app, &target, &mut |table, rows| {
        eprintln!("copied {table} ({rows} rows)");
    })?;
    for table in &report.tables {
        println!("  {:<24} {:<32} {}", table.store, table.table, table.digest);
    }
    println!(
        "moved {} rows; both sides match, table by table; plugins with accounts: {}",
        report.rows(),
        report.plugins.join(", ")
    );
    let mirror: Vec<String> = report
        .mirror_rows
        .iter()
        .map(|(slice, rows)| format!("{slice} {rows}"))
        .collect();
    println!(
        "mirror built ({}) and reconciled: no differences",
        mirror.join(", ")
    );
    println!(
        "done in {:.1} s. Next: set DATABASE_URL and PLUGIN_DATABASE_URL to the new URLs and \
         start; keep the SQLite files until you have checked it",
        report.seconds
    );
    Ok(ExitCode::SUCCESS)
}
