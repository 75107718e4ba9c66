//! A plugin's fenced connection on a real MariaDB (`scripts/mariadb`): it runs as its own
//! account only; values cross typed both ways; statements run in the request's
//! transaction and fail alone; schema changes only in migrations; what the grants leave
//! open (HANDLER, executable comments, variables, SET) is refused before it is sent and
//! the rest by the server, with typed errors; deadlines of the statement and of the
//! request hold; cursors hand out batches; events exist only once committed.

mod common;

use std::time::{Duration, Instant};

use sovereign_db_plugins::{FenceError, FencedConnection, Limits, Outcome, SqlValue};
use sovereign_mysql::{MyPluginConfig, MyPluginDb, Server};

const PASSWORD: &str = "alphaalphaalpha1";

struct Fixture {
    server: Server,
}

fn fixture() -> Fixture {
    Fixture {
        server: common::plugin_store(
            "CREATE TABLE core__users (id BIGINT PRIMARY KEY, display_name TEXT, email TEXT);
             INSERT INTO core__users VALUES (1, 'Ada', 'ada@example.com')",
            &["alpha", "beta"],
            PASSWORD,
            4,
            ("alpha", "id,display_name"),
        ),
    }
}

fn open(f: &Fixture, id: &str, limits: Limits) -> MyPluginDb {
    MyPluginDb::open(&MyPluginConfig {
        plugin_id: id.into(),
        url: f
            .server
            .url(&format!("svp_{id}"), PASSWORD, &format!("sv_plugins_{id}")),
        limits,
    })
    .unwrap()
}

