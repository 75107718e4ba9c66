//! Backups and restores of an installation whose two stores are MySQL/MariaDB databases.
//!
//! A backup holds `mariadb-dump` SQL files with the same manifest as a backup of files
//! (every file's size and SHA-256, schema versions, the mirror's watermark, the core's
//! acknowledged sequence number), format [`FORMAT_MYSQL`]:
//!
//! - `plugins.sql/store.sql`: the plugin database (bookkeeping and mirrors; `sv_admin`
//!   belongs to the administrator and is not dumped);
//! - `plugins.sql/<id>.sql`: plugin `id`'s database, without its mirror views (their
//!   definer is the administrator: `sv_admin.grant_mirror` makes them again);
//! - `plugins.sql/<id>.routines.sql`: plugin `id`'s stored functions and procedures,
//!   dumped and loaded as its own account (their definer; MySQL shows a routine's body to
//!   its definer only);
//! - `core.sql`: the core database, its capture triggers included.
//!
//! Each dump is one consistent snapshot (`--single-transaction`); the plugin database
//! is dumped before the core, so the mirror's watermark is never ahead of its core.
//!
//! MySQL commits every DDL statement, so a restore cannot be one transaction: it first
//! takes a backup of what is there (the `pre-restore-<time>` directory), then empties
//! and loads the core database, then the plugin databases (accounts made again with the
//! restored core's passwords, mirror columns granted again); if any step fails, what was
//! there is loaded back from that first backup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mysql::prelude::Queryable;
use serde::{Deserialize, Serialize};
use sovereign_mysql::dump::ClientTools;
use sovereign_mysql::{MyError, StoreUrl};

use crate::backup::{BackupFile, BackupOptions, ByteProgress, FORMAT_MYSQL, Manifest};
use crate::restore::RestoreReport;
use crate::{OpsError, file_digest};

/// One `mariadb-dump` of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MysqlDump {
    /// Its file inside the backup.
    pub name: String,
    /// `core`, `plugins` (the plugin database), `plugin:<id>` (one plugin's database) or
    /// `plugin-routines:<id>` (its stored routines).
    pub role: String,
    /// The version of the server it was dumped from.
    pub server_version: String,
}

/// The two MySQL stores of an installation.
#[derive(Debug, Clone)]
pub struct MysqlStores {
    /// The core database, as its account (`svc_core`).
    pub core: StoreUrl,
    /// The plugin database, as its account (`svc_plugins`).
    pub plugins: StoreUrl,
    /// The data directory (where a restore keeps what it replaced).
    pub data_dir: PathBuf,
}

/// A plugin the core has installed, with its account's login: a backup dumps its
/// routines as it; a restore makes the account again with this password and connection
/// limit, and grants it these mirror columns.
#[derive(Debug, Clone)]
pub struct PluginAccount {
    /// Plugin id.
    pub id: String,
    /// Its account's password, as the core keeps it.
    pub password: String,
    /// Its approved mirror columns, `(slice, column)`.
    pub grants: Vec<(String, String)>,
    /// `MAX_USER_CONNECTIONS` of its account.
    pub connection_limit: u32,
}

/// The plugins the core has installed now (during a restore: once the core is
/// restored, the restored core's).
pub type PluginAccounts<'a> = &'a dyn Fn() -> Result<Vec<PluginAccount>, OpsError>;

fn statement(sql: &str) -> impl FnOnce(mysql::Error) -> OpsError + '_ {
    move |source| {
        OpsError::Mysql(MyError::Statement {
            statement: sql.lines().next().unwrap_or_default().to_owned(),
            source,
        })
    }
}

/// `scope -> highest version` from `database`'s `_sv_migrations`, if it has one.
fn schema_versions(
    conn: &mut mysql::Conn,
    database: &str,
) -> Result<BTreeMap<String, u32>, OpsError> {
    if !has_table(conn, database, "_sv_migrations")? {
        return Ok(BTreeMap::new());
    }
    let query =
        format!("SELECT scope, max(version) FROM `{database}`._sv_migrations GROUP BY scope");
    Ok(conn
        .query::<(String, u32), _>(&query)
        .map_err(statement(&query))?
        .into_iter()
        .collect())
}

