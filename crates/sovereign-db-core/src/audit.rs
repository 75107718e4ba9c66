//! The audit log: who did what, append-only.

use sovereign_db::rusqlite::{Connection, params};

use crate::CoreError;

/// Appends an entry.
pub fn record(
    conn: &Connection,
    actor_user_id: Option<i64>,
    action: &str,
    target: Option<&str>,
    detail: Option<&serde_json::Value>,
) -> Result<(), CoreError> {
    conn.prepare_cached(
        "INSERT INTO audit_log (actor_user_id, action, target, detail) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        actor_user_id,
        action,
        target,
        detail.map(|d| d.to_string())
    ])?;
    Ok(())
}
