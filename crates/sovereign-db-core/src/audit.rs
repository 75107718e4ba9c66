//! The audit log: who did what, append-only.

use serde::Serialize;
use sovereign_db::rusqlite::{self, params};

use crate::{CoreAccess, CoreError, CoreHandle};

/// Appends an entry.
pub fn record(
    conn: &dyn CoreAccess,
    actor_user_id: Option<i64>,
    action: &str,
    target: Option<&str>,
    detail: Option<&serde_json::Value>,
) -> Result<(), CoreError> {
    let detail = detail.map(|d| d.to_string());
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            conn.prepare_cached(
                "INSERT INTO audit_log (actor_user_id, action, target, detail) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![actor_user_id, action, target, detail])?;
        }
        CoreHandle::Postgres(pg) => {
            pg.execute(
                "INSERT INTO audit_log (actor_user_id, action, target, detail)
                 VALUES ($1, $2, $3, $4::text::json)",
                &[&actor_user_id, &action, &target, &detail],
            )?;
        }
        CoreHandle::Mysql(my) => {
            my.execute(
                "INSERT INTO audit_log (actor_user_id, action, target, detail) VALUES (?, ?, ?, ?)",
                (actor_user_id, action, target, detail),
            )?;
        }
    }
    Ok(())
}

/// One audit entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Its number (newer entries have larger numbers).
    pub id: i64,
    /// When (UTC, RFC 3339).
    pub at: String,
    /// Who, if a user did it.
    pub actor_user_id: Option<i64>,
    /// What (`plugin.disable`, `auth.login`, ...).
    pub action: String,
    /// On what (`plugin:tasks`, `user:3`, ...).
    pub target: Option<String>,
    /// Details (JSON).
    pub detail: Option<serde_json::Value>,
}

/// A page of the audit log, newest first: entries older than `before` (all if `None`),
/// with exactly `target` if given.
pub fn page(
    conn: &dyn CoreAccess,
    target: Option<&str>,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<AuditEntry>, CoreError> {
    let conn = match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn,
        CoreHandle::Postgres(pg) => {
            return pg
                .query(
                    "SELECT id, at, actor_user_id, action, target, detail::text FROM audit_log
                     WHERE ($1::text IS NULL OR target = $1) AND ($2::bigint IS NULL OR id < $2)
                     ORDER BY id DESC LIMIT $3",
                    &[&target, &before, &i64::from(limit)],
                )?
                .iter()
                .map(|r| {
                    let id: i64 = r.get(0);
                    Ok(AuditEntry {
                        id,
                        at: r.get(1),
                        actor_user_id: r.get(2),
                        action: r.get(3),
                        target: r.get(4),
                        // The column is `json`: the server refused anything else.
                        detail: r
                            .get::<_, Option<&str>>(5)
                            .map(serde_json::from_str)
                            .transpose()
                            .map_err(|source| CoreError::BadJson {
                                what: format!("audit entry {id}"),
                                source,
                            })?,
                    })
                })
                .collect();
        }
        CoreHandle::Mysql(my) => {
            type Row = (
                i64,
                String,
                Option<i64>,
                String,
                Option<String>,
                Option<String>,
            );
            return my
                .query::<Row>(
                    "SELECT id, at, actor_user_id, action, target, detail FROM audit_log
                     WHERE (? IS NULL OR target = ?) AND (? IS NULL OR id < ?)
                     ORDER BY id DESC LIMIT ?",
                    (target, target, before, before, i64::from(limit)),
                )?
                .into_iter()
                .map(|(id, at, actor_user_id, action, target, detail)| {
                    Ok(AuditEntry {
                        id,
                        at,
                        actor_user_id,
                        action,
                        target,
                        // The column is checked by JSON_VALID.
                        detail: detail
                            .as_deref()
                            .map(serde_json::from_str)
                            .transpose()
                            .map_err(|source| CoreError::BadJson {
                                what: format!("audit entry {id}"),
                                source,
                            })?,
                    })
                })
                .collect();
        }
    };
    let mut stmt = conn.prepare_cached(
        "SELECT id, at, actor_user_id, action, target, detail FROM audit_log
         WHERE (?1 IS NULL OR target = ?1) AND (?2 IS NULL OR id < ?2)
         ORDER BY id DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![target, before, limit], |r| {
        let detail: Option<String> = r.get(5)?;
        Ok(AuditEntry {
            id: r.get(0)?,
            at: r.get(1)?,
            actor_user_id: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            // The log only holds valid JSON (CHECK json_valid).
            detail: detail
                .map(|d| serde_json::from_str(&d))
                .transpose()
                .map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        5,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
