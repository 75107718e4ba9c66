//! The plugin registry: which plugins are installed (with the manifest they were
//! installed with: their name, version, database mode and limits), whether they are
//! enabled, and which mirror columns an operator granted them.

use serde::Serialize;
use sovereign_db::rusqlite::{OptionalExtension, params};
use sovereign_db_plugins::Manifest;

use crate::{CoreAccess, CoreError, CoreHandle};

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
pub fn record_load(conn: &dyn CoreAccess, id: &str, error: Option<&str>) -> Result<(), CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            conn.execute(
                "UPDATE plugins SET load_error = ?2,
                        load_reported_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE id = ?1",
                params![id, error],
            )?;
        }
        CoreHandle::Postgres(pg) => {
            pg.execute(
                "UPDATE plugins SET load_error = $2, load_reported_at = sv_now_text() WHERE id = $1",
                &[&id, &error],
            )?;
        }
        CoreHandle::Mysql(my) => {
            my.execute(
                concat!(
                    "UPDATE plugins SET load_error = ?, load_reported_at = ",
                    crate::mysql_core::my_now_text!(),
                    " WHERE id = ?"
                ),
                (error, id),
            )?;
        }
    }
    Ok(())
}

/// Registers or updates a plugin and replaces its grants, in one transaction.
pub fn register(conn: &dyn CoreAccess, record: &PluginRecord) -> Result<(), CoreError> {
    register_with_login(conn, record, None)
}

/// Like [`register`], recording in the same transaction the password of the plugin's
/// PostgreSQL role when `login` is given (see [`set_store_login`]).
pub fn register_with_login(
    conn: &dyn CoreAccess,
    record: &PluginRecord,
    login: Option<&str>,
) -> Result<(), CoreError> {
    let manifest = serde_json::to_string(&record.manifest).expect("a manifest serializes");
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            let tx = crate::write_transaction(conn)?;
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
            if let Some(password) = login {
                set_store_login(&*tx, &record.id, password)?;
            }
            tx.commit()?;
            Ok(())
        }
        CoreHandle::Postgres(pg) => pg.transaction(|| {
            pg.execute(
                "INSERT INTO plugins (id, enabled, manifest) VALUES ($1, $2, $3::text::json)
                 ON CONFLICT (id) DO UPDATE SET manifest = excluded.manifest,
                     updated_at = sv_now_text()",
                &[&record.id, &i32::from(record.enabled), &manifest],
            )?;
            pg.execute(
                "DELETE FROM plugin_grants WHERE plugin_id = $1",
                &[&record.id],
            )?;
            for (slice, column) in &record.grants {
                pg.execute(
                    "INSERT INTO plugin_grants (plugin_id, slice, column_name) VALUES ($1, $2, $3)",
                    &[&record.id, slice, column],
                )?;
            }
            if let Some(password) = login {
                set_store_login(pg, &record.id, password)?;
            }
            Ok(())
        }),
        CoreHandle::Mysql(my) => my.transaction(|| {
            my.execute(
                concat!(
                    "INSERT INTO plugins (id, enabled, manifest) VALUES (?, ?, ?)
                     ON DUPLICATE KEY UPDATE manifest = VALUES(manifest), updated_at = ",
                    crate::mysql_core::my_now_text!()
                ),
                (&record.id, record.enabled, &manifest),
            )?;
            my.execute(
                "DELETE FROM plugin_grants WHERE plugin_id = ?",
                (&record.id,),
            )?;
            for (slice, column) in &record.grants {
                my.execute(
                    "INSERT INTO plugin_grants (plugin_id, slice, column_name) VALUES (?, ?, ?)",
                    (&record.id, slice, column),
                )?;
            }
            if let Some(password) = login {
                set_store_login(my, &record.id, password)?;
            }
            Ok(())
        }),
    }
}

/// Every registered plugin, by id.
pub fn list(conn: &dyn CoreAccess) -> Result<Vec<PluginRecord>, CoreError> {
    let ids: Vec<String> = match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn
            .prepare("SELECT id FROM plugins ORDER BY id")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?,
        CoreHandle::Postgres(pg) => pg
            .query("SELECT id FROM plugins ORDER BY id", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        CoreHandle::Mysql(my) => my.query("SELECT id FROM plugins ORDER BY id", ())?,
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(get(conn, &id)?);
    }
    Ok(out)
}

