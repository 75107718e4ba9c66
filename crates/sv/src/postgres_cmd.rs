//! `sv postgres:roles`: the PostgreSQL roles, databases and grants the two store URLs
//! name (RFC-0003), printed for a DBA or applied as an administrator.

use std::process::ExitCode;

use clap::Args;
use sovereign_postgres::RolePlan;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["print", "apply"])))]
pub struct RolesArgs {
    /// A superuser's (or CREATEROLE + CREATEDB role's) URL, used only with --apply.
    #[arg(long, value_name = "URL")]
    admin_url: Option<String>,
    /// Print the SQL (for `psql -v ON_ERROR_STOP=1 -f`); it holds the passwords.
    #[arg(long)]
    print: bool,
    /// Create or update the roles, databases and grants now.
    #[arg(long)]
    apply: bool,
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
