//! Sovereign's application layer: installing and operating plugins, migrations, sync,
//! backups, the doctor's report and starting the platform. The CLI (`sv`) and the HTTP
//! API call these functions; they return data and leave printing to the caller.

pub mod authoring;
pub mod console;
pub mod doctor;
pub mod error;
pub mod events;
pub mod http;
pub mod migrations;
pub mod ops;
pub mod packages;
pub mod plugin_logs;
pub mod plugins;
pub mod run;
pub mod sync;
pub mod to_mysql;
pub mod to_postgres;
pub mod users;

use std::path::PathBuf;

use sovereign_config::Config;
use sovereign_db_core::plugins::PluginRecord;
use sovereign_db_core::{CoreConn, CoreLocation, PgCore};
use sovereign_db_plugins::mirror::MirrorCatalog;
use sovereign_db_plugins::{DatabaseMode, Limits, PluginDbConfig, StoreLocation};
use sovereign_sync::SyncSettings;

pub use error::PlatformError;

/// One installation: its configuration and the settings derived from it, parsed once.
#[derive(Clone)]
pub struct App {
    config: Config,
    sync: SyncSettings,
    location: StoreLocation,
    postgres: Option<PgPluginStore>,
    mysql: Option<MyPluginStore>,
}

/// Where plugin data lives.
pub enum PluginStore<'a> {
    /// SQLite files: the shared store, isolated files, the mirror.
    Sqlite(&'a StoreLocation),
    /// A PostgreSQL database: a schema and a role per plugin.
    Postgres(&'a PgPluginStore),
    /// A MySQL/MariaDB server: a database and an account per plugin.
    Mysql(&'a MyPluginStore),
}

/// The plugin store on MySQL/MariaDB (`PLUGIN_DATABASE_URL=mysql://...`): its account
/// (`svc_plugins`), which provisions plugin accounts through the `sv_admin` procedures
/// and writes the mirror, and the server where those accounts log in.
#[derive(Clone)]
pub struct MyPluginStore {
    store: sovereign_mysql::StoreUrl,
}

impl MyPluginStore {
    /// Connects as the store's account.
    pub fn connect_owner(&self) -> Result<mysql::Conn, PlatformError> {
        Ok(self.store.connect()?)
    }

    /// The database plugin `id` keeps its data in (`<plugin database>_<id>`, whatever its
    /// mode: MySQL's only namespace is a database).
    pub fn plugin_database(&self, id: &str) -> String {
        format!("{}_{id}", self.store.database)
    }

    /// How plugin `id`'s account logs in (a URL with its password).
    pub fn plugin_login(&self, id: &str, password: &str) -> String {
        self.store.login_as(
            &sovereign_mysql::plugin_account_name(id),
            password,
            &self.plugin_database(id),
        )
    }

    /// The store's database, as `host:port/database`.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.store.server, self.store.database)
    }

    /// Where plugin `id`'s data is, as `mysql://host:port/database`.
    pub fn describe_plugin(&self, id: &str) -> String {
        format!("mysql://{}/{}", self.store.server, self.plugin_database(id))
    }
}

/// The plugin store on PostgreSQL (`PLUGIN_DATABASE_URL=postgres://...`): its owner
/// (`svc_plugins`), who provisions plugin roles, and where those roles log in.
#[derive(Clone)]
pub struct PgPluginStore {
    owner_url: sovereign_db::PostgresUrl,
    store: sovereign_postgres::StoreUrl,
}

impl PgPluginStore {
    /// Connects as the store's owner.
    pub fn connect_owner(&self) -> Result<postgres::Client, PlatformError> {
        postgres::Client::connect(self.owner_url.expose(), postgres::NoTls).map_err(|source| {
            sovereign_postgres::PgError::Connect {
                target: format!("the plugin store {}", self.owner_url),
                source,
            }
            .into()
        })
    }

    /// The database plugin `id` keeps its data in: the plugin database (shared mode) or
    /// one of its own (isolated mode, `<plugin database>_<id>`).
    pub fn plugin_database(&self, id: &str, mode: DatabaseMode) -> Result<String, PlatformError> {
        Ok(match mode {
            DatabaseMode::Shared => self.store.database.clone(),
            DatabaseMode::Isolated => sovereign_postgres::isolated::database_name(&self.store, id)?,
        })
    }

    /// How plugin `id`'s role logs in (a connection string with its password).
    pub fn plugin_login(&self, id: &str, mode: DatabaseMode, password: &str) -> String {
        let mut url = self.store.clone();
        // An over-long name cannot have been installed: connecting to it fails and says so.
        if let Ok(database) = self.plugin_database(id, mode) {
            url.database = database;
        }
        url.login_as(&sovereign_postgres::plugin_role_name(id), password)
    }

    /// Plugin `id`'s fenced connection, as its own role.
    pub fn open_plugin(
        &self,
        id: &str,
        mode: DatabaseMode,
        password: &str,
        limits: Limits,
    ) -> Result<sovereign_postgres::PgPluginDb, PlatformError> {
        Ok(sovereign_postgres::PgPluginDb::open(
            &sovereign_postgres::PgPluginConfig {
                plugin_id: id.to_owned(),
                url: self.plugin_login(id, mode, password),
                limits,
            },
        )?)
    }

    /// The plugin store's role and server (for the isolated databases).
    pub(crate) fn store_url(&self) -> &sovereign_postgres::StoreUrl {
        &self.store
    }

    /// The store's database, as `host:port/database`.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.store.server, self.store.database)
    }

    /// Where plugin `id`'s data is, as `postgres://host:port/database#schema`.
    pub fn describe_plugin(&self, id: &str, mode: DatabaseMode) -> String {
        let database = self
            .plugin_database(id, mode)
            .unwrap_or_else(|_| self.store.database.clone());
        format!("postgres://{}/{database}#{id}", self.store.server)
    }
}

