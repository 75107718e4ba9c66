//! Change capture: validating projections against the core schema and generating the
//! triggers that record every change of a mirrored core table in `_sv_change_outbox`,
//! in the same transaction as the change.

use sovereign_db::rusqlite::{self, Connection};
use sovereign_db_plugins::mirror::{MirrorCatalog, MirrorSlice};

use crate::{SyncError, ident};

/// Prefix of every generated capture trigger.
const TRIGGER_PREFIX: &str = "_sv_capture_";

/// Core tables whose every column is secret.
const SECRET_TABLES: &[&str] = &["credentials", "sessions", "plugin_store_logins"];

/// Whether a column of a core table is secret: e-mail addresses, passwords, hashes,
/// tokens and secrets, and everything in the credential and session tables.
pub fn is_secret(table: &str, column: &str) -> bool {
    let column = column.to_ascii_lowercase();
    SECRET_TABLES.contains(&table.to_ascii_lowercase().as_str())
        || ["email", "password", "hash", "token", "secret"]
            .iter()
            .any(|word| column.contains(word))
}

/// Checks every slice against the core schema: the source exists and is not bookkeeping,
/// the columns exist, the first column is the table's integer primary key, no secret
/// column is published unless the operator allowed it, and the filter compiles.
pub fn validate(core: &Connection, catalog: &MirrorCatalog) -> Result<(), SyncError> {
    for slice in catalog.slices() {
        let fail = |message: String| SyncError::Projection {
            slice: slice.name.clone(),
            message,
        };
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !valid_name(&slice.name) || slice.name.contains("__") {
            return Err(fail(
                "slice names are lowercase letters, digits and single underscores".into(),
            ));
        }
        let source = &slice.source_table;
        if source.starts_with("_sv_") || source.starts_with("sqlite_") {
            return Err(fail(format!(
                "{source} is bookkeeping, not a table that can be published"
            )));
        }
        let info: Vec<(String, i64)> = core
            .prepare("SELECT name, pk FROM pragma_table_info(?1)")?
            .query_map([source], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if info.is_empty() {
            return Err(fail(format!("the core has no table {source:?}")));
        }
        if slice.columns.is_empty() {
            return Err(fail("list at least the primary-key column".into()));
        }
        for column in &slice.columns {
            if !info.iter().any(|(name, _)| name == column) {
                let available: Vec<&str> = info.iter().map(|(n, _)| n.as_str()).collect();
                return Err(fail(format!(
                    "{source} has no column {column:?}; it has {}",
                    available.join(", ")
                )));
            }
            if is_secret(source, column) && !slice.allow_secret.contains(column) {
                return Err(fail(format!(
                    "{source}.{column} is secret and is never published unless the operator lists it in allow_secret"
                )));
            }
        }
        let key = slice.key_column();
        let pk: Vec<&str> = info
            .iter()
            .filter(|(_, pk)| *pk > 0)
            .map(|(n, _)| n.as_str())
            .collect();
        if pk != [key] {
            return Err(fail(format!(
                "the first column must be {source}'s single-column primary key (it is {pk:?}), got {key:?}"
            )));
        }
        if let Some(filter) = &slice.filter {
            core.prepare(&format!(
                "SELECT 1 FROM {} WHERE ({filter}) LIMIT 0",
                ident(source)
            ))
            .map_err(|e| fail(format!("the filter {filter:?} does not compile: {e}")))?;
        }
    }
    Ok(())
}

/// The capture triggers a slice needs, as `(name, sql)`.
fn triggers_for(slice: &MirrorSlice) -> Vec<(String, String)> {
    let source = ident(&slice.source_table);
    let key = ident(slice.key_column());
    let slice_name = slice.name.replace('\'', "''");
    let now = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";
    let record = |row: &str| {
        format!(
            "INSERT INTO _sv_change_outbox (slice, row_key, at_ms) VALUES ('{slice_name}', {row}.{key}, {now});"
        )
    };
    let name = |event: &str| format!("{TRIGGER_PREFIX}{}_{event}", slice.name);
    vec![
        (
            name("insert"),
            format!(
                "CREATE TRIGGER {} AFTER INSERT ON {source} BEGIN {} END",
                ident(&name("insert")),
                record("new")
            ),
        ),
        (
            name("update"),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE ON {source} BEGIN {} \
                 INSERT INTO _sv_change_outbox (slice, row_key, at_ms) SELECT '{slice_name}', old.{key}, {now} WHERE old.{key} IS NOT new.{key}; END",
                ident(&name("update")),
                record("new")
            ),
        ),
        (
            name("delete"),
            format!(
                "CREATE TRIGGER {} AFTER DELETE ON {source} BEGIN {} END",
                ident(&name("delete")),
                record("old")
            ),
        ),
    ]
}

/// Makes the capture triggers in `core.db` match the catalog, in one transaction: drops
/// triggers of slices no longer configured, (re)creates changed ones. Returns whether
/// anything changed.
pub fn install(core: &Connection, catalog: &MirrorCatalog) -> Result<bool, SyncError> {
    validate(core, catalog)?;
    let tx = rusqlite::Transaction::new_unchecked(core, rusqlite::TransactionBehavior::Immediate)?;
    let existing: Vec<(String, String)> = tx
        .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'trigger' AND name LIKE '\\_sv\\_capture\\_%' ESCAPE '\\'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let wanted: Vec<(String, String)> = catalog.slices().iter().flat_map(triggers_for).collect();
    let mut changed = false;
    for (name, sql) in &existing {
        if !wanted.iter().any(|(n, s)| n == name && s == sql) {
            tx.execute_batch(&format!("DROP TRIGGER {}", ident(name)))?;
            changed = true;
        }
    }
    for (name, sql) in &wanted {
        if !existing.iter().any(|(n, s)| n == name && s == sql) {
            tx.execute_batch(sql)?;
            changed = true;
        }
    }
    tx.commit()?;
    if changed {
        tracing::info!(
            slices = catalog.slices().len(),
            "change capture triggers installed"
        );
    }
    Ok(changed)
}
