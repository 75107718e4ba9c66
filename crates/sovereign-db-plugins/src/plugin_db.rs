//! [`PluginDb`], the fenced connection: everything a plugin's SQL can reach goes through it.

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
    /// An ordinary SQL error in the plugin's own statement (syntax, constraint, ...).
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
    conn: Connection,
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

        // The event outbox: events emitted in a request's transaction, relayed to the core
        // after commit. Bookkeeping: plugins cannot read or write it.
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS _sv_event_outbox (
                event_id        TEXT PRIMARY KEY,
                plugin          TEXT NOT NULL,
                topic           TEXT NOT NULL,
                payload         TEXT NOT NULL,
                created_at_ms   INTEGER NOT NULL,
                delivered_at_ms INTEGER
            ) STRICT;
            CREATE INDEX IF NOT EXISTS _sv_event_outbox_pending ON _sv_event_outbox (plugin, delivered_at_ms, created_at_ms);",
        )
        .map_err(sqlite)?;
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
            conn,
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

    /// Runs exactly one statement as the plugin, behind the fence and its limits.
    pub fn execute(&self, sql: &str, params: &[SqlValue]) -> Result<Outcome, FenceError> {
        if self.request_ended.get() {
            return Err(FenceError::TransactionEnded {
                plugin: self.plugin.clone(),
            });
        }
        if let Some(columns) = self.checked.get(sql) {
            return self.execute_prepared(sql, params, true, Some(columns));
        }
        let statements = split_statements(sql);
        let text = match statements.as_slice() {
            [] => {
                return Err(FenceError::EmptyStatement {
                    plugin: self.plugin.clone(),
                });
            }
            [(_, one)] => *one,
            _ => {
                return Err(FenceError::MultipleStatements {
                    plugin: self.plugin.clone(),
                });
            }
        };
        if lex(text).max_depth > MAX_NESTING {
            return Err(FenceError::Limit {
                plugin: self.plugin.clone(),
                message: format!(
                    "the statement nests parentheses more than {MAX_NESTING} levels deep; simplify it"
                ),
            });
        }
        let keyword = first_keyword(text);
        if let Some((action, object)) = match keyword.as_str() {
            "VACUUM" => Some(("vacuum", "the database")),
            "ANALYZE" => Some(("analyze", "the database")),
            _ => None,
        } {
            self.reset_denial();
            return Err(self.denied(action.into(), object.into()));
        }
        if matches!(keyword.as_str(), "CREATE" | "DROP" | "ALTER") {
            // The schema changes: names remembered as safe may now resolve differently.
            self.checked.clear();
            self.execute_ddl(text, params)
        } else {
            let outcome = self.execute_checked(text, params, true)?;
            if text == sql {
                let columns = match &outcome {
                    Outcome::Rows { columns, .. } => columns.clone(),
                    Outcome::Changed { .. } => Arc::from([]),
                };
                self.checked.insert(sql, columns);
            }
            Ok(outcome)
        }
    }

    /// Prepares and runs one statement; `cached` reuses prepared statements (safe: the
    /// policy of a connection never changes, and SQLite re-authorizes on re-prepare).
    fn execute_checked(
        &self,
        text: &str,
        params: &[SqlValue],
        cached: bool,
    ) -> Result<Outcome, FenceError> {
        if let Some(reference) = self
            .policy
            .foreign_reference(text, false, &|name| self.object_exists(name))
        {
            self.reset_denial();
            return Err(self.denied("read".into(), reference));
        }
        self.execute_prepared(text, params, cached, None)
    }

    /// Prepares (through the authorizer) and runs a statement whose text was checked.
    fn execute_prepared(
        &self,
        text: &str,
        params: &[SqlValue],
        cached: bool,
        columns: Option<Arc<[String]>>,
    ) -> Result<Outcome, FenceError> {
        let prepared = if cached {
            self.conn.prepare_cached(text).map(Prepared::Cached)
        } else {
            self.conn.prepare(text).map(Prepared::Fresh)
        };
        let mut stmt = prepared.map_err(|e| self.map_error(e, text))?;
        // Writes to the shared store are checked against the quota after they ran, inside
        // their transaction, so a write that goes over is undone. Deleting and dropping
        // are how a plugin gets back under its quota: they are refused only when they
        // (through a trigger) made the store grow past it.
        let writes = self.mode == DatabaseMode::Shared && !stmt.get().readonly();
        let shrinking = starts_with_keyword(text, "DELETE") || starts_with_keyword(text, "DROP");
        let own_transaction = writes && self.conn.is_autocommit();
        if own_transaction {
            self.internal_exec("BEGIN IMMEDIATE")?;
        }
        let used_before = if writes && shrinking {
            Some(self.used_pages()?)
        } else {
            None
        };
        // A statement stops at its own deadline or at its request's, whichever is first:
        // the request's budget covers its SQL too.
        let now = self.guard.epoch.elapsed().as_millis() as u64;
        let mut deadline = now + u64::from(self.limits.statement_ms);
        if let Some(request) = self.request_deadline.get() {
            let left = request
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            deadline = deadline.min(now + left);
        }
        self.guard.timed_out.store(false, Ordering::Relaxed);
        self.guard
            .deadline_ms
            .store(deadline.max(1), Ordering::Relaxed);
        let result = self.run_prepared(stmt.get_mut(), params, columns);
        self.guard.deadline_ms.store(0, Ordering::Relaxed);
        drop(stmt);
        let result = result
            .map_err(|e| match e {
                RunError::Sqlite(e) => self.map_error(e, text),
                RunError::TooLarge => FenceError::ResultTooLarge {
                    plugin: self.plugin.clone(),
                    max_bytes: self.max_result_bytes(),
                },
            })
            .and_then(|outcome| {
                if self.in_request.get() && self.conn.is_autocommit() {
                    return Err(self.transaction_ended());
                }
                let grew = match used_before {
                    Some(before) => self.used_pages()? > before,
                    None => writes,
                };
                if grew {
                    self.check_quota()?;
                }
                Ok(outcome)
            });
        if self.in_request.get() && self.conn.is_autocommit() && !self.request_ended.get() {
            // A statement that failed may have ended the transaction too.
            return Err(self.transaction_ended());
        }
        if own_transaction && !self.conn.is_autocommit() {
            match &result {
                Ok(_) => {
                    if let Err(e) = self.internal_exec("COMMIT") {
                        let _ = self.internal_exec("ROLLBACK");
                        return Err(e);
                    }
                }
                Err(_) => self.internal_exec("ROLLBACK")?,
            }
        }
        result
    }

    /// Most bytes of values one query may return (`limits.result_kb`).
    pub fn max_result_bytes(&self) -> usize {
        self.limits.result_kb as usize * 1024
    }

    /// Marks the request's transaction as ended by the plugin's statement.
    fn transaction_ended(&self) -> FenceError {
        self.request_ended.set(true);
        tracing::warn!(plugin = %self.plugin, "a plugin statement ended the request's transaction");
        FenceError::TransactionEnded {
            plugin: self.plugin.clone(),
        }
    }

    /// Pages of the file in use (not on the free list): a cheap measure of growth.
    fn used_pages(&self) -> Result<i64, FenceError> {
        Ok(self.pragma_i64("PRAGMA main.page_count")?
            - self.pragma_i64("PRAGMA main.freelist_count")?)
    }

    fn run_prepared(
        &self,
        stmt: &mut rusqlite::Statement<'_>,
        params: &[SqlValue],
        columns: Option<Arc<[String]>>,
    ) -> Result<Outcome, RunError> {
        let column_count = stmt.column_count();
        if column_count == 0 {
            let rows_affected = stmt.execute(params_from_iter(params))? as u64;
            return Ok(Outcome::Changed {
                rows_affected,
                last_insert_id: self.conn.last_insert_rowid(),
            });
        }
        let columns = columns
            .filter(|c| c.len() == column_count)
            .unwrap_or_else(|| stmt.column_names().iter().map(|c| c.to_string()).collect());
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        let max_bytes = self.max_result_bytes();
        let mut cursor = stmt.query(params_from_iter(params))?;
        while let Some(row) = cursor.next()? {
            if rows.len() >= MAX_RESULT_ROWS {
                return Err(RunError::TooLarge);
            }
            let mut values = Vec::with_capacity(column_count);
            for i in 0..column_count {
                // Sized before it is copied: a wide row of large values stops at the
                // first value past the cap, not after the whole row was materialised.
                let value = row.get_ref(i)?;
                bytes += value_size(value);
                if bytes > max_bytes {
                    return Err(RunError::TooLarge);
                }
                values.push(SqlValue::from_ref(value));
            }
            rows.push(values);
        }
        Ok(Outcome::Rows { columns, rows })
    }

    /// DDL runs in a savepoint; afterwards every new schema object must be in the
    /// plugin's namespace (this catches `ALTER TABLE ... RENAME TO other__x`, whose new
    /// name the authorizer never sees) and every new view must be readable under the
    /// fence. Otherwise the statement is undone and denied.
    fn execute_ddl(&self, text: &str, params: &[SqlValue]) -> Result<Outcome, FenceError> {
        // A view or trigger body runs later, when the objects it names may exist; and a
        // table read without reading a column (`EXISTS (SELECT 1 FROM t)`) reaches no
        // authorizer callback. So their text may not name anything outside the plugin's
        // reach, existing or not.
        if creates_stored_code(text)
            && let Some(reference) = self.policy.foreign_reference(text, true, &|_| true)
        {
            self.reset_denial();
            return Err(self.denied("reference".into(), reference));
        }
        let before = self.schema_objects()?;
        self.internal_batch("SAVEPOINT sv_plugin_ddl")?;
        self.guard.ddl.store(true, Ordering::SeqCst);
        let ran = self.execute_checked(text, params, false);
        self.guard.ddl.store(false, Ordering::SeqCst);
        let outcome = ran.and_then(|outcome| {
            // A foreign key into a mirror table (or anything outside the namespace) would
            // let plugin data veto the platform's writes there: the mirror writer must
            // never be blockable by plugin schema.
            if let Some((table, target)) = self.foreign_key_outside()? {
                return Err(self.denied(format!("declare a foreign key from {table} to"), target));
            }
            let after = self.schema_objects()?;
            for (kind, name) in after.difference(&before) {
                let internal = name.starts_with("sqlite_autoindex_") || name == "sqlite_sequence";
                if !self.policy.in_namespace(name) && !internal {
                    return Err(
                        self.denied(format!("create {kind} outside its namespace"), name.clone())
                    );
                }
                if kind == "view" {
                    self.execute_checked(
                        &format!("SELECT * FROM \"{}\" LIMIT 0", name.replace('"', "\"\"")),
                        &[],
                        false,
                    )
                    .map_err(|e| match e {
                        // Already logged and counted by the probe.
                        FenceError::Denied {
                            plugin,
                            action,
                            object,
                        } => FenceError::Denied {
                            plugin,
                            action: format!("create view {name} that would {action}"),
                            object,
                        },
                        other => other,
                    })?;
                }
            }
            Ok(outcome)
        });
        match outcome {
            Ok(outcome) => {
                self.internal_batch("RELEASE sv_plugin_ddl")?;
                Ok(outcome)
            }
            Err(e) => {
                self.internal_batch("ROLLBACK TO sv_plugin_ddl; RELEASE sv_plugin_ddl")?;
                Err(e)
            }
        }
    }

    /// Records an event in the outbox, inside the current transaction: it exists only if
    /// the transaction commits. Returns the event id. The caller checks the topic against
    /// the manifest.
    pub fn emit_event(&self, topic: &str, payload_json: &str) -> Result<String, FenceError> {
        let _internal = Internal::enter(&self.guard);
        self.conn
            .prepare_cached(
                "INSERT INTO _sv_event_outbox (event_id, plugin, topic, payload, created_at_ms)
                 VALUES (lower(hex(randomblob(16))), ?1, ?2, ?3, CAST(unixepoch('subsec') * 1000 AS INTEGER))
                 RETURNING event_id",
            )
            .and_then(|mut s| s.query_row(rusqlite::params![self.plugin, topic, payload_json], |r| r.get(0)))
            .map_err(|e| self.sql_error(e.to_string()))
    }

    /// Committed events not yet delivered to the core, oldest first:
    /// `(event_id, topic, payload, created_at_ms)`.
    pub fn pending_events(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, String, String, i64)>, FenceError> {
        let _internal = Internal::enter(&self.guard);
        let run = || -> rusqlite::Result<Vec<(String, String, String, i64)>> {
            self.conn
                .prepare_cached(
                    "SELECT event_id, topic, payload, created_at_ms FROM _sv_event_outbox
                     WHERE plugin = ?1 AND delivered_at_ms IS NULL ORDER BY created_at_ms, rowid LIMIT ?2",
                )?
                .query_map(rusqlite::params![self.plugin, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
        };
        run().map_err(|e| self.sql_error(e.to_string()))
    }

    /// Marks events delivered (the core stored them) and prunes delivered events older
    /// than `retain_ms`.
    pub fn mark_delivered(
        &self,
        event_ids: &[String],
        now_ms: i64,
        retain_ms: i64,
    ) -> Result<(), FenceError> {
        let _internal = Internal::enter(&self.guard);
        let run = || -> rusqlite::Result<()> {
            let mut stmt = self.conn.prepare_cached(
                "UPDATE _sv_event_outbox SET delivered_at_ms = ?2 WHERE event_id = ?1 AND delivered_at_ms IS NULL",
            )?;
            for id in event_ids {
                stmt.execute(rusqlite::params![id, now_ms])?;
            }
            self.conn
                .prepare_cached(
                    "DELETE FROM _sv_event_outbox WHERE plugin = ?1 AND delivered_at_ms < ?2",
                )?
                .execute(rusqlite::params![self.plugin, now_ms - retain_ms])?;
            Ok(())
        };
        run().map_err(|e| self.sql_error(e.to_string()))
    }

    /// Starts the transaction a plugin request runs in (the host owns transactions).
    pub fn begin(&self) -> Result<(), FenceError> {
        self.internal_exec("BEGIN IMMEDIATE")?;
        self.start_request();
        Ok(())
    }

    /// Starts a deferred transaction, for requests that are expected only to read: it
    /// takes no write lock unless a statement writes.
    pub fn begin_deferred(&self) -> Result<(), FenceError> {
        self.internal_exec("BEGIN")?;
        self.start_request();
        Ok(())
    }

    fn start_request(&self) {
        self.in_request.set(true);
        self.request_ended.set(false);
    }

    /// Sets the deadline of the request this connection serves (`None` after it): no
    /// statement runs past it, whatever its own `statement_ms`.
    pub fn set_request_deadline(&self, deadline: Option<Instant>) {
        self.request_deadline.set(deadline);
    }

    /// Commits the request's transaction; refused if a statement ended it.
    pub fn commit(&self) -> Result<(), FenceError> {
        if self.request_ended.get() || (self.in_request.get() && self.conn.is_autocommit()) {
            return Err(FenceError::TransactionEnded {
                plugin: self.plugin.clone(),
            });
        }
        self.internal_exec("COMMIT")?;
        self.in_request.set(false);
        Ok(())
    }

    /// Rolls the request's transaction back (if one is open).
    pub fn rollback(&self) -> Result<(), FenceError> {
        self.in_request.set(false);
        self.request_ended.set(false);
        if self.conn.is_autocommit() {
            return Ok(());
        }
        self.internal_exec("ROLLBACK")
    }

    /// Runs `f` in a transaction: committed if it returns `Ok`, rolled back otherwise.
    pub fn transaction<T, E: From<FenceError>>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, E>,
    ) -> Result<T, E> {
        self.begin()?;
        match f(self) {
            Ok(value) => {
                self.commit()?;
                Ok(value)
            }
            Err(e) => {
                self.rollback()?;
                Err(e)
            }
        }
    }

    /// Applies the plugin's pending migrations, each statement behind the fence, so a
    /// migration cannot create or touch anything outside the plugin's namespace. The
    /// tracking rows (scope `plugin:<id>`) are written by this trusted code. Each
    /// migration commits on its own.
    pub fn migrate(&self, set: &MigrationSet) -> Result<Vec<String>, PluginStoreError> {
        self.migrate_fenced(set, false)
    }

    /// Like [`migrate`](Self::migrate), but all pending migrations in one transaction:
    /// after a failure nothing of any of them remains (what an install needs).
    pub fn migrate_all_or_nothing(
        &self,
        set: &MigrationSet,
    ) -> Result<Vec<String>, PluginStoreError> {
        self.migrate_fenced(set, true)
    }

    fn migrate_fenced(
        &self,
        set: &MigrationSet,
        all_or_nothing: bool,
    ) -> Result<Vec<String>, PluginStoreError> {
        let _internal = Internal::enter(&self.guard);
        let mut runner = |_conn: &Connection, sql: &str| {
            self.guard.internal.store(false, Ordering::SeqCst);
            let result = self
                .execute(sql, &[])
                .map(|_| ())
                .map_err(|e| e.to_string());
            self.guard.internal.store(true, Ordering::SeqCst);
            result
        };
        let result = if all_or_nothing {
            set.deploy_all_or_nothing_with(&self.conn, &mut runner)
        } else {
            set.deploy_with(&self.conn, &mut runner)
        };
        Ok(result?)
    }

    /// The migration status of `set` in this plugin's database.
    pub fn migration_status(
        &self,
        set: &MigrationSet,
    ) -> Result<Vec<sovereign_db::MigrationStatus>, PluginStoreError> {
        let _internal = Internal::enter(&self.guard);
        Ok(set.status(&self.conn)?)
    }

    /// Runs one of the host's own fixed statements through the statement cache.
    fn internal_exec(&self, sql: &str) -> Result<(), FenceError> {
        let _internal = Internal::enter(&self.guard);
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.raw_execute())
            .map(|_| ())
            .map_err(|e| self.sql_error(e.to_string()))
    }

    fn internal_batch(&self, sql: &str) -> Result<(), FenceError> {
        let _internal = Internal::enter(&self.guard);
        self.conn
            .execute_batch(sql)
            .map_err(|e| self.sql_error(e.to_string()))
    }

    fn schema_objects(&self) -> Result<BTreeSet<(String, String)>, FenceError> {
        let _internal = Internal::enter(&self.guard);
        let run = || -> rusqlite::Result<BTreeSet<(String, String)>> {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT type, name FROM main.sqlite_schema")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        };
        run().map_err(|e| self.sql_error(e.to_string()))
    }

    /// The first foreign key of one of the plugin's tables whose parent table is not the
    /// plugin's own: `(table, parent)`.
    fn foreign_key_outside(&self) -> Result<Option<(String, String)>, FenceError> {
        let _internal = Internal::enter(&self.guard);
        let run = || -> rusqlite::Result<Vec<(String, String)>> {
            self.conn
                .prepare_cached(
                    "SELECT m.name, f.\"table\" FROM main.sqlite_schema AS m,
                         pragma_foreign_key_list(m.name, 'main') AS f
                     WHERE m.type = 'table' AND lower(substr(m.name, 1, ?2)) = ?1",
                )?
                .query_map(
                    rusqlite::params![format!("{}__", self.plugin), self.plugin.len() as i64 + 2],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect()
        };
        let references = run().map_err(|e| self.sql_error(e.to_string()))?;
        Ok(references
            .into_iter()
            .find(|(_, parent)| !self.policy.in_namespace(parent)))
    }

    /// Storage quota of the shared store, checked inside the write's transaction: an
    /// upper bound of the plugin's bytes is kept from the file's page count (one cheap
    /// pragma); only when that bound passes the quota are the plugin's own b-trees
    /// measured exactly with `dbstat`. Isolated files are capped by `max_page_count`.
    fn check_quota(&self) -> Result<(), FenceError> {
        if self.mode == DatabaseMode::Isolated {
            return Ok(());
        }
        let quota_bytes = u64::from(self.limits.storage_mb) * 1024 * 1024;
        let pages = self.pragma_i64("PRAGMA main.page_count")?;
        if let Some(state) = self.quota.get() {
            // Whatever the plugin added since the measurement came from new pages or
            // from pages that were free then.
            let bound = (pages - state.pages_at_measure).max(0) + state.free_at_measure;
            if state.measured_bytes + bound as u64 * self.page_size as u64 <= quota_bytes {
                return Ok(());
            }
        }
        let free = self.pragma_i64("PRAGMA main.freelist_count")?;
        let measured = self.measure_bytes()?;
        self.quota.set(Some(QuotaState {
            measured_bytes: measured,
            pages_at_measure: pages,
            free_at_measure: free,
        }));
        if measured > quota_bytes {
            return Err(FenceError::Quota {
                plugin: self.plugin.clone(),
                used_bytes: measured,
                quota_bytes,
            });
        }
        Ok(())
    }

    fn pragma_i64(&self, sql: &str) -> Result<i64, FenceError> {
        let _internal = Internal::enter(&self.guard);
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(|e| self.sql_error(e.to_string()))
    }

    /// Bytes on disk of the plugin's tables and indexes, from `dbstat`.
    pub fn measure_bytes(&self) -> Result<u64, FenceError> {
        let _internal = Internal::enter(&self.guard);
        let run = || -> rusqlite::Result<u64> {
            let names: Vec<String> = self
                .conn
                .prepare_cached(
                    "SELECT name FROM main.sqlite_schema WHERE type IN ('table', 'index')
                     AND lower(substr(tbl_name, 1, ?2)) = ?1",
                )?
                .query_map(
                    rusqlite::params![format!("{}__", self.plugin), self.plugin.len() as i64 + 2],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
            let mut total = 0u64;
            let mut stmt = self
                .conn
                .prepare_cached("SELECT pgsize FROM dbstat('main', 1) WHERE name = ?1")?;
            for name in names {
                let size: Option<i64> = stmt.query_row([&name], |r| r.get(0)).optional()?;
                total += size.unwrap_or(0) as u64;
            }
            Ok(total)
        };
        run().map_err(|e| self.sql_error(e.to_string()))
    }

    /// Whether a table or view of that (lower-case) name exists in any attached schema.
    fn object_exists(&self, lower_name: &str) -> bool {
        let _internal = Internal::enter(&self.guard);
        let schemas: &[&str] = if self.has_mirror() {
            &["main", MIRROR_SCHEMA]
        } else {
            &["main"]
        };
        schemas.iter().any(|schema| {
            self.conn
                .prepare_cached(&format!(
                    "SELECT count(*) > 0 FROM \"{schema}\".sqlite_schema WHERE lower(name) = ?1"
                ))
                .and_then(|mut s| s.query_row([lower_name], |r| r.get::<_, bool>(0)))
                // If we cannot tell, treat it as existing: deny rather than leak.
                .unwrap_or(true)
        })
    }

    fn has_mirror(&self) -> bool {
        self.conn
            .prepare_cached("SELECT count(*) > 0 FROM pragma_database_list WHERE name = 'mirror'")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, bool>(0)))
            .unwrap_or(false)
    }

    fn reset_denial(&self) {
        *self.guard.denial.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn denied(&self, action: String, object: String) -> FenceError {
        tracing::warn!(plugin = %self.plugin, action = %action, object = %object, "plugin SQL denied");
        self.denied.set(self.denied.get() + 1);
        *DENIALS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(self.plugin.clone())
            .or_default() += 1;
        FenceError::Denied {
            plugin: self.plugin.clone(),
            action,
            object,
        }
    }

    fn sql_error(&self, message: String) -> FenceError {
        FenceError::Sql {
            plugin: self.plugin.clone(),
            message,
        }
    }

    fn map_error(&self, e: rusqlite::Error, text: &str) -> FenceError {
        let recorded = self
            .guard
            .denial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((action, object)) = recorded {
            return self.denied(action, object);
        }
        let code = e.sqlite_error_code();
        let message = match &e {
            rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
            other => other.to_string(),
        };
        match code {
            Some(ErrorCode::OperationInterrupted)
                if self.guard.timed_out.load(Ordering::Relaxed) =>
            {
                return FenceError::Deadline {
                    plugin: self.plugin.clone(),
                    limit_ms: self.limits.statement_ms,
                };
            }
            Some(ErrorCode::DiskFull) => {
                let quota_bytes = u64::from(self.limits.storage_mb) * 1024 * 1024;
                return FenceError::Quota {
                    plugin: self.plugin.clone(),
                    used_bytes: quota_bytes,
                    quota_bytes,
                };
            }
            Some(ErrorCode::TooBig) => {
                return FenceError::Limit {
                    plugin: self.plugin.clone(),
                    message,
                };
            }
            _ => {}
        }
        if matches!(e, rusqlite::Error::MultipleStatement) {
            return FenceError::MultipleStatements {
                plugin: self.plugin.clone(),
            };
        }
        // "no such table: notes__x" must look exactly like a denial, or errors would tell
        // which of another plugin's tables and columns exist.
        if (message.starts_with("no such") || message.contains("ambiguous column"))
            && let Some(reference) = self.policy.foreign_reference(text, true, &|_| true)
        {
            return self.denied("read".into(), reference);
        }
        if message.contains("too many")
            || message.contains("too big")
            || message.contains("too large")
        {
            return FenceError::Limit {
                plugin: self.plugin.clone(),
                message,
            };
        }
        self.sql_error(message)
    }
}

enum RunError {
    Sqlite(rusqlite::Error),
    TooLarge,
}

impl From<rusqlite::Error> for RunError {
    fn from(e: rusqlite::Error) -> Self {
        RunError::Sqlite(e)
    }
}

enum Prepared<'a> {
    Cached(rusqlite::CachedStatement<'a>),
    Fresh(rusqlite::Statement<'a>),
}

impl<'a> Prepared<'a> {
    fn get(&self) -> &rusqlite::Statement<'a> {
        match self {
            Prepared::Cached(s) => s,
            Prepared::Fresh(s) => s,
        }
    }

    fn get_mut(&mut self) -> &mut rusqlite::Statement<'a> {
        match self {
            Prepared::Cached(s) => s,
            Prepared::Fresh(s) => s,
        }
    }
}

/// The bytes a value takes once copied out (what [`SqlValue::size`] counts).
fn value_size(value: rusqlite::types::ValueRef<'_>) -> usize {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => 1,
        ValueRef::Integer(_) | ValueRef::Real(_) => 8,
        ValueRef::Text(b) | ValueRef::Blob(b) => b.len(),
    }
}

/// Whether a CREATE statement creates a view or a trigger.
fn creates_stored_code(text: &str) -> bool {
    let mut words = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_uppercase());
    words.next().as_deref() == Some("CREATE")
        && words
            .find(|w| w != "TEMP" && w != "TEMPORARY")
            .is_some_and(|w| w == "VIEW" || w == "TRIGGER")
}

/// Whether the statement starts with `keyword` (case-insensitive), without allocating.
fn starts_with_keyword(text: &str, keyword: &str) -> bool {
    text.len() >= keyword.len()
        && text.as_bytes()[..keyword.len()].eq_ignore_ascii_case(keyword.as_bytes())
        && !text
            .as_bytes()
            .get(keyword.len())
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// The statement's first keyword, upper-cased (comments were stripped by the splitter).
fn first_keyword(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
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
