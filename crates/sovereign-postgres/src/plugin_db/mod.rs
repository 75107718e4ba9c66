//! A plugin's connection to the plugin database on PostgreSQL, as its own LOGIN role
//! (`svp_<id>`): the database keeps the fence (the role reaches its schema and its
//! granted mirror columns, nothing else); this side keeps what a role cannot:
//!
//! - one transaction per request, with every statement after the first in a savepoint
//!   so that a failed statement fails alone, as on SQLite (PostgreSQL would abort the
//!   whole transaction; a failed first statement begins it again);
//! - no statement that would end that transaction or change the pooled session
//!   (`BEGIN`, `COMMIT`, `SET`, `LISTEN`, `COPY`, ...), one statement per call;
//! - deadlines: `statement_timeout` set at every request, and a cancel request sent from
//!   outside the session when a statement outlives `limits.statement_ms` or the request
//!   (a plugin can change its own `statement_timeout`);
//! - the storage quota (`pg_total_relation_size` of every table in its schema, checked
//!   after every write; the write that goes past it is undone), and the same value and
//!   result caps as on SQLite;
//! - portable parameters (`?1`, `?`) and the value conversions of [`values`].

mod session;
pub(crate) mod values;

use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use sovereign_db::{MigrationSet, MigrationStatus};
use sovereign_db_plugins::{
    CursorId, FenceError, FencedConnection, Limits, OutboxEvent, Outcome, SqlValue,
};

use crate::PgError;
use session::Session;

/// What a plugin's PostgreSQL connection needs.
#[derive(Debug, Clone)]
pub struct PgPluginConfig {
    /// Plugin id (its schema's name).
    pub plugin_id: String,
    /// `postgres://svp_<id>:PASSWORD@HOST:PORT/PLUGIN_DATABASE`.
    pub url: String,
    /// Limits from the manifest.
    pub limits: Limits,
}

/// Work for the connection's thread.
type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// A plugin's fenced connection to the plugin database on PostgreSQL (see the module
/// documentation). The session lives on a thread of its own: the `postgres` driver
/// blocks on a runtime of its own, which code running inside an async runtime (the
/// extension host calls the database from a plugin's async call) must not do.
pub struct PgPluginDb {
    plugin: String,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// The request's deadline, sent along with every job.
    deadline: Option<Instant>,
    /// A request began and no statement has run yet: its `BEGIN` goes with the first
    /// statement's job (and a request that runs none never sends one).
    begin_pending: bool,
}

impl PgPluginDb {
    /// Connects as the plugin's role and checks that it is one: the role of the URL must
    /// be `svp_<id>`, hold no privilege beyond LOGIN (no superuser, CREATEROLE, CREATEDB,
    /// BYPASSRLS, REPLICATION) and own the schema `<id>`.
    pub fn open(config: &PgPluginConfig) -> Result<PgPluginDb, PgError> {
        let (opened, outcome) = mpsc::sync_channel(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let plugin = config.plugin_id.clone();
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sv-pg-{plugin}"))
            .stack_size(1 << 20)
            .spawn(move || {
                let mut session = match Session::open(&config) {
                    Ok(session) => {
                        let _ = opened.send(Ok(()));
                        session
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                for job in queue {
                    job(&mut session);
                }
            })
            .map_err(|source| PgError::Thread {
                plugin: plugin.clone(),
                source,
            })?;
        let db = PgPluginDb {
            plugin,
            jobs: Some(jobs),
            thread: Some(thread),
            deadline: None,
            begin_pending: false,
        };
        match outcome.recv() {
            Ok(Ok(())) => Ok(db),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PgError::Thread {
                plugin: db.plugin.clone(),
                source: std::io::Error::other("the connection thread ended while connecting"),
            }),
        }
    }

    /// Runs `work` on the session's thread (under the request's deadline) and waits for
    /// its result.
    fn call<R: Send + 'static>(&self, work: impl FnOnce(&mut Session) -> R + Send + 'static) -> R {
        let (done, result) = mpsc::sync_channel(1);
        let deadline = self.deadline;
        let job: Job = Box::new(move |session| {
            session.set_request_deadline(deadline);
            let _ = done.send(work(session));
        });
        self.jobs
            .as_ref()
            .expect("the job queue lives as long as the handle")
            .send(job)
            .expect("the connection thread runs until the handle is dropped");
        result
            .recv()
            .expect("the connection thread answers every job")
    }

    /// Runs `work` as part of the request, beginning its transaction first if that is
    /// still pending.
    fn call_in_request<R: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Session) -> Result<R, FenceError> + Send + 'static,
    ) -> Result<R, FenceError> {
        if std::mem::take(&mut self.begin_pending) {
            self.call(move |s| {
                s.begin()?;
                work(s)
            })
        } else {
            self.call(work)
        }
    }

    /// The plugin's id.
    pub fn plugin_id(&self) -> &str {
        &self.plugin
    }

    /// Whether the server closed the connection (it must be opened again).
    pub fn is_closed(&self) -> bool {
        self.call(|s| s.is_closed())
    }

    /// Applies the plugin's pending migrations (its package's `migrations/postgres/`),
    /// as its own role: each in one transaction, tracked in its schema's
    /// `_sv_migrations`. Returns the files applied.
    pub fn migrate(&mut self, set: &MigrationSet) -> Result<Vec<String>, PgError> {
        let set = set.clone();
        self.call(move |s| s.migrate(&set))
    }

    /// Like [`migrate`](Self::migrate), all pending migrations in one transaction:
    /// after a failure none of them remains (what an upgrade needs).
    pub fn migrate_all_or_nothing(&mut self, set: &MigrationSet) -> Result<Vec<String>, PgError> {
        let set = set.clone();
        self.call(move |s| {
            s.pin_schema()?;
            crate::migrate::deploy_all_or_nothing(&mut s.client, &set)
        })
    }

    /// Where each of the plugin's migrations stands.
    pub fn migration_status(
        &mut self,
        set: &MigrationSet,
    ) -> Result<Vec<MigrationStatus>, PgError> {
        let set = set.clone();
        self.call(move |s| s.migration_status(&set))
    }

    /// The plugin's migrations `migrate` would apply (refused when an applied one changed).
    pub fn migration_plan(&mut self, set: &MigrationSet) -> Result<Vec<String>, PgError> {
        let set = set.clone();
        self.call(move |s| {
            s.pin_schema()?;
            crate::migrate::plan(&mut s.client, &set)
        })
    }

    /// Bytes the plugin's schema holds: every table, with its indexes and TOAST.
    pub fn measure_bytes(&mut self) -> Result<u64, FenceError> {
        self.call(|s| s.measure_bytes())
    }
}

