//! The scoped migration runner on PostgreSQL: the same sets, checks and tracking as on
//! SQLite (`sovereign_db::MigrationSet`: checksums, changed and unknown migrations
//! refused, one transaction per migration), with PostgreSQL's transactional DDL and an
//! advisory lock per scope so that two deployers never apply one migration twice.

use postgres::{Client, GenericClient};
use sovereign_db::{AppliedRow, MigrationError, MigrationSet, MigrationStatus};

use crate::PgError;

const TRACKING_TABLE: &str = "CREATE TABLE IF NOT EXISTS _sv_migrations (
    scope      text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, version)
)";

/// The plugin database's own bookkeeping (the event outbox, `sv_lastval`, the mirror's
/// watermark and slice specs), scope
/// `system`, applied by its owner (`svc_plugins`) before the role plan grants on it.
pub fn plugin_store_system() -> MigrationSet {
    MigrationSet::embedded(
        "system",
        &[
            (
                "0001_event_outbox.sql",
                include_str!("../migrations/plugins/0001_event_outbox.sql"),
            ),
            (
                "0002_mirror_state.sql",
                include_str!("../migrations/plugins/0002_mirror_state.sql"),
            ),
        ],
    )
    .expect("embedded PostgreSQL system migrations are well-formed")
}

fn bookkeeping(statement: &str) -> impl FnOnce(postgres::Error) -> PgError + '_ {
    move |source| PgError::Statement {
        statement: statement.to_owned(),
        source,
    }
}

/// The tracking table's rows of `scope`.
fn rows_of(client: &mut impl GenericClient, scope: &str) -> Result<Vec<AppliedRow>, PgError> {
    let query = "SELECT version, name, checksum,
                        to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')
                 FROM _sv_migrations WHERE scope = $1 ORDER BY version";
    Ok(client
        .query(query, &[&scope])
        .map_err(bookkeeping(query))?
        .into_iter()
        .map(|row| AppliedRow {
            version: row.get::<_, i32>(0) as u32,
            name: row.get(1),
            checksum: row.get(2),
            applied_at: row.get(3),
        })
        .collect())
}

/// The tracking table's rows of `scope` (none if there is no table yet).
fn applied(client: &mut Client, scope: &str) -> Result<Vec<AppliedRow>, PgError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('_sv_migrations') IS NOT NULL", &[])
        .map_err(bookkeeping("SELECT to_regclass('_sv_migrations')"))?
        .get(0);
    if !exists {
        return Ok(vec![]);
    }
    rows_of(client, scope)
}

/// Every migration of `set` and where it stands in the database `client` is connected to.
pub fn status(client: &mut Client, set: &MigrationSet) -> Result<Vec<MigrationStatus>, PgError> {
    Ok(set.status_of(&applied(client, set.scope())?))
}

/// The files `deploy` would apply, in order; refused, as `deploy` would be, when an
/// applied migration changed or is unknown to `set`.
pub fn plan(client: &mut Client, set: &MigrationSet) -> Result<Vec<String>, PgError> {
    Ok(set
        .plan_of(&applied(client, set.scope())?)?
        .iter()
        .map(|m| m.file_name())
        .collect())
}

/// The 1-based line of character `position` (1-based) of `text`.
fn line_of(text: &str, position: usize) -> usize {
    text.chars()
        .take(position.saturating_sub(1))
        .filter(|c| *c == '\n')
        .count()
        + 1
}

/// Applies every pending migration of `set` in one transaction: all of them or, after a
/// failure, none (what an upgrade needs). Returns the files applied.
pub fn deploy_all_or_nothing(
    client: &mut Client,
    set: &MigrationSet,
) -> Result<Vec<String>, PgError> {
    ensure_tracking_table(client)?;
    let scope = set.scope();
    let mut tx = client.transaction().map_err(bookkeeping("BEGIN"))?;
    lock_scope(&mut tx, scope)?;
    let applied = rows_of(&mut tx, scope)?;
    let pending: Vec<_> = set.plan_of(&applied)?.into_iter().cloned().collect();
    let mut done = Vec::new();
    for migration in &pending {
        apply_one(&mut tx, scope, migration)?;
        done.push(migration.file_name());
    }
    // Dropping the transaction on an error above rolls every migration back.
    tx.commit().map_err(bookkeeping("COMMIT"))?;
    Ok(done)
}

