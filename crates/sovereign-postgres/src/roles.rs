//! The roles, databases and grants of a PostgreSQL install, as SQL.

use std::fmt::Write as _;

use postgres::config::Host;

/// Why a plan cannot be made or applied.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// A URL that is not a usable `postgres://` URL.
    #[error("{what} is not a usable PostgreSQL URL: {message}")]
    BadUrl {
        /// Which URL (`DATABASE_URL`, ...).
        what: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Both stores name one database.
    #[error(
        "DATABASE_URL and PLUGIN_DATABASE_URL name the same database {database:?} on {server}: \
         plugins must never share the core's database; give PLUGIN_DATABASE_URL a database of its own"
    )]
    SameDatabase {
        /// The database.
        database: String,
        /// Host and port.
        server: String,
    },
    /// Both stores use one role.
    #[error(
        "DATABASE_URL and PLUGIN_DATABASE_URL log in as the same role {role:?}: the plugin \
         store's role must not be able to reach the core; use svc_core and svc_plugins"
    )]
    SameRole {
        /// The role.
        role: String,
    },
    /// The server refused a statement.
    #[error("PostgreSQL refused `{statement}`: {source}")]
    Statement {
        /// The statement (passwords elided).
        statement: String,
        /// The server's error.
        #[source]
        source: postgres::Error,
    },
    /// A migration set refused (changed, unknown, out of order) or failed.
    #[error(transparent)]
    Migration(#[from] sovereign_db::MigrationError),
    /// A plugin's connection would not be fenced by its role.
    #[error("plugin {plugin}'s database connection is refused: {message}")]
    UnsafeRole {
        /// Plugin id.
        plugin: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The mirror's bookkeeping or a mirrored value cannot be used.
    #[error("the PostgreSQL mirror: {message}; rebuild it with `sv sync:run --full`")]
    MirrorState {
        /// What is wrong.
        message: String,
    },
    /// The thread that holds a plugin's connection could not start.
    #[error("cannot start the database connection thread of plugin {plugin}: {source}")]
    Thread {
        /// Plugin id.
        plugin: String,
        /// Why.
        source: std::io::Error,
    },
    /// One of PostgreSQL's client programs (`pg_dump`, `pg_restore`, `psql`) is missing
    /// or failed.
    #[error("{program}: {message}")]
    ClientTool {
        /// The program.
        program: String,
        /// What happened (its last lines of errors) and how to fix it.
        message: String,
    },
    /// Connecting failed.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// Which database, as whom.
        target: String,
        /// The driver's error.
        #[source]
        source: postgres::Error,
    },
}

/// One store's connection URL, parsed.
#[derive(Debug, Clone)]
pub struct StoreUrl {
    /// The role it logs in as.
    pub role: String,
    /// That role's password.
    pub password: String,
    /// The database.
    pub database: String,
    /// `host:port`.
    pub server: String,
    /// The host (a name, an address or a Unix socket directory).
    pub host: String,
    /// The port.
    pub port: u16,
}

/// A name PostgreSQL takes unquoted: lowercase letters, digits, `_`, at most 63 bytes.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl StoreUrl {
    /// Parses `url` (`postgres://role:password@host:port/database`); `what` names it in
    /// errors.
    pub fn parse(what: &str, url: &str) -> Result<StoreUrl, PgError> {
        let bad = |message: String| PgError::BadUrl {
            what: what.to_owned(),
            message,
        };
        if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(bad("it must start with postgres://".into()));
        }
        let config: postgres::Config = url.parse().map_err(|e| bad(format!("{e}")))?;
        let role = config
            .get_user()
            .ok_or_else(|| bad("it names no role: postgres://ROLE:PASSWORD@HOST/DB".into()))?
            .to_owned();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                bad(format!(
                    "it gives no password for {role}: password authentication is assumed"
                ))
            })?;
        let database = config
            .get_dbname()
            .ok_or_else(|| bad("it names no database: postgres://ROLE:PASSWORD@HOST/DB".into()))?
            .to_owned();
        for (kind, name) in [("role", &role), ("database", &database)] {
            if !plain_name(name) {
                return Err(bad(format!(
                    "the {kind} name {name:?} must be lowercase letters, digits and _ (at most 63)"
                )));
            }
        }
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        Ok(StoreUrl {
            role,
            password,
            database,
            server: format!("{host}:{port}"),
            host,
            port,
        })
    }

    /// A connection string for `role` with `password` on this URL's server and
    /// database (key-value form: any host, socket directory or password fits).
    pub fn login_as(&self, role: &str, password: &str) -> String {
        let quote = |value: &str| format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"));
        format!(
            "host={} port={} user={} password={} dbname={}",
            quote(&self.host),
            self.port,
            quote(role),
            quote(password),
            quote(&self.database)
        )
    }
}

