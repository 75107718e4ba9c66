//! Running one statement: the text check, preparing, the authorizer, value and result caps.

use super::*;

impl PluginDb {
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
        let text = self.single_statement(sql)?;
        let keyword = first_keyword(text);
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

    /// The one statement `sql` holds, checked for nesting depth; the statements no
    /// plugin may run at all (VACUUM, ANALYZE) are denied here.
    pub(super) fn single_statement<'s>(&self, sql: &'s str) -> Result<&'s str, FenceError> {
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
        Ok(text)
    }

    /// Prepares and runs one statement; `cached` reuses prepared statements (safe: the
    /// policy of a connection never changes, and SQLite re-authorizes on re-prepare).
    pub(super) fn execute_checked(
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
    pub(super) fn execute_prepared(
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
        self.arm_deadline();
        let result = self.run_prepared(stmt.get_mut(), params, columns);
        self.disarm_deadline();
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

    /// Starts the statement deadline: `limits.statement_ms` from now, or the request's
    /// deadline if that comes first (the request's budget covers its SQL too).
    pub(super) fn arm_deadline(&self) {
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
    }

    /// Ends the statement deadline.
    pub(super) fn disarm_deadline(&self) {
        self.guard.deadline_ms.store(0, Ordering::Relaxed);
    }

    /// Most bytes of values one query may return (`limits.result_kb`).
    pub fn max_result_bytes(&self) -> usize {
        self.limits.result_kb as usize * 1024
    }

    /// Marks the request's transaction as ended by the plugin's statement.
    pub(super) fn transaction_ended(&self) -> FenceError {
        self.request_ended.set(true);
        tracing::warn!(plugin = %self.plugin, "a plugin statement ended the request's transaction");
        FenceError::TransactionEnded {
            plugin: self.plugin.clone(),
        }
    }

    pub(super) fn run_prepared(
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
}

pub(super) enum RunError {
    Sqlite(rusqlite::Error),
    TooLarge,
}

impl From<rusqlite::Error> for RunError {
    fn from(e: rusqlite::Error) -> Self {
        RunError::Sqlite(e)
    }
}

pub(super) enum Prepared<'a> {
    Cached(rusqlite::CachedStatement<'a>),
    Fresh(rusqlite::Statement<'a>),
}

impl<'a> Prepared<'a> {
    pub(super) fn get(&self) -> &rusqlite::Statement<'a> {
        match self {
            Prepared::Cached(s) => s,
            Prepared::Fresh(s) => s,
        }
    }

    pub(super) fn get_mut(&mut self) -> &mut rusqlite::Statement<'a> {
        match self {
            Prepared::Cached(s) => s,
            Prepared::Fresh(s) => s,
        }
    }
}

/// The bytes a value takes once copied out (what [`SqlValue::size`] counts).
pub(super) fn value_size(value: rusqlite::types::ValueRef<'_>) -> usize {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => 1,
        ValueRef::Integer(_) | ValueRef::Real(_) => 8,
        ValueRef::Text(b) | ValueRef::Blob(b) => b.len(),
    }
}

/// Whether the statement starts with `keyword` (case-insensitive), without allocating.
pub(super) fn starts_with_keyword(text: &str, keyword: &str) -> bool {
    text.len() >= keyword.len()
        && text.as_bytes()[..keyword.len()].eq_ignore_ascii_case(keyword.as_bytes())
        && !text
            .as_bytes()
            .get(keyword.len())
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// The statement's first keyword, upper-cased (comments were stripped by the splitter).
pub(super) fn first_keyword(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}
