//! The core's event inbox: plugin events stored exactly once (keyed by event id) and
//! handed to the handler of their topic (registered by the platform layer), in one
//! transaction; and the activity feed handlers write to.

use serde::Serialize;
use sovereign_db::rusqlite::{self, params};

use crate::{CoreAccess, CoreError, CoreHandle, audit};

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
pub type Handler<'a> = &'a dyn Fn(&dyn CoreAccess, &IncomingEvent) -> Result<(), String>;

/// Stores an event (once) and runs `handle` on it, all in one transaction. `declared`
/// are the topics the plugin's manifest declares; others are rejected and logged.
pub fn ingest(
    conn: &dyn CoreAccess,
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
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            let tx = crate::write_transaction(conn)?;
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO event_inbox (event_id, plugin, topic, payload, emitted_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    event.event_id,
                    event.plugin,
                    event.topic,
                    event.payload_json,
                    event.emitted_at_ms
                ],
            )? == 1;
            if !inserted {
                return Ok(Ingested::Duplicate);
            }
            audit_event(&tx, event)?;
            // A failing handler's writes are undone; the event stays, with the error.
            tx.execute_batch("SAVEPOINT sv_handler")?;
            let handled = handle(&tx, event);
            tx.execute_batch(if handled.is_ok() {
                "RELEASE sv_handler"
            } else {
                "ROLLBACK TO sv_handler; RELEASE sv_handler"
            })?;
            tx.execute(
                "UPDATE event_inbox SET handled_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), error = ?2
                 WHERE event_id = ?1",
                params![event.event_id, handled.err()],
            )?;
            tx.commit()?;
            Ok(Ingested::Stored)
        }
        CoreHandle::Postgres(pg) => pg.transaction(|| {
            let inserted = pg.execute(
                "INSERT INTO event_inbox (event_id, plugin, topic, payload, emitted_at_ms)
                 VALUES ($1, $2, $3, $4::text::json, $5) ON CONFLICT (event_id) DO NOTHING",
                &[
                    &event.event_id,
                    &event.plugin,
                    &event.topic,
                    &event.payload_json,
                    &event.emitted_at_ms,
                ],
            )? == 1;
            if !inserted {
                return Ok(Ingested::Duplicate);
            }
            audit_event(pg, event)?;
            // A failing handler's writes are undone; the event stays, with the error.
            pg.batch("SAVEPOINT sv_handler")?;
            let handled = handle(pg, event);
            pg.batch(if handled.is_ok() {
                "RELEASE sv_handler"
            } else {
                "ROLLBACK TO sv_handler; RELEASE sv_handler"
            })?;
            pg.execute(
                "UPDATE event_inbox SET handled_at = sv_now_text(), error = $2 WHERE event_id = $1",
                &[&event.event_id, &handled.err()],
            )?;
            Ok(Ingested::Stored)
        }),
        CoreHandle::Mysql(my) => my.transaction(|| {
            // The event id is the key: a second delivery is a duplicate key (a racing
            // one waits for the first's commit and then finds it).
            let inserted = my.execute(
                "INSERT INTO event_inbox (event_id, plugin, topic, payload, emitted_at_ms)
                 VALUES (?, ?, ?, ?, ?)",
                (
                    &event.event_id,
                    &event.plugin,
                    &event.topic,
                    &event.payload_json,
                    event.emitted_at_ms,
                ),
            );
            match inserted {
                Ok(_) => {}
                Err(CoreError::Mysql(e)) if crate::mysql_core::is_duplicate_key(&e) => {
                    return Ok(Ingested::Duplicate);
                }
                Err(e) => return Err(e),
            }
            audit_event(my, event)?;
            // A failing handler's writes are undone; the event stays, with the error.
            my.batch(&["SAVEPOINT sv_handler"])?;
            let handled = handle(my, event);
            my.batch(if handled.is_ok() {
                &["RELEASE SAVEPOINT sv_handler"]
            } else {
                &[
                    "ROLLBACK TO SAVEPOINT sv_handler",
                    "RELEASE SAVEPOINT sv_handler",
                ]
            })?;
            my.execute(
                concat!(
                    "UPDATE event_inbox SET handled_at = ",
                    crate::mysql_core::my_now_text!(),
                    ", error = ? WHERE event_id = ?"
                ),
                (handled.err(), &event.event_id),
            )?;
            Ok(Ingested::Stored)
        }),
    }
}

/// The audit entry of a stored event.
fn audit_event(conn: &dyn CoreAccess, event: &IncomingEvent) -> Result<(), CoreError> {
    audit::record(
        conn,
        None,
        "plugin.event",
        Some(&format!("plugin:{}", event.plugin)),
        Some(&serde_json::json!({ "topic": event.topic, "event_id": event.event_id })),
    )
}

/// Adds an entry to a user's activity feed (nothing if the user does not exist).
pub fn add_activity(
    conn: &dyn CoreAccess,
    user_id: i64,
    kind: &str,
    summary: &str,
    source: &IncomingEvent,
) -> Result<(), CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            conn.execute(
                "INSERT INTO activity_feed (user_id, kind, summary, source_plugin, source_event)
                 SELECT id, ?2, ?3, ?4, ?5 FROM users WHERE id = ?1",
                params![user_id, kind, summary, source.plugin, source.event_id],
            )?;
        }
        CoreHandle::Postgres(pg) => {
            pg.execute(
                "INSERT INTO activity_feed (user_id, kind, summary, source_plugin, source_event)
                 SELECT id, $2, $3, $4, $5 FROM users WHERE id = $1",
                &[&user_id, &kind, &summary, &source.plugin, &source.event_id],
            )?;
        }
        CoreHandle::Mysql(my) => {
            my.execute(
                "INSERT INTO activity_feed (user_id, kind, summary, source_plugin, source_event)
                 SELECT id, ?, ?, ?, ? FROM users WHERE id = ?",
                (kind, summary, &source.plugin, &source.event_id, user_id),
            )?;
        }
    }
    Ok(())
}

