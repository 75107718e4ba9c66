//! The plugin registry: which plugins are installed (with the manifest they were
//! installed with: their name, version, database mode and limits), whether they are
//! enabled, and which mirror columns an operator granted them.

use serde::Serialize;
use sovereign_db::rusqlite::{self, Connection, OptionalExtension, params};
use sovereign_db_plugins::Manifest;

use crate::CoreError;

/// A registered plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRecord {
    /// Plugin id.
    pub id: String,
    /// Whether its routes are served.
    pub enabled: bool,
    /// The manifest as installed: the one source of its name, version, database mode,
    /// events and limits.
    pub manifest: Manifest,
    /// Granted mirror columns as `(slice, column)`.
    pub grants: Vec<(String, String)>,
    /// What the extension host last reported when loading it.
    pub load: LoadState,
}

/// Whether the extension host could load a plugin, as last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LoadState {
    /// No host has reported on it yet (installed while the platform was stopped).
    #[default]
    NotReported,
    /// Loaded.
    Loaded {
        /// When it was reported.
        at: String,
    },
    /// The host could not load it.
    Failed {
        /// Why.
        error: String,
        /// When it was reported.
        at: String,
    },
}

/// Records what the host reported for plugin `id` (`None` = loaded).
pub fn record_load(conn: &Connection, id: &str, error: Option<&str>) -> Result<(), CoreError> {
    conn.execute(
        "UPDATE plugins SET load_error = ?2, load_reported_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         WHERE id = ?1",
        params![id, error],
    )?;
    Ok(())
}

/// Registers or updates a plugin and replaces its grants, in one transaction.
pub fn register(conn: &Connection, record: &PluginRecord) -> Result<(), CoreError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let manifest = serde_json::to_string(&record.manifest).expect("a manifest serializes");
    tx.execute(
        "INSERT INTO plugins (id, enabled, manifest) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET manifest = excluded.manifest,
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        params![record.id, record.enabled, manifest],
    )?;
    tx.execute(
        "DELETE FROM plugin_grants WHERE plugin_id = ?1",
        [&record.id],
    )?;
    for (slice, column) in &record.grants {
        tx.execute(
            "INSERT INTO plugin_grants (plugin_id, slice, column_name) VALUES (?1, ?2, ?3)",
            params![record.id, slice, column],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Every registered plugin, by id.
pub fn list(conn: &Connection) -> Result<Vec<PluginRecord>, CoreError> {
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM plugins ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(get(conn, &id)?);
    }
    Ok(out)
}

/// One plugin.
pub fn get(conn: &Connection, id: &str) -> Result<Option<PluginRecord>, CoreError> {
    let Some(mut record) = conn
        .query_row(
            "SELECT enabled, manifest, load_error, load_reported_at FROM plugins WHERE id = ?1",
            [id],
            |r| {
                let error: Option<String> = r.get(2)?;
                let at: Option<String> = r.get(3)?;
                let load = match (error, at) {
                    (_, None) => LoadState::NotReported,
                    (None, Some(at)) => LoadState::Loaded { at },
                    (Some(error), Some(at)) => LoadState::Failed { error, at },
                };
                Ok((r.get::<_, bool>(0)?, r.get::<_, String>(1)?, load))
            },
        )
        .optional()?
        .map(
            |(enabled, manifest, load)| -> Result<PluginRecord, CoreError> {
                Ok(PluginRecord {
                    id: id.to_owned(),
                    enabled,
                    manifest: parse_manifest(id, &manifest)?,
                    grants: vec![],
                    load,
                })
            },
        )
        .transpose()?
    else {
        return Ok(None);
    };
    record.grants = conn
        .prepare(
            "SELECT slice, column_name FROM plugin_grants WHERE plugin_id = ?1 ORDER BY slice, column_name",
        )?
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(Some(record))
}

/// Whether a plugin is enabled and its manifest, in one cheap query, for the request
/// path; `None` if it is not registered.
pub fn routing_info(conn: &Connection, id: &str) -> Result<Option<(bool, Manifest)>, CoreError> {
    conn.prepare_cached("SELECT enabled, manifest FROM plugins WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get::<_, bool>(0)?, r.get::<_, String>(1)?)))
        .optional()?
        .map(|(enabled, manifest)| Ok((enabled, parse_manifest(id, &manifest)?)))
        .transpose()
}

fn parse_manifest(id: &str, text: &str) -> Result<Manifest, CoreError> {
    serde_json::from_str(text).map_err(|source| CoreError::BadManifest {
        id: id.to_owned(),
        source,
    })
}

/// Enables or disables a plugin; `false` if it is not registered.
pub fn set_enabled(conn: &Connection, id: &str, enabled: bool) -> Result<bool, CoreError> {
    Ok(conn.execute(
        "UPDATE plugins SET enabled = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
        params![id, enabled],
    )? > 0)
}

/// Records the password of plugin `id`'s PostgreSQL role (a secret: only the extension
/// host gets it). The plugin must be registered.
pub fn set_store_login(conn: &Connection, id: &str, password: &str) -> Result<(), CoreError> {
    conn.execute(
        "INSERT INTO plugin_store_logins (plugin_id, password) VALUES (?1, ?2)
         ON CONFLICT (plugin_id) DO UPDATE SET password = excluded.password",
        params![id, password],
    )?;
    Ok(())
}

/// The password of plugin `id`'s PostgreSQL role, if it has one.
pub fn store_login(conn: &Connection, id: &str) -> Result<Option<String>, CoreError> {
    Ok(conn
        .query_row(
            "SELECT password FROM plugin_store_logins WHERE plugin_id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?)
}

/// Removes a plugin from the registry (its grants go with it); `false` if absent.
pub fn unregister(conn: &Connection, id: &str) -> Result<bool, CoreError> {
    Ok(conn.execute("DELETE FROM plugins WHERE id = ?1", [id])? > 0)
}
