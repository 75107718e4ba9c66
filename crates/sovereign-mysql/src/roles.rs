//! The accounts, databases and grants the two store URLs name, as SQL for a DBA
//! (`print`) or applied as an administrator (`apply`), and each plugin's account.

use mysql::prelude::Queryable;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum MyError {
    /// A URL is not a `mysql://` URL with an account, a password and a database.
    #[error("{what} = {shown} is not usable: {problem}")]
    BadUrl {
        /// Which setting.
        what: String,
        /// The URL, password elided.
        shown: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The core and the plugins would share an account or a database.
    #[error("the core and the plugin store need a database and an account each (they share {0})")]
    Shared(&'static str),
    /// Connecting failed.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// Where, password elided.
        target: String,
        /// The driver's error.
        source: mysql::Error,
    },
    /// A migration's set is inconsistent with what was applied (changed, unknown).
    #[error(transparent)]
    Migration(#[from] sovereign_db::MigrationError),
    /// A migration's statement failed; the `ran` statements before it stay applied
    /// (MySQL commits every DDL statement).
    #[error(
        "migration {file} failed at its statement {} ({ran} before it stay applied: MySQL \
         commits each DDL statement; finish or undo them by hand, fix the file, and migrate \
         again): {source}", ran + 1
    )]
    MigrationFailed {
        /// The migration file.
        file: String,
        /// Statements of it that ran before the failing one.
        ran: usize,
        /// Why the statement failed.
        source: sovereign_db_plugins::FenceError,
    },
    /// A trusted migration's statement failed (the core's); the `ran` statements before
    /// it stay applied (MySQL commits each DDL statement) and the migration stays pending.
    #[error(
        "migration {file} failed at its statement {} (`{statement}`; {ran} before it stay \
         applied: MySQL commits each DDL statement; finish or undo them by hand, then \
         deploy again): {problem}", ran + 1
    )]
    ScriptFailed {
        /// The migration file.
        file: String,
        /// Statements of it that ran before the failing one.
        ran: usize,
        /// The failing statement's first line.
        statement: String,
        /// Why it failed.
        problem: String,
    },
    /// The mirror's bookkeeping or tables are not as the platform left them.
    #[error("the MySQL mirror: {message}")]
    MirrorState {
        /// What is wrong.
        message: String,
    },
    /// One of MySQL's client programs (`mariadb-dump`, `mariadb`) is missing or failed.
    #[error("{tool}: {problem}")]
    Tool {
        /// The program.
        tool: String,
        /// What went wrong (its standard error).
        problem: String,
    },
    /// Somebody else holds what this needs (a named lock).
    #[error("{what} are busy; try again when the other deployer has finished")]
    Busy {
        /// What was locked.
        what: String,
    },
    /// A statement failed.
    #[error("MySQL refused `{statement}`: {source}")]
    Statement {
        /// The statement (passwords elided).
        statement: String,
        /// The driver's error.
        source: mysql::Error,
    },
}

/// A store's `mysql://account:password@host:port/database`.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// The account's user name.
    pub account: String,
    /// Its password.
    pub password: String,
    /// The database.
    pub database: String,
    /// `host:port`.
    pub server: String,
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mysql://{}:***@{}/{}",
            self.account, self.server, self.database
        )
    }
}

