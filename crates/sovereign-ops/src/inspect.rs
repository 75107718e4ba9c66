//! Plugin data bloat: what each plugin stores (rows, bytes on disk via `dbstat`, share of
//! the file), free pages, the mirror's size; purging one plugin's data after a backup;
//! reclaiming free pages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sovereign_db::rusqlite::Connection;
use sovereign_db_plugins::{DatabaseMode, TrustedPluginStore};

use crate::backup::snapshot;
use crate::{OpsError, io, remove_db_files, sqlite};

/// One table (with its indexes).
#[derive(Debug, Clone, Serialize)]
pub struct TableUsage {
    /// Table name.
    pub name: String,
    /// Rows.
    pub rows: u64,
    /// Bytes on disk of the table and its indexes.
    pub bytes: u64,
}

/// One plugin's data.
#[derive(Debug, Clone, Serialize)]
pub struct PluginUsage {
    /// Plugin id.
    pub id: String,
    /// The file its tables are in.
    pub file: PathBuf,
    /// Its tables.
    pub tables: Vec<TableUsage>,
    /// Total bytes.
    pub bytes: u64,
    /// Share of its file's size (0..1).
    pub share_of_file: f64,
}

/// One database file.
#[derive(Debug, Clone, Serialize)]
pub struct FileUsage {
    /// Path.
    pub path: PathBuf,
    /// Size in bytes (pages * page size).
    pub bytes: u64,
    /// Free pages (reclaimable by vacuum).
    pub free_pages: u64,
    /// Page size.
    pub page_size: u64,
}

/// The whole picture.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// Files looked at.
    pub files: Vec<FileUsage>,
    /// Plugins found (registered or not: every `<id>__` namespace).
    pub plugins: Vec<PluginUsage>,
    /// Bytes of the `core__*` mirror tables.
    pub mirror_bytes: u64,
}

fn file_usage(conn: &Connection, path: &Path) -> Result<FileUsage, OpsError> {
    let get = |sql: &str| {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map_err(sqlite(format!("reading {}", path.display())))
    };
    let page_size = get("PRAGMA page_size")? as u64;
    Ok(FileUsage {
        path: path.to_owned(),
        bytes: get("PRAGMA page_count")? as u64 * page_size,
        free_pages: get("PRAGMA freelist_count")? as u64,
        page_size,
    })
}

/// Bytes per table (indexes counted with their table) and row counts, from `dbstat`.
fn tables_of(conn: &Connection, path: &Path) -> Result<BTreeMap<String, TableUsage>, OpsError> {
    let ctx = || format!("measuring {}", path.display());
    let owners: BTreeMap<String, (String, String)> = conn
        .prepare("SELECT name, tbl_name, type FROM sqlite_schema WHERE type IN ('table', 'index')")
        .map_err(sqlite(ctx()))?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?))))
        .map_err(sqlite(ctx()))?
        .collect::<Result<_, _>>()
        .map_err(sqlite(ctx()))?;
    let mut out: BTreeMap<String, TableUsage> = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT name, pgsize FROM dbstat('main', 1)")
        .map_err(sqlite(ctx()))?;
    let sizes = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(sqlite(ctx()))?;
    for size in sizes {
        let (name, bytes) = size.map_err(sqlite(ctx()))?;
        let table = owners.get(&name).map_or(name.clone(), |(t, _)| t.clone());
        out.entry(table.clone())
            .or_insert_with(|| TableUsage {
                name: table,
                rows: 0,
                bytes: 0,
            })
            .bytes += bytes as u64;
    }
    for (name, (_, kind)) in &owners {
        if kind == "table"
            && let Some(usage) = out.get_mut(name)
        {
            usage.rows = conn
                .query_row(
                    &format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\"")),
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(sqlite(ctx()))? as u64;
        }
    }
    Ok(out)
}

fn namespace_of(table: &str) -> Option<&str> {
    let (id, rest) = table.split_once("__")?;
    (!rest.is_empty() && sovereign_db_plugins::is_installable_plugin_id(id)).then_some(id)
}

