//! A plugin's connection on MySQL/MariaDB, as its own account (`svp_<id>`) in its own
//! database: the server keeps the fence (that database and the granted mirror columns,
//! nothing else); this side keeps what grants cannot:
//!
//! - plugin SQL is checked before it is sent ([`crate::sql_text`]: one statement, no
//!   `HANDLER`, variables, executable comments, `SET`, transaction control, ...);
//! - one transaction per request; schema changes only outside requests (MySQL commits
//!   the open transaction around every DDL statement, which would break a request's
//!   all-or-nothing), that is in migrations;
//! - deadlines: a statement still running at its deadline (what is left of
//!   `limits.statement_ms` and of the request) is stopped from outside with `KILL
//!   QUERY`, sent over a connection of the plugin's own account
//!   ([`sovereign_db_plugins::deadline`]); MariaDB's `max_statement_time`, set once per
//!   connection a second past `limits.statement_ms`, is the backstop (the plugin cannot
//!   change it: `SET` never reaches the server);
//! - the storage quota (the database's data and index bytes after every write; a write
//!   that goes past it rolls its request back), and the same value and result caps as
//!   elsewhere;
//! - cursors, read in one pass and handed out in batches (MySQL's protocol holds the
//!   connection while a result streams): capped at `limits.memory_mb`;
//! - the event outbox, a table of the plugin's own database.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use sovereign_db_plugins::{
    CursorId, FenceError, FencedConnection, Limits, MAX_OPEN_CURSORS, MAX_RESULT_ROWS, OutboxEvent,
    Outcome, SqlValue,
};

use sovereign_db_plugins::deadline::{self, Alarm};

use crate::Denial;
use crate::sql_text::{self, StatementKind, TextError};

/// How much later than its deadline the server's own `max_statement_time` stops a
/// statement (when the kill could not be sent), in milliseconds.
const SERVER_BACKSTOP_MS: u64 = 1000;

/// What a plugin's MySQL connection needs.
#[derive(Debug, Clone)]
pub struct MyPluginConfig {
    /// Plugin id.
    pub plugin_id: String,
    /// `mysql://svp_<id>:PASSWORD@HOST:PORT/<plugin database>_<id>`.
    pub url: String,
    /// Limits from the manifest.
    pub limits: Limits,
}

/// An open cursor: its columns and the rows not handed out yet.
struct Cursor {
    id: CursorId,
    columns: Arc<[String]>,
    rows: VecDeque<Vec<SqlValue>>,
}

/// A plugin's fenced connection on MySQL/MariaDB (see the module documentation).
pub struct MyPluginDb {
    plugin: String,
    conn: mysql::Conn,
    limits: Limits,
    in_request: bool,
    deadline: Option<Instant>,
    cursors: Vec<Cursor>,
    next_cursor: u64,
    /// Stops this connection's statement at its deadline.
    alarm: Arc<Alarm>,
    /// Statements the watchdog stopped.
    stopped: u64,
}

/// Why a statement failed, before it is told to the plugin.
enum Failure {
    Fence(FenceError),
    Server(mysql::Error),
}

impl From<mysql::Error> for Failure {
    fn from(e: mysql::Error) -> Failure {
        Failure::Server(e)
    }
}

impl From<FenceError> for Failure {
    fn from(e: FenceError) -> Failure {
        Failure::Fence(e)
    }
}

impl MyPluginDb {
    /// Connects as the plugin's account and checks that it is `svp_<id>` in its own
    /// database.
    pub fn open(config: &MyPluginConfig) -> Result<MyPluginDb, crate::MyError> {
        let mut conn = crate::roles::connect(&config.url)?;
        let expected = crate::plugin_account_name(&config.plugin_id);
        let check = "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)";
        let account: Option<String> =
            conn.query_first(check)
                .map_err(|source| crate::MyError::Statement {
                    statement: check.into(),
                    source,
                })?;
        if account.as_deref() != Some(expected.as_str()) {
            return Err(crate::MyError::BadUrl {
                what: format!("plugin {}'s login", config.plugin_id),
                shown: format!("{:?}", crate::StoreUrl::parse("it", &config.url).ok()),
                problem: format!("it logs in as {account:?}, not {expected}"),
            });
        }
        // The server's own limit, a margin after the statement's: the backstop for when
        // the kill at the deadline cannot be sent (the plugin cannot `SET` it away).
        let backstop = u64::from(config.limits.statement_ms.max(1)) + SERVER_BACKSTOP_MS;
        let pin = format!(
            "SET SESSION max_statement_time = {}.{:03}",
            backstop / 1000,
            backstop % 1000
        );
        conn.query_drop(&pin)
            .map_err(|source| crate::MyError::Statement {
                statement: pin.clone(),
                source,
            })?;
        let (login, thread) = (config.url.clone(), conn.connection_id());
        let alarm = Alarm::new(Box::new(move || {
            let killed = crate::roles::connect(&login).and_then(|mut own| {
                own.query_drop(format!("KILL QUERY {thread}"))
                    .map_err(|source| crate::MyError::Statement {
                        statement: "KILL QUERY".into(),
                        source,
                    })
            });
            if let Err(e) = killed {
                tracing::warn!(error = %e, "could not stop a plugin statement past its deadline");
            }
        }));
        Ok(MyPluginDb {
            plugin: config.plugin_id.clone(),
            conn,
            alarm,
            stopped: 0,
            limits: config.limits,
            in_request: false,
            deadline: None,
            cursors: Vec::new(),
            next_cursor: 1,
        })
    }

