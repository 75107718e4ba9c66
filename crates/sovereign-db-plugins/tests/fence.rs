//! The hostile-plugin suite: every way out of a plugin's namespace we know of, each
//! asserting a typed denial; and the positive side, everything a normal app does.

use sovereign_db_plugins::mirror::MirrorCatalog;
use sovereign_db_plugins::{
    DatabaseMode, FenceError, Limits, Outcome, PluginDb, PluginDbConfig, SqlValue, StoreLocation,
    TrustedPluginStore,
};

struct Fixture {
    _dir: tempfile::TempDir,
    location: StoreLocation,
}

fn grants() -> Vec<(String, String)> {
    ["id", "display_name", "avatar_url"]
        .iter()
        .map(|c| ("users".to_owned(), c.to_string()))
        .collect()
}

impl Fixture {
    /// A shared store holding the users mirror, `notes` data and a tasks table.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let location = StoreLocation {
            shared_store: dir.path().join("plugins.db"),
            isolated_dir: dir.path().join("plugins"),
            mirror_file: None,
        };
        let trusted = TrustedPluginStore::open_shared(&location.shared_store).unwrap();
        let users = MirrorCatalog::default().slice("users").unwrap().clone();
        trusted.ensure_mirror(&users).unwrap();
        trusted
            .connection()
            .execute_batch(
                "INSERT INTO core__users VALUES (1, 1, 'Ada', NULL), (2, 1, 'Bob', 'https://x/b.png');
                 CREATE TABLE _sv_outbox (id INTEGER PRIMARY KEY, payload TEXT);",
            )
            .unwrap();
        let fixture = Fixture {
            _dir: dir,
            location,
        };
        let notes = fixture.plugin("notes", DatabaseMode::Shared, vec![], Limits::default());
        for sql in [
            "CREATE TABLE notes__secret (id INTEGER PRIMARY KEY, body TEXT)",
            "INSERT INTO notes__secret (body) VALUES ('the secret')",
        ] {
            notes.execute(sql, &[]).unwrap();
        }
        let tasks = fixture.tasks();
        tasks
            .execute(
                "CREATE TABLE tasks__items (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, assignee INTEGER)",
                &[],
            )
            .unwrap();
        fixture
    }

    fn plugin(
        &self,
        id: &str,
        mode: DatabaseMode,
        grants: Vec<(String, String)>,
        limits: Limits,
    ) -> PluginDb {
        PluginDb::open(
            &self.location,
            PluginDbConfig {
                plugin_id: id.into(),
                mode,
                grants,
                limits,
            },
        )
        .unwrap()
    }

    fn tasks(&self) -> PluginDb {
        let limits = Limits {
            statement_ms: 300,
            ..Limits::default()
        };
        self.plugin("tasks", DatabaseMode::Shared, grants(), limits)
    }
}

fn expect_denied(db: &PluginDb, sql: &str) -> (String, String) {
    match db.execute(sql, &[]) {
        Err(FenceError::Denied {
            plugin,
            action,
            object,
        }) => {
            assert_eq!(plugin, db.plugin_id());
            (action, object)
        }
        other => panic!("expected a denial for {sql:?}, got {other:?}"),
    }
}

