//! Migrations of the core scope and the plugin scopes: what is pending, applying it,
//! and opening the core store only when it is fully migrated.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sovereign_db::rusqlite::Connection;
use sovereign_db::{MigrationSet, MigrationState, MigrationStatus, OpenOptions, PostgresUrl};
use sovereign_db_core::{CoreConn, CoreLocation, MyCore, PgCore};
use sovereign_db_plugins::{Backend, PluginDb, PluginDbConfig};
use sovereign_postgres::PgPluginDb;

use crate::{App, PgPluginStore, PlatformError, PluginStore};

/// Which stores a migration command covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `core.db`, with the migrations built in.
    Core,
    /// The plugin stores, with each plugin's `migrations/` directory.
    Plugins,
    /// Both.
    All,
}

/// Which store a migration set belongs to.
enum Store {
    Core,
    /// The core database on PostgreSQL, migrated by its owner (`svc_core`).
    PostgresCore(PostgresUrl),
    /// The core database on MySQL/MariaDB.
    MysqlCore(sovereign_db::MysqlUrl),
    /// A plugin's database, migrated behind that plugin's fence.
    Plugin(PluginDbConfig),
    /// The PostgreSQL plugin store's own bookkeeping, migrated by its owner.
    PostgresSystem(PgPluginStore),
    /// A plugin's schema on PostgreSQL, migrated as the plugin's role.
    PostgresPlugin {
        store: PgPluginStore,
        plugin: PluginDbConfig,
        password: String,
    },
    /// A plugin's database on MySQL, migrated as the plugin's account.
    MysqlPlugin {
        store: crate::MyPluginStore,
        plugin: PluginDbConfig,
        password: String,
    },
}

/// Plugin `plugin`'s connection as its own account, for its migrations.
fn open_mysql_plugin(
    store: &crate::MyPluginStore,
    plugin: &PluginDbConfig,
    password: &str,
) -> Result<sovereign_mysql::MyPluginDb, PlatformError> {
    Ok(sovereign_mysql::MyPluginDb::open(
        &sovereign_mysql::MyPluginConfig {
            plugin_id: plugin.plugin_id.clone(),
            url: store.plugin_login(&plugin.plugin_id, password),
            limits: plugin.limits,
        },
    )?)
}

/// Plugin `plugin`'s connection as its own role, for its migrations.
fn open_postgres_plugin(
    store: &PgPluginStore,
    plugin: &PluginDbConfig,
    password: &str,
) -> Result<PgPluginDb, PlatformError> {
    store.open_plugin(&plugin.plugin_id, plugin.mode, password, plugin.limits)
}

/// One migration set and the file it applies to (on PostgreSQL, the store's URL with
/// the schema: `postgres://HOST:PORT/DB#SCHEMA`).
pub struct Target {
    set: MigrationSet,
    store: Store,
    path: PathBuf,
}

impl Target {
    /// The scope name (`core`, `plugin:<id>`).
    pub fn scope(&self) -> &str {
        self.set.scope()
    }

    /// The file migrated.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies pending migrations, creating the file if needed. Plugin migrations run on
    /// the plugin's fenced connection: they cannot create or touch anything outside the
    /// plugin's namespace, and never reach a file marked as the core store.
    pub fn apply(&self, app: &App) -> Result<Vec<String>, PlatformError> {
        let applied = match &self.store {
            Store::Core => {
                let conn = sovereign_db_core::open(&self.path)?;
                let applied = self.set.deploy(&conn)?;
                // Change capture is derived from the configured projections.
                sovereign_sync::capture::install(&conn, app.mirror_catalog())?;
                applied
            }
            Store::PostgresCore(url) => {
                let mut core = PgCore::connect_unchecked(url)?;
                let applied = sovereign_postgres::migrate::deploy(core.client_mut(), &self.set)?;
                // Change capture is derived from the configured projections.
                sovereign_sync::capture::install(&core, app.mirror_catalog())?;
                applied
            }
            Store::MysqlCore(url) => {
                let mut core = MyCore::connect_unchecked(url)?;
                let applied = sovereign_mysql::migrate::deploy(core.conn_mut(), &self.set)?;
                // Change capture is derived from the configured projections.
                sovereign_sync::capture::install(&core, app.mirror_catalog())?;
                applied
            }
            Store::Plugin(plugin) => {
                app.ensure_mirrors(&plugin.grants)?;
                let db = PluginDb::open(app.store_location("migrating a plugin")?, plugin.clone())?;
                db.migrate(&self.set)?
            }
            Store::PostgresSystem(store) => {
                sovereign_postgres::migrate::deploy(&mut store.connect_owner()?, &self.set)?
            }
            Store::PostgresPlugin {
                store,
                plugin,
                password,
            } => open_postgres_plugin(store, plugin, password)?.migrate(&self.set)?,
            Store::MysqlPlugin {
                store,
                plugin,
                password,
            } => open_mysql_plugin(store, plugin, password)?.migrate(&self.set)?,
        };
        Ok(applied)
    }

