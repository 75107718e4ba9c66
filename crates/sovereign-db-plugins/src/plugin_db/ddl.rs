//! DDL in a savepoint: the namespace and foreign-key post-checks.

use super::*;

impl PluginDb {
    /// DDL runs in a savepoint; afterwards every new schema object must be in the
    /// plugin's namespace (this catches `ALTER TABLE ... RENAME TO other__x`, whose new
    /// name the authorizer never sees) and every new view must be readable under the
    /// fence. Otherwise the statement is undone and denied.
    pub(super) fn execute_ddl(
        &self,
        text: &str,
        params: &[SqlValue],
    ) -> Result<Outcome, FenceError> {
        // A view or trigger body runs later, when the objects it names may exist; and a
        // table read without reading a column (`EXISTS (SELECT 1 FROM t)`) reaches no
        // authorizer callback. So their text may not name anything outside the plugin's
        // reach, existing or not.
        if creates_stored_code(text)
            && let Some(reference) = self.policy.foreign_reference(text, true, &|_| true)
        {
            self.reset_denial();
            return Err(self.denied("reference".into(), reference));
        }
        let before = self.schema_objects()?;
        self.internal_batch("SAVEPOINT sv_plugin_ddl")?;
        self.guard.ddl.store(true, Ordering::SeqCst);
        let ran = self.execute_checked(text, params, false);
        self.guard.ddl.store(false, Ordering::SeqCst);
        let outcome = ran.and_then(|outcome| {
            // A foreign key into a mirror table (or anything outside the namespace) would
            // let plugin data veto the platform's writes there: the mirror writer must
            // never be blockable by plugin schema.
            if let Some((table, target)) = self.foreign_key_outside()? {
                return Err(self.denied(format!("declare a foreign key from {table} to"), target));
            }
            let after = self.schema_objects()?;
            for (kind, name) in after.difference(&before) {
                let internal = name.starts_with("sqlite_autoindex_") || name == "sqlite_sequence";
                if !self.policy.in_namespace(name) && !internal {
                    return Err(
                        self.denied(format!("create {kind} outside its namespace"), name.clone())
                    );
                }
                if kind == "view" {
                    self.execute_checked(
                        &format!("SELECT * FROM \"{}\" LIMIT 0", name.replace('"', "\"\"")),
                        &[],
                        false,
                    )
                    .map_err(|e| match e {
                        // Already logged and counted by the probe.
                        FenceError::Denied {
                            plugin,
                            action,
                            object,
                        } => FenceError::Denied {
                            plugin,
                            action: format!("create view {name} that would {action}"),
                            object,
                        },
                        other => other,
                    })?;
                }
            }
            Ok(outcome)
        });
        match outcome {
            Ok(outcome) => {
                self.internal_batch("RELEASE sv_plugin_ddl")?;
                Ok(outcome)
            }
            Err(e) => {
                self.internal_batch("ROLLBACK TO sv_plugin_ddl; RELEASE sv_plugin_ddl")?;
                Err(e)
            }
        }
    }

    pub(super) fn schema_objects(&self) -> Result<BTreeSet<(String, String)>, FenceError> {
        let _internal = Internal::enter(&self.guard);
        let run = || -> rusqlite::Result<BTreeSet<(String, String)>> {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT type, name FROM main.sqlite_schema")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        };
        run().map_err(|e| self.sql_error(e.to_string()))
    }

    /// The first foreign key of one of the plugin's tables whose parent table is not the
    /// plugin's own: `(table, parent)`.
    pub(super) fn foreign_key_outside(&self) -> Result<Option<(String, String)>, FenceError> {
        let _internal = Internal::enter(&self.guard);
        let run = || -> rusqlite::Result<Vec<(String, String)>> {
            self.conn
                .prepare_cached(
                    "SELECT m.name, f.\"table\" FROM main.sqlite_schema AS m,
                         pragma_foreign_key_list(m.name, 'main') AS f
                     WHERE m.type = 'table' AND lower(substr(m.name, 1, ?2)) = ?1",
                )?
                .query_map(
                    rusqlite::params![format!("{}__", self.plugin), self.plugin.len() as i64 + 2],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect()
        };
        let references = run().map_err(|e| self.sql_error(e.to_string()))?;
        Ok(references
            .into_iter()
            .find(|(_, parent)| !self.policy.in_namespace(parent)))
    }
}

/// Whether a CREATE statement creates a view or a trigger.
pub(super) fn creates_stored_code(text: &str) -> bool {
    let mut words = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_uppercase());
    words.next().as_deref() == Some("CREATE")
        && words
            .find(|w| w != "TEMP" && w != "TEMPORARY")
            .is_some_and(|w| w == "VIEW" || w == "TRIGGER")
}