impl App {
    /// Reads the sync settings (`[sync]`, `[mirror.*]`) of `config` and where the plugin
    /// stores live.
    pub fn new(config: Config) -> Result<App, PlatformError> {
        let sync = SyncSettings::from_config(&config)?;
        let postgres = match config.plugins_postgres_url() {
            Some(url) => Some(PgPluginStore {
                store: sovereign_postgres::StoreUrl::parse("PLUGIN_DATABASE_URL", url.expose())?,
                owner_url: url.clone(),
            }),
            None => None,
        };
        let mysql = match config.plugins_mysql_url() {
            Some(url) => Some(MyPluginStore {
                store: sovereign_mysql::StoreUrl::parse("PLUGIN_DATABASE_URL", url.expose())?,
            }),
            None => None,
        };
        let location = StoreLocation {
            // On PostgreSQL no SQLite store is opened: `store_location` refuses.
            shared_store: config
                .plugins_db_path()
                .unwrap_or_else(|| config.data_dir_path().join("plugins.db")),
            isolated_dir: config.data_dir_path().join("plugins"),
            mirror_file: sync.mirror_file(&config),
        };
        Ok(App {
            config,
            sync,
            location,
            postgres,
            mysql,
        })
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The sync configuration.
    pub fn sync_settings(&self) -> &SyncSettings {
        &self.sync
    }

    /// The mirror slices this installation publishes.
    pub fn mirror_catalog(&self) -> &MirrorCatalog {
        &self.sync.catalog
    }

    /// Where plugin data lives.
    pub fn plugin_store(&self) -> PluginStore<'_> {
        match (&self.postgres, &self.mysql) {
            (Some(pg), _) => PluginStore::Postgres(pg),
            (None, Some(my)) => PluginStore::Mysql(my),
            (None, None) => PluginStore::Sqlite(&self.location),
        }
    }

    /// Where the SQLite plugin stores (and, in the ATTACH layout, the mirror file) live;
    /// refused when the plugin store is on PostgreSQL (`operation` names what needed it).
    pub fn store_location(&self, operation: &'static str) -> Result<&StoreLocation, PlatformError> {
        match self.plugin_store() {
            PluginStore::Sqlite(location) => Ok(location),
            PluginStore::Postgres(_) => Err(PlatformError::NotOnPostgres { operation }),
            PluginStore::Mysql(_) => Err(PlatformError::NotOnMysql { operation }),
        }
    }

    /// Whether both stores are on one kind of database server (PostgreSQL or MySQL):
    /// then several kernels may serve them (on one machine or many) and the data
    /// directory holds only each kernel's own runtime files.
    pub fn shares_stores(&self) -> bool {
        match self.core_location() {
            CoreLocation::Postgres(_) => self.postgres.is_some(),
            CoreLocation::Mysql(_) => self.mysql.is_some(),
            CoreLocation::File(_) => false,
        }
    }

    /// Where this process's runtime files go (its lock, its host's socket): the data
    /// directory itself when a store is a SQLite file (one platform per data directory,
    /// `sv.lock`, `host.sock`); `<data dir>/kernels/` with files named by pid when both
    /// stores are on a database server, so that kernels sharing a directory do not meet.
    pub fn runtime_file(&self, extension: &str) -> PathBuf {
        if self.shares_stores() {
            self.kernels_dir()
                .join(format!("{}.{extension}", std::process::id()))
        } else if extension == "lock" {
            self.config.lock_file_path()
        } else {
            self.config
                .data_dir_path()
                .join(format!("host.{extension}"))
        }
    }

