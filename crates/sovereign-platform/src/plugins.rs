//! Installing, listing, removing, enabling, moving and purging plugins, and running SQL
//! behind a plugin's fence.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sovereign_db_core::plugins::{self as registry, PluginRecord};
use sovereign_db_plugins::{
    Backend, DatabaseMode, FencedConnection, Manifest, PluginDb, TrustedPluginStore,
};

use crate::{App, PlatformError, PluginStore};

/// Whether an install may grant the mirror columns a manifest asks for.
pub enum Approval<'a> {
    /// Granted up front (`--yes`, a development start).
    Given,
    /// Ask: called with the manifest when it asks for mirror columns.
    Ask(&'a mut dyn FnMut(&Manifest) -> bool),
}

/// What an install did.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    /// Plugin id.
    pub id: String,
    /// Installed version.
    pub version: String,
    /// Where its tables live.
    pub mode: DatabaseMode,
    /// The plugin API version its component uses.
    pub api_version: String,
    /// Where its data lives: a file, or a schema of the PostgreSQL plugin store.
    pub data_location: String,
    /// The migration files applied.
    pub applied: Vec<String>,
}

/// Validates a plugin package, approves its mirror grants, applies all its migrations
/// (or none) and registers it. A failure leaves nothing behind: no registry entry, no
/// tables, no isolated file, no package copy.
pub fn install(app: &App, dir: &Path, approval: Approval<'_>) -> Result<Installed, PlatformError> {
    let mut manifest = Manifest::load(dir, app.mirror_catalog())?;
    let id = manifest.id.clone();
    sovereign_db_plugins::check_plugin_id(&id)?;
    let core = app.open_migrated_core()?;
    if let Some(existing) = registry::list(&core)?
        .into_iter()
        .find(|p| p.id.eq_ignore_ascii_case(&id))
    {
        return Err(PlatformError::AlreadyInstalled {
            id: existing.id,
            version: existing.manifest.version,
        });
    }
    let component = check_package(dir, &manifest)?;
    // The registry records the API the component was checked against, stated or not.
    manifest
        .plugin_api
        .get_or_insert_with(|| component.api_version.clone());
    let grants = manifest.requested_grants();
    if !grants.is_empty()
        && let Approval::Ask(approve) = approval
        && !approve(&manifest)
    {
        return Err(PlatformError::GrantsNotApproved);
    }

    // Stage the package next to its final place, migrate from the staged copy, and only
    // then swap it in and register it: a failure leaves the previous install as it was.
    let target = app.package_dir(&id);
    let staged = stage(app, dir, &id)?;
    let source = staged.clone().unwrap_or_else(|| target.clone());
    let stored = match app.plugin_store() {
        PluginStore::Sqlite(location) => {
            install_data_sqlite(app, location, &source, &manifest, &grants)
        }
        PluginStore::Postgres(pg) => install_data_postgres(app, pg, &source, &manifest, &grants),
        PluginStore::Mysql(my) => install_data_mysql(app, my, &source, &manifest, &grants),
    };
    let Stored {
        applied,
        data_location,
        login,
    } = match stored {
        Ok(stored) => stored,
        Err(e) => {
            if let Some(staging) = &staged {
                let _ = std::fs::remove_dir_all(staging);
            }
            return Err(PlatformError::InstallFailed {
                id,
                source: Box::new(e),
            });
        }
    };
    if let Some(staging) = staged {
        swap_in(&staging, &target)?;
    }
    // Before the registry names it: a kernel that sees the new plugin finds its package.
    crate::packages::store(app, &id)?;
    registry::register_with_login(
        &core,
        &PluginRecord {
            id: id.clone(),
            enabled: true,
            manifest: manifest.clone(),
            grants,
            load: registry::LoadState::NotReported,
        },
        login.as_deref(),
    )?;
    sovereign_db_core::audit::record(
        &core,
        None,
        "plugin.install",
        Some(&format!("plugin:{id}")),
        Some(
            &serde_json::json!({ "version": manifest.version, "database": manifest.database.as_str() }),
        ),
    )?;
    Ok(Installed {
        id,
        version: manifest.version,
        mode: manifest.database,
        api_version: component.api_version,
        data_location,
        applied,
    })
}

/// What an install stored.
struct Stored {
    /// The migration files applied.
    applied: Vec<String>,
    /// Where the data lives, for the operator.
    data_location: String,
    /// The password of the plugin's PostgreSQL role (on PostgreSQL).
    login: Option<String>,
}

/// Applies the package's migrations to its SQLite store (all or none); a failure
/// removes the isolated file it created.
fn install_data_sqlite(
    app: &App,
    location: &sovereign_db_plugins::StoreLocation,
    source: &Path,
    manifest: &Manifest,
    grants: &[(String, String)],
) -> Result<Stored, PlatformError> {
    let id = &manifest.id;
    if !manifest.backends.contains(&Backend::Sqlite) {
        return Err(backend_not_supported(manifest, Backend::Sqlite));
    }
    let data_file = location.file_for(id, manifest.database);
    let file_existed = data_file.exists();
    let result = (|| -> Result<Vec<String>, PlatformError> {
        let db_config = sovereign_db_plugins::PluginDbConfig {
            plugin_id: id.clone(),
            mode: manifest.database,
            grants: grants.to_vec(),
            limits: manifest.limits,
        };
        app.ensure_mirrors(grants)?;
        let set = sovereign_db::MigrationSet::from_dir(
            &sovereign_db_plugins::migration_scope(id),
            &source.join("migrations"),
        )?;
        let db = PluginDb::open(location, db_config)?;
        // All of the package's migrations or none: a failed install leaves nothing.
        Ok(db.migrate_all_or_nothing(&set)?)
    })();
    match result {
        Ok(applied) => Ok(Stored {
            applied,
            data_location: data_file.display().to_string(),
            login: None,
        }),
        Err(e) => {
            if !file_existed && manifest.database == DatabaseMode::Isolated {
                // The isolated file this install created holds nothing of value.
                remove_database_files(&data_file, |_| {})?;
            }
            Err(e)
        }
    }
}

