//! Backups and restores of an installation whose two stores are PostgreSQL databases.
//!
//! A backup holds `pg_dump` directory-format dumps with the same manifest as a backup of
//! files (every file's size and SHA-256, schema versions, the mirror's watermark, the
//! core's acknowledged sequence number), format [`FORMAT_POSTGRES`]:
//!
//! - `plugins.pgdump/store`: the plugin database's bookkeeping and mirrors (schemas
//!   `public` and `core`; `sv_admin` belongs to the administrator and is not dumped);
//! - `plugins.pgdump/<id>`: one plugin's schema, dumped as the plugin's role (the store's
//!   owner may `SET ROLE` to it, and nothing else may read it);
//! - `core.pgdump`: the core database.
//!
//! As with files, the plugin database is captured before the core, so the mirror's
//! watermark is never ahead of its core; all dumps of one database come from one
//! snapshot exported by a transaction held open while they run, and the watermark and
//! schema versions are read in that same snapshot.
//!
//! A restore first takes a backup of what is there (the `pre-restore-<time>` directory:
//! nothing is lost), then replaces the core database's schema in one transaction and the
//! plugin database's schemas in another; if the second fails, the core is put back from
//! that first backup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sovereign_postgres::dump::{ClientTools, DumpRequest, ExportedSnapshot};
use sovereign_postgres::{PgError, PluginRole, StoreUrl, plugin_role_name};

use crate::backup::{
    BackupFile, BackupOptions, ByteProgress, FORMAT_POSTGRES, Manifest, PostgresDump,
};
use crate::restore::RestoreReport;
use crate::{OpsError, file_digest, io};

/// The two PostgreSQL stores of an installation.
#[derive(Debug, Clone)]
pub struct PostgresStores {
    /// The core database, as its owner (`svc_core`).
    pub core: StoreUrl,
    /// The plugin database, as its owner (`svc_plugins`).
    pub plugins: StoreUrl,
    /// The data directory (where a restore keeps what it replaced).
    pub data_dir: PathBuf,
}

impl PostgresStores {
    fn login(url: &StoreUrl) -> String {
        url.login_as(&url.role, &url.password)
    }

    fn describe(url: &StoreUrl) -> String {
        format!(
            "database {} on {} (as {})",
            url.database, url.server, url.role
        )
    }
}

fn statement(sql: &str) -> impl FnOnce(postgres::Error) -> OpsError + '_ {
    move |source| {
        OpsError::Postgres(PgError::Statement {
            statement: sql.to_owned(),
            source,
        })
    }
}

/// `scope -> highest version` from a `_sv_migrations` table (`qualified`), if it exists.
fn schema_versions(
    client: &mut postgres::Client,
    qualified: &str,
) -> Result<BTreeMap<String, u32>, OpsError> {
    let exists = "SELECT to_regclass($1) IS NOT NULL";
    let present: bool = client
        .query_one(exists, &[&qualified])
        .map_err(statement(exists))?
        .get(0);
    if !present {
        return Ok(BTreeMap::new());
    }
    let query = format!("SELECT scope, max(version) FROM {qualified} GROUP BY scope");
    Ok(client
        .query(&query, &[])
        .map_err(statement(&query))?
        .into_iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i32>(1) as u32))
        .collect())
}

fn single_i64(client: &mut postgres::Client, query: &str) -> Result<i64, OpsError> {
    Ok(client
        .query_one(query, &[])
        .map_err(statement(query))?
        .get::<_, Option<i64>>(0)
        .unwrap_or(0))
}

fn server_version(client: &mut postgres::Client) -> Result<String, OpsError> {
    let query = "SHOW server_version";
    Ok(client
        .query_one(query, &[])
        .map_err(statement(query))?
        .get(0))
}

/// The plugin schemas of the plugin database: those owned by `svp_<schema>`.
fn plugin_schemas(client: &mut impl postgres::GenericClient) -> Result<Vec<String>, OpsError> {
    let query = "SELECT n.nspname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
                 WHERE r.rolname = 'svp_' || n.nspname ORDER BY 1";
    Ok(client
        .query(query, &[])
        .map_err(statement(query))?
        .into_iter()
        .map(|row| row.get::<_, String>(0))
        // Only names a plugin id could have made (the id goes into SQL as a name).
        .filter(|id| sovereign_db_plugins::check_plugin_id(id).is_ok())
        .collect())
}

