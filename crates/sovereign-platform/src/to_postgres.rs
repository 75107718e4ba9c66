//! `sv migrate:to-postgres`: moving a stopped SQLite install (core.db, plugins.db, every
//! isolated plugin file) into a PostgreSQL core database and plugin database.
//!
//! The SQLite files are only read. The target is written in as few units as PostgreSQL
//! allows, so that a failure (or a killed move) leaves it empty:
//!
//! 1. one transaction on the core database: the core migrations, every core table copied
//!    and checked, the plugins' role passwords;
//! 2. one transaction on the plugin database, committed first: its bookkeeping, the
//!    pending events, and per plugin its role, its migrations (as its role) and its
//!    tables copied and checked;
//! 3. per isolated plugin its own database (created, then filled in one transaction);
//! 4. the core transaction commits last. Before that, any failure rolls the core back
//!    and removes what steps 2 and 3 committed. A move killed between 2 and 4 leaves a
//!    plugin side without a core: `--resume` clears it and starts again.
//! 5. then the mirror is rebuilt from the new core, plugins get their mirror grants and
//!    reconcile must find no difference; a failure here keeps the data (the core is
//!    complete) and `--resume` checks it again and finishes these steps.

use std::path::PathBuf;
use std::time::Instant;

use sovereign_config::{Source, Sourced};
use sovereign_db::StoreTarget;
use sovereign_db::rusqlite::Connection;
use sovereign_db_core::plugins::PluginRecord;
use sovereign_db_core::{CoreConn, CoreLocation};
use sovereign_db_plugins::{Backend, DatabaseMode};
use sovereign_ops::table_copy::{self, TableCopy, TableDigest};
use sovereign_postgres::{PgError, PluginRole, StoreUrl};

use crate::{App, PlatformError, PluginStore};

/// Core tables that are not copied: the store marker and migration bookkeeping are the
/// target's own, the change outbox and sync state belong to the mirror, which is rebuilt
/// from the moved core, and the stored packages (empty with a SQLite core) are written
/// from the plugins directory once the data is in.
pub(crate) const CORE_TABLES_NOT_COPIED: &[&str] = &[
    "_sv_store",
    "_sv_migrations",
    "_sv_change_outbox",
    "_sv_sync_state",
    "plugin_packages",
    "plugin_package_files",
];

/// The `_sv_sync_state` key a move writes in the core transaction: the target holds a
/// moved install (its value names the source).
const MOVED_FROM: &str = "moved_from_sqlite";

/// What went wrong with a move; nothing of the SQLite install was changed.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The install is not on SQLite.
    #[error(
        "{what} is not a SQLite file: a move (migrate:to-postgres, migrate:to-mysql) takes \
         an install whose two stores are SQLite files"
    )]
    NotOnSqlite {
        /// Which store.
        what: &'static str,
    },
    /// The target already holds data.
    #[error(
        "the target is not empty: {what}. migrate:to-postgres fills empty databases only; \
         give new databases (sv postgres:roles --apply makes them), or --resume if this is \
         what an interrupted move of this install left"
    )]
    TargetNotEmpty {
        /// What was found.
        what: String,
    },
    /// The target holds another install, so resuming would mix two.
    #[error("cannot resume: {what}. Give empty databases, or drop these and run the move again")]
    NotResumable {
        /// What was found.
        what: String,
    },
    /// The plugin database lacks what `sv postgres:roles` makes.
    #[error(
        "the plugin database has no sv_admin.create_plugin_role: apply the role plan first \
         (sv postgres:roles --admin-url URL --apply)"
    )]
    NoRolePlan,
    /// Plugins whose packages have no PostgreSQL migrations.
    #[error(
        "these plugins do not support PostgreSQL (their packages have no migrations/postgres/ \
         or do not list \"postgres\" in \"backends\"): {}. Upgrade them to versions that do, \
         or move with --disable-unsupported: they are registered disabled on PostgreSQL and \
         their data stays in the SQLite files, untouched",
        ids.join(", ")
    )]
    UnsupportedPlugins {
        /// Their ids.
        ids: Vec<String>,
    },
    /// A table's copy does not read back as its source.
    #[error("{table}: the SQLite side has {source_digest}, the target {target_digest}")]
    Mismatch {
        /// The table.
        table: String,
        /// Rows and checksum on SQLite.
        source_digest: TableDigest,
        /// Rows and checksum on the target.
        target_digest: TableDigest,
    },
    /// A SQLite plugin table the plugin's PostgreSQL migrations do not create.
    #[error(
        "plugin {id}: the SQLite table {table} has no PostgreSQL counterpart (its \
         migrations/postgres/ do not create it): its rows would be lost"
    )]
    TableNotOnPostgres {
        /// The plugin.
        id: String,
        /// The table.
        table: String,
    },
    /// A core table PostgreSQL's core schema lacks.
    #[error("the SQLite core has a table {table} that the PostgreSQL core schema lacks")]
    CoreTableNotOnPostgres {
        /// The table.
        table: String,
    },
    /// The mirror does not match the moved core after the rebuild.
    #[error(
        "the mirror differs from the moved core in {differences} rows after its rebuild: \
         the data is moved; run `sv sync:reconcile --repair` with the new URLs, or \
         `sv migrate:to-postgres --resume` to check and finish again"
    )]
    MirrorDiffers {
        /// Rows that differ.
        differences: usize,
    },
    /// A step failed; what was made of the target was removed again.
    #[error("{step} failed, and the target was emptied again ({undo}): {source}")]
    Failed {
        /// The step.
        step: String,
        /// What happened to the target.
        undo: String,
        /// Why.
        #[source]
        source: Box<PlatformError>,
    },
    /// The data is in, the finishing steps failed.
    #[error(
        "the data is moved and checked, but {step} failed: {source}. Fix the cause and run \
         the same command with --resume (it checks the data again and finishes)"
    )]
    Unfinished {
        /// The step.
        step: String,
        /// Why.
        #[source]
        source: Box<PlatformError>,
    },
}