fn has_table(conn: &mut mysql::Conn, database: &str, table: &str) -> Result<bool, OpsError> {
    let query = "SELECT count(*) FROM information_schema.TABLES
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?";
    Ok(conn
        .exec_first::<i64, _, _>(query, (database, table))
        .map_err(statement(query))?
        .unwrap_or(0)
        > 0)
}

/// An integer a query returns, 0 if it returns nothing or the table is missing.
fn single_i64(
    conn: &mut mysql::Conn,
    database: &str,
    table: &str,
    query: &str,
) -> Result<i64, OpsError> {
    if !has_table(conn, database, table)? {
        return Ok(0);
    }
    Ok(conn
        .query_first::<Option<i64>, _>(query)
        .map_err(statement(query))?
        .flatten()
        .unwrap_or(0))
}

fn server_version(conn: &mut mysql::Conn) -> Result<String, OpsError> {
    let query = "SELECT VERSION()";
    Ok(conn
        .query_first(query)
        .map_err(statement(query))?
        .unwrap_or_default())
}

/// The plugins with a database on the plugin store: `<plugin database>_<id>`.
fn plugin_databases(conn: &mut mysql::Conn, store: &str) -> Result<Vec<String>, OpsError> {
    let query = "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY 1";
    let prefix = format!("{store}_");
    Ok(conn
        .query::<String, _>(query)
        .map_err(statement(query))?
        .into_iter()
        .filter_map(|name| name.strip_prefix(&prefix).map(str::to_owned))
        // Only names a plugin id could have made.
        .filter(|id| sovereign_db_plugins::check_plugin_id(id).is_ok())
        .collect())
}

/// The views of `database` (left out of dumps: `grant_mirror` makes them).
fn views_of(conn: &mut mysql::Conn, database: &str) -> Result<Vec<String>, OpsError> {
    let query = "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ?";
    conn.exec(query, (database,)).map_err(statement(query))
}