/// Applies every pending migration of `set` inside the caller's transaction `tx`
/// (creating the tracking table there if missing): nothing is applied until the caller
/// commits, so a larger job (moving an install) stays one unit. Returns the files applied.
pub fn deploy_in_transaction(
    tx: &mut postgres::Transaction<'_>,
    set: &MigrationSet,
) -> Result<Vec<String>, PgError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('sv-migrations', 0))",
        &[],
    )
    .map_err(bookkeeping("SELECT pg_advisory_xact_lock(...)"))?;
    tx.batch_execute(TRACKING_TABLE)
        .map_err(bookkeeping("CREATE TABLE _sv_migrations"))?;
    let scope = set.scope();
    lock_scope(tx, scope)?;
    let applied = rows_of(tx, scope)?;
    let pending: Vec<_> = set.plan_of(&applied)?.into_iter().cloned().collect();
    let mut done = Vec::new();
    for migration in &pending {
        apply_one(tx, scope, migration)?;
        done.push(migration.file_name());
    }
    Ok(done)
}

/// One deployer of `scope` at a time; the lock ends with the transaction.
fn lock_scope(tx: &mut postgres::Transaction<'_>, scope: &str) -> Result<(), PgError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('sv-migrations:' || $1, 0))",
        &[&scope],
    )
    .map_err(bookkeeping("SELECT pg_advisory_xact_lock(...)"))?;
    Ok(())
}

/// Creates the tracking table if missing (deployers take turns: `CREATE TABLE IF NOT
/// EXISTS` is not safe against a concurrent one).
fn ensure_tracking_table(client: &mut Client) -> Result<(), PgError> {
    let mut tx = client.transaction().map_err(bookkeeping("BEGIN"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('sv-migrations', 0))",
        &[],
    )
    .map_err(bookkeeping("SELECT pg_advisory_xact_lock(...)"))?;
    tx.batch_execute(TRACKING_TABLE)
        .map_err(bookkeeping("CREATE TABLE _sv_migrations"))?;
    tx.commit().map_err(bookkeeping("COMMIT"))
}

/// Runs one migration and records it, inside `tx`.
fn apply_one(
    tx: &mut postgres::Transaction<'_>,
    scope: &str,
    migration: &sovereign_db::Migration,
) -> Result<(), PgError> {
    if let Err(e) = tx.batch_execute(&migration.sql) {
        let (line, message) = match e.as_db_error() {
            Some(db) => (
                match db.position() {
                    Some(postgres::error::ErrorPosition::Original(at)) => {
                        line_of(&migration.sql, *at as usize)
                    }
                    _ => 1,
                },
                db.message().to_owned(),
            ),
            None => (1, e.to_string()),
        };
        return Err(MigrationError::Failed {
            scope: scope.to_owned(),
            file: migration.file_name(),
            line,
            statement: migration
                .sql
                .lines()
                .nth(line - 1)
                .unwrap_or_default()
                .trim()
                .chars()
                .take(200)
                .collect(),
            message,
        }
        .into());
    }
    tx.execute(
        "INSERT INTO _sv_migrations (scope, version, name, checksum) VALUES ($1, $2, $3, $4)",
        &[
            &scope,
            &(migration.version as i32),
            &migration.name,
            &migration.checksum(),
        ],
    )
    .map_err(bookkeeping("INSERT INTO _sv_migrations"))?;
    Ok(())
}

/// Applies every pending migration of `set`, each in its own transaction (its DDL
/// included), and returns the files applied. Stops at the first failure, which leaves
/// nothing of that migration behind.
pub fn deploy(client: &mut Client, set: &MigrationSet) -> Result<Vec<String>, PgError> {
    ensure_tracking_table(client)?;
    let scope = set.scope();
    let mut done = Vec::new();
    loop {
        let mut tx = client.transaction().map_err(bookkeeping("BEGIN"))?;
        // One deployer of a scope at a time; the lock ends with the transaction.
        lock_scope(&mut tx, scope)?;
        let applied = rows_of(&mut tx, scope)?;
        let Some(migration) = set.plan_of(&applied)?.into_iter().next().cloned() else {
            return Ok(done);
        };
        // Dropping the transaction on an error rolls every statement of it back.
        apply_one(&mut tx, scope, &migration)?;
        tx.commit().map_err(bookkeeping("COMMIT"))?;
        tracing::debug!(scope, file = %migration.file_name(), "migration applied (PostgreSQL)");
        done.push(migration.file_name());
    }
}
