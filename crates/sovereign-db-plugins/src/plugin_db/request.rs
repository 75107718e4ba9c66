//! The request transaction and its deadline.

use super::*;

impl PluginDb {
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

    pub(super) fn start_request(&self) {
        self.close_cursors();
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
        self.close_cursors();
        self.internal_exec("COMMIT")?;
        self.in_request.set(false);
        Ok(())
    }

    /// Rolls the request's transaction back (if one is open).
    pub fn rollback(&self) -> Result<(), FenceError> {
        self.close_cursors();
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
}
