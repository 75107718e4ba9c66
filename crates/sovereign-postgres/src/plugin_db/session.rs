//! The session itself: one PostgreSQL connection as the plugin's role, owned by the
//! connection's thread (see [`super::PgPluginDb`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Statement};
use sovereign_db::{MigrationSet, MigrationStatus};
use sovereign_db_plugins::{
    CursorId, FenceError, Limits, MAX_OPEN_CURSORS, MAX_RESULT_ROWS, OutboxEvent, Outcome, SqlValue,
};

use super::values::{Decoded, Encoded};
use super::{PgPluginConfig, values};
use crate::sql_text::{self, TextError};
use crate::{PgError, plugin_role_name};
use sovereign_db_plugins::deadline::{self, Alarm};

/// Statements that would end the request's transaction, change the pooled session or
/// reach outside SQL; the platform runs transactions and cursors itself.
const SESSION_KEYWORDS: &[&str] = &[
    "ABORT",
    "BEGIN",
    "CHECKPOINT",
    "CLOSE",
    "CLUSTER",
    "COMMIT",
    "COPY",
    "DEALLOCATE",
    "DECLARE",
    "DISCARD",
    "END",
    "EXECUTE",
    "FETCH",
    "LISTEN",
    "LOAD",
    "MOVE",
    "NOTIFY",
    "PREPARE",
    "RELEASE",
    "RESET",
    "ROLLBACK",
    "SAVEPOINT",
    "SET",
    "START",
    "UNLISTEN",
    "VACUUM",
];

/// Statements that only read (no quota check after them).
const READ_KEYWORDS: &[&str] = &["SELECT", "VALUES", "TABLE", "SHOW", "EXPLAIN"];

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;

/// A running statement failed: PostgreSQL's error, or the fence's.
enum Failure {
    Server(postgres::Error),
    Fence(FenceError),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Self {
        Failure::Server(e)
    }
}

impl From<FenceError> for Failure {
    fn from(e: FenceError) -> Self {
        Failure::Fence(e)
    }
}

/// An open cursor: a server-side `NO SCROLL` cursor of the request's transaction.
struct OpenCursor {
    id: CursorId,
    name: String,
    columns: Arc<[String]>,
    /// Rows fetched but not returned (they did not fit the last batch's bytes).
    carried: VecDeque<Vec<SqlValue>>,
    exhausted: bool,
}

/// The session itself, owned by the connection's thread.
pub(super) struct Session {
    plugin: String,
    limits: Limits,
    pub(super) client: Client,
    alarm: Arc<Alarm>,
    in_request: bool,
    request_deadline: Option<Instant>,
    /// Whether the statement savepoint exists in the request's transaction.
    savepoint: bool,
    /// Whether a statement of the request's transaction succeeded (its work needs a
    /// savepoint's protection from the next one's failure).
    statements_done: bool,
    statements: HashMap<String, Statement>,
    cursors: Vec<OpenCursor>,
    next_cursor: u64,
    /// `SET LOCAL`s that pin the session at the start of every request.
    pin: String,
}