fn backend_not_supported(manifest: &Manifest, backend: Backend) -> PlatformError {
    PlatformError::BackendNotSupported {
        id: manifest.id.clone(),
        backend: backend.as_str(),
        supported: manifest
            .backends
            .iter()
            .map(|b| b.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The role plugin `manifest.id` serves with on a PostgreSQL plugin store.
pub(crate) fn serving_role(
    manifest: &Manifest,
    password: &str,
    grants: &[(String, String)],
) -> sovereign_postgres::PluginRole {
    sovereign_postgres::PluginRole {
        id: manifest.id.clone(),
        password: password.to_owned(),
        grants: grants.to_vec(),
        connection_limit: serving_connection_limit(),
        statement_ms: manifest.limits.statement_ms,
    }
}

/// How many connections a plugin's role or account may hold: a host's lanes and relay
/// connection, twice (a restarted host connects before the killed one's sessions are
/// gone), and operators' `sv plugins sql` and deadline kills.
pub(crate) fn serving_connection_limit() -> u32 {
    (2 * (sovereign_host::scheduler::REQUEST_LANES + 1) + 4) as u32
}

/// A new password for a plugin's role: 32 random hex digits.
pub(crate) fn generate_password() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Provisions the plugin's role and schema on the PostgreSQL plugin store (through
/// `sv_admin.create_plugin_role`, as the store's owner) and applies its
/// `migrations/postgres/` as that role. A schema left by an earlier install (removed
/// without `--purge`) is kept and migrated on; a failure drops what this install made.
fn install_data_postgres(
    app: &App,
    pg: &crate::PgPluginStore,
    source: &Path,
    manifest: &Manifest,
    grants: &[(String, String)],
) -> Result<Stored, PlatformError> {
    let id = &manifest.id;
    if !manifest.backends.contains(&Backend::Postgres) {
        return Err(backend_not_supported(manifest, Backend::Postgres));
    }
    // The mirror tables it reads exist (built from the core) before they are granted.
    app.ensure_mirrors(grants)?;
    let set = sovereign_db::MigrationSet::from_dir(
        &sovereign_db_plugins::migration_scope(id),
        &source.join("migrations").join("postgres"),
    )?;
    let mut owner = pg.connect_owner()?;
    let schema_existed: bool = owner
        .query_one("SELECT to_regnamespace($1) IS NOT NULL", &[id])
        .map_err(|source| sovereign_postgres::PgError::Statement {
            statement: "SELECT to_regnamespace(...)".into(),
            source,
        })?
        .get(0);
    let password = generate_password();
    let role = serving_role(manifest, &password, grants);
    let provision = |owner: &mut postgres::Client, sql: String, shown: String| {
        owner
            .batch_execute(&sql)
            .map_err(|source| sovereign_postgres::PgError::Statement {
                statement: shown,
                source,
            })
    };
    let mode = manifest.database;
    if mode == DatabaseMode::Isolated && !grants.is_empty() {
        return Err(PlatformError::IsolatedReadsMirrors { id: id.clone() });
    }
    provision(
        &mut owner,
        role.create_sql(),
        format!("SELECT sv_admin.create_plugin_role('{id}', '...', ...)"),
    )?;
    let mut made_database = false;
    let migrated = (|| -> Result<Vec<String>, PlatformError> {
        provision(&mut owner, role.grant_sql(), role.grant_sql())?;
        if mode == DatabaseMode::Isolated {
            made_database =
                sovereign_postgres::isolated::provision(&mut owner, pg.store_url(), id)?;
        }
        let mut db = pg.open_plugin(id, mode, &password, manifest.limits)?;
        // All of the package's migrations or none.
        Ok(db.migrate_all_or_nothing(&set)?)
    })();
    match migrated {
        Ok(applied) => Ok(Stored {
            applied,
            data_location: format!("{} (role svp_{id})", pg.describe_plugin(id, mode)),
            login: Some(password),
        }),
        Err(e) => {
            if made_database
                && let Err(undo) =
                    sovereign_postgres::isolated::drop_database(&mut owner, pg.store_url(), id)
            {
                tracing::error!(plugin = %id, error = %undo, "could not drop the database of a failed install");
            }
            if !schema_existed {
                let drop = sovereign_postgres::PluginRole::drop_sql(id);
                if let Err(undo) = provision(&mut owner, drop.clone(), drop) {
                    tracing::error!(plugin = %id, error = %undo, "could not drop the role of a failed install");
                }
            }
            Err(e)
        }
    }
}

/// Provisions the plugin's account and database on the MySQL plugin store (through
/// `sv_admin.create_plugin_account`, as the store's account), grants its approved mirror
/// columns and applies its `migrations/mysql/` as that account. A failure drops what
/// this install made.
fn install_data_mysql(
    app: &App,
    my: &crate::MyPluginStore,
    source: &Path,
    manifest: &Manifest,
    grants: &[(String, String)],
) -> Result<Stored, PlatformError> {
    let id = &manifest.id;
    if !manifest.backends.contains(&Backend::Mysql) {
        return Err(backend_not_supported(manifest, Backend::Mysql));
    }
    let set = sovereign_db::MigrationSet::from_dir(
        &sovereign_db_plugins::migration_scope(id),
        &source.join("migrations").join("mysql"),
    )?;
    // The mirror tables it reads exist (built from the core) before they are granted.
    app.ensure_mirrors(grants)?;
    let mut owner = my.connect_owner()?;
    let password = generate_password();
    let limit = serving_connection_limit();
    let call = "CALL sv_admin.create_plugin_account(?, ?, ?)";
    mysql::prelude::Queryable::exec_drop(&mut owner, call, (id, &password, limit)).map_err(
        |source| sovereign_mysql::MyError::Statement {
            statement: call.into(),
            source,
        },
    )?;
    let migrated = (|| -> Result<Vec<String>, PlatformError> {
        // Its approved mirror columns, readable before its migrations run (they may
        // refer to them).
        grant_mirrors_mysql(&mut owner, id, grants)?;
        let mut db = sovereign_mysql::MyPluginDb::open(&sovereign_mysql::MyPluginConfig {
            plugin_id: id.clone(),
            url: my.plugin_login(id, &password),
            limits: manifest.limits,
        })?;
        Ok(db.migrate(&set)?)
    })();
    match migrated {
        Ok(applied) => Ok(Stored {
            applied,
            data_location: format!(
                "{} (account {})",
                my.describe_plugin(id),
                sovereign_mysql::plugin_account_name(id)
            ),
            login: Some(password),
        }),
        Err(e) => {
            let drop = "CALL sv_admin.drop_plugin_account(?)";
            if let Err(undo) = mysql::prelude::Queryable::exec_drop(&mut owner, drop, (id,)) {
                tracing::error!(plugin = %id, error = %undo, "could not drop the account of a failed install");
            }
            Err(e)
        }
    }
}

/// Grants plugin `id` exactly `grants` of the MySQL mirror, readable in its database as
/// `core__<slice>` (columns granted before and not listed are revoked).
pub(crate) fn grant_mirrors_mysql(
    owner: &mut mysql::Conn,
    id: &str,
    grants: &[(String, String)],
) -> Result<(), PlatformError> {
    let mut by_slice: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (slice, column) in grants {
        by_slice.entry(slice).or_default().push(column);
    }
    for (slice, columns) in by_slice {
        let grant = "CALL sv_admin.grant_mirror(?, ?, ?)";
        mysql::prelude::Queryable::exec_drop(owner, grant, (id, slice, columns.join(",")))
            .map_err(|source| sovereign_mysql::MyError::Statement {
                statement: grant.into(),
                source,
            })?;
    }
    Ok(())
}

/// What an upgrade on a database server needs first: the package supports `backend`, and
/// the core keeps the plugin's login there; returns its password.
fn upgrade_login(
    core: &dyn sovereign_db_core::CoreAccess,
    manifest: &Manifest,
    backend: Backend,
) -> Result<String, PlatformError> {
    if !manifest.backends.contains(&backend) {
        return Err(backend_not_supported(manifest, backend));
    }
    registry::store_login(core, &manifest.id)?.ok_or(match backend {
        Backend::Mysql => PlatformError::NotOnMysql {
            operation: "upgrading a plugin with no account on the MySQL store (reinstall it)",
        },
        _ => PlatformError::NotOnPostgres {
            operation: "upgrading a plugin with no role on the PostgreSQL store (reinstall it)",
        },
    })
}

/// On MySQL: the mirror grants of the new manifest, then its new `migrations/mysql/` as
/// the plugin's account. MySQL commits each DDL statement, so a migration that fails
/// part-way keeps its statements before the failing one (the error says which); the
/// registry and package stay at the installed version.
fn upgrade_data_mysql(
    core: &dyn sovereign_db_core::CoreAccess,
    my: &crate::MyPluginStore,
    source: &Path,
    manifest: &Manifest,
    grants: &[(String, String)],
) -> Result<Vec<String>, PlatformError> {
    let id = &manifest.id;
    let password = upgrade_login(core, manifest, Backend::Mysql)?;
    let set = sovereign_db::MigrationSet::from_dir(
        &sovereign_db_plugins::migration_scope(id),
        &source.join("migrations").join("mysql"),
    )?;
    grant_mirrors_mysql(&mut my.connect_owner()?, id, grants)?;
    let mut db = sovereign_mysql::MyPluginDb::open(&sovereign_mysql::MyPluginConfig {
        plugin_id: id.clone(),
        url: my.plugin_login(id, &password),
        limits: manifest.limits,
    })?;
    Ok(db.migrate(&set)?)
}

/// Checks a package before anything is written: a migrations directory, and a
/// component that compiles, fits the plugin API this host serves and is the version the
/// manifest states.
pub(crate) fn check_package(
    dir: &Path,
    manifest: &Manifest,
) -> Result<sovereign_host::component::ComponentInfo, PlatformError> {
    let migrations_dir = dir.join("migrations");
    if !migrations_dir.is_dir() {
        return Err(PlatformError::MissingMigrations {
            dir: migrations_dir,
        });
    }
    let component = sovereign_host::component::check_component(&dir.join("plugin.wasm"))
        .map_err(|e| PlatformError::PackageRejected(Box::new(e.into())))?;
    if let Some(declared) = &manifest.plugin_api {
        let supported = sovereign_host::component::SUPPORTED_API_VERSIONS;
        if !supported.contains(&declared.as_str()) {
            return Err(PlatformError::UnsupportedPluginApi {
                declared: declared.clone(),
                supported: supported.join(", "),
            });
        }
        if *declared != component.api_version {
            return Err(PlatformError::PluginApiMismatch {
                declared: declared.clone(),
                built: component.api_version,
            });
        }
    }
    Ok(component)
}

/// Copies the package in `dir` next to its final place, unless it is that place.
fn stage(app: &App, dir: &Path, id: &str) -> Result<Option<PathBuf>, PlatformError> {
    if same_dir(dir, &app.package_dir(id)) {
        return Ok(None);
    }
    let staging = app
        .config()
        .plugins_dir_path()
        .join(format!(".{id}.staging-{}", std::process::id()));
    copy_dir(dir, &staging).map_err(|source| PlatformError::Io {
        what: format!("copying {} into {}", dir.display(), staging.display()),
        source,
    })?;
    Ok(Some(staging))
}

/// What an upgrade did.
#[derive(Debug, Clone, Serialize)]
pub struct Upgraded {
    /// Plugin id.
    pub id: String,
    /// The version before.
    pub from_version: String,
    /// The version now.
    pub to_version: String,
    /// What changed in the manifest, one line each.
    pub changes: Vec<String>,
    /// The new migration files applied.
    pub applied: Vec<String>,
}

/// Upgrades an installed plugin to the package in `dir`: same id, a newer version
/// (`allow_same_version` for a development loop), the same database mode (a move is
/// `move_to`). The manifest's changes are listed; when it asks for more mirror columns,
/// `approve` must approve them. The new migrations apply all or none behind the fence
/// (an applied migration whose file changed is refused); only then is the package
/// swapped in and the registry updated. A failure leaves the installed version as it was.
pub fn upgrade(
    app: &App,
    dir: &Path,
    allow_same_version: bool,
    approve: &mut dyn FnMut(&[String]) -> bool,
) -> Result<Upgraded, PlatformError> {
    let mut manifest = Manifest::load(dir, app.mirror_catalog())?;
    let id = manifest.id.clone();
    let core = app.open_migrated_core()?;
    let mut record = installed(&core, &id)?;
    let old = record.manifest.clone();
    match compare_versions(&manifest.version, &old.version)? {
        std::cmp::Ordering::Greater => {}
        std::cmp::Ordering::Equal if allow_same_version => {}
        _ => {
            return Err(PlatformError::NotNewer {
                id,
                installed: old.version,
                offered: manifest.version,
            });
        }
    }
    if manifest.database != old.database {
        return Err(PlatformError::ModeChangeNeedsMove {
            id,
            from: old.database,
            to: manifest.database,
        });
    }
    let component = check_package(dir, &manifest)?;
    manifest.plugin_api.get_or_insert(component.api_version);
    let grants = manifest.requested_grants();
    let changes = manifest_changes(&old, &manifest);
    let widened = grants.iter().any(|g| !record.grants.contains(g));
    if widened && !approve(&changes) {
        return Err(PlatformError::GrantsNotApproved);
    }
    let staged = stage(app, dir, &id)?;
    let source = staged.clone().unwrap_or_else(|| app.package_dir(&id));
    let applied = (|| -> Result<Vec<String>, PlatformError> {
        app.ensure_mirrors(&grants)?;
        match app.plugin_store() {
            PluginStore::Mysql(my) => upgrade_data_mysql(&core, my, &source, &manifest, &grants),
            PluginStore::Sqlite(location) => {
                let set = sovereign_db::MigrationSet::from_dir(
                    &sovereign_db_plugins::migration_scope(&id),
                    &source.join("migrations"),
                )?;
                let db = PluginDb::open(
                    location,
                    sovereign_db_plugins::PluginDbConfig {
                        plugin_id: id.clone(),
                        mode: manifest.database,
                        grants: grants.clone(),
                        limits: manifest.limits,
                    },
                )?;
                Ok(db.migrate_all_or_nothing(&set)?)
            }
            PluginStore::Postgres(pg) => {
                upgrade_data_postgres(&core, pg, &source, &manifest, &grants)
            }
        }
    })();
    let applied = match applied {
        Ok(applied) => applied,
        Err(e) => {
            if let Some(staging) = &staged {
                let _ = std::fs::remove_dir_all(staging);
            }
            return Err(PlatformError::UpgradeFailed {
                id,
                source: Box::new(e),
            });
        }
    };
    if let Some(staging) = staged {
        swap_in(&staging, &app.package_dir(&id))?;
    }
    crate::packages::store(app, &id)?;
    let from_version = old.version.clone();
    record.manifest = manifest.clone();
    record.grants = grants;
    record.load = registry::LoadState::NotReported;
    registry::register(&core, &record)?;
    sovereign_db_core::audit::record(
        &core,
        None,
        "plugin.upgrade",
        Some(&format!("plugin:{id}")),
        Some(&serde_json::json!({ "from": from_version, "to": manifest.version })),
    )?;
    Ok(Upgraded {
        id,
        from_version,
        to_version: manifest.version,
        changes,
        applied,
    })
}

/// Orders two semantic versions.
fn compare_versions(a: &str, b: &str) -> Result<std::cmp::Ordering, PlatformError> {
    let parse = |v: &str| {
        semver::Version::parse(v).map_err(|_| PlatformError::NotSemver {
            version: v.to_owned(),
        })
    };
    Ok(parse(a)?.cmp(&parse(b)?))
}

/// The differences between two manifests an operator should see, one line each.
fn manifest_changes(old: &Manifest, new: &Manifest) -> Vec<String> {
    let mut changes = vec![format!("version {} -> {}", old.version, new.version)];
    if old.name != new.name {
        changes.push(format!("name {:?} -> {:?}", old.name, new.name));
    }
    for (slice, columns) in &new.reads {
        let before = old.reads.get(slice);
        let added: Vec<&String> = columns
            .iter()
            .filter(|c| before.is_none_or(|b| !b.contains(c)))
            .collect();
        if !added.is_empty() {
            let added: Vec<&str> = added.iter().map(|c| c.as_str()).collect();
            changes.push(format!("reads more of {slice}: {}", added.join(", ")));
        }
    }
    for (slice, columns) in &old.reads {
        let now = new.reads.get(slice);
        let dropped: Vec<&str> = columns
            .iter()
            .filter(|c| now.is_none_or(|n| !n.contains(c)))
            .map(String::as_str)
            .collect();
        if !dropped.is_empty() {
            changes.push(format!("no longer reads {slice}: {}", dropped.join(", ")));
        }
    }
    if old.emits != new.emits {
        changes.push(format!("emits {:?} -> {:?}", old.emits, new.emits));
    }
    if old.plugin_api != new.plugin_api {
        let api = |v: &Option<String>| v.clone().unwrap_or_else(|| "not recorded".into());
        changes.push(format!(
            "plugin API {} -> {}",
            api(&old.plugin_api),
            api(&new.plugin_api)
        ));
    }
    if old.limits != new.limits {
        changes.push(format!("limits {:?} -> {:?}", old.limits, new.limits));
    }
    changes
}

/// The plugin packages of the plugins directory that have a manifest but are not
/// installed yet.
pub fn uninstalled_packages(app: &App) -> Result<Vec<PathBuf>, PlatformError> {
    let dir = app.config().plugins_dir_path();
    let mut out = Vec::new();
    for id in sovereign_db_plugins::discover_plugins(&dir)? {
        let package = dir.join(&id);
        if package.join("plugin.json").exists() && app.registered(&id)?.is_none() {
            out.push(package);
        }
    }
    Ok(out)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// Replaces `target` with `staging`, keeping the old package until the new one is in.
pub(crate) fn swap_in(staging: &Path, target: &Path) -> Result<(), PlatformError> {
    let old = target.with_file_name(format!(
        ".{}.old-{}",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("plugin"),
        std::process::id()
    ));
    let had_old = target.exists();
    if had_old {
        std::fs::rename(target, &old).map_err(|source| PlatformError::Io {
            what: format!("moving {} aside", target.display()),
            source,
        })?;
    }
    if let Err(source) = std::fs::rename(staging, target) {
        if had_old {
            let _ = std::fs::rename(&old, target);
        }
        return Err(PlatformError::Io {
            what: format!("moving the new package into {}", target.display()),
            source,
        });
    }
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|source| PlatformError::Io {
            what: format!("removing the previous package {}", old.display()),
            source,
        })?;
    }
    Ok(())
}

/// Removes a database file with its `-wal` and `-shm`, telling `removed` each one.
fn remove_database_files(
    file: &Path,
    mut removed: impl FnMut(PathBuf),
) -> Result<(), PlatformError> {
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", file.display()));
        if path.exists() {
            std::fs::remove_file(&path).map_err(|source| PlatformError::Io {
                what: format!("removing {}", path.display()),
                source,
            })?;
            removed(path);
        }
    }
    Ok(())
}

/// Every installed plugin, by id.
pub fn list(app: &App) -> Result<Vec<PluginRecord>, PlatformError> {
    Ok(registry::list(&app.open_migrated_core()?)?)
}

/// The installed plugin `id`.
pub fn get(app: &App, id: &str) -> Result<PluginRecord, PlatformError> {
    installed(&app.open_migrated_core_read_only()?, id)
}

fn installed(
    conn: &dyn sovereign_db_core::CoreAccess,
    id: &str,
) -> Result<PluginRecord, PlatformError> {
    registry::get(conn, id)?.ok_or_else(|| PlatformError::NotRegistered { id: id.to_owned() })
}

/// What removing a plugin dropped (with `purge`): tables or files.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Removed {
    /// Tables dropped from the shared store, or files removed.
    pub dropped: Vec<String>,
}

