//! Which database holds the core store: a SQLite file (`core.db`), a PostgreSQL
//! database (`DATABASE_URL=postgres://...`) or a MySQL/MariaDB one (`mysql://...`). Every typed operation of this crate takes a
//! [`CoreAccess`] and runs its own SQL for each backend; nothing translates SQL text.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use postgres::types::ToSql;
use postgres::{Client, Row, Statement};
use sovereign_db::rusqlite::Connection;
use sovereign_db::{MysqlUrl, PostgresUrl};

use crate::CoreError;
use crate::mysql_core::MyCore;

/// A borrowed core connection, by backend.
#[derive(Clone, Copy)]
pub enum CoreHandle<'a> {
    /// `core.db`.
    Sqlite(&'a Connection),
    /// The core database on PostgreSQL.
    Postgres(&'a PgCore),
    /// The core database on MySQL/MariaDB.
    Mysql(&'a MyCore),
}

/// Something the core's typed operations can run on.
pub trait CoreAccess {
    /// The connection and its backend.
    fn core_handle(&self) -> CoreHandle<'_>;
}

impl CoreAccess for Connection {
    fn core_handle(&self) -> CoreHandle<'_> {
        CoreHandle::Sqlite(self)
    }
}

impl CoreAccess for sovereign_db::rusqlite::Transaction<'_> {
    fn core_handle(&self) -> CoreHandle<'_> {
        CoreHandle::Sqlite(self)
    }
}

impl CoreAccess for PgCore {
    fn core_handle(&self) -> CoreHandle<'_> {
        CoreHandle::Postgres(self)
    }
}

impl CoreAccess for MyCore {
    fn core_handle(&self) -> CoreHandle<'_> {
        CoreHandle::Mysql(self)
    }
}

/// Where the core store is.
#[derive(Debug, Clone)]
pub enum CoreLocation {
    /// `core.db` at this path.
    File(PathBuf),
    /// A PostgreSQL database, as `svc_core`.
    Postgres(PostgresUrl),
    /// A MySQL/MariaDB database, as `svc_core`.
    Mysql(MysqlUrl),
}

impl CoreLocation {
    /// Opens a connection to the existing (migrated) core store.
    pub fn open_existing(&self) -> Result<CoreConn, CoreError> {
        Ok(match self {
            CoreLocation::File(path) => CoreConn::Sqlite(crate::open_existing(path)?),
            CoreLocation::Postgres(url) => CoreConn::Postgres(Box::new(PgCore::connect(url)?)),
            CoreLocation::Mysql(url) => CoreConn::Mysql(Box::new(MyCore::connect(url)?)),
        })
    }

    /// Like [`CoreLocation::open_existing`], read-only on SQLite (reports on a read-only
    /// data directory); a server's connection is the owner's as always.
    pub fn open_existing_read_only(&self) -> Result<CoreConn, CoreError> {
        Ok(match self {
            CoreLocation::File(path) => CoreConn::Sqlite(crate::open_existing_read_only(path)?),
            CoreLocation::Postgres(url) => CoreConn::Postgres(Box::new(PgCore::connect(url)?)),
            CoreLocation::Mysql(url) => CoreConn::Mysql(Box::new(MyCore::connect(url)?)),
        })
    }

    /// The file, for a SQLite core store.
    pub fn file(&self) -> Option<&Path> {
        match self {
            CoreLocation::File(path) => Some(path),
            CoreLocation::Postgres(_) | CoreLocation::Mysql(_) => None,
        }
    }
}

impl std::fmt::Display for CoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoreLocation::File(path) => write!(f, "{}", path.display()),
            CoreLocation::Postgres(url) => url.fmt(f),
            CoreLocation::Mysql(url) => url.fmt(f),
        }
    }
}

/// An owned core connection on either backend (what the kernel pools).
pub enum CoreConn {
    /// `core.db`.
    Sqlite(Connection),
    /// The core database on PostgreSQL.
    Postgres(Box<PgCore>),
    /// The core database on MySQL/MariaDB.
    Mysql(Box<MyCore>),
}

impl CoreAccess for CoreConn {
    fn core_handle(&self) -> CoreHandle<'_> {
        match self {
            CoreConn::Sqlite(conn) => CoreHandle::Sqlite(conn),
            CoreConn::Postgres(pg) => CoreHandle::Postgres(pg),
            CoreConn::Mysql(my) => CoreHandle::Mysql(my),
        }
    }
}

impl CoreConn {
    /// Rows changed through this connection since it was opened (the commit hook compares
    /// two readings).
    pub fn total_changes(&self) -> u64 {
        match self {
            CoreConn::Sqlite(conn) => conn.total_changes(),
            CoreConn::Postgres(pg) => pg.total_changes(),
            CoreConn::Mysql(my) => my.total_changes(),
        }
    }

    /// The SQLite connection, or [`CoreError::NotOnSqlite`] naming `operation`.
    pub fn sqlite(&self, operation: &'static str) -> Result<&Connection, CoreError> {
        match self {
            CoreConn::Sqlite(conn) => Ok(conn),
            CoreConn::Postgres(_) | CoreConn::Mysql(_) => Err(CoreError::NotOnSqlite { operation }),
        }
    }
}

/// A connection to the core database on PostgreSQL, as `svc_core` (the URL's role).
///
/// Statements are prepared once per connection. [`PgCore::transaction`] nests as
/// SQLite's unchecked transactions do: an inner one runs inside the outer.
pub struct PgCore {
    client: RefCell<Client>,
    statements: RefCell<HashMap<String, Statement>>,
    depth: Cell<u32>,
    changes: Cell<u64>,
}

