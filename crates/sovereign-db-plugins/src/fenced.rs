//! What the extension host needs of a plugin's connection, whichever database holds the
//! plugin store: SQLite ([`PluginDb`], fenced by the authorizer) or PostgreSQL
//! (`sovereign_postgres::PgPluginDb`, fenced by the plugin's own role).

use std::sync::Arc;
use std::time::Instant;

use crate::{CursorId, FenceError, Outcome, PluginDb, SqlValue};

/// An event in a plugin's outbox: `(event_id, topic, payload, created_at_ms)`.
pub type OutboxEvent = (String, String, String, i64);

/// A plugin's fenced connection: one request's transaction at a time, the statements
/// the plugin sends, its cursors and its event outbox.
pub trait FencedConnection: Send {
    /// The plugin's id.
    fn plugin_id(&self) -> &str;
    /// Starts the request's transaction; `writes_expected` lets a store take its write
    /// lock up front (SQLite) instead of on the first write.
    fn begin(&mut self, writes_expected: bool) -> Result<(), FenceError>;
    /// Sets the deadline of the request (`None` after it): no statement runs past it.
    fn set_request_deadline(&mut self, deadline: Option<Instant>);
    /// Commits the request's transaction.
    fn commit(&mut self) -> Result<(), FenceError>;
    /// Rolls the request's transaction back.
    fn rollback(&mut self) -> Result<(), FenceError>;
    /// Runs one statement behind the fence.
    fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<Outcome, FenceError>;
    /// Opens a cursor over one query.
    fn open_cursor(&mut self, sql: &str, params: &[SqlValue]) -> Result<CursorId, FenceError>;
    /// An open cursor's column names.
    fn cursor_columns(&self, id: CursorId) -> Result<Arc<[String]>, FenceError>;
    /// A cursor's next rows (none when it is done).
    fn cursor_next(
        &mut self,
        id: CursorId,
        max_rows: usize,
    ) -> Result<Vec<Vec<SqlValue>>, FenceError>;
    /// Closes a cursor.
    fn close_cursor(&mut self, id: CursorId);
    /// Records an event in the request's transaction; returns its id.
    fn emit_event(&mut self, topic: &str, payload_json: &str) -> Result<String, FenceError>;
    /// Committed events not yet delivered, oldest first.
    fn pending_events(&mut self, limit: usize) -> Result<Vec<OutboxEvent>, FenceError>;
    /// Marks events delivered and prunes delivered ones older than `retain_ms`.
    fn mark_delivered(
        &mut self,
        event_ids: &[String],
        now_ms: i64,
        retain_ms: i64,
    ) -> Result<(), FenceError>;

    /// Runs one statement in a transaction of its own (an operator's `sv plugins sql`):
    /// committed if it succeeds, rolled back if not.
    fn execute_alone(&mut self, sql: &str, params: &[SqlValue]) -> Result<Outcome, FenceError> {
        self.begin(true)?;
        match self.execute(sql, params) {
            Ok(outcome) => {
                self.commit()?;
                Ok(outcome)
            }
            Err(e) => {
                let _ = self.rollback();
                Err(e)
            }
        }
    }
}

impl FencedConnection for PluginDb {
    fn plugin_id(&self) -> &str {
        PluginDb::plugin_id(self)
    }

    fn begin(&mut self, writes_expected: bool) -> Result<(), FenceError> {
        if writes_expected {
            PluginDb::begin(self)
        } else {
            self.begin_deferred()
        }
    }

    fn set_request_deadline(&mut self, deadline: Option<Instant>) {
        PluginDb::set_request_deadline(self, deadline)
    }

    fn commit(&mut self) -> Result<(), FenceError> {
        PluginDb::commit(self)
    }

    fn rollback(&mut self) -> Result<(), FenceError> {
        PluginDb::rollback(self)
    }

    fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<Outcome, FenceError> {
        PluginDb::execute(self, sql, params)
    }

    fn open_cursor(&mut self, sql: &str, params: &[SqlValue]) -> Result<CursorId, FenceError> {
        PluginDb::open_cursor(self, sql, params)
    }

    fn cursor_columns(&self, id: CursorId) -> Result<Arc<[String]>, FenceError> {
        PluginDb::cursor_columns(self, id)
    }

    fn cursor_next(
        &mut self,
        id: CursorId,
        max_rows: usize,
    ) -> Result<Vec<Vec<SqlValue>>, FenceError> {
        PluginDb::cursor_next(self, id, max_rows)
    }

    fn close_cursor(&mut self, id: CursorId) {
        PluginDb::close_cursor(self, id)
    }

    fn emit_event(&mut self, topic: &str, payload_json: &str) -> Result<String, FenceError> {
        PluginDb::emit_event(self, topic, payload_json)
    }

    fn pending_events(&mut self, limit: usize) -> Result<Vec<OutboxEvent>, FenceError> {
        PluginDb::pending_events(self, limit)
    }

    fn mark_delivered(
        &mut self,
        event_ids: &[String],
        now_ms: i64,
        retain_ms: i64,
    ) -> Result<(), FenceError> {
        PluginDb::mark_delivered(self, event_ids, now_ms, retain_ms)
    }
}
