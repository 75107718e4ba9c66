//! The core's event inbox: plugin events stored exactly once (keyed by event id) and
//! handed to the handler of their topic (registered by the platform layer), in one
//! transaction; and the activity feed handlers write to.

use serde::Serialize;
use sovereign_db::rusqlite::{self, Connection, params};

use crate::{CoreError, audit};

/// An event as the host relays it.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    /// Unique id from the plugin's outbox.
    pub event_id: String,
    /// The emitting plugin.
    pub plugin: String,
    /// Topic.
    pub topic: String,
    /// JSON payload.
    pub payload_json: String,
    /// When it was emitted (unix ms).
    pub emitted_at_ms: i64,
}

/// What happened to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Stored and handled now.
    Stored,
    /// Already in the inbox: nothing changed.
    Duplicate,
    /// Refused (undeclared topic, unknown plugin, bad payload); not stored.
    Rejected(String),
}

/// One entry of a user's activity feed.
#[derive(Debug, Clone, Serialize)]
pub struct Activity {
    /// Id.
    pub id: i64,
    /// Kind, e.g. `task.completed`.
    pub kind: String,
    /// Human summary.
    pub summary: String,
    /// The plugin the activity came from.
    pub source_plugin: Option<String>,
    /// When.
    pub created_at: String,
}

/// Reacts to a stored event inside its transaction; an `Err` is recorded on the inbox row
/// (the event stays stored and audited).
pub type Handler<'a> = &'a dyn Fn(&Connection, &IncomingEvent) -> Result<(), String>;