/// Takes a backup of both PostgreSQL stores into `options.out` (written as
/// `<out>.partial` and renamed when complete).
pub fn backup(
    stores: &PostgresStores,
    options: &BackupOptions,
    progress: ByteProgress<'_>,
) -> Result<Manifest, OpsError> {
    let tools = ClientTools::find()?;
    let partial = options.start_partial()?;
    let mut dumps = Vec::new();
    let mut versions = BTreeMap::new();
    let mut mirror_watermark = 0;
    let mut done_bytes = 0;
    progress(0, 0);

    // The plugin database first (see the module documentation).
    if options.include_plugin_data {
        let url = &stores.plugins;
        let mut snapshot =
            ExportedSnapshot::begin(&PostgresStores::login(url), &PostgresStores::describe(url))?;
        let client = snapshot.client();
        let version = server_version(client)?;
        let size = single_i64(client, "SELECT pg_database_size(current_database())")?;
        progress(0, size as u64);
        mirror_watermark = single_i64(
            client,
            "SELECT CASE WHEN to_regclass('public._sv_mirror_state') IS NULL THEN 0 ELSE
               (SELECT value FROM public._sv_mirror_state WHERE key = 'watermark') END",
        )?;
        versions.extend(schema_versions(client, "public._sv_migrations")?);
        // An isolated plugin's data is in its own database (its schema here is empty).
        let isolated = sovereign_postgres::isolated::databases(client, url)?;
        let plugins: Vec<String> = plugin_schemas(client)?
            .into_iter()
            .filter(|id| !options.exclude_plugins.contains(id))
            .filter(|id| !isolated.iter().any(|(own, _)| own == id))
            .collect();
        for id in &plugins {
            versions.extend(plugin_versions(client, id)?);
        }
        crate::create_private_dir(&partial.join("plugins.pgdump"))?;
        let mut parts = vec![DumpPart {
            name: "plugins.pgdump/store".to_owned(),
            role: "plugins".to_owned(),
            schemas: vec!["public".to_owned(), "core".to_owned()],
            as_role: None,
            isolated: false,
        }];
        parts.extend(
            plugins
                .iter()
                .map(|id| DumpPart::plugin_schema(id, format!("plugins.pgdump/{id}"), false)),
        );
        dump_parts(
            &tools, url, &snapshot, &partial, parts, &version, &mut dumps,
        )?;
        snapshot.finish()?;
        done_bytes += size as u64;
        progress(done_bytes, done_bytes);
        // Each isolated plugin's own database, from a snapshot of its own.
        for (id, database) in isolated {
            if options.exclude_plugins.contains(&id) {
                continue;
            }
            let mut own = url.clone();
            own.database = database;
            let mut snapshot = ExportedSnapshot::begin(
                &PostgresStores::login(&own),
                &PostgresStores::describe(&own),
            )?;
            versions.extend(plugin_versions(snapshot.client(), &id)?);
            let dir = format!("plugins.pgdump/isolated-{id}");
            crate::create_private_dir(&partial.join(&dir))?;
            let parts = vec![
                DumpPart {
                    name: format!("{dir}/store"),
                    role: format!("plugin-store:{id}"),
                    schemas: vec!["public".to_owned()],
                    as_role: None,
                    isolated: true,
                },
                DumpPart::plugin_schema(&id, format!("{dir}/schema"), true),
            ];
            dump_parts(
                &tools, &own, &snapshot, &partial, parts, &version, &mut dumps,
            )?;
            snapshot.finish()?;
        }
    }

    let url = &stores.core;
    let mut snapshot =
        ExportedSnapshot::begin(&PostgresStores::login(url), &PostgresStores::describe(url))?;
    let client = snapshot.client();
    let version = server_version(client)?;
    let size = single_i64(client, "SELECT pg_database_size(current_database())")? as u64;
    progress(done_bytes, done_bytes + size);
    let core_acked_seq = single_i64(
        client,
        "SELECT CASE WHEN to_regclass('public._sv_sync_state') IS NULL THEN 0 ELSE
           (SELECT CAST(value AS bigint) FROM public._sv_sync_state WHERE key = 'acked_seq') END",
    )?;
    versions.extend(schema_versions(client, "public._sv_migrations")?);
    dump_parts(
        &tools,
        url,
        &snapshot,
        &partial,
        vec![DumpPart {
            name: "core.pgdump".to_owned(),
            role: "core".to_owned(),
            schemas: vec![],
            as_role: None,
            isolated: false,
        }],
        &version,
        &mut dumps,
    )?;
    snapshot.finish()?;
    progress(done_bytes + size, done_bytes + size);

    let mut files = Vec::new();
    for dump in &dumps {
        for path in files_in(&partial.join(&dump.name))? {
            let (sha256, size) = file_digest(&path)?;
            let name = path
                .strip_prefix(&partial)
                .expect("a dump's files are inside the backup")
                .to_string_lossy()
                .into_owned();
            files.push(BackupFile {
                name,
                role: dump.role.clone(),
                size,
                sha256,
            });
        }
    }
    let taken = crate::backup::Taken {
        files,
        schema_versions: versions,
        mirror_watermark,
        core_acked_seq,
    };
    Manifest {
        postgres_dumps: dumps,
        ..Manifest::of(FORMAT_POSTGRES, taken, options)
    }
    .complete(&partial, options)
}

