//! Online backups of the dual-file layout, with a manifest, and their verification.
//!
//! Each file is copied with SQLite's backup API from a read transaction opened on it
//! beforehand: a consistent snapshot of that file while the platform keeps writing. The
//! snapshots are taken one after the other, plugin stores before `core.db`, so the
//! backup's mirror watermark is never ahead of its core (after a restore, `sv sync:run`
//! either continues from the watermark or, when the core already pruned past it,
//! rebuilds the mirror from the core); the copies and checksums then run in parallel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sovereign_db::rusqlite::{Connection, OptionalExtension};
use sovereign_db::{MigrationSet, StoreKind};

use crate::{Layout, OpsError, file_digest, io, remove_db_files, sqlite};

/// The manifest format of a backup of SQLite files.
pub const FORMAT: u32 = 1;

/// The manifest format of a backup of PostgreSQL stores (format 1 plus
/// [`Manifest::postgres_dumps`]).
pub const FORMAT_POSTGRES: u32 = 2;

/// The manifest format of a backup of MySQL stores (format 1 plus
/// [`Manifest::mysql_dumps`]); the newest this build reads.
pub const FORMAT_MYSQL: u32 = 3;

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFile {
    /// Path inside the backup directory.
    pub name: String,
    /// `core`, `plugins`, `mirror` or `plugin:<id>`.
    pub role: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// `manifest.json` of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format.
    pub format: u32,
    /// The Sovereign version that wrote it.
    pub project_version: String,
    /// When it was taken (UTC, RFC 3339).
    pub created_at: String,
    /// The files.
    pub files: Vec<BackupFile>,
    /// Highest applied migration per scope (`core`, `plugin:<id>`).
    pub schema_versions: BTreeMap<String, u32>,
    /// The mirror's watermark in this backup (0 if no plugin data).
    pub mirror_watermark: i64,
    /// The outbox sequence number the core had acknowledged.
    pub core_acked_seq: i64,
    /// Whether plugin data is included.
    pub includes_plugin_data: bool,
    /// Plugins whose data was left out.
    pub excluded_plugins: Vec<String>,
    /// What to run after restoring this backup.
    pub after_restore: String,
    /// The `pg_dump` directories of a backup of PostgreSQL stores (their files are in
    /// [`Manifest::files`] with the dump's role); none in a backup of SQLite files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postgres_dumps: Vec<PostgresDump>,
    /// The `mariadb-dump` files of a backup of MySQL stores (also in
    /// [`Manifest::files`], with the dump's role); none otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mysql_dumps: Vec<crate::my_backup::MysqlDump>,
}

/// One `pg_dump --format=directory` in a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresDump {
    /// Its directory inside the backup.
    pub name: String,
    /// `core`, `plugins` (the plugin database's bookkeeping and mirrors),
    /// `plugin:<id>` (one plugin's schema) or `plugin-store:<id>` (an isolated plugin's
    /// database's bookkeeping).
    pub role: String,
    /// The version of the server it was dumped from.
    pub server_version: String,
    /// A plugin's schema (or, with role `plugin-store:<id>`, the bookkeeping) in the
    /// plugin's own database (isolated mode) rather than the plugin database.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub isolated: bool,
}

/// What a backup read while taking it, for its manifest.
pub(crate) struct Taken {
    /// The files written.
    pub files: Vec<BackupFile>,
    /// Highest applied migration per scope.
    pub schema_versions: BTreeMap<String, u32>,
    /// The mirror's watermark.
    pub mirror_watermark: i64,
    /// The core's acknowledged outbox sequence number.
    pub core_acked_seq: i64,
}

impl Manifest {
    /// The manifest of a backup in `format` taken as `options` asked (no dumps yet).
    pub(crate) fn of(format: u32, taken: Taken, options: &BackupOptions) -> Manifest {
        Manifest {
            format,
            project_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_at: crate::now_rfc3339(),
            files: taken.files,
            schema_versions: taken.schema_versions,
            mirror_watermark: taken.mirror_watermark,
            core_acked_seq: taken.core_acked_seq,
            includes_plugin_data: options.include_plugin_data,
            excluded_plugins: options.exclude_plugins.clone(),
            after_restore:
                "sv sync:run  (catches the mirror up from the restored core, or rebuilds it)".into(),
            postgres_dumps: vec![],
            mysql_dumps: vec![],
        }
    }

    /// Writes this manifest into the backup being written at `partial` and renames it to
    /// `options.out`: the backup is complete.
    pub(crate) fn complete(
        self,
        partial: &Path,
        options: &BackupOptions,
    ) -> Result<Manifest, OpsError> {
        let text = serde_json::to_string_pretty(&self).expect("manifest serializes");
        std::fs::write(partial.join("manifest.json"), text).map_err(io("writing manifest.json"))?;
        std::fs::rename(partial, &options.out)
            .map_err(io(format!("completing {}", options.out.display())))?;
        Ok(self)
    }
}

