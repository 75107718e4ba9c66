//! [`PluginDb`], the fenced connection: everything a plugin's SQL can reach goes through it.
//! Opening and configuring here; statement execution, DDL checks, the quota, the event
//! outbox, the request transaction, fenced migrations and error mapping in the parts.

mod cursor;
mod ddl;
mod errors;
mod events;
mod execute;
mod migrate;
mod quota;
mod request;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use sovereign_db::migrate::split_statements;
use sovereign_db::rusqlite::config::DbConfig;
use sovereign_db::rusqlite::hooks::Authorization;
use sovereign_db::rusqlite::limits::Limit;
use sovereign_db::rusqlite::{self, Connection, ErrorCode, OptionalExtension, params_from_iter};
use sovereign_db::{MigrationSet, OpenOptions, StoreKind};

use crate::fence::{Decision, MIRROR_SCHEMA, Policy, lex};
use crate::manifest::{DatabaseMode, Limits};
use crate::value::SqlValue;
use crate::{PluginStoreError, check_plugin_id};

pub use cursor::{CursorId, MAX_OPEN_CURSORS};

/// Most rows one query may return.
pub const MAX_RESULT_ROWS: usize = 10_000;
/// Deepest parenthesis nesting a statement may have (SQLite's expression depth limit
/// does not count parentheses).
pub const MAX_NESTING: usize = 64;

/// The `sqlite3_limit`s of every plugin connection: tight, but enough for a real app.
const SQLITE_LIMITS: &[(Limit, i32)] = &[
    (Limit::SQLITE_LIMIT_ATTACHED, 0),
    (Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000),
    (Limit::SQLITE_LIMIT_COLUMN, 500),
    (Limit::SQLITE_LIMIT_EXPR_DEPTH, 100),
    (Limit::SQLITE_LIMIT_COMPOUND_SELECT, 50),
    (Limit::SQLITE_LIMIT_VDBE_OP, 250_000),
    (Limit::SQLITE_LIMIT_FUNCTION_ARG, 32),
    // LIKE and GLOB cost up to value length x pattern length.
    (Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 128),
    (Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 999),
    (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 16),
    (Limit::SQLITE_LIMIT_WORKER_THREADS, 0),
];

/// Caps the memory SQLite may allocate in this process (`sqlite3_hard_heap_limit64`):
/// a query producing rows of many large values fails with "out of memory" instead of
/// growing the extension host without bound. Past three quarters of it (the soft limit)
/// SQLite first gives back page cache, so that many plugins' caches do not starve a
/// query. Returns the previous hard limit.
pub fn limit_sqlite_heap(bytes: i64) -> i64 {
    // SAFETY: both calls take any value and are thread-safe.
    unsafe {
        rusqlite::ffi::sqlite3_soft_heap_limit64(bytes / 4 * 3);
        rusqlite::ffi::sqlite3_hard_heap_limit64(bytes)
    }
}

/// Where plugin databases live.
#[derive(Debug, Clone)]
pub struct StoreLocation {
    /// The shared `plugins.db`.
    pub shared_store: PathBuf,
    /// The directory of isolated files (`data/plugins/`).
    pub isolated_dir: PathBuf,
    /// In the read-only ATTACH layout, the mirror's own file (`data/mirror.db`), which
    /// every plugin connection attaches read-only; `None` when the mirror lives in the
    /// shared store.
    pub mirror_file: Option<PathBuf>,
}

impl StoreLocation {
    /// The file plugin `id` uses in `mode`.
    pub fn file_for(&self, id: &str, mode: DatabaseMode) -> PathBuf {
        match mode {
            DatabaseMode::Shared => self.shared_store.clone(),
            DatabaseMode::Isolated => self.isolated_dir.join(format!("{id}.db")),
        }
    }
}

/// What the fence needs to know about a plugin.
#[derive(Debug, Clone)]
pub struct PluginDbConfig {
    /// Plugin id.
    pub plugin_id: String,
    /// Database mode.
    pub mode: DatabaseMode,
    /// Approved mirror grants as `(slice, column)`.
    pub grants: Vec<(String, String)>,
    /// Limits from the manifest.
    pub limits: Limits,
}