/// Unregisters a plugin; with `purge` its tables (or its isolated file) go too.
pub fn remove(app: &App, id: &str, purge: bool) -> Result<Removed, PlatformError> {
    let core = app.open_migrated_core()?;
    let record = installed(&core, id)?;
    let mut removed = Removed::default();
    if let PluginStore::Postgres(pg) = app.plugin_store() {
        remove_postgres(pg, id, record.manifest.database, purge, &mut removed)?;
    } else if let PluginStore::Mysql(my) = app.plugin_store() {
        remove_mysql(my, id, purge, &mut removed)?;
    } else if purge {
        let location = app.store_location("removing a plugin")?;
        match record.manifest.database {
            DatabaseMode::Shared => {
                let store = TrustedPluginStore::open_shared(&location.shared_store)?;
                removed.dropped = store.drop_plugin_data(id)?;
            }
            DatabaseMode::Isolated => {
                remove_database_files(&location.file_for(id, DatabaseMode::Isolated), |p| {
                    removed.dropped.push(p.display().to_string())
                })?;
            }
        }
    }
    registry::unregister(&core, id)?;
    registry::forget_package(&core, id)?;
    sovereign_db_core::audit::record(
        &core,
        None,
        "plugin.remove",
        Some(&format!("plugin:{id}")),
        Some(&serde_json::json!({ "purge": purge })),
    )?;
    Ok(removed)
}

