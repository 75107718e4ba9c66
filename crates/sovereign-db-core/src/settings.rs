//! Platform settings: JSON values under dotted keys.

use serde::Serialize;
use sovereign_db::rusqlite::{OptionalExtension, params};

use crate::{CoreAccess, CoreError, CoreHandle};

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
        // The table only holds valid JSON (CHECK json_valid).
        value: serde_json::from_str(&text).map_err(|e| {
            sovereign_db::rusqlite::Error::FromSqlConversionFailure(
                1,
                sovereign_db::rusqlite::types::Type::Text,
                Box::new(e),
            )
        })?,
        updated_at: row.get(2)?,
        updated_by: row.get(3)?,
    })
}

/// A setting's row on MySQL: key, value, updated_at, updated_by.
type MyRow = (String, String, String, Option<i64>);

fn from_my((key, value, updated_at, updated_by): MyRow) -> Result<Setting, CoreError> {
    Ok(Setting {
        // The column is checked by JSON_VALID.
        value: serde_json::from_str(&value).map_err(|source| CoreError::BadJson {
            what: format!("setting {key:?}"),
            source,
        })?,
        key,
        updated_at,
        updated_by,
    })
}

fn from_pg(row: &postgres::Row) -> Result<Setting, CoreError> {
    let key: String = row.get(0);
    Ok(Setting {
        // The column is `json`: the server refused anything else.
        value: serde_json::from_str(row.get(1)).map_err(|source| CoreError::BadJson {
            what: format!("setting {key:?}"),
            source,
        })?,
        key,
        updated_at: row.get(2),
        updated_by: row.get(3),
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
pub fn list(conn: &dyn CoreAccess) -> Result<Vec<Setting>, CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            let mut stmt = conn.prepare_cached(
                "SELECT key, value, updated_at, updated_by FROM settings ORDER BY key",
            )?;
            let rows = stmt.query_map([], from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        }
        CoreHandle::Postgres(pg) => pg
            .query(
                "SELECT key, value::text, updated_at, updated_by FROM settings ORDER BY key",
                &[],
            )?
            .iter()
            .map(from_pg)
            .collect(),
        CoreHandle::Mysql(my) => my
            .query::<MyRow>(
                "SELECT `key`, value, updated_at, updated_by FROM settings ORDER BY `key`",
                (),
            )?
            .into_iter()
            .map(from_my)
            .collect(),
    }
}

/// One setting.
pub fn get(conn: &dyn CoreAccess, key: &str) -> Result<Option<Setting>, CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => Ok(conn
            .query_row(
                "SELECT key, value, updated_at, updated_by FROM settings WHERE key = ?1",
                [key],
                from_row,
            )
            .optional()?),
        CoreHandle::Postgres(pg) => pg
            .query_opt(
                "SELECT key, value::text, updated_at, updated_by FROM settings WHERE key = $1",
                &[&key],
            )?
            .as_ref()
            .map(from_pg)
            .transpose(),
        CoreHandle::Mysql(my) => my
            .query_opt::<MyRow>(
                "SELECT `key`, value, updated_at, updated_by FROM settings WHERE `key` = ?",
                (key,),
            )?
            .map(from_my)
            .transpose(),
    }
}

/// Sets a value, creating or replacing it.
pub fn put(
    conn: &dyn CoreAccess,
    key: &str,
    value: &serde_json::Value,
    actor: Option<i64>,
) -> Result<Setting, CoreError> {
    let text = value.to_string();
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            conn.execute(
                "INSERT INTO settings (key, value, updated_by) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                     updated_by = excluded.updated_by,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                params![key, text, actor],
            )?;
        }
        CoreHandle::Postgres(pg) => {
            pg.execute(
                "INSERT INTO settings (key, value, updated_by) VALUES ($1, $2::text::json, $3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                     updated_by = excluded.updated_by, updated_at = sv_now_text()",
                &[&key, &text, &actor],
            )?;
        }
        CoreHandle::Mysql(my) => {
            my.execute(
                concat!(
                    "INSERT INTO settings (`key`, value, updated_by) VALUES (?, ?, ?)
                     ON DUPLICATE KEY UPDATE value = VALUES(value),
                         updated_by = VALUES(updated_by), updated_at = ",
                    crate::mysql_core::my_now_text!()
                ),
                (key, &text, actor),
            )?;
        }
    }
    Ok(get(conn, key)?.expect("just written"))
}

/// Removes a setting; `false` if it did not exist.
pub fn delete(conn: &dyn CoreAccess, key: &str) -> Result<bool, CoreError> {
    Ok(match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            conn.execute("DELETE FROM settings WHERE key = ?1", [key])? as u64
        }
        CoreHandle::Postgres(pg) => pg.execute("DELETE FROM settings WHERE key = $1", &[&key])?,
        CoreHandle::Mysql(my) => my.execute("DELETE FROM settings WHERE `key` = ?", (key,))?,
    } > 0)
}
