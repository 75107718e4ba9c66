//! The migration runner shared by the core scope and the plugin scopes.
//!
//! A [`MigrationSet`] is an ordered list of `NNNN_name.sql` files belonging to one scope
//! (`core`, `plugin:<id>`). Applied migrations are tracked in `_sv_migrations` inside the
//! database they were applied to, with a SHA-256 checksum of the file. Each migration
//! runs in its own transaction together with its tracking row: it lands whole or not
//! at all.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The `NNNN` prefix.
    pub version: u32,
    /// The part after `NNNN_`, without `.sql`.
    pub name: String,
    /// The SQL text.
    pub sql: String,
    /// Where it came from, for messages (a path or `embedded:`).
    pub origin: String,
}

impl Migration {
    /// Parses a file name of the form `NNNN_name.sql`.
    pub fn parse_file_name(file_name: &str) -> Option<(u32, String)> {
        let stem = file_name.strip_suffix(".sql")?;
        let (digits, name) = stem.split_once('_')?;
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
            return None;
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return None;
        }
        Some((digits.parse().ok()?, name.to_owned()))
    }

    /// `NNNN_name.sql`.
    pub fn file_name(&self) -> String {
        format!("{:04}_{}.sql", self.version, self.name)
    }

    /// Hex SHA-256 of the SQL text.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// Where a migration stands against one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    /// Applied, and the file still has the checksum it was applied with.
    Applied {
        /// When it was applied (UTC, ISO 8601).
        applied_at: String,
    },
    /// Not applied yet.
    Pending,
    /// Applied, but the file was edited afterwards.
    Changed {
        /// The checksum recorded when it was applied.
        recorded: String,
        /// The checksum of the file now.
        current: String,
    },
    /// Recorded as applied, but this build or directory has no such file.
    Unknown {
        /// The name recorded when it was applied.
        recorded_name: String,
    },
}

/// A migration's state, as reported by `sv migrate:status`.
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    /// The scope, e.g. `core` or `plugin:tasks`.
    pub scope: String,
    /// Version number.
    pub version: u32,
    /// `NNNN_name.sql`.
    pub file_name: String,
    /// Its state.
    pub state: MigrationState,
}

/// What can go wrong while reading or applying migrations.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A file in a migrations directory is not named `NNNN_name.sql`.
    #[error(
        "{path}: migration files must be named NNNN_name.sql (four digits, an underscore, \
         letters, digits, `_` or `-`)"
    )]
    BadFileName {
        /// The offending path.
        path: String,
    },
    /// Two files share a version number.
    #[error("scope {scope}: two migrations have version {version:04}: {first} and {second}")]
    DuplicateVersion {
        /// Scope.
        scope: String,
        /// The shared version.
        version: u32,
        /// One file.
        first: String,
        /// The other.
        second: String,
    },
    /// A migrations directory or file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A migration was edited after it was applied.
    #[error(
        "scope {scope}: migration {file} was changed after it was applied \
         (checksum when applied: {recorded}, checksum now: {current}); restore the original \
         file and put the change in a new migration"
    )]
    Changed {
        /// Scope.
        scope: String,
        /// File name.
        file: String,
        /// Checksum recorded at apply time.
        recorded: String,
        /// Checksum now.
        current: String,
    },
    /// The database has an applied migration this set does not know.
    #[error(
        "scope {scope}: the database has migration {version:04}_{name} applied, but no such \
         file exists here; this build or directory is older than the database"
    )]
    Unknown {
        /// Scope.
        scope: String,
        /// Version.
        version: u32,
        /// Recorded name.
        name: String,
    },
    /// A pending migration sorts before one that is already applied.
    #[error(
        "scope {scope}: migration {file} is pending but {applied} is already applied; \
         renumber it after the last applied migration"
    )]
    OutOfOrder {
        /// Scope.
        scope: String,
        /// The pending file.
        file: String,
        /// The newest applied file.
        applied: String,
    },
    /// A statement failed; the migration was rolled back.
    #[error(
        "scope {scope}: migration {file} failed at line {line} and was rolled back \
         (nothing of it was applied; later migrations were not run)\n  statement: {statement}\n  error: {message}"
    )]
    Failed {
        /// Scope.
        scope: String,
        /// File name.
        file: String,
        /// Line of the failing statement within the file.
        line: usize,
        /// The failing statement (abbreviated).
        statement: String,
        /// SQLite's message (or the fence's).
        message: String,
    },
    /// Bookkeeping (tracking table, transaction control) failed.
    #[error("scope {scope}: migration bookkeeping failed: {error}")]
    Sqlite {
        /// Scope.
        scope: String,
        /// SQLite's error (its message is part of this error's, once: not a source).
        error: rusqlite::Error,
    },
}