/// What to back up and where.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The directory to create (must not exist).
    pub out: PathBuf,
    /// Include plugin stores (and the mirror file).
    pub include_plugin_data: bool,
    /// Plugins whose data is left out.
    pub exclude_plugins: Vec<String>,
}

impl BackupOptions {
    /// Refuses an existing `out`, then makes `<out>.partial` afresh (readable by its
    /// owner only): the directory a backup is written into and renamed from when whole.
    pub(crate) fn start_partial(&self) -> Result<PathBuf, OpsError> {
        if self.out.exists() {
            return Err(OpsError::Refused(format!(
                "{} already exists; choose another --out",
                self.out.display()
            )));
        }
        let partial = PathBuf::from(format!("{}.partial", self.out.display()));
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .map_err(io(format!("clearing {}", partial.display())))?;
        }
        crate::create_private_dir(&partial)?;
        Ok(partial)
    }
}

/// Progress of a backup in bytes: `(done, total)`.
pub type ByteProgress<'a> = &'a (dyn Fn(u64, u64) + Sync);

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(format!("{}-wal", path.display()))
            .map(|m| m.len())
            .unwrap_or(0)
}

/// Copies `src` to `dst` with the backup API in one step (one read transaction), then
/// switches the copy to rollback journaling: a single self-contained file that no later
/// reader will grow `-wal`/`-shm` files next to. The copy is readable by its owner only:
/// it holds password hashes and sessions.
pub fn snapshot(src: &Path, dst: &Path) -> Result<(), OpsError> {
    copy_pinned(&pin(src)?, src, dst)
}

/// Opens `src` read-only and starts a read transaction on it: the snapshot a later
/// [`copy_pinned`] copies is the database as of this call.
fn pin(src: &Path) -> Result<Connection, OpsError> {
    let source = open_read_only(src)?;
    source
        .busy_timeout(Duration::from_secs(30))
        .map_err(sqlite("setting a busy timeout"))?;
    source
        .execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
        .map_err(sqlite(format!(
            "starting a read transaction on {}",
            src.display()
        )))?;
    Ok(source)
}

/// Copies the snapshot held by `source` (see [`pin`]) into `dst` with the backup API,
/// which reads through the connection's open read transaction, then switches the copy to
/// rollback journaling: a single self-contained file that no later reader will grow
/// `-wal`/`-shm` files next to. The copy is readable by its owner only: it holds
/// password hashes and sessions.
fn copy_pinned(source: &Connection, src: &Path, dst: &Path) -> Result<(), OpsError> {
    let mut dest = Connection::open(dst).map_err(sqlite(format!("creating {}", dst.display())))?;
    {
        let backup = sovereign_db::rusqlite::backup::Backup::new(source, &mut dest)
            .map_err(sqlite(format!("starting the backup of {}", src.display())))?;
        backup
            .step(-1)
            .map_err(sqlite(format!("copying {}", src.display())))?;
    }
    dest.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
        .map_err(sqlite(format!("finishing {}", dst.display())))?;
    drop(dest);
    remove_db_files_but_main(dst);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("restricting {}", dst.display())))?;
    }
    Ok(())
}

/// The highest applied migration per scope in a database file (read-only).
pub fn schema_versions(path: &Path) -> Result<BTreeMap<String, u32>, OpsError> {
    let conn = open_read_only(path)?;
    let has: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE name = '_sv_migrations'",
            [],
            |r| r.get(0),
        )
        .map_err(sqlite(format!("reading {}", path.display())))?;
    if !has {
        return Ok(BTreeMap::new());
    }
    let mut stmt = conn
        .prepare("SELECT scope, max(version) FROM _sv_migrations GROUP BY scope")
        .map_err(sqlite(format!("reading {}", path.display())))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
        .map_err(sqlite(format!("reading {}", path.display())))?;
    rows.collect::<Result<_, _>>()
        .map_err(sqlite(format!("reading {}", path.display())))
}

/// Opens an existing database read-only (also in a directory this process cannot
/// write, when it was shut down cleanly).
pub(crate) fn open_read_only(path: &Path) -> Result<Connection, OpsError> {
    sovereign_db::open_database(
        path,
        &sovereign_db::OpenOptions::core().existing().read_only(),
    )
    .map_err(|e| OpsError::Plugins(e.into()))
}

fn read_i64(path: &Path, sql: &str) -> i64 {
    open_read_only(path)
        .ok()
        .and_then(|c| {
            c.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
                .optional()
                .ok()
                .flatten()
                .flatten()
        })
        .unwrap_or(0)
}