/// Why a plugin statement did not run. Every variant names the plugin; none reveals
/// anything about data outside the plugin's reach.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The fence refused the statement.
    #[error("plugin {plugin} may not {action} {object}")]
    Denied {
        /// Plugin id.
        plugin: String,
        /// What it tried.
        action: String,
        /// What it tried it on.
        object: String,
    },
    /// More than one statement was passed.
    #[error("plugin {plugin}: pass exactly one SQL statement per call")]
    MultipleStatements {
        /// Plugin id.
        plugin: String,
    },
    /// No statement was passed.
    #[error("plugin {plugin}: the SQL text holds no statement")]
    EmptyStatement {
        /// Plugin id.
        plugin: String,
    },
    /// The statement ran past `limits.statement_ms`.
    #[error("plugin {plugin}: statement stopped after its {limit_ms} ms deadline")]
    Deadline {
        /// Plugin id.
        plugin: String,
        /// The deadline.
        limit_ms: u32,
    },
    /// The plugin's storage is full.
    #[error(
        "plugin {plugin}: storage quota exceeded ({used_bytes} bytes used of {quota_bytes}); delete data or raise limits.storage_mb"
    )]
    Quota {
        /// Plugin id.
        plugin: String,
        /// Bytes in use.
        used_bytes: u64,
        /// The quota.
        quota_bytes: u64,
    },
    /// The result would exceed the row or byte cap.
    #[error(
        "plugin {plugin}: result too large (at most {MAX_RESULT_ROWS} rows and {max_bytes} bytes of values, limits.result_kb); use LIMIT and paging"
    )]
    ResultTooLarge {
        /// Plugin id.
        plugin: String,
        /// The byte cap.
        max_bytes: usize,
    },
    /// A statement exceeded one of SQLite's limits (string length, expression depth, ...).
    #[error("plugin {plugin}: {message}")]
    Limit {
        /// Plugin id.
        plugin: String,
        /// SQLite's message.
        message: String,
    },
    /// A statement ended the request's transaction (`RAISE(ROLLBACK)` in a trigger,
    /// `INSERT OR ROLLBACK`, ...): everything the request wrote is gone, and nothing
    /// more runs in it.
    #[error(
        "plugin {plugin}: a statement ended the request's transaction (RAISE(ROLLBACK) or OR ROLLBACK); \
         the request's writes were rolled back and it cannot continue"
    )]
    TransactionEnded {
        /// Plugin id.
        plugin: String,
    },
    /// A UNIQUE, NOT NULL, CHECK or FOREIGN KEY constraint failed.
    #[error("plugin {plugin}: {message}")]
    Constraint {
        /// Plugin id.
        plugin: String,
        /// SQLite's message (names the constraint).
        message: String,
    },
    /// The database stayed locked by another connection past the busy wait.
    #[error("plugin {plugin}: the database is busy ({message}); retry later")]
    Busy {
        /// Plugin id.
        plugin: String,
        /// SQLite's message.
        message: String,
    },
    /// A cursor was asked to run a statement that changes data or schema.
    #[error("plugin {plugin}: a cursor reads the rows of a query; run changes with execute")]
    NotAQuery {
        /// Plugin id.
        plugin: String,
    },
    /// The cursor was closed (dropped, or its request ended).
    #[error("plugin {plugin}: the cursor is closed (dropped, or its request ended)")]
    CursorClosed {
        /// Plugin id.
        plugin: String,
    },
    /// An ordinary SQL error in the plugin's own statement (syntax, no such column, ...).
    #[error("plugin {plugin}: {message}")]
    Sql {
        /// Plugin id.
        plugin: String,
        /// SQLite's message.
        message: String,
    },
}

/// The outcome of one statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A statement that returns rows (SELECT, or RETURNING).
    Rows {
        /// Column names.
        columns: Arc<[String]>,
        /// Rows.
        rows: Vec<Vec<SqlValue>>,
    },
    /// A statement that changes data or schema.
    Changed {
        /// Rows inserted, updated or deleted.
        rows_affected: u64,
        /// `last_insert_rowid()` after the statement.
        last_insert_id: i64,
    },
}

static DENIALS: LazyLock<Mutex<BTreeMap<String, u64>>> = LazyLock::new(Default::default);

