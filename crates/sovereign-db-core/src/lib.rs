//! The kernel's core store (`core.db`): schema, migrations and typed access.
//!
//! This crate is on the trusted side of the boundary: the extension host and the plugin
//! SDK must never depend on it (a test in `sv` checks `cargo metadata`).

pub mod audit;
mod backend;
pub mod events;
pub mod health;
mod mysql_core;
pub mod mysql_kernels;
pub mod password;
pub mod plugins;
pub mod sessions;
pub mod settings;
pub mod users;

use std::path::Path;

pub use backend::{CoreAccess, CoreConn, CoreHandle, CoreLocation, PgCore};
pub use mysql_core::MyCore;

use sovereign_db::rusqlite::Connection;
use sovereign_db::{MigrationError, MigrationSet, OpenError, OpenOptions, StoreError, StoreKind};

/// The scope name of core migrations in `_sv_migrations`.
pub const SCOPE: &str = "core";

/// Core migrations, compiled into the binary.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init.sql", include_str!("../migrations/0001_init.sql")),
    (
        "0002_change_capture.sql",
        include_str!("../migrations/0002_change_capture.sql"),
    ),
    (
        "0003_events.sql",
        include_str!("../migrations/0003_events.sql"),
    ),
    (
        "0004_plugin_load_state.sql",
        include_str!("../migrations/0004_plugin_load_state.sql"),
    ),
    (
        "0005_registry_manifest_is_truth.sql",
        include_str!("../migrations/0005_registry_manifest_is_truth.sql"),
    ),
    (
        "0006_plugin_store_logins.sql",
        include_str!("../migrations/0006_plugin_store_logins.sql"),
    ),
    (
        "0007_plugin_packages.sql",
        include_str!("../migrations/0007_plugin_packages.sql"),
    ),
];

/// Core migrations in PostgreSQL's dialect: the same files, one for one, for a core
/// database on PostgreSQL.
const POSTGRES_MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init.sql",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_change_capture.sql",
        include_str!("../migrations/postgres/0002_change_capture.sql"),
    ),
    (
        "0003_events.sql",
        include_str!("../migrations/postgres/0003_events.sql"),
    ),
    (
        "0004_plugin_load_state.sql",
        include_str!("../migrations/postgres/0004_plugin_load_state.sql"),
    ),
    (
        "0005_registry_manifest_is_truth.sql",
        include_str!("../migrations/postgres/0005_registry_manifest_is_truth.sql"),
    ),
    (
        "0006_plugin_store_logins.sql",
        include_str!("../migrations/postgres/0006_plugin_store_logins.sql"),
    ),
    (
        "0007_plugin_packages.sql",
        include_str!("../migrations/postgres/0007_plugin_packages.sql"),
    ),
];

/// Core migrations in MySQL/MariaDB's dialect: the same files, one for one, for a core
/// database on MySQL.
const MYSQL_MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init.sql",
        include_str!("../migrations/mysql/0001_init.sql"),
    ),
    (
        "0002_change_capture.sql",
        include_str!("../migrations/mysql/0002_change_capture.sql"),
    ),
    (
        "0003_events.sql",
        include_str!("../migrations/mysql/0003_events.sql"),
    ),
    (
        "0004_plugin_load_state.sql",
        include_str!("../migrations/mysql/0004_plugin_load_state.sql"),
    ),
    (
        "0005_registry_manifest_is_truth.sql",
        include_str!("../migrations/mysql/0005_registry_manifest_is_truth.sql"),
    ),
    (
        "0006_plugin_store_logins.sql",
        include_str!("../migrations/mysql/0006_plugin_store_logins.sql"),
    ),
    (
        "0007_plugin_packages.sql",
        include_str!("../migrations/mysql/0007_plugin_packages.sql"),
    ),
    (
        "0008_kernels.sql",
        include_str!("../migrations/mysql/0008_kernels.sql"),
    ),
];

/// The core migration set.
pub fn migrations() -> MigrationSet {
    MigrationSet::embedded(SCOPE, MIGRATIONS).expect("embedded core migrations are well-formed")
}

/// The core migration set in PostgreSQL's dialect (run by `sovereign_postgres::migrate`).
pub fn postgres_migrations() -> MigrationSet {
    MigrationSet::embedded(SCOPE, POSTGRES_MIGRATIONS)
        .expect("embedded PostgreSQL core migrations are well-formed")
}

/// The core migration set in MySQL/MariaDB's dialect (run by `sovereign_mysql::migrate`).
pub fn mysql_migrations() -> MigrationSet {
    MigrationSet::embedded(SCOPE, MYSQL_MIGRATIONS)
        .expect("embedded MySQL core migrations are well-formed")
}