/// Runs one statement of a migration. The default runs it directly; the plugin store
/// passes one that runs it behind the plugin's fence.
pub type StatementRunner<'a> = dyn FnMut(&Connection, &str) -> Result<(), String> + 'a;

/// An ordered set of migrations for one scope.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    scope: String,
    migrations: Vec<Migration>,
}

const TRACKING_TABLE: &str = "CREATE TABLE IF NOT EXISTS _sv_migrations (
    scope      TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    name       TEXT    NOT NULL,
    checksum   TEXT    NOT NULL,
    applied_at TEXT    NOT NULL,
    PRIMARY KEY (scope, version)
) STRICT";

impl MigrationSet {
    /// Builds a set, sorting by version and refusing duplicates.
    pub fn new(scope: &str, mut migrations: Vec<Migration>) -> Result<Self, MigrationError> {
        migrations.sort_by_key(|m| m.version);
        for pair in migrations.windows(2) {
            if pair[0].version == pair[1].version {
                return Err(MigrationError::DuplicateVersion {
                    scope: scope.to_owned(),
                    version: pair[0].version,
                    first: pair[0].origin.clone(),
                    second: pair[1].origin.clone(),
                });
            }
        }
        Ok(Self {
            scope: scope.to_owned(),
            migrations,
        })
    }

    /// Builds a set from `(file name, sql)` pairs compiled into the binary.
    pub fn embedded(scope: &str, files: &[(&str, &str)]) -> Result<Self, MigrationError> {
        let migrations = files
            .iter()
            .map(|(file_name, sql)| {
                let (version, name) = Migration::parse_file_name(file_name).ok_or_else(|| {
                    MigrationError::BadFileName {
                        path: format!("embedded:{file_name}"),
                    }
                })?;
                Ok(Migration {
                    version,
                    name,
                    sql: (*sql).to_owned(),
                    origin: format!("embedded:{file_name}"),
                })
            })
            .collect::<Result<Vec<_>, MigrationError>>()?;
        Self::new(scope, migrations)
    }