/// Statements that must be denied, with a word the denied object must contain.
const DENIED: &[(&str, &str)] = &[
    // Another plugin's tables, every spelling.
    ("SELECT * FROM notes__secret", "notes__secret"),
    ("SELECT * FROM main.notes__secret", "notes__secret"),
    ("SELECT * FROM \"notes__secret\"", "notes__secret"),
    ("SELECT * FROM [notes__secret]", "notes__secret"),
    ("SELECT * FROM `notes__secret`", "notes__secret"),
    ("SELECT * FROM NOTES__Secret", "secret"),
    ("select body from Main.\"Notes__SECRET\"", "ecret"),
    (
        "SELECT t.id FROM tasks__items t JOIN notes__secret n ON n.id = t.id",
        "notes__secret",
    ),
    ("SELECT * FROM tasks__items, notes__secret", "notes__secret"),
    (
        "SELECT (SELECT body FROM notes__secret LIMIT 1)",
        "notes__secret",
    ),
    (
        "SELECT * FROM tasks__items WHERE id IN (SELECT id FROM notes__secret)",
        "notes__secret",
    ),
    (
        "SELECT * FROM tasks__items WHERE EXISTS (SELECT 1 FROM notes__secret)",
        "notes__secret",
    ),
    (
        "WITH x AS (SELECT * FROM notes__secret) SELECT * FROM x",
        "notes__secret",
    ),
    (
        "WITH RECURSIVE x(n) AS (SELECT id FROM notes__secret UNION SELECT n FROM x) SELECT * FROM x",
        "notes__secret",
    ),
    (
        "SELECT title FROM tasks__items UNION SELECT body FROM notes__secret",
        "notes__secret",
    ),
    (
        "INSERT INTO tasks__items (title) SELECT body FROM notes__secret",
        "notes__secret",
    ),
    (
        "CREATE TABLE tasks__copy AS SELECT * FROM notes__secret",
        "notes__secret",
    ),
    ("EXPLAIN SELECT * FROM notes__secret", "notes__secret"),
    (
        "SELECT * FROM notes__does_not_exist",
        "notes__does_not_exist",
    ),
    ("SELECT nope FROM notes__secret", "notes__secret"),
    (
        "INSERT INTO notes__secret (body) VALUES ('x')",
        "notes__secret",
    ),
    ("UPDATE notes__secret SET body = 'x'", "notes__secret"),
    ("DELETE FROM notes__secret", "notes__secret"),
    (
        "REPLACE INTO notes__secret (id, body) VALUES (1, 'x')",
        "notes__secret",
    ),
    ("DROP TABLE notes__secret", "notes__secret"),
    ("ALTER TABLE notes__secret ADD COLUMN x", "notes__secret"),
    (
        "ALTER TABLE notes__secret RENAME TO tasks__mine",
        "notes__secret",
    ),
    (
        "CREATE INDEX tasks__idx ON notes__secret (body)",
        "notes__secret",
    ),
    (
        "CREATE INDEX notes__idx ON tasks__items (title)",
        "notes__idx",
    ),
    // Planting objects in someone else's namespace or outside any.
    ("CREATE TABLE notes__planted (x)", "notes__planted"),
    ("CREATE TABLE plain (x)", "plain"),
    ("CREATE TABLE core__users2 (x)", "core__users2"),
    ("CREATE TABLE _sv_evil (x)", "_sv_evil"),
    (
        "ALTER TABLE tasks__items RENAME TO notes__stolen",
        "notes__stolen",
    ),
    ("CREATE VIEW notes__v AS SELECT 1", "notes__v"),
    // Views and triggers that reach out.
    (
        "CREATE VIEW tasks__v AS SELECT * FROM notes__secret",
        "notes__secret",
    ),
    (
        "CREATE VIEW tasks__v2 AS SELECT tenant_id FROM core__users",
        "core__users.tenant_id",
    ),
    (
        "CREATE TRIGGER tasks__t AFTER INSERT ON notes__secret BEGIN SELECT 1; END",
        "notes__secret",
    ),
    (
        "CREATE TRIGGER notes__t AFTER INSERT ON tasks__items BEGIN SELECT 1; END",
        "notes__t",
    ),
    (
        "CREATE TRIGGER tasks__m AFTER INSERT ON core__users BEGIN SELECT 1; END",
        "core__users",
    ),
    // Temporary schema.
    ("CREATE TEMP TABLE tasks__tmp (x)", "temporary"),
    ("CREATE TEMP VIEW tasks__tv AS SELECT 1", "temporary"),
    // ATTACH and DETACH in every form.
    ("ATTACH DATABASE 'other.db' AS other", "database"),
    ("ATTACH 'file:' || 'core.db' AS other", "database"),
    ("ATTACH DATABASE ':memory:' AS mem", "database"),
    ("ATTACH (SELECT 'x.db') AS other", "database"),
    ("DETACH DATABASE main", "main"),
    ("DETACH temp", "temp"),
    // PRAGMAs and pragma functions.
    ("PRAGMA table_info(notes__secret)", "notes__secret"),
    ("PRAGMA table_info('core__users')", "table_info"),
    ("PRAGMA writable_schema = 1", "writable_schema"),
    ("PRAGMA journal_mode = DELETE", "journal_mode"),
    ("PRAGMA database_list", "database_list"),
    ("PRAGMA table_list", "table_list"),
    ("PRAGMA integrity_check", "integrity_check"),
    ("PRAGMA foreign_keys = OFF", "foreign_keys"),
    ("PRAGMA max_page_count = 1000000", "max_page_count"),
    ("PRAGMA main.index_list(notes__secret)", "notes__secret"),
    ("PRAGMA trusted_schema = ON", "trusted_schema"),
    (
        "SELECT * FROM pragma_table_info('notes__secret')",
        "pragma_table_info",
    ),
    ("SELECT * FROM pragma_database_list", "pragma_database_list"),
    ("SELECT name FROM pragma_table_list()", "pragma_table_list"),
    (
        "SELECT * FROM pragma_table_info('tasks__items')",
        "pragma_table_info",
    ),
    // Schema tables, dbstat, bookkeeping.
    ("SELECT * FROM sqlite_schema", "sqlite_"),
    ("SELECT * FROM sqlite_master", "sqlite_"),
    (
        "SELECT name FROM main.sqlite_master WHERE type = 'table'",
        "sqlite_",
    ),
    ("SELECT * FROM sqlite_temp_schema", "sqlite_"),
    ("SELECT * FROM sqlite_sequence", "sqlite_sequence"),
    ("SELECT * FROM sqlite_stat1", "sqlite_stat1"),
    ("SELECT * FROM dbstat", "dbstat"),
    ("SELECT name, pgsize FROM dbstat('main')", "dbstat"),
    ("SELECT * FROM _sv_migrations", "_sv_migrations"),
    ("SELECT * FROM _sv_store", "_sv_store"),
    ("UPDATE _sv_store SET value = 'core'", "_sv_store"),
    ("DELETE FROM _sv_outbox", "_sv_outbox"),
    (
        "INSERT INTO _sv_outbox (payload) VALUES ('forged')",
        "_sv_outbox",
    ),
    // Mirror writes and ungranted columns.
    (
        "INSERT INTO core__users (id, display_name) VALUES (99, 'x')",
        "core__users",
    ),
    ("UPDATE core__users SET display_name = 'x'", "core__users"),
    ("DELETE FROM core__users", "core__users"),
    ("DROP TABLE core__users", "core__users"),
    ("SELECT tenant_id FROM core__users", "core__users.tenant_id"),
    ("SELECT * FROM core__users", "core__users.tenant_id"),
    (
        "SELECT display_name FROM core__users WHERE tenant_id = 1",
        "core__users.tenant_id",
    ),
    (
        "CREATE INDEX tasks__ix ON core__users (display_name)",
        "core__users",
    ),
    // Extensions, analysis, virtual tables, vacuum.
    ("SELECT load_extension('libevil')", "load_extension"),
    ("ANALYZE", "analyze"),
    ("ANALYZE tasks__items", "analyze"),
    ("REINDEX", "reindex"),
    (
        "CREATE VIRTUAL TABLE tasks__fts USING fts5(body)",
        "tasks__fts",
    ),
    ("VACUUM", "the database"),
    ("VACUUM INTO '/tmp/copy-of-everything.db'", "the database"),
    // Transaction control belongs to the host.
    ("BEGIN", "transactions"),
    ("BEGIN IMMEDIATE", "transactions"),
    ("COMMIT", "transactions"),
    ("ROLLBACK", "transactions"),
    ("SAVEPOINT sp", "transactions"),
    ("RELEASE sp", "transactions"),
];

