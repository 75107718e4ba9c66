//! The example plugins' own SQL on MySQL/MariaDB, unchanged: `tasks` and `notes` get
//! their accounts and databases from the provisioning procedures, their
//! `migrations/mysql/` apply through their fenced connections, and the statements their
//! code sends (copied here from `plugins/*/src/lib.rs`, tables named as on SQLite, the
//! mirror as `core__users`) run with the same results as on SQLite.

mod common;

use std::path::PathBuf;

use sovereign_db_plugins::{FencedConnection, Limits, Outcome, SqlValue};
use sovereign_mysql::{MyPluginConfig, MyPluginDb};

const PASSWORD: &str = "examplesexamples1";

const SELECT_TASKS: &str =
    "SELECT t.id, t.list_id, t.title, t.assignee, u.display_name AS assignee_name,
            u.avatar_url AS assignee_avatar, t.done, t.created_at
     FROM tasks__tasks t LEFT JOIN core__users u ON u.id = t.assignee";

fn changed(outcome: Outcome) -> (u64, i64) {
    match outcome {
        Outcome::Changed {
            rows_affected,
            last_insert_id,
        } => (rows_affected, last_insert_id),
        other => panic!("not a change: {other:?}"),
    }
}

fn text(v: &SqlValue) -> &str {
    match v {
        SqlValue::Text(t) => t,
        other => panic!("not text: {other:?}"),
    }
}

/// Applies the package's `migrations/mysql/` (again: nothing to do).
fn migrate(db: &mut MyPluginDb, id: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins")
        .join(id)
        .join("migrations/mysql");
    let set =
        sovereign_db::MigrationSet::from_dir(&sovereign_db_plugins::migration_scope(id), &dir)
            .unwrap();
    assert_eq!(db.migrate(&set).unwrap(), ["0001_init.sql"]);
    assert!(db.migrate(&set).unwrap().is_empty());
}

fn iso_time(value: &SqlValue) -> bool {
    let t = text(value).as_bytes();
    t.len() == 24 && t[4] == b'-' && t[10] == b'T' && t[19] == b'.' && t[23] == b'Z'
}