    /// The directory of the kernels' runtime files when both stores are on a server.
    pub fn kernels_dir(&self) -> PathBuf {
        self.config.data_dir_path().join("kernels")
    }

    /// The lock files of the platforms running from this data directory now: `sv.lock`
    /// when a store is SQLite; each kernel's when both are on a server (stale ones, of
    /// kernels killed, are not held and not listed).
    pub fn running_locks(&self) -> Vec<PathBuf> {
        let candidates = if self.shares_stores() {
            std::fs::read_dir(self.kernels_dir())
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "lock"))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            vec![self.config.lock_file_path()]
        };
        let mut held: Vec<PathBuf> = candidates
            .into_iter()
            .filter(|path| sovereign_kernel::RuntimeLock::holder(path).is_some())
            .collect();
        held.sort();
        held
    }

    /// Where the core store is.
    pub fn core_location(&self) -> CoreLocation {
        match &self.config.database_url.value {
            sovereign_db::StoreTarget::File(url) => {
                CoreLocation::File(url.resolve(&self.config.base_dir))
            }
            sovereign_db::StoreTarget::Postgres(url) => CoreLocation::Postgres(url.clone()),
            sovereign_db::StoreTarget::Mysql(url) => CoreLocation::Mysql(url.clone()),
        }
    }

    /// `core.db`; refused when the core store is on PostgreSQL (`operation` names what
    /// needed the file).
    pub fn core_file(&self, operation: &'static str) -> Result<PathBuf, PlatformError> {
        self.config
            .core_db_path()
            .ok_or(sovereign_db_core::CoreError::NotOnSqlite { operation }.into())
    }

    /// The database files of this installation (SQLite stores only).
    pub fn layout(&self, operation: &'static str) -> Result<sovereign_ops::Layout, PlatformError> {
        let location = self.store_location(operation)?;
        Ok(sovereign_ops::Layout {
            core: self.core_file(operation)?,
            plugins: location.shared_store.clone(),
            isolated_dir: location.isolated_dir.clone(),
            mirror_file: location.mirror_file.clone(),
            data_dir: self.config.data_dir_path(),
        })
    }

    /// The two PostgreSQL stores, when both are on PostgreSQL; `None` when both are
    /// SQLite files; refused (naming `operation`) when the backends differ.
    pub fn postgres_stores(
        &self,
        operation: &'static str,
    ) -> Result<Option<sovereign_ops::pg_backup::PostgresStores>, PlatformError> {
        let backend = |postgres: bool| if postgres { "PostgreSQL" } else { "SQLite" };
        match (self.core_location(), &self.postgres) {
            (CoreLocation::Postgres(core), Some(plugins)) => {
                Ok(Some(sovereign_ops::pg_backup::PostgresStores {
                    core: sovereign_postgres::StoreUrl::parse("DATABASE_URL", core.expose())?,
                    plugins: plugins.store.clone(),
                    data_dir: self.config.data_dir_path(),
                }))
            }
            (CoreLocation::File(_), None) => Ok(None),
            (CoreLocation::Mysql(_), _) => Err(PlatformError::NotOnMysql { operation }),
            (core, plugins) => Err(PlatformError::MixedBackends {
                operation,
                core: backend(matches!(core, CoreLocation::Postgres(_))),
                plugins: backend(plugins.is_some()),
            }),
        }
    }

    /// The two MySQL stores, when both are on MySQL; `None` when neither is; refused
    /// (naming `operation`) when only one is.
    pub fn mysql_stores(
        &self,
        operation: &'static str,
    ) -> Result<Option<sovereign_ops::my_backup::MysqlStores>, PlatformError> {
        match (self.core_location(), self.plugin_store()) {
            (CoreLocation::Mysql(core), PluginStore::Mysql(plugins)) => {
                Ok(Some(sovereign_ops::my_backup::MysqlStores {
                    core: sovereign_mysql::StoreUrl::parse("DATABASE_URL", core.expose())?,
                    plugins: plugins.store.clone(),
                    data_dir: self.config.data_dir_path(),
                }))
            }
            (CoreLocation::Mysql(_), _) | (_, PluginStore::Mysql(_)) => {
                Err(PlatformError::NotOnMysql { operation })
            }
            _ => Ok(None),
        }
    }

    /// The SQLite plugin store files (refused when the plugin store is on PostgreSQL),
    /// whichever backend the core store is on.
    pub fn plugin_files(
        &self,
        operation: &'static str,
    ) -> Result<sovereign_ops::PluginFiles, PlatformError> {
        let location = self.store_location(operation)?;
        Ok(sovereign_ops::PluginFiles {
            plugins: location.shared_store.clone(),
            isolated_dir: location.isolated_dir.clone(),
            mirror_file: location.mirror_file.clone(),
        })
    }

    /// The package directory of plugin `id`.
    pub fn package_dir(&self, id: &str) -> PathBuf {
        self.config.plugins_dir_path().join(id)
    }

    /// Opens the mirror's trusted handle (the plugin store, the mirror file, or the
    /// PostgreSQL plugin database as its owner).
    pub fn open_mirror(&self) -> Result<sovereign_sync::Mirror, PlatformError> {
        Ok(self.sync.open_mirror(&self.config)?)
    }

    /// Opens the core store for an operator command; it must exist with every core
    /// migration applied.
    pub fn open_migrated_core(&self) -> Result<CoreConn, PlatformError> {
        migrations::open_migrated_core_with(self, sovereign_db_core::open_existing)
    }

    /// Like [`App::open_migrated_core`], read-only on SQLite: for reports that must work
    /// on a read-only data directory.
    pub fn open_migrated_core_read_only(&self) -> Result<CoreConn, PlatformError> {
        migrations::open_migrated_core_with(self, sovereign_db_core::open_existing_read_only)
    }

    /// The registry entry of `id`, if the core store exists and has a registry.
    pub fn registered(&self, id: &str) -> Result<Option<PluginRecord>, PlatformError> {
        let path = match self.core_location() {
            CoreLocation::File(path) => path,
            CoreLocation::Postgres(url) => {
                return match PgCore::connect(&url) {
                    Ok(core) => Ok(sovereign_db_core::plugins::get(&core, id)?),
                    // Not migrated yet: nothing is registered.
                    Err(sovereign_db_core::CoreError::NotCoreDatabase { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                };
            }
            CoreLocation::Mysql(url) => {
                return match sovereign_db_core::MyCore::connect(&url) {
                    Ok(core) => Ok(sovereign_db_core::plugins::get(&core, id)?),
                    // Not migrated yet: nothing is registered.
                    Err(sovereign_db_core::CoreError::NotCoreDatabase { .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                };
            }
        };
        if !path.exists() {
            return Ok(None);
        }
        let conn =
            sovereign_db::open_database(&path, &sovereign_db::OpenOptions::core().read_only())?;
        let has_registry: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'plugins'",
            [],
            |r| r.get(0),
        )?;
        if !has_registry {
            return Ok(None);
        }
        Ok(sovereign_db_core::plugins::get(&conn, id)?)
    }

    /// How plugin `id` runs: from the registry when it is installed; a bare package
    /// directory with migrations but no `plugin.json` runs in shared mode with default
    /// limits; `None` for a package with a manifest that is not installed.
    pub fn plugin_db_config(&self, id: &str) -> Result<Option<PluginDbConfig>, PlatformError> {
        sovereign_db_plugins::check_plugin_id(id)?;
        if let Some(record) = self.registered(id)? {
            return Ok(Some(fence_config(&record)));
        }
        let dir = self.package_dir(id);
        if dir.join("plugin.json").exists() {
            return Ok(None);
        }
        if !dir.join("migrations").is_dir() {
            return Err(PlatformError::NoSuchPackage {
                id: id.to_owned(),
                dir,
            });
        }
        Ok(Some(PluginDbConfig {
            plugin_id: id.to_owned(),
            mode: DatabaseMode::Shared,
            grants: vec![],
            limits: Limits::default(),
        }))
    }

    /// Makes sure the mirror tables a plugin reads exist in the mirror store, so that its
    /// views and queries on them compile before the first sync.
    pub fn ensure_mirrors(&self, grants: &[(String, String)]) -> Result<(), PlatformError> {
        if grants.is_empty() {
            return Ok(());
        }
        match self.open_mirror()? {
            sovereign_sync::Mirror::Sqlite(store) => {
                for (slice, _) in grants {
                    if let Some(slice) = self.sync.catalog.slice(slice) {
                        store.ensure_mirror(slice)?;
                    }
                }
            }
            // Mirror tables on a server are typed from the core's columns: a slice not
            // built yet is built (with its rows) now.
            mirror @ (sovereign_sync::Mirror::Postgres(_) | sovereign_sync::Mirror::Mysql(_)) => {
                let built = mirror.specs()?;
                if grants
                    .iter()
                    .any(|(slice, _)| !built.iter().any(|b| &b.name == slice))
                {
                    let core = self.open_migrated_core()?;
                    sovereign_sync::capture::install(&core, &self.sync.catalog)?;
                    sovereign_sync::full::full_resync(
                        &core,
                        &mirror,
                        &self.sync.catalog,
                        &|_, _| {},
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// The fence configuration of a registered plugin.
pub fn fence_config(record: &PluginRecord) -> PluginDbConfig {
    PluginDbConfig {
        plugin_id: record.id.clone(),
        mode: record.manifest.database,
        grants: record.grants.clone(),
        limits: record.manifest.limits,
    }
}
