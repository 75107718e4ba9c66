//! The application layer's errors: each refusal is a variant that says what is wrong and
//! how to fix it; failures of the layers below keep their own type as the source.

use std::path::PathBuf;

/// The advice after a failed core check.
const RESTORE_ADVICE: &str =
    "run `sv doctor` for the details and `sv restore BACKUP` to restore the last good backup";

/// What can go wrong in the application layer.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The configuration.
    #[error(transparent)]
    Config(#[from] sovereign_config::ConfigError),
    /// Opening a database file.
    #[error(transparent)]
    Open(#[from] sovereign_db::OpenError),
    /// A migration.
    #[error(transparent)]
    Migration(#[from] sovereign_db::MigrationError),
    /// The core store.
    #[error(transparent)]
    Core(#[from] sovereign_db_core::CoreError),
    /// A field of a user.
    #[error(transparent)]
    InvalidField(#[from] sovereign_db_core::users::InvalidField),
    /// The plugin store.
    #[error(transparent)]
    PluginStore(#[from] sovereign_db_plugins::PluginStoreError),
    /// A statement run as a plugin.
    #[error(transparent)]
    Fence(#[from] sovereign_db_plugins::FenceError),
    /// A plugin's manifest.
    #[error(transparent)]
    Manifest(#[from] sovereign_db_plugins::ManifestError),
    /// A plugin's component.
    #[error(transparent)]
    Component(#[from] sovereign_host::component::ComponentError),
    /// Sync.
    #[error(transparent)]
    Sync(#[from] sovereign_sync::SyncError),
    /// Backups, restores, splits, inspection.
    #[error(transparent)]
    Ops(#[from] sovereign_ops::OpsError),
    /// Moving an install to PostgreSQL.
    #[error(transparent)]
    Move(#[from] crate::to_postgres::MoveError),
    /// A move to MySQL.
    #[error(transparent)]
    ToMysql(#[from] crate::to_mysql::ToMysqlError),
    /// The runtime lock.
    #[error(transparent)]
    Lock(#[from] sovereign_kernel::RuntimeLockError),
    /// Starting the kernel.
    #[error(transparent)]
    Start(#[from] sovereign_kernel::StartError),
    /// PostgreSQL (the plugin store's roles, migrations and connections).
    #[error(transparent)]
    Postgres(#[from] sovereign_postgres::PgError),
    /// A MySQL/MariaDB store.
    #[error(transparent)]
    Mysql(#[from] sovereign_mysql::MyError),
    /// An operation not available with a store on MySQL yet.
    #[error(
        "{operation} is not available with a store on MySQL yet (DATABASE_URL or \
         PLUGIN_DATABASE_URL is mysql://); use SQLite or PostgreSQL stores for it"
    )]
    NotOnMysql {
        /// What was asked.
        operation: &'static str,
    },
    /// An operation that works on SQLite plugin stores only so far.
    #[error(
        "{operation} works on a SQLite plugin store only so far, and PLUGIN_DATABASE_URL \
         names a PostgreSQL database"
    )]
    NotOnPostgres {
        /// What was asked.
        operation: &'static str,
    },
    /// Backups and restores of an installation whose stores are on different backends.
    #[error(
        "{operation} covers installations whose two stores are on one backend (both SQLite \
         files, or both PostgreSQL databases), and this one has the core on {core} and the \
         plugin store on {plugins}: until then, stop the platform and copy the SQLite file \
         with `sqlite3 FILE .backup COPY`, the PostgreSQL database with `pg_dump -Fd`"
    )]
    MixedBackends {
        /// What was asked.
        operation: &'static str,
        /// The core store's backend.
        core: &'static str,
        /// The plugin store's backend.
        plugins: &'static str,
    },
    /// A backup of one backend restored into an installation on the other.
    #[error(
        "{dir} is a backup of {backup} stores and this installation's stores are on \
         {here}: restore it into an installation on {backup}"
    )]
    BackupOfOtherBackend {
        /// The backup.
        dir: PathBuf,
        /// Its backend.
        backup: &'static str,
        /// This installation's.
        here: &'static str,
    },
    /// An isolated plugin that reads mirrored core data, on PostgreSQL.
    #[error(
        "plugin {id} asks for a database of its own (\"database\": \"isolated\") and reads \
         mirrored core data (\"reads\"): on PostgreSQL a database cannot read another's \
         tables, so give it \"database\": \"shared\" (a schema of the plugin database, \
         as fenced) or drop its \"reads\""
    )]
    IsolatedReadsMirrors {
        /// Plugin id.
        id: String,
    },
    /// A package that does not support the plugin store's backend.
    #[error(
        "plugin {id} supports the {supported} plugin store backends, not {backend}: its \
         plugin.json must list \"{backend}\" in \"backends\" and ship migrations/{backend}/"
    )]
    BackendNotSupported {
        /// Plugin id.
        id: String,
        /// The store's backend.
        backend: &'static str,
        /// What the package lists.
        supported: String,
    },
    /// SQLite, in this layer's own reads.
    #[error("SQLite: {0}")]
    Sqlite(#[from] sovereign_db::rusqlite::Error),
    /// A file system operation.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },

    /// A bare package directory without migrations.
    #[error("plugin {id:?} is not installed and {} has no migrations", dir.display())]
    NoSuchPackage {
        /// Plugin id.
        id: String,
        /// Its package directory.
        dir: PathBuf,
    },
    /// A package with a manifest that is not installed.
    #[error("plugin {id:?} is not installed; run `sv plugins install {}`", dir.display())]
    NotInstalledPackage {
        /// Plugin id.
        id: String,
        /// Its package directory.
        dir: PathBuf,
    },
    /// A backup was asked for while the console's backup job runs.
    #[error("a backup is already running; wait for it to finish")]
    BackupRunning,
    /// No backup of that name under `backups/`.
    #[error("there is no backup {name:?} under backups/")]
    NoSuchBackup {
        /// The name asked for.
        name: String,
    },
    /// A purge whose confirmation is not the plugin's id.
    #[error("to purge plugin {id}'s data, type its id ({id}) as the confirmation")]
    PurgeNotConfirmed {
        /// Plugin id.
        id: String,
    },
    /// No registry entry.
    #[error("plugin {id:?} is not installed (see `sv plugins list`)")]
    NotRegistered {
        /// Plugin id.
        id: String,
    },
    /// An install of an id that is installed.
    #[error(
        "plugin {id} {version} is already installed; a package with the same id never replaces it. \
         Remove it first (`sv plugins remove {id}`; its data stays unless --purge) or upgrade it \
         explicitly when upgrades are available"
    )]
    AlreadyInstalled {
        /// The installed id.
        id: String,
        /// The installed version.
        version: String,
    },
    /// A package without `migrations/`.
    #[error(
        "{} is missing: a plugin package needs a migrations directory (it may be empty); \
         nothing was installed", dir.display()
    )]
    MissingMigrations {
        /// The directory expected.
        dir: PathBuf,
    },
    /// The package was checked and refused before anything was written.
    #[error("nothing was installed")]
    PackageRejected(#[source] Box<PlatformError>),
    /// The manifest states a plugin API this host does not serve.
    #[error(
        "the package is for plugin API {declared}; this host serves {supported}; \
         nothing was installed"
    )]
    UnsupportedPluginApi {
        /// The manifest's `plugin_api`.
        declared: String,
        /// What the host serves.
        supported: String,
    },
    /// The component was built against another plugin API than the manifest states.
    #[error(
        "plugin.json states plugin API {declared} but plugin.wasm was built against {built}; \
         rebuild it (`sv plugins build`) or correct \"plugin_api\"; nothing was installed"
    )]
    PluginApiMismatch {
        /// The manifest's `plugin_api`.
        declared: String,
        /// The component's.
        built: String,
    },
    /// The operator did not approve the grants.
    #[error("grants not approved; nothing was installed (pass --yes to approve non-interactively)")]
    GrantsNotApproved,
    /// An install failed and was undone.
    #[error("installing plugin {id} failed; nothing was registered and nothing of it remains")]
    InstallFailed {
        /// Plugin id.
        id: String,
        /// Why.
        source: Box<PlatformError>,
    },
    /// An upgrade to a version that is not newer.
    #[error(
        "plugin {id} {installed} is installed; {offered} is not newer (raise \"version\" in plugin.json)"
    )]
    NotNewer {
        /// Plugin id.
        id: String,
        /// The installed version.
        installed: String,
        /// The package's version.
        offered: String,
    },
    /// A version that is not a semantic version.
    #[error("version {version:?} is not a semantic version (for example 1.2.0)")]
    NotSemver {
        /// The version.
        version: String,
    },
    /// An upgrade that changes the database mode.
    #[error(
        "plugin {id} is installed in {} mode and the package asks for {}; move it first with \
         `sv plugins move {id} --to {}`, then upgrade", from.as_str(), to.as_str(), to.as_str()
    )]
    ModeChangeNeedsMove {
        /// Plugin id.
        id: String,
        /// The installed mode.
        from: sovereign_db_plugins::DatabaseMode,
        /// The package's mode.
        to: sovereign_db_plugins::DatabaseMode,
    },
    /// An upgrade failed and was undone.
    #[error("upgrading plugin {id} failed; the installed version is unchanged")]
    UpgradeFailed {
        /// Plugin id.
        id: String,
        /// Why.
        source: Box<PlatformError>,
    },
    /// A purge of a plugin without data.
    #[error("plugin {id} has no data to purge")]
    NothingToPurge {
        /// Plugin id.
        id: String,
    },
    /// The operator did not confirm.
    #[error("not confirmed; nothing was {what} (pass --yes to do it non-interactively)")]
    NotConfirmed {
        /// What did not happen (`dropped`, ...).
        what: &'static str,
    },

    /// `sv plugins new` into a directory with files in it.
    #[error("{} is not empty; choose a new directory for the plugin package (--dir)", dir.display())]
    DirectoryNotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// No Rust toolchain.
    #[error(
        "cannot run `rustc`: install Rust (https://rustup.rs), then `rustup target add wasm32-wasip2`"
    )]
    NoToolchain,
    /// The WebAssembly target is missing.
    #[error(
        "the wasm32-wasip2 target is not installed for this toolchain; run `rustup target add wasm32-wasip2`"
    )]
    NoWasmTarget,
    /// cargo failed (its diagnostics were printed).
    #[error("building {} failed (cargo's errors are above); nothing was written", dir.display())]
    BuildFailed {
        /// The package.
        dir: PathBuf,
    },
    /// cargo built no component.
    #[error("cargo built no WebAssembly component for {}: its Cargo.toml needs `[lib] crate-type = [\"cdylib\"]`", dir.display())]
    NoComponent {
        /// The package.
        dir: PathBuf,
    },

    /// The throwaway platform of `sv plugins test` did not come up.
    #[error("the test platform did not start (its log is above)")]
    TestPlatformDidNotStart,

    /// `--plugin` with the core scope.
    #[error("--plugin limits the plugin scope; use it with --scope=plugins or --scope=all")]
    PluginWithCoreScope,
    /// `--plugin` naming no package with migrations.
    #[error("no plugin {id:?} in {} (expected {}/{id}/migrations/)", plugins_dir.display(), plugins_dir.display())]
    NoPluginMigrations {
        /// Plugin id.
        id: String,
        /// The plugins directory.
        plugins_dir: PathBuf,
    },
    /// No core store.
    #[error("{} does not exist; run `sv migrate:deploy --scope=core` first", path.display())]
    CoreMissing {
        /// `core.db`.
        path: PathBuf,
    },
    /// The core store is behind this build.
    #[error(
        "{store} has core migrations that are not applied; run `sv migrate:deploy --scope=core` first"
    )]
    CoreNotMigrated {
        /// `core.db`, or the PostgreSQL URL (password elided).
        store: String,
    },
    /// Migrating one file failed (that file's migration rolled back).
    #[error("migrating {}", path.display())]
    Migrating {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<PlatformError>,
    },

    /// A slice's projection changed: the mirror needs a full rebuild.
    #[error(
        "the projection of slice {slice} changed; review the plan and run `sv sync:run --full`"
    )]
    ProjectionChanged {
        /// The slice.
        slice: String,
        /// What a full rebuild would do.
        plan: Vec<String>,
    },

    /// A restore while the platform runs.
    #[error(
        "the platform is running (pid {pid}, lock {}); stop it first or pass --stop; nothing was changed",
        lock.display()
    )]
    RunningRefusesRestore {
        /// The running platform.
        pid: String,
        /// Its lock file.
        lock: PathBuf,
    },
    /// The platform did not stop when asked.
    #[error("the platform (pid {pid}) did not stop within 30 s; nothing was restored")]
    DidNotStop {
        /// Its pid.
        pid: i32,
    },
    /// A bad `--map`.
    #[error("--map {text:?}: {why}")]
    BadMapping {
        /// The argument.
        text: String,
        /// What is wrong.
        why: String,
    },
    /// A file that should exist does not.
    #[error("{} does not exist", path.display())]
    NoSuchFile {
        /// The file.
        path: PathBuf,
    },
    /// A split with unattributed tables.
    #[error("{count} table(s) cannot be attributed; nothing was split")]
    Unattributed {
        /// How many.
        count: usize,
    },

    /// `sv serve` without a core store.
    #[error(
        "{} does not exist; create and migrate it with `sv migrate:deploy` (or use `sv dev`)",
        path.display()
    )]
    CoreMissingForServe {
        /// `core.db`.
        path: PathBuf,
    },
    /// `sv serve` with pending migrations.
    #[error(
        "refusing to start: {} migration(s) are not applied:\n  {}\nrun `sv migrate:deploy` (see `sv migrate:status`) and start again",
        pending.len(), pending.join("\n  ")
    )]
    PendingMigrations {
        /// `scope: file (state)` of each.
        pending: Vec<String>,
    },
    /// An empty `core.db`.
    #[error(
        "{} exists but is empty (0 bytes), so it holds no core store. If it should hold your \
         data, restore it (`sv restore BACKUP`); if this is a new install, start again with \
         --init (or delete the file)", path.display()
    )]
    EmptyCore {
        /// `core.db`.
        path: PathBuf,
    },
    /// `core.db` could not be checked.
    #[error("refusing to serve: cannot check {}; {RESTORE_ADVICE}", path.display())]
    CoreUncheckable {
        /// `core.db`.
        path: PathBuf,
        /// Why.
        source: Box<PlatformError>,
    },
    /// `core.db` failed its integrity check.
    #[error(
        "refusing to serve: {} failed its integrity check (PRAGMA quick_check: {problems}); {RESTORE_ADVICE}",
        path.display()
    )]
    CoreDamaged {
        /// `core.db`.
        path: PathBuf,
        /// What quick_check reported.
        problems: String,
    },
    /// No platform holds the lock.
    #[error("the platform is not running (no process holds {})", lock.display())]
    NotRunning {
        /// The lock file.
        lock: PathBuf,
    },
    /// Kernels (on any machine) serve the core on a database server.
    #[error(
        "kernels are serving this {backend} core: {}; stop every one of them (on each \
         machine) and try again",
        if kernels.is_empty() {
            "one is starting, or another restore runs".to_owned()
        } else {
            kernels.join(", ")
        }
    )]
    KernelsRunning {
        /// The core's server: PostgreSQL or MySQL.
        backend: &'static str,
        /// Their names (`host/pid address`).
        kernels: Vec<String>,
    },
    /// The lock file holds no pid.
    #[error("the lock file {} holds no pid ({content:?})", lock.display())]
    BadLockFile {
        /// The lock file.
        lock: PathBuf,
        /// What it holds.
        content: String,
    },
    /// Not a process id.
    #[error("{pid} is not a process id")]
    BadPid {
        /// The number.
        pid: i32,
    },
}