/// One `pg_dump` of a backup.
struct DumpPart {
    name: String,
    role: String,
    schemas: Vec<String>,
    as_role: Option<String>,
    isolated: bool,
}

impl DumpPart {
    /// Plugin `id`'s schema, dumped as its role.
    fn plugin_schema(id: &str, name: String, isolated: bool) -> DumpPart {
        DumpPart {
            name,
            role: format!("plugin:{id}"),
            schemas: vec![id.to_owned()],
            as_role: Some(plugin_role_name(id)),
            isolated,
        }
    }
}

/// Dumps `parts` of `url`'s database from `snapshot` into `partial`, recording each.
fn dump_parts(
    tools: &ClientTools,
    url: &StoreUrl,
    snapshot: &ExportedSnapshot,
    partial: &Path,
    parts: Vec<DumpPart>,
    server_version: &str,
    dumps: &mut Vec<PostgresDump>,
) -> Result<(), OpsError> {
    for part in parts {
        tools.dump(
            url,
            &DumpRequest {
                out: &partial.join(&part.name),
                snapshot: Some(snapshot.id()),
                schemas: &part.schemas,
                role: part.as_role.as_deref(),
            },
        )?;
        dumps.push(PostgresDump {
            name: part.name,
            role: part.role,
            server_version: server_version.to_owned(),
            isolated: part.isolated,
        });
    }
    Ok(())
}

/// Plugin `id`'s migration versions, read as its role inside the current transaction.
fn plugin_versions(
    client: &mut postgres::Client,
    id: &str,
) -> Result<BTreeMap<String, u32>, OpsError> {
    let set_role = format!("SET LOCAL ROLE {}", plugin_role_name(id));
    client
        .batch_execute(&set_role)
        .map_err(statement(&set_role))?;
    let versions = schema_versions(client, &format!("{id}._sv_migrations"))?;
    client
        .batch_execute("RESET ROLE")
        .map_err(statement("RESET ROLE"))?;
    Ok(versions)
}