/// A name MySQL takes unquoted and the plan may put into statements: lowercase
/// letters, digits and `_`, starting with a letter or `_`, at most `max` bytes.
fn plain_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl StoreUrl {
    /// Parses `url`; `what` names it in errors.
    pub fn parse(what: &str, url: &str) -> Result<StoreUrl, MyError> {
        let bad = |shown: String, problem: &str| MyError::BadUrl {
            what: what.to_owned(),
            shown,
            problem: problem.to_owned(),
        };
        let rest = url
            .strip_prefix("mysql://")
            .or_else(|| url.strip_prefix("mariadb://"))
            .ok_or_else(|| bad(url.to_owned(), "it must start with mysql://"))?;
        let (login, location) = rest.rsplit_once('@').ok_or_else(|| {
            bad(
                rest.to_owned(),
                "it names no account (mysql://account:password@host/database)",
            )
        })?;
        let shown = format!(
            "mysql://{}:***@{location}",
            login.split(':').next().unwrap_or("")
        );
        let (account, password) = login
            .split_once(':')
            .ok_or_else(|| bad(shown.clone(), "it has no password"))?;
        let (server, database) = location
            .split_once('/')
            .ok_or_else(|| bad(shown.clone(), "it names no database"))?;
        let database = database.split('?').next().unwrap_or_default();
        if !plain_name(account, 32) || !plain_name(database, 48) {
            return Err(bad(
                shown,
                "account and database names are lowercase letters, digits and _ (accounts up to 32, databases up to 48 bytes: plugin databases add _<id>)",
            ));
        }
        if password.is_empty() || password.contains(['\'', '\\']) {
            return Err(bad(shown, "the password must be set and hold no ' or \\"));
        }
        let server = if server.contains(':') {
            server.to_owned()
        } else {
            format!("{server}:3306")
        };
        Ok(StoreUrl {
            account: account.to_owned(),
            password: password.to_owned(),
            database: database.to_owned(),
            server,
        })
    }

    /// The URL logging in as `account` with `password` to `database` of this server.
    pub fn login_as(&self, account: &str, password: &str, database: &str) -> String {
        format!("mysql://{account}:{password}@{}/{database}", self.server)
    }

    /// The login of plugin `id`'s own account (with `password`) to its database on this
    /// (plugin store's) server.
    pub fn plugin_login(&self, id: &str, password: &str) -> StoreUrl {
        StoreUrl {
            account: plugin_account_name(id),
            password: password.to_owned(),
            database: format!("{}_{id}", self.database),
            server: self.server.clone(),
        }
    }

    /// Connects as the store's own account.
    pub fn connect(&self) -> Result<mysql::Conn, MyError> {
        connect(&self.login_as(&self.account, &self.password, &self.database))
    }
}

/// Connects to `url`.
pub fn connect(url: &str) -> Result<mysql::Conn, MyError> {
    connect_with(url, |builder| builder)
}

/// Connects to `url` for trusted code that runs a fixed set of statements many times
/// (the core store): prepared statements are kept for up to 256 of them, the session's
/// time zone is UTC, `"name"` is an identifier as in standard SQL (`ANSI_QUOTES`: the
/// sync's generated SQL and operators' slice filters are written so), and an `UPDATE`
/// counts the rows it matched (as SQLite and PostgreSQL do), not only those whose
/// values changed.
pub fn connect_trusted(url: &str) -> Result<mysql::Conn, MyError> {
    connect_with(url, |builder| {
        builder
            .stmt_cache_size(256)
            .additional_capabilities(mysql::consts::CapabilityFlags::CLIENT_FOUND_ROWS)
            .init(vec![
                "SET time_zone = '+00:00'",
                "SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')",
            ])
    })
}

fn connect_with(
    url: &str,
    configure: impl FnOnce(mysql::OptsBuilder) -> mysql::OptsBuilder,
) -> Result<mysql::Conn, MyError> {
    let shown = match StoreUrl::parse("the URL", url) {
        Ok(parsed) => format!("{parsed:?}"),
        Err(_) => "the server".to_owned(),
    };
    let opts = mysql::Opts::from_url(url).map_err(|e| MyError::Connect {
        target: shown.clone(),
        source: e.into(),
    })?;
    mysql::Conn::new(configure(mysql::OptsBuilder::from_opts(opts))).map_err(|source| {
        MyError::Connect {
            target: shown,
            source,
        }
    })
}

/// The account of plugin `id`.
pub fn plugin_account_name(id: &str) -> String {
    format!("svp_{id}")
}

/// The provisioning procedures, `{plugins_db}` and `{plugins_account}` to be filled in.
const PROVISIONING: &str = include_str!("../sql/provisioning.sql");

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// The databases and accounts of the two stores, and the provisioning procedures.
#[derive(Debug, Clone)]
pub struct RolePlan {
    core: Option<StoreUrl>,
    plugins: StoreUrl,
}