    fn denied(&self, action: &str, object: impl Into<String>) -> FenceError {
        FenceError::Denied {
            plugin: self.plugin.clone(),
            action: action.to_owned(),
            object: object.into(),
        }
    }

    /// A statement's text refused before it was sent, as the plugin's error.
    fn text_error(&self, e: TextError) -> FenceError {
        match e {
            TextError::Empty => FenceError::EmptyStatement {
                plugin: self.plugin.clone(),
            },
            TextError::Multiple => FenceError::MultipleStatements {
                plugin: self.plugin.clone(),
            },
            TextError::Unterminated(_) | TextError::BadParameter(_) => FenceError::Sql {
                plugin: self.plugin.clone(),
                message: e.to_string(),
            },
            TextError::Kind(kind) => self.denied("run", format!("{kind} statements")),
            TextError::ExecutableComment => self.denied("use", "executable comments"),
            TextError::Variable => self.denied("use", "variables"),
            TextError::SelectInto => self.denied("run", "SELECT ... INTO"),
            TextError::Engine(engine) => self.denied("use", format!("the storage engine {engine}")),
        }
    }

    /// A server error as the plugin's error: denials by their code, the deadline, the
    /// rest as SQL errors of its own statement.
    fn server_error(&self, e: mysql::Error) -> FenceError {
        match Denial::of(&e) {
            Some(Denial::Interrupted) => FenceError::Deadline {
                plugin: self.plugin.clone(),
                limit_ms: self.limits.statement_ms,
            },
            Some(_) => self.denied("reach", "what this statement names"),
            None => match &e {
                mysql::Error::MySqlError(server)
                    if [1062, 1048, 1451, 1452, 3819, 4025].contains(&server.code) =>
                {
                    FenceError::Constraint {
                        plugin: self.plugin.clone(),
                        message: server.message.clone(),
                    }
                }
                mysql::Error::MySqlError(server) if [1205, 1213].contains(&server.code) => {
                    FenceError::Busy {
                        plugin: self.plugin.clone(),
                        message: server.message.clone(),
                    }
                }
                mysql::Error::MySqlError(server) => FenceError::Sql {
                    plugin: self.plugin.clone(),
                    message: server.message.clone(),
                },
                other => FenceError::Sql {
                    plugin: self.plugin.clone(),
                    message: format!("the connection failed: {other}"),
                },
            },
        }
    }

    fn fail(&self, failure: Failure) -> FenceError {
        match failure {
            Failure::Fence(e) => e,
            Failure::Server(e) => self.server_error(e),
        }
    }

