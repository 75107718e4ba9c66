//! `sv mysql:roles`: the MySQL/MariaDB accounts, databases and grants the two store URLs
//! name (RFC-0003 in MySQL's terms), printed for a DBA or applied as an administrator.

use std::process::ExitCode;

use sovereign_mysql::RolePlan;

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