impl Session {
    /// Connects as the plugin's role and checks that it is one: the role of the URL must
    /// be `svp_<id>`, hold no privilege beyond LOGIN (no superuser, CREATEROLE, CREATEDB,
    /// BYPASSRLS) and own the schema `<id>`.
    pub fn open(config: &PgPluginConfig) -> Result<Session, PgError> {
        let plugin = config.plugin_id.clone();
        let role = plugin_role_name(&plugin);
        let mut pg_config: postgres::Config = config.url.parse().map_err(|e| PgError::BadUrl {
            what: format!("the database URL of plugin {plugin}"),
            message: format!("{e}"),
        })?;
        pg_config.application_name(&format!("sv-plugin-{plugin}"));
        let mut client = pg_config
            .connect(postgres::NoTls)
            .map_err(|source| PgError::Connect {
                target: format!("the plugin database as {role}"),
                source,
            })?;
        let check = "SELECT current_user::text,
                            r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolbypassrls OR r.rolreplication,
                            (SELECT n.nspowner::regrole::text FROM pg_namespace n WHERE n.nspname = $1)
                     FROM pg_roles r WHERE r.rolname = current_user";
        let row = client
            .query_one(check, &[&plugin])
            .map_err(|source| PgError::Statement {
                statement: "SELECT current_user, ... FROM pg_roles".into(),
                source,
            })?;
        let (user, privileged, owner): (String, bool, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        let unsafe_role = |message: String| PgError::UnsafeRole {
            plugin: plugin.clone(),
            message,
        };
        if user != role {
            return Err(unsafe_role(format!(
                "the URL logs in as {user:?}, not the plugin's own role {role:?}"
            )));
        }
        if privileged {
            return Err(unsafe_role(format!(
                "{role} holds SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS; \
                 re-run `sv postgres:roles --apply` to reset it"
            )));
        }
        if owner.as_deref() != Some(role.as_str()) {
            return Err(unsafe_role(format!(
                "the schema {plugin:?} is missing or not owned by {role}; \
                 re-run `sv postgres:roles --apply`"
            )));
        }
        let statement_ms = config.limits.statement_ms.max(1);
        // The watchdog cancels at the deadline; the server's own timeout is a backstop a
        // second later (two cancels racing could reach the next statement).
        let pin = format!(
            "SET LOCAL search_path TO \"{plugin}\", core; \
             SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {statement_ms}",
            statement_ms.saturating_add(1000)
        );
        let token = client.cancel_token();
        // The statement fails with SQLSTATE 57014 (query_canceled): a deadline.
        let alarm = Alarm::new(Box::new(move || {
            if let Err(e) = token.cancel_query(postgres::NoTls) {
                tracing::warn!(error = %e, "could not send PostgreSQL a cancel request");
            }
        }));
        Ok(Session {
            plugin,
            limits: config.limits,
            client,
            alarm,
            in_request: false,
            request_deadline: None,
            savepoint: false,
            statements_done: false,
            statements: HashMap::new(),
            cursors: Vec::new(),
            next_cursor: 0,
            pin,
        })
    }

    /// Applies the plugin's pending migrations (its package's `migrations/postgres/`),
    /// as its own role: each in one transaction, tracked in its schema's
    /// `_sv_migrations`. Returns the files applied.
    pub fn migrate(&mut self, set: &MigrationSet) -> Result<Vec<String>, PgError> {
        self.pin_schema()?;
        crate::migrate::deploy(&mut self.client, set)
    }

    /// Where each of the plugin's migrations stands.
    pub fn migration_status(
        &mut self,
        set: &MigrationSet,
    ) -> Result<Vec<MigrationStatus>, PgError> {
        self.pin_schema()?;
        crate::migrate::status(&mut self.client, set)
    }

    /// Points the session at the plugin's schema alone, without a statement timeout
    /// (outside requests).
    pub(super) fn pin_schema(&mut self) -> Result<(), PgError> {
        if self.in_request {
            self.rollback().ok();
        }
        // Migrations may take longer than a request's statement (requests pin their own
        // timeout again).
        let pin = format!(
            "SET search_path TO \"{}\"; SET statement_timeout = 0",
            self.plugin
        );
        self.client
            .batch_execute(&pin)
            .map_err(|source| PgError::Statement {
                statement: pin,
                source,
            })
    }

    /// Whether the server closed the connection (it must be opened again).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The byte cap of a result (`limits.result_kb`).
    pub fn max_result_bytes(&self) -> usize {
        self.limits.result_kb as usize * 1024
    }

    fn sql_error(&self, message: String) -> FenceError {
        FenceError::Sql {
            plugin: self.plugin.clone(),
            message,
        }
    }

    fn deadline_error(&self) -> FenceError {
        FenceError::Deadline {
            plugin: self.plugin.clone(),
            limit_ms: self.limits.statement_ms,
        }
    }

    /// PostgreSQL's error as the fence's, by SQLSTATE.
    fn server_error(&self, e: postgres::Error) -> FenceError {
        let plugin = self.plugin.clone();
        let Some(db) = e.as_db_error() else {
            return self.sql_error(format!("the connection to PostgreSQL failed: {e}"));
        };
        let message = db.message().to_owned();
        let code = db.code();
        if *code == SqlState::QUERY_CANCELED {
            self.deadline_error()
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            tracing::warn!(plugin = %plugin, %message, "plugin SQL denied by PostgreSQL");
            FenceError::Denied {
                plugin,
                action: "run this statement:".into(),
                object: message,
            }
        } else if *code == SqlState::ACTIVE_SQL_TRANSACTION {
            // CREATE DATABASE, ALTER SYSTEM, VACUUM ...: never in a request.
            FenceError::Denied {
                plugin,
                action: "run".into(),
                object: format!("this statement inside the request's transaction ({message})"),
            }
        } else if code.code().starts_with("23") {
            FenceError::Constraint { plugin, message }
        } else if [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::OBJECT_IN_USE,
        ]
        .contains(code)
        {
            FenceError::Busy { plugin, message }
        } else if code.code().starts_with("54") {
            FenceError::Limit { plugin, message }
        } else {
            FenceError::Sql { plugin, message }
        }
    }

    fn text_error(&self, e: TextError) -> FenceError {
        let plugin = self.plugin.clone();
        match e {
            TextError::Empty => FenceError::EmptyStatement { plugin },
            TextError::Multiple => FenceError::MultipleStatements { plugin },
            other => FenceError::Sql {
                plugin,
                message: other.to_string(),
            },
        }
    }

    /// The statement's text for PostgreSQL, refusing what the platform alone may run.
    fn statement(&self, sql: &str) -> Result<sql_text::PgStatement, FenceError> {
        let statement = sql_text::to_postgres(sql).map_err(|e| self.text_error(e))?;
        if SESSION_KEYWORDS.contains(&statement.keyword.as_str()) {
            tracing::warn!(plugin = %self.plugin, keyword = %statement.keyword, "plugin SQL denied");
            return Err(FenceError::Denied {
                plugin: self.plugin.clone(),
                action: "run".into(),
                object: format!(
                    "{} (the platform runs each request's transaction and session; \
                     read large results with a cursor)",
                    statement.keyword
                ),
            });
        }
        Ok(statement)
    }

    /// Starts the transaction a plugin request runs in, pinning the search path and the
    /// statement timeout again (a plugin may have changed its session's).
    pub fn begin(&mut self) -> Result<(), FenceError> {
        if self.in_request {
            self.rollback()?;
        }
        self.cursors.clear();
        self.savepoint = false;
        self.statements_done = false;
        let batch = format!("BEGIN; {}", self.pin);
        self.client
            .batch_execute(&batch)
            .map_err(|e| self.server_error(e))?;
        self.in_request = true;
        Ok(())
    }

    /// Sets the deadline of the request this connection serves (`None` after it).
    pub fn set_request_deadline(&mut self, deadline: Option<Instant>) {
        self.request_deadline = deadline;
    }

    /// Commits the request's transaction (its cursors end with it).
    pub fn commit(&mut self) -> Result<(), FenceError> {
        self.end_request();
        self.client
            .batch_execute("COMMIT")
            .map_err(|e| self.server_error(e))
    }

    /// Rolls the request's transaction back.
    pub fn rollback(&mut self) -> Result<(), FenceError> {
        self.end_request();
        self.client
            .batch_execute("ROLLBACK")
            .map_err(|e| self.server_error(e))
    }

    fn end_request(&mut self) {
        self.cursors.clear();
        self.savepoint = false;
        self.statements_done = false;
        self.in_request = false;
    }

    /// When the statement starting now must end.
    fn statement_deadline(&self) -> Result<Instant, FenceError> {
        let own = Instant::now() + Duration::from_millis(self.limits.statement_ms.into());
        match self.request_deadline {
            Some(request) if request <= Instant::now() => Err(self.deadline_error()),
            Some(request) => Ok(own.min(request)),
            None => Ok(own),
        }
    }

    /// Runs `work` as one statement of the request: in the statement savepoint (undone
    /// alone if it fails), under the deadline. Outside a request, in a transaction of its
    /// own.
    fn in_statement<T>(
        &mut self,
        work: impl FnOnce(&mut Self) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        if !self.in_request {
            self.begin()?;
            let result = self.in_statement(work);
            match &result {
                Ok(_) => self.commit()?,
                Err(_) => self.rollback()?,
            }
            return result;
        }
        let deadline = self.statement_deadline()?;
        // Earlier work of this request is protected by a savepoint; a request's first
        // statement needs none (a failure begins the transaction again, at no cost to
        // the common case of a request that succeeds).
        let guarded = self.statements_done;
        if guarded {
            let mark = if self.savepoint {
                "RELEASE SAVEPOINT sv_statement; SAVEPOINT sv_statement"
            } else {
                "SAVEPOINT sv_statement"
            };
            self.client.batch_execute(mark)?;
            self.savepoint = true;
        }
        let result = {
            let _armed = deadline::arm(&self.alarm, deadline);
            work(self)
        };
        if self.alarm.fired() {
            // The deadline passed, whatever the statement's own outcome: undo it. The
            // cancel may still be on its way to the session and hit any of the next
            // commands, so each is retried once, and a no-op takes it last: it never
            // reaches the plugin's next statement.
            if self.undo_statement(guarded).is_err() {
                self.undo_statement(guarded)?;
            }
            if self.client.batch_execute("SELECT 1").is_err() {
                self.undo_statement(guarded)?;
            }
            return Err(Failure::Fence(self.deadline_error()));
        }
        match &result {
            Ok(_) => self.statements_done = true,
            // Undo the statement alone (a cancel or an error leaves the rest intact).
            Err(_) => self
                .undo_statement(guarded)
                .map_err(|e| Failure::Fence(self.server_error(e)))?,
        }
        result
    }

    /// Undoes the statement just run: back to its savepoint, or, when nothing ran before
    /// it in this request, the whole transaction, begun again.
    fn undo_statement(&mut self, guarded: bool) -> Result<(), postgres::Error> {
        if guarded {
            self.client
                .batch_execute("ROLLBACK TO SAVEPOINT sv_statement")
        } else {
            self.savepoint = false;
            let restart = format!("ROLLBACK; BEGIN; {}", self.pin);
            self.client.batch_execute(&restart)
        }
    }

    fn fence(&self, failure: Failure) -> FenceError {
        match failure {
            Failure::Fence(e) => e,
            Failure::Server(e) => self.server_error(e),
        }
    }

    /// A prepared statement for `text`, cached per connection.
    fn prepare(&mut self, text: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(text) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(text)?;
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(text.to_owned(), statement.clone());
        Ok(statement)
    }

    /// The parameters encoded for the types PostgreSQL inferred.
    fn encode(&self, statement: &Statement, params: &[SqlValue]) -> Result<Vec<Encoded>, Failure> {
        if statement.params().len() != params.len() {
            return Err(self
                .sql_error(format!(
                    "the statement takes {} parameters, {} were given",
                    statement.params().len(),
                    params.len()
                ))
                .into());
        }
        let max_value = self.limits.value_kb as usize * 1024;
        params
            .iter()
            .zip(statement.params())
            .enumerate()
            .map(|(index, (value, ty))| {
                if value.size() > max_value {
                    return Err(FenceError::Limit {
                        plugin: self.plugin.clone(),
                        message: format!(
                            "parameter ?{} is {} bytes, over limits.value_kb ({max_value} bytes)",
                            index + 1,
                            value.size()
                        ),
                    }
                    .into());
                }
                values::encode(value, ty).map_err(|message| {
                    self.sql_error(format!("parameter ?{}: {message}", index + 1))
                        .into()
                })
            })
            .collect()
    }

    /// The column names of a statement (a value of a type plugins cannot read fails when
    /// it is read, after the server has checked privileges).
    fn column_names(statement: &Statement) -> Arc<[String]> {
        statement
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect()
    }

    /// Runs one statement behind the fence and returns its rows or what it changed.
    /// `last_insert_id` is the last value a sequence (an identity or serial column) gave
    /// this session after an INSERT, else 0; portable code uses `RETURNING`.
    pub fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<Outcome, FenceError> {
        let statement = self.statement(sql)?;
        self.in_statement(|db| db.run(&statement, params))
            .map_err(|f| self.fence(f))
    }

    fn run(
        &mut self,
        statement: &sql_text::PgStatement,
        params: &[SqlValue],
    ) -> Result<Outcome, Failure> {
        let prepared = self.prepare(&statement.text)?;
        let encoded = self.encode(&prepared, params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = encoded.iter().map(|e| e as _).collect();
        let keyword = statement.keyword.as_str();
        if ["CREATE", "ALTER", "DROP"].contains(&keyword) {
            // Cached plans may name what changed.
            self.statements.clear();
        }
        let outcome = if prepared.columns().is_empty() {
            let rows_affected = self.client.execute(&prepared, &refs)?;
            let last_insert_id = if keyword == "INSERT" && rows_affected > 0 {
                self.client
                    .query_one("SELECT public.sv_lastval()", &[])?
                    .get::<_, i64>(0)
            } else {
                0
            };
            Outcome::Changed {
                rows_affected,
                last_insert_id,
            }
        } else {
            let columns = Self::column_names(&prepared);
            let max_bytes = self.max_result_bytes();
            let mut rows = Vec::new();
            let mut bytes = 0usize;
            let mut iter = self.client.query_raw(&prepared, refs.iter().copied())?;
            let too_large = FenceError::ResultTooLarge {
                plugin: self.plugin.clone(),
                max_bytes,
            };
            while let Some(row) = postgres::fallible_iterator::FallibleIterator::next(&mut iter)? {
                if rows.len() >= MAX_RESULT_ROWS {
                    return Err(too_large.into());
                }
                let values = decode(&self.plugin, &row)?;
                bytes += values.iter().map(SqlValue::size).sum::<usize>();
                if bytes > max_bytes {
                    return Err(too_large.into());
                }
                rows.push(values);
            }
            Outcome::Rows { columns, rows }
        };
        if !READ_KEYWORDS.contains(&keyword) {
            self.check_quota()?;
        }
        Ok(outcome)
    }

    /// Bytes the plugin's schema holds: every table, with its indexes and TOAST.
    pub fn measure_bytes(&mut self) -> Result<u64, FenceError> {
        self.schema_bytes().map_err(|e| self.server_error(e))
    }

    fn schema_bytes(&mut self) -> Result<u64, postgres::Error> {
        let size: i64 = self
            .client
            .query_one(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c
                 WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
                   AND c.relkind IN ('r', 'm')",
                &[&self.plugin],
            )?
            .get(0);
        Ok(size.max(0) as u64)
    }

    fn check_quota(&mut self) -> Result<(), Failure> {
        let used_bytes = self.schema_bytes()?;
        let quota_bytes = u64::from(self.limits.storage_mb) * 1024 * 1024;
        if used_bytes > quota_bytes {
            return Err(FenceError::Quota {
                plugin: self.plugin.clone(),
                used_bytes,
                quota_bytes,
            }
            .into());
        }
        Ok(())
    }

    /// Opens a cursor over one query (it must only read) in the request's transaction;
    /// it ends with the transaction.
    pub fn open_cursor(&mut self, sql: &str, params: &[SqlValue]) -> Result<CursorId, FenceError> {
        let statement = self.statement(sql)?;
        if !["SELECT", "WITH", "VALUES", "TABLE"].contains(&statement.keyword.as_str()) {
            return Err(FenceError::NotAQuery {
                plugin: self.plugin.clone(),
            });
        }
        if !self.in_request {
            return Err(self.sql_error("a cursor lives in a request's transaction".into()));
        }
        if self.cursors.len() >= MAX_OPEN_CURSORS {
            return Err(FenceError::Limit {
                plugin: self.plugin.clone(),
                message: format!(
                    "at most {MAX_OPEN_CURSORS} cursors may be open at once; close one first"
                ),
            });
        }
        self.next_cursor += 1;
        let id = CursorId::from_raw(self.next_cursor);
        let name = format!("sv_cursor_{}", self.next_cursor);
        let declare = format!("DECLARE {name} NO SCROLL CURSOR FOR {}", statement.text);
        let columns = self
            .in_statement(|db| {
                let query = db.prepare(&statement.text)?;
                let columns = Self::column_names(&query);
                let encoded = db.encode(&query, params)?;
                let refs: Vec<&(dyn ToSql + Sync)> = encoded.iter().map(|e| e as _).collect();
                let declared = db
                    .client
                    .prepare_typed(&declare, query.params())
                    .and_then(|declared| db.client.execute(&declared, &refs));
                match declared {
                    Ok(_) => Ok(columns),
                    // A data-modifying WITH cannot be a cursor.
                    Err(e) if e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) => {
                        Err(FenceError::NotAQuery {
                            plugin: db.plugin.clone(),
                        }
                        .into())
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .map_err(|f| self.fence(f))?;
        self.cursors.push(OpenCursor {
            id,
            name,
            columns,
            carried: VecDeque::new(),
            exhausted: false,
        });
        Ok(id)
    }

    fn cursor_index(&self, id: CursorId) -> Result<usize, FenceError> {
        self.cursors
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| FenceError::CursorClosed {
                plugin: self.plugin.clone(),
            })
    }

    /// The column names of an open cursor.
    pub fn cursor_columns(&self, id: CursorId) -> Result<Arc<[String]>, FenceError> {
        Ok(Arc::clone(&self.cursors[self.cursor_index(id)?].columns))
    }

    /// The next rows of a cursor: at most `max_rows` (and [`MAX_RESULT_ROWS`]) and
    /// `limits.result_kb` of values; none when it is done. A row that does not fit is
    /// returned by the next call; a single row over the byte cap is `ResultTooLarge`.
    pub fn cursor_next(
        &mut self,
        id: CursorId,
        max_rows: usize,
    ) -> Result<Vec<Vec<SqlValue>>, FenceError> {
        let index = self.cursor_index(id)?;
        let want = max_rows.clamp(1, MAX_RESULT_ROWS);
        let missing = want.saturating_sub(self.cursors[index].carried.len());
        if missing > 0 && !self.cursors[index].exhausted {
            let fetch = format!("FETCH FORWARD {missing} FROM {}", self.cursors[index].name);
            let fetched = self
                .in_statement(|db| {
                    let rows = db.client.query(&fetch, &[])?;
                    rows.iter()
                        .map(|row| decode(&db.plugin, row))
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(|f| self.fence(f))?;
            let cursor = &mut self.cursors[index];
            cursor.exhausted = fetched.len() < missing;
            cursor.carried.extend(fetched);
        }
        let max_bytes = self.max_result_bytes();
        let cursor = &mut self.cursors[index];
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while batch.len() < want {
            let Some(row) = cursor.carried.front() else {
                break;
            };
            let size: usize = row.iter().map(SqlValue::size).sum();
            if bytes + size > max_bytes {
                if batch.is_empty() {
                    return Err(FenceError::ResultTooLarge {
                        plugin: self.plugin.clone(),
                        max_bytes,
                    });
                }
                break;
            }
            bytes += size;
            batch.extend(cursor.carried.pop_front());
        }
        Ok(batch)
    }

    /// Closes a cursor (a no-op for one already closed).
    pub fn close_cursor(&mut self, id: CursorId) {
        let Ok(index) = self.cursor_index(id) else {
            return;
        };
        let cursor = self.cursors.remove(index);
        let close = format!("CLOSE {}", cursor.name);
        if let Err(failure) = self.in_statement(|db| Ok(db.client.batch_execute(&close)?)) {
            tracing::debug!(plugin = %self.plugin, error = %self.fence(failure), "closing a cursor failed");
        }
    }

    /// Records an event in the outbox inside the current transaction (it exists only if
    /// the transaction commits); returns its id. The caller checks the topic against the
    /// manifest; the core checks it again.
    pub fn emit_event(&mut self, topic: &str, payload_json: &str) -> Result<String, FenceError> {
        let event_id: String = {
            use rand::Rng;
            let bytes: [u8; 16] = rand::rng().random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        let now_ms = now_ms();
        self.in_statement(|db| {
            db.client.execute(
                "INSERT INTO public._sv_event_outbox (event_id, plugin, topic, payload, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&event_id, &db.plugin, &topic, &payload_json, &now_ms],
            )?;
            Ok(())
        })
        .map_err(|f| self.fence(f))?;
        Ok(event_id)
    }

    /// Committed events not yet delivered to the core, oldest first:
    /// `(event_id, topic, payload, created_at_ms)`.
    pub fn pending_events(&mut self, limit: usize) -> Result<Vec<OutboxEvent>, FenceError> {
        let rows = self
            .client
            .query(
                "SELECT event_id, topic, payload, created_at_ms FROM public._sv_event_outbox
                 WHERE plugin = $1 AND delivered_at_ms IS NULL ORDER BY seq LIMIT $2",
                &[&self.plugin, &(limit as i64)],
            )
            .map_err(|e| self.server_error(e))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    /// Marks events delivered (the core stored them) and prunes delivered events older
    /// than `retain_ms`.
    pub fn mark_delivered(
        &mut self,
        event_ids: &[String],
        now_ms: i64,
        retain_ms: i64,
    ) -> Result<(), FenceError> {
        let ids: Vec<&str> = event_ids.iter().map(String::as_str).collect();
        self.client
            .execute(
                "UPDATE public._sv_event_outbox SET delivered_at_ms = $2
                 WHERE event_id = ANY($1) AND delivered_at_ms IS NULL",
                &[&ids, &now_ms],
            )
            .and_then(|_| {
                self.client.execute(
                    "DELETE FROM public._sv_event_outbox WHERE plugin = $1 AND delivered_at_ms < $2",
                    &[&self.plugin, &(now_ms - retain_ms)],
                )
            })
            .map(|_| ())
            .map_err(|e| self.server_error(e))
    }
}

/// Decodes one row of plugin `plugin`'s result.
fn decode(plugin: &str, row: &postgres::Row) -> Result<Vec<SqlValue>, Failure> {
    (0..row.len())
        .map(|i| {
            row.try_get::<_, Decoded>(i).map(|d| d.0).map_err(|e| {
                // The driver's error says which column; its source says what is wrong.
                let why = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
                Failure::Fence(FenceError::Sql {
                    plugin: plugin.to_owned(),
                    message: format!("column {:?}: {why}", row.columns()[i].name()),
                })
            })
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