/// Where to move to: the two databases, as their owners log in (`svc_core`,
/// `svc_plugins`).
#[derive(Debug, Clone)]
pub struct MoveTarget {
    core_url: String,
    plugins_url: String,
    core: StoreUrl,
    plugins: StoreUrl,
}

impl MoveTarget {
    /// Parses the two URLs (`--core-url`, `--plugins-url`).
    pub fn parse(core_url: &str, plugins_url: &str) -> Result<MoveTarget, PlatformError> {
        Ok(MoveTarget {
            core: StoreUrl::parse("--core-url", core_url)?,
            plugins: StoreUrl::parse("--plugins-url", plugins_url)?,
            core_url: core_url.to_owned(),
            plugins_url: plugins_url.to_owned(),
        })
    }

    /// The core database, as `host:port/database`.
    pub fn describe_core(&self) -> String {
        format!("{}/{}", self.core.server, self.core.database)
    }

    /// The plugin database, as `host:port/database`.
    pub fn describe_plugins(&self) -> String {
        format!("{}/{}", self.plugins.server, self.plugins.database)
    }

    fn connect(url: &StoreUrl, what: &str) -> Result<postgres::Client, PlatformError> {
        postgres::Client::connect(&url.login_as(&url.role, &url.password), postgres::NoTls).map_err(
            |source| {
                PgError::Connect {
                    target: format!("{what} {}/{} as {}", url.server, url.database, url.role),
                    source,
                }
                .into()
            },
        )
    }

    /// The installation as it is configured after the move: `app`'s configuration with
    /// the two URLs.
    pub fn app_after(&self, app: &App) -> Result<App, PlatformError> {
        let mut config = app.config().clone();
        config.database_url = Sourced {
            value: StoreTarget::parse("--core-url", &self.core_url)
                .map_err(sovereign_config::ConfigError::from)?,
            source: Source::Flag,
        };
        config.plugin_database_url = Sourced {
            value: StoreTarget::parse("--plugins-url", &self.plugins_url)
                .map_err(sovereign_config::ConfigError::from)?,
            source: Source::Flag,
        };
        App::new(config)
    }
}

/// How to move.
#[derive(Debug, Clone, Copy, Default)]
pub struct MoveOptions {
    /// The target holds what an interrupted move of this install left: clear it, or
    /// check it and finish.
    pub resume: bool,
    /// Move plugins that do not support PostgreSQL as disabled, without their data.
    pub disable_unsupported: bool,
}

/// One table of the plan.
#[derive(Debug, Clone)]
pub struct PlannedTable {
    /// `core`, `plugins` (bookkeeping) or `plugin <id>`.
    pub store: String,
    /// The table.
    pub table: String,
    /// Its rows on SQLite.
    pub rows: u64,
}

/// What happens to one plugin.
#[derive(Debug, Clone)]
pub struct PlannedPlugin {
    /// The plugin.
    pub id: String,
    /// Its database mode.
    pub mode: DatabaseMode,
    /// Whether its package supports PostgreSQL.
    pub supported: bool,
    /// Where its data goes, or why it stays.
    pub action: String,
}

/// The target's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    /// Both databases are empty.
    Empty,
    /// A plugin side without a core: what a move killed before its last commit leaves.
    PluginSideOnly,
    /// A moved core (from the source named), maybe without its mirror.
    Moved(String),
    /// Data that no move of this tool put there.
    Foreign(String),
}

/// What `--dry-run` prints.
#[derive(Debug, Clone)]
pub struct MovePlan {
    /// The SQLite core file.
    pub source_core: PathBuf,
    /// Every table copied.
    pub tables: Vec<PlannedTable>,
    /// Every installed plugin.
    pub plugins: Vec<PlannedPlugin>,
    /// The target's state.
    pub target: TargetState,
}

impl MovePlan {
    /// All rows to copy.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// Rows copied into one table since the last report.
#[derive(Debug, Clone, Copy)]
pub struct MoveProgress<'a> {
    /// The table (as `store table`).
    pub table: &'a str,
    /// Rows just copied.
    pub rows: u64,
}

/// A table copied and checked.
#[derive(Debug, Clone)]
pub struct CopiedTable {
    /// `core`, `plugins` or `plugin <id>`.
    pub store: String,
    /// The table.
    pub table: String,
    /// Rows and checksum, equal on both sides.
    pub digest: TableDigest,
}