    /// Reads every `*.sql` file of `dir`. A missing directory is an empty set; a `.sql`
    /// file with a bad name is an error (a typo must not silently skip a migration).
    pub fn from_dir(scope: &str, dir: &Path) -> Result<Self, MigrationError> {
        let read_err = |path: &Path, source| MigrationError::Read {
            path: path.display().to_string(),
            source,
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Self::new(scope, vec![]),
            Err(e) => return Err(read_err(dir, e)),
        };
        let mut migrations = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| read_err(dir, e))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("sql") {
                continue;
            }
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let (version, name) = Migration::parse_file_name(file_name).ok_or_else(|| {
                MigrationError::BadFileName {
                    path: path.display().to_string(),
                }
            })?;
            let sql = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
            migrations.push(Migration {
                version,
                name,
                sql,
                origin: path.display().to_string(),
            });
        }
        Self::new(scope, migrations)
    }

    /// The scope name.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The migrations, in order.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// The state of every migration of this set (and of applied ones it lacks) in `conn`.
    /// Reads only; a database without a tracking table has everything pending.
    pub fn status(&self, conn: &Connection) -> Result<Vec<MigrationStatus>, MigrationError> {
        Ok(self.status_of(&self.applied(conn)?))
    }

    /// The state of every migration of this set against `applied`, the rows of a
    /// database's tracking table (SQLite's or another backend's).
    pub fn status_of(&self, applied: &[AppliedRow]) -> Vec<MigrationStatus> {
        let mut out: Vec<MigrationStatus> = self
            .migrations
            .iter()
            .map(|m| {
                let state = match applied.iter().find(|a| a.version == m.version) {
                    None => MigrationState::Pending,
                    Some(a) if a.checksum == m.checksum() => MigrationState::Applied {
                        applied_at: a.applied_at.clone(),
                    },
                    Some(a) => MigrationState::Changed {
                        recorded: a.checksum.clone(),
                        current: m.checksum(),
                    },
                };
                MigrationStatus {
                    scope: self.scope.clone(),
                    version: m.version,
                    file_name: m.file_name(),
                    state,
                }
            })
            .collect();
        for a in applied {
            if !self.migrations.iter().any(|m| m.version == a.version) {
                out.push(MigrationStatus {
                    scope: self.scope.clone(),
                    version: a.version,
                    file_name: format!("{:04}_{}.sql", a.version, a.name),
                    state: MigrationState::Unknown {
                        recorded_name: a.name.clone(),
                    },
                });
            }
        }
        out.sort_by_key(|s| s.version);
        out
    }

    /// The migrations that [`deploy`](Self::deploy) would apply, after the same checks.
    pub fn plan(&self, conn: &Connection) -> Result<Vec<&Migration>, MigrationError> {
        self.plan_of(&self.applied(conn)?)
    }

    /// The migrations to apply against `applied` (a tracking table's rows), after the
    /// checks every deploy makes: none changed after it was applied, none unknown, none
    /// pending before an applied one.
    pub fn plan_of(&self, applied: &[AppliedRow]) -> Result<Vec<&Migration>, MigrationError> {
        let status = self.status_of(applied);
        self.check_consistency(&status)?;
        Ok(self
            .migrations
            .iter()
            .filter(|m| {
                status
                    .iter()
                    .any(|s| s.version == m.version && s.state == MigrationState::Pending)
            })
            .collect())
    }

    /// Applies every pending migration, each in its own transaction. Returns the file
    /// names applied. Stops at the first failure, which is rolled back completely.
    pub fn deploy(&self, conn: &Connection) -> Result<Vec<String>, MigrationError> {
        self.deploy_with(conn, &mut |conn, sql| {
            conn.execute_batch(sql).map_err(|e| e.to_string())
        })
    }

    /// Like [`deploy`](Self::deploy), running each migration statement through `runner`.
    pub fn deploy_with(
        &self,
        conn: &Connection,
        runner: &mut StatementRunner<'_>,
    ) -> Result<Vec<String>, MigrationError> {
        self.deploy_in(conn, runner, Atomicity::EachMigration)
    }

    /// Applies every pending migration in one transaction, each statement through
    /// `runner`: all of them or, after a failure, none (an install must leave nothing
    /// behind when its third migration fails).
    pub fn deploy_all_or_nothing_with(
        &self,
        conn: &Connection,
        runner: &mut StatementRunner<'_>,
    ) -> Result<Vec<String>, MigrationError> {
        self.deploy_in(conn, runner, Atomicity::AllMigrations)
    }

    fn deploy_in(
        &self,
        conn: &Connection,
        runner: &mut StatementRunner<'_>,
        atomicity: Atomicity,
    ) -> Result<Vec<String>, MigrationError> {
        let sqlite = |error| MigrationError::Sqlite {
            scope: self.scope.clone(),
            error,
        };
        conn.execute_batch(TRACKING_TABLE).map_err(sqlite)?;
        let pending = self.plan(conn)?;
        let outer = match atomicity {
            Atomicity::AllMigrations if !pending.is_empty() => Some(
                rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
                    .map_err(sqlite)?,
            ),
            _ => None,
        };
        let mut applied = Vec::new();
        for migration in pending {
            // Inside the outer transaction each migration is a savepoint of it.
            let tx = match outer {
                Some(_) => None,
                None => Some(
                    rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
                        .map_err(sqlite)?,
                ),
            };
            // Another deployer may have applied it while we waited for the write lock.
            let already: Option<String> = conn
                .query_row(
                    "SELECT checksum FROM _sv_migrations WHERE scope = ?1 AND version = ?2",
                    rusqlite::params![self.scope, migration.version],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sqlite)?;
            if already.is_some() {
                continue;
            }
            for (line, statement) in split_statements(&migration.sql) {
                if let Err(message) = runner(conn, statement) {
                    // Dropping the transaction rolls back every statement of this
                    // migration (or, all-or-nothing, of every migration of this run).
                    return Err(MigrationError::Failed {
                        scope: self.scope.clone(),
                        file: migration.file_name(),
                        line,
                        statement: abbreviate(statement),
                        message,
                    });
                }
            }
            conn.execute(
                "INSERT INTO _sv_migrations (scope, version, name, checksum, applied_at)
                 VALUES (?1, ?2, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                rusqlite::params![
                    self.scope,
                    migration.version,
                    migration.name,
                    migration.checksum()
                ],
            )
            .map_err(sqlite)?;
            if let Some(tx) = tx {
                tx.commit().map_err(sqlite)?;
            }
            tracing::debug!(scope = %self.scope, file = %migration.file_name(), "migration applied");
            applied.push(migration.file_name());
        }
        if let Some(outer) = outer {
            outer.commit().map_err(sqlite)?;
        }
        Ok(applied)
    }

    fn check_consistency(&self, status: &[MigrationStatus]) -> Result<(), MigrationError> {
        let mut newest_applied: Option<&MigrationStatus> = None;
        for s in status {
            match &s.state {
                MigrationState::Changed { recorded, current } => {
                    return Err(MigrationError::Changed {
                        scope: self.scope.clone(),
                        file: s.file_name.clone(),
                        recorded: recorded.clone(),
                        current: current.clone(),
                    });
                }
                MigrationState::Unknown { recorded_name } => {
                    return Err(MigrationError::Unknown {
                        scope: self.scope.clone(),
                        version: s.version,
                        name: recorded_name.clone(),
                    });
                }
                MigrationState::Applied { .. } => newest_applied = Some(s),
                MigrationState::Pending => {}
            }
        }
        if let Some(newest) = newest_applied
            && let Some(early) = status
                .iter()
                .find(|s| s.state == MigrationState::Pending && s.version < newest.version)
        {
            return Err(MigrationError::OutOfOrder {
                scope: self.scope.clone(),
                file: early.file_name.clone(),
                applied: newest.file_name.clone(),
            });
        }
        Ok(())
    }

    fn applied(&self, conn: &Connection) -> Result<Vec<AppliedRow>, MigrationError> {
        let sqlite = |error| MigrationError::Sqlite {
            scope: self.scope.clone(),
            error,
        };
        let has_table: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = '_sv_migrations'",
                [],
                |row| row.get(0),
            )
            .map_err(sqlite)?;
        if !has_table {
            return Ok(vec![]);
        }
        let mut stmt = conn
            .prepare(
                "SELECT version, name, checksum, applied_at FROM _sv_migrations
                 WHERE scope = ?1 ORDER BY version",
            )
            .map_err(sqlite)?;
        let rows = stmt
            .query_map([&self.scope], |row| {
                Ok(AppliedRow {
                    version: row.get(0)?,
                    name: row.get(1)?,
                    checksum: row.get(2)?,
                    applied_at: row.get(3)?,
                })
            })
            .map_err(sqlite)?;
        rows.collect::<Result<_, _>>().map_err(sqlite)
    }
}