#[test]
fn tasks_and_notes_run_their_own_sql_unchanged() {
    let server = common::plugin_store(
        "CREATE TABLE core__users (id BIGINT PRIMARY KEY, display_name TEXT, avatar_url TEXT, email TEXT);
         INSERT INTO core__users VALUES (1, 'Ada', NULL, 'ada@example.com'), (2, 'Bob', 'https://a/b', 'bob@example.com')",
        &["tasks", "notes"],
        PASSWORD,
        6,
        ("tasks", "id,display_name,avatar_url"),
    );
    let open = |id: &str| {
        MyPluginDb::open(&MyPluginConfig {
            plugin_id: id.into(),
            url: server.url(&format!("svp_{id}"), PASSWORD, &format!("sv_plugins_{id}")),
            limits: Limits::default(),
        })
        .unwrap()
    };

    let mut tasks = open("tasks");
    migrate(&mut tasks, "tasks");
    tasks.begin(true).unwrap();
    let (_, list) = changed(
        tasks
            .execute(
                "INSERT INTO tasks__lists (name, owner) VALUES (?1, ?2)",
                &[SqlValue::Text("home".into()), SqlValue::Integer(1)],
            )
            .unwrap(),
    );
    assert_eq!(list, 1);
    let lists = common::rows(
        tasks
            .execute(
                "SELECT id, name, owner, created_at FROM tasks__lists WHERE id = ?1",
                &[SqlValue::Integer(list)],
            )
            .unwrap(),
    );
    assert!(iso_time(&lists[0][3]), "{lists:?}");
    assert_eq!(
        common::rows(
            tasks
                .execute(
                    "SELECT 1 FROM tasks__lists WHERE id = ?1",
                    &[SqlValue::Integer(list)]
                )
                .unwrap()
        )
        .len(),
        1
    );
    for (title, assignee) in [("first", 2), ("second", 1)] {
        tasks
            .execute(
                "INSERT INTO tasks__tasks (list_id, title, assignee, created_by) VALUES (?1, ?2, ?3, ?4)",
                &[
                    SqlValue::Integer(list),
                    SqlValue::Text(title.into()),
                    SqlValue::Integer(assignee),
                    SqlValue::Integer(1),
                ],
            )
            .unwrap();
    }
    let checked = tasks
        .execute(
            "INSERT INTO tasks__tasks (list_id, title, assignee, created_by) VALUES (?1, ?2, ?3, ?4)",
            &[
                SqlValue::Integer(list),
                SqlValue::Text(String::new()),
                SqlValue::Null,
                SqlValue::Integer(1),
            ],
        )
        .unwrap_err();
    assert!(
        matches!(checked, sovereign_db_plugins::FenceError::Constraint { .. }),
        "the title's CHECK: {checked}"
    );
    assert_eq!(
        changed(
            tasks
                .execute(
                    "UPDATE tasks__tasks SET done = 1 WHERE id = ?1 AND done = 0",
                    &[SqlValue::Integer(1)]
                )
                .unwrap()
        )
        .0,
        1
    );
    assert_eq!(
        changed(
            tasks
                .execute(
                    "UPDATE tasks__tasks SET assignee = ?2 WHERE id = ?1",
                    &[SqlValue::Integer(2), SqlValue::Integer(2)]
                )
                .unwrap()
        )
        .0,
        1
    );
    tasks.commit().unwrap();
    // The listing joins the mirror by its SQLite name, through the granted columns.
    let listed = common::rows(
        tasks
            .execute(
                &format!("{SELECT_TASKS} WHERE t.id > ?1 ORDER BY t.id LIMIT ?2"),
                &[SqlValue::Integer(0), SqlValue::Integer(100)],
            )
            .unwrap(),
    );
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0][2], SqlValue::Text("first".into()));
    assert_eq!(listed[0][4], SqlValue::Text("Bob".into()));
    assert_eq!(listed[0][5], SqlValue::Text("https://a/b".into()));
    assert_eq!(listed[0][6], SqlValue::Integer(1));
    assert!(iso_time(&listed[0][7]));
    let by_assignee = common::rows(
        tasks
            .execute(
                &format!(
                    "{SELECT_TASKS} WHERE t.assignee = ?1 AND t.id > ?2 ORDER BY t.id LIMIT ?3"
                ),
                &[
                    SqlValue::Integer(2),
                    SqlValue::Integer(0),
                    SqlValue::Integer(10),
                ],
            )
            .unwrap(),
    );
    assert_eq!(by_assignee.len(), 2);
    // The export reads through a cursor.
    tasks.begin(false).unwrap();
    let cursor = tasks
        .open_cursor(&format!("{SELECT_TASKS} ORDER BY t.id"), &[])
        .unwrap();
    assert_eq!(tasks.cursor_next(cursor, 1000).unwrap().len(), 2);
    tasks.rollback().unwrap();
    assert_eq!(
        changed(
            tasks
                .execute(
                    "DELETE FROM tasks__tasks WHERE id = ?1",
                    &[SqlValue::Integer(2)]
                )
                .unwrap()
        )
        .0,
        1
    );
    // The mirror's email is not among the view's columns, nor reachable underneath.
    assert!(tasks.execute("SELECT email FROM core__users", &[]).is_err());

    let mut notes = open("notes");
    migrate(&mut notes, "notes");
    let (_, note) = changed(
        notes
            .execute(
                "INSERT INTO notes__notes (owner, title, body) VALUES (?1, ?2, ?3)",
                &[
                    SqlValue::Integer(7),
                    SqlValue::Text("first".into()),
                    SqlValue::Text("b".into()),
                ],
            )
            .unwrap(),
    );
    let before = common::rows(
        notes
            .execute(
                "SELECT id, title, body, updated_at FROM notes__notes WHERE id = ?1 AND owner = ?2",
                &[SqlValue::Integer(note), SqlValue::Integer(7)],
            )
            .unwrap(),
    );
    assert!(iso_time(&before[0][3]), "{before:?}");
    assert_eq!(
        changed(
            notes
                .execute(
                    "UPDATE notes__notes SET title = ?3, body = ?4, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         WHERE id = ?1 AND owner = ?2",
                    &[
                        SqlValue::Integer(note),
                        SqlValue::Integer(7),
                        SqlValue::Text("renamed".into()),
                        SqlValue::Text("new body".into()),
                    ],
                )
                .unwrap()
        )
        .0,
        1
    );
    let after = common::rows(
        notes
            .execute(
                "SELECT id, title, body, updated_at FROM notes__notes WHERE owner = ?1 ORDER BY id",
                &[SqlValue::Integer(7)],
            )
            .unwrap(),
    );
    assert_eq!(after[0][1], SqlValue::Text("renamed".into()));
    assert!(iso_time(&after[0][3]), "{after:?}");
    assert_eq!(
        changed(
            notes
                .execute(
                    "DELETE FROM notes__notes WHERE id = ?1 AND owner = ?2",
                    &[SqlValue::Integer(note), SqlValue::Integer(7)]
                )
                .unwrap()
        )
        .0,
        1
    );
}