/// What a move did.
#[derive(Debug, Clone)]
pub struct MoveReport {
    /// Every table, checked on both sides.
    pub tables: Vec<CopiedTable>,
    /// Whether this run resumed a moved core (checked it, did not copy).
    pub resumed: bool,
    /// Seconds the copy and its checks took (no mirror).
    pub copy_seconds: f64,
    /// Seconds the whole move took.
    pub seconds: f64,
    /// Rows the rebuilt mirror holds.
    pub mirror_rows: u64,
    /// Mirror rows reconcile compared chunk by chunk (every difference is an error).
    pub reconciled_chunks: u64,
    /// Plugins registered disabled (their packages do not support PostgreSQL).
    pub disabled: Vec<String>,
}

impl MoveReport {
    /// All rows copied.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.digest.rows).sum()
    }
}

/// The SQLite install being moved.
pub(crate) struct SourceInstall {
    pub(crate) core_path: PathBuf,
    pub(crate) core: CoreConn,
    pub(crate) shared: Connection,
    /// Where the packages (and their target backend's migrations) are.
    pub(crate) packages_dir: PathBuf,
    pub(crate) plugins: Vec<SourcePlugin>,
}

/// An installed plugin of the SQLite install being moved.
pub(crate) struct SourcePlugin {
    pub(crate) record: PluginRecord,
    /// Whether its package supports the target backend.
    pub(crate) supported: bool,
    /// Its SQLite file (the shared store, or its own).
    pub(crate) file: PathBuf,
}

impl SourcePlugin {
    pub(crate) fn id(&self) -> &str {
        &self.record.id
    }

    pub(crate) fn mode(&self) -> DatabaseMode {
        self.record.manifest.database
    }

    /// The plugin's SQLite tables in `file` (the shared store, or its own file).
    pub(crate) fn sqlite_tables(&self, file: &Connection) -> Result<Vec<String>, PlatformError> {
        let prefix = format!("{}__", self.id());
        Ok(table_copy::sqlite_tables(file)?
            .into_iter()
            .filter(|t| match self.mode() {
                DatabaseMode::Shared => t.starts_with(&prefix),
                DatabaseMode::Isolated => !t.starts_with("_sv_"),
            })
            .collect())
    }
}

/// A moved plugin and its role's new password.
type Login<'s> = (&'s SourcePlugin, String);

pub(crate) fn open_read_only(path: &std::path::Path) -> Result<Connection, PlatformError> {
    Ok(sovereign_db::open_database(
        path,
        &sovereign_db::OpenOptions::plugins().existing().read_only(),
    )?)
}

/// The SQLite install of `app`, read-only, with which plugins support `backend`.
pub(crate) fn open_source(app: &App, backend: Backend) -> Result<SourceInstall, PlatformError> {
    let CoreLocation::File(core_path) = app.core_location() else {
        return Err(MoveError::NotOnSqlite {
            what: "the core store (DATABASE_URL)",
        }
        .into());
    };
    let PluginStore::Sqlite(location) = app.plugin_store() else {
        return Err(MoveError::NotOnSqlite {
            what: "the plugin store (PLUGIN_DATABASE_URL)",
        }
        .into());
    };
    if !core_path.exists() {
        return Err(PlatformError::CoreMissing { path: core_path });
    }
    let core = sovereign_db_core::open_existing_read_only(&core_path)?;
    let status = sovereign_db_core::migrations().status(&core)?;
    if status
        .iter()
        .any(|s| !matches!(s.state, sovereign_db::MigrationState::Applied { .. }))
    {
        return Err(PlatformError::CoreNotMigrated {
            store: core_path.display().to_string(),
        });
    }
    let core = CoreConn::Sqlite(core);
    let mut plugins = Vec::new();
    for record in sovereign_db_core::plugins::list(&core)? {
        let migrations = app.package_dir(&record.id).join("migrations");
        let supported = record.manifest.backends.contains(&backend)
            && backend
                .migrations_subdir()
                .is_none_or(|subdir| migrations.join(subdir).is_dir());
        let file = location.file_for(&record.id, record.manifest.database);
        plugins.push(SourcePlugin {
            record,
            supported,
            file,
        });
    }
    Ok(SourceInstall {
        core_path,
        core,
        shared: open_read_only(&location.shared_store)?,
        packages_dir: app.config().plugins_dir_path(),
        plugins,
    })
}