/// The files under `dir`, recursively, sorted.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>, OpsError> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(format!("listing {}", dir.display())))? {
            let path = entry
                .map_err(io(format!("listing {}", dir.display())))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Checks each dump of a verified manifest with `pg_restore --list` (the dump can be
/// read) and that it holds what its role says: the core's store marker, the plugin
/// store's event outbox, the plugin's schema.
pub(crate) fn check_dumps(dir: &Path, manifest: &Manifest, problems: &mut Vec<String>) {
    if manifest.postgres_dumps.is_empty() {
        return;
    }
    let tools = match ClientTools::find() {
        Ok(tools) => tools,
        Err(e) => {
            problems.push(format!("cannot check the PostgreSQL dumps: {e}"));
            return;
        }
    };
    for dump in &manifest.postgres_dumps {
        let path = dir.join(&dump.name);
        if dump.name.contains("..") || Path::new(&dump.name).is_absolute() {
            problems.push(format!("{}: not a path inside the backup", dump.name));
            continue;
        }
        let entries = match tools.list(&path) {
            Ok(entries) => entries,
            Err(e) => {
                problems.push(format!("{}: {e}", dump.name));
                continue;
            }
        };
        let holds = match dump.role.as_str() {
            "core" => entries.iter().any(|e| e.is_table("public", "_sv_store")),
            role if role == "plugins" || role.starts_with("plugin-store:") => entries
                .iter()
                .any(|e| e.is_table("public", "_sv_event_outbox")),
            role => match role.strip_prefix("plugin:") {
                Some(id) => entries
                    .iter()
                    .any(|e| e.kind == "SCHEMA" && e.object.get(1) == Some(&id.to_owned())),
                None => {
                    problems.push(format!("{}: unknown role {role:?}", dump.name));
                    continue;
                }
            },
        };
        if !holds {
            problems.push(format!(
                "{}: not a dump of the {} (its store marker or schema is missing)",
                dump.name, dump.role
            ));
        }
        if !manifest
            .files
            .iter()
            .any(|f| f.name.starts_with(&format!("{}/", dump.name)))
        {
            problems.push(format!(
                "{}: the manifest lists none of its files",
                dump.name
            ));
        }
    }
}

/// Whether `name` (a manifest file) is part of one of the manifest's dumps.
pub(crate) fn in_dump(manifest: &Manifest, name: &str) -> bool {
    manifest
        .postgres_dumps
        .iter()
        .any(|d| name.starts_with(&format!("{}/", d.name)))
}

/// The plugins the restored core has on the PostgreSQL plugin store, with the passwords
/// it keeps for them: called after the core is restored.
pub type RestoredRoles<'a> = &'a dyn Fn() -> Result<Vec<PluginRole>, OpsError>;

/// Restores a verified PostgreSQL backup into `stores` (the platform must be stopped).
pub fn restore(
    stores: &PostgresStores,
    backup_dir: &Path,
    restored_roles: RestoredRoles<'_>,
) -> Result<RestoreReport, OpsError> {
    let manifest = crate::backup::verify(backup_dir)?;
    let dump_of = |role: &str| manifest.postgres_dumps.iter().find(|d| d.role == role);
    if dump_of("core").is_none() {
        return Err(OpsError::Refused(format!(
            "{} is a backup of SQLite files, but both stores are PostgreSQL databases: \
             restore it into an installation on SQLite",
            backup_dir.display()
        )));
    }
    if manifest.includes_plugin_data && dump_of("plugins").is_none() {
        return Err(OpsError::Refused(format!(
            "{} has no dump of the plugin store; it cannot be restored here",
            backup_dir.display()
        )));
    }
    let tools = ClientTools::find()?;
    let mut owner =
        postgres::Client::connect(&PostgresStores::login(&stores.plugins), postgres::NoTls)
            .map_err(|source| PgError::Connect {
                target: PostgresStores::describe(&stores.plugins),
                source,
            })?;
    let check = "SELECT to_regprocedure('sv_admin.reset_plugin_schema(text)') IS NOT NULL";
    let provisioned: bool = owner
        .query_one(check, &[])
        .map_err(statement(check))?
        .get(0);
    if !provisioned {
        return Err(OpsError::Refused(
            "the plugin database lacks sv_admin.reset_plugin_schema, which restores need: \
             apply the current role plan first (`sv postgres:roles --admin-url URL --apply`, \
             or have a DBA run the script of `--print`)"
                .into(),
        ));
    }

    // What is there now, kept whole before anything changes.
    let options = crate::restore::pre_restore(&stores.data_dir)?;
    let aside_dir = options.out.clone();
    let aside = backup(stores, &options, &|_, _| {})?;
    let scratch = tempfile::Builder::new()
        .prefix(".sv-restore-")
        .tempdir_in(&stores.data_dir)
        .map_err(io(format!(
            "creating a scratch directory in {}",
            stores.data_dir.display()
        )))?;
    let run = Restore {
        tools: &tools,
        stores,
        scratch: scratch.path(),
        restored_roles,
    };
    // The core's transaction changes nothing when it fails; anything after it is undone
    // by restoring what was there.
    run.core(backup_dir)?;
    if manifest.includes_plugin_data
        && let Err(e) = run.plugin_stores(&manifest, backup_dir)
    {
        let put_back = run
            .core(&aside_dir)
            .and_then(|()| run.plugin_stores(&aside, &aside_dir));
        return Err(crate::restore::failed_after_changes(
            &e, put_back, &aside_dir,
        ));
    }
    let mut restored = vec![format!(
        "the core: {}",
        PostgresStores::describe(&stores.core)
    )];
    if manifest.includes_plugin_data {
        restored.push(format!(
            "the plugin store: {}",
            PostgresStores::describe(&stores.plugins)
        ));
    }
    Ok(RestoreReport {
        manifest,
        aside_dir,
        restored,
    })
}

/// One restore's tools, stores and scratch directory.
struct Restore<'a> {
    tools: &'a ClientTools,
    stores: &'a PostgresStores,
    scratch: &'a Path,
    restored_roles: RestoredRoles<'a>,
}

