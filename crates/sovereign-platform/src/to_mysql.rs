//! `sv migrate:to-mysql`: moves an install whose two stores are SQLite files into two
//! MySQL/MariaDB databases (made by `sv mysql:roles`), with the same check as the move
//! to PostgreSQL: every table's rows and an order-independent checksum equal on both
//! sides (`sovereign_ops::my_table_copy`). The SQLite files are only read.
//!
//! MySQL commits every DDL statement, so the move cannot be one transaction; it is
//! steps, each checked, and a failure at any of them removes everything made of the
//! target (core tables, plugin accounts and databases, mirror tables):
//!
//! 1. the core's MySQL migrations, then every core table in one transaction (foreign
//!    keys checked afterwards by the digests, not while copying), with a new password
//!    for each plugin's account, committed only when every table's digest matches; then
//!    the capture triggers;
//! 2. per plugin: its account and database (`sv_admin.create_plugin_account`), its
//!    `migrations/mysql/` as that account, then its tables and pending events in one
//!    transaction, committed when their digests match;
//! 3. the mirror built from the new core, each plugin's mirror columns granted, and a
//!    reconcile that must find no difference.

use std::time::Instant;

use mysql::prelude::Queryable;
use sovereign_db::rusqlite::Connection;
use sovereign_db_core::{CoreConn, MyCore};
use sovereign_db_plugins::Backend;
use sovereign_mysql::StoreUrl;
use sovereign_ops::my_table_copy::MyTableCopy;
use sovereign_ops::table_copy;

use crate::to_postgres::{
    CORE_TABLES_NOT_COPIED, CopiedTable, MoveError, PlannedTable, SourceInstall, SourcePlugin,
    open_read_only, open_source,
};
use crate::{App, PlatformError};

/// What went wrong with a move to MySQL; nothing of the SQLite install was changed.
#[derive(Debug, thiserror::Error)]
pub enum ToMysqlError {
    /// The target already holds data.
    #[error(
        "the target is not empty: {what}. migrate:to-mysql fills empty databases only; give \
         new databases (sv mysql:roles --apply makes them)"
    )]
    TargetNotEmpty {
        /// What was found.
        what: String,
    },
    /// The plugin store's account cannot call what `sv mysql:roles` makes.
    #[error(
        "the plugin store's account cannot call the sv_admin procedures: apply the account \
         plan first (sv mysql:roles --admin-url URL --apply)"
    )]
    NoAccountPlan,
    /// Plugins whose packages have no MySQL migrations.
    #[error(
        "these plugins do not support MySQL (their packages have no migrations/mysql/ or do \
         not list \"mysql\" in \"backends\"): {}. Upgrade them to versions that do first",
        ids.join(", ")
    )]
    UnsupportedPlugins {
        /// Their ids.
        ids: Vec<String>,
    },
    /// The mirror does not match the moved core after its rebuild.
    #[error("the mirror differs from the moved core in {differences} rows after its rebuild")]
    MirrorDiffers {
        /// Rows that differ.
        differences: usize,
    },
}

/// Where to move to: the two databases, as their accounts log in (`svc_core`,
/// `svc_plugins`).
#[derive(Debug, Clone)]
pub struct MysqlTarget {
    core: StoreUrl,
    core_url: sovereign_db::MysqlUrl,
    plugins: StoreUrl,
}