    /// The statement's deadline: what is left of the statement's and the request's time
    /// (refusing to start past the request's).
    fn statement_deadline(&self) -> Result<Instant, Failure> {
        let mut limit = Duration::from_millis(u64::from(self.limits.statement_ms.max(1)));
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FenceError::Deadline {
                    plugin: self.plugin.clone(),
                    limit_ms: self.limits.request_ms,
                }
                .into());
            }
            limit = limit.min(left);
        }
        Ok(Instant::now() + limit)
    }

    /// Statements the watchdog stopped at their deadline (with `KILL QUERY`).
    pub fn stopped_at_deadline(&self) -> u64 {
        self.stopped
    }

    fn params(
        &self,
        statement: &sql_text::MyStatement,
        params: &[SqlValue],
    ) -> Result<mysql::Params, FenceError> {
        let max = self.limits.value_kb as usize * 1024;
        let mut values = Vec::with_capacity(statement.bind.len());
        for index in &statement.bind {
            let value = params.get(*index).ok_or_else(|| FenceError::Sql {
                plugin: self.plugin.clone(),
                message: format!(
                    "the statement uses parameter ?{} but {} values were given",
                    index + 1,
                    params.len()
                ),
            })?;
            if value.size() > max {
                return Err(FenceError::Limit {
                    plugin: self.plugin.clone(),
                    message: format!("a value is larger than limits.value_kb ({max} bytes)"),
                });
            }
            values.push(match value {
                SqlValue::Null => mysql::Value::NULL,
                SqlValue::Integer(v) => mysql::Value::Int(*v),
                SqlValue::Real(v) => mysql::Value::Double(*v),
                SqlValue::Text(v) => mysql::Value::Bytes(v.as_bytes().to_vec()),
                SqlValue::Blob(v) => mysql::Value::Bytes(v.clone()),
            });
        }
        Ok(if values.is_empty() {
            mysql::Params::Empty
        } else {
            mysql::Params::Positional(values)
        })
    }

    /// Checks and runs a statement, collecting its rows (within the result caps) or what
    /// it changed; a write is followed by the quota check.
    fn run(&mut self, sql: &str, params: &[SqlValue]) -> Result<Outcome, Failure> {
        let statement = sql_text::to_mysql(sql).map_err(|e| self.text_error(e))?;
        if statement.kind == StatementKind::Schema && self.in_request {
            return Err(self
                .denied(
                    "change",
                    "the schema in a request (MySQL would commit the request's writes): use a migration",
                )
                .into());
        }
        let max_bytes = self.limits.result_kb as usize * 1024;
        let outcome = self.send(&statement, params, MAX_RESULT_ROWS, max_bytes)?;
        if statement.kind == StatementKind::Write {
            self.check_quota()?;
        }
        Ok(outcome)
    }

    /// Sends a checked statement under its deadline (stopped from outside when it passes)
    /// and collects at most `max_rows` rows and `max_bytes` bytes of values, or what it
    /// changed.
    fn send(
        &mut self,
        statement: &sql_text::MyStatement,
        params: &[SqlValue],
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Outcome, Failure> {
        let bound = self.params(statement, params)?;
        let armed = deadline::arm(&self.alarm, self.statement_deadline()?);
        let outcome = self.collect(statement, bound, max_rows, max_bytes);
        drop(armed);
        if self.alarm.fired() {
            self.stopped += 1;
        }
        outcome
    }

    fn collect(
        &mut self,
        statement: &sql_text::MyStatement,
        bound: mysql::Params,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Outcome, Failure> {
        let plugin = self.plugin.clone();
        let too_large = FenceError::ResultTooLarge {
            plugin: plugin.clone(),
            max_bytes,
        };
        let mut result = self.conn.exec_iter(statement.text.as_str(), bound)?;
        let columns: Arc<[String]> = result
            .columns()
            .as_ref()
            .iter()
            .map(|c| c.name_str().into_owned())
            .collect();
        if columns.is_empty() {
            return Ok(Outcome::Changed {
                rows_affected: result.affected_rows(),
                last_insert_id: result.last_insert_id().unwrap_or(0) as i64,
            });
        }
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        for row in result.by_ref() {
            let row = row?;
            if rows.len() >= max_rows {
                return Err(too_large.into());
            }
            let values = decode(&plugin, row)?;
            bytes += values.iter().map(SqlValue::size).sum::<usize>();
            if bytes > max_bytes {
                return Err(too_large.into());
            }
            rows.push(values);
        }
        Ok(Outcome::Rows { columns, rows })
    }

    /// Bytes the plugin's database holds (InnoDB's data and index pages).
    pub fn measure_bytes(&mut self) -> Result<u64, FenceError> {
        self.conn
            .query_first::<u64, _>(
                "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS UNSIGNED)
                 FROM information_schema.tables WHERE table_schema = DATABASE()",
            )
            .map(Option::unwrap_or_default)
            .map_err(|e| self.server_error(e))
    }

    fn check_quota(&mut self) -> Result<(), Failure> {
        let used = self.measure_bytes()?;
        let quota = u64::from(self.limits.storage_mb) * 1024 * 1024;
        if used > quota {
            return Err(FenceError::Quota {
                plugin: self.plugin.clone(),
                used_bytes: used,
                quota_bytes: quota,
            }
            .into());
        }
        Ok(())
    }

    /// Applies the pending migrations of `set` (the package's `migrations/mysql/`), each
    /// statement checked like any plugin SQL, tracked in the database's `_sv_migrations`;
    /// returns the files applied. MySQL commits every DDL statement, so a migration that
    /// fails part-way keeps its statements before the failing one: the error says which
    /// statement failed and how many ran (a migration should be written so that it can
    /// be finished by hand, or be one statement).
    pub fn migrate(
        &mut self,
        set: &sovereign_db::MigrationSet,
    ) -> Result<Vec<String>, crate::MyError> {
        if self.in_request {
            let _ = self.rollback();
        }
        let bookkeeping = |statement: &str| {
            let statement = statement.to_owned();
            move |source| crate::MyError::Statement { statement, source }
        };
        let applied = self.applied(set)?;
        let pending: Vec<sovereign_db::Migration> =
            set.plan_of(&applied)?.into_iter().cloned().collect();
        let mut done = Vec::new();
        for migration in pending {
            let statements = sql_text::split_script(&migration.sql).map_err(|e| {
                crate::MyError::MigrationFailed {
                    file: migration.file_name(),
                    ran: 0,
                    source: self.text_error(e),
                }
            })?;
            for (ran, statement) in statements.iter().enumerate() {
                self.execute_migration(statement).map_err(|source| {
                    crate::MyError::MigrationFailed {
                        file: migration.file_name(),
                        ran,
                        source,
                    }
                })?;
            }
            self.conn
                .exec_drop(
                    crate::migrate::RECORD,
                    (
                        set.scope(),
                        migration.version,
                        &migration.name,
                        migration.checksum(),
                    ),
                )
                .map_err(bookkeeping(crate::migrate::RECORD))?;
            done.push(migration.file_name());
        }
        Ok(done)
    }

    /// The tracking table's rows of `set`'s scope (made if missing).
    fn applied(
        &mut self,
        set: &sovereign_db::MigrationSet,
    ) -> Result<Vec<sovereign_db::AppliedRow>, crate::MyError> {
        crate::migrate::applied(&mut self.conn, set.scope())
    }

    /// Where each of `set`'s migrations stands in the plugin's database.
    pub fn migration_status(
        &mut self,
        set: &sovereign_db::MigrationSet,
    ) -> Result<Vec<sovereign_db::MigrationStatus>, crate::MyError> {
        let applied = self.applied(set)?;
        Ok(set.status_of(&applied))
    }

    /// The migrations `migrate` would apply, by file name.
    pub fn migration_plan(
        &mut self,
        set: &sovereign_db::MigrationSet,
    ) -> Result<Vec<String>, crate::MyError> {
        let applied = self.applied(set)?;
        Ok(set
            .plan_of(&applied)?
            .iter()
            .map(|m| m.file_name())
            .collect())
    }

    /// Runs a migration's statement (schema changes allowed), outside requests.
    pub fn execute_migration(&mut self, sql: &str) -> Result<Outcome, FenceError> {
        if self.in_request {
            self.rollback()?;
        }
        self.run(sql, &[]).map_err(|f| self.fail(f))
    }
}

/// Converts one row ([`crate::values::row_values`]).
fn decode(plugin: &str, row: mysql::Row) -> Result<Vec<SqlValue>, Failure> {
    crate::values::row_values(row).map_err(|e| {
        Failure::Fence(FenceError::Sql {
            plugin: plugin.to_owned(),
            message: e.to_string(),
        })
    })
}

impl FencedConnection for MyPluginDb {
    fn plugin_id(&self) -> &str {
        &self.plugin
    }

    fn begin(&mut self, _writes_expected: bool) -> Result<(), FenceError> {
        if self.in_request {
            self.rollback()?;
        }
        self.conn
            .query_drop("START TRANSACTION")
            .map_err(|e| self.server_error(e))?;
        self.in_request = true;
        Ok(())
    }

    fn set_request_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    fn commit(&mut self) -> Result<(), FenceError> {
        self.cursors.clear();
        self.in_request = false;
        self.conn
            .query_drop("COMMIT")
            .map_err(|e| self.server_error(e))
    }

    fn rollback(&mut self) -> Result<(), FenceError> {
        self.cursors.clear();
        self.in_request = false;
        self.conn
            .query_drop("ROLLBACK")
            .map_err(|e| self.server_error(e))
    }

    fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<Outcome, FenceError> {
        match self.run(sql, params) {
            Ok(outcome) => Ok(outcome),
            Err(Failure::Fence(FenceError::Quota {
                plugin,
                used_bytes,
                quota_bytes,
            })) => {
                // The write that went past the quota is undone with its request.
                let _ = self.rollback();
                Err(FenceError::Quota {
                    plugin,
                    used_bytes,
                    quota_bytes,
                })
            }
            Err(f) => Err(self.fail(f)),
        }
    }

    fn open_cursor(&mut self, sql: &str, params: &[SqlValue]) -> Result<CursorId, FenceError> {
        let statement = sql_text::to_mysql(sql).map_err(|e| self.text_error(e))?;
        if statement.kind != StatementKind::Read {
            return Err(FenceError::NotAQuery {
                plugin: self.plugin.clone(),
            });
        }
        if self.cursors.len() >= MAX_OPEN_CURSORS {
            return Err(FenceError::Limit {
                plugin: self.plugin.clone(),
                message: format!("at most {MAX_OPEN_CURSORS} cursors are open at once"),
            });
        }
        // Read in one pass (the protocol holds the connection while rows stream), within
        // the plugin's memory limit rather than its per-result cap.
        let budget = self.limits.memory_mb as usize * 1024 * 1024;
        let (columns, rows) = match self.send(&statement, params, usize::MAX, budget) {
            Ok(Outcome::Rows { columns, rows }) => (columns, rows),
            Ok(Outcome::Changed { .. }) => (Arc::from(Vec::new()), Vec::new()),
            Err(f) => return Err(self.fail(f)),
        };
        let id = CursorId::from_raw(self.next_cursor);
        self.next_cursor += 1;
        self.cursors.push(Cursor {
            id,
            columns,
            rows: rows.into(),
        });
        Ok(id)
    }

    fn cursor_columns(&self, id: CursorId) -> Result<Arc<[String]>, FenceError> {
        self.cursors
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.columns.clone())
            .ok_or_else(|| FenceError::CursorClosed {
                plugin: self.plugin.clone(),
            })
    }

    fn cursor_next(
        &mut self,
        id: CursorId,
        max_rows: usize,
    ) -> Result<Vec<Vec<SqlValue>>, FenceError> {
        let max_bytes = self.limits.result_kb as usize * 1024;
        let plugin = self.plugin.clone();
        let cursor = self
            .cursors
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| FenceError::CursorClosed {
                plugin: plugin.clone(),
            })?;
        let want = max_rows.clamp(1, MAX_RESULT_ROWS);
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while batch.len() < want {
            let Some(row) = cursor.rows.front() else {
                break;
            };
            let size: usize = row.iter().map(SqlValue::size).sum();
            if bytes + size > max_bytes {
                if batch.is_empty() {
                    return Err(FenceError::ResultTooLarge { plugin, max_bytes });
                }
                break;
            }
            bytes += size;
            batch.push(cursor.rows.pop_front().expect("front was there"));
        }
        Ok(batch)
    }

    fn close_cursor(&mut self, id: CursorId) {
        self.cursors.retain(|c| c.id != id);
    }

    fn emit_event(&mut self, topic: &str, payload_json: &str) -> Result<String, FenceError> {
        let insert = "INSERT INTO _sv_event_outbox (event_id, plugin, topic, payload, created_at_ms)
                      VALUES (REPLACE(UUID(), '-', ''), ?, ?, ?, CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED))";
        self.conn
            .exec_drop(insert, (&self.plugin, topic, payload_json))
            .map_err(|e| self.server_error(e))?;
        let seq = self.conn.last_insert_id();
        self.conn
            .exec_first::<String, _, _>(
                "SELECT event_id FROM _sv_event_outbox WHERE seq = ?",
                (seq,),
            )
            .map_err(|e| self.server_error(e))?
            .ok_or_else(|| FenceError::Sql {
                plugin: self.plugin.clone(),
                message: "the event just recorded is gone".into(),
            })
    }

    fn pending_events(&mut self, limit: usize) -> Result<Vec<OutboxEvent>, FenceError> {
        self.conn
            .exec(
                "SELECT event_id, topic, payload, created_at_ms FROM _sv_event_outbox
                 WHERE delivered_at_ms IS NULL ORDER BY seq LIMIT ?",
                (limit as u64,),
            )
            .map_err(|e| self.server_error(e))
    }

    fn mark_delivered(
        &mut self,
        event_ids: &[String],
        now_ms: i64,
        retain_ms: i64,
    ) -> Result<(), FenceError> {
        for id in event_ids {
            self.conn
                .exec_drop(
                    "UPDATE _sv_event_outbox SET delivered_at_ms = ? WHERE event_id = ? AND delivered_at_ms IS NULL",
                    (now_ms, id),
                )
                .map_err(|e| self.server_error(e))?;
        }
        self.conn
            .exec_drop(
                "DELETE FROM _sv_event_outbox WHERE delivered_at_ms IS NOT NULL AND delivered_at_ms < ?",
                (now_ms - retain_ms,),
            )
            .map_err(|e| self.server_error(e))
    }
}