#[test]
fn hostile_statements_are_denied_with_a_typed_error() {
    let f = Fixture::new();
    let tasks = f.tasks();
    let mut failures = Vec::new();
    for (sql, needle) in DENIED {
        match tasks.execute(sql, &[]) {
            Err(FenceError::Denied {
                plugin,
                object,
                action,
            }) => {
                assert_eq!(plugin, "tasks");
                if !object.to_lowercase().contains(&needle.to_lowercase())
                    && !action.to_lowercase().contains(&needle.to_lowercase())
                {
                    failures.push(format!(
                        "{sql}: denied, but names {action} {object}, not {needle}"
                    ));
                }
            }
            other => failures.push(format!("{sql}: {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} not denied as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(DENIED.len() >= 60, "the suite has {} cases", DENIED.len());
    assert_eq!(tasks.denied_count(), DENIED.len() as u64);
    assert!(sovereign_db_plugins::denial_counts()["tasks"] >= DENIED.len() as u64);

    // Nothing leaked out and nothing was planted.
    let trusted = TrustedPluginStore::open_shared(&f.location.shared_store).unwrap();
    let body: String = trusted
        .connection()
        .query_row("SELECT body FROM notes__secret", [], |r| r.get(0))
        .unwrap();
    assert_eq!(body, "the secret");
    let objects: Vec<String> = trusted
        .connection()
        .prepare("SELECT name FROM sqlite_schema ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for name in &objects {
        let ok = name.starts_with("tasks__items")
            || name.starts_with("notes__secret")
            || name.starts_with("_sv_")
            || name.starts_with("sqlite_autoindex__sv_")
            || ["core__users", "sqlite_sequence"].contains(&name.as_str());
        assert!(ok, "unexpected object {name} in {objects:?}");
    }
    assert!(!std::path::Path::new("/tmp/copy-of-everything.db").exists());
}

#[test]
fn denials_never_reveal_another_plugins_schema() {
    let f = Fixture::new();
    let tasks = f.tasks();
    // Existing and missing tables and columns of another plugin look the same.
    let a = expect_denied(&tasks, "SELECT body FROM notes__secret");
    let b = expect_denied(&tasks, "SELECT body FROM notes__nothing");
    let c = expect_denied(&tasks, "SELECT nocolumn FROM notes__secret");
    assert_eq!(a.0, b.0);
    assert_eq!(a.0, c.0);
    let (_, object) = expect_denied(&tasks, "SELECT * FROM notes__secret");
    assert_eq!(
        object, "notes__secret",
        "no column names of another plugin's table"
    );
    let err = tasks
        .execute("SELECT * FROM notes__secret", &[])
        .unwrap_err()
        .to_string();
    assert!(!err.contains("body"), "{err}");
    assert_eq!(err, "plugin tasks may not read notes__secret");
}

#[test]
fn runaway_queries_huge_values_and_big_results_are_stopped() {
    let f = Fixture::new();
    let tasks = f.tasks();
    let started = std::time::Instant::now();
    let err = tasks
        .execute("WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r", &[])
        .unwrap_err();
    assert!(
        matches!(err, FenceError::Deadline { limit_ms: 300, .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the deadline stops it"
    );
    for sql in [
        "SELECT zeroblob(1000000000)",
        "SELECT randomblob(100000000)",
        "SELECT printf('%.*c', 50000000, 'x')",
    ] {
        let err = tasks.execute(sql, &[]).unwrap_err();
        assert!(matches!(err, FenceError::Limit { .. }), "{sql}: {err:?}");
    }
    let err = tasks
        .execute("WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 20000) SELECT x FROM r", &[])
        .unwrap_err();
    assert!(matches!(err, FenceError::ResultTooLarge { .. }), "{err:?}");
    let long = format!("SELECT {}", vec!["1"; 60_000].join("+"));
    let err = tasks.execute(&long, &[]).unwrap_err();
    assert!(matches!(err, FenceError::Limit { .. }), "{err:?}");
    assert!(matches!(
        tasks.execute("SELECT 1; SELECT 2", &[]),
        Err(FenceError::MultipleStatements { .. })
    ));
    assert!(matches!(
        tasks.execute("  -- nothing\n", &[]),
        Err(FenceError::EmptyStatement { .. })
    ));
    // The connection still works afterwards.
    assert!(
        tasks
            .execute("SELECT count(*) FROM tasks__items", &[])
            .is_ok()
    );
}

fn fill_until_quota(db: &PluginDb, table: &str) -> FenceError {
    db.execute(
        &format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, data BLOB)"),
        &[],
    )
    .unwrap();
    for _ in 0..1000 {
        if let Err(e) = db.execute(
            &format!("INSERT INTO {table} (data) VALUES (randomblob(65536))"),
            &[],
        ) {
            return e;
        }
    }
    panic!("64 MiB written without hitting a 1 MiB quota");
}

#[test]
fn the_storage_quota_holds_in_the_shared_and_isolated_stores() {
    let f = Fixture::new();
    let small = Limits {
        storage_mb: 1,
        ..Limits::default()
    };
    let shared = f.plugin("hog", DatabaseMode::Shared, vec![], small);
    let err = fill_until_quota(&shared, "hog__blobs");
    let FenceError::Quota {
        used_bytes,
        quota_bytes,
        ..
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!(quota_bytes, 1024 * 1024);
    assert!(
        used_bytes > quota_bytes && used_bytes < 2 * quota_bytes,
        "{used_bytes}"
    );
    // Reads and deletes still work, and deleting makes room again.
    assert!(
        shared
            .execute("SELECT count(*) FROM hog__blobs", &[])
            .is_ok()
    );
    shared.execute("DELETE FROM hog__blobs", &[]).unwrap();
    shared
        .execute(
            "INSERT INTO hog__blobs (data) VALUES (randomblob(1000))",
            &[],
        )
        .unwrap();
    // Other plugins are not affected by hog's quota.
    f.tasks()
        .execute("INSERT INTO tasks__items (title) VALUES ('fine')", &[])
        .unwrap();

    let isolated = f.plugin("hog2", DatabaseMode::Isolated, vec![], small);
    let err = fill_until_quota(&isolated, "hog2__blobs");
    assert!(matches!(err, FenceError::Quota { .. }), "{err:?}");
}

#[test]
fn a_plugin_does_everything_a_normal_app_does_with_its_own_tables() {
    let f = Fixture::new();
    let tasks = f.tasks();
    let steps = [
        "CREATE TABLE tasks__lists (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, meta TEXT) STRICT",
        "CREATE TABLE IF NOT EXISTS tasks__lists (id INTEGER PRIMARY KEY)",
        "ALTER TABLE tasks__items ADD COLUMN list_id INTEGER REFERENCES tasks__lists (id) ON DELETE CASCADE",
        "ALTER TABLE tasks__items ADD COLUMN done INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX tasks__items_by_list ON tasks__items (list_id, done)",
        "CREATE UNIQUE INDEX IF NOT EXISTS tasks__lists_name ON tasks__lists (name)",
        "INSERT INTO tasks__lists (name, meta) VALUES ('inbox', '{\"color\":\"red\",\"tags\":[\"a\",\"b\"]}')",
        "INSERT INTO tasks__lists (name) VALUES ('inbox') ON CONFLICT (name) DO UPDATE SET meta = json_set(coalesce(meta, '{}'), '$.seen', 1)",
        "INSERT INTO tasks__items (title, assignee, list_id) VALUES ('write tests', 1, 1), ('ship', 2, 1), ('rest', NULL, 1)",
        "UPDATE tasks__items SET done = 1 WHERE title = 'ship'",
        "CREATE TABLE tasks__log (id INTEGER PRIMARY KEY, item INTEGER, what TEXT)",
        "CREATE TRIGGER tasks__items_done AFTER UPDATE OF done ON tasks__items WHEN new.done = 1 BEGIN INSERT INTO tasks__log (item, what) VALUES (new.id, 'done'); END",
        "UPDATE tasks__items SET done = 1 WHERE title = 'write tests'",
        "CREATE VIEW tasks__open AS SELECT i.id, i.title, u.display_name FROM tasks__items i LEFT JOIN core__users u ON u.id = i.assignee WHERE i.done = 0",
        "ALTER TABLE tasks__log RENAME TO tasks__history",
        "ALTER TABLE tasks__history RENAME COLUMN what TO event",
        "CREATE TABLE tasks__scratch (x)",
        "DROP TABLE tasks__scratch",
        "PRAGMA table_info(tasks__items)",
        "PRAGMA index_list('tasks__items')",
        "PRAGMA foreign_key_list(tasks__items)",
    ];
    for sql in steps {
        tasks
            .execute(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let rows = |sql: &str, params: &[SqlValue]| match tasks
        .execute(sql, params)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    {
        Outcome::Rows { rows, .. } => rows,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        rows("SELECT json_extract(meta, '$.seen') FROM tasks__lists", &[]),
        vec![vec![SqlValue::Integer(1)]]
    );
    assert_eq!(
        rows(
            "SELECT count(*) FROM tasks__lists, json_each(tasks__lists.meta, '$.tags')",
            &[]
        ),
        vec![vec![SqlValue::Integer(2)]]
    );
    assert_eq!(
        rows(
            "SELECT title, display_name FROM tasks__open ORDER BY id",
            &[]
        ),
        vec![vec![SqlValue::Text("rest".into()), SqlValue::Null]]
    );
    // Only 'write tests' was completed after the trigger existed.
    assert_eq!(
        rows("SELECT count(*) FROM tasks__history", &[]),
        vec![vec![SqlValue::Integer(1)]]
    );
    let ranked = rows(
        "SELECT title, row_number() OVER (PARTITION BY list_id ORDER BY id DESC), sum(done) OVER () FROM tasks__items ORDER BY id",
        &[],
    );
    assert_eq!(ranked[0][1], SqlValue::Integer(3));
    assert_eq!(ranked[0][2], SqlValue::Integer(2));
    assert_eq!(
        rows(
            "SELECT i.title, u.display_name, u.avatar_url FROM tasks__items i JOIN core__users u ON u.id = i.assignee WHERE i.id = ?1",
            &[SqlValue::Integer(2)]
        ),
        vec![vec![
            SqlValue::Text("ship".into()),
            SqlValue::Text("Bob".into()),
            SqlValue::Text("https://x/b.png".into())
        ]]
    );
    assert_eq!(
        rows("SELECT count(*) FROM core__users", &[]),
        vec![vec![SqlValue::Integer(2)]]
    );
    let inserted = rows(
        "INSERT INTO tasks__items (title) VALUES (?1) RETURNING id, title",
        &[SqlValue::Text("new".into())],
    );
    assert_eq!(inserted[0][1], SqlValue::Text("new".into()));
    match tasks
        .execute(
            "DELETE FROM tasks__items WHERE title = ?1",
            &[SqlValue::Text("new".into())],
        )
        .unwrap()
    {
        Outcome::Changed { rows_affected, .. } => assert_eq!(rows_affected, 1),
        other => panic!("{other:?}"),
    }
    let with_cte = rows(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10) SELECT sum(x), date('2026-01-01', '+1 day'), upper(hex(randomblob(2))) IS NOT NULL FROM n",
        &[],
    );
    assert_eq!(with_cte[0][0], SqlValue::Integer(55));
    assert_eq!(with_cte[0][1], SqlValue::Text("2026-01-02".into()));
}

#[test]
fn the_host_owns_transactions_and_rollback_undoes_plugin_writes() {
    let f = Fixture::new();
    let tasks = f.tasks();
    let result: Result<(), FenceError> = tasks.transaction(|db| {
        db.execute("INSERT INTO tasks__items (title) VALUES ('doomed')", &[])?;
        db.execute("SELECT * FROM notes__secret", &[])?;
        Ok(())
    });
    assert!(matches!(result, Err(FenceError::Denied { .. })));
    let count = match tasks
        .execute(
            "SELECT count(*) FROM tasks__items WHERE title = 'doomed'",
            &[],
        )
        .unwrap()
    {
        Outcome::Rows { rows, .. } => rows[0][0].clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(count, SqlValue::Integer(0));
}

#[test]
fn an_isolated_plugin_has_its_own_file_and_reads_the_mirror_read_only() {
    let f = Fixture::new();
    let notes = f.plugin(
        "journal",
        DatabaseMode::Isolated,
        grants(),
        Limits::default(),
    );
    notes
        .execute(
            "CREATE TABLE journal__entries (id INTEGER PRIMARY KEY, author INTEGER, text TEXT)",
            &[],
        )
        .unwrap();
    notes
        .execute(
            "INSERT INTO journal__entries (author, text) VALUES (1, 'hello')",
            &[],
        )
        .unwrap();
    let rows = match notes
        .execute("SELECT e.text, u.display_name FROM journal__entries e JOIN core__users u ON u.id = e.author", &[])
        .unwrap()
    {
        Outcome::Rows { rows, .. } => rows,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        rows,
        vec![vec![
            SqlValue::Text("hello".into()),
            SqlValue::Text("Ada".into())
        ]]
    );
    assert!(f.location.isolated_dir.join("journal.db").exists());
    for sql in [
        "SELECT tenant_id FROM core__users",
        "SELECT * FROM mirror.core__users",
        "INSERT INTO mirror.core__users (id, display_name) VALUES (5, 'x')",
        "UPDATE core__users SET display_name = 'x'",
        "SELECT * FROM mirror.notes__secret",
        "SELECT * FROM mirror.sqlite_master",
        "SELECT * FROM notes__secret",
        "CREATE TABLE mirror.journal__x (a)",
        "DETACH mirror",
        "ATTACH DATABASE 'x.db' AS y",
    ] {
        expect_denied(&notes, sql);
    }
    // Its tables are not in the shared store.
    let trusted = TrustedPluginStore::open_shared(&f.location.shared_store).unwrap();
    assert!(trusted.plugin_objects("journal").unwrap().is_empty());
}

/// The classes found by a second, held-out hostile corpus (each with its own case here).
#[test]
fn identifiers_with_dollar_signs_do_not_slip_past_the_text_check() {
    let f = Fixture::new();
    let notes = f.plugin("notes", DatabaseMode::Shared, vec![], Limits::default());
    notes
        .execute("CREATE TABLE notes__a$b (id INTEGER PRIMARY KEY)", &[])
        .unwrap();
    notes
        .execute(
            "CREATE TABLE \"notes__q\"\"x\" (id INTEGER PRIMARY KEY)",
            &[],
        )
        .unwrap();
    let tasks = f.tasks();
    for sql in [
        "SELECT count(*) FROM notes__a$b",
        "SELECT EXISTS (SELECT 1 FROM notes__a$b)",
        "SELECT count(*) FROM \"notes__q\"\"x\"",
        "SELECT count(*) FROM `notes__q\"x`",
    ] {
        expect_denied(&tasks, sql);
    }
}

#[test]
fn a_trigger_cannot_write_past_the_storage_quota_even_from_a_delete() {
    let f = Fixture::new();
    let limits = Limits {
        storage_mb: 1,
        ..Limits::default()
    };
    let q = f.plugin("quota", DatabaseMode::Shared, vec![], limits);
    for sql in [
        "CREATE TABLE quota__a (id INTEGER PRIMARY KEY)",
        "CREATE TABLE quota__log (body BLOB)",
        "CREATE TRIGGER quota__grow AFTER DELETE ON quota__a BEGIN
             INSERT INTO quota__log VALUES (randomblob(900000));
             INSERT INTO quota__log VALUES (randomblob(900000));
         END",
        "INSERT INTO quota__a (id) VALUES (1)",
    ] {
        q.execute(sql, &[]).unwrap();
    }
    let err = q.execute("DELETE FROM quota__a", &[]).unwrap_err();
    assert!(matches!(err, FenceError::Quota { .. }), "{err:?}");
    let Outcome::Rows { rows, .. } = q.execute("SELECT count(*) FROM quota__log", &[]).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        rows[0][0],
        SqlValue::Integer(0),
        "the trigger's writes were undone"
    );
    // A plain delete (no growth) is never refused.
    q.execute("DROP TRIGGER quota__grow", &[]).unwrap();
    q.execute("DELETE FROM quota__a", &[]).unwrap();
}

#[test]
fn a_statement_that_ends_the_request_transaction_ends_the_request() {
    let f = Fixture::new();
    let tasks = f.tasks();
    tasks
        .execute(
            "CREATE TRIGGER tasks__abort BEFORE INSERT ON tasks__items WHEN NEW.title = 'boom'
             BEGIN SELECT RAISE(ROLLBACK, 'no'); END",
            &[],
        )
        .unwrap();
    for attack in [
        "INSERT INTO tasks__items (title) VALUES ('boom')",
        "INSERT OR ROLLBACK INTO tasks__items (id, title) VALUES (1, 'dup')",
    ] {
        tasks
            .execute(
                "INSERT INTO tasks__items (id, title) VALUES (1, 'first')",
                &[],
            )
            .unwrap();
        tasks.begin().unwrap();
        tasks
            .execute(
                "INSERT INTO tasks__items (title) VALUES ('in the request')",
                &[],
            )
            .unwrap();
        let err = tasks.execute(attack, &[]).unwrap_err();
        assert!(
            matches!(err, FenceError::TransactionEnded { .. }),
            "{attack}: {err:?}"
        );
        // Nothing more runs in that request, and it cannot be committed.
        let err = tasks
            .execute("INSERT INTO tasks__items (title) VALUES ('after')", &[])
            .unwrap_err();
        assert!(
            matches!(err, FenceError::TransactionEnded { .. }),
            "{err:?}"
        );
        assert!(tasks.commit().is_err());
        tasks.rollback().unwrap();
        let Outcome::Rows { rows, .. } = tasks
            .execute("SELECT group_concat(title) FROM tasks__items", &[])
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(rows[0][0], SqlValue::Text("first".into()), "{attack}");
        tasks.execute("DELETE FROM tasks__items", &[]).unwrap();
    }
}

#[test]
fn deep_nesting_is_refused() {
    let f = Fixture::new();
    let tasks = f.tasks();
    let nested = format!("SELECT {}1{}", "(".repeat(120), ")".repeat(120));
    let err = tasks.execute(&nested, &[]).unwrap_err();
    assert!(matches!(err, FenceError::Limit { .. }), "{err:?}");
    let calls = format!("SELECT {}1{}", "abs(".repeat(120), ")".repeat(120));
    let err = tasks.execute(&calls, &[]).unwrap_err();
    assert!(matches!(err, FenceError::Limit { .. }), "{err:?}");
    let fine = format!("SELECT {}1{}", "(".repeat(20), ")".repeat(20));
    tasks.execute(&fine, &[]).unwrap();
}

#[test]
fn every_ddl_form_works_on_the_plugins_own_objects() {
    let f = Fixture::new();
    let tasks = f.tasks();
    for sql in [
        "CREATE TABLE IF NOT EXISTS tasks__t (id INTEGER PRIMARY KEY, a TEXT, b TEXT, c INTEGER)",
        "CREATE TABLE tasks__child (id INTEGER PRIMARY KEY, t INTEGER REFERENCES tasks__t (id) ON DELETE CASCADE)",
        "INSERT INTO tasks__t (a, b, c) VALUES ('x', 'y', 1)",
        "ALTER TABLE tasks__t ADD COLUMN d TEXT DEFAULT 'dd'",
        "ALTER TABLE tasks__t DROP COLUMN b",
        "ALTER TABLE tasks__t ADD COLUMN temp INTEGER",
        "ALTER TABLE tasks__t DROP COLUMN temp",
        "ALTER TABLE tasks__t RENAME COLUMN a TO title",
        "ALTER TABLE tasks__t RENAME TO tasks__renamed",
        "CREATE INDEX tasks__renamed_c ON tasks__renamed (c) WHERE c > 0",
        "CREATE UNIQUE INDEX IF NOT EXISTS tasks__renamed_title ON tasks__renamed (lower(title))",
        "REINDEX tasks__renamed_c",
        "DROP INDEX tasks__renamed_c",
        "CREATE VIEW tasks__v AS SELECT id, title FROM tasks__renamed",
        "DROP VIEW tasks__v",
        "CREATE TRIGGER tasks__trg AFTER INSERT ON tasks__renamed BEGIN UPDATE tasks__renamed SET c = c + 1 WHERE id = NEW.id; END",
        "DROP TRIGGER tasks__trg",
        "CREATE TABLE tasks__copy AS SELECT id, title FROM tasks__renamed",
        "CREATE TABLE tasks__gen (a TEXT, n INTEGER GENERATED ALWAYS AS (length(a)) VIRTUAL)",
        "CREATE TABLE tasks__strict (id INTEGER PRIMARY KEY, v ANY) STRICT, WITHOUT ROWID",
        "DROP TABLE IF EXISTS tasks__copy",
        "DROP TABLE tasks__child",
    ] {
        if let Err(e) = tasks.execute(sql, &[]) {
            panic!("{sql}: {e:?}");
        }
    }
    let Outcome::Rows { rows, .. } = tasks
        .execute("SELECT title, c, d FROM tasks__renamed", &[])
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        rows,
        [vec![
            SqlValue::Text("x".into()),
            SqlValue::Integer(1),
            SqlValue::Text("dd".into())
        ]]
    );
}

#[test]
fn foreign_keys_into_the_mirror_are_refused_and_cannot_block_the_mirror_writer() {
    let f = Fixture::new();
    let tasks = f.tasks();
    for sql in [
        "CREATE TABLE tasks__owner (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES core__users (id) ON DELETE RESTRICT)",
        "CREATE TABLE tasks__owner2 (id INTEGER PRIMARY KEY, user_id INTEGER, FOREIGN KEY (user_id) REFERENCES \"core__users\")",
        "ALTER TABLE tasks__items ADD COLUMN owner INTEGER REFERENCES core__users (id)",
    ] {
        let (action, _) = expect_denied(&tasks, sql);
        assert!(action.contains("foreign key"), "{sql}: {action}");
    }
    expect_denied(
        &tasks,
        "CREATE TABLE tasks__n (id INTEGER PRIMARY KEY, n INTEGER REFERENCES notes__secret (id))",
    );
    // A store written before this check (or by hand) with such a key: the mirror writer
    // applies deletes and renames all the same.
    let trusted = TrustedPluginStore::open_shared(&f.location.shared_store).unwrap();
    trusted
        .connection()
        .execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE tasks__legacy (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES core__users (id) ON DELETE RESTRICT);
             INSERT INTO tasks__legacy VALUES (1, 1);",
        )
        .unwrap();
    let catalog = MirrorCatalog::default();
    let batch = sovereign_db_plugins::mirror::MirrorBatch {
        upto_seq: 1,
        drained: true,
        changes: vec![
            sovereign_db_plugins::mirror::MirrorChange {
                slice: "users".into(),
                key: 1,
                row: None,
            },
            sovereign_db_plugins::mirror::MirrorChange {
                slice: "users".into(),
                key: 2,
                row: Some(vec![
                    SqlValue::Integer(2),
                    SqlValue::Integer(1),
                    SqlValue::Text("Robert".into()),
                    SqlValue::Null,
                ]),
            },
        ],
    };
    let trusted = TrustedPluginStore::open_shared(&f.location.shared_store).unwrap();
    trusted.apply_batch(&catalog, &batch, 0).unwrap();
    let names: Vec<String> = trusted
        .connection()
        .prepare("SELECT display_name FROM core__users ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(names, ["Robert"]);
}

/// Fills `tasks__items` with `n` rows whose title is `width` bytes.
fn fill_items(db: &PluginDb, n: i64, width: i64) {
    db.execute(
        "INSERT INTO tasks__items (title) WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < ?1) SELECT printf('%.*c', ?2, 'x') FROM r",
        &[SqlValue::Integer(n), SqlValue::Integer(width)],
    )
    .unwrap();
}

#[test]
fn a_cursor_reads_any_number_of_rows_a_capped_batch_at_a_time() {
    let f = Fixture::new();
    let db = f.tasks();
    // 25,000 rows of 1 KiB: past the row cap and three times the default byte cap.
    fill_items(&db, 25_000, 1024);
    // One query may not return them all ...
    assert!(matches!(
        db.execute("SELECT id, title FROM tasks__items", &[]),
        Err(FenceError::ResultTooLarge { .. })
    ));
    // ... a cursor reads them all, no batch past the row or byte cap.
    db.begin_deferred().unwrap();
    let cursor = db
        .open_cursor("SELECT id, title FROM tasks__items ORDER BY id", &[])
        .unwrap();
    assert_eq!(&*db.cursor_columns(cursor).unwrap(), ["id", "title"]);
    let (mut read, mut batches, mut last_id) = (0, 0, 0);
    loop {
        let batch = db.cursor_next(cursor, 50_000).unwrap();
        if batch.is_empty() {
            break;
        }
        let bytes: usize = batch.iter().flatten().map(SqlValue::size).sum();
        assert!(batch.len() <= sovereign_db_plugins::MAX_RESULT_ROWS);
        assert!(bytes <= db.max_result_bytes(), "{bytes} bytes in one batch");
        for row in &batch {
            let SqlValue::Integer(id) = row[0] else {
                panic!("{row:?}")
            };
            assert_eq!(id, last_id + 1, "no row skipped or repeated across batches");
            last_id = id;
        }
        read += batch.len();
        batches += 1;
    }
    assert_eq!(read, 25_000);
    assert!(
        batches > 3,
        "the byte cap split the result: {batches} batches"
    );
    assert!(db.max_result_bytes() < 25_000 * 1024);
    // Read to the end, it stays ended.
    assert!(db.cursor_next(cursor, 10).unwrap().is_empty());
    db.rollback().unwrap();
}

#[test]
fn a_cursor_is_fenced_limited_and_ends_with_its_request() {
    let f = Fixture::new();
    let db = f.tasks();
    fill_items(&db, 10, 8);
    db.begin().unwrap();
    for (sql, expect) in [
        ("SELECT * FROM notes__secret", "denied"),
        ("SELECT * FROM core__users", "denied"),
        ("SELECT id, display_name FROM core__users", "allowed"),
        (
            "INSERT INTO tasks__items (title) VALUES ('x') RETURNING id",
            "not a query",
        ),
        ("DELETE FROM tasks__items", "not a query"),
        ("CREATE TABLE tasks__more (x)", "not a query"),
        ("SELECT 1; SELECT 2", "multiple"),
        ("VACUUM", "denied"),
    ] {
        let outcome = db.open_cursor(sql, &[]);
        match (expect, &outcome) {
            ("denied", Err(FenceError::Denied { .. }))
            | ("not a query", Err(FenceError::NotAQuery { .. }))
            | ("multiple", Err(FenceError::MultipleStatements { .. })) => {}
            ("allowed", Ok(id)) => db.close_cursor(*id),
            _ => panic!("{sql}: expected {expect}, got {outcome:?}"),
        }
    }
    // Nothing was written by the refused ones.
    let Outcome::Rows { rows, .. } = db
        .execute("SELECT count(*) FROM tasks__items", &[])
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(rows, vec![vec![SqlValue::Integer(10)]]);

    // A request holds at most MAX_OPEN_CURSORS; closing one makes room.
    let open: Vec<_> = (0..sovereign_db_plugins::MAX_OPEN_CURSORS)
        .map(|_| db.open_cursor("SELECT id FROM tasks__items", &[]).unwrap())
        .collect();
    assert!(matches!(
        db.open_cursor("SELECT id FROM tasks__items", &[]),
        Err(FenceError::Limit { .. })
    ));
    db.close_cursor(open[0]);
    let last = db.open_cursor("SELECT id FROM tasks__items", &[]).unwrap();
    assert_eq!(db.cursor_next(last, 3).unwrap().len(), 3);

    // The connection moves to another thread with its cursors and goes on reading.
    let db = std::thread::spawn(move || {
        assert_eq!(db.cursor_next(last, 100).unwrap().len(), 7);
        db
    })
    .join()
    .unwrap();

    // Every cursor ends with the request's transaction.
    db.commit().unwrap();
    assert!(matches!(
        db.cursor_next(open[1], 1),
        Err(FenceError::CursorClosed { .. })
    ));
    db.begin().unwrap();
    db.open_cursor("SELECT id FROM tasks__items", &[]).unwrap();
    db.rollback().unwrap();
}

#[test]
fn a_cursor_that_runs_too_long_or_meets_a_row_too_large_stops_with_a_typed_error() {
    let f = Fixture::new();
    let db = f.tasks();
    db.begin_deferred().unwrap();
    let runaway = db
        .open_cursor(
            "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r",
            &[],
        )
        .unwrap();
    assert!(matches!(
        db.cursor_next(runaway, 1),
        Err(FenceError::Deadline { limit_ms: 300, .. })
    ));
    // Nine values of just under 1 MiB (the value cap): one row past the 8 MiB result cap.
    let columns = ["printf('%.*c', 1000000, 'x')"; 9].join(", ");
    let wide = db.open_cursor(&format!("SELECT {columns}"), &[]).unwrap();
    let too_large = db.cursor_next(wide, 1);
    assert!(
        matches!(too_large, Err(FenceError::ResultTooLarge { .. })),
        "{too_large:?}"
    );
    db.rollback().unwrap();
}

#[test]
fn constraint_failures_and_a_busy_database_are_told_apart() {
    let f = Fixture::new();
    let db = f.tasks();
    db.execute("CREATE TABLE tasks__tags (name TEXT UNIQUE NOT NULL)", &[])
        .unwrap();
    db.execute("INSERT INTO tasks__tags VALUES ('a')", &[])
        .unwrap();
    for sql in [
        "INSERT INTO tasks__tags VALUES ('a')",
        "INSERT INTO tasks__tags VALUES (NULL)",
    ] {
        assert!(
            matches!(db.execute(sql, &[]), Err(FenceError::Constraint { .. })),
            "{sql}"
        );
    }
    // Another connection holds the write lock: a read transaction that tries to write
    // cannot wait for it (its snapshot would be stale) and is told the store is busy.
    let other = f.tasks();
    other.begin().unwrap();
    other
        .execute("INSERT INTO tasks__tags VALUES ('b')", &[])
        .unwrap();
    db.begin_deferred().unwrap();
    db.execute("SELECT count(*) FROM tasks__tags", &[]).unwrap();
    let busy = db.execute("INSERT INTO tasks__tags VALUES ('c')", &[]);
    assert!(matches!(busy, Err(FenceError::Busy { .. })), "{busy:?}");
    db.rollback().unwrap();
    other.rollback().unwrap();
}