#[test]
fn the_plugin_connection_keeps_the_fence_and_the_request() {
    let f = fixture();
    // Only the plugin's own account opens its connection.
    let wrong = MyPluginDb::open(&MyPluginConfig {
        plugin_id: "beta".into(),
        url: f.server.url("svp_alpha", PASSWORD, "sv_plugins_alpha"),
        limits: Limits::default(),
    });
    assert!(wrong.is_err());

    let mut db = open(&f, "alpha", Limits::default());
    db.execute_migration(
        "CREATE TABLE notes (id BIGINT AUTO_INCREMENT PRIMARY KEY, title TEXT NOT NULL,
                             score DOUBLE, body BLOB, n DECIMAL(10, 2), UNIQUE KEY t (title(50)))",
    )
    .unwrap();

    // A migration that fails part-way says where; what MySQL committed before it stays.
    let broken = sovereign_db::MigrationSet::embedded(
        "plugin:alpha",
        &[(
            "0001_broken.sql",
            "CREATE TABLE kept (id INT);\nCREATE TABLE broken (id NO_SUCH_TYPE);",
        )],
    )
    .unwrap();
    let failed = db.migrate(&broken).unwrap_err();
    assert!(
        matches!(
            failed,
            sovereign_mysql::MyError::MigrationFailed { ran: 1, .. }
        ),
        "{failed}"
    );
    assert!(
        failed
            .to_string()
            .contains("0001_broken.sql failed at its statement 2")
    );
    db.execute("SELECT * FROM kept", &[]).unwrap();

    // Values both ways, in the request's transaction.
    db.begin(true).unwrap();
    let inserted = db
        .execute(
            "INSERT INTO notes (title, score, body, n) VALUES (?2, ?1, ?3, ?4)",
            &[
                SqlValue::Real(2.5),
                SqlValue::Text("ünïcode ✓ 'quoted' ?1".into()),
                SqlValue::Blob(vec![0, 255, 7]),
                SqlValue::Integer(12),
            ],
        )
        .unwrap();
    assert_eq!(
        inserted,
        Outcome::Changed {
            rows_affected: 1,
            last_insert_id: 1
        }
    );
    // A failing statement fails alone.
    let duplicate = db
        .execute(
            "INSERT INTO notes (title) VALUES (?)",
            &[SqlValue::Text("ünïcode ✓ 'quoted' ?1".into())],
        )
        .unwrap_err();
    assert!(
        matches!(duplicate, FenceError::Constraint { .. }),
        "{duplicate}"
    );
    db.commit().unwrap();
    let read = common::rows(
        db.execute("SELECT id, title, score, body, n, NULL FROM notes", &[])
            .unwrap(),
    );
    assert_eq!(
        read,
        [vec![
            SqlValue::Integer(1),
            SqlValue::Text("ünïcode ✓ 'quoted' ?1".into()),
            SqlValue::Real(2.5),
            SqlValue::Blob(vec![0, 255, 7]),
            // A decimal with a scale reads as a real; without one, as an integer.
            SqlValue::Real(12.0),
            SqlValue::Null,
        ]]
    );
    // A rolled-back request leaves nothing.
    db.begin(true).unwrap();
    db.execute("INSERT INTO notes (title) VALUES ('gone')", &[])
        .unwrap();
    db.rollback().unwrap();
    assert_eq!(
        common::rows(db.execute("SELECT count(*) FROM notes", &[]).unwrap()),
        [vec![SqlValue::Integer(1)]]
    );
    // Schema changes in a request would commit it: migrations only.
    db.begin(true).unwrap();
    let ddl = db.execute("CREATE TABLE later (id INT)", &[]).unwrap_err();
    assert!(matches!(ddl, FenceError::Denied { .. }), "{ddl}");
    db.rollback().unwrap();

    // The mirror's granted columns are readable; the rest of the fence holds, typed.
    assert_eq!(
        common::rows(
            db.execute("SELECT display_name FROM sv_plugins.core__users", &[])
                .unwrap()
        ),
        [vec![SqlValue::Text("Ada".into())]]
    );
    for sql in [
        "HANDLER sv_plugins.core__users OPEN",
        "SELECT email FROM sv_plugins.core__users",
        "SELECT 1 /*! , (SELECT email FROM sv_plugins.core__users LIMIT 1) */",
        "SELECT * FROM sv_plugins_beta._sv_event_outbox",
        "SELECT @@version",
        "SET SESSION max_statement_time = 0",
        "SET STATEMENT max_statement_time = 0 FOR SELECT SLEEP(5)",
        "START TRANSACTION",
        "COMMIT",
        "LOAD DATA INFILE '/etc/passwd' INTO TABLE notes",
        "SELECT title INTO OUTFILE '/tmp/leak' FROM notes",
        "PREPARE s FROM 'SELECT 1'",
        "CALL sv_admin.drop_plugin_account('beta')",
        "KILL 1",
        "USE sv_plugins_beta",
        "GRANT SELECT ON sv_plugins_alpha.* TO 'svp_beta'@'%'",
        "INSERT INTO sv_plugins.core__users VALUES (2, 'Eve', 'e')",
        "DROP TABLE sv_plugins.core__users",
    ] {
        let refused = db.execute(sql, &[]).unwrap_err();
        assert!(
            matches!(refused, FenceError::Denied { .. }),
            "{sql}: {refused}"
        );
    }
    assert!(matches!(
        db.execute("SELECT 1; SELECT 2", &[]).unwrap_err(),
        FenceError::MultipleStatements { .. }
    ));

    // Deadlines: a statement's (limits.statement_ms), and the request's.
    let mut quick = open(
        &f,
        "alpha",
        Limits {
            statement_ms: 300,
            ..Limits::default()
        },
    );
    let heavy = "SELECT count(*) FROM information_schema.columns a, information_schema.columns b, information_schema.columns c";
    let started = Instant::now();
    let stopped = quick.execute(heavy, &[]).unwrap_err();
    assert!(matches!(stopped, FenceError::Deadline { .. }), "{stopped}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Stopped from outside (KILL QUERY by the watchdog), before the server's backstop.
    assert_eq!(quick.stopped_at_deadline(), 1);
    // The kill does not reach the connection's next statement.
    assert_eq!(
        common::rows(quick.execute("SELECT 1", &[]).unwrap()),
        [vec![SqlValue::Integer(1)]]
    );
    db.begin(false).unwrap();
    db.set_request_deadline(Some(Instant::now() + Duration::from_millis(200)));
    let stopped = db.execute(heavy, &[]).unwrap_err();
    assert!(matches!(stopped, FenceError::Deadline { .. }), "{stopped}");
    db.set_request_deadline(None);
    db.rollback().unwrap();

    // Cursors hand out every row once, in batches.
    db.begin(true).unwrap();
    db.execute(
        "INSERT INTO notes (title) WITH RECURSIVE d(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM d WHERE i < 49)
         SELECT CONCAT('note ', a.i * 50 + b.i) FROM d a, d b",
        &[],
    )
    .unwrap();
    let cursor = db
        .open_cursor("SELECT id FROM notes ORDER BY id", &[])
        .unwrap();
    assert_eq!(&*db.cursor_columns(cursor).unwrap(), ["id"]);
    let mut seen = 0;
    loop {
        let batch = db.cursor_next(cursor, 1000).unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 1000);
        seen += batch.len();
    }
    assert_eq!(seen, 2501);
    assert!(matches!(
        db.open_cursor("DELETE FROM notes", &[]).unwrap_err(),
        FenceError::NotAQuery { .. }
    ));

    // Events exist only once their request commits, and are the plugin's own.
    let event = db.emit_event("note.created", "{\"id\": 1}").unwrap();
    assert_eq!(event.len(), 32);
    let mut beta = open(&f, "beta", Limits::default());
    assert!(beta.pending_events(10).unwrap().is_empty());
    db.commit().unwrap();
    let pending = db.pending_events(10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].0.as_str(), pending[0].1.as_str()),
        (event.as_str(), "note.created")
    );
    assert!(beta.pending_events(10).unwrap().is_empty());
    db.mark_delivered(&[event], 1_000, 0).unwrap();
    assert!(db.pending_events(10).unwrap().is_empty());
}