/// Takes a backup of both MySQL stores into `options.out` (written as `<out>.partial`
/// and renamed when complete).
pub fn backup(
    stores: &MysqlStores,
    options: &BackupOptions,
    accounts: PluginAccounts<'_>,
    progress: ByteProgress<'_>,
) -> Result<Manifest, OpsError> {
    let tools = ClientTools::find()?;
    let partial = options.start_partial()?;
    let mut dumps = Vec::new();
    let mut versions = BTreeMap::new();
    let mut mirror_watermark = 0;
    let parts = if options.include_plugin_data { 2 } else { 1 };
    progress(0, parts);

    // The plugin databases first (see the module documentation).
    if options.include_plugin_data {
        let url = &stores.plugins;
        let mut conn = url.connect()?;
        let version = server_version(&mut conn)?;
        mirror_watermark = single_i64(
            &mut conn,
            &url.database,
            "_sv_mirror_state",
            "SELECT value FROM _sv_mirror_state WHERE `key` = 'watermark'",
        )?;
        versions.extend(schema_versions(&mut conn, &url.database)?);
        crate::create_private_dir(&partial.join("plugins.sql"))?;
        let store = "plugins.sql/store.sql".to_owned();
        tools.dump(url, &url.database, &partial.join(&store), &[])?;
        dumps.push(MysqlDump {
            name: store,
            role: "plugins".into(),
            server_version: version.clone(),
        });
        let accounts = accounts()?;
        for id in plugin_databases(&mut conn, &url.database)? {
            if options.exclude_plugins.contains(&id) {
                continue;
            }
            let database = format!("{}_{id}", url.database);
            versions.extend(schema_versions(&mut conn, &database)?);
            let name = format!("plugins.sql/{id}.sql");
            let views = views_of(&mut conn, &database)?;
            tools.dump(url, &database, &partial.join(&name), &views)?;
            dumps.push(MysqlDump {
                name,
                role: format!("plugin:{id}"),
                server_version: version.clone(),
            });
            match accounts.iter().find(|a| a.id == id) {
                Some(account) => {
                    let name = format!("plugins.sql/{id}.routines.sql");
                    tools.dump_routines(
                        &url.plugin_login(&account.id, &account.password),
                        &database,
                        &partial.join(&name),
                    )?;
                    dumps.push(MysqlDump {
                        name,
                        role: format!("plugin-routines:{id}"),
                        server_version: version.clone(),
                    });
                }
                None => tracing::warn!(
                    plugin = %id,
                    "the core keeps no login for this plugin's database: its stored routines \
                     are not in the backup"
                ),
            }
        }
        progress(1, parts);
    }

    let url = &stores.core;
    let mut conn = url.connect()?;
    let version = server_version(&mut conn)?;
    let core_acked_seq = single_i64(
        &mut conn,
        &url.database,
        "_sv_sync_state",
        "SELECT CAST(value AS SIGNED) FROM _sv_sync_state WHERE \"key\" = 'acked_seq'",
    )?;
    versions.extend(schema_versions(&mut conn, &url.database)?);
    tools.dump(url, &url.database, &partial.join("core.sql"), &[])?;
    dumps.push(MysqlDump {
        name: "core.sql".into(),
        role: "core".into(),
        server_version: version,
    });
    progress(parts, parts);

    let mut files = Vec::new();
    for dump in &dumps {
        let (sha256, size) = file_digest(&partial.join(&dump.name))?;
        files.push(BackupFile {
            name: dump.name.clone(),
            role: dump.role.clone(),
            size,
            sha256,
        });
    }
    let taken = crate::backup::Taken {
        files,
        schema_versions: versions,
        mirror_watermark,
        core_acked_seq,
    };
    Manifest {
        mysql_dumps: dumps,
        ..Manifest::of(FORMAT_MYSQL, taken, options)
    }
    .complete(&partial, options)
}

/// Whether `name` (a manifest file) is one of the manifest's MySQL dumps.
pub(crate) fn in_dump(manifest: &Manifest, name: &str) -> bool {
    manifest.mysql_dumps.iter().any(|d| d.name == name)
}

/// Checks each dump of a verified manifest: a whole `mariadb-dump` file (its closing
/// line is there) that holds what its role says (the core's store marker, the plugin
/// store's mirror bookkeeping or a plugin's event outbox).
pub(crate) fn check_dumps(dir: &Path, manifest: &Manifest, problems: &mut Vec<String>) {
    for dump in &manifest.mysql_dumps {
        if dump.name.contains("..") || Path::new(&dump.name).is_absolute() {
            problems.push(format!("{}: not a path inside the backup", dump.name));
            continue;
        }
        let marker: &[u8] = match dump.role.as_str() {
            "core" => b"CREATE TABLE `_sv_store`",
            "plugins" => b"-- Dump completed",
            role if role.starts_with("plugin-routines:") => b"-- Dump completed",
            role if role.starts_with("plugin:") => b"CREATE TABLE `_sv_event_outbox`",
            role => {
                problems.push(format!("{}: unknown role {role:?}", dump.name));
                continue;
            }
        };
        let (last_line, marked) = match scan(&dir.join(&dump.name), marker) {
            Ok(found) => found,
            Err(e) => {
                problems.push(format!("{}: cannot be read: {e}", dump.name));
                continue;
            }
        };
        if !last_line.starts_with(b"-- Dump completed") {
            problems.push(format!(
                "{}: not a whole dump (its closing line is missing)",
                dump.name
            ));
        }
        if !marked {
            problems.push(format!(
                "{}: not a dump of the {} (its store marker is missing)",
                dump.name, dump.role
            ));
        }
        if !manifest.files.iter().any(|f| f.name == dump.name) {
            problems.push(format!("{}: the manifest does not list it", dump.name));
        }
    }
}