impl Restore<'_> {
    fn core(&self, backup_dir: &Path) -> Result<(), OpsError> {
        restore_core(self.tools, &self.stores.core, backup_dir, self.scratch)
    }

    /// The plugin database in one transaction, then each isolated plugin's database in
    /// one transaction each; isolated databases of plugins the restored core does not
    /// have are dropped first (they are in the pre-restore backup).
    fn plugin_stores(&self, manifest: &Manifest, backup_dir: &Path) -> Result<(), OpsError> {
        let url = &self.stores.plugins;
        let roles = (self.restored_roles)()?;
        let mut owner = postgres::Client::connect(&PostgresStores::login(url), postgres::NoTls)
            .map_err(|source| PgError::Connect {
                target: PostgresStores::describe(url),
                source,
            })?;
        let live = plugin_schemas(&mut owner)?;
        let kept = |id: &str| {
            roles.iter().any(|r| r.id == id) || manifest.excluded_plugins.iter().any(|e| e == id)
        };
        // Before their roles go (a role with a database of its own cannot be dropped).
        for (id, _) in sovereign_postgres::isolated::databases(&mut owner, url)? {
            if !kept(&id) {
                sovereign_postgres::isolated::drop_database(&mut owner, url, &id)?;
            }
        }
        restore_plugins(
            self.tools,
            url,
            manifest,
            backup_dir,
            self.scratch,
            &roles,
            &live,
        )?;
        for dump in &manifest.postgres_dumps {
            let Some(id) = dump.role.strip_prefix("plugin:").filter(|_| dump.isolated) else {
                continue;
            };
            if !roles.iter().any(|r| r.id == id) {
                continue;
            }
            sovereign_postgres::isolated::provision(&mut owner, url, id)?;
            let mut own = url.clone();
            own.database = sovereign_postgres::isolated::database_name(url, id)?;
            let store_dump = manifest
                .postgres_dumps
                .iter()
                .find(|d| d.role == format!("plugin-store:{id}"))
                .ok_or_else(|| {
                    OpsError::Refused(format!(
                        "the backup has plugin {id}'s schema but not its database's bookkeeping"
                    ))
                })?;
            let store_file = format!("isolated-{id}-store.sql");
            let schema_file = format!("isolated-{id}.sql");
            self.tools.restore_script(
                &backup_dir.join(&store_dump.name),
                &self.scratch.join(&store_file),
                true,
            )?;
            self.tools.restore_script(
                &backup_dir.join(&dump.name),
                &self.scratch.join(&schema_file),
                true,
            )?;
            let script = self.scratch.join(format!("restore-isolated-{id}.sql"));
            write_script(
                &script,
                &format!(
                    "DROP SCHEMA IF EXISTS public CASCADE;\n\
                     CREATE SCHEMA public;\n\
                     REVOKE ALL ON SCHEMA public FROM PUBLIC;\n\
                     \\ir {store_file}\n\
                     {reset}\n\
                     SET ROLE {role};\n\
                     \\ir {schema_file}\n\
                     RESET ROLE;\n",
                    reset = sovereign_postgres::isolated::reset_schema_sql(id),
                    role = plugin_role_name(id),
                ),
            )?;
            self.tools.run_in_one_transaction(&own, &script)?;
        }
        Ok(())
    }
}

