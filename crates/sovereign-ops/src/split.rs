//! `sv migrate:split`: the rollout path for an install that still keeps core and plugin
//! tables in one SQLite file. Core tables go to a fresh `core.db`, each plugin's tables
//! to the plugin store (or its isolated file) under its namespace; rows are counted and
//! checksummed on both sides; the source is only ever opened read-only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use sovereign_db::rusqlite::{self, Connection, OptionalExtension};
use sovereign_db_plugins::{DatabaseMode, TrustedPluginStore};

use crate::{Layout, OpsError, file_digest, sqlite};

/// Where a source table goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// The same table in `core.db`.
    Core,
    /// A plugin's namespace in the shared store.
    Shared(String),
    /// A plugin's isolated file.
    Isolated(String),
    /// Left out on the operator's word.
    Skip,
}

/// One line of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanEntry {
    /// Table in the source file.
    pub source_table: String,
    /// Where it goes.
    pub destination: Destination,
    /// Its name there.
    pub target_table: String,
    /// Rows in the source.
    pub rows: u64,
}

/// The plan: every table of the source, attributed or not.
#[derive(Debug, Clone, Serialize)]
pub struct SplitPlan {
    /// Attributed tables.
    pub entries: Vec<PlanEntry>,
    /// Tables nobody claims; the split stops unless each is mapped.
    pub unattributed: Vec<String>,
    /// Views and triggers, which are not copied (recreate them with plugin migrations).
    pub not_copied: Vec<String>,
}

/// An operator's `--map TABLE=PLUGIN` or `--map TABLE=skip`.
#[derive(Debug, Clone)]
pub enum Mapping {
    /// Into this plugin's namespace (`<plugin>__<table>`).
    Plugin(String),
    /// Leave it out.
    Skip,
}

/// One copied table, checked.
#[derive(Debug, Clone, Serialize)]
pub struct CopiedTable {
    /// Source table.
    pub source_table: String,
    /// Destination file.
    pub file: PathBuf,
    /// Destination table.
    pub target_table: String,
    /// Rows on both sides.
    pub rows: u64,
    /// SHA-256 over the rows, equal on both sides.
    pub checksum: String,
}

fn open_source(source: &Path) -> Result<Connection, OpsError> {
    crate::backup::open_read_only(source)
}

/// The core schema's table names, from this build's migrations.
fn core_tables() -> Result<Vec<String>, OpsError> {
    let conn = Connection::open_in_memory().map_err(sqlite("creating a scratch database"))?;
    sovereign_db_core::migrations()
        .deploy(&conn)
        .map_err(|e| OpsError::Refused(e.to_string()))?;
    let names = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_sv\\_%' ESCAPE '\\'")
        .map_err(sqlite("listing core tables"))?
        .query_map([], |r| r.get(0))
        .map_err(sqlite("listing core tables"))?
        .collect::<Result<_, _>>()
        .map_err(sqlite("listing core tables"))?;
    Ok(names)
}