/// The load state from the registry's two columns.
fn load_state(error: Option<String>, at: Option<String>) -> LoadState {
    match (error, at) {
        (_, None) => LoadState::NotReported,
        (None, Some(at)) => LoadState::Loaded { at },
        (Some(error), Some(at)) => LoadState::Failed { error, at },
    }
}

/// One plugin.
pub fn get(conn: &dyn CoreAccess, id: &str) -> Result<Option<PluginRecord>, CoreError> {
    let (row, grants) = match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            let row = conn
                .query_row(
                    "SELECT enabled, manifest, load_error, load_reported_at FROM plugins WHERE id = ?1",
                    [id],
                    |r| {
                        Ok((
                            r.get::<_, bool>(0)?,
                            r.get::<_, String>(1)?,
                            load_state(r.get(2)?, r.get(3)?),
                        ))
                    },
                )
                .optional()?;
            let grants: Vec<(String, String)> = conn
                .prepare(
                    "SELECT slice, column_name FROM plugin_grants WHERE plugin_id = ?1
                     ORDER BY slice, column_name",
                )?
                .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            (row, grants)
        }
        CoreHandle::Postgres(pg) => {
            let row = pg
                .query_opt(
                    "SELECT enabled, manifest::text, load_error, load_reported_at
                     FROM plugins WHERE id = $1",
                    &[&id],
                )?
                .map(|r| {
                    (
                        r.get::<_, i32>(0) != 0,
                        r.get::<_, String>(1),
                        load_state(r.get(2), r.get(3)),
                    )
                });
            let grants = pg
                .query(
                    "SELECT slice, column_name FROM plugin_grants WHERE plugin_id = $1
                     ORDER BY slice, column_name",
                    &[&id],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            (row, grants)
        }
        CoreHandle::Mysql(my) => {
            type Row = (bool, String, Option<String>, Option<String>);
            let row = my
                .query_opt::<Row>(
                    "SELECT enabled, manifest, load_error, load_reported_at
                     FROM plugins WHERE id = ?",
                    (id,),
                )?
                .map(|(enabled, manifest, error, at)| (enabled, manifest, load_state(error, at)));
            let grants = my.query(
                "SELECT slice, column_name FROM plugin_grants WHERE plugin_id = ?
                 ORDER BY slice, column_name",
                (id,),
            )?;
            (row, grants)
        }
    };
    row.map(|(enabled, manifest, load)| {
        Ok(PluginRecord {
            id: id.to_owned(),
            enabled,
            manifest: parse_manifest(id, &manifest)?,
            grants,
            load,
        })
    })
    .transpose()
}

/// Whether a plugin is enabled and its manifest, in one cheap query, for the request
/// path; `None` if it is not registered.
pub fn routing_info(
    conn: &dyn CoreAccess,
    id: &str,
) -> Result<Option<(bool, Manifest)>, CoreError> {
    let row: Option<(bool, String)> = match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn
            .prepare_cached("SELECT enabled, manifest FROM plugins WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
        CoreHandle::Postgres(pg) => pg
            .query_opt(
                "SELECT enabled, manifest::text FROM plugins WHERE id = $1",
                &[&id],
            )?
            .map(|r| (r.get::<_, i32>(0) != 0, r.get(1))),
        CoreHandle::Mysql(my) => {
            my.query_opt("SELECT enabled, manifest FROM plugins WHERE id = ?", (id,))?
        }
    };
    row.map(|(enabled, manifest)| Ok((enabled, parse_manifest(id, &manifest)?)))
        .transpose()
}

fn parse_manifest(id: &str, text: &str) -> Result<Manifest, CoreError> {
    serde_json::from_str(text).map_err(|source| CoreError::BadManifest {
        id: id.to_owned(),
        source,
    })
}