/// A user's activity feed, newest first.
pub fn activity(
    conn: &dyn CoreAccess,
    user_id: i64,
    limit: u32,
) -> Result<Vec<Activity>, CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            let mut stmt = conn.prepare_cached(
                "SELECT id, kind, summary, source_plugin, created_at FROM activity_feed
                 WHERE user_id = ?1 ORDER BY id DESC LIMIT ?2",
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
        CoreHandle::Postgres(pg) => Ok(pg
            .query(
                "SELECT id, kind, summary, source_plugin, created_at FROM activity_feed
                 WHERE user_id = $1 ORDER BY id DESC LIMIT $2",
                &[&user_id, &i64::from(limit)],
            )?
            .iter()
            .map(|r| Activity {
                id: r.get(0),
                kind: r.get(1),
                summary: r.get(2),
                source_plugin: r.get(3),
                created_at: r.get(4),
            })
            .collect()),
        CoreHandle::Mysql(my) => Ok(my
            .query::<(i64, String, String, Option<String>, String)>(
                "SELECT id, kind, summary, source_plugin, created_at FROM activity_feed
                 WHERE user_id = ? ORDER BY id DESC LIMIT ?",
                (user_id, i64::from(limit)),
            )?
            .into_iter()
            .map(|(id, kind, summary, source_plugin, created_at)| Activity {
                id,
                kind,
                summary,
                source_plugin,
                created_at,
            })
            .collect()),
    }
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
pub fn list(
    conn: &dyn CoreAccess,
    plugin: &str,
    limit: u32,
) -> Result<Vec<StoredEvent>, CoreError> {
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
    conn: &dyn CoreAccess,
    filter: &EventFilter,
    limit: u32,
) -> Result<Vec<StoredEvent>, CoreError> {
    let conn = match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn,
        CoreHandle::Postgres(pg) => {
            return pg
                .query(
                    "SELECT seq, event_id, plugin, topic, payload::text, received_at, error
                     FROM event_inbox
                     WHERE ($1::text IS NULL OR plugin = $1) AND ($2::text IS NULL OR topic = $2)
                       AND ($3::bigint IS NULL OR seq < $3)
                     ORDER BY seq DESC LIMIT $4",
                    &[
                        &filter.plugin,
                        &filter.topic,
                        &filter.before,
                        &i64::from(limit),
                    ],
                )?
                .iter()
                .map(|r| {
                    let event_id: String = r.get(1);
                    Ok(StoredEvent {
                        seq: r.get(0),
                        // The column is `json`: the server refused anything else.
                        payload: serde_json::from_str(r.get(4)).map_err(|source| {
                            CoreError::BadJson {
                                what: format!("event {event_id:?}"),
                                source,
                            }
                        })?,
                        event_id,
                        plugin: r.get(2),
                        topic: r.get(3),
                        received_at: r.get(5),
                        error: r.get(6),
                    })
                })
                .collect();
        }
        CoreHandle::Mysql(my) => {
            type Row = (i64, String, String, String, String, String, Option<String>);
            return my
                .query::<Row>(
                    "SELECT seq, event_id, plugin, topic, payload, received_at, error
                     FROM event_inbox
                     WHERE (? IS NULL OR plugin = ?) AND (? IS NULL OR topic = ?)
                       AND (? IS NULL OR seq < ?)
                     ORDER BY seq DESC LIMIT ?",
                    (
                        &filter.plugin,
                        &filter.plugin,
                        &filter.topic,
                        &filter.topic,
                        filter.before,
                        filter.before,
                        i64::from(limit),
                    ),
                )?
                .into_iter()
                .map(
                    |(seq, event_id, plugin, topic, payload, received_at, error)| {
                        Ok(StoredEvent {
                            seq,
                            // The column is checked by JSON_VALID.
                            payload: serde_json::from_str(&payload).map_err(|source| {
                                CoreError::BadJson {
                                    what: format!("event {event_id:?}"),
                                    source,
                                }
                            })?,
                            event_id,
                            plugin,
                            topic,
                            received_at,
                            error,
                        })
                    },
                )
                .collect();
        }
    };
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
pub fn prune(conn: &dyn CoreAccess, days: u32) -> Result<usize, CoreError> {
    Ok(match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn.execute(
            "DELETE FROM event_inbox WHERE handled_at IS NOT NULL
               AND received_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)",
            [format!("-{days} days")],
        )?,
        CoreHandle::Postgres(pg) => pg.execute(
            "DELETE FROM event_inbox WHERE handled_at IS NOT NULL
               AND received_at < to_char(clock_timestamp() AT TIME ZONE 'UTC'
                                         - make_interval(days => $1),
                                         'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
            &[&i32::try_from(days).unwrap_or(i32::MAX)],
        )? as usize,
        CoreHandle::Mysql(my) => my.execute(
            "DELETE FROM event_inbox WHERE handled_at IS NOT NULL
               AND received_at < CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3) - INTERVAL ? DAY,
                                                         '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')",
            (days,),
        )? as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::core_db;
    use crate::users::{NewUser, Role, create};

    fn to_feed(conn: &dyn CoreAccess, event: &IncomingEvent) -> Result<(), String> {
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
