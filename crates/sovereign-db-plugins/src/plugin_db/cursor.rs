//! Cursors: a query's rows read a batch at a time, so that a plugin can go through any
//! number of rows while holding only one batch (plugin API 0.2's `cursor`).
//!
//! A cursor keeps its prepared statement stepping between calls. The statement borrows
//! the connection, which the cursor cannot express with a lifetime (both live in the
//! same [`PluginDb`]); [`OpenCursor`] holds the borrow as `'static` and keeps it valid:
//! the connection is boxed (its address stays put when the `PluginDb` moves), cursors
//! are declared before the connection (dropped first), and every cursor is closed when
//! the request's transaction ends.

use std::mem::ManuallyDrop;
use std::ptr::NonNull;

use super::execute::{first_keyword, value_size};
use super::*;

/// Most cursors one connection holds open at once.
pub const MAX_OPEN_CURSORS: usize = 8;

/// Names an open cursor of one [`PluginDb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CursorId(u64);

impl CursorId {
    /// A cursor id from its number (for other backends' connections).
    pub fn from_raw(number: u64) -> CursorId {
        CursorId(number)
    }

    /// The id's number.
    pub fn raw(self) -> u64 {
        self.0
    }
}

/// The open cursors of a connection.
#[derive(Default)]
pub(super) struct Cursors {
    open: std::cell::RefCell<Vec<(CursorId, OpenCursor)>>,
    next_id: Cell<u64>,
}

// SAFETY: the cursors point only at their own `PluginDb`'s connection and are reachable
// only through that `PluginDb` (a private field), which is `Send` and not `Sync`: they
// and the connection always move to another thread together, and one thread at a time
// uses them.
unsafe impl Send for Cursors {}

/// A statement stepping through its rows.
struct OpenCursor {
    /// Borrows `*statement`; dropped before it.
    rows: ManuallyDrop<rusqlite::Rows<'static>>,
    /// Owned (from `Box::into_raw`); borrows the boxed connection.
    statement: NonNull<rusqlite::Statement<'static>>,
    columns: Arc<[String]>,
    /// A row stepped past but not returned: it did not fit the last batch.
    carried: Option<Vec<SqlValue>>,
    exhausted: bool,
}

impl Drop for OpenCursor {
    fn drop(&mut self) {
        // SAFETY: `rows` is dropped exactly once, here, before the statement it borrows;
        // `statement` came from `Box::into_raw` and nothing else frees it.
        unsafe {
            ManuallyDrop::drop(&mut self.rows);
            drop(Box::from_raw(self.statement.as_ptr()));
        }
    }
}