/// What the target holds.
fn target_state(
    core: &mut postgres::Client,
    plugins: &mut postgres::Client,
    target: &MoveTarget,
) -> Result<TargetState, PlatformError> {
    let query = |client: &mut postgres::Client, sql: &str| -> Result<bool, PlatformError> {
        Ok(client
            .query_one(sql, &[])
            .map_err(|source| PgError::Statement {
                statement: sql.to_owned(),
                source,
            })?
            .get(0))
    };
    let core_tables = query(
        core,
        "SELECT count(*) > 0 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v')",
    )?;
    let plugin_side = query(
        plugins,
        "SELECT to_regclass('public._sv_migrations') IS NOT NULL
             OR EXISTS (SELECT FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
                        WHERE r.rolname = 'svp_' || n.nspname)",
    )? || !sovereign_postgres::isolated::databases(plugins, &target.plugins)?
        .is_empty();
    if !core_tables {
        return Ok(if plugin_side {
            TargetState::PluginSideOnly
        } else {
            TargetState::Empty
        });
    }
    let marker = "SELECT value FROM _sv_sync_state WHERE key = $1";
    let moved: Option<String> = if query(
        core,
        "SELECT to_regclass('public._sv_sync_state') IS NOT NULL",
    )? {
        core.query_opt(marker, &[&MOVED_FROM])
            .map_err(|source| PgError::Statement {
                statement: marker.to_owned(),
                source,
            })?
            .map(|row| row.get(0))
    } else {
        None
    };
    Ok(match moved {
        Some(from) => TargetState::Moved(from),
        None => TargetState::Foreign(format!(
            "the core database {} has tables",
            target.describe_core()
        )),
    })
}

/// What a move would do: the tables and rows it copies, what happens to each plugin, and
/// the target's state. Reads the SQLite files only.
pub fn plan(app: &App, target: &MoveTarget) -> Result<MovePlan, PlatformError> {
    let source = open_source(app, Backend::Postgres)?;
    let mut tables = Vec::new();
    for table in table_copy::sqlite_tables(source.core.sqlite("planning a move")?)? {
        if CORE_TABLES_NOT_COPIED.contains(&table.as_str()) {
            continue;
        }
        let rows = table_copy::sqlite_rows(source.core.sqlite("planning a move")?, &table)?;
        tables.push(PlannedTable {
            store: "core".into(),
            table,
            rows,
        });
    }
    tables.push(PlannedTable {
        store: "plugins".into(),
        table: "_sv_event_outbox".into(),
        rows: table_copy::sqlite_rows(&source.shared, "_sv_event_outbox")?,
    });
    let mut plugins = Vec::new();
    for plugin in &source.plugins {
        let action = if plugin.supported {
            let conn = match plugin.mode() {
                DatabaseMode::Shared => None,
                DatabaseMode::Isolated => Some(open_read_only(&plugin.file)?),
            };
            let file = conn.as_ref().unwrap_or(&source.shared);
            for table in plugin.sqlite_tables(file)? {
                tables.push(PlannedTable {
                    store: format!("plugin {}", plugin.id()),
                    rows: table_copy::sqlite_rows(file, &table)?,
                    table,
                });
            }
            if plugin.mode() == DatabaseMode::Isolated {
                tables.push(PlannedTable {
                    store: format!("plugin {}", plugin.id()),
                    table: "_sv_event_outbox".into(),
                    rows: table_copy::sqlite_rows(file, "_sv_event_outbox")?,
                });
            }
            match plugin.mode() {
                DatabaseMode::Shared => format!(
                    "schema {} of {} (role svp_{})",
                    plugin.id(),
                    target.describe_plugins(),
                    plugin.id()
                ),
                DatabaseMode::Isolated => format!(
                    "database {}_{} on {} (role svp_{})",
                    target.plugins.database,
                    plugin.id(),
                    target.plugins.server,
                    plugin.id()
                ),
            }
        } else {
            format!(
                "not supported on PostgreSQL: refused, or with --disable-unsupported registered \
                 disabled, its data staying in {}",
                plugin.file.display()
            )
        };
        plugins.push(PlannedPlugin {
            id: plugin.id().to_owned(),
            mode: plugin.mode(),
            supported: plugin.supported,
            action,
        });
    }
    let mut core = MoveTarget::connect(&target.core, "the core database")?;
    let mut owner = MoveTarget::connect(&target.plugins, "the plugin database")?;
    Ok(MovePlan {
        source_core: source.core_path,
        tables,
        plugins,
        target: target_state(&mut core, &mut owner, target)?,
    })
}