/// Errors of the core store.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Opening the file failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The file is not the core store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A migration problem.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// A query failed.
    #[error("core store: {0}")]
    Sqlite(sovereign_db::rusqlite::Error),
    /// Another user already has this e-mail address.
    #[error("a user with e-mail {0} already exists")]
    EmailTaken(String),
    /// The change would leave the platform without an active administrator.
    #[error("this would leave no active administrator; promote another user to admin first")]
    LastAdmin,
    /// No connection to the core store could be had.
    #[error("core store unavailable: {0}")]
    Unavailable(String),
    /// A registry entry's manifest does not parse (a damaged or hand-edited registry).
    #[error(
        "the registry's manifest of plugin {id:?} is unreadable: {source}; reinstall the plugin"
    )]
    BadManifest {
        /// The plugin.
        id: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// A statement on the PostgreSQL core database failed.
    #[error("core store (PostgreSQL): {0}")]
    Postgres(#[from] postgres::Error),
    /// The PostgreSQL core database could not be reached.
    #[error("cannot connect to the core database {url}: {source}")]
    Connect {
        /// The URL (password elided).
        url: String,
        /// The driver's error.
        source: postgres::Error,
    },
    /// The database `DATABASE_URL` names is not a (migrated) core store.
    #[error(
        "{url} is not a Sovereign core database (no `_sv_store` marker saying `core`); run \
         `sv migrate:deploy --scope=core` against an empty database, or fix DATABASE_URL"
    )]
    NotCoreDatabase {
        /// The URL (password elided).
        url: String,
    },
    /// An operation that exists only for a SQLite core store.
    #[error(
        "{operation} works on a SQLite core store only so far, and DATABASE_URL names a \
         database server"
    )]
    NotOnSqlite {
        /// What was asked.
        operation: &'static str,
    },
    /// A statement on the MySQL/MariaDB core database failed.
    #[error("core store (MySQL): {0}")]
    Mysql(#[from] mysql::Error),
    /// Connecting to or migrating the MySQL/MariaDB core database failed.
    #[error(transparent)]
    MyStore(#[from] sovereign_mysql::MyError),
    /// Migrating the PostgreSQL core database failed.
    #[error(transparent)]
    PgMigration(#[from] sovereign_postgres::PgError),
    /// A JSON column holds text that does not parse (a damaged or hand-edited store).
    #[error("the core store's {what} is not valid JSON: {source}")]
    BadJson {
        /// Which value.
        what: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// Password hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// A kernel may not register on a MySQL core beside the kernels serving it (see
    /// [`mysql_kernels`]).
    #[error(
        "kernels already serve this MySQL core ({}), and a kernel whose plugin store is in \
         SQLite files must be the only one: stop them first (`sv stop` on each machine), or \
         put every kernel's plugin store on the same MySQL (PLUGIN_DATABASE_URL) so that \
         they share it",
        kernels.join(", ")
    )]
    KernelsAlone {
        /// The kernels serving the core, by name.
        kernels: Vec<String>,
    },
    /// A restore of the MySQL core runs (it holds the kernels' gate).
    #[error(
        "a restore of this MySQL core is running (or another kernel has been registering \
         for {} s): start the kernel again when it ends",
        mysql_kernels::GATE_WAIT_SECONDS
    )]
    KernelsExcluded,
}

/// Opens (creating if needed, mode 0600) the core store and checks that it is one.
pub fn open(path: &Path) -> Result<Connection, CoreError> {
    let conn = sovereign_db::open_database(path, &OpenOptions::core())?;
    sovereign_db::store::claim(&conn, &StoreKind::Core)?;
    Ok(conn)
}

/// Opens an existing core store without creating anything.
pub fn open_existing(path: &Path) -> Result<Connection, CoreError> {
    let conn = sovereign_db::open_database(path, &OpenOptions::core().existing())?;
    sovereign_db::store::expect(&conn, &StoreKind::Core)?;
    Ok(conn)
}

/// Opens an existing core store read-only (reports on a read-only data directory).
pub fn open_existing_read_only(path: &Path) -> Result<Connection, CoreError> {
    let conn = sovereign_db::open_database(path, &OpenOptions::core().existing().read_only())?;
    sovereign_db::store::expect(&conn, &StoreKind::Core)?;
    Ok(conn)
}

/// A transaction on `core.db` that takes the write lock at once (a read that later
/// writes would otherwise fail with `SQLITE_BUSY` instead of waiting).
pub(crate) fn write_transaction(
    conn: &Connection,
) -> Result<sovereign_db::rusqlite::Transaction<'_>, CoreError> {
    Ok(sovereign_db::rusqlite::Transaction::new_unchecked(
        conn,
        sovereign_db::rusqlite::TransactionBehavior::Immediate,
    )?)
}

/// Current time in unix seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// SQLite's message becomes part of this error's, once (rusqlite's error repeats it in
/// its source chain, so it is not kept as a source).
impl From<sovereign_db::rusqlite::Error> for CoreError {
    fn from(e: sovereign_db::rusqlite::Error) -> Self {
        CoreError::Sqlite(e)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A migrated core store in a temporary directory.
    pub fn core_db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("core.db")).unwrap();
        migrations().deploy(&conn).unwrap();
        (dir, conn)
    }
}