impl PluginDb {
    /// Opens a cursor over one query behind the fence: the same checks as
    /// [`execute`](Self::execute), and the statement must only read.
    pub fn open_cursor(&self, sql: &str, params: &[SqlValue]) -> Result<CursorId, FenceError> {
        if self.request_ended.get() {
            return Err(FenceError::TransactionEnded {
                plugin: self.plugin.clone(),
            });
        }
        if self.cursors.open.borrow().len() >= MAX_OPEN_CURSORS {
            return Err(FenceError::Limit {
                plugin: self.plugin.clone(),
                message: format!(
                    "at most {MAX_OPEN_CURSORS} cursors may be open at once; drop the ones read to the end"
                ),
            });
        }
        let text = self.single_statement(sql)?;
        if matches!(first_keyword(text).as_str(), "CREATE" | "DROP" | "ALTER") {
            return Err(FenceError::NotAQuery {
                plugin: self.plugin.clone(),
            });
        }
        if let Some(reference) = self
            .policy
            .foreign_reference(text, false, &|name| self.object_exists(name))
        {
            self.reset_denial();
            return Err(self.denied("read".into(), reference));
        }
        let statement = self
            .conn
            .prepare(text)
            .map_err(|e| self.map_error(e, text))?;
        if !statement.readonly() || statement.column_count() == 0 {
            return Err(FenceError::NotAQuery {
                plugin: self.plugin.clone(),
            });
        }
        let columns: Arc<[String]> = statement
            .column_names()
            .iter()
            .map(|c| c.to_string())
            .collect();
        // SAFETY: the statement borrows `*self.conn`, a box that stays where it is for the
        // life of this `PluginDb` and is dropped after every cursor (see the module docs).
        let statement = unsafe {
            std::mem::transmute::<rusqlite::Statement<'_>, rusqlite::Statement<'static>>(statement)
        };
        let statement = NonNull::from(Box::leak(Box::new(statement)));
        // SAFETY: `statement` is valid and not otherwise borrowed; the rows borrowing it
        // are dropped before it is freed (`OpenCursor::drop`).
        let rows = unsafe { (*statement.as_ptr()).query(params_from_iter(params)) };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                // SAFETY: from `Box::leak` above; no borrow of it is left.
                drop(unsafe { Box::from_raw(statement.as_ptr()) });
                return Err(self.map_error(e, text));
            }
        };
        let id = CursorId(self.cursors.next_id.get());
        self.cursors.next_id.set(id.0 + 1);
        self.cursors.open.borrow_mut().push((
            id,
            OpenCursor {
                rows: ManuallyDrop::new(rows),
                statement,
                columns,
                carried: None,
                exhausted: false,
            },
        ));
        Ok(id)
    }

    /// The column names of an open cursor.
    pub fn cursor_columns(&self, id: CursorId) -> Result<Arc<[String]>, FenceError> {
        self.with_cursor(id, |cursor| Ok(cursor.columns.clone()))
    }

    /// The next rows of an open cursor: at most `max_rows` (and [`MAX_RESULT_ROWS`]) and at
    /// most `limits.result_kb` of values; none once every row was read. Each call has
    /// its own statement deadline, within the request's.
    pub fn cursor_next(
        &self,
        id: CursorId,
        max_rows: usize,
    ) -> Result<Vec<Vec<SqlValue>>, FenceError> {
        let max_rows = max_rows.clamp(1, MAX_RESULT_ROWS);
        let max_bytes = self.max_result_bytes();
        self.with_cursor(id, |cursor| {
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            if let Some(row) = cursor.carried.take() {
                bytes += row.iter().map(SqlValue::size).sum::<usize>();
                batch.push(row);
            }
            if cursor.exhausted {
                return Ok(batch);
            }
            self.arm_deadline();
            let stepped = loop {
                if batch.len() >= max_rows {
                    break Ok(());
                }
                let row = match cursor.rows.next() {
                    Ok(Some(row)) => row,
                    Ok(None) => {
                        cursor.exhausted = true;
                        break Ok(());
                    }
                    Err(e) => break Err(e),
                };
                let mut size = 0;
                let mut values = Vec::with_capacity(cursor.columns.len());
                let mut failed = None;
                for i in 0..cursor.columns.len() {
                    match row.get_ref(i) {
                        Ok(value) => {
                            size += value_size(value);
                            if size > max_bytes {
                                break;
                            }
                            values.push(SqlValue::from_ref(value));
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = failed {
                    break Err(e);
                }
                if size > max_bytes {
                    // One row larger than a whole batch may be: it can never be returned.
                    self.disarm_deadline();
                    return Err(FenceError::ResultTooLarge {
                        plugin: self.plugin.clone(),
                        max_bytes,
                    });
                }
                if bytes + size > max_bytes {
                    cursor.carried = Some(values);
                    break Ok(());
                }
                bytes += size;
                batch.push(values);
            };
            self.disarm_deadline();
            match stepped {
                Ok(()) => Ok(batch),
                Err(e) => {
                    cursor.exhausted = true;
                    Err(self.map_error(e, ""))
                }
            }
        })
    }

    /// Closes a cursor (unknown ids are ignored: the request may have ended it).
    pub fn close_cursor(&self, id: CursorId) {
        let closed = {
            let mut open = self.cursors.open.borrow_mut();
            open.iter()
                .position(|(open_id, _)| *open_id == id)
                .map(|at| open.swap_remove(at))
        };
        drop(closed);
    }

    /// Closes every cursor (the request's transaction is ending).
    pub(super) fn close_cursors(&self) {
        let closed = std::mem::take(&mut *self.cursors.open.borrow_mut());
        drop(closed);
    }

    fn with_cursor<T>(
        &self,
        id: CursorId,
        f: impl FnOnce(&mut OpenCursor) -> Result<T, FenceError>,
    ) -> Result<T, FenceError> {
        let mut open = self.cursors.open.borrow_mut();
        let cursor = open
            .iter_mut()
            .find(|(open_id, _)| *open_id == id)
            .map(|(_, cursor)| cursor)
            .ok_or_else(|| FenceError::CursorClosed {
                plugin: self.plugin.clone(),
            })?;
        f(cursor)
    }
}