/// Builds the plan. Plugin modes come from the source's own plugin registry when it has
/// one (`plugins.database_mode`), else shared.
pub fn plan(source: &Path, mappings: &BTreeMap<String, Mapping>) -> Result<SplitPlan, OpsError> {
    let conn = open_source(source)?;
    let ctx = || format!("reading {}", source.display());
    let core = core_tables()?;
    let objects: Vec<(String, String)> = conn
        .prepare("SELECT type, name FROM sqlite_schema WHERE type IN ('table', 'view', 'trigger') ORDER BY rowid")
        .map_err(sqlite(ctx()))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sqlite(ctx()))?
        .collect::<Result<_, _>>()
        .map_err(sqlite(ctx()))?;
    let has_registry = objects.iter().any(|(t, n)| t == "table" && n == "plugins");
    // A plugin the registry does not list runs shared; a mode the registry spells in a
    // way no version wrote is refused, not guessed.
    let mode_of = |id: &str| -> Result<DatabaseMode, OpsError> {
        if !has_registry {
            return Ok(DatabaseMode::Shared);
        }
        let recorded: Option<String> = conn
            .query_row(
                "SELECT database_mode FROM plugins WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sqlite(ctx()))?;
        match recorded {
            None => Ok(DatabaseMode::Shared),
            Some(mode) => mode.parse().map_err(|e| {
                OpsError::Refused(format!(
                    "the registry in {} gives plugin {id} an unknown mode: {e}",
                    source.display()
                ))
            }),
        }
    };
    let mut out = SplitPlan {
        entries: vec![],
        unattributed: vec![],
        not_copied: vec![],
    };
    for (kind, name) in objects {
        if kind != "table" {
            out.not_copied.push(format!("{kind} {name}"));
            continue;
        }
        if name.starts_with("sqlite_") || name.starts_with("_sv_") {
            continue;
        }
        let rows = conn
            .query_row(&format!("SELECT count(*) FROM {}", quote(&name)), [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sqlite(ctx()))? as u64;
        let plugin_dest = |id: &str, target: String| -> Result<_, OpsError> {
            let destination = match mode_of(id)? {
                DatabaseMode::Shared => Destination::Shared(id.to_owned()),
                DatabaseMode::Isolated => Destination::Isolated(id.to_owned()),
            };
            Ok((destination, target))
        };
        let (destination, target_table) = match mappings.get(&name) {
            Some(Mapping::Skip) => (Destination::Skip, name.clone()),
            Some(Mapping::Plugin(id)) => {
                let target = if name.to_ascii_lowercase().starts_with(&format!("{id}__")) {
                    name.clone()
                } else {
                    format!("{id}__{name}")
                };
                plugin_dest(id, target)?
            }
            None if core.contains(&name) => (Destination::Core, name.clone()),
            None => match name.split_once("__") {
                Some((id, rest))
                    if !rest.is_empty()
                        && sovereign_db_plugins::is_installable_plugin_id(id)
                        && id != "core" =>
                {
                    plugin_dest(id, name.clone())?
                }
                _ => {
                    out.unattributed.push(name);
                    continue;
                }
            },
        };
        out.entries.push(PlanEntry {
            source_table: name,
            destination,
            target_table,
            rows,
        });
    }
    for table in mappings.keys() {
        if !out.entries.iter().any(|e| &e.source_table == table) {
            return Err(OpsError::Refused(format!(
                "--map names {table:?}, which is not a table of the source"
            )));
        }
    }
    Ok(out)
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Rewrites `CREATE TABLE old (...)` / `CREATE [UNIQUE] INDEX old ON table (...)` with new
/// names, keeping every column definition and constraint as written.
fn rename_create(sql: &str, new_name: &str, on_table: Option<&str>) -> Option<String> {
    let upper = sql.to_ascii_uppercase();
    let keyword = if on_table.is_some() { "INDEX" } else { "TABLE" };
    let keyword_end = upper.find(keyword)? + keyword.len();
    let (name_start, name_end) = ident_span(sql, keyword_end)?;
    let mut out = format!(
        "{}{}{}",
        &sql[..name_start],
        quote(new_name),
        &sql[name_end..]
    );
    if let Some(table) = on_table {
        let upper = out.to_ascii_uppercase();
        let on = upper[name_start..].find(" ON ")? + name_start + 4;
        let (s, e) = ident_span(&out, on)?;
        out = format!("{}{}{}", &out[..s], quote(table), &out[e..]);
    }
    Some(out)
}

/// The span of the identifier after `from` (skipping white space).
fn ident_span(sql: &str, from: usize) -> Option<(usize, usize)> {
    let bytes = sql.as_bytes();
    let mut i = from;
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    let start = i;
    let close = match bytes.get(i)? {
        b'"' => Some(b'"'),
        b'[' => Some(b']'),
        b'`' => Some(b'`'),
        _ => None,
    };
    match close {
        Some(c) => {
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += 1;
            }
            Some((start, (i + 1).min(bytes.len())))
        }
        None => {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'$')
            {
                i += 1;
            }
            (i > start).then_some((start, i))
        }
    }
}