/// Moves the stopped SQLite install of `app` into `target` (see the module's
/// documentation), telling `progress` about the rows as they go.
pub fn run(
    app: &App,
    target: &MoveTarget,
    options: MoveOptions,
    progress: &mut dyn FnMut(MoveProgress<'_>),
) -> Result<MoveReport, PlatformError> {
    let started = Instant::now();
    // Nobody starts the platform on these files while they are read.
    let _lock = crate::run::lock(app)?;
    let source = open_source(app, Backend::Postgres)?;
    let unsupported: Vec<String> = source
        .plugins
        .iter()
        .filter(|p| !p.supported)
        .map(|p| p.id().to_owned())
        .collect();
    if !unsupported.is_empty() && !options.disable_unsupported {
        return Err(MoveError::UnsupportedPlugins { ids: unsupported }.into());
    }
    let mut core = MoveTarget::connect(&target.core, "the core database")?;
    let mut owner = MoveTarget::connect(&target.plugins, "the plugin database")?;
    let has_role_plan: bool = owner
        .query_one(
            "SELECT to_regprocedure('sv_admin.create_plugin_role(text, text, integer, integer)') IS NOT NULL",
            &[],
        )
        .map_err(|source| PgError::Statement {
            statement: "SELECT to_regprocedure(...)".into(),
            source,
        })?
        .get(0);
    if !has_role_plan {
        return Err(MoveError::NoRolePlan.into());
    }
    let state = target_state(&mut core, &mut owner, target)?;
    let source_name = source.core_path.display().to_string();
    let resumed = match (&state, options.resume) {
        (TargetState::Empty, _) => false,
        (TargetState::PluginSideOnly, true) => {
            tracing::info!("clearing the plugin side an interrupted move left");
            clear_plugin_side(&mut owner, target, &source)?;
            false
        }
        (TargetState::Moved(from), true) if *from == source_name => true,
        (TargetState::Moved(from), true) => {
            return Err(MoveError::NotResumable {
                what: format!("the target holds an install moved from {from}, not {source_name}"),
            }
            .into());
        }
        (TargetState::Foreign(what), true) => {
            return Err(MoveError::NotResumable { what: what.clone() }.into());
        }
        (TargetState::PluginSideOnly, false) => {
            return Err(MoveError::TargetNotEmpty {
                what: format!(
                    "the plugin database {} holds plugin schemas or bookkeeping, and the core \
                     database is empty",
                    target.describe_plugins()
                ),
            }
            .into());
        }
        (TargetState::Moved(from), false) => {
            return Err(MoveError::TargetNotEmpty {
                what: format!("it holds an install moved from {from}"),
            }
            .into());
        }
        (TargetState::Foreign(what), false) => {
            return Err(MoveError::TargetNotEmpty { what: what.clone() }.into());
        }
    };
    let mut logins = Vec::new();
    let tables = if resumed {
        let mut tables = check_core(&source, &mut core.transaction().map_err(begin)?)?;
        let (plugin_tables, found) = check_plugin_side(&source, &mut owner, target)?;
        tables.extend(plugin_tables);
        logins = found;
        tables
    } else {
        copy_all(
            &source,
            &mut core,
            &mut owner,
            target,
            &source_name,
            &mut logins,
            progress,
        )?
    };
    let copy_seconds = started.elapsed().as_secs_f64();
    let mut finish = || -> Result<(u64, u64), PlatformError> {
        let after = target.app_after(app)?;
        let rebuilt = crate::sync::run(&after, true, &|_, _| {})?;
        let mirror_rows = rebuilt
            .rebuild
            .map(|r| r.report.rows.iter().map(|(_, n)| n).sum())
            .unwrap_or(0);
        for (plugin, password) in &logins {
            if plugin.record.grants.is_empty() {
                continue;
            }
            let role = crate::plugins::serving_role(
                &plugin.record.manifest,
                password,
                &plugin.record.grants,
            );
            owner
                .batch_execute(&role.grant_sql())
                .map_err(|source| PgError::Statement {
                    statement: role.grant_sql(),
                    source,
                })?;
        }
        // Kernels on other machines run the moved plugins from the core's copies.
        for (plugin, _) in &logins {
            crate::packages::store(&after, plugin.id())?;
        }
        let reconciled = crate::sync::reconcile(&after, false, &|_, _| {})?;
        if !reconciled.differences.is_empty() {
            return Err(MoveError::MirrorDiffers {
                differences: reconciled.differences.len(),
            }
            .into());
        }
        Ok((mirror_rows, reconciled.chunks))
    };
    let (mirror_rows, reconciled_chunks) = finish().map_err(|e| MoveError::Unfinished {
        step: "rebuilding and reconciling the mirror".into(),
        source: Box::new(e),
    })?;
    Ok(MoveReport {
        tables,
        resumed,
        copy_seconds,
        seconds: started.elapsed().as_secs_f64(),
        mirror_rows,
        reconciled_chunks,
        disabled: source
            .plugins
            .iter()
            .filter(|p| !p.supported)
            .map(|p| p.id().to_owned())
            .collect(),
    })
}

fn begin(source: postgres::Error) -> PlatformError {
    PgError::Statement {
        statement: "BEGIN".into(),
        source,
    }
    .into()
}

fn statement(sql: &str) -> impl FnOnce(postgres::Error) -> PlatformError + '_ {
    move |source| {
        PgError::Statement {
            statement: sql.to_owned(),
            source,
        }
        .into()
    }
}

