//! A plugin's fenced connection on a real PostgreSQL server: the plugin's own role, the
//! request transaction, portable parameters and values, deadlines kept from outside,
//! the quota and caps, cursors, the event outbox, and the hostile corpus refused with
//! typed errors while the request goes on.

mod common;

use std::time::{Duration, Instant};

use common::{HOSTILE, Stores, connect};
use sovereign_db_plugins::{
    FenceError, FencedConnection, Limits, MAX_OPEN_CURSORS, Outcome, SqlValue,
};
use sovereign_postgres::{PgError, PgPluginConfig, PgPluginDb};

fn open(url: &str, id: &str, limits: Limits) -> PgPluginDb {
    PgPluginDb::open(&PgPluginConfig {
        plugin_id: id.into(),
        url: url.into(),
        limits,
    })
    .unwrap()
}

fn rows(outcome: Outcome) -> Vec<Vec<SqlValue>> {
    match outcome {
        Outcome::Rows { rows, .. } => rows,
        other => panic!("expected rows, got {other:?}"),
    }
}

fn changed(outcome: Outcome) -> (u64, i64) {
    match outcome {
        Outcome::Changed {
            rows_affected,
            last_insert_id,
        } => (rows_affected, last_insert_id),
        other => panic!("expected a change, got {other:?}"),
    }
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.into())
}

const TASKS: &str = "CREATE TABLE tasks__tasks (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title text NOT NULL UNIQUE,
    done boolean NOT NULL DEFAULT false,
    weight double precision,
    body bytea,
    meta jsonb,
    assignee bigint
)";