    /// The migrations `apply` would run, by file name (refused, as `apply` would be,
    /// when an applied migration changed or is unknown).
    pub fn plan(&self) -> Result<Vec<String>, PlatformError> {
        match &self.store {
            Store::Core | Store::Plugin(_) => {
                let conn = self.open_for_read()?;
                Ok(self
                    .set
                    .plan(&conn)?
                    .iter()
                    .map(|m| m.file_name().to_owned())
                    .collect())
            }
            Store::PostgresCore(url) => Ok(sovereign_postgres::migrate::plan(
                PgCore::connect_unchecked(url)?.client_mut(),
                &self.set,
            )?),
            Store::MysqlCore(url) => Ok(sovereign_mysql::migrate::plan(
                MyCore::connect_unchecked(url)?.conn_mut(),
                &self.set,
            )?),
            Store::PostgresSystem(store) => Ok(sovereign_postgres::migrate::plan(
                &mut store.connect_owner()?,
                &self.set,
            )?),
            Store::PostgresPlugin {
                store,
                plugin,
                password,
            } => Ok(open_postgres_plugin(store, plugin, password)?.migration_plan(&self.set)?),
            Store::MysqlPlugin {
                store,
                plugin,
                password,
            } => Ok(open_mysql_plugin(store, plugin, password)?.migration_plan(&self.set)?),
        }
    }

    /// Every migration of the set and its state in the file.
    pub fn status(&self) -> Result<Vec<MigrationStatus>, PlatformError> {
        match &self.store {
            Store::Core | Store::Plugin(_) => {
                let conn = self.open_for_read()?;
                Ok(self.set.status(&conn)?)
            }
            Store::PostgresCore(url) => Ok(sovereign_postgres::migrate::status(
                PgCore::connect_unchecked(url)?.client_mut(),
                &self.set,
            )?),
            Store::MysqlCore(url) => Ok(sovereign_mysql::migrate::status(
                MyCore::connect_unchecked(url)?.conn_mut(),
                &self.set,
            )?),
            Store::PostgresSystem(store) => Ok(sovereign_postgres::migrate::status(
                &mut store.connect_owner()?,
                &self.set,
            )?),
            Store::PostgresPlugin {
                store,
                plugin,
                password,
            } => Ok(open_postgres_plugin(store, plugin, password)?.migration_status(&self.set)?),
            Store::MysqlPlugin {
                store,
                plugin,
                password,
            } => Ok(open_mysql_plugin(store, plugin, password)?.migration_status(&self.set)?),
        }
    }

    /// Opens the file read-only, or an empty in-memory database if it does not exist
    /// (everything is then pending).
    fn open_for_read(&self) -> Result<Connection, PlatformError> {
        if !self.path.exists() {
            return Ok(Connection::open_in_memory()?);
        }
        Ok(sovereign_db::open_database(
            &self.path,
            &OpenOptions::core().read_only(),
        )?)
    }
}

/// The migration sets of `scope` (or of one plugin), in the order they apply.
pub fn targets(
    app: &App,
    scope: Scope,
    plugin: Option<&str>,
) -> Result<Vec<Target>, PlatformError> {
    if plugin.is_some() && scope == Scope::Core {
        return Err(PlatformError::PluginWithCoreScope);
    }
    let mut out = Vec::new();
    if matches!(scope, Scope::Core | Scope::All) && plugin.is_none() {
        out.push(match app.core_location() {
            CoreLocation::File(path) => Target {
                set: sovereign_db_core::migrations(),
                store: Store::Core,
                path,
            },
            CoreLocation::Postgres(url) => Target {
                set: sovereign_db_core::postgres_migrations(),
                path: PathBuf::from(url.to_string()),
                store: Store::PostgresCore(url),
            },
            CoreLocation::Mysql(url) => Target {
                set: sovereign_db_core::mysql_migrations(),
                path: PathBuf::from(url.to_string()),
                store: Store::MysqlCore(url),
            },
        });
    }
    if matches!(scope, Scope::Plugins | Scope::All) {
        let plugins_dir = app.config().plugins_dir_path();
        let discovered = sovereign_db_plugins::discover_plugins(&plugins_dir)?;
        let ids = match plugin {
            Some(id) if !discovered.iter().any(|p| p == id) => {
                return Err(PlatformError::NoPluginMigrations {
                    id: id.to_owned(),
                    plugins_dir,
                });
            }
            Some(id) => vec![id.to_owned()],
            None => discovered,
        };
        if let PluginStore::Postgres(store) = app.plugin_store()
            && plugin.is_none()
        {
            out.push(Target {
                set: sovereign_postgres::migrate::plugin_store_system(),
                path: PathBuf::from(format!("postgres://{}#public", store.describe())),
                store: Store::PostgresSystem(store.clone()),
            });
        }
        for id in ids {
            let Some(plugin_config) = app.plugin_db_config(&id)? else {
                tracing::info!(plugin = %id, "skipping a plugin package that is not installed");
                continue;
            };
            out.push(match app.plugin_store() {
                PluginStore::Sqlite(location) => Target {
                    set: sovereign_db_plugins::plugin_migrations(&plugins_dir, &id)?,
                    path: location.file_for(&id, plugin_config.mode),
                    store: Store::Plugin(plugin_config),
                },
                PluginStore::Postgres(store) => {
                    let password = plugin_password(app, &id)?;
                    Target {
                        set: sovereign_db_plugins::plugin_migrations_for(
                            &plugins_dir,
                            &id,
                            Backend::Postgres,
                        )?,
                        path: PathBuf::from(store.describe_plugin(&id, plugin_config.mode)),
                        store: Store::PostgresPlugin {
                            store: store.clone(),
                            plugin: plugin_config,
                            password,
                        },
                    }
                }
                PluginStore::Mysql(store) => {
                    let password = plugin_password(app, &id)?;
                    Target {
                        set: sovereign_db_plugins::plugin_migrations_for(
                            &plugins_dir,
                            &id,
                            Backend::Mysql,
                        )?,
                        path: PathBuf::from(store.describe_plugin(&id)),
                        store: Store::MysqlPlugin {
                            store: store.clone(),
                            plugin: plugin_config,
                            password,
                        },
                    }
                }
            });
        }
    }
    Ok(out)
}

