//! The scoped migration runner on MySQL/MariaDB for trusted migration sets (the core's
//! `migrations/mysql/`): the same sets, checks and tracking as on SQLite and PostgreSQL
//! (`sovereign_db::MigrationSet`: checksums, changed and unknown migrations refused),
//! with a named lock per scope so that two deployers never apply one migration twice.
//!
//! MySQL commits every DDL statement, so a migration cannot be rolled back as a whole:
//! one that fails part-way keeps its statements before the failing one, and the error
//! says which statement failed and how many ran. The tracking row is written only
//! after the last statement, so the migration stays pending.

use mysql::prelude::Queryable;
use sovereign_db::{AppliedRow, MigrationSet, MigrationStatus};

use crate::MyError;

/// The tracking table, the same in the core's database and in plugins' databases.
pub(crate) const TRACKING_TABLE: &str = "CREATE TABLE IF NOT EXISTS _sv_migrations (
    scope VARCHAR(100) NOT NULL, version INT NOT NULL,
    name VARCHAR(200) NOT NULL, checksum CHAR(64) NOT NULL,
    applied_at VARCHAR(30) NOT NULL,
    PRIMARY KEY (scope, version)) ENGINE = InnoDB";

/// Records a migration as applied (scope, version, name, checksum).
pub(crate) const RECORD: &str = "INSERT INTO _sv_migrations (scope, version, name, checksum, applied_at)
    VALUES (?, ?, ?, ?, CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z'))";

/// How long a deployer waits for another one of the same scope, in seconds.
const LOCK_WAIT_SECONDS: u32 = 60;

/// The named lock of one scope's deployer (its parameter: the scope), server-wide so made
/// of the database's name and the scope (hashed: MySQL 8 limits lock names to 64
/// characters, and a plugin database's name and scope can be longer together).
const LOCK_NAME: &str = "CONCAT('sv ', LEFT(SHA1(CONCAT(DATABASE(), '/migrations/', ?)), 40))";

fn bookkeeping(statement: &str) -> impl FnOnce(mysql::Error) -> MyError + '_ {
    move |source| MyError::Statement {
        statement: statement.to_owned(),
        source,
    }
}

/// The tracking table's rows of `scope` (the table is made if missing).
pub(crate) fn applied(conn: &mut impl Queryable, scope: &str) -> Result<Vec<AppliedRow>, MyError> {
    conn.query_drop(TRACKING_TABLE)
        .map_err(bookkeeping(TRACKING_TABLE))?;
    let read = "SELECT version, name, checksum, applied_at FROM _sv_migrations
                WHERE scope = ? ORDER BY version";
    conn.exec_map(
        read,
        (scope,),
        |(version, name, checksum, applied_at): (u32, String, String, String)| AppliedRow {
            version,
            name,
            checksum,
            applied_at,
        },
    )
    .map_err(bookkeeping(read))
}

/// Every migration of `set` and where it stands in the database `conn` uses.
pub fn status(conn: &mut mysql::Conn, set: &MigrationSet) -> Result<Vec<MigrationStatus>, MyError> {
    Ok(set.status_of(&applied(conn, set.scope())?))
}

/// The files `deploy` would apply, in order; refused, as `deploy` would be, when an
/// applied migration changed or is unknown to `set`.
pub fn plan(conn: &mut mysql::Conn, set: &MigrationSet) -> Result<Vec<String>, MyError> {
    Ok(set
        .plan_of(&applied(conn, set.scope())?)?
        .iter()
        .map(|m| m.file_name())
        .collect())
}

/// Applies every pending migration of `set`, statement by statement, each recorded after
/// its last statement; returns the files applied. One deployer per scope and database
/// at a time (a named lock).
pub fn deploy(conn: &mut mysql::Conn, set: &MigrationSet) -> Result<Vec<String>, MyError> {
    let lock = format!("SELECT GET_LOCK({LOCK_NAME}, {LOCK_WAIT_SECONDS})");
    let got: Option<Option<i64>> = conn
        .exec_first(&lock, (set.scope(),))
        .map_err(bookkeeping(&lock))?;
    if got.flatten() != Some(1) {
        return Err(MyError::Busy {
            what: format!(
                "the {} migrations (another deployer held their lock for {LOCK_WAIT_SECONDS} s)",
                set.scope()
            ),
        });
    }
    let result = deploy_locked(conn, set);
    let unlock = format!("DO RELEASE_LOCK({LOCK_NAME})");
    if let Err(e) = conn.exec_drop(&unlock, (set.scope(),)) {
        tracing::warn!(error = %e, "releasing the migration lock failed (it ends with the session)");
    }
    result
}

fn deploy_locked(conn: &mut mysql::Conn, set: &MigrationSet) -> Result<Vec<String>, MyError> {
    let applied = applied(conn, set.scope())?;
    let pending: Vec<sovereign_db::Migration> =
        set.plan_of(&applied)?.into_iter().cloned().collect();
    let mut done = Vec::new();
    for migration in pending {
        let file = migration.file_name();
        let statements =
            crate::sql_text::split_script(&migration.sql).map_err(|e| MyError::ScriptFailed {
                file: file.clone(),
                ran: 0,
                statement: String::new(),
                problem: e.to_string(),
            })?;
        for (ran, statement) in statements.iter().enumerate() {
            conn.query_drop(statement)
                .map_err(|source| MyError::ScriptFailed {
                    file: file.clone(),
                    ran,
                    statement: statement.lines().next().unwrap_or_default().to_owned(),
                    problem: source.to_string(),
                })?;
        }
        conn.exec_drop(
            RECORD,
            (
                set.scope(),
                migration.version,
                &migration.name,
                migration.checksum(),
            ),
        )
        .map_err(bookkeeping(RECORD))?;
        done.push(file);
    }
    Ok(done)
}