/// A plugin's role: who it is, what it may read, how many connections it may hold.
#[derive(Debug, Clone)]
pub struct PluginRole {
    /// Plugin id (its schema's name).
    pub id: String,
    /// The role's password (generated by the platform, handed only to the host).
    pub password: String,
    /// Approved mirror columns as `(slice, column)`.
    pub grants: Vec<(String, String)>,
    /// Most connections the role may hold at once.
    pub connection_limit: u32,
    /// The default statement timeout of its sessions (the host also cancels from
    /// outside: a plugin can change its own setting).
    pub statement_ms: u32,
}

impl PluginRole {
    /// Creates (or resets) the role, its schema and its grants in the plugin database,
    /// through `sv_admin.create_plugin_role` (run as the plugin store's role).
    pub fn create_sql(&self) -> String {
        format!(
            "SELECT sv_admin.create_plugin_role({}, {}, {}, {})",
            literal(&self.id),
            literal(&self.password),
            self.connection_limit,
            self.statement_ms
        )
    }

    /// Grants exactly the approved mirror columns (of the mirror tables built so far).
    pub fn grant_sql(&self) -> String {
        let grants: Vec<String> = self
            .grants
            .iter()
            .map(|(slice, column)| literal(&format!("{slice}.{column}")))
            .collect();
        format!(
            "SELECT sv_admin.grant_mirrors({}, ARRAY[{}]::text[])",
            literal(&self.id),
            grants.join(", ")
        )
    }

    /// Drops the role with its schema, events and grants.
    pub fn drop_sql(id: &str) -> String {
        format!("SELECT sv_admin.drop_plugin_role({})", literal(id))
    }
}

/// The provisioning functions (`sv_admin.*`), `{plugins_role}` to be filled in.
const PROVISIONING: &str = include_str!("../sql/provisioning.sql");

/// The role of plugin `id`.
pub fn plugin_role_name(id: &str) -> String {
    format!("svp_{id}")
}

/// Where a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The administrator's own database (roles and databases are cluster-wide).
    Maintenance,
    /// The core database.
    Core,
    /// The plugin database.
    Plugins,
}

/// One idempotent step of a plan.
#[derive(Debug, Clone)]
pub enum Step {
    /// A statement.
    Sql {
        /// Where.
        target: Target,
        /// What.
        sql: String,
        /// How errors and logs show it when it holds a password (`None`: as it is).
        redacted: Option<String>,
    },
    /// `CREATE DATABASE` unless it exists (it cannot run inside a `DO` block).
    CreateDatabase {
        /// The database.
        name: String,
        /// Its owner.
        owner: String,
    },
}