/// Takes a backup. The output directory is written as `<out>.partial` and renamed when
/// complete, so a directory named `<out>` is always a whole backup.
pub fn backup(
    layout: &Layout,
    options: &BackupOptions,
    progress: ByteProgress<'_>,
) -> Result<Manifest, OpsError> {
    if !layout.core.exists() {
        return Err(OpsError::Refused(format!(
            "{} does not exist; nothing to back up",
            layout.core.display()
        )));
    }
    let partial = options.start_partial()?;
    crate::create_private_dir(&partial.join("plugins"))?;

    // Plugin stores first, the core last (see the module documentation).
    let mut plan: Vec<(String, String, PathBuf)> = Vec::new();
    if options.include_plugin_data {
        if layout.plugins.exists() {
            plan.push((
                "plugins.db".into(),
                "plugins".into(),
                layout.plugins.clone(),
            ));
        }
        if let Some(mirror) = layout.mirror_file.as_ref().filter(|m| m.exists()) {
            plan.push(("mirror.db".into(), "mirror".into(), mirror.clone()));
        }
        for (id, path) in layout.isolated_files()? {
            if !options.exclude_plugins.contains(&id) {
                plan.push((format!("plugins/{id}.db"), format!("plugin:{id}"), path));
            }
        }
    }
    plan.push(("core.db".into(), "core".into(), layout.core.clone()));

    let total: u64 = plan.iter().map(|(_, _, p)| file_size(p)).sum();
    progress(0, total);
    type Checked = Result<(BackupFile, BTreeMap<String, u32>), OpsError>;
    // Snapshots are pinned one after the other in plan order (plugin stores, then the
    // core), which is all the consistency needs; the copies and checksums then run in
    // parallel.
    let pinned: Vec<Connection> = plan
        .iter()
        .map(|(_, _, src)| pin(src))
        .collect::<Result<_, _>>()?;
    let done = std::sync::atomic::AtomicU64::new(0);
    let checked: Vec<Checked> = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .iter()
            .zip(pinned)
            .map(|((name, role, src), source)| {
                let dst = partial.join(name);
                let done = &done;
                scope.spawn(move || -> Checked {
                    copy_pinned(&source, src, &dst)?;
                    drop(source);
                    if role == "plugins" && !options.exclude_plugins.is_empty() {
                        let store = sovereign_db_plugins::TrustedPluginStore::open_shared(&dst)?;
                        for id in &options.exclude_plugins {
                            store.drop_plugin_data(id)?;
                        }
                        store
                            .connection()
                            .query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
                            .map_err(sqlite("finishing the plugin store copy"))?;
                        drop(store);
                        remove_db_files_but_main(&dst);
                    }
                    let copied = done
                        .fetch_add(file_size(src), std::sync::atomic::Ordering::SeqCst)
                        + file_size(src);
                    progress(copied.min(total), total);
                    let versions = schema_versions(&dst)?;
                    let (sha256, size) = file_digest(&dst)?;
                    Ok((
                        BackupFile {
                            name: name.clone(),
                            role: role.clone(),
                            size,
                            sha256,
                        },
                        versions,
                    ))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("backup thread"))
            .collect()
    });
    let mut files = Vec::new();
    let mut schema = BTreeMap::new();
    for result in checked {
        let (file, versions) = result?;
        schema.extend(versions);
        files.push(file);
    }
    let mirror_store = if layout.mirror_file.is_some() {
        "mirror.db"
    } else {
        "plugins.db"
    };
    let taken = Taken {
        mirror_watermark: read_i64(
            &partial.join(mirror_store),
            "SELECT value FROM _sv_mirror_state WHERE key = 'watermark'",
        ),
        core_acked_seq: read_i64(
            &partial.join("core.db"),
            "SELECT CAST(value AS INTEGER) FROM _sv_sync_state WHERE key = 'acked_seq'",
        ),
        files,
        schema_versions: schema,
    };
    Manifest::of(FORMAT, taken, options).complete(&partial, options)
}

fn remove_db_files_but_main(path: &Path) {
    for suffix in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// The store marker a file of this role must carry.
fn expected_kind(role: &str) -> Option<StoreKind> {
    match role {
        "core" => Some(StoreKind::Core),
        "plugins" => Some(StoreKind::Plugins),
        "mirror" => Some(StoreKind::Mirror),
        other => other
            .strip_prefix("plugin:")
            .map(|id| StoreKind::IsolatedPlugin(id.to_owned())),
    }
}

/// Verifies a backup: manifest consistency, every file's size and SHA-256,
/// `PRAGMA integrity_check` on a scratch copy of each file, store markers, and schema
/// versions this build knows (a backup of a newer schema is refused).
pub fn verify(dir: &Path) -> Result<Manifest, OpsError> {
    let mut problems = Vec::new();
    let manifest_path = dir.join("manifest.json");
    let manifest: Manifest = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => {
                return Err(OpsError::Invalid {
                    dir: dir.to_owned(),
                    problems: vec![format!("manifest.json is not a valid manifest: {e}")],
                });
            }
        },
        Err(e) => {
            return Err(OpsError::Invalid {
                dir: dir.to_owned(),
                problems: vec![format!("cannot read manifest.json: {e}")],
            });
        }
    };
    if manifest.format > FORMAT_MYSQL {
        problems.push(format!(
            "manifest format {} is newer than this build understands ({FORMAT_MYSQL}); use a newer sv",
            manifest.format
        ));
    }
    if !manifest.files.iter().any(|f| f.role == "core") {
        problems.push("the manifest lists no core store (core.db, core.pgdump or core.sql)".into());
    }
    // Each backend's core migrations are numbered on their own (MySQL has one more).
    let known_core = if !manifest.mysql_dumps.is_empty() {
        sovereign_db_core::mysql_migrations()
    } else if !manifest.postgres_dumps.is_empty() {
        sovereign_db_core::postgres_migrations()
    } else {
        sovereign_db_core::migrations()
    };
    let latest_core = known_core.migrations().last().map_or(0, |m| m.version);
    match manifest.schema_versions.get(sovereign_db_core::SCOPE) {
        Some(v) if *v > latest_core => problems.push(format!(
            "the core schema is at version {v}, newer than this build knows ({latest_core}); restore it with a newer sv"
        )),
        None => problems.push("the manifest records no core schema version".into()),
        _ => {}
    }
    let scratch = scratch_dir()?;
    for file in &manifest.files {
        let path = dir.join(&file.name);
        if file.name.contains("..") || Path::new(&file.name).is_absolute() {
            problems.push(format!("{}: not a path inside the backup", file.name));
            continue;
        }
        if !path.exists() {
            problems.push(format!("{} is missing", file.name));
            continue;
        }
        let (sha, size) = file_digest(&path)?;
        if size != file.size {
            problems.push(format!(
                "{}: size {size} bytes, the manifest says {}",
                file.name, file.size
            ));
        }
        if sha != file.sha256 {
            problems.push(format!(
                "{}: checksum {sha} does not match the manifest's {}",
                file.name, file.sha256
            ));
            continue;
        }
        if crate::pg_backup::in_dump(&manifest, &file.name)
            || crate::my_backup::in_dump(&manifest, &file.name)
        {
            continue;
        }
        let copy = scratch.join(file.name.replace('/', "_"));
        std::fs::copy(&path, &copy)
            .map_err(io(format!("copying {} to a scratch file", file.name)))?;
        match check_copy(&copy, &file.role, &known_core) {
            Ok(()) => {}
            Err(problem) => problems.push(format!("{}: {problem}", file.name)),
        }
        remove_db_files(&copy);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    crate::pg_backup::check_dumps(dir, &manifest, &mut problems);
    crate::my_backup::check_dumps(dir, &manifest, &mut problems);
    if problems.is_empty() {
        Ok(manifest)
    } else {
        Err(OpsError::Invalid {
            dir: dir.to_owned(),
            problems,
        })
    }
}

fn check_copy(copy: &Path, role: &str, known_core: &MigrationSet) -> Result<(), String> {
    let conn = Connection::open(copy).map_err(|e| format!("cannot be opened: {e}"))?;
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| format!("integrity check failed: {e}"))?;
    if result != "ok" {
        return Err(format!("integrity check failed: {result}"));
    }
    if let Some(kind) = expected_kind(role) {
        sovereign_db::store::expect(&conn, &kind).map_err(|e| e.to_string())?;
    }
    if role == "core" {
        for status in known_core.status(&conn).map_err(|e| e.to_string())? {
            if let sovereign_db::MigrationState::Changed { .. } = status.state {
                return Err(format!(
                    "core migration {} differs from this build's; restore with the sv that wrote it",
                    status.file_name
                ));
            }
        }
    }
    Ok(())
}

/// A scratch directory for integrity checks (removed afterwards), so that opening a copy
/// never writes into the backup itself.
fn scratch_dir() -> Result<PathBuf, OpsError> {
    let base = std::env::temp_dir().join(format!(
        "sv-verify-{}-{}",
        std::process::id(),
        crate::stamp()
    ));
    std::fs::create_dir_all(&base).map_err(io(format!("creating {}", base.display())))?;
    Ok(base)
}