/// Inspects the shared store, the isolated files and the mirror (trusted, read-only use).
pub fn inspect(
    shared: &Path,
    isolated: &[(String, PathBuf)],
    mirror_file: Option<&Path>,
    only: Option<&str>,
) -> Result<InspectReport, OpsError> {
    let mut report = InspectReport {
        files: vec![],
        plugins: vec![],
        mirror_bytes: 0,
    };
    let add_file = |path: &Path,
                    forced_id: Option<&str>,
                    report: &mut InspectReport|
     -> Result<(), OpsError> {
        let conn = crate::backup::open_read_only(path)?;
        let usage = file_usage(&conn, path)?;
        let tables = tables_of(&conn, path)?;
        let mut by_plugin: BTreeMap<String, Vec<TableUsage>> = BTreeMap::new();
        for (name, t) in tables {
            if name.starts_with(sovereign_db_plugins::mirror::MIRROR_PREFIX) {
                report.mirror_bytes += t.bytes;
            } else if let Some(id) = forced_id.or_else(|| namespace_of(&name)) {
                if name.starts_with("_sv_") || name.starts_with("sqlite_") {
                    continue;
                }
                by_plugin.entry(id.to_owned()).or_default().push(t);
            }
        }
        for (id, tables) in by_plugin {
            if only.is_some_and(|o| o != id) {
                continue;
            }
            let bytes = tables.iter().map(|t| t.bytes).sum();
            report.plugins.push(PluginUsage {
                share_of_file: if usage.bytes > 0 {
                    bytes as f64 / usage.bytes as f64
                } else {
                    0.0
                },
                id,
                file: path.to_owned(),
                tables,
                bytes,
            });
        }
        report.files.push(usage);
        Ok(())
    };
    if shared.exists() {
        add_file(shared, None, &mut report)?;
    }
    for (id, path) in isolated {
        if only.is_none_or(|o| o == id) {
            add_file(path, Some(id), &mut report)?;
        }
    }
    if let Some(mirror) = mirror_file.filter(|m| m.exists()) {
        add_file(mirror, None, &mut report)?;
    }
    Ok(report)
}

/// What a purge did.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeReport {
    /// The backup of the plugin's data, if one was written.
    pub backup: Option<PathBuf>,
    /// The backup of the plugin's stored routines, if kept apart (MySQL: they are dumped
    /// and loaded as the plugin's own account, their definer).
    pub routines_backup: Option<PathBuf>,
    /// What was dropped.
    pub dropped: Vec<String>,
}

/// Drops exactly one plugin's data, after writing a backup of it into `backup_dir`
/// (unless `None`). In the shared store the backup holds the plugin's tables and its
/// migration tracking rows; an isolated file is copied whole.
pub fn purge(
    shared: &Path,
    isolated_file: Option<&Path>,
    id: &str,
    mode: DatabaseMode,
    backup_dir: Option<&Path>,
) -> Result<PurgeReport, OpsError> {
    let backup = match backup_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            let path = dir.join(format!("purge-{id}-{}.db", crate::stamp()));
            match (mode, isolated_file) {
                (DatabaseMode::Isolated, Some(file)) if file.exists() => snapshot(file, &path)?,
                (DatabaseMode::Isolated, _) => {}
                (DatabaseMode::Shared, _) => {
                    let source = TrustedPluginStore::open_shared(shared)?;
                    let copy = TrustedPluginStore::open_isolated(&path, id)?;
                    copy.copy_plugin_from(&source, id)?;
                    copy.connection()
                        .query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
                        .map_err(sqlite("finishing the purge backup"))?;
                }
            }
            path.exists().then_some(path)
        }
        None => None,
    };
    let dropped = match (mode, isolated_file) {
        (DatabaseMode::Shared, _) => {
            TrustedPluginStore::open_shared(shared)?.drop_plugin_data(id)?
        }
        (DatabaseMode::Isolated, Some(file)) => {
            let existed = file.exists();
            remove_db_files(file);
            if existed {
                vec![format!("file {}", file.display())]
            } else {
                vec![]
            }
        }
        (DatabaseMode::Isolated, None) => vec![],
    };
    Ok(PurgeReport {
        backup,
        routines_backup: None,
        dropped,
    })
}

/// Reclaims free pages of one file: incremental vacuum where the file is set up for it,
/// otherwise a full `VACUUM` (which locks the file while it runs). Returns
/// `(bytes before, bytes after, full vacuum used)`.
pub fn vacuum(path: &Path) -> Result<(u64, u64, bool), OpsError> {
    let conn = sovereign_db::open_database(path, &sovereign_db::OpenOptions::plugins().existing())
        .map_err(|e| OpsError::Refused(e.to_string()))?;
    let ctx = || format!("vacuuming {}", path.display());
    let before = file_usage(&conn, path)?.bytes;
    let auto: i64 = conn
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .map_err(sqlite(ctx()))?;
    let full = auto != 2;
    if full {
        conn.execute_batch("VACUUM").map_err(sqlite(ctx()))?;
    } else {
        conn.execute_batch("PRAGMA incremental_vacuum")
            .map_err(sqlite(ctx()))?;
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(sqlite(ctx()))?;
    let after = file_usage(&conn, path)?.bytes;
    Ok((before, after, full))
}