#[test]
fn portable_statements_run_in_the_request_transaction_with_typed_values() {
    let stores = Stores::start();
    let mut db = open(&stores.tasks_url, "tasks", Limits::default());
    db.begin(true).unwrap();
    db.execute(TASKS, &[]).unwrap();
    let insert = "INSERT INTO tasks__tasks (title, done, weight, body, meta, assignee) \
                  VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    let first = db
        .execute(
            insert,
            &[
                text("write docs"),
                SqlValue::Integer(1),
                SqlValue::Real(2.5),
                SqlValue::Blob(vec![0, 159, 255]),
                text(r#"{"tags": ["a"]}"#),
                SqlValue::Integer(1),
            ],
        )
        .unwrap();
    assert_eq!(changed(first), (1, 1), "last_insert_id is the identity");
    // A failing statement fails alone (a savepoint), as on SQLite.
    let duplicate = db.execute(
        "INSERT INTO tasks__tasks (title) VALUES (?)",
        &[text("write docs")],
    );
    assert!(
        matches!(duplicate, Err(FenceError::Constraint { .. })),
        "{duplicate:?}"
    );
    assert_eq!(
        changed(
            db.execute(
                "INSERT INTO tasks__tasks (title, weight) VALUES (?, ?)",
                &[text("test"), SqlValue::Integer(4)],
            )
            .unwrap()
        ),
        (1, 3),
        "the failed insert used id 2"
    );
    db.commit().unwrap();

    db.begin(true).unwrap();
    let got = rows(
        db.execute(
            "SELECT t.id, t.title, t.done, t.weight, t.body, t.meta, u.display_name, \
             sum(t.id) OVER (), avg(t.weight) OVER (), gen_random_uuid() IS NOT NULL \
             FROM tasks__tasks t LEFT JOIN core__users u ON u.id = t.assignee ORDER BY t.id",
            &[],
        )
        .unwrap(),
    );
    assert_eq!(
        got[0],
        vec![
            SqlValue::Integer(1),
            text("write docs"),
            SqlValue::Integer(1),
            SqlValue::Real(2.5),
            SqlValue::Blob(vec![0, 159, 255]),
            text(r#"{"tags": ["a"]}"#),
            text("Ada"),
            SqlValue::Integer(4),
            SqlValue::Real(3.25),
            SqlValue::Integer(1),
        ]
    );
    assert_eq!(got[1][6], SqlValue::Null);
    // Rolled back: gone.
    db.execute("DELETE FROM tasks__tasks", &[]).unwrap();
    db.rollback().unwrap();
    let count = |db: &mut PgPluginDb| {
        rows(
            db.execute("SELECT count(*) FROM tasks__tasks", &[])
                .unwrap(),
        )[0][0]
            .clone()
    };
    assert_eq!(
        count(&mut db),
        SqlValue::Integer(2),
        "outside a request: its own transaction"
    );
    // A request whose first statement fails goes on too (its transaction begins again).
    db.begin(true).unwrap();
    let zero = db.execute("SELECT 1 / 0", &[]);
    assert!(matches!(zero, Err(FenceError::Sql { .. })), "{zero:?}");
    db.execute(
        "INSERT INTO tasks__tasks (title) VALUES ('after a failure')",
        &[],
    )
    .unwrap();
    db.commit().unwrap();
    assert_eq!(count(&mut db), SqlValue::Integer(3));

    // Clear errors for what does not convert.
    let err = db
        .execute(
            "SELECT title FROM tasks__tasks WHERE id = ?1",
            &[text("one")],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("parameter ?1") && err.contains("int8"),
        "{err}"
    );
    let err = db.execute("SELECT now()", &[]).unwrap_err().to_string();
    assert!(err.contains("CAST(x AS text)"), "{err}");
    let err = db
        .execute("SELECT ?1, ?2", &[text("a")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("takes 2 parameters, 1 were given"), "{err}");
    assert!(matches!(
        db.execute("SELECT 1; SELECT 2", &[]),
        Err(FenceError::MultipleStatements { .. })
    ));
    assert!(matches!(
        db.execute(" -- nothing\n", &[]),
        Err(FenceError::EmptyStatement { .. })
    ));
}

#[test]
fn only_the_plugins_own_role_may_open_its_connection() {
    let stores = Stores::start();
    let open_as = |url: &str, id: &str| {
        PgPluginDb::open(&PgPluginConfig {
            plugin_id: id.into(),
            url: url.into(),
            limits: Limits::default(),
        })
    };
    // Another plugin's credentials, the store's owner, an administrator: refused.
    for (url, id) in [
        (stores.notes_url.as_str(), "tasks"),
        (stores.plugins_url.as_str(), "tasks"),
        (stores.server.admin_url(), "tasks"),
    ] {
        match open_as(url, id) {
            Err(PgError::UnsafeRole { message, .. }) => {
                assert!(message.contains("svp_tasks"), "{message}")
            }
            Err(other) => panic!("{url}: {other}"),
            Ok(_) => panic!("{url} opened tasks' connection"),
        }
    }
    // A superuser named like the plugin's role is refused too.
    let mut admin = connect(stores.server.admin_url());
    admin
        .batch_execute("CREATE ROLE svp_evil LOGIN SUPERUSER PASSWORD 'evil'")
        .unwrap();
    let url = stores.server.url("svp_evil", "evil", "sv_plugins");
    let err = open_as(&url, "evil").err().expect("refused").to_string();
    assert!(err.contains("SUPERUSER"), "{err}");
}

#[test]
fn deadlines_are_kept_from_outside_and_quota_and_caps_hold() {
    let stores = Stores::start();
    let limits = Limits {
        statement_ms: 300,
        storage_mb: 1,
        result_kb: 64,
        value_kb: 4,
        ..Limits::default()
    };
    let mut db = open(&stores.tasks_url, "tasks", limits);
    db.begin(true).unwrap();
    db.execute(TASKS, &[]).unwrap();
    db.execute("INSERT INTO tasks__tasks (title) VALUES ('kept')", &[])
        .unwrap();
    assert!(matches!(
        db.execute("SELECT pg_sleep(5)", &[]),
        Err(FenceError::Deadline { limit_ms: 300, .. })
    ));
    // The plugin turns its own timeout off: the cancel request from outside still comes.
    db.execute("SELECT set_config('statement_timeout', '0', false)", &[])
        .unwrap();
    let slept = db.execute("SELECT pg_sleep(5)", &[]);
    assert!(
        matches!(slept, Err(FenceError::Deadline { .. })),
        "{slept:?}"
    );
    // Statements that end right at their deadline: whether or not the cancel came in
    // time, it never reaches the next statement.
    for _ in 0..20 {
        let edge = db.execute("SELECT pg_sleep(0.29)", &[]);
        assert!(
            matches!(edge, Ok(_) | Err(FenceError::Deadline { .. })),
            "{edge:?}"
        );
        assert_eq!(
            rows(
                db.execute("SELECT count(*) FROM tasks__tasks", &[])
                    .unwrap()
            )[0][0],
            SqlValue::Integer(1)
        );
    }
    // Going past the storage quota undoes that write only.
    let big = db.execute(
        "INSERT INTO tasks__tasks (title, body) \
         SELECT 'bulk ' || g, decode(repeat(md5(g::text), 64), 'hex') FROM generate_series(1, 2000) g",
        &[],
    );
    assert!(matches!(big, Err(FenceError::Quota { .. })), "{big:?}");
    // Result and value caps.
    assert!(matches!(
        db.execute("SELECT repeat('x', 1000) FROM generate_series(1, 100)", &[]),
        Err(FenceError::ResultTooLarge { .. })
    ));
    assert!(matches!(
        db.execute("SELECT length(?1)", &[text(&"x".repeat(5000))]),
        Err(FenceError::Limit { .. })
    ));
    db.commit().unwrap();
    let left = rows(db.execute("SELECT title FROM tasks__tasks", &[]).unwrap());
    assert_eq!(left, vec![vec![text("kept")]]);

    // The request's deadline bounds every statement, whatever statement_ms says.
    let mut slow = open(
        &stores.tasks_url,
        "tasks",
        Limits {
            statement_ms: 60_000,
            ..Limits::default()
        },
    );
    slow.begin(true).unwrap();
    slow.set_request_deadline(Some(Instant::now() + Duration::from_millis(200)));
    assert!(matches!(
        slow.execute("SELECT pg_sleep(5)", &[]),
        Err(FenceError::Deadline { .. })
    ));
    assert!(
        matches!(
            slow.execute("SELECT 1", &[]),
            Err(FenceError::Deadline { .. })
        ),
        "past the request's deadline nothing runs"
    );
    slow.rollback().unwrap();
}

#[test]
fn cursors_read_every_row_once_in_capped_batches() {
    let stores = Stores::start();
    let mut db = open(
        &stores.tasks_url,
        "tasks",
        Limits {
            result_kb: 256,
            ..Limits::default()
        },
    );
    db.begin(true).unwrap();
    db.execute(
        "CREATE TABLE tasks__lines (n bigint PRIMARY KEY, body text)",
        &[],
    )
    .unwrap();
    db.execute(
        "INSERT INTO tasks__lines SELECT g, repeat('y', 1000) FROM generate_series(1, 25000) g",
        &[],
    )
    .unwrap();
    db.commit().unwrap();

    db.begin(true).unwrap();
    let cursor = db
        .open_cursor(
            "SELECT n, body FROM tasks__lines WHERE n > ?1 ORDER BY n",
            &[SqlValue::Integer(0)],
        )
        .unwrap();
    assert_eq!(&*db.cursor_columns(cursor).unwrap(), ["n", "body"]);
    let (mut expected, mut batches) = (1i64, 0);
    loop {
        let batch = db.cursor_next(cursor, 1000).unwrap();
        if batch.is_empty() {
            break;
        }
        // 256 KiB of 1,008-byte rows.
        assert!(batch.len() <= 260, "byte-capped: {}", batch.len());
        for row in batch {
            assert_eq!(row[0], SqlValue::Integer(expected));
            expected += 1;
        }
        batches += 1;
    }
    assert_eq!((expected, batches >= 25_000 / 260), (25001, true));
    // Only queries; at most MAX_OPEN_CURSORS; all gone when the request ends.
    assert!(matches!(
        db.open_cursor("DELETE FROM tasks__lines RETURNING n", &[]),
        Err(FenceError::NotAQuery { .. })
    ));
    let with_delete = db.open_cursor(
        "WITH d AS (DELETE FROM tasks__lines RETURNING n) SELECT * FROM d",
        &[],
    );
    assert!(
        matches!(with_delete, Err(FenceError::NotAQuery { .. })),
        "{with_delete:?}"
    );
    let open: Vec<_> = (1..MAX_OPEN_CURSORS)
        .map(|_| db.open_cursor("SELECT 1", &[]).unwrap())
        .collect();
    assert!(matches!(
        db.open_cursor("SELECT 1", &[]),
        Err(FenceError::Limit { .. })
    ));
    db.close_cursor(open[0]);
    let last = db
        .open_cursor("SELECT n FROM tasks__lines ORDER BY n", &[])
        .unwrap();
    assert_eq!(db.cursor_next(last, 2).unwrap().len(), 2);
    db.commit().unwrap();
    assert!(matches!(
        db.cursor_next(last, 2),
        Err(FenceError::CursorClosed { .. })
    ));
    assert_eq!(
        rows(
            db.execute("SELECT count(*) FROM tasks__lines", &[])
                .unwrap()
        )[0][0],
        SqlValue::Integer(25000)
    );
}

#[test]
fn events_are_each_plugins_own_and_exist_only_once_committed() {
    let stores = Stores::start();
    let mut tasks = open(&stores.tasks_url, "tasks", Limits::default());
    let mut notes = open(&stores.notes_url, "notes", Limits::default());
    tasks.begin(true).unwrap();
    tasks.emit_event("task.completed", r#"{"id": 1}"#).unwrap();
    tasks.rollback().unwrap();
    assert!(tasks.pending_events(10).unwrap().is_empty(), "rolled back");
    tasks.begin(true).unwrap();
    let id = tasks.emit_event("task.completed", r#"{"id": 2}"#).unwrap();
    tasks.commit().unwrap();
    let pending = tasks.pending_events(10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (&pending[0].0, pending[0].1.as_str()),
        (&id, "task.completed")
    );
    // Another plugin neither sees nor forges them.
    assert!(notes.pending_events(10).unwrap().is_empty());
    let forged = notes.execute(
        "INSERT INTO public._sv_event_outbox (event_id, plugin, topic, payload, created_at_ms) \
         VALUES ('forged', 'tasks', 'task.completed', '{}', 0)",
        &[],
    );
    assert!(
        matches!(forged, Err(FenceError::Denied { .. })),
        "{forged:?}"
    );
    let peek = rows(
        notes
            .execute("SELECT count(*) FROM public._sv_event_outbox", &[])
            .unwrap(),
    );
    assert_eq!(peek[0][0], SqlValue::Integer(0));
    tasks.mark_delivered(&[id], 1, 0).unwrap();
    assert!(tasks.pending_events(10).unwrap().is_empty());
}

#[test]
fn the_hostile_corpus_is_refused_with_typed_errors_and_the_request_goes_on() {
    let stores = Stores::start();
    let mut db = open(
        &stores.tasks_url,
        "tasks",
        Limits {
            statement_ms: 300,
            ..Limits::default()
        },
    );
    db.begin(true).unwrap();
    db.execute(TASKS, &[]).unwrap();
    db.execute("INSERT INTO tasks__tasks (title) VALUES ('mine')", &[])
        .unwrap();
    let mut wrong = Vec::new();
    for (sql, code) in HOSTILE {
        let result = db.execute(sql, &[]);
        let fitting = match (&result, *code) {
            (Err(FenceError::Denied { .. }), "42501") => true,
            (Err(FenceError::MultipleStatements { .. }), _) => sql.contains(';'),
            (Err(FenceError::Sql { .. }), "42P01") => true,
            (Err(FenceError::Deadline { .. }), "57014") => true,
            _ => false,
        };
        if !fitting {
            wrong.push(format!("{sql}: {result:?} (the server says {code})"));
        }
    }
    assert!(wrong.is_empty(), "refused wrongly:\n{}", wrong.join("\n"));
    db.commit().unwrap();
    assert_eq!(
        rows(db.execute("SELECT title FROM tasks__tasks", &[]).unwrap()),
        vec![vec![text("mine")]]
    );
    assert_eq!(stores.notes_count(), 1);
    let mirror: i64 = connect(&stores.plugins_url)
        .query_one("SELECT count(*) FROM core.core__users", &[])
        .unwrap()
        .get(0);
    assert_eq!(mirror, 1);
}