/// Steps 1 to 4 of the module's documentation.
fn copy_all<'s>(
    source: &'s SourceInstall,
    core: &mut postgres::Client,
    owner: &mut postgres::Client,
    target: &MoveTarget,
    source_name: &str,
    logins: &mut Vec<Login<'s>>,
    progress: &mut dyn FnMut(MoveProgress<'_>),
) -> Result<Vec<CopiedTable>, PlatformError> {
    let mut core_tx = core.transaction().map_err(begin)?;
    let mut copied = Vec::new();
    let core_step = (|| -> Result<(), PlatformError> {
        sovereign_postgres::migrate::deploy_in_transaction(
            &mut core_tx,
            &sovereign_db_core::postgres_migrations(),
        )?;
        copied.extend(copy_core(source, &mut core_tx, progress)?);
        let mark = "INSERT INTO _sv_sync_state (key, value) VALUES ($1, $2)";
        core_tx
            .execute(mark, &[&MOVED_FROM, &source_name])
            .map_err(statement(mark))?;
        Ok(())
    })();
    if let Err(e) = core_step {
        return Err(MoveError::Failed {
            step: "copying the core".into(),
            undo: "the core's transaction rolled back".into(),
            source: Box::new(e),
        }
        .into());
    }
    for plugin in source.plugins.iter().filter(|p| p.supported) {
        logins.push((plugin, crate::plugins::generate_password()));
    }
    let plugin_step = (|| -> Result<(), PlatformError> {
        copied.extend(copy_plugin_database(source, owner, logins, progress)?);
        for (plugin, _) in logins
            .iter()
            .filter(|(p, _)| p.mode() == DatabaseMode::Isolated)
        {
            copied.extend(copy_isolated(
                plugin,
                &source.packages_dir,
                owner,
                target,
                progress,
            )?);
        }
        // The core records each role's password and disables what stays behind.
        for (plugin, password) in logins.iter() {
            let insert = "INSERT INTO plugin_store_logins (plugin_id, password) VALUES ($1, $2)";
            core_tx
                .execute(insert, &[&plugin.id(), password])
                .map_err(statement(insert))?;
        }
        for plugin in source.plugins.iter().filter(|p| !p.supported) {
            let disable = "UPDATE plugins SET enabled = 0 WHERE id = $1";
            core_tx
                .execute(disable, &[&plugin.id()])
                .map_err(statement(disable))?;
        }
        core_tx.commit().map_err(statement("COMMIT"))?;
        Ok(())
    })();
    if let Err(e) = plugin_step {
        let undo = match clear_plugin_side(owner, target, source) {
            Ok(()) => "the core's transaction rolled back, the plugin side was removed".into(),
            Err(undo) => format!(
                "the core's transaction rolled back, but removing the plugin side failed ({undo}): \
                 run the move again with --resume"
            ),
        };
        return Err(MoveError::Failed {
            step: "copying the plugins".into(),
            undo,
            source: Box::new(e),
        }
        .into());
    }
    Ok(copied)
}