impl Drop for PgPluginDb {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop; the session closes with it.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl FencedConnection for PgPluginDb {
    fn plugin_id(&self) -> &str {
        &self.plugin
    }

    fn begin(&mut self, _writes_expected: bool) -> Result<(), FenceError> {
        // PostgreSQL locks rows, not the database: nothing to take up front, and the
        // `BEGIN` travels with the first statement (which also ends a transaction left
        // open, as `Session::begin` does).
        self.begin_pending = true;
        Ok(())
    }

    fn set_request_deadline(&mut self, deadline: Option<Instant>) {
        // Sent with the next jobs: no round trip to the session's thread.
        self.deadline = deadline;
    }

    fn commit(&mut self) -> Result<(), FenceError> {
        if std::mem::take(&mut self.begin_pending) {
            return Ok(()); // nothing ran: nothing to commit
        }
        self.call(|s| s.commit())
    }

    fn rollback(&mut self) -> Result<(), FenceError> {
        if std::mem::take(&mut self.begin_pending) {
            return Ok(());
        }
        self.call(|s| s.rollback())
    }

    fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<Outcome, FenceError> {
        let (sql, params) = (sql.to_owned(), params.to_vec());
        self.call_in_request(move |s| s.execute(&sql, &params))
    }

    fn open_cursor(&mut self, sql: &str, params: &[SqlValue]) -> Result<CursorId, FenceError> {
        let (sql, params) = (sql.to_owned(), params.to_vec());
        self.call_in_request(move |s| s.open_cursor(&sql, &params))
    }

    fn cursor_columns(&self, id: CursorId) -> Result<Arc<[String]>, FenceError> {
        self.call(move |s| s.cursor_columns(id))
    }

    fn cursor_next(
        &mut self,
        id: CursorId,
        max_rows: usize,
    ) -> Result<Vec<Vec<SqlValue>>, FenceError> {
        self.call(move |s| s.cursor_next(id, max_rows))
    }

    fn close_cursor(&mut self, id: CursorId) {
        self.call(move |s| s.close_cursor(id))
    }

    fn emit_event(&mut self, topic: &str, payload_json: &str) -> Result<String, FenceError> {
        let (topic, payload_json) = (topic.to_owned(), payload_json.to_owned());
        self.call_in_request(move |s| s.emit_event(&topic, &payload_json))
    }

    fn pending_events(&mut self, limit: usize) -> Result<Vec<OutboxEvent>, FenceError> {
        self.call(move |s| s.pending_events(limit))
    }

    fn mark_delivered(
        &mut self,
        event_ids: &[String],
        now_ms: i64,
        retain_ms: i64,
    ) -> Result<(), FenceError> {
        let event_ids = event_ids.to_vec();
        self.call(move |s| s.mark_delivered(&event_ids, now_ms, retain_ms))
    }
}
