//! A connection to the core database on MySQL/MariaDB, as `svc_core`.

use std::cell::{Cell, RefCell};

use mysql::prelude::{FromRow, Queryable};
use mysql::{Conn, Params};
use sovereign_db::MysqlUrl;

use crate::CoreError;

/// The current time as the SQLite stores write it (`2026-01-31T12:34:56.789Z`), as a
/// MySQL expression.
macro_rules! my_now_text {
    () => {
        "CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')"
    };
}
pub(crate) use my_now_text;

/// A connection to the core database on MySQL/MariaDB, as `svc_core` (the URL's
/// account). Statements are prepared once per connection (the driver's cache);
/// [`MyCore::transaction`] nests as SQLite's unchecked transactions do: an inner one
/// runs in a savepoint of the outer, named by its depth (MySQL replaces a savepoint of
/// the same name instead of stacking it as PostgreSQL does).
pub struct MyCore {
    conn: RefCell<Conn>,
    depth: Cell<u32>,
    changes: Cell<u64>,
}

impl MyCore {
    /// Connects to `url` and checks that the database is the core store (migrated: its
    /// `_sv_store` says `core`).
    pub fn connect(url: &MysqlUrl) -> Result<MyCore, CoreError> {
        let core = MyCore::connect_unchecked(url)?;
        let kind: Option<String> = core
            .conn
            .borrow_mut()
            .query_first("SELECT kind FROM _sv_store")
            .or_else(|e| match &e {
                // ER_NO_SUCH_TABLE: not migrated.
                mysql::Error::MySqlError(server) if server.code == 1146 => Ok(None),
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
    pub fn connect_unchecked(url: &MysqlUrl) -> Result<MyCore, CoreError> {
        let conn = sovereign_mysql::connect_trusted(url.expose())?;
        Ok(MyCore {
            conn: RefCell::new(conn),
            depth: Cell::new(0),
            changes: Cell::new(0),
        })
    }

    /// The connection, for the migration runner.
    pub fn conn_mut(&mut self) -> &mut Conn {
        self.conn.get_mut()
    }

    /// Runs `f` on the connection, for trusted code with statements of its own (the sync
    /// publisher reading the outbox and the mirrored tables).
    pub fn with_conn<T>(&self, f: impl FnOnce(&mut Conn) -> T) -> T {
        f(&mut self.conn.borrow_mut())
    }

    /// Rows changed through this connection so far, by statements not rolled back.
    pub fn total_changes(&self) -> u64 {
        self.changes.get()
    }

    /// Checks that the connection still answers (the pool's check).
    pub fn ping(&self) -> Result<(), CoreError> {
        Ok(self.conn.borrow_mut().ping()?)
    }

    /// Runs a statement; returns the rows it changed.
    pub(crate) fn execute(
        &self,
        sql: &'static str,
        params: impl Into<Params>,
    ) -> Result<u64, CoreError> {
        let mut conn = self.conn.borrow_mut();
        conn.exec_drop(sql, params)?;
        let changed = conn.affected_rows();
        self.changes.set(self.changes.get() + changed);
        Ok(changed)
    }

    /// Runs an `INSERT`; returns the `AUTO_INCREMENT` id it assigned.
    pub(crate) fn insert(
        &self,
        sql: &'static str,
        params: impl Into<Params>,
    ) -> Result<i64, CoreError> {
        let mut conn = self.conn.borrow_mut();
        conn.exec_drop(sql, params)?;
        self.changes.set(self.changes.get() + conn.affected_rows());
        Ok(conn.last_insert_id() as i64)
    }

    /// Runs a query.
    pub(crate) fn query<T: FromRow>(
        &self,
        sql: &'static str,
        params: impl Into<Params>,
    ) -> Result<Vec<T>, CoreError> {
        Ok(self.conn.borrow_mut().exec(sql, params)?)
    }

    /// Runs a query of at most one row.
    pub(crate) fn query_opt<T: FromRow>(
        &self,
        sql: &'static str,
        params: impl Into<Params>,
    ) -> Result<Option<T>, CoreError> {
        Ok(self.conn.borrow_mut().exec_first(sql, params)?)
    }

    /// Runs statements without parameters, one after the other (savepoints).
    pub(crate) fn batch(&self, statements: &[&'static str]) -> Result<(), CoreError> {
        Ok(self.run_all(statements)?)
    }

    /// Runs `f` in a transaction, committed if it returns `Ok`, rolled back otherwise;
    /// inside another transaction, `f` runs in a savepoint of it.
    pub fn transaction<T>(&self, f: impl FnOnce() -> Result<T, CoreError>) -> Result<T, CoreError> {
        let depth = self.depth.get();
        let (begin, commit, rollback) = if depth == 0 {
            (
                "START TRANSACTION".to_owned(),
                "COMMIT".to_owned(),
                vec!["ROLLBACK".to_owned()],
            )
        } else {
            let name = format!("sv_core_{depth}");
            (
                format!("SAVEPOINT {name}"),
                format!("RELEASE SAVEPOINT {name}"),
                vec![
                    format!("ROLLBACK TO SAVEPOINT {name}"),
                    format!("RELEASE SAVEPOINT {name}"),
                ],
            )
        };
        self.conn.borrow_mut().query_drop(&begin)?;
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
                self.conn.borrow_mut().query_drop(&commit)?;
                Ok(value)
            }
            Err(e) => {
                self.changes.set(changes_before);
                if let Err(undo) = self.run_all(&open.rollback) {
                    tracing::warn!(error = %undo, "rolling back a core transaction failed");
                }
                Err(e)
            }
        }
    }

    fn run_all(&self, statements: &[impl AsRef<str>]) -> Result<(), mysql::Error> {
        let mut conn = self.conn.borrow_mut();
        for statement in statements {
            conn.query_drop(statement.as_ref())?;
        }
        Ok(())
    }
}

/// A transaction [`MyCore::transaction`] began, rolled back if its body unwinds.
struct OpenTransaction<'a> {
    core: &'a MyCore,
    depth: u32,
    changes_before: u64,
    rollback: Vec<String>,
    ended: bool,
}

impl Drop for OpenTransaction<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.core.depth.set(self.depth);
        self.core.changes.set(self.changes_before);
        if let Ok(mut conn) = self.core.conn.try_borrow_mut() {
            for statement in &self.rollback {
                let _ = conn.query_drop(statement);
            }
        }
    }
}

/// Whether `e` is the server's duplicate-key error (`ER_DUP_ENTRY`).
pub(crate) fn is_duplicate_key(e: &mysql::Error) -> bool {
    matches!(e, mysql::Error::MySqlError(server) if server.code == 1062)
}