/// Everything the two URLs and the plugins need, in order.
#[derive(Debug, Clone)]
pub struct RolePlan {
    /// `None`: the core store stays on SQLite (only the plugin store is on PostgreSQL).
    core: Option<StoreUrl>,
    plugins: StoreUrl,
    plugin_roles: Vec<PluginRole>,
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl RolePlan {
    /// A plan for the stores of `core_url` and `plugins_url` (which must be different
    /// databases and roles) and the plugins' roles.
    pub fn new(
        core_url: Option<&str>,
        plugins_url: &str,
        plugin_roles: Vec<PluginRole>,
    ) -> Result<RolePlan, PgError> {
        let core = core_url
            .map(|url| StoreUrl::parse("DATABASE_URL", url))
            .transpose()?;
        let plugins = StoreUrl::parse("PLUGIN_DATABASE_URL", plugins_url)?;
        if let Some(core) = &core {
            if core.server == plugins.server && core.database == plugins.database {
                return Err(PgError::SameDatabase {
                    database: core.database.clone(),
                    server: core.server.clone(),
                });
            }
            if core.role == plugins.role {
                return Err(PgError::SameRole {
                    role: core.role.clone(),
                });
            }
        }
        for plugin in &plugin_roles {
            let role = plugin_role_name(&plugin.id);
            let columns = plugin.grants.iter().flat_map(|(s, c)| [s, c]);
            if !plain_name(&plugin.id)
                || !plain_name(&role)
                || !columns.into_iter().all(|n| plain_name(n))
            {
                return Err(PgError::BadUrl {
                    what: format!("plugin {}", plugin.id),
                    message:
                        "plugin ids, slices and columns must be lowercase letters, digits and _"
                            .into(),
                });
            }
        }
        Ok(RolePlan {
            core,
            plugins,
            plugin_roles,
        })
    }

    /// The steps, in the order they run.
    pub fn steps(&self) -> Vec<Step> {
        use Target::*;
        let mut steps = Vec::new();
        let sql = |target, sql: String| Step::Sql {
            target,
            sql,
            redacted: None,
        };
        let plugins_role = &self.plugins.role;
        let mut stores = vec![&self.plugins];
        stores.extend(&self.core);
        for (role, password) in stores.iter().map(|s| (&s.role, &s.password)) {
            // The plugin store's role makes the databases of isolated plugins.
            let createdb = if role == plugins_role {
                "CREATEDB"
            } else {
                "NOCREATEDB"
            };
            steps.push(sql(
                Maintenance,
                format!(
                    "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') \
                     THEN CREATE ROLE \"{role}\"; END IF; END $$"
                ),
            ));
            let alter = format!(
                "ALTER ROLE \"{role}\" LOGIN NOSUPERUSER {createdb} NOCREATEROLE NOREPLICATION \
                 NOBYPASSRLS NOINHERIT CONNECTION LIMIT 50 PASSWORD"
            );
            steps.push(Step::Sql {
                target: Maintenance,
                sql: format!("{alter} {}", literal(password)),
                redacted: Some(format!("{alter} '...'")),
            });
        }
        for (db, owner) in stores.iter().map(|s| (&s.database, &s.role)) {
            steps.push(Step::CreateDatabase {
                name: db.clone(),
                owner: owner.clone(),
            });
            steps.push(sql(
                Maintenance,
                format!("ALTER DATABASE \"{db}\" OWNER TO \"{owner}\""),
            ));
            // Nobody connects or makes temporary tables unless granted below.
            steps.push(sql(
                Maintenance,
                format!("REVOKE ALL ON DATABASE \"{db}\" FROM PUBLIC"),
            ));
        }
        // The core database: its owner's alone.
        if let Some(core) = &self.core {
            steps.push(sql(Core, "REVOKE ALL ON SCHEMA public FROM PUBLIC".into()));
            steps.push(sql(
                Core,
                format!("ALTER SCHEMA public OWNER TO \"{}\"", core.role),
            ));
        }
        // The plugin database: public is the plugin store's bookkeeping, core the mirrors.
        steps.push(sql(
            Plugins,
            "REVOKE ALL ON SCHEMA public FROM PUBLIC".into(),
        ));
        steps.push(sql(
            Plugins,
            format!("ALTER SCHEMA public OWNER TO \"{plugins_role}\""),
        ));
        steps.push(sql(
            Plugins,
            format!("CREATE SCHEMA IF NOT EXISTS core AUTHORIZATION \"{plugins_role}\""),
        ));
        steps.push(sql(Plugins, "REVOKE ALL ON SCHEMA core FROM PUBLIC".into()));
        // What installing and removing a plugin need, callable by the plugin store's role.
        steps.push(sql(
            Plugins,
            PROVISIONING.replace("{plugins_role}", plugins_role),
        ));
        for plugin in &self.plugin_roles {
            steps.push(Step::Sql {
                target: Plugins,
                sql: plugin.create_sql(),
                redacted: Some(format!(
                    "SELECT sv_admin.create_plugin_role('{}', '...', ...)",
                    plugin.id
                )),
            });
            steps.push(sql(Plugins, plugin.grant_sql()));
        }
        steps
    }

    /// The plan as a script for `psql` run by an administrator (`\connect` between the
    /// databases; passwords included: keep it secret).
    pub fn print(&self) -> String {
        let mut out = String::from(
            "-- Sovereign's roles, databases and grants (RFC-0003). Run with psql as a superuser:\n\
             --   psql \"$ADMIN_URL\" -v ON_ERROR_STOP=1 -f roles.sql\n",
        );
        let mut current = Target::Maintenance;
        for step in self.steps() {
            match step {
                Step::CreateDatabase { name, owner } => {
                    let _ = writeln!(
                        out,
                        "SELECT 'CREATE DATABASE \"{name}\" OWNER \"{owner}\"' \
                         WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{name}')\\gexec"
                    );
                }
                Step::Sql { target, sql, .. } => {
                    if target != current {
                        let db = match target {
                            Target::Maintenance => "postgres",
                            // Core steps exist only with a core store on PostgreSQL.
                            Target::Core => self.core.as_ref().map_or("", |c| &c.database),
                            Target::Plugins => &self.plugins.database,
                        };
                        let _ = writeln!(out, "\\connect \"{db}\"");
                        current = target;
                    }
                    let _ = writeln!(out, "{sql};");
                }
            }
        }
        out
    }

    /// Runs the plan as the administrator of `admin_url` (a superuser, or a role with
    /// CREATEROLE and CREATEDB that may grant on both databases).
    pub fn apply(&self, admin_url: &str) -> Result<usize, PgError> {
        let admin: postgres::Config = admin_url.parse().map_err(|e| PgError::BadUrl {
            what: "the administrator's URL".into(),
            message: format!("{e}"),
        })?;
        let connect = |db: Option<&str>| {
            let mut config = admin.clone();
            if let Some(db) = db {
                config.dbname(db);
            }
            config
                .connect(postgres::NoTls)
                .map_err(|source| PgError::Connect {
                    target: format!(
                        "database {} as {}",
                        db.or(admin.get_dbname()).unwrap_or("postgres"),
                        admin.get_user().unwrap_or("?")
                    ),
                    source,
                })
        };
        let mut maintenance = connect(None)?;
        let mut core: Option<postgres::Client> = None;
        let mut plugins: Option<postgres::Client> = None;
        let mut ran = 0;
        for step in self.steps() {
            match step {
                Step::CreateDatabase { name, owner } => {
                    let exists = maintenance
                        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                        .map_err(|source| PgError::Statement {
                            statement: "SELECT ... FROM pg_database".into(),
                            source,
                        })?
                        .is_some();
                    if !exists {
                        let statement = format!("CREATE DATABASE \"{name}\" OWNER \"{owner}\"");
                        maintenance
                            .batch_execute(&statement)
                            .map_err(|source| PgError::Statement { statement, source })?;
                        ran += 1;
                    }
                }
                Step::Sql {
                    target,
                    sql,
                    redacted,
                } => {
                    let client = match target {
                        Target::Maintenance => &mut maintenance,
                        Target::Core => match &mut core {
                            Some(c) => c,
                            None => core
                                .insert(connect(self.core.as_ref().map(|c| c.database.as_str()))?),
                        },
                        Target::Plugins => match &mut plugins {
                            Some(c) => c,
                            None => plugins.insert(connect(Some(&self.plugins.database))?),
                        },
                    };
                    client
                        .batch_execute(&sql)
                        .map_err(|source| PgError::Statement {
                            statement: redacted.unwrap_or_else(|| sql.clone()),
                            source,
                        })?;
                    ran += 1;
                }
            }
        }
        tracing::info!(statements = ran, "applied the PostgreSQL roles and grants");
        Ok(ran)
    }
}