/// A migration as a database's tracking table records it (whatever the database).
#[derive(Debug, Clone)]
pub struct AppliedRow {
    /// Its version.
    pub version: u32,
    /// Its name.
    pub name: String,
    /// The checksum of its text when it was applied.
    pub checksum: String,
    /// When (UTC, ISO 8601).
    pub applied_at: String,
}

/// Splits SQL text into complete statements (as SQLite's own shell does, with
/// `sqlite3_complete`, so `;` inside strings, comments and trigger bodies is handled).
/// Returns each statement with the line it starts on. Text with no statement in it
/// (comments, whitespace) is dropped.
pub fn split_statements(sql: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (index, _) in sql.match_indices(';') {
        let candidate = &sql[start..=index];
        if is_complete(candidate) {
            push_statement(&mut out, sql, start, candidate);
            start = index + 1;
        }
    }
    let rest = &sql[start..];
    if has_code(rest) {
        push_statement(&mut out, sql, start, rest);
    }
    out
}

fn push_statement<'a>(out: &mut Vec<(usize, &'a str)>, sql: &'a str, start: usize, text: &'a str) {
    let code = skip_leading_comments(text);
    if code.is_empty() || code == ";" {
        return;
    }
    let offset = start + (text.len() - code.len());
    let line = 1 + sql[..offset].matches('\n').count();
    out.push((line, code.trim_end()));
}

/// Whether `text` holds anything but whitespace and comments.
fn has_code(text: &str) -> bool {
    !skip_leading_comments(text).is_empty()
}

/// `text` from its first character that is neither white space nor in a comment.
fn skip_leading_comments(text: &str) -> &str {
    let mut rest = text.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else {
            return rest;
        }
    }
}

fn is_complete(text: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(text) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // sqlite3_complete only reads it.
    unsafe { rusqlite::ffi::sqlite3_complete(c.as_ptr()) != 0 }
}