/// Replaces the core database's `public` schema by the dump's, in one transaction.
fn restore_core(
    tools: &ClientTools,
    url: &StoreUrl,
    backup_dir: &Path,
    scratch: &Path,
) -> Result<(), OpsError> {
    tools.restore_script(
        &backup_dir.join("core.pgdump"),
        &scratch.join("core.sql"),
        false,
    )?;
    let script = scratch.join("restore-core.sql");
    write_script(
        &script,
        "DROP SCHEMA IF EXISTS public CASCADE;\n\
         CREATE SCHEMA public;\n\
         REVOKE ALL ON SCHEMA public FROM PUBLIC;\n\
         \\ir core.sql\n",
    )?;
    tools.run_in_one_transaction(url, &script)?;
    Ok(())
}

/// Replaces the plugin database's bookkeeping, mirrors and plugin schemas by the
/// backup's, in one transaction: plugins the restored core no longer has lose their role
/// and schema (both are in the pre-restore backup); every plugin it has gets its role
/// with the restored core's password, and its schema back as its own role.
fn restore_plugins(
    tools: &ClientTools,
    url: &StoreUrl,
    manifest: &Manifest,
    backup_dir: &Path,
    scratch: &Path,
    roles: &[PluginRole],
    live: &[String],
) -> Result<(), OpsError> {
    let mut script = String::new();
    for id in live {
        let kept = roles.iter().any(|r| &r.id == id) || manifest.excluded_plugins.contains(id);
        if !kept {
            script.push_str(&format!("{};\n", PluginRole::drop_sql(id)));
        }
    }
    script.push_str(
        "DROP SCHEMA IF EXISTS core CASCADE;\n\
         CREATE SCHEMA core;\n\
         REVOKE ALL ON SCHEMA core FROM PUBLIC;\n\
         DROP SCHEMA IF EXISTS public CASCADE;\n\
         CREATE SCHEMA public;\n\
         REVOKE ALL ON SCHEMA public FROM PUBLIC;\n",
    );
    for role in roles {
        script.push_str(&format!("{};\n", role.create_sql()));
    }
    tools.restore_script(
        &backup_dir.join("plugins.pgdump/store"),
        &scratch.join("store.sql"),
        true,
    )?;
    script.push_str("\\ir store.sql\n");
    for dump in manifest.postgres_dumps.iter().filter(|d| !d.isolated) {
        let Some(id) = dump.role.strip_prefix("plugin:") else {
            continue;
        };
        if !roles.iter().any(|r| r.id == id) {
            tracing::warn!(
                plugin = id,
                "the restored core does not list this plugin; its schema is not restored"
            );
            continue;
        }
        let file = format!("plugin-{id}.sql");
        tools.restore_script(&backup_dir.join(&dump.name), &scratch.join(&file), true)?;
        script.push_str(&format!(
            "SELECT sv_admin.reset_plugin_schema('{id}');\nSET ROLE {};\n\\ir {file}\nRESET ROLE;\n",
            plugin_role_name(id)
        ));
    }
    for role in roles {
        script.push_str(&format!("{};\n", role.grant_sql()));
    }
    let path = scratch.join("restore-plugins.sql");
    write_script(&path, &script)?;
    tools.run_in_one_transaction(url, &path)?;
    Ok(())
}

/// Writes a script readable by its owner only (it holds passwords).
fn write_script(path: &Path, text: &str) -> Result<(), OpsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io(format!("writing {}", path.display())))
}

