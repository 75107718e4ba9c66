//! Looking after a MySQL plugin store, as its account (`svc_plugins`): what each plugin's
//! database holds, a plugin's data purged after a dump of it, and tables rebuilt to give
//! back free space.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mysql::prelude::Queryable;
use sovereign_mysql::{MyError, StoreUrl};

use crate::inspect::{FileUsage, InspectReport, PluginUsage, PurgeReport, TableUsage};
use crate::{OpsError, io};

/// InnoDB's page size (its default; sizes are reported in bytes anyway).
const PAGE_SIZE: u64 = 16 * 1024;

fn statement(sql: &str) -> impl FnOnce(mysql::Error) -> OpsError + '_ {
    move |source| {
        OpsError::Mysql(MyError::Statement {
            statement: sql.lines().next().unwrap_or_default().to_owned(),
            source,
        })
    }
}

/// One table as `information_schema.TABLES` shows it: database, name, rows (InnoDB's
/// estimate), bytes of data and indexes, free bytes.
type TableRow = (String, String, u64, u64, u64);

/// The base tables of the plugin database and of every plugin's database.
fn tables(conn: &mut mysql::Conn, store: &str) -> Result<Vec<TableRow>, OpsError> {
    let query = "SELECT TABLE_SCHEMA, TABLE_NAME,
                        CAST(COALESCE(TABLE_ROWS, 0) AS UNSIGNED),
                        CAST(COALESCE(DATA_LENGTH, 0) + COALESCE(INDEX_LENGTH, 0) AS UNSIGNED),
                        CAST(COALESCE(DATA_FREE, 0) AS UNSIGNED)
                 FROM information_schema.TABLES
                 WHERE TABLE_TYPE = 'BASE TABLE' AND (TABLE_SCHEMA = ? OR TABLE_SCHEMA LIKE ?)
                 ORDER BY TABLE_SCHEMA, TABLE_NAME";
    conn.exec(query, (store, format!("{}\\_%", store.replace('_', "\\_"))))
        .map_err(statement(query))
}

/// What the plugin store holds: its database (bookkeeping and mirrors) and each
/// plugin's database (`only`: that plugin's alone), with tables, sizes and row counts.
pub fn inspect(store: &StoreUrl, only: Option<&str>) -> Result<InspectReport, OpsError> {
    let mut conn = store.connect()?;
    let prefix = format!("{}_", store.database);
    let mut databases: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut by_plugin: BTreeMap<String, Vec<TableUsage>> = BTreeMap::new();
    let mut mirror_bytes = 0;
    for (database, table, rows, bytes, free) in tables(&mut conn, &store.database)? {
        let id = database.strip_prefix(&prefix).map(str::to_owned);
        if let Some(id) = &id {
            if sovereign_db_plugins::check_plugin_id(id).is_err()
                || only.is_some_and(|only| only != id)
            {
                continue;
            }
        } else if table.starts_with(sovereign_db_plugins::mirror::MIRROR_PREFIX) {
            mirror_bytes += bytes;
        }
        let total = databases.entry(database.clone()).or_default();
        total.0 += bytes;
        total.1 += free;
        if let Some(id) = id
            && !table.starts_with("_sv_")
        {
            by_plugin.entry(id).or_default().push(TableUsage {
                name: table,
                rows,
                bytes,
            });
        }
    }
    let location = |database: &str| PathBuf::from(format!("mysql://{}/{database}", store.server));
    let files = databases
        .iter()
        .map(|(database, (bytes, free))| FileUsage {
            path: location(database),
            bytes: *bytes,
            free_pages: free / PAGE_SIZE,
            page_size: PAGE_SIZE,
        })
        .collect();
    let plugins = by_plugin
        .into_iter()
        .map(|(id, tables)| {
            let database = format!("{prefix}{id}");
            let bytes = tables.iter().map(|t| t.bytes).sum::<u64>();
            let of_database = databases.get(&database).map_or(0, |d| d.0);
            PluginUsage {
                file: location(&database),
                share_of_file: if of_database == 0 {
                    0.0
                } else {
                    bytes as f64 / of_database as f64
                },
                id,
                tables,
                bytes,
            }
        })
        .collect();
    Ok(InspectReport {
        files,
        plugins,
        mirror_bytes,
    })
}

