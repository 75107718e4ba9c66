//! Turning SQLite errors and authorizer denials into typed fence errors.

use super::*;

impl PluginDb {
    /// Whether a table or view of that (lower-case) name exists in any attached schema.
    pub(super) fn object_exists(&self, lower_name: &str) -> bool {
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

    pub(super) fn has_mirror(&self) -> bool {
        self.conn
            .prepare_cached("SELECT count(*) > 0 FROM pragma_database_list WHERE name = 'mirror'")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, bool>(0)))
            .unwrap_or(false)
    }

    pub(super) fn reset_denial(&self) {
        *self.guard.denial.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(super) fn denied(&self, action: String, object: String) -> FenceError {
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

    pub(super) fn sql_error(&self, message: String) -> FenceError {
        FenceError::Sql {
            plugin: self.plugin.clone(),
            message,
        }
    }

    pub(super) fn map_error(&self, e: rusqlite::Error, text: &str) -> FenceError {
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
            Some(ErrorCode::ConstraintViolation) => {
                return FenceError::Constraint {
                    plugin: self.plugin.clone(),
                    message,
                };
            }
            Some(ErrorCode::DatabaseBusy) => {
                return FenceError::Busy {
                    plugin: self.plugin.clone(),
                    message,
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
        // A statement that fails (SQLITE_ERROR: "no such table: notes__x", "ambiguous
        // column", a typo) while naming something outside the plugin's reach is a denial of
        // that name whatever SQLite said: errors must never tell which of another plugin's
        // tables and columns exist.
        if code == Some(ErrorCode::Unknown)
            && let Some(reference) = self.policy.foreign_reference(text, true, &|_| true)
        {
            return self.denied("read".into(), reference);
        }
        self.sql_error(message)
    }
}