/// On MySQL: with `purge` the plugin's account and database are dropped; without, the
/// account gets a password nobody knows (its data stays for a later install, which sets
/// a new one).
fn remove_mysql(
    my: &crate::MyPluginStore,
    id: &str,
    purge: bool,
    removed: &mut Removed,
) -> Result<(), PlatformError> {
    let mut owner = my.connect_owner()?;
    let (call, params): (&str, mysql::Params) = if purge {
        (
            "CALL sv_admin.drop_plugin_account(?)",
            mysql::Params::from((id,)),
        )
    } else {
        (
            "CALL sv_admin.create_plugin_account(?, ?, ?)",
            mysql::Params::from((id, generate_password(), serving_connection_limit())),
        )
    };
    mysql::prelude::Queryable::exec_drop(&mut owner, call, params).map_err(|source| {
        sovereign_mysql::MyError::Statement {
            statement: call.into(),
            source,
        }
    })?;
    if purge {
        removed.dropped.push(my.describe_plugin(id));
    }
    Ok(())
}

/// On PostgreSQL: the role's mirror grants become the new manifest's (as the store's
/// owner), then the package's new `migrations/postgres/` apply as the plugin's role,
/// all or none.
fn upgrade_data_postgres(
    core: &dyn sovereign_db_core::CoreAccess,
    pg: &crate::PgPluginStore,
    source: &Path,
    manifest: &Manifest,
    grants: &[(String, String)],
) -> Result<Vec<String>, PlatformError> {
    let id = &manifest.id;
    let password = upgrade_login(core, manifest, Backend::Postgres)?;
    let role = sovereign_postgres::PluginRole {
        id: id.clone(),
        password: password.clone(),
        grants: grants.to_vec(),
        connection_limit: 1,
        statement_ms: manifest.limits.statement_ms,
    };
    let grant = role.grant_sql();
    pg.connect_owner()?
        .batch_execute(&grant)
        .map_err(|source| sovereign_postgres::PgError::Statement {
            statement: grant.clone(),
            source,
        })?;
    let set = sovereign_db::MigrationSet::from_dir(
        &sovereign_db_plugins::migration_scope(id),
        &source.join("migrations").join("postgres"),
    )?;
    let mut db = pg.open_plugin(id, manifest.database, &password, manifest.limits)?;
    Ok(db.migrate_all_or_nothing(&set)?)
}