/// Reads a dump line by line: its last non-empty line, and whether a line starts with
/// `marker`.
fn scan(path: &Path, marker: &[u8]) -> std::io::Result<(Vec<u8>, bool)> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(std::fs::File::open(path)?);
    let (mut line, mut last, mut marked) = (Vec::new(), Vec::new(), false);
    while reader.read_until(b'\n', &mut line)? > 0 {
        marked |= line.starts_with(marker);
        if !line.trim_ascii().is_empty() {
            std::mem::swap(&mut last, &mut line);
        }
        line.clear();
    }
    Ok((last, marked))
}

/// Drops every stored function and procedure of `database` (as `url`'s account).
fn drop_routines(url: &StoreUrl, database: &str) -> Result<(), OpsError> {
    let mut conn = url.connect()?;
    let query = "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES
                 WHERE ROUTINE_SCHEMA = ?";
    let routines: Vec<(String, String)> =
        conn.exec(query, (database,)).map_err(statement(query))?;
    for (name, kind) in routines {
        let what = if kind == "PROCEDURE" {
            "PROCEDURE"
        } else {
            "FUNCTION"
        };
        let drop = format!(
            "DROP {what} IF EXISTS `{database}`.`{}`",
            name.replace('`', "``")
        );
        conn.query_drop(&drop).map_err(statement(&drop))?;
    }
    Ok(())
}

/// Drops every table and view of `database` (as `url`'s account).
fn empty_database(url: &StoreUrl, database: &str) -> Result<(), OpsError> {
    let mut conn = url.connect()?;
    let query = "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES
                 WHERE TABLE_SCHEMA = ?";
    let objects: Vec<(String, String)> = conn.exec(query, (database,)).map_err(statement(query))?;
    conn.query_drop("SET SESSION foreign_key_checks = 0")
        .map_err(statement("SET SESSION foreign_key_checks = 0"))?;
    for (name, kind) in objects {
        let what = if kind == "VIEW" { "VIEW" } else { "TABLE" };
        let drop = format!(
            "DROP {what} IF EXISTS `{database}`.`{}`",
            name.replace('`', "``")
        );
        conn.query_drop(&drop).map_err(statement(&drop))?;
    }
    Ok(())
}

/// One restore's tools and targets.
struct Restore<'a> {
    tools: &'a ClientTools,
    stores: &'a MysqlStores,
    restored_accounts: PluginAccounts<'a>,
}

impl Restore<'_> {
    /// The core database, emptied and loaded from `dir`'s `core.sql`.
    fn core(&self, dir: &Path) -> Result<(), OpsError> {
        let url = &self.stores.core;
        empty_database(url, &url.database)?;
        self.tools.load(url, &url.database, &dir.join("core.sql"))?;
        Ok(())
    }

    /// The plugin database and each plugin's database of `manifest`, from `dir`: the
    /// restored core's plugins get their accounts (with its passwords) and mirror grants
    /// again; plugins it does not have lose theirs.
    fn plugin_stores(&self, manifest: &Manifest, dir: &Path) -> Result<(), OpsError> {
        let url = &self.stores.plugins;
        let store = manifest
            .mysql_dumps
            .iter()
            .find(|d| d.role == "plugins")
            .ok_or_else(|| {
                OpsError::Refused(format!(
                    "{} has no dump of the plugin store; it cannot be restored here",
                    dir.display()
                ))
            })?;
        empty_database(url, &url.database)?;
        self.tools
            .load(url, &url.database, &dir.join(&store.name))?;
        let accounts = (self.restored_accounts)()?;
        let mut owner = url.connect()?;
        for present in plugin_databases(&mut owner, &url.database)? {
            let kept = accounts.iter().any(|a| a.id == present)
                || manifest.excluded_plugins.contains(&present);
            if !kept {
                let drop = "CALL sv_admin.drop_plugin_account(?)";
                owner
                    .exec_drop(drop, (&present,))
                    .map_err(statement(drop))?;
            }
        }
        for account in &accounts {
            let create = "CALL sv_admin.create_plugin_account(?, ?, ?)";
            owner
                .exec_drop(
                    create,
                    (&account.id, &account.password, account.connection_limit),
                )
                .map_err(statement(create))?;
            let role = format!("plugin:{}", account.id);
            let database = format!("{}_{}", url.database, account.id);
            if let Some(dump) = manifest.mysql_dumps.iter().find(|d| d.role == role) {
                empty_database(url, &database)?;
                self.tools.load(url, &database, &dir.join(&dump.name))?;
            }
            // Its routines as it had them, loaded as their definer. (Backups taken before
            // routines were dumped have none: the routines there now stay.)
            let routines = format!("plugin-routines:{}", account.id);
            if let Some(dump) = manifest.mysql_dumps.iter().find(|d| d.role == routines) {
                drop_routines(url, &database)?;
                self.tools.load(
                    &url.plugin_login(&account.id, &account.password),
                    &database,
                    &dir.join(&dump.name),
                )?;
            }
            let mut by_slice: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (slice, column) in &account.grants {
                by_slice.entry(slice).or_default().push(column);
            }
            for (slice, columns) in by_slice {
                let grant = "CALL sv_admin.grant_mirror(?, ?, ?)";
                owner
                    .exec_drop(grant, (&account.id, slice, columns.join(",")))
                    .map_err(statement(grant))?;
            }
        }
        Ok(())
    }
}