/// One step of a plan: the SQL, and how to show it (passwords elided).
#[derive(Debug, Clone)]
struct Step {
    sql: String,
    shown: String,
    /// A compound statement (`CREATE PROCEDURE ... BEGIN ... END`), which a client
    /// script must send with another delimiter.
    compound: bool,
}

impl RolePlan {
    /// A plan for the stores of `core_url` (none: the core stays elsewhere) and
    /// `plugins_url`.
    pub fn new(core_url: Option<&str>, plugins_url: &str) -> Result<RolePlan, MyError> {
        let plugins = StoreUrl::parse("PLUGIN_DATABASE_URL", plugins_url)?;
        let core = core_url
            .map(|url| StoreUrl::parse("DATABASE_URL", url))
            .transpose()?;
        if let Some(core) = &core {
            if core.account == plugins.account {
                return Err(MyError::Shared("an account"));
            }
            if core.database == plugins.database
                || core.database.starts_with(&format!("{}_", plugins.database))
            {
                return Err(MyError::Shared("a database name"));
            }
        }
        Ok(RolePlan { core, plugins })
    }

    fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut plain = |sql: String, shown: String| {
            steps.push(Step {
                sql,
                shown,
                compound: false,
            })
        };
        let stores = self.core.iter().chain(std::iter::once(&self.plugins));
        for store in stores {
            let (account, database) = (&store.account, &store.database);
            plain(
                format!(
                    "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                ),
                format!("CREATE DATABASE IF NOT EXISTS `{database}` ..."),
            );
            for verb in ["CREATE USER IF NOT EXISTS", "ALTER USER"] {
                plain(
                    format!(
                        "{verb} '{account}'@'%' IDENTIFIED BY {}",
                        literal(&store.password)
                    ),
                    format!("{verb} '{account}'@'%' IDENTIFIED BY '***'"),
                );
            }
            let grant = format!("GRANT ALL PRIVILEGES ON `{database}`.* TO '{account}'@'%'");
            plain(grant.clone(), grant);
        }
        // The plugin store's account reads and purges plugin databases (backups, purge),
        // which its procedures make.
        let plugins_db = &self.plugins.database;
        let account = &self.plugins.account;
        let grant = format!(
            "GRANT ALL PRIVILEGES ON `{}\\_%`.* TO '{account}'@'%'",
            plugins_db.replace('_', "\\_")
        );
        plain(grant.clone(), grant);
        let script = PROVISIONING
            .replace("{plugins_db}", plugins_db)
            .replace("{plugins_account}", account);
        for (sql, compound) in split_script(&script) {
            steps.push(Step {
                shown: sql.lines().next().unwrap_or_default().to_owned(),
                sql,
                compound,
            });
        }
        steps
    }

    /// The plan as a script for `mariadb`/`mysql` (it holds the passwords).
    pub fn print(&self) -> String {
        let mut out = String::from(
            "-- Sovereign's databases, accounts and plugin provisioning (sv mysql:roles).\n",
        );
        for step in self.steps() {
            if step.compound {
                out.push_str(&format!("DELIMITER //\n{}\n//\nDELIMITER ;\n", step.sql));
            } else {
                out.push_str(&format!("{};\n", step.sql));
            }
        }
        out
    }

    /// Applies the plan as the administrator of `admin_url`; returns the statements run.
    pub fn apply(&self, admin_url: &str) -> Result<usize, MyError> {
        let mut admin = connect(admin_url)?;
        let steps = self.steps();
        for step in &steps {
            admin
                .query_drop(&step.sql)
                .map_err(|source| MyError::Statement {
                    statement: step.shown.clone(),
                    source,
                })?;
        }
        Ok(steps.len())
    }
}

/// Splits a script into statements: a compound statement (a `BEGIN` ... `END;` body)
/// is one; comment lines are dropped.
fn split_script(script: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut compound = false;
    for line in script.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if trimmed == "BEGIN" {
            depth += 1;
            compound = true;
        }
        if trimmed == "END;" {
            depth = depth.saturating_sub(1);
        }
        current.push_str(line);
        current.push('\n');
        if depth == 0 && trimmed.ends_with(';') {
            let statement = current.trim().trim_end_matches(';').to_owned();
            out.push((statement, compound));
            current.clear();
            compound = false;
        }
    }
    out
}