/// Drops plugin `id`'s data on the PostgreSQL plugin store (`store`, as its owner; in
/// its own database when `isolated`): its
/// schema is replaced by an empty one (role and grants stay) and its undelivered events
/// go, in one transaction, after a `pg_dump` of the schema into `backup_dir` (unless
/// `None`), taken as the plugin's role.
pub fn purge_plugin(
    store: &StoreUrl,
    id: &str,
    isolated: bool,
    backup_dir: Option<&Path>,
) -> Result<crate::inspect::PurgeReport, OpsError> {
    sovereign_db_plugins::check_plugin_id(id)?;
    let mut url = store.clone();
    if isolated {
        url.database = sovereign_postgres::isolated::database_name(store, id)?;
    }
    let url = &url;
    let backup = match backup_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            let out = dir.join(format!("purge-{id}-{}.pgdump", crate::stamp()));
            ClientTools::find()?.dump(
                url,
                &DumpRequest {
                    out: &out,
                    snapshot: None,
                    schemas: &[id.to_owned()],
                    role: Some(&plugin_role_name(id)),
                },
            )?;
            Some(out)
        }
        None => None,
    };
    let mut owner = postgres::Client::connect(&PostgresStores::login(url), postgres::NoTls)
        .map_err(|source| PgError::Connect {
            target: PostgresStores::describe(url),
            source,
        })?;
    let mut tx = owner.transaction().map_err(statement("BEGIN"))?;
    let tables = "SELECT c.relname::text FROM pg_class c
                  WHERE c.relnamespace = to_regnamespace($1) AND c.relkind IN ('r', 'p')
                  ORDER BY 1";
    let dropped_tables: Vec<String> = tx
        .query(tables, &[&id])
        .map_err(statement(tables))?
        .into_iter()
        .map(|row| format!("table {id}.{}", row.get::<_, String>(0)))
        .collect();
    if isolated {
        let reset = sovereign_postgres::isolated::reset_schema_sql(id);
        tx.batch_execute(&reset).map_err(statement(&reset))?;
    } else {
        let reset = "SELECT sv_admin.reset_plugin_schema($1)";
        tx.execute(reset, &[&id]).map_err(statement(reset))?;
    }
    let events = "DELETE FROM public._sv_event_outbox WHERE plugin = $1";
    let deleted = tx.execute(events, &[&id]).map_err(statement(events))?;
    tx.commit().map_err(statement("COMMIT"))?;
    let mut dropped = dropped_tables;
    if deleted > 0 {
        dropped.push(format!("{deleted} undelivered event(s)"));
    }
    Ok(crate::inspect::PurgeReport {
        backup,
        routines_backup: None,
        dropped,
    })
}

/// `VACUUM (ANALYZE)` of the plugin database's bookkeeping and mirrors (as the store's
/// owner) and of each plugin's tables (as the plugin's role, who owns them), in the
/// isolated plugins' databases too; returns the databases' size before and after. PostgreSQL reuses freed space itself: this
/// returns trailing free pages and refreshes the statistics inspect reads.
pub fn vacuum(url: &StoreUrl) -> Result<(u64, u64), OpsError> {
    let mut owner = postgres::Client::connect(&PostgresStores::login(url), postgres::NoTls)
        .map_err(|source| PgError::Connect {
            target: PostgresStores::describe(url),
            source,
        })?;
    let size = "SELECT pg_database_size(current_database())";
    let mut before = single_i64(&mut owner, size)?;
    for schema in ["public", "core"] {
        vacuum_schema(&mut owner, schema)?;
    }
    for id in plugin_schemas(&mut owner)? {
        let set_role = format!("SET ROLE {}", plugin_role_name(&id));
        owner
            .batch_execute(&set_role)
            .map_err(statement(&set_role))?;
        vacuum_schema(&mut owner, &id)?;
        owner
            .batch_execute("RESET ROLE")
            .map_err(statement("RESET ROLE"))?;
    }
    let mut after = single_i64(&mut owner, size)?;
    for (id, database) in sovereign_postgres::isolated::databases(&mut owner, url)? {
        let mut own = sovereign_postgres::isolated::connect_owner_to(url, &database)?;
        let before_own = single_i64(&mut own, size)?;
        vacuum_schema(&mut own, "public")?;
        let set_role = format!("SET ROLE {}", plugin_role_name(&id));
        own.batch_execute(&set_role).map_err(statement(&set_role))?;
        vacuum_schema(&mut own, &id)?;
        own.batch_execute("RESET ROLE")
            .map_err(statement("RESET ROLE"))?;
        after += single_i64(&mut own, size)?;
        before += before_own;
    }
    Ok((before.max(0) as u64, after.max(0) as u64))
}

/// Vacuums every table of `schema` (the current role must own them).
fn vacuum_schema(client: &mut postgres::Client, schema: &str) -> Result<(), OpsError> {
    let tables = "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')
                  ORDER BY 1";
    let names: Vec<String> = client
        .query(tables, &[&schema])
        .map_err(statement(tables))?
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    for name in names {
        let vacuum = format!("VACUUM (ANALYZE) {name}");
        client.batch_execute(&vacuum).map_err(statement(&vacuum))?;
    }
    Ok(())
}