/// Denied statements per plugin since the process started.
pub fn denial_counts() -> BTreeMap<String, u64> {
    DENIALS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// State shared between the connection's callbacks and [`PluginDb`].
struct Guard {
    /// While set, the connection runs the host's own fixed SQL and the policy is off.
    internal: AtomicBool,
    /// Set while a plugin's DDL statement is compiled and run.
    ddl: AtomicBool,
    /// The first denial of the statement being prepared.
    denial: Mutex<Option<(String, String)>>,
    /// Deadline in ms since `epoch`; 0 means none.
    deadline_ms: AtomicU64,
    epoch: Instant,
    timed_out: AtomicBool,
}

/// Turns the policy off for the host's own statements and back on when dropped.
struct Internal<'a>(&'a Guard);

impl<'a> Internal<'a> {
    fn enter(guard: &'a Guard) -> Internal<'a> {
        guard.internal.store(true, Ordering::SeqCst);
        Internal(guard)
    }
}

impl Drop for Internal<'_> {
    fn drop(&mut self) {
        self.0.internal.store(false, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy)]
struct QuotaState {
    measured_bytes: u64,
    /// The file's page count when measured.
    pages_at_measure: i64,
    /// Free pages then: the plugin may grow into them without the file growing.
    free_at_measure: i64,
}

/// Statement texts that passed the text check and then ran successfully; their check
/// need not be repeated. Only successful statements are remembered: every name they use
/// resolved to something the plugin may use, and names outside its namespace can only be
/// created by other plugins under their own prefixes.
/// Each remembers its result column names, so they are not rebuilt per call.
#[derive(Default)]
struct CheckedTexts(std::cell::RefCell<std::collections::HashMap<String, Arc<[String]>>>);

impl CheckedTexts {
    const CAPACITY: usize = 512;

    fn get(&self, sql: &str) -> Option<Arc<[String]>> {
        self.0.borrow().get(sql).cloned()
    }

    fn insert(&self, sql: &str, columns: Arc<[String]>) {
        let mut map = self.0.borrow_mut();
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(sql.to_owned(), columns);
    }

    fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}

/// A plugin's fenced connection. There is no way to get the underlying connection out
/// of it, and no conversion to or from the trusted handle.
pub struct PluginDb {
    /// Open cursors borrow `conn`: declared first, so they are dropped first.
    cursors: cursor::Cursors,
    /// Boxed: cursors' statements point at it, so it must not move with the `PluginDb`.
    conn: Box<Connection>,
    plugin: String,
    mode: DatabaseMode,
    limits: Limits,
    policy: Arc<Policy>,
    guard: Arc<Guard>,
    page_size: i64,
    quota: Cell<Option<QuotaState>>,
    denied: Cell<u64>,
    checked: CheckedTexts,
    /// Set between [`begin`](Self::begin) and commit/rollback: the host's transaction.
    in_request: Cell<bool>,
    /// Set when a statement ended the host's transaction; cleared by rollback.
    request_ended: Cell<bool>,
    /// The deadline of the request being served: no statement runs past it.
    request_deadline: Cell<Option<Instant>>,
}

impl std::fmt::Debug for PluginDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginDb")
            .field("plugin", &self.plugin)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl PluginDb {
    /// Opens plugin `config.plugin_id`'s database behind the fence. In isolated mode the
    /// mirror is attached read-only (by this trusted code, before the fence goes up).
    pub fn open(
        location: &StoreLocation,
        config: PluginDbConfig,
    ) -> Result<PluginDb, PluginStoreError> {
        check_plugin_id(&config.plugin_id)?;
        let id = config.plugin_id.clone();
        let path = location.file_for(&id, config.mode);
        let conn = sovereign_db::open_database(&path, &OpenOptions::plugins())?;
        let kind = match config.mode {
            DatabaseMode::Shared => StoreKind::Plugins,
            DatabaseMode::Isolated => StoreKind::IsolatedPlugin(id.clone()),
        };
        sovereign_db::store::claim(&conn, &kind)?;
        let sqlite = PluginStoreError::Sqlite;
        // Where this plugin reads the mirror: attached read-only from the mirror file, or
        // from the shared store when the plugin has a file of its own.
        let mirror_source = match (&location.mirror_file, config.mode) {
            (Some(file), _) => Some(file.clone()),
            (None, DatabaseMode::Isolated) => Some(location.shared_store.clone()),
            (None, DatabaseMode::Shared) => None,
        };
        let mirror_attached = mirror_source.is_some();
        if let Some(source) = mirror_source.filter(|s| !config.grants.is_empty() && s.exists()) {
            conn.execute(
                &format!("ATTACH DATABASE ?1 AS {MIRROR_SCHEMA}"),
                [read_only_uri(&source)],
            )
            .map_err(sqlite)?;
        }
        for (config_flag, on) in [
            (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
            (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
            (DbConfig::SQLITE_DBCONFIG_WRITABLE_SCHEMA, false),
            (DbConfig::SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER, false),
            (DbConfig::SQLITE_DBCONFIG_ENABLE_ATTACH_CREATE, false),
            (DbConfig::SQLITE_DBCONFIG_ENABLE_ATTACH_WRITE, false),
        ] {
            conn.set_db_config(config_flag, on).map_err(sqlite)?;
        }
        for (limit, value) in SQLITE_LIMITS {
            conn.set_limit(*limit, *value).map_err(sqlite)?;
        }
        // No single value (and so no single function call on it) may be large.
        let max_value = config.limits.value_kb as usize * 1024;
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, max_value as i32)
            .map_err(sqlite)?;
        crate::functions::register(&conn, max_value).map_err(sqlite)?;
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(sqlite)?;
        let quota_bytes = u64::from(config.limits.storage_mb) * 1024 * 1024;
        if config.mode == DatabaseMode::Isolated {
            conn.query_row(
                &format!(
                    "PRAGMA main.max_page_count = {}",
                    quota_bytes as i64 / page_size
                ),
                [],
                |_| Ok(()),
            )
            .map_err(sqlite)?;
        }

        // The store's own bookkeeping (the event outbox among it), before the fence.
        crate::system::prepare(&conn)?;
        let policy = Arc::new(Policy::new(&id, &config.grants, mirror_attached));
        let guard = Arc::new(Guard {
            internal: AtomicBool::new(false),
            ddl: AtomicBool::new(false),
            denial: Mutex::new(None),
            deadline_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            timed_out: AtomicBool::new(false),
        });
        {
            let policy = policy.clone();
            let guard = guard.clone();
            conn.authorizer(Some(move |ctx: rusqlite::hooks::AuthContext<'_>| {
                if guard.internal.load(Ordering::SeqCst) {
                    return Authorization::Allow;
                }
                match policy.decide(&ctx, guard.ddl.load(Ordering::SeqCst)) {
                    Decision::Allow => Authorization::Allow,
                    Decision::Deny { action, object } => {
                        let mut first = guard.denial.lock().unwrap_or_else(|e| e.into_inner());
                        first.get_or_insert((action, object));
                        Authorization::Deny
                    }
                }
            }))
            .map_err(sqlite)?;
        }
        {
            let guard = guard.clone();
            conn.progress_handler(
                1000,
                Some(move || {
                    let deadline = guard.deadline_ms.load(Ordering::Relaxed);
                    if deadline != 0 && guard.epoch.elapsed().as_millis() as u64 > deadline {
                        guard.timed_out.store(true, Ordering::Relaxed);
                        return true;
                    }
                    false
                }),
            )
            .map_err(sqlite)?;
        }
        let db = PluginDb {
            cursors: cursor::Cursors::default(),
            conn: Box::new(conn),
            plugin: id,
            mode: config.mode,
            limits: config.limits,
            policy,
            guard,
            page_size,
            quota: Cell::new(None),
            denied: Cell::new(0),
            checked: CheckedTexts::default(),
            in_request: Cell::new(false),
            request_ended: Cell::new(false),
            request_deadline: Cell::new(None),
        };
        Ok(db)
    }

    /// The plugin id.
    pub fn plugin_id(&self) -> &str {
        &self.plugin
    }

    /// Statements denied on this connection.
    pub fn denied_count(&self) -> u64 {
        self.denied.get()
    }
}

/// `file:<path>?mode=ro`, with the characters URIs reserve escaped.
fn read_only_uri(path: &Path) -> String {
    let mut out = String::from("file:");
    for c in path.display().to_string().chars() {
        match c {
            '%' | '?' | '#' | ' ' => out.push_str(&format!("%{:02X}", c as u32)),
            other => out.push(other),
        }
    }
    out.push_str("?mode=ro");
    out
}