/// Restores a verified MySQL backup into `stores` (the platform must be stopped).
pub fn restore(
    stores: &MysqlStores,
    backup_dir: &Path,
    accounts: PluginAccounts<'_>,
) -> Result<RestoreReport, OpsError> {
    let manifest = crate::backup::verify(backup_dir)?;
    if !manifest.mysql_dumps.iter().any(|d| d.role == "core") {
        return Err(OpsError::Refused(format!(
            "{} is not a backup of MySQL stores, but both stores are MySQL databases: \
             restore it into an installation on its own backend",
            backup_dir.display()
        )));
    }
    let tools = ClientTools::find()?;
    let mut owner = stores.plugins.connect()?;
    let check = "SELECT count(*) FROM information_schema.ROUTINES
                 WHERE ROUTINE_SCHEMA = 'sv_admin' AND ROUTINE_NAME IN
                       ('create_plugin_account', 'grant_mirror', 'drop_plugin_account')";
    let provisioned: i64 = owner
        .query_first(check)
        .map_err(statement(check))?
        .unwrap_or(0);
    if provisioned < 3 {
        return Err(OpsError::Refused(
            "the plugin store's account cannot see the sv_admin procedures restores need: \
             apply the current account plan first (`sv mysql:roles --admin-url URL --apply`, \
             or have a DBA run the script of `--print`)"
                .into(),
        ));
    }

    // What is there now, kept whole before anything changes.
    let options = crate::restore::pre_restore(&stores.data_dir)?;
    let aside_dir = options.out.clone();
    // (The core is still the current one: `accounts` lists its plugins.)
    let aside = backup(stores, &options, accounts, &|_, _| {})?;
    let run = Restore {
        tools: &tools,
        stores,
        restored_accounts: accounts,
    };
    let restored = run.core(backup_dir).and_then(|()| {
        if manifest.includes_plugin_data {
            run.plugin_stores(&manifest, backup_dir)
        } else {
            Ok(())
        }
    });
    if let Err(e) = restored {
        let put_back = run
            .core(&aside_dir)
            .and_then(|()| run.plugin_stores(&aside, &aside_dir));
        return Err(crate::restore::failed_after_changes(
            &e, put_back, &aside_dir,
        ));
    }
    let mut names = vec![format!(
        "database {} on {}",
        stores.core.database, stores.core.server
    )];
    if manifest.includes_plugin_data {
        names.push(format!(
            "database {} on {} and its plugins' databases",
            stores.plugins.database, stores.plugins.server
        ));
    }
    Ok(RestoreReport {
        manifest,
        aside_dir,
        restored: names,
    })
}