/// Drops what plugin `id`'s migrations made (tables, its own views, functions and
/// procedures; its database, account, mirror views and event outbox table stay; its
/// undelivered events go), after dumping its database into `backup_dir` (unless
/// `None`), and its routines beside it as its own account when its `password` is known
/// (MySQL shows a routine's body to its definer only). Its migrations make them again.
pub fn purge_plugin(
    store: &StoreUrl,
    id: &str,
    password: Option<&str>,
    backup_dir: Option<&Path>,
) -> Result<PurgeReport, OpsError> {
    sovereign_db_plugins::check_plugin_id(id)?;
    let database = format!("{}_{id}", store.database);
    let mut conn = store.connect()?;
    let views = "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ?";
    let views: Vec<String> = conn.exec(views, (&database,)).map_err(statement(views))?;
    let (backup, routines_backup) = match backup_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
            let stamp = crate::stamp();
            let tools = sovereign_mysql::dump::ClientTools::find()?;
            let out = dir.join(format!("purge-{id}-{stamp}.sql"));
            tools.dump(store, &database, &out, &views)?;
            let routines = match password {
                Some(password) => {
                    let out = dir.join(format!("purge-{id}-{stamp}.routines.sql"));
                    tools.dump_routines(&store.plugin_login(id, password), &database, &out)?;
                    Some(out)
                }
                None => None,
            };
            (Some(out), routines)
        }
        None => (None, None),
    };
    let query = "SELECT TABLE_NAME FROM information_schema.TABLES
                 WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1";
    let tables: Vec<String> = conn.exec(query, (&database,)).map_err(statement(query))?;
    let query = "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES
                 WHERE ROUTINE_SCHEMA = ? ORDER BY 2";
    let routines: Vec<(String, String)> =
        conn.exec(query, (&database,)).map_err(statement(query))?;
    let mirror = |name: &str| name.starts_with(sovereign_db_plugins::mirror::MIRROR_PREFIX);
    let objects = views
        .iter()
        .filter(|view| !mirror(view))
        .map(|view| ("VIEW", view.as_str()))
        .chain(
            tables
                .iter()
                .filter(|t| *t != "_sv_event_outbox")
                .map(|t| ("TABLE", t.as_str())),
        )
        .chain(routines.iter().map(|(kind, name)| {
            let kind = if kind == "PROCEDURE" {
                "PROCEDURE"
            } else {
                "FUNCTION"
            };
            (kind, name.as_str())
        }));
    let off = "SET SESSION foreign_key_checks = 0";
    conn.query_drop(off).map_err(statement(off))?;
    let mut dropped = Vec::new();
    for (kind, name) in objects {
        let drop = format!(
            "DROP {kind} IF EXISTS `{database}`.`{}`",
            name.replace('`', "``")
        );
        conn.query_drop(&drop).map_err(statement(&drop))?;
        dropped.push(format!("{} {database}.{name}", kind.to_ascii_lowercase()));
    }
    let events = format!("DELETE FROM `{database}`._sv_event_outbox WHERE delivered_at_ms IS NULL");
    conn.query_drop(&events).map_err(statement(&events))?;
    let deleted = conn.affected_rows();
    if deleted > 0 {
        dropped.push(format!("{deleted} undelivered event(s)"));
    }
    Ok(PurgeReport {
        backup,
        routines_backup,
        dropped,
    })
}

/// Rebuilds every table of the plugin store and the plugins' databases (`OPTIMIZE
/// TABLE`: InnoDB recreates and analyses it, giving free space back); returns their
/// bytes before and after.
pub fn vacuum(store: &StoreUrl) -> Result<(u64, u64), OpsError> {
    let mut conn = store.connect()?;
    let before = tables(&mut conn, &store.database)?;
    for (database, table, ..) in &before {
        let optimize = format!("OPTIMIZE TABLE `{database}`.`{}`", table.replace('`', "``"));
        // It answers with a result set of notes ("recreate + analyze").
        conn.query_drop(&optimize).map_err(statement(&optimize))?;
    }
    let after = tables(&mut conn, &store.database)?;
    let bytes = |rows: &[TableRow]| rows.iter().map(|r| r.3 + r.4).sum();
    Ok((bytes(&before), bytes(&after)))
}