/// The password the core keeps for plugin `id`'s role or account on a database server.
fn plugin_password(app: &App, id: &str) -> Result<String, PlatformError> {
    sovereign_db_core::plugins::store_login(&app.open_migrated_core_read_only()?, id)?.ok_or_else(
        || PlatformError::NotInstalledPackage {
            id: id.to_owned(),
            dir: app.package_dir(id),
        },
    )
}

pub(crate) fn open_migrated_core_with(
    app: &App,
    open: fn(&Path) -> Result<Connection, sovereign_db_core::CoreError>,
) -> Result<CoreConn, PlatformError> {
    let (conn, status, store) = match app.core_location() {
        CoreLocation::File(path) => {
            if !path.exists() {
                return Err(PlatformError::CoreMissing { path });
            }
            let conn = open(&path)?;
            let status = sovereign_db_core::migrations().status(&conn)?;
            (CoreConn::Sqlite(conn), status, path.display().to_string())
        }
        CoreLocation::Postgres(url) => {
            let mut core = PgCore::connect(&url)?;
            let status = sovereign_postgres::migrate::status(
                core.client_mut(),
                &sovereign_db_core::postgres_migrations(),
            )?;
            (CoreConn::Postgres(Box::new(core)), status, url.to_string())
        }
        CoreLocation::Mysql(url) => {
            let mut core = MyCore::connect(&url)?;
            let status = sovereign_mysql::migrate::status(
                core.conn_mut(),
                &sovereign_db_core::mysql_migrations(),
            )?;
            (CoreConn::Mysql(Box::new(core)), status, url.to_string())
        }
    };
    if status
        .iter()
        .any(|s| !matches!(s.state, MigrationState::Applied { .. }))
    {
        return Err(PlatformError::CoreNotMigrated { store });
    }
    Ok(conn)
}

/// Applies every pending migration of the targets in order, telling `on_applied` about
/// each target as it is done. With the plugin scope, the shared plugin store exists
/// afterwards even with no plugins yet.
pub fn deploy(
    app: &App,
    targets: &[Target],
    scope: Scope,
    on_applied: &mut dyn FnMut(&Applied),
) -> Result<(), PlatformError> {
    for target in targets {
        let files = target.apply(app).map_err(|e| PlatformError::Migrating {
            path: target.path.clone(),
            source: Box::new(e),
        })?;
        on_applied(&Applied {
            scope: target.scope().to_owned(),
            path: target.path.clone(),
            files,
        });
    }
    if scope != Scope::Core
        && let PluginStore::Sqlite(location) = app.plugin_store()
    {
        sovereign_db_plugins::open_shared_store(&location.shared_store)?;
    }
    Ok(())
}

/// What one target's deploy applied.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// Scope.
    pub scope: String,
    /// File migrated.
    pub path: PathBuf,
    /// Migration files applied (empty: it was up to date).
    pub files: Vec<String>,
}

/// Applies every pending migration of every scope (`sv dev`), as `scope: file`.
pub fn deploy_all(app: &App) -> Result<Vec<String>, PlatformError> {
    let mut applied = Vec::new();
    deploy(
        app,
        &targets(app, Scope::All, None)?,
        Scope::All,
        &mut |a| {
            applied.extend(a.files.iter().map(|f| format!("{}: {f}", a.scope)));
        },
    )?;
    Ok(applied)
}

/// Every migration that is not cleanly applied, as `scope: file (state)`; `sv serve`
/// refuses to start while there are any.
pub fn not_applied(app: &App) -> Result<Vec<String>, PlatformError> {
    let mut out = Vec::new();
    for target in targets(app, Scope::All, None)? {
        for status in target.status()? {
            let state = match status.state {
                MigrationState::Applied { .. } => continue,
                MigrationState::Pending => "pending",
                MigrationState::Changed { .. } => "changed after it was applied",
                MigrationState::Unknown { .. } => "applied but unknown to this build",
            };
            out.push(format!("{}: {} ({state})", status.scope, status.file_name));
        }
    }
    Ok(out)
}