/// Copies the core tables in foreign-key order inside `tx`, each checked.
fn copy_core(
    source: &SourceInstall,
    tx: &mut postgres::Transaction<'_>,
    progress: &mut dyn FnMut(MoveProgress<'_>),
) -> Result<Vec<CopiedTable>, PlatformError> {
    let plans = core_plans(source, tx)?;
    // Rows the migrations seeded (the default tenant) come from SQLite like the rest.
    for plan in plans.iter().rev() {
        let clear = format!("DELETE FROM {}", plan.target);
        tx.batch_execute(&clear).map_err(statement(&clear))?;
    }
    copy_checked(
        "core",
        &plans,
        source.core.sqlite("moving the core")?,
        tx,
        progress,
    )
}

fn core_plans(
    source: &SourceInstall,
    tx: &mut postgres::Transaction<'_>,
) -> Result<Vec<TableCopy>, PlatformError> {
    let sqlite = source.core.sqlite("moving the core")?;
    let on_postgres = table_copy::postgres_tables(tx, "public")?;
    for table in table_copy::sqlite_tables(sqlite)? {
        if !CORE_TABLES_NOT_COPIED.contains(&table.as_str()) && !on_postgres.contains(&table) {
            return Err(MoveError::CoreTableNotOnPostgres { table }.into());
        }
    }
    let tables: Vec<String> = table_copy::foreign_key_order(tx, "public", on_postgres)?
        .into_iter()
        .filter(|t| !CORE_TABLES_NOT_COPIED.contains(&t.as_str()))
        .collect();
    tables
        .iter()
        .map(|t| Ok(TableCopy::plan(tx, "public", t, sqlite, t)?))
        .collect()
}

/// Copies each planned table and compares both sides' digests.
fn copy_checked(
    store: &str,
    plans: &[TableCopy],
    sqlite: &Connection,
    tx: &mut postgres::Transaction<'_>,
    progress: &mut dyn FnMut(MoveProgress<'_>),
) -> Result<Vec<CopiedTable>, PlatformError> {
    let mut out = Vec::new();
    for plan in plans {
        let label = format!("{store} {}", plan.source);
        let source_digest = plan.copy(sqlite, tx, &mut |rows| {
            progress(MoveProgress {
                table: &label,
                rows,
            })
        })?;
        plan.set_sequences(tx)?;
        let target_digest = plan.target_digest(tx)?;
        if source_digest != target_digest {
            return Err(MoveError::Mismatch {
                table: label,
                source_digest,
                target_digest,
            }
            .into());
        }
        out.push(CopiedTable {
            store: store.to_owned(),
            table: plan.source.clone(),
            digest: source_digest,
        });
    }
    Ok(out)
}

/// Compares planned tables' digests without copying (a resumed move).
fn check_tables(
    store: &str,
    plans: &[TableCopy],
    sqlite: &Connection,
    client: &mut impl postgres::GenericClient,
) -> Result<Vec<CopiedTable>, PlatformError> {
    let mut out = Vec::new();
    for plan in plans {
        let source_digest = plan.source_digest(sqlite)?;
        let target_digest = plan.target_digest(client)?;
        if source_digest != target_digest {
            return Err(MoveError::NotResumable {
                what: format!(
                    "{store} {}: the SQLite side has {source_digest}, PostgreSQL \
                     {target_digest} (the target changed since the move)",
                    plan.source
                ),
            }
            .into());
        }
        out.push(CopiedTable {
            store: store.to_owned(),
            table: plan.source.clone(),
            digest: source_digest,
        });
    }
    Ok(out)
}

fn check_core(
    source: &SourceInstall,
    tx: &mut postgres::Transaction<'_>,
) -> Result<Vec<CopiedTable>, PlatformError> {
    // The move writes these after their check: the roles' passwords, and `enabled` of
    // the plugins it disabled.
    let disabled = source.plugins.iter().any(|p| !p.supported);
    let plans: Vec<TableCopy> = core_plans(source, tx)?
        .into_iter()
        .filter(|p| p.source != "plugin_store_logins" && !(disabled && p.source == "plugins"))
        .collect();
    check_tables("core", &plans, source.core.sqlite("checking the core")?, tx)
}

/// The plugin side of a resumed move: every plugin's tables checked; the passwords the
/// moved core holds.
fn check_plugin_side<'s>(
    source: &'s SourceInstall,
    owner: &mut postgres::Client,
    target: &MoveTarget,
) -> Result<(Vec<CopiedTable>, Vec<Login<'s>>), PlatformError> {
    let mut tx = owner.transaction().map_err(begin)?;
    let outbox = TableCopy::plan(
        &mut tx,
        "public",
        "_sv_event_outbox",
        &source.shared,
        "_sv_event_outbox",
    )?;
    let mut out = check_tables("plugins", &[outbox], &source.shared, &mut tx)?;
    let mut logins = Vec::new();
    let moved_core = target.core.clone();
    let mut core = MoveTarget::connect(&moved_core, "the core database")?;
    for plugin in source.plugins.iter().filter(|p| p.supported) {
        let query = "SELECT password FROM plugin_store_logins WHERE plugin_id = $1";
        let password: String = core
            .query_opt(query, &[&plugin.id()])
            .map_err(statement(query))?
            .map(|row| row.get(0))
            .ok_or_else(|| MoveError::NotResumable {
                what: format!(
                    "the moved core has no role password for plugin {}",
                    plugin.id()
                ),
            })?;
        let store = format!("plugin {}", plugin.id());
        // The plugin's tables are read as its role (the store's owner may not use its schema).
        let check = |file: &Connection,
                     tx: &mut postgres::Transaction<'_>|
         -> Result<Vec<CopiedTable>, PlatformError> {
            become_plugin(plugin, tx)?;
            let plans = plugin_plans(plugin, file, tx)?;
            let checked = check_tables(&store, &plans, file, tx)?;
            become_owner(tx)?;
            Ok(checked)
        };
        match plugin.mode() {
            DatabaseMode::Shared => out.extend(check(&source.shared, &mut tx)?),
            DatabaseMode::Isolated => {
                let file = open_read_only(&plugin.file)?;
                let database =
                    sovereign_postgres::isolated::database_name(&target.plugins, plugin.id())?;
                let mut client =
                    sovereign_postgres::isolated::connect_owner_to(&target.plugins, &database)?;
                let mut itx = client.transaction().map_err(begin)?;
                let outbox = TableCopy::plan(
                    &mut itx,
                    "public",
                    "_sv_event_outbox",
                    &file,
                    "_sv_event_outbox",
                )?;
                out.extend(check_tables(&store, &[outbox], &file, &mut itx)?);
                out.extend(check(&file, &mut itx)?);
            }
        }
        logins.push((plugin, password));
    }
    Ok((out, logins))
}

/// The plugin database in one transaction: bookkeeping, pending events, and every
/// shared plugin's role, migrations and tables (isolated plugins get their role here).
fn copy_plugin_database(
    source: &SourceInstall,
    owner: &mut postgres::Client,
    logins: &[Login<'_>],
    progress: &mut dyn FnMut(MoveProgress<'_>),
) -> Result<Vec<CopiedTable>, PlatformError> {
    let mut tx = owner.transaction().map_err(begin)?;
    sovereign_postgres::migrate::deploy_in_transaction(
        &mut tx,
        &sovereign_postgres::migrate::plugin_store_system(),
    )?;
    let outbox = TableCopy::plan(
        &mut tx,
        "public",
        "_sv_event_outbox",
        &source.shared,
        "_sv_event_outbox",
    )?;
    let mut copied = copy_checked("plugins", &[outbox], &source.shared, &mut tx, progress)?;
    for (plugin, password) in logins {
        let role = crate::plugins::serving_role(&plugin.record.manifest, password, &[]);
        tx.batch_execute(&role.create_sql())
            .map_err(statement("SELECT sv_admin.create_plugin_role(...)"))?;
        if plugin.mode() == DatabaseMode::Isolated {
            continue;
        }
        copied.extend(migrate_and_copy(
            plugin,
            &source.packages_dir,
            &source.shared,
            &mut tx,
            progress,
        )?);
    }
    tx.commit().map_err(statement("COMMIT"))?;
    Ok(copied)
}

/// As the plugin's role in `tx`: its PostgreSQL migrations, then its tables copied.
fn migrate_and_copy(
    plugin: &SourcePlugin,
    packages_dir: &std::path::Path,
    file: &Connection,
    tx: &mut postgres::Transaction<'_>,
    progress: &mut dyn FnMut(MoveProgress<'_>),
) -> Result<Vec<CopiedTable>, PlatformError> {
    let id = plugin.id();
    become_plugin(plugin, tx)?;
    let set = sovereign_db_plugins::plugin_migrations_for(packages_dir, id, Backend::Postgres)?;
    sovereign_postgres::migrate::deploy_in_transaction(tx, &set)?;
    let plans = plugin_plans(plugin, file, tx)?;
    let copied = copy_checked(&format!("plugin {id}"), &plans, file, tx, progress)?;
    become_owner(tx)?;
    Ok(copied)
}

/// Acts as the plugin's role in its schema until [`become_owner`] (or the transaction's end).
fn become_plugin(
    plugin: &SourcePlugin,
    tx: &mut postgres::Transaction<'_>,
) -> Result<(), PlatformError> {
    let id = plugin.id();
    let role = sovereign_postgres::plugin_role_name(id);
    let become_role = format!("SET LOCAL ROLE {role}; SET LOCAL search_path TO \"{id}\"");
    tx.batch_execute(&become_role)
        .map_err(statement(&become_role))
}

/// Back to the store's owner after [`become_plugin`].
fn become_owner(tx: &mut postgres::Transaction<'_>) -> Result<(), PlatformError> {
    let back = "RESET ROLE; SET LOCAL search_path TO DEFAULT";
    tx.batch_execute(back).map_err(statement(back))
}

/// The plugin's tables on PostgreSQL (after its migrations) matched to its SQLite
/// tables; a SQLite table without a counterpart is refused.
fn plugin_plans(
    plugin: &SourcePlugin,
    file: &Connection,
    tx: &mut postgres::Transaction<'_>,
) -> Result<Vec<TableCopy>, PlatformError> {
    let id = plugin.id();
    let on_postgres: Vec<String> = table_copy::postgres_tables(tx, id)?
        .into_iter()
        .filter(|t| t != "_sv_migrations")
        .collect();
    for table in plugin.sqlite_tables(file)? {
        if !on_postgres.contains(&table) {
            return Err(MoveError::TableNotOnPostgres {
                id: id.to_owned(),
                table,
            }
            .into());
        }
    }
    table_copy::foreign_key_order(tx, id, on_postgres)?
        .iter()
        .map(|t| Ok(TableCopy::plan(tx, id, t, file, t)?))
        .collect()
}

/// An isolated plugin: its own database made, then its migrations, tables and pending
/// events in one transaction there.
fn copy_isolated(
    plugin: &SourcePlugin,
    packages_dir: &std::path::Path,
    owner: &mut postgres::Client,
    target: &MoveTarget,
    progress: &mut dyn FnMut(MoveProgress<'_>),
) -> Result<Vec<CopiedTable>, PlatformError> {
    let id = plugin.id();
    sovereign_postgres::isolated::provision(owner, &target.plugins, id)?;
    let database = sovereign_postgres::isolated::database_name(&target.plugins, id)?;
    let mut client = sovereign_postgres::isolated::connect_owner_to(&target.plugins, &database)?;
    let file = open_read_only(&plugin.file)?;
    let mut tx = client.transaction().map_err(begin)?;
    let outbox = TableCopy::plan(
        &mut tx,
        "public",
        "_sv_event_outbox",
        &file,
        "_sv_event_outbox",
    )?;
    let mut copied = copy_checked(&format!("plugin {id}"), &[outbox], &file, &mut tx, progress)?;
    copied.extend(migrate_and_copy(
        plugin,
        packages_dir,
        &file,
        &mut tx,
        progress,
    )?);
    tx.commit().map_err(statement("COMMIT"))?;
    Ok(copied)
}

/// Removes what a failed or killed move made on the plugin side: the plugins' roles,
/// schemas and own databases, and the plugin database's bookkeeping and mirror schemas
/// (made empty again as `sv postgres:roles` left them).
fn clear_plugin_side(
    owner: &mut postgres::Client,
    target: &MoveTarget,
    source: &SourceInstall,
) -> Result<(), PlatformError> {
    for plugin in &source.plugins {
        sovereign_postgres::isolated::drop_database(owner, &target.plugins, plugin.id())?;
        let drop = PluginRole::drop_sql(plugin.id());
        owner.batch_execute(&drop).map_err(statement(&drop))?;
    }
    let reset = "BEGIN;
                 DROP SCHEMA IF EXISTS core CASCADE;
                 CREATE SCHEMA core;
                 REVOKE ALL ON SCHEMA core FROM PUBLIC;
                 DROP SCHEMA IF EXISTS public CASCADE;
                 CREATE SCHEMA public;
                 REVOKE ALL ON SCHEMA public FROM PUBLIC;
                 COMMIT;";
    owner.batch_execute(reset).map_err(statement(reset))?;
    Ok(())
}