/// On PostgreSQL: `purge` drops the plugin's role with its schema and events (and an
/// isolated plugin's database); without it the data stays (a later install migrates it
/// on) and the role's password is replaced by one nobody knows.
fn remove_postgres(
    pg: &crate::PgPluginStore,
    id: &str,
    mode: DatabaseMode,
    purge: bool,
    removed: &mut Removed,
) -> Result<(), PlatformError> {
    let mut owner = pg.connect_owner()?;
    if purge
        && mode == DatabaseMode::Isolated
        && sovereign_postgres::isolated::drop_database(&mut owner, pg.store_url(), id)?
    {
        removed
            .dropped
            .push(format!("database {}", pg.plugin_database(id, mode)?));
    }
    let (sql, shown) = if purge {
        let drop = sovereign_postgres::PluginRole::drop_sql(id);
        (drop.clone(), drop)
    } else {
        let locked = sovereign_postgres::PluginRole {
            id: id.to_owned(),
            password: generate_password(),
            grants: vec![],
            connection_limit: 1,
            statement_ms: 1,
        };
        (
            locked.create_sql(),
            format!("SELECT sv_admin.create_plugin_role('{id}', '...', ...)"),
        )
    };
    owner
        .batch_execute(&sql)
        .map_err(|source| sovereign_postgres::PgError::Statement {
            statement: shown,
            source,
        })?;
    if purge {
        removed.dropped.push(format!(
            "schema {id} and role svp_{id} of {}",
            pg.describe()
        ));
    }
    Ok(())
}