impl PgCore {
    /// Connects to `url` and checks that the database is the core store (migrated:
    /// its `_sv_store` says `core`).
    pub fn connect(url: &PostgresUrl) -> Result<PgCore, CoreError> {
        let core = PgCore::connect_unchecked(url)?;
        let kind: Option<String> = core
            .client
            .borrow_mut()
            .query_opt("SELECT kind FROM _sv_store", &[])
            .map(|row| row.map(|r| r.get(0)))
            .or_else(|e| match e.code() {
                Some(&postgres::error::SqlState::UNDEFINED_TABLE) => Ok(None),
                _ => Err(e),
            })?;
        match kind.as_deref() {
            Some("core") => Ok(core),
            _ => Err(CoreError::NotCoreDatabase {
                url: url.to_string(),
            }),
        }
    }

    /// Connects to `url` without checking what the database holds (for migrations,
    /// which create the marker).
    pub fn connect_unchecked(url: &PostgresUrl) -> Result<PgCore, CoreError> {
        let mut client = Client::connect(url.expose(), postgres::NoTls).map_err(|source| {
            CoreError::Connect {
                url: url.to_string(),
                source,
            }
        })?;
        // The core's timestamps are UTC text; its integer arithmetic assumes nothing else.
        client.batch_execute("SET TIME ZONE 'UTC'")?;
        Ok(PgCore {
            client: RefCell::new(client),
            statements: RefCell::new(HashMap::new()),
            depth: Cell::new(0),
            changes: Cell::new(0),
        })
    }

    /// The client, for the migration runner and the sync publisher.
    pub fn client_mut(&mut self) -> &mut Client {
        self.client.get_mut()
    }

    /// Runs `f` on the client, for trusted code with statements of its own (the sync
    /// publisher reading the outbox and the mirrored tables).
    pub fn with_client<T>(&self, f: impl FnOnce(&mut Client) -> T) -> T {
        f(&mut self.client.borrow_mut())
    }

    /// `sql` prepared once per connection (the core's own statements, and trusted code's
    /// built at run time such as the sync publisher's projections): a prepared statement
    /// costs one round trip per use instead of two.
    pub fn prepared(&self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.borrow_mut().prepare(sql)?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Rows changed through this connection so far, by statements not rolled back (a
    /// rolled-back transaction or savepoint takes its changes off again).
    pub fn total_changes(&self) -> u64 {
        self.changes.get()
    }

    fn statement(&self, sql: &'static str) -> Result<Statement, CoreError> {
        Ok(self.prepared(sql)?)
    }

    /// Runs a statement; returns the rows it changed.
    pub(crate) fn execute(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, CoreError> {
        let statement = self.statement(sql)?;
        let changed = self.client.borrow_mut().execute(&statement, params)?;
        self.changes.set(self.changes.get() + changed);
        Ok(changed)
    }

    /// Runs a query.
    pub(crate) fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, CoreError> {
        let statement = self.statement(sql)?;
        Ok(self.client.borrow_mut().query(&statement, params)?)
    }

    /// Runs a query of at most one row.
    pub(crate) fn query_opt(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, CoreError> {
        let statement = self.statement(sql)?;
        Ok(self.client.borrow_mut().query_opt(&statement, params)?)
    }

    /// Runs statements without parameters (savepoints).
    pub(crate) fn batch(&self, sql: &'static str) -> Result<(), CoreError> {
        Ok(self.client.borrow_mut().batch_execute(sql)?)
    }

    /// Runs `f` in a transaction, committed if it returns `Ok`, rolled back otherwise;
    /// inside another transaction, `f` runs in a savepoint of it.
    pub fn transaction<T>(&self, f: impl FnOnce() -> Result<T, CoreError>) -> Result<T, CoreError> {
        let depth = self.depth.get();
        let (begin, commit, rollback) = if depth == 0 {
            ("BEGIN", "COMMIT", "ROLLBACK")
        } else {
            (
                "SAVEPOINT sv_core",
                "RELEASE SAVEPOINT sv_core",
                "ROLLBACK TO SAVEPOINT sv_core; RELEASE SAVEPOINT sv_core",
            )
        };
        self.client.borrow_mut().batch_execute(begin)?;
        self.depth.set(depth + 1);
        let changes_before = self.changes.get();
        // Undone if `f` panics: the connection goes back to its pool with no
        // transaction left open.
        let mut open = OpenTransaction {
            core: self,
            depth,
            changes_before,
            rollback,
            ended: false,
        };
        let result = f();
        open.ended = true;
        self.depth.set(depth);
        match result {
            Ok(value) => {
                self.client.borrow_mut().batch_execute(commit)?;
                Ok(value)
            }
            Err(e) => {
                self.changes.set(changes_before);
                if let Err(undo) = self.client.borrow_mut().batch_execute(rollback) {
                    tracing::warn!(error = %undo, "rolling back a core transaction failed");
                }
                Err(e)
            }
        }
    }
}

/// A transaction [`PgCore::transaction`] began, rolled back if its body unwinds.
struct OpenTransaction<'a> {
    core: &'a PgCore,
    depth: u32,
    changes_before: u64,
    rollback: &'static str,
    ended: bool,
}

impl Drop for OpenTransaction<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.core.depth.set(self.depth);
        self.core.changes.set(self.changes_before);
        if let Ok(mut client) = self.core.client.try_borrow_mut() {
            let _ = client.batch_execute(self.rollback);
        }
    }
}
