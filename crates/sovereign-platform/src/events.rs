//! What the core does with plugin events, by topic. Every accepted event is stored and
//! audited by the kernel; the handlers here add the core's reactions.

use std::sync::Arc;

use serde::Deserialize;
use sovereign_db_core::CoreAccess;
use sovereign_db_core::events::{IncomingEvent, add_activity};
use sovereign_kernel::events::EventHandlers;

/// The handlers of this platform.
pub fn handlers() -> EventHandlers {
    EventHandlers::default().on("task.completed", Arc::new(task_completed))
}

/// The payload of `task.completed` (the tasks plugin).
#[derive(Deserialize)]
struct TaskCompleted {
    task_id: i64,
    title: String,
    completed_by: i64,
    #[serde(default)]
    assignee: Option<i64>,
}

/// `task.completed` -> the activity feed of whoever completed it and of its assignee.
fn task_completed(conn: &dyn CoreAccess, event: &IncomingEvent) -> Result<(), String> {
    let done: TaskCompleted = serde_json::from_str(&event.payload_json)
        .map_err(|e| format!("task.completed payload: {e}"))?;
    let who = sovereign_db_core::users::get(conn, done.completed_by)
        .map_err(|e| e.to_string())?
        .map(|u| u.display_name);
    let summary = format!(
        "{} completed task #{} \u{201c}{}\u{201d}",
        who.as_deref().unwrap_or("someone"),
        done.task_id,
        done.title
    );
    let mut users = vec![done.completed_by];
    users.extend(done.assignee.filter(|a| *a != done.completed_by));
    for user in users {
        add_activity(conn, user, &event.topic, &summary, event).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sovereign_db_core::events::{Ingested, activity, ingest};
    use sovereign_db_core::users::{NewUser, Role, create};

    #[test]
    fn task_completed_feeds_the_completer_and_the_assignee_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("core.db");
        let conn = sovereign_db_core::open(&path).unwrap();
        sovereign_db_core::migrations().deploy(&conn).unwrap();
        let mut ids = vec![];
        for (email, name) in [("a@x.io", "Ada"), ("b@x.io", "Bob")] {
            let user = create(
                &conn,
                &NewUser {
                    email: email.into(),
                    password: "long password".into(),
                    display_name: name.into(),
                    avatar_url: None,
                    role: Role::Member,
                    tenant_id: 1,
                },
            )
            .unwrap();
            ids.push(user.id);
        }
        let event = IncomingEvent {
            event_id: "e1".into(),
            plugin: "tasks".into(),
            topic: "task.completed".into(),
            payload_json: format!(
                r#"{{"task_id": 3, "title": "Ship", "completed_by": {}, "assignee": {}}}"#,
                ids[0], ids[1]
            ),
            emitted_at_ms: 1,
        };
        let declared = vec!["task.completed".to_owned()];
        let handlers = handlers();
        let handle = |conn: &dyn CoreAccess, event: &IncomingEvent| handlers.handle(conn, event);
        assert_eq!(
            ingest(&conn, &event, &declared, &handle).unwrap(),
            Ingested::Stored
        );
        assert_eq!(
            ingest(&conn, &event, &declared, &handle).unwrap(),
            Ingested::Duplicate
        );
        for id in ids {
            let feed = activity(&conn, id, 10).unwrap();
            assert_eq!(feed.len(), 1, "user {id}");
            assert_eq!(
                feed[0].summary,
                "Ada completed task #3 \u{201c}Ship\u{201d}"
            );
        }
    }
}
