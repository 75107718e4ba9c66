//! Core -> plugins sync (RFC-0004 §4.3): which core data plugins may see (projections, as
//! configuration), change capture into an outbox in `core.db`, batches applied to the
//! mirror with its watermark in one transaction, a full resync, and a reconcile by
//! checksums over primary-key chunks.
//!
//! Trusted side only: this crate reads `core.db`. The mirror is written through
//! `sovereign_db_plugins::TrustedPluginStore`.

pub mod capture;
pub mod full;
mod mirror_store;
pub mod publish;
pub mod reconcile;
pub mod settings;
pub mod status;
pub mod worker;

pub use mirror_store::Mirror;
pub use settings::{Freshness, MirrorLayout, SyncSettings};

use sovereign_db::rusqlite;

/// What can go wrong in sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The projection configuration is not acceptable.
    #[error("mirror slice {slice}: {message}")]
    Projection {
        /// Slice name.
        slice: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The configuration file's `[sync]` or `[mirror.*]` sections are malformed.
    #[error("configuration: {0}")]
    Config(String),
    /// A projection changed since the mirror was built; it needs a rebuild.
    #[error(
        "the projection of slice {0} changed since the mirror was built; review `sv sync:plan` and run `sv sync:run --full`"
    )]
    ProjectionChanged(String),
    /// The core's sync bookkeeping holds a value that does not parse.
    #[error(
        "the core's sync state {key} is {value:?}, not a sequence number; run `sv sync:run --full`"
    )]
    BadState {
        /// The state key.
        key: &'static str,
        /// What it holds.
        value: String,
    },
    /// The core store.
    #[error(transparent)]
    Core(#[from] sovereign_db_core::CoreError),
    /// The mirror store.
    #[error(transparent)]
    Mirror(#[from] sovereign_db_plugins::PluginStoreError),
    /// The process that applies batches (the extension host) refused or failed.
    #[error("applying a batch: {0}")]
    Applier(String),
    /// SQLite.
    #[error("sync: {0}")]
    Sqlite(rusqlite::Error),
    /// The mirror is on PostgreSQL, where this operation is not built yet.
    #[error(
        "{operation} works on a SQLite mirror only so far, and PLUGIN_DATABASE_URL names a \
         PostgreSQL database"
    )]
    NotOnPostgres {
        /// What was asked.
        operation: &'static str,
    },
    /// The mirror is on MySQL, where this operation is not built yet.
    #[error(
        "{operation} works on a SQLite mirror only so far, and PLUGIN_DATABASE_URL names a \
         MySQL database"
    )]
    NotOnMysqlMirror {
        /// What was asked.
        operation: &'static str,
    },
    /// The PostgreSQL mirror.
    #[error(transparent)]
    Postgres(#[from] sovereign_postgres::PgError),
    /// The MySQL mirror.
    #[error(transparent)]
    MysqlMirror(#[from] sovereign_mysql::MyError),
    /// A statement on the MySQL core failed.
    #[error("sync (MySQL core): {0}")]
    Mysql(#[from] mysql::Error),
    /// A value of the MySQL core has no platform form.
    #[error("sync (MySQL core): {0}")]
    MysqlValue(#[from] sovereign_mysql::values::ValueError),
}

/// Current time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reports progress of long runs: `(done, total)` in rows.
pub type Progress<'a> = &'a dyn Fn(u64, u64);

/// A read-only transaction of a PostgreSQL core that sees one snapshot throughout.
pub(crate) fn snapshot(
    core: &mut postgres::Client,
) -> Result<postgres::Transaction<'_>, postgres::Error> {
    core.build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
}

/// A read-only snapshot of a MySQL core: a repeatable-read transaction whose read view
/// is taken at once (`WITH CONSISTENT SNAPSHOT`).
pub(crate) fn mysql_snapshot(
    core: &mut mysql::Conn,
) -> Result<mysql::Transaction<'_>, mysql::Error> {
    core.start_transaction(
        mysql::TxOpts::default()
            .set_isolation_level(Some(mysql::IsolationLevel::RepeatableRead))
            .set_with_consistent_snapshot(true)
            .set_access_mode(Some(mysql::AccessMode::ReadOnly)),
    )
}

/// The highest outbox sequence number a MySQL core's snapshot has seen, or what was
/// acknowledged and pruned: the watermark of the rows read in the same snapshot
/// (capture serialises writers, so a change still in flight gets a higher one).
pub(crate) const MYSQL_HIGH_WATER: &str = "SELECT GREATEST(
     COALESCE((SELECT max(seq) FROM _sv_change_outbox), 0),
     COALESCE((SELECT CAST(value AS SIGNED) FROM _sv_sync_state WHERE \"key\" = 'acked_seq'), 0))";

/// Quotes an SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A statement on a PostgreSQL core store.
impl From<postgres::Error> for SyncError {
    fn from(e: postgres::Error) -> Self {
        SyncError::Core(sovereign_db_core::CoreError::Postgres(e))
    }
}

/// SQLite's message becomes part of this error's, once (rusqlite's error repeats it in
/// its source chain, so it is not kept as a source).
impl From<rusqlite::Error> for SyncError {
    fn from(e: rusqlite::Error) -> Self {
        SyncError::Sqlite(e)
    }
}