/// Stores an event (once) and runs `handle` on it, all in one transaction. `declared`
/// are the topics the plugin's manifest declares; others are rejected and logged.
pub fn ingest(
    conn: &Connection,
    event: &IncomingEvent,
    declared: &[String],
    handle: Handler<'_>,
) -> Result<Ingested, CoreError> {
    if !declared.contains(&event.topic) {
        tracing::warn!(plugin = %event.plugin, topic = %event.topic, "event with an undeclared topic rejected");
        return Ok(Ingested::Rejected(format!(
            "plugin {} did not declare topic {:?}",
            event.plugin, event.topic
        )));
    }
    if serde_json::from_str::<serde_json::Value>(&event.payload_json).is_err() {
        return Ok(Ingested::Rejected("the payload is not JSON".into()));
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO event_inbox (event_id, plugin, topic, payload, emitted_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![event.event_id, event.plugin, event.topic, event.payload_json, event.emitted_at_ms],
    )? == 1;
    if !inserted {
        return Ok(Ingested::Duplicate);
    }
    audit::record(
        &tx,
        None,
        "plugin.event",
        Some(&format!("plugin:{}", event.plugin)),
        Some(&serde_json::json!({ "topic": event.topic, "event_id": event.event_id })),
    )?;
    let handled = handle(&tx, event);
    tx.execute(
        "UPDATE event_inbox SET handled_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), error = ?2 WHERE event_id = ?1",
        params![event.event_id, handled.err()],
    )?;
    tx.commit()?;
    Ok(Ingested::Stored)
}

/// Adds an entry to a user's activity feed (nothing if the user does not exist).
pub fn add_activity(
    conn: &Connection,
    user_id: i64,
    kind: &str,
    summary: &str,
    source: &IncomingEvent,
) -> Result<(), CoreError> {
    conn.execute(
        "INSERT INTO activity_feed (user_id, kind, summary, source_plugin, source_event)
         SELECT id, ?2, ?3, ?4, ?5 FROM users WHERE id = ?1",
        params![user_id, kind, summary, source.plugin, source.event_id],
    )?;
    Ok(())
}

/// A user's activity feed, newest first.
pub fn activity(conn: &Connection, user_id: i64, limit: u32) -> Result<Vec<Activity>, CoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, summary, source_plugin, created_at FROM activity_feed WHERE user_id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![user_id, limit], |r| {
        Ok(Activity {
            id: r.get(0)?,
            kind: r.get(1)?,
            summary: r.get(2)?,
            source_plugin: r.get(3)?,
            created_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An event as the core stored it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    /// Its position in the inbox (for paging: newer events have larger numbers).
    pub seq: i64,
    /// The id the plugin's outbox gave it.
    pub event_id: String,
    /// The emitting plugin.
    pub plugin: String,
    /// Topic.
    pub topic: String,
    /// Payload (JSON).
    pub payload: serde_json::Value,
    /// When the core received it.
    pub received_at: String,
    /// Its handler's error, if it failed.
    pub error: Option<String>,
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this plugin's.
    pub plugin: Option<String>,
    /// Only this topic.
    pub topic: Option<String>,
    /// Only events older than this `seq` (the next page after a page ending there).
    pub before: Option<i64>,
}

/// The newest `limit` events of `plugin` in the inbox, newest first.
pub fn list(conn: &Connection, plugin: &str, limit: u32) -> Result<Vec<StoredEvent>, CoreError> {
    page(
        conn,
        &EventFilter {
            plugin: Some(plugin.to_owned()),
            ..EventFilter::default()
        },
        limit,
    )
}

/// A page of the inbox, newest first, filtered.
pub fn page(
    conn: &Connection,
    filter: &EventFilter,
    limit: u32,
) -> Result<Vec<StoredEvent>, CoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT rowid, event_id, plugin, topic, payload, received_at, error FROM event_inbox
         WHERE (?1 IS NULL OR plugin = ?1) AND (?2 IS NULL OR topic = ?2)
           AND (?3 IS NULL OR rowid < ?3)
         ORDER BY rowid DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![filter.plugin, filter.topic, filter.before, limit],
        |r| {
            let payload: String = r.get(4)?;
            Ok(StoredEvent {
                seq: r.get(0)?,
                event_id: r.get(1)?,
                plugin: r.get(2)?,
                topic: r.get(3)?,
                // The inbox only holds valid JSON (CHECK json_valid).
                payload: serde_json::from_str(&payload).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        4,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?,
                received_at: r.get(5)?,
                error: r.get(6)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deletes handled inbox rows older than `days` (their effects stay).
pub fn prune(conn: &Connection, days: u32) -> Result<usize, CoreError> {
    Ok(conn.execute(
        "DELETE FROM event_inbox WHERE handled_at IS NOT NULL AND received_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)",
        [format!("-{days} days")],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::core_db;
    use crate::users::{NewUser, Role, create};

    fn to_feed(conn: &Connection, event: &IncomingEvent) -> Result<(), String> {
        add_activity(conn, 1, &event.topic, "Ada completed task #3", event)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_event_is_ingested_once_and_runs_its_handler_once() {
        let (_dir, conn) = core_db();
        let user = create(
            &conn,
            &NewUser {
                email: "a@x.io".into(),
                password: "long password".into(),
                display_name: "Ada".into(),
                avatar_url: None,
                role: Role::Member,
                tenant_id: 1,
            },
        )
        .unwrap();
        let event = IncomingEvent {
            event_id: "e1".into(),
            plugin: "tasks".into(),
            topic: "task.completed".into(),
            payload_json: format!(
                r#"{{"task_id": 3, "title": "Ship", "completed_by": {}}}"#,
                user.id
            ),
            emitted_at_ms: 1,
        };
        let declared = vec!["task.completed".to_owned()];
        assert_eq!(
            ingest(&conn, &event, &declared, &to_feed).unwrap(),
            Ingested::Stored
        );
        assert_eq!(
            ingest(&conn, &event, &declared, &to_feed).unwrap(),
            Ingested::Duplicate
        );
        let feed = activity(&conn, user.id, 10).unwrap();
        assert_eq!(feed.len(), 1);
        assert!(
            feed[0].summary.contains("Ada completed task #3"),
            "{}",
            feed[0].summary
        );
        let audited: i64 = conn
            .query_row(
                "SELECT count(*) FROM audit_log WHERE action = 'plugin.event'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(audited, 1);
        let rejected = ingest(
            &conn,
            &IncomingEvent {
                event_id: "e2".into(),
                topic: "users.deleted".into(),
                ..event
            },
            &declared,
            &to_feed,
        )
        .unwrap();
        assert!(matches!(rejected, Ingested::Rejected(_)));
    }
}