fn abbreviate(statement: &str) -> String {
    let one_line = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        let cut: String = one_line.chars().take(200).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// Whether a deploy commits after each migration or once at the end.
#[derive(Clone, Copy)]
enum Atomicity {
    EachMigration,
    AllMigrations,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[(&str, &str)]) -> MigrationSet {
        MigrationSet::embedded("test", files).unwrap()
    }

    fn table_exists(conn: &Connection, name: &str) -> bool {
        conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn splits_statements_like_the_sqlite_shell() {
        let sql = "-- header\nCREATE TABLE a (x TEXT DEFAULT ';');\n\n/* c; */ CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  SELECT 1; SELECT 2;\nEND;\nINSERT INTO a VALUES ('x')\n-- trailing\n";
        let parts = split_statements(sql);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts[0], (2, "CREATE TABLE a (x TEXT DEFAULT ';');"));
        assert!(parts[1].1.ends_with("END;"));
        assert_eq!(parts[1].0, 4);
        assert_eq!(parts[2].0, 7);
        assert!(split_statements("-- only a comment\n/* and another */\n").is_empty());
    }

    #[test]
    fn applies_in_order_and_tracks_checksums() {
        let conn = Connection::open_in_memory().unwrap();
        let s = set(&[
            ("0002_b.sql", "CREATE TABLE b (x);"),
            ("0001_a.sql", "CREATE TABLE a (x);"),
        ]);
        assert_eq!(s.deploy(&conn).unwrap(), vec!["0001_a.sql", "0002_b.sql"]);
        assert!(s.deploy(&conn).unwrap().is_empty());
        assert!(
            s.status(&conn)
                .unwrap()
                .iter()
                .all(|m| matches!(m.state, MigrationState::Applied { .. }))
        );
    }

    #[test]
    fn a_failing_migration_leaves_no_trace_and_stops_later_ones() {
        let conn = Connection::open_in_memory().unwrap();
        let s = set(&[
            ("0001_ok.sql", "CREATE TABLE ok (x);"),
            (
                "0002_bad.sql",
                "CREATE TABLE half (x);\nINSERT INTO half VALUES (1);\nINSERT INTO nowhere VALUES (1);",
            ),
            ("0003_later.sql", "CREATE TABLE later (x);"),
        ]);
        let err = s.deploy(&conn).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("0002_bad.sql"), "{text}");
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("INSERT INTO nowhere VALUES (1);"), "{text}");
        assert!(text.contains("no such table: nowhere"), "{text}");
        assert!(table_exists(&conn, "ok"));
        assert!(!table_exists(&conn, "half"));
        assert!(!table_exists(&conn, "later"));
        let states: Vec<_> = s
            .status(&conn)
            .unwrap()
            .into_iter()
            .map(|m| m.state)
            .collect();
        assert!(matches!(states[0], MigrationState::Applied { .. }));
        assert_eq!(states[1], MigrationState::Pending);
        assert_eq!(states[2], MigrationState::Pending);
    }

    #[test]
    fn an_edited_migration_is_refused_with_both_checksums() {
        let conn = Connection::open_in_memory().unwrap();
        let original = set(&[("0001_a.sql", "CREATE TABLE a (x);")]);
        original.deploy(&conn).unwrap();
        let edited = set(&[
            ("0001_a.sql", "CREATE TABLE a (x, y);"),
            ("0002_b.sql", "CREATE TABLE b (x);"),
        ]);
        let err = edited.deploy(&conn).unwrap_err().to_string();
        assert!(err.contains(&original.migrations()[0].checksum()), "{err}");
        assert!(err.contains(&edited.migrations()[0].checksum()), "{err}");
        assert!(!table_exists(&conn, "b"), "nothing runs after a refusal");
    }

    #[test]
    fn out_of_order_and_unknown_migrations_are_refused() {
        let conn = Connection::open_in_memory().unwrap();
        set(&[("0002_b.sql", "CREATE TABLE b (x);")])
            .deploy(&conn)
            .unwrap();
        let err = set(&[
            ("0001_a.sql", "CREATE TABLE a (x);"),
            ("0002_b.sql", "CREATE TABLE b (x);"),
        ])
        .deploy(&conn)
        .unwrap_err();
        assert!(matches!(err, MigrationError::OutOfOrder { .. }), "{err}");
        let err = set(&[]).deploy(&conn).unwrap_err();
        assert!(matches!(err, MigrationError::Unknown { .. }), "{err}");
    }

    #[test]
    fn bad_file_names_are_refused() {
        for name in [
            "1_a.sql",
            "0001.sql",
            "0001_.sql",
            "abcd_x.sql",
            "0001_a b.sql",
        ] {
            assert!(Migration::parse_file_name(name).is_none(), "{name}");
        }
        assert_eq!(
            Migration::parse_file_name("0012_add-index_2.sql"),
            Some((12, "add-index_2".into()))
        );
    }
}