impl MysqlTarget {
    /// Parses the two URLs (`--core-url`, `--plugins-url`).
    pub fn parse(core_url: &str, plugins_url: &str) -> Result<MysqlTarget, PlatformError> {
        let core = StoreUrl::parse("--core-url", core_url)?;
        let plugins = StoreUrl::parse("--plugins-url", plugins_url)?;
        // The same checks as for the configuration: two databases, two accounts.
        sovereign_mysql::RolePlan::new(Some(core_url), plugins_url)?;
        let sovereign_db::StoreTarget::Mysql(url) =
            sovereign_db::StoreTarget::parse("--core-url", core_url)
                .map_err(sovereign_config::ConfigError::from)?
        else {
            unreachable!("StoreUrl::parse took it as mysql://");
        };
        Ok(MysqlTarget {
            core,
            core_url: url,
            plugins,
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
}

/// What `--dry-run` prints: every table and its rows, every plugin.
#[derive(Debug, Clone)]
pub struct MysqlMovePlan {
    /// Every table copied.
    pub tables: Vec<PlannedTable>,
    /// The plugins moved.
    pub plugins: Vec<String>,
    /// Why the target cannot take the move, if it cannot.
    pub refused: Option<String>,
}

/// What a move did.
#[derive(Debug, Clone)]
pub struct MysqlMoveReport {
    /// Every table, checked on both sides.
    pub tables: Vec<CopiedTable>,
    /// The plugins moved, each with its account and database.
    pub plugins: Vec<String>,
    /// Rows the rebuilt mirror holds, per slice.
    pub mirror_rows: Vec<(String, u64)>,
    /// Seconds the move took.
    pub seconds: f64,
}

impl MysqlMoveReport {
    /// All rows copied.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.digest.rows).sum()
    }
}

fn statement(sql: &str) -> impl FnOnce(mysql::Error) -> PlatformError + '_ {
    move |source| {
        sovereign_mysql::MyError::Statement {
            statement: sql.lines().next().unwrap_or_default().to_owned(),
            source,
        }
        .into()
    }
}

/// The core tables a move copies.
fn core_tables(source: &SourceInstall) -> Result<Vec<String>, PlatformError> {
    Ok(
        table_copy::sqlite_tables(source.core.sqlite("moving to MySQL")?)?
            .into_iter()
            .filter(|t| !CORE_TABLES_NOT_COPIED.contains(&t.as_str()))
            .collect(),
    )
}

/// Why the target cannot take a move, if it cannot.
fn target_refusal(target: &MysqlTarget) -> Result<Option<String>, PlatformError> {
    let count = |conn: &mut mysql::Conn, sql: &str, database: &str| -> Result<i64, PlatformError> {
        Ok(conn
            .exec_first::<i64, _, _>(sql, (database,))
            .map_err(statement(sql))?
            .unwrap_or(0))
    };
    let tables = "SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?";
    let mut core = target.core.connect()?;
    if count(&mut core, tables, &target.core.database)? > 0 {
        return Ok(Some(format!(
            "the core database {} has tables",
            target.describe_core()
        )));
    }
    let mut plugins = target.plugins.connect()?;
    if count(&mut plugins, tables, &target.plugins.database)? > 0 {
        return Ok(Some(format!(
            "the plugin database {} has tables",
            target.describe_plugins()
        )));
    }
    let databases = "SELECT count(*) FROM information_schema.SCHEMATA
                     WHERE SCHEMA_NAME LIKE CONCAT(REPLACE(?, '_', '\\\\_'), '\\\\_%')";
    if count(&mut plugins, databases, &target.plugins.database)? > 0 {
        return Ok(Some(format!(
            "plugin databases {}_* exist on {}",
            target.plugins.database, target.plugins.server
        )));
    }
    let routines = "SELECT count(*) FROM information_schema.ROUTINES
                    WHERE ROUTINE_SCHEMA = ? AND ROUTINE_NAME IN
                          ('create_plugin_account', 'grant_mirror', 'drop_plugin_account')";
    if count(&mut plugins, routines, "sv_admin")? < 3 {
        return Err(ToMysqlError::NoAccountPlan.into());
    }
    Ok(None)
}

/// What a move would do. Reads the SQLite files and looks at the target only.
pub fn plan(app: &App, target: &MysqlTarget) -> Result<MysqlMovePlan, PlatformError> {
    let source = open_source(app, Backend::Mysql)?;
    let mut tables = Vec::new();
    for table in core_tables(&source)? {
        let rows = table_copy::sqlite_rows(source.core.sqlite("planning a move")?, &table)?;
        tables.push(PlannedTable {
            store: "core".into(),
            table,
            rows,
        });
    }
    for plugin in &source.plugins {
        let file = open_read_only(&plugin.file)?;
        for table in plugin.sqlite_tables(&file)? {
            let rows = table_copy::sqlite_rows(&file, &table)?;
            tables.push(PlannedTable {
                store: format!("plugin {}", plugin.id()),
                table,
                rows,
            });
        }
    }
    let unsupported = unsupported(&source);
    let refused = if !unsupported.is_empty() {
        Some(ToMysqlError::UnsupportedPlugins { ids: unsupported }.to_string())
    } else {
        target_refusal(target)?
    };
    Ok(MysqlMovePlan {
        tables,
        plugins: source.plugins.iter().map(|p| p.id().to_owned()).collect(),
        refused,
    })
}

fn unsupported(source: &SourceInstall) -> Vec<String> {
    source
        .plugins
        .iter()
        .filter(|p| !p.supported)
        .map(|p| p.id().to_owned())
        .collect()
}

/// Moves the install (see the module documentation); `progress` hears of each table
/// as it is copied.
pub fn run(
    app: &App,
    target: &MysqlTarget,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<MysqlMoveReport, PlatformError> {
    let started = Instant::now();
    // Nothing may change the SQLite files while they are copied.
    let _lock = crate::run::lock(app)?;
    let source = open_source(app, Backend::Mysql)?;
    let unsupported = unsupported(&source);
    if !unsupported.is_empty() {
        return Err(ToMysqlError::UnsupportedPlugins { ids: unsupported }.into());
    }
    if let Some(what) = target_refusal(target)? {
        return Err(ToMysqlError::TargetNotEmpty { what }.into());
    }
    let mut made = Vec::new();
    let mut step = "copying the core";
    let moved = (|| -> Result<MysqlMoveReport, PlatformError> {
        let mut tables = Vec::new();
        let logins = copy_core(&source, target, app.mirror_catalog(), &mut tables, progress)?;
        step = "copying the plugins";
        for (plugin, password) in &logins {
            made.push(plugin.id().to_owned());
            copy_plugin(&source, target, plugin, password, &mut tables, progress)?;
        }
        step = "building the mirror";
        let mirror_rows = build_mirror(app, target, &source)?;
        Ok(MysqlMoveReport {
            tables,
            plugins: made.clone(),
            mirror_rows,
            seconds: started.elapsed().as_secs_f64(),
        })
    })();
    moved.map_err(|e| {
        let undo = match clear_target(target, &made) {
            Ok(()) => "both databases are empty and no plugin account is left".to_owned(),
            Err(undo) => format!("emptying them failed too, do it by hand: {undo}"),
        };
        MoveError::Failed {
            step: step.to_owned(),
            undo,
            source: Box::new(e),
        }
        .into()
    })
}

/// Copies `copy` in `tx`, checks both sides' digests and records the table.
fn copy_checked(
    tx: &mut mysql::Transaction<'_>,
    copy: &MyTableCopy,
    file: &Connection,
    store: &str,
    tables: &mut Vec<CopiedTable>,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<(), PlatformError> {
    let source_digest = copy.copy(tx, file)?;
    let target_digest = copy.target_digest(tx)?;
    if source_digest != target_digest {
        return Err(MoveError::Mismatch {
            table: copy.shown.clone(),
            source_digest,
            target_digest,
        }
        .into());
    }
    progress(&copy.shown, source_digest.rows);
    tables.push(CopiedTable {
        store: store.to_owned(),
        table: copy.source.clone(),
        digest: source_digest,
    });
    Ok(())
}

/// The core: migrations, every table and the plugins' new passwords in one transaction,
/// then capture. Returns each plugin with its account's password.
fn copy_core<'s>(
    source: &'s SourceInstall,
    target: &MysqlTarget,
    catalog: &sovereign_db_plugins::mirror::MirrorCatalog,
    tables: &mut Vec<CopiedTable>,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<Vec<(&'s SourcePlugin, String)>, PlatformError> {
    let url = &target.core_url;
    let mut core = MyCore::connect_unchecked(url)?;
    sovereign_mysql::migrate::deploy(core.conn_mut(), &sovereign_db_core::mysql_migrations())?;
    let sqlite_core = source.core.sqlite("moving to MySQL")?;
    let logins: Vec<(&SourcePlugin, String)> = source
        .plugins
        .iter()
        .map(|p| (p, crate::plugins::generate_password()))
        .collect();
    let conn = core.conn_mut();
    let off = "SET SESSION foreign_key_checks = 0";
    conn.query_drop(off).map_err(statement(off))?;
    let mut tx = conn
        .start_transaction(mysql::TxOpts::default())
        .map_err(statement("START TRANSACTION"))?;
    for table in core_tables(source)? {
        // What the migrations seeded (the default tenant) comes from the source too.
        let seeded = format!("DELETE FROM `{}`", table.replace('`', "``"));
        tx.query_drop(&seeded).map_err(statement(&seeded))?;
        let copy = MyTableCopy::plan(
            &mut tx,
            &target.core.database,
            &table,
            sqlite_core,
            &table,
            None,
        )?;
        copy_checked(&mut tx, &copy, sqlite_core, "core", tables, progress)?;
    }
    let record = "INSERT INTO plugin_store_logins (plugin_id, password) VALUES (?, ?)
                  ON DUPLICATE KEY UPDATE password = VALUES(password)";
    for (plugin, password) in &logins {
        tx.exec_drop(record, (plugin.id(), password))
            .map_err(statement(record))?;
    }
    tx.commit().map_err(statement("COMMIT"))?;
    let on = "SET SESSION foreign_key_checks = 1";
    core.conn_mut().query_drop(on).map_err(statement(on))?;
    let core = MyCore::connect(url)?;
    sovereign_sync::capture::install(&core, catalog)?;
    Ok(logins)
}

/// One plugin: its account and database, its MySQL migrations as that account, then its
/// tables and pending events in one transaction.
fn copy_plugin(
    source: &SourceInstall,
    target: &MysqlTarget,
    plugin: &SourcePlugin,
    password: &str,
    tables: &mut Vec<CopiedTable>,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<(), PlatformError> {
    let id = plugin.id();
    let mut owner = target.plugins.connect()?;
    let create = "CALL sv_admin.create_plugin_account(?, ?, ?)";
    owner
        .exec_drop(
            create,
            (id, password, crate::plugins::serving_connection_limit()),
        )
        .map_err(statement(create))?;
    let set = sovereign_db::MigrationSet::from_dir(
        &sovereign_db_plugins::migration_scope(id),
        &source
            .packages_dir
            .join(id)
            .join("migrations")
            .join("mysql"),
    )?;
    let database = format!("{}_{id}", target.plugins.database);
    sovereign_mysql::MyPluginDb::open(&sovereign_mysql::MyPluginConfig {
        plugin_id: id.to_owned(),
        url: target.plugins.login_as(
            &sovereign_mysql::plugin_account_name(id),
            password,
            &database,
        ),
        limits: plugin.record.manifest.limits,
    })?
    .migrate(&set)?;
    let file = open_read_only(&plugin.file)?;
    let store = format!("plugin {id}");
    let mut tx = owner
        .start_transaction(mysql::TxOpts::default())
        .map_err(statement("START TRANSACTION"))?;
    for table in plugin.sqlite_tables(&file)? {
        let copy = MyTableCopy::plan(&mut tx, &database, &table, &file, &table, None)?;
        copy_checked(&mut tx, &copy, &file, &store, tables, progress)?;
    }
    // Its events not relayed yet (an id is letters, digits and `_`: safe in the text).
    if table_copy::sqlite_tables(&file)?
        .iter()
        .any(|t| t == "_sv_event_outbox")
    {
        let events = MyTableCopy::plan(
            &mut tx,
            &database,
            "_sv_event_outbox",
            &file,
            "_sv_event_outbox",
            Some(format!("plugin = '{id}' AND delivered_at_ms IS NULL")),
        )?;
        copy_checked(&mut tx, &events, &file, &store, tables, progress)?;
    }
    tx.commit().map_err(statement("COMMIT"))?;
    Ok(())
}

/// The mirror from the moved core, each plugin's mirror columns granted, then a
/// reconcile that must find nothing. Returns the rows per slice.
fn build_mirror(
    app: &App,
    target: &MysqlTarget,
    source: &SourceInstall,
) -> Result<Vec<(String, u64)>, PlatformError> {
    let catalog = app.mirror_catalog();
    let core = CoreConn::Mysql(Box::new(MyCore::connect(&target.core_url)?));
    let owner_url = target.plugins.login_as(
        &target.plugins.account,
        &target.plugins.password,
        &target.plugins.database,
    );
    let mirror = sovereign_sync::Mirror::Mysql(std::cell::RefCell::new(
        sovereign_mysql::mirror::MyMirror::connect(&owner_url)?,
    ));
    let built = sovereign_sync::full::full_resync(&core, &mirror, catalog, &|_, _| {})?;
    let mut owner = target.plugins.connect()?;
    for plugin in &source.plugins {
        crate::plugins::grant_mirrors_mysql(&mut owner, plugin.id(), &plugin.record.grants)?;
    }
    let sovereign_sync::Mirror::Mysql(my) = &mirror else {
        unreachable!("made above")
    };
    let report = sovereign_sync::reconcile::reconcile_server_mirror(
        &core,
        &mut *my.borrow_mut(),
        catalog,
        false,
        &|_, _| {},
    )?;
    if !report.differences.is_empty() {
        return Err(ToMysqlError::MirrorDiffers {
            differences: report.differences.len(),
        }
        .into());
    }
    Ok(built.rows)
}

/// Removes what a failed move made: plugin accounts with their databases, and every
/// table of the two databases.
fn clear_target(target: &MysqlTarget, made: &[String]) -> Result<(), PlatformError> {
    let mut owner = target.plugins.connect()?;
    for id in made {
        let drop = "CALL sv_admin.drop_plugin_account(?)";
        owner.exec_drop(drop, (id,)).map_err(statement(drop))?;
    }
    for url in [&target.core, &target.plugins] {
        let mut conn = url.connect()?;
        let query = "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES
                     WHERE TABLE_SCHEMA = ?";
        let objects: Vec<(String, String)> = conn
            .exec(query, (&url.database,))
            .map_err(statement(query))?;
        let off = "SET SESSION foreign_key_checks = 0";
        conn.query_drop(off).map_err(statement(off))?;
        for (name, kind) in objects {
            let what = if kind == "VIEW" { "VIEW" } else { "TABLE" };
            let drop = format!("DROP {what} IF EXISTS `{}`", name.replace('`', "``"));
            conn.query_drop(&drop).map_err(statement(&drop))?;
        }
    }
    Ok(())
}
