//! The audit log: who did what, append-only.

use serde::Serialize;
use sovereign_db::rusqlite::{Connection, params};

use crate::CoreError;

/// One audit entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// When (UTC).
    pub at: String,
    /// Acting user, if any (operator commands have none).
    pub actor_user_id: Option<i64>,
    /// What happened, e.g. `user.create`.
    pub action: String,
    /// What it happened to, e.g. `user:3`.
    pub target: Option<String>,
    /// Details as JSON.
    pub detail: Option<serde_json::Value>,
}

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

/// The newest `limit` entries, newest first.
pub fn recent(conn: &Connection, limit: u32) -> Result<Vec<AuditEntry>, CoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, actor_user_id, action, target, detail FROM audit_log ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        let detail: Option<String> = r.get(5)?;
        Ok(AuditEntry {
            id: r.get(0)?,
            at: r.get(1)?,
            actor_user_id: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
