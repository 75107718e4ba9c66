//! Platform settings: JSON values under dotted keys.

use serde::Serialize;
use sovereign_db::rusqlite::{Connection, OptionalExtension, params};

use crate::CoreError;

/// One setting.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    /// Key, e.g. `site.name`.
    pub key: String,
    /// JSON value.
    pub value: serde_json::Value,
    /// Last change (UTC).
    pub updated_at: String,
    /// Who changed it last.
    pub updated_by: Option<i64>,
}

fn from_row(row: &sovereign_db::rusqlite::Row<'_>) -> sovereign_db::rusqlite::Result<Setting> {
    let text: String = row.get(1)?;
    Ok(Setting {
        key: row.get(0)?,
        value: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        updated_at: row.get(2)?,
        updated_by: row.get(3)?,
    })
}

/// Whether `key` is acceptable: 1 to 128 characters of lowercase letters, digits, `.`,
/// `_` and `-`, starting with a letter.
pub fn valid_key(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Every setting, by key.
pub fn list(conn: &Connection) -> Result<Vec<Setting>, CoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT key, value, updated_at, updated_by FROM settings ORDER BY key")?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One setting.
pub fn get(conn: &Connection, key: &str) -> Result<Option<Setting>, CoreError> {
    Ok(conn
        .query_row(
            "SELECT key, value, updated_at, updated_by FROM settings WHERE key = ?1",
            [key],
            from_row,
        )
        .optional()?)
}

/// Sets a value, creating or replacing it.
pub fn put(
    conn: &Connection,
    key: &str,
    value: &serde_json::Value,
    actor: Option<i64>,
) -> Result<Setting, CoreError> {
    conn.execute(
        "INSERT INTO settings (key, value, updated_by) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_by = excluded.updated_by,
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        params![key, value.to_string(), actor],
    )?;
    Ok(get(conn, key)?.expect("just written"))
}

/// Removes a setting; `false` if it did not exist.
pub fn delete(conn: &Connection, key: &str) -> Result<bool, CoreError> {
    Ok(conn.execute("DELETE FROM settings WHERE key = ?1", [key])? > 0)
}