/// Row count and SHA-256 over a table's rows (in the order of all its columns).
fn table_checksum(
    conn: &Connection,
    schema: &str,
    table: &str,
    columns: &[String],
) -> rusqlite::Result<(u64, String)> {
    let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    let order: Vec<String> = (1..=cols.len()).map(|i| i.to_string()).collect();
    let sql = format!(
        "SELECT {} FROM {schema}.{} ORDER BY {}",
        cols.join(", "),
        quote(table),
        order.join(", ")
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut hasher = Sha256::new();
    let mut count = 0u64;
    while let Some(row) = rows.next()? {
        count += 1;
        for i in 0..cols.len() {
            match row.get_ref(i)? {
                rusqlite::types::ValueRef::Null => hasher.update([0]),
                rusqlite::types::ValueRef::Integer(v) => {
                    hasher.update([1]);
                    hasher.update(v.to_le_bytes());
                }
                rusqlite::types::ValueRef::Real(v) => {
                    hasher.update([2]);
                    hasher.update(v.to_bits().to_le_bytes());
                }
                rusqlite::types::ValueRef::Text(v) | rusqlite::types::ValueRef::Blob(v) => {
                    hasher.update([3]);
                    hasher.update((v.len() as u64).to_le_bytes());
                    hasher.update(v);
                }
            }
        }
    }
    Ok((count, hex::encode(hasher.finalize())))
}

fn columns_of(conn: &Connection, schema: &str, table: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare(&format!("SELECT name FROM {schema}.pragma_table_info(?1)"))?
        .query_map([table], |r| r.get(0))?
        .collect()
}

/// Copies tables from the attached `legacy` source into `conn`'s main database, checking
/// counts and checksums. `create` says whether to create the target from the source's
/// definition (plugin tables) or insert into the existing table (core tables, created by
/// the core migrations).
fn copy_tables(
    conn: &Connection,
    entries: &[&PlanEntry],
    file: &Path,
    create: bool,
) -> Result<Vec<CopiedTable>, OpsError> {
    let ctx = |t: &str| format!("copying {t} into {}", file.display());
    let mut copied = Vec::new();
    for entry in entries {
        let src = &entry.source_table;
        let dst = &entry.target_table;
        if create {
            let sql: String = conn
                .query_row(
                    "SELECT sql FROM legacy.sqlite_schema WHERE type = 'table' AND name = ?1",
                    [src],
                    |r| r.get(0),
                )
                .map_err(sqlite(ctx(src)))?;
            let create = rename_create(&sql, dst, None).ok_or_else(|| {
                OpsError::Refused(format!("cannot read the definition of {src}: {sql}"))
            })?;
            conn.execute_batch(&create).map_err(sqlite(ctx(src)))?;
            let indexes: Vec<(String, String)> = conn
                .prepare("SELECT name, sql FROM legacy.sqlite_schema WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL")
                .and_then(|mut s| s.query_map([src], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(sqlite(ctx(src)))?;
            let prefix = dst
                .split_once("__")
                .map(|(id, _)| format!("{id}__"))
                .unwrap_or_default();
            for (name, sql) in indexes {
                let new_name = if name.to_ascii_lowercase().starts_with(&prefix) {
                    name.clone()
                } else {
                    format!("{prefix}{name}")
                };
                let create = rename_create(&sql, &new_name, Some(dst)).ok_or_else(|| {
                    OpsError::Refused(format!("cannot read the definition of index {name}: {sql}"))
                })?;
                conn.execute_batch(&create).map_err(sqlite(ctx(src)))?;
            }
        } else {
            conn.execute(&format!("DELETE FROM main.{}", quote(dst)), [])
                .map_err(sqlite(ctx(src)))?;
        }
        let source_cols = columns_of(conn, "legacy", src).map_err(sqlite(ctx(src)))?;
        let target_cols = columns_of(conn, "main", dst).map_err(sqlite(ctx(src)))?;
        let common: Vec<String> = target_cols
            .iter()
            .filter(|c| source_cols.contains(c))
            .cloned()
            .collect();
        let missing: Vec<&String> = source_cols
            .iter()
            .filter(|c| !target_cols.contains(c))
            .collect();
        if !missing.is_empty() {
            return Err(OpsError::Refused(format!(
                "{src} has columns the core schema does not: {missing:?}; map the table to a plugin or skip it"
            )));
        }
        let cols: Vec<String> = common.iter().map(|c| quote(c)).collect();
        conn.execute(
            &format!(
                "INSERT INTO main.{} ({}) SELECT {} FROM legacy.{}",
                quote(dst),
                cols.join(", "),
                cols.join(", "),
                quote(src)
            ),
            [],
        )
        .map_err(sqlite(ctx(src)))?;
        let (src_rows, src_sum) =
            table_checksum(conn, "legacy", src, &common).map_err(sqlite(ctx(src)))?;
        let (dst_rows, dst_sum) =
            table_checksum(conn, "main", dst, &common).map_err(sqlite(ctx(src)))?;
        if src_rows != dst_rows || src_sum != dst_sum {
            return Err(OpsError::Refused(format!(
                "{src} -> {dst}: {src_rows} rows (checksum {src_sum}) in the source but {dst_rows} ({dst_sum}) copied"
            )));
        }
        copied.push(CopiedTable {
            source_table: src.clone(),
            file: file.to_owned(),
            target_table: dst.clone(),
            rows: dst_rows,
            checksum: dst_sum,
        });
    }
    Ok(copied)
}

fn attach_source(conn: &Connection, source: &Path) -> Result<(), OpsError> {
    conn.execute(
        "ATTACH DATABASE ?1 AS legacy",
        [format!("file:{}?mode=ro", source.display())],
    )
    .map_err(sqlite(format!("attaching {}", source.display())))?;
    Ok(())
}

/// Runs the split. Refuses if the plan has unattributed tables or the layout already has
/// a core store; on failure the files it created are removed (the source is untouched).
pub fn split(
    source: &Path,
    plan: &SplitPlan,
    layout: &Layout,
) -> Result<Vec<CopiedTable>, OpsError> {
    if !plan.unattributed.is_empty() {
        return Err(OpsError::Refused(format!(
            "these tables belong to neither the core nor a plugin namespace: {}; map each with --map TABLE=PLUGIN or --map TABLE=skip",
            plan.unattributed.join(", ")
        )));
    }
    for existing in [&layout.core, &layout.plugins] {
        if existing.exists() {
            return Err(OpsError::Refused(format!(
                "{} already exists; split into a fresh data directory (move the existing files away first)",
                existing.display()
            )));
        }
    }
    let (before, _) = file_digest(source)?;
    let mut created: Vec<PathBuf> = vec![layout.core.clone(), layout.plugins.clone()];
    let result = (|| -> Result<Vec<CopiedTable>, OpsError> {
        let mut copied = Vec::new();
        let core = sovereign_db_core::open(&layout.core)?;
        sovereign_db_core::migrations()
            .deploy(&core)
            .map_err(|e| OpsError::Refused(e.to_string()))?;
        attach_source(&core, source)?;
        core.execute_batch("PRAGMA foreign_keys = OFF; BEGIN IMMEDIATE")
            .map_err(sqlite("starting the core copy"))?;
        let core_entries: Vec<&PlanEntry> = plan
            .entries
            .iter()
            .filter(|e| e.destination == Destination::Core)
            .collect();
        copied.extend(copy_tables(&core, &core_entries, &layout.core, false)?);
        let violations: i64 = core
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .map_err(sqlite("checking foreign keys"))?;
        if violations > 0 {
            return Err(OpsError::Refused(format!(
                "the copied core data has {violations} foreign key violations"
            )));
        }
        core.execute_batch("COMMIT; PRAGMA foreign_keys = ON; DETACH DATABASE legacy")
            .map_err(sqlite("finishing the core copy"))?;

        let mut groups: BTreeMap<PathBuf, (Option<String>, Vec<&PlanEntry>)> = BTreeMap::new();
        for entry in &plan.entries {
            match &entry.destination {
                Destination::Shared(_) => groups
                    .entry(layout.plugins.clone())
                    .or_default()
                    .1
                    .push(entry),
                Destination::Isolated(id) => {
                    let file = layout.isolated_dir.join(format!("{id}.db"));
                    let group = groups.entry(file).or_default();
                    group.0 = Some(id.clone());
                    group.1.push(entry);
                }
                Destination::Core | Destination::Skip => {}
            }
        }
        let shared = TrustedPluginStore::open_shared(&layout.plugins)?;
        drop(shared);
        for (file, (isolated_id, entries)) in groups {
            if file.exists() && isolated_id.is_some() {
                return Err(OpsError::Refused(format!(
                    "{} already exists",
                    file.display()
                )));
            }
            created.push(file.clone());
            let store = match &isolated_id {
                Some(id) => TrustedPluginStore::open_isolated(&file, id)?,
                None => TrustedPluginStore::open_shared(&file)?,
            };
            let conn = store.connection();
            attach_source(conn, source)?;
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(sqlite("starting the plugin copy"))?;
            copied.extend(copy_tables(conn, &entries, &file, true)?);
            conn.execute_batch("COMMIT; DETACH DATABASE legacy")
                .map_err(sqlite("finishing the plugin copy"))?;
        }
        Ok(copied)
    })();
    let (after, _) = file_digest(source)?;
    if before != after {
        return Err(OpsError::Refused(format!(
            "{} changed while it was split; was the old install still running?",
            source.display()
        )));
    }
    match result {
        Ok(copied) => Ok(copied),
        Err(e) => {
            for file in created {
                crate::remove_db_files(&file);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rename_create;

    #[test]
    fn create_statements_are_renamed_keeping_their_definitions() {
        assert_eq!(
            rename_create(
                "CREATE TABLE todos (id INTEGER PRIMARY KEY, t TEXT)",
                "tasks__todos",
                None
            )
            .unwrap(),
            "CREATE TABLE \"tasks__todos\" (id INTEGER PRIMARY KEY, t TEXT)"
        );
        assert_eq!(
            rename_create("CREATE TABLE \"my table\"(x)", "p__my_table", None).unwrap(),
            "CREATE TABLE \"p__my_table\"(x)"
        );
        assert_eq!(
            rename_create(
                "CREATE UNIQUE INDEX idx_t ON todos (t)",
                "tasks__idx_t",
                Some("tasks__todos")
            )
            .unwrap(),
            "CREATE UNIQUE INDEX \"tasks__idx_t\" ON \"tasks__todos\" (t)"
        );
    }
}