/// Enables or disables a plugin; `false` if it is not registered.
pub fn set_enabled(conn: &dyn CoreAccess, id: &str, enabled: bool) -> Result<bool, CoreError> {
    Ok(match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn.execute(
            "UPDATE plugins SET enabled = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
             WHERE id = ?1",
            params![id, enabled],
        )? as u64,
        CoreHandle::Postgres(pg) => pg.execute(
            "UPDATE plugins SET enabled = $2, updated_at = sv_now_text() WHERE id = $1",
            &[&id, &i32::from(enabled)],
        )?,
        CoreHandle::Mysql(my) => my.execute(
            concat!(
                "UPDATE plugins SET enabled = ?, updated_at = ",
                crate::mysql_core::my_now_text!(),
                " WHERE id = ?"
            ),
            (enabled, id),
        )?,
    } > 0)
}

/// Records the password of plugin `id`'s PostgreSQL role (a secret: only the extension
/// host gets it). The plugin must be registered.
pub fn set_store_login(conn: &dyn CoreAccess, id: &str, password: &str) -> Result<(), CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            conn.execute(
                "INSERT INTO plugin_store_logins (plugin_id, password) VALUES (?1, ?2)
                 ON CONFLICT (plugin_id) DO UPDATE SET password = excluded.password",
                params![id, password],
            )?;
        }
        CoreHandle::Postgres(pg) => {
            pg.execute(
                "INSERT INTO plugin_store_logins (plugin_id, password) VALUES ($1, $2)
                 ON CONFLICT (plugin_id) DO UPDATE SET password = excluded.password",
                &[&id, &password],
            )?;
        }
        CoreHandle::Mysql(my) => {
            my.execute(
                "INSERT INTO plugin_store_logins (plugin_id, password) VALUES (?, ?)
                 ON DUPLICATE KEY UPDATE password = VALUES(password)",
                (id, password),
            )?;
        }
    }
    Ok(())
}

/// The password of plugin `id`'s PostgreSQL role, if it has one.
pub fn store_login(conn: &dyn CoreAccess, id: &str) -> Result<Option<String>, CoreError> {
    Ok(match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn
            .query_row(
                "SELECT password FROM plugin_store_logins WHERE plugin_id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?,
        CoreHandle::Postgres(pg) => pg
            .query_opt(
                "SELECT password FROM plugin_store_logins WHERE plugin_id = $1",
                &[&id],
            )?
            .map(|r| r.get(0)),
        CoreHandle::Mysql(my) => my.query_opt(
            "SELECT password FROM plugin_store_logins WHERE plugin_id = ?",
            (id,),
        )?,
    })
}

/// Removes a plugin from the registry (its grants go with it); `false` if absent.
pub fn unregister(conn: &dyn CoreAccess, id: &str) -> Result<bool, CoreError> {
    Ok(match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn.execute("DELETE FROM plugins WHERE id = ?1", [id])? as u64,
        CoreHandle::Postgres(pg) => pg.execute("DELETE FROM plugins WHERE id = $1", &[&id])?,
        CoreHandle::Mysql(my) => my.execute("DELETE FROM plugins WHERE id = ?", (id,))?,
    } > 0)
}

/// One file of a stored plugin package: its path inside the package and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    /// The path, `/`-separated, relative to the package directory.
    pub path: String,
    /// The file's bytes.
    pub content: Vec<u8>,
}

