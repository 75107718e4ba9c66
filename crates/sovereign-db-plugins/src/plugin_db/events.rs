//! The event outbox: events emitted in a request's transaction, relayed after commit.

use super::*;

impl PluginDb {
    /// Records an event in the outbox, inside the current transaction: it exists only if
    /// the transaction commits. Returns the event id. The caller checks the topic against
    /// the manifest.
    pub fn emit_event(&self, topic: &str, payload_json: &str) -> Result<String, FenceError> {
        let _internal = Internal::enter(&self.guard);
        self.conn
            .prepare_cached(
                "INSERT INTO _sv_event_outbox (event_id, plugin, topic, payload, created_at_ms)
                 VALUES (lower(hex(randomblob(16))), ?1, ?2, ?3, CAST(unixepoch('subsec') * 1000 AS INTEGER))
                 RETURNING event_id",
            )
            .and_then(|mut s| s.query_row(rusqlite::params![self.plugin, topic, payload_json], |r| r.get(0)))
            .map_err(|e| self.sql_error(e.to_string()))
    }

    /// Committed events not yet delivered to the core, oldest first:
    /// `(event_id, topic, payload, created_at_ms)`.
    pub fn pending_events(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, String, String, i64)>, FenceError> {
        let _internal = Internal::enter(&self.guard);
        let run = || -> rusqlite::Result<Vec<(String, String, String, i64)>> {
            self.conn
                .prepare_cached(
                    "SELECT event_id, topic, payload, created_at_ms FROM _sv_event_outbox
                     WHERE plugin = ?1 AND delivered_at_ms IS NULL ORDER BY created_at_ms, rowid LIMIT ?2",
                )?
                .query_map(rusqlite::params![self.plugin, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
        };
        run().map_err(|e| self.sql_error(e.to_string()))
    }

    /// Marks events delivered (the core stored them) and prunes delivered events older
    /// than `retain_ms`.
    pub fn mark_delivered(
        &self,
        event_ids: &[String],
        now_ms: i64,
        retain_ms: i64,
    ) -> Result<(), FenceError> {
        let _internal = Internal::enter(&self.guard);
        let run = || -> rusqlite::Result<()> {
            let mut stmt = self.conn.prepare_cached(
                "UPDATE _sv_event_outbox SET delivered_at_ms = ?2 WHERE event_id = ?1 AND delivered_at_ms IS NULL",
            )?;
            for id in event_ids {
                stmt.execute(rusqlite::params![id, now_ms])?;
            }
            self.conn
                .prepare_cached(
                    "DELETE FROM _sv_event_outbox WHERE plugin = ?1 AND delivered_at_ms < ?2",
                )?
                .execute(rusqlite::params![self.plugin, now_ms - retain_ms])?;
            Ok(())
        };
        run().map_err(|e| self.sql_error(e.to_string()))
    }
}
