//! Change capture: validating projections against the core schema and generating the
//! triggers that record every change of a mirrored core table in `_sv_change_outbox`,
//! in the same transaction as the change.

use mysql::prelude::Queryable;
use sovereign_db::rusqlite::{self, Connection};
use sovereign_db_core::{CoreAccess, CoreHandle, MyCore, PgCore};
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
pub fn validate(core: &dyn CoreAccess, catalog: &MirrorCatalog) -> Result<(), SyncError> {
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
        let info = table_columns(core, source)?;
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
            .filter(|(_, pk)| *pk)
            .map(|(n, _)| n.as_str())
            .collect();
        if pk != [key] {
            return Err(fail(format!(
                "the first column must be {source}'s single-column primary key (it is {pk:?}), got {key:?}"
            )));
        }
        if let Some(filter) = &slice.filter {
            let probe = format!("SELECT 1 FROM {} WHERE ({filter}) LIMIT 0", ident(source));
            let compiled = match core.core_handle() {
                CoreHandle::Sqlite(conn) => {
                    conn.prepare(&probe).map(drop).map_err(|e| e.to_string())
                }
                CoreHandle::Postgres(pg) => pg
                    .with_client(|client| client.prepare(&probe).map(drop))
                    .map_err(|e| e.to_string()),
                CoreHandle::Mysql(my) => my
                    .with_conn(|conn| conn.prep(&probe).map(drop))
                    .map_err(|e| e.to_string()),
            };
            compiled.map_err(|e| fail(format!("the filter {filter:?} does not compile: {e}")))?;
        }
    }
    Ok(())
}

/// The columns of core table `table`, in order, and whether each is in its primary key
/// (empty if there is no such table).
fn table_columns(core: &dyn CoreAccess, table: &str) -> Result<Vec<(String, bool)>, SyncError> {
    Ok(match core.core_handle() {
        CoreHandle::Sqlite(conn) => conn
            .prepare("SELECT name, pk FROM pragma_table_info(?1)")?
            .query_map([table], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? > 0)))?
            .collect::<Result<_, _>>()?,
        CoreHandle::Postgres(pg) => pg
            .with_client(|client| {
                client.query(
                    "SELECT a.attname::text,
                        coalesce(a.attnum = ANY (i.indkey::int2[]), false)
                 FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
                 LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
                 WHERE c.relname = $1 AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum",
                    &[&table],
                )
            })?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
        CoreHandle::Mysql(my) => my.with_conn(|conn| {
            conn.exec(
                "SELECT COLUMN_NAME, COLUMN_KEY = 'PRI' FROM information_schema.COLUMNS
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (table,),
            )
        })?,
    })
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

/// Makes the capture triggers of the core store match the catalog, in one transaction:
/// drops triggers of slices no longer configured, (re)creates changed ones. Returns
/// whether anything changed.
pub fn install(core: &dyn CoreAccess, catalog: &MirrorCatalog) -> Result<bool, SyncError> {
    validate(core, catalog)?;
    let changed = match core.core_handle() {
        CoreHandle::Sqlite(conn) => install_sqlite(conn, catalog)?,
        CoreHandle::Postgres(pg) => install_postgres(pg, catalog)?,
        CoreHandle::Mysql(my) => install_mysql(my, catalog)?,
    };
    if changed {
        tracing::info!(
            slices = catalog.slices().len(),
            "change capture triggers installed"
        );
    }
    Ok(changed)
}

fn install_sqlite(core: &Connection, catalog: &MirrorCatalog) -> Result<bool, SyncError> {
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
    Ok(changed)
}

/// Serialises capturing transactions on PostgreSQL (taken before the outbox row's
/// sequence number, held to commit): sequence order is then commit order, as on SQLite
/// with its one writer, so a reader that has seen `seq` N never later finds a smaller
/// one committed. Without it a batch could pass over a change still in flight.
const CAPTURE_LOCK: i64 = 0x5356_4341_5054; // "SVCAPT"

/// The channel a PostgreSQL core's capture triggers notify (once per transaction) so
/// that the sync worker wakes; it carries no data.
pub const CHANGES_CHANNEL: &str = "sv_core_changes";