/// Replaces plugin `id`'s stored package by `files` (their digest is `sha256`), in one
/// transaction.
pub fn store_package(
    conn: &dyn CoreAccess,
    id: &str,
    sha256: &str,
    files: &[PackageFile],
) -> Result<(), CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            let tx = crate::write_transaction(conn)?;
            tx.execute("DELETE FROM plugin_package_files WHERE plugin_id = ?1", [id])?;
            for file in files {
                tx.execute(
                    "INSERT INTO plugin_package_files (plugin_id, path, content) VALUES (?1, ?2, ?3)",
                    params![id, file.path, file.content],
                )?;
            }
            tx.execute(
                "INSERT INTO plugin_packages (plugin_id, sha256) VALUES (?1, ?2)
                 ON CONFLICT (plugin_id) DO UPDATE SET sha256 = excluded.sha256,
                     stored_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                params![id, sha256],
            )?;
            tx.commit()?;
        }
        CoreHandle::Postgres(pg) => pg.transaction(|| {
            pg.execute(
                "DELETE FROM plugin_package_files WHERE plugin_id = $1",
                &[&id],
            )?;
            for file in files {
                pg.execute(
                    "INSERT INTO plugin_package_files (plugin_id, path, content) VALUES ($1, $2, $3)",
                    &[&id, &file.path, &file.content],
                )?;
            }
            pg.execute(
                "INSERT INTO plugin_packages (plugin_id, sha256) VALUES ($1, $2)
                 ON CONFLICT (plugin_id) DO UPDATE SET sha256 = excluded.sha256,
                     stored_at = sv_now_text()",
                &[&id, &sha256],
            )?;
            Ok(())
        })?,
        CoreHandle::Mysql(my) => my.transaction(|| {
            my.execute("DELETE FROM plugin_package_files WHERE plugin_id = ?", (id,))?;
            for file in files {
                my.execute(
                    "INSERT INTO plugin_package_files (plugin_id, path, content) VALUES (?, ?, ?)",
                    (id, &file.path, &file.content),
                )?;
            }
            my.execute(
                concat!(
                    "INSERT INTO plugin_packages (plugin_id, sha256) VALUES (?, ?)
                     ON DUPLICATE KEY UPDATE sha256 = VALUES(sha256), stored_at = ",
                    crate::mysql_core::my_now_text!()
                ),
                (id, sha256),
            )?;
            Ok(())
        })?,
    }
    Ok(())
}

/// The stored packages: `(plugin id, digest)`, by id.
pub fn package_digests(conn: &dyn CoreAccess) -> Result<Vec<(String, String)>, CoreError> {
    Ok(match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn
            .prepare("SELECT plugin_id, sha256 FROM plugin_packages ORDER BY plugin_id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?,
        CoreHandle::Postgres(pg) => pg
            .query(
                "SELECT plugin_id, sha256 FROM plugin_packages ORDER BY plugin_id",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
        CoreHandle::Mysql(my) => my.query(
            "SELECT plugin_id, sha256 FROM plugin_packages ORDER BY plugin_id",
            (),
        )?,
    })
}

/// Plugin `id`'s stored package files, by path.
pub fn package_files(conn: &dyn CoreAccess, id: &str) -> Result<Vec<PackageFile>, CoreError> {
    Ok(match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn
            .prepare(
                "SELECT path, content FROM plugin_package_files WHERE plugin_id = ?1 ORDER BY path",
            )?
            .query_map([id], |r| {
                Ok(PackageFile {
                    path: r.get(0)?,
                    content: r.get(1)?,
                })
            })?
            .collect::<Result<_, _>>()?,
        CoreHandle::Postgres(pg) => pg
            .query(
                "SELECT path, content FROM plugin_package_files WHERE plugin_id = $1 ORDER BY path",
                &[&id],
            )?
            .iter()
            .map(|r| PackageFile {
                path: r.get(0),
                content: r.get(1),
            })
            .collect(),
        CoreHandle::Mysql(my) => my
            .query::<(String, Vec<u8>)>(
                "SELECT path, content FROM plugin_package_files WHERE plugin_id = ? ORDER BY path",
                (id,),
            )?
            .into_iter()
            .map(|(path, content)| PackageFile { path, content })
            .collect(),
    })
}

/// Forgets plugin `id`'s stored package.
pub fn forget_package(conn: &dyn CoreAccess, id: &str) -> Result<(), CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            conn.execute(
                "DELETE FROM plugin_package_files WHERE plugin_id = ?1",
                [id],
            )?;
            conn.execute("DELETE FROM plugin_packages WHERE plugin_id = ?1", [id])?;
        }
        CoreHandle::Postgres(pg) => {
            pg.execute(
                "DELETE FROM plugin_package_files WHERE plugin_id = $1",
                &[&id],
            )?;
            pg.execute("DELETE FROM plugin_packages WHERE plugin_id = $1", &[&id])?;
        }
        CoreHandle::Mysql(my) => {
            my.execute(
                "DELETE FROM plugin_package_files WHERE plugin_id = ?",
                (id,),
            )?;
            my.execute("DELETE FROM plugin_packages WHERE plugin_id = ?", (id,))?;
        }
    }
    Ok(())
}