/// Serves (or stops serving) a plugin's routes; its data stays. `actor` is the
/// administrator doing it (`None` for an operator command), for the audit log.
pub fn set_enabled(
    app: &App,
    id: &str,
    enabled: bool,
    actor: Option<i64>,
) -> Result<(), PlatformError> {
    let core = app.open_migrated_core()?;
    installed(&core, id)?;
    registry::set_enabled(&core, id, enabled)?;
    let action = if enabled {
        "plugin.enable"
    } else {
        "plugin.disable"
    };
    sovereign_db_core::audit::record(&core, actor, action, Some(&format!("plugin:{id}")), None)?;
    Ok(())
}

/// How plugin `id` runs; a package with a manifest that is not installed is refused.
fn runnable_config(
    app: &App,
    id: &str,
) -> Result<sovereign_db_plugins::PluginDbConfig, PlatformError> {
    app.plugin_db_config(id)?
        .ok_or_else(|| PlatformError::NotInstalledPackage {
            id: id.to_owned(),
            dir: app.package_dir(id),
        })
}

/// Opens the plugin's fenced connection, as the extension host would.
pub fn open_fenced(app: &App, id: &str) -> Result<Box<dyn FencedConnection>, PlatformError> {
    let config = runnable_config(app, id)?;
    Ok(match app.plugin_store() {
        PluginStore::Sqlite(location) => Box::new(PluginDb::open(location, config)?),
        PluginStore::Postgres(pg) => {
            let core = app.open_migrated_core()?;
            let password = registry::store_login(&core, id)?.ok_or_else(|| {
                PlatformError::NotInstalledPackage {
                    id: id.to_owned(),
                    dir: app.package_dir(id),
                }
            })?;
            Box::new(pg.open_plugin(id, config.mode, &password, config.limits)?)
        }
        PluginStore::Mysql(my) => {
            let core = app.open_migrated_core()?;
            let password = registry::store_login(&core, id)?.ok_or_else(|| {
                PlatformError::NotInstalledPackage {
                    id: id.to_owned(),
                    dir: app.package_dir(id),
                }
            })?;
            Box::new(sovereign_mysql::MyPluginDb::open(
                &sovereign_mysql::MyPluginConfig {
                    plugin_id: id.to_owned(),
                    url: my.plugin_login(id, &password),
                    limits: config.limits,
                },
            )?)
        }
    })
}

/// The answer to one statement run as a plugin.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SqlAnswer {
    /// Rows, each a JSON object by column name (an array in JSON).
    Rows(Vec<serde_json::Map<String, serde_json::Value>>),
    /// A change.
    Changed {
        /// Rows inserted, updated or deleted.
        rows_affected: u64,
        /// `last_insert_rowid()` after it.
        last_insert_id: i64,
    },
}

/// Runs one statement exactly as plugin `id` would (same fence, same limits), in a
/// transaction of its own. An administrator doing it over HTTP (`actor`) is audited.
pub fn sql(
    app: &App,
    id: &str,
    statement: &str,
    actor: Option<i64>,
) -> Result<SqlAnswer, PlatformError> {
    let mut db = open_fenced(app, id)?;
    if let Some(actor) = actor {
        let text: String = statement.chars().take(500).collect();
        sovereign_db_core::audit::record(
            &app.open_migrated_core()?,
            Some(actor),
            "plugin.sql",
            Some(&format!("plugin:{id}")),
            Some(&serde_json::json!({ "statement": text })),
        )?;
    }
    let outcome = db.execute_alone(statement, &[])?;
    Ok(match outcome {
        sovereign_db_plugins::Outcome::Rows { columns, rows } => SqlAnswer::Rows(
            rows.iter()
                .map(|row| {
                    columns
                        .iter()
                        .cloned()
                        .zip(row.iter().map(sovereign_db_plugins::SqlValue::to_json))
                        .collect()
                })
                .collect(),
        ),
        sovereign_db_plugins::Outcome::Changed {
            rows_affected,
            last_insert_id,
        } => SqlAnswer::Changed {
            rows_affected,
            last_insert_id,
        },
    })
}

/// The newest `limit` events of plugin `id` the core stored, newest first.
pub fn events(
    app: &App,
    id: &str,
    limit: u32,
) -> Result<Vec<sovereign_db_core::events::StoredEvent>, PlatformError> {
    Ok(sovereign_db_core::events::list(
        &app.open_migrated_core_read_only()?,
        id,
        limit,
    )?)
}

/// The plugin's own tables, views, indexes and triggers as `(kind, name)`.
pub fn objects(app: &App, id: &str) -> Result<Vec<(String, String)>, PlatformError> {
    let mode = runnable_config(app, id)?.mode;
    let path = app
        .store_location("listing a plugin's objects")?
        .file_for(id, mode);
    let store = match mode {
        DatabaseMode::Shared => TrustedPluginStore::open_shared(&path)?,
        DatabaseMode::Isolated => TrustedPluginStore::open_isolated(&path, id)?,
    };
    Ok(store.plugin_objects(id)?)
}

/// What a move did.
#[derive(Debug, Clone, Serialize)]
pub enum Moved {
    /// The plugin was already in that mode.
    AlreadyThere,
    /// Tables moved, with their row counts.
    Tables(Vec<(String, u64)>),
}