/// One slice's capture on PostgreSQL: a trigger function `_sv_capture_<slice>` and a row
/// trigger of the same name on the source table, as `(name, table, function body)`.
fn postgres_capture_for(slice: &MirrorSlice) -> (String, String, String) {
    let key = ident(slice.key_column());
    let slice_name = slice.name.replace('\'', "''");
    let record = |row: &str| {
        format!(
            "INSERT INTO _sv_change_outbox (slice, row_key, at_ms) VALUES ('{slice_name}', {row}.{key}, \
             (extract(epoch FROM clock_timestamp()) * 1000)::bigint);"
        )
    };
    let body = format!(
        "
BEGIN
    PERFORM pg_advisory_xact_lock({CAPTURE_LOCK});
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        {}
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.{key} IS DISTINCT FROM NEW.{key}) THEN
        {}
    END IF;
    PERFORM pg_notify('{CHANGES_CHANNEL}', '');
    RETURN NULL;
END
",
        record("NEW"),
        record("OLD")
    );
    (
        format!("{TRIGGER_PREFIX}{}", slice.name),
        slice.source_table.clone(),
        body,
    )
}

fn install_postgres(core: &PgCore, catalog: &MirrorCatalog) -> Result<bool, SyncError> {
    let wanted: Vec<(String, String, String)> =
        catalog.slices().iter().map(postgres_capture_for).collect();
    Ok(core.with_client(|client| -> Result<bool, postgres::Error> {
        let mut tx = client.transaction()?;
        // Kernels starting together install one at a time (concurrent DDL on one
        // trigger fails); the later one then finds the triggers in place.
        tx.batch_execute("SELECT pg_advisory_xact_lock(hashtextextended('sv-capture-install', 0))")?;
        let existing: Vec<(String, String, String)> = tx
            .query(
                "SELECT p.proname::text, coalesce(t.tgrelid::regclass::text, ''), p.prosrc
                 FROM pg_proc p
                 JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'public'
                 LEFT JOIN pg_trigger t ON t.tgname = p.proname AND t.tgfoid = p.oid
                 WHERE p.proname LIKE '\\_sv\\_capture\\_%'",
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        // regclass text quotes a table name only where it must.
        let same = |(n, t, b): &(String, String, String), (wn, wt, wb): &(String, String, String)| {
            n == wn && b == wb && (t == wt || *t == ident(wt))
        };
        let mut changed = false;
        for found in &existing {
            if !wanted.iter().any(|w| same(found, w)) {
                tx.batch_execute(&format!("DROP FUNCTION {}() CASCADE", ident(&found.0)))?;
                changed = true;
            }
        }
        for want in &wanted {
            if !existing.iter().any(|found| same(found, want)) {
                let (name, table, body) = want;
                tx.batch_execute(&format!(
                    "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $sv_capture${body}$sv_capture$;
                     DROP TRIGGER IF EXISTS {name} ON {table};
                     CREATE TRIGGER {name} AFTER INSERT OR UPDATE OR DELETE ON {table}
                         FOR EACH ROW EXECUTE FUNCTION {name}();",
                    name = ident(name),
                    table = ident(table),
                ))?;
                changed = true;
            }
        }
        tx.commit()?;
        Ok(changed)
    })?)
}

/// One slice's capture on MySQL: a row trigger per event, `_sv_capture_<slice>_<event>`,
/// as `(name, table, event, body)`. Each first updates `_sv_capture_lock` (its row lock
/// is held to commit, serialising capturing transactions as the PostgreSQL trigger's
/// advisory lock does).
fn mysql_capture_for(slice: &MirrorSlice) -> Vec<(String, String, &'static str, String)> {
    let key = ident(slice.key_column());
    let slice_name = slice.name.replace('\'', "''");
    let record = |row: &str| {
        format!(
            "INSERT INTO _sv_change_outbox (slice, row_key, at_ms) VALUES ('{slice_name}', {row}.{key}, \
             FLOOR(UNIX_TIMESTAMP(SYSDATE(3)) * 1000));"
        )
    };
    let lock = "UPDATE _sv_capture_lock SET n = n + 1 WHERE id = 1;";
    let body = |statements: String| format!("BEGIN {lock} {statements} END");
    let name = |event: &str| format!("{TRIGGER_PREFIX}{}_{event}", slice.name);
    vec![
        (
            name("insert"),
            slice.source_table.clone(),
            "INSERT",
            body(record("NEW")),
        ),
        (
            name("update"),
            slice.source_table.clone(),
            "UPDATE",
            body(format!(
                "{} IF NOT (OLD.{key} <=> NEW.{key}) THEN {} END IF;",
                record("NEW"),
                record("OLD")
            )),
        ),
        (
            name("delete"),
            slice.source_table.clone(),
            "DELETE",
            body(record("OLD")),
        ),
    ]
}

/// The named lock one capture install holds at a time (server-wide, so named after the
/// core database; hashed, as MySQL 8 limits lock names to 64 characters).
const MYSQL_INSTALL_LOCK: &str = "CONCAT('sv ', LEFT(SHA1(DATABASE()), 20), ' capture')";

/// How long an install waits for another one.
const MYSQL_INSTALL_WAIT_SECONDS: u64 = 30;

fn install_mysql(core: &MyCore, catalog: &MirrorCatalog) -> Result<bool, SyncError> {
    let wanted: Vec<(String, String, &'static str, String)> = catalog
        .slices()
        .iter()
        .flat_map(mysql_capture_for)
        .collect();
    core.with_conn(|conn| -> Result<bool, SyncError> {
        // Kernels starting together install one at a time; the later one then finds the
        // triggers in place. MySQL commits each trigger's DDL on its own: a run stopped
        // part-way is finished by the next.
        let got: Option<Option<i64>> = conn.query_first(format!(
            "SELECT GET_LOCK({MYSQL_INSTALL_LOCK}, {MYSQL_INSTALL_WAIT_SECONDS})"
        ))?;
        if got.flatten() != Some(1) {
            return Err(SyncError::MysqlMirror(sovereign_mysql::MyError::Busy {
                what: format!(
                    "installing change capture (another install held its lock for \
                     {MYSQL_INSTALL_WAIT_SECONDS} s)"
                ),
            }));
        }
        let result = (|| -> Result<bool, mysql::Error> {
            // MariaDB replaces a trigger in one statement, so a changed trigger never
            // leaves its table uncaptured; MySQL has no `CREATE OR REPLACE TRIGGER`:
            // there it is dropped and made again, and reconcile repairs a change that
            // lands in between.
            let version: Option<String> = conn.query_first("SELECT VERSION()")?;
            let replaces = version.is_some_and(|v| v.contains("MariaDB"));
            let existing: Vec<(String, String, String, String)> = conn.query(
                "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, EVENT_MANIPULATION, ACTION_STATEMENT
                 FROM information_schema.TRIGGERS
                 WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE '\\_sv\\_capture\\_%'",
            )?;
            let same = |(n, t, e, b): &(String, String, String, String),
                        (wn, wt, we, wb): &(String, String, &str, String)| {
                n == wn && t == wt && e == we && b.trim() == wb
            };
            let mut changed = false;
            for found in &existing {
                if !wanted.iter().any(|w| w.0 == found.0) {
                    conn.query_drop(format!("DROP TRIGGER IF EXISTS {}", ident(&found.0)))?;
                    changed = true;
                }
            }
            for want in &wanted {
                if !existing.iter().any(|found| same(found, want)) {
                    let (name, table, event, body) = want;
                    let create = if replaces {
                        "CREATE OR REPLACE TRIGGER"
                    } else {
                        conn.query_drop(format!("DROP TRIGGER IF EXISTS {}", ident(name)))?;
                        "CREATE TRIGGER"
                    };
                    conn.query_drop(format!(
                        "{create} {} AFTER {event} ON {} FOR EACH ROW {body}",
                        ident(name),
                        ident(table)
                    ))?;
                    changed = true;
                }
            }
            Ok(changed)
        })();
        conn.query_drop(format!("DO RELEASE_LOCK({MYSQL_INSTALL_LOCK})"))?;
        Ok(result?)
    })
}