/// Moves an installed plugin's tables between the shared store and its own file: every
/// table (schema and rows), view, index and trigger, plus its migration tracking rows,
/// copied in one transaction on the destination, checked by row counts, and only then
/// dropped from the source and the registry updated.
pub fn move_to(app: &App, id: &str, to: DatabaseMode) -> Result<Moved, PlatformError> {
    let core = app.open_migrated_core()?;
    let mut record = installed(&core, id)?;
    let from = record.manifest.database;
    if from == to {
        return Ok(Moved::AlreadyThere);
    }
    let location = app.store_location("moving a plugin between modes")?;
    let open = |mode: DatabaseMode| match mode {
        DatabaseMode::Shared => TrustedPluginStore::open_shared(&location.shared_store),
        DatabaseMode::Isolated => {
            TrustedPluginStore::open_isolated(&location.file_for(id, DatabaseMode::Isolated), id)
        }
    };
    let source = open(from)?;
    let destination = open(to)?;
    let moved = destination.copy_plugin_from(&source, id)?;
    source.drop_plugin_data(id)?;
    record.manifest.database = to;
    registry::register(&core, &record)?;
    sovereign_db_core::audit::record(
        &core,
        None,
        "plugin.move",
        Some(&format!("plugin:{id}")),
        Some(&serde_json::json!({ "from": from.as_str(), "to": to.as_str() })),
    )?;
    Ok(Moved::Tables(moved))
}

/// Per plugin: tables, rows, bytes; per file: size and free pages; the mirror's size.
/// On PostgreSQL: per plugin schema, its tables' sizes (`pg_total_relation_size`) and
/// the statistics' row counts (estimates), the database's size, the `core` schema's.
pub fn inspect(
    app: &App,
    only: Option<&str>,
) -> Result<sovereign_ops::inspect::InspectReport, PlatformError> {
    match app.plugin_store() {
        PluginStore::Postgres(store) => return inspect_postgres(store, only),
        PluginStore::Mysql(store) => {
            return Ok(sovereign_ops::my_store::inspect(&store.store, only)?);
        }
        PluginStore::Sqlite(_) => {}
    }
    let layout = app.plugin_files("inspecting plugin data")?;
    Ok(sovereign_ops::inspect::inspect(
        &layout.plugins,
        &layout.isolated_files()?,
        layout.mirror_file.as_deref(),
        only,
    )?)
}

fn inspect_postgres(
    store: &crate::PgPluginStore,
    only: Option<&str>,
) -> Result<sovereign_ops::inspect::InspectReport, PlatformError> {
    use sovereign_ops::inspect::{FileUsage, InspectReport};
    let mut owner = store.connect_owner()?;
    let mut files = Vec::new();
    let mut plugins = Vec::new();
    let (database_bytes, page_size, mut usages) =
        schema_usages(&mut owner, only, store, DatabaseMode::Shared)?;
    files.push(FileUsage {
        path: PathBuf::from(format!("postgres://{}", store.describe())),
        bytes: database_bytes,
        // PostgreSQL reuses freed space itself (autovacuum); nothing to reclaim here.
        free_pages: 0,
        page_size,
    });
    plugins.append(&mut usages);
    for (id, database) in sovereign_postgres::isolated::databases(&mut owner, store.store_url())? {
        if only.is_some_and(|only| only != id) {
            continue;
        }
        let mut own = sovereign_postgres::isolated::connect_owner_to(store.store_url(), &database)?;
        let (bytes, page_size, mut usages) =
            schema_usages(&mut own, Some(&id), store, DatabaseMode::Isolated)?;
        files.push(FileUsage {
            path: PathBuf::from(format!(
                "postgres://{}/{database}",
                store.store_url().server
            )),
            bytes,
            free_pages: 0,
            page_size,
        });
        plugins.append(&mut usages);
    }
    let mirror = "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'core' AND c.relkind = 'r'";
    let mirror_bytes: i64 = owner
        .query_one(mirror, &[])
        .map_err(pg_statement(mirror))?
        .get(0);
    Ok(InspectReport {
        files,
        plugins,
        mirror_bytes: mirror_bytes.max(0) as u64,
    })
}

fn pg_statement(statement: &str) -> impl FnOnce(postgres::Error) -> sovereign_postgres::PgError {
    let statement = statement.to_owned();
    move |source| sovereign_postgres::PgError::Statement { statement, source }
}

/// The plugin schemas of the database `client` is connected to (the ones owned by a
/// plugin's role, `svp_<id>` owning `<id>`), with their tables' sizes and the
/// statistics' row counts; and the database's size and page size.
fn schema_usages(
    client: &mut postgres::Client,
    only: Option<&str>,
    store: &crate::PgPluginStore,
    mode: DatabaseMode,
) -> Result<(u64, u64, Vec<sovereign_ops::inspect::PluginUsage>), PlatformError> {
    use sovereign_ops::inspect::{PluginUsage, TableUsage};
    let database =
        "SELECT pg_database_size(current_database()), current_setting('block_size')::bigint";
    let row = client
        .query_one(database, &[])
        .map_err(pg_statement(database))?;
    let (database_bytes, block_size): (i64, i64) = (row.get(0), row.get(1));
    let tables = "SELECT n.nspname::text, c.relname::text,
                         coalesce(s.n_live_tup, 0), pg_total_relation_size(c.oid)
                  FROM pg_class c
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                  JOIN pg_roles r ON r.oid = n.nspowner AND r.rolname = 'svp_' || n.nspname
                  LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
                  WHERE c.relkind IN ('r', 'p') AND ($1::text IS NULL OR n.nspname = $1)
                  ORDER BY 1, 2";
    let mut plugins: Vec<PluginUsage> = Vec::new();
    for row in client
        .query(tables, &[&only])
        .map_err(pg_statement(tables))?
    {
        let (id, table): (String, String) = (row.get(0), row.get(1));
        let usage = TableUsage {
            name: table,
            rows: row.get::<_, i64>(2).max(0) as u64,
            bytes: row.get::<_, i64>(3).max(0) as u64,
        };
        match plugins.last_mut().filter(|p| p.id == id) {
            Some(plugin) => {
                plugin.bytes += usage.bytes;
                plugin.tables.push(usage);
            }
            None => plugins.push(PluginUsage {
                file: PathBuf::from(store.describe_plugin(&id, mode)),
                id,
                bytes: usage.bytes,
                tables: vec![usage],
                share_of_file: 0.0,
            }),
        }
    }
    for plugin in &mut plugins {
        plugin.share_of_file = plugin.bytes as f64 / database_bytes.max(1) as f64;
    }
    Ok((
        database_bytes.max(0) as u64,
        block_size.max(0) as u64,
        plugins,
    ))
}

/// What a purge would drop, for the operator to confirm.
#[derive(Debug, Clone, Serialize)]
pub struct PurgePlan {
    /// Plugin id.
    pub id: String,
    /// Its usage now.
    pub usage: sovereign_ops::inspect::PluginUsage,
    mode: DatabaseMode,
}

/// Looks at what purging plugin `id` would drop.
pub fn plan_purge(app: &App, id: &str) -> Result<PurgePlan, PlatformError> {
    if let PluginStore::Postgres(_) | PluginStore::Mysql(_) = app.plugin_store() {
        sovereign_db_plugins::check_plugin_id(id)?;
        let usage = inspect(app, Some(id))?
            .plugins
            .into_iter()
            .find(|p| p.id == id)
            .ok_or_else(|| PlatformError::NothingToPurge { id: id.to_owned() })?;
        let mode = app
            .registered(id)?
            .map_or(DatabaseMode::Shared, |record| record.manifest.database);
        return Ok(PurgePlan {
            id: id.to_owned(),
            usage,
            mode,
        });
    }
    let layout = app.plugin_files("purging plugin data")?;
    let report = sovereign_ops::inspect::inspect(
        &layout.plugins,
        &layout.isolated_files()?,
        None,
        Some(id),
    )?;
    let usage = report
        .plugins
        .into_iter()
        .find(|p| p.id == id)
        .ok_or_else(|| PlatformError::NothingToPurge { id: id.to_owned() })?;
    let isolated = app
        .store_location("purging plugin data")?
        .file_for(id, DatabaseMode::Isolated);
    let mode = if usage.file == isolated {
        DatabaseMode::Isolated
    } else {
        DatabaseMode::Shared
    };
    Ok(PurgePlan {
        id: id.to_owned(),
        usage,
        mode,
    })
}

/// Drops one plugin's data, after writing a backup of it under `backups/` (unless
/// `backup` is false).
pub fn purge(
    app: &App,
    plan: &PurgePlan,
    backup: bool,
) -> Result<sovereign_ops::inspect::PurgeReport, PlatformError> {
    let backups = app.config().base_dir.join("backups");
    if let PluginStore::Mysql(store) = app.plugin_store() {
        // Its routines are dumped as its own account, whose password the core keeps.
        let password =
            sovereign_db_core::plugins::store_login(&app.open_migrated_core()?, &plan.id)?;
        return Ok(sovereign_ops::my_store::purge_plugin(
            &store.store,
            &plan.id,
            password.as_deref(),
            backup.then_some(backups.as_path()),
        )?);
    }
    if let PluginStore::Postgres(store) = app.plugin_store() {
        return Ok(sovereign_ops::pg_backup::purge_plugin(
            store.store_url(),
            &plan.id,
            plan.mode == DatabaseMode::Isolated,
            backup.then_some(backups.as_path()),
        )?);
    }
    let layout = app.plugin_files("purging plugin data")?;
    let isolated = app
        .store_location("purging plugin data")?
        .file_for(&plan.id, DatabaseMode::Isolated);
    Ok(sovereign_ops::inspect::purge(
        &layout.plugins,
        Some(&isolated),
        &plan.id,
        plan.mode,
        backup.then_some(backups.as_path()),
    )?)
}

/// One file vacuumed.
#[derive(Debug, Clone, Serialize)]
pub struct Vacuumed {
    /// The file.
    pub file: PathBuf,
    /// Bytes before.
    pub before: u64,
    /// Bytes after.
    pub after: u64,
    /// A full VACUUM ran (the file was not set up for incremental vacuum).
    pub full: bool,
}

/// Reclaims free pages of the plugin store and the isolated files; on PostgreSQL,
/// `VACUUM (ANALYZE)` of every table of the plugin database, each as its owner; on
/// MySQL, `OPTIMIZE TABLE` of every table of the plugin databases.
pub fn vacuum(app: &App) -> Result<Vec<Vacuumed>, PlatformError> {
    if let PluginStore::Mysql(store) = app.plugin_store() {
        let (before, after) = sovereign_ops::my_store::vacuum(&store.store)?;
        return Ok(vec![Vacuumed {
            file: PathBuf::from(format!("mysql://{}", store.describe())),
            before,
            after,
            full: false,
        }]);
    }
    if let PluginStore::Postgres(store) = app.plugin_store() {
        let (before, after) = sovereign_ops::pg_backup::vacuum(&store.store)?;
        return Ok(vec![Vacuumed {
            file: PathBuf::from(format!("postgres://{}", store.describe())),
            before,
            after,
            full: false,
        }]);
    }
    let layout = app.plugin_files("vacuum")?;
    let mut files = vec![layout.plugins.clone()];
    files.extend(layout.isolated_files()?.into_iter().map(|(_, p)| p));
    let mut out = Vec::new();
    for file in files.into_iter().filter(|f| f.exists()) {
        let (before, after, full) = sovereign_ops::inspect::vacuum(&file)?;
        out.push(Vacuumed {
            file,
            before,
            after,
            full,
        });
    }
    Ok(out)
}

/// Asks the running platform to restart its extension host (also out of a crash loop);
/// returns the platform's pid. With both stores on PostgreSQL, every kernel running from
/// this data directory restarts its own host (kernels on other machines: run it there).
pub fn restart_host(app: &App) -> Result<Vec<i32>, PlatformError> {
    let pids = crate::run::running_pids(app)?;
    for pid in &pids {
        crate::run::signal(*pid, rustix::process::Signal::USR1)?;
    }
    Ok(pids)
}
