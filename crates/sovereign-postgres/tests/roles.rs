//! The roles and grants on a real PostgreSQL server (started by `scripts/postgres` as an
//! unprivileged user): a plugin's role reaches its own schema and its granted mirror
//! columns, and every way out we know of is refused by the database itself.

mod common;

use std::process::Command;

use common::{HOSTILE, Stores, cluster, connect, password, refused};
use sovereign_postgres::{PluginRole, RolePlan};

#[test]
fn a_plugin_role_reaches_its_schema_and_granted_columns_and_nothing_else() {
    let stores = Stores::start();
    let mut store = connect(&stores.plugins_url);

    // The core database: its owner only.
    let mut core = connect(&stores.core_url);
    core.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, email text); INSERT INTO users VALUES (1, 'ada@example.com')")
        .unwrap();
    for url in [&stores.tasks_url, &stores.plugins_url] {
        let other_database = url.replace("/sv_plugins", "/sv_core");
        let err = postgres::Client::connect(&other_database, postgres::NoTls)
            .err()
            .unwrap_or_else(|| panic!("{url} connected to the core database"));
        assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{url}: {err}");
    }

    // The other plugin's data, made by that plugin.
    let mut notes = connect(&stores.notes_url);
    let in_schema: String = notes
        .query_one(
            "SELECT schemaname::text FROM pg_tables WHERE tablename = 'notes__notes'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        in_schema, "notes",
        "unqualified names land in the plugin's schema"
    );

    // The plugin's own work, with the same statements as on SQLite.
    let mut tasks = connect(&stores.tasks_url);
    tasks
        .batch_execute(
            "CREATE TABLE tasks__tasks (id bigserial PRIMARY KEY, title text NOT NULL, assignee bigint);
             CREATE INDEX tasks__tasks_assignee ON tasks__tasks (assignee);
             INSERT INTO tasks__tasks (title, assignee) VALUES ('write docs', 1);",
        )
        .unwrap();
    let row = tasks
        .query_one(
            "SELECT t.title, u.display_name FROM tasks__tasks t JOIN core__users u ON u.id = t.assignee",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("write docs".to_owned(), "Ada".to_owned())
    );

    assert!(HOSTILE.len() >= 60, "{} statements", HOSTILE.len());
    let mut wrong = Vec::new();
    for (sql, expected) in HOSTILE {
        let code = refused(&mut tasks, sql);
        if code != *expected {
            wrong.push(format!("{sql}: {code} (expected {expected})"));
        }
    }
    assert!(
        wrong.is_empty(),
        "refused differently:\n{}",
        wrong.join("\n")
    );

    // Nothing changed behind the refusals.
    assert_eq!(stores.notes_count(), 1);
    let users: i64 = store
        .query_one("SELECT count(*) FROM core.core__users", &[])
        .unwrap()
        .get(0);
    assert_eq!(users, 1);
    // The plugin with no grants does not even see the mirror schema's tables.
    assert_eq!(
        refused(&mut notes, "SELECT id FROM core.core__users"),
        "42501"
    );
}

#[test]
fn the_printed_script_is_the_applied_plan_and_bad_urls_are_refused() {
    let server = cluster();
    let (core_pw, plugins_pw) = (password(), password());
    let plan = RolePlan::new(
        Some(&server.url("svc_core", &core_pw, "sv_core")),
        &server.url("svc_plugins", &plugins_pw, "sv_plugins"),
        vec![],
    )
    .unwrap();
    let script = plan.print();
    assert!(script.contains("\\connect \"sv_core\"") && script.contains("\\gexec"));
    // psql runs the printed script as a DBA would.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roles.sql");
    std::fs::write(&file, &script).unwrap();
    for _ in 0..2 {
        let out = Command::new("psql")
            .arg(server.admin_url())
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut core = connect(&server.url("svc_core", &core_pw, "sv_core"));
    core.batch_execute("CREATE TABLE t (a int)").unwrap();

    let same_db = RolePlan::new(
        Some(&server.url("svc_core", "a", "sv")),
        &server.url("svc_plugins", "b", "sv"),
        vec![],
    );
    assert!(same_db.unwrap_err().to_string().contains("same database"));
    let same_role = RolePlan::new(
        Some(&server.url("svc", "a", "core")),
        &server.url("svc", "a", "plugins"),
        vec![],
    );
    assert!(same_role.unwrap_err().to_string().contains("same role"));
    for url in [
        "file:data/core.db",
        "postgres://svc_core@127.0.0.1/sv_core",
        "postgres://svc_core:pw@127.0.0.1/",
        "postgres://Svc-Core:pw@127.0.0.1/sv_core",
    ] {
        let err = RolePlan::new(
            Some(url),
            &server.url("svc_plugins", "b", "plugins"),
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("DATABASE_URL"), "{url}: {err}");
    }
}

#[test]
fn the_plugin_stores_role_provisions_and_drops_plugin_roles_and_nothing_else() {
    let stores = Stores::start();
    let mut owner = connect(&stores.plugins_url);
    let journal = PluginRole {
        id: "journal".into(),
        password: password(),
        grants: vec![("users".into(), "id".into())],
        connection_limit: 3,
        statement_ms: 500,
    };
    owner.batch_execute(&journal.create_sql()).unwrap();
    owner.batch_execute(&journal.grant_sql()).unwrap();
    // Twice is the same.
    owner.batch_execute(&journal.create_sql()).unwrap();
    let journal_url = stores
        .server
        .url("svp_journal", &journal.password, "sv_plugins");
    let mut plugin = connect(&journal_url);
    plugin
        .batch_execute(
            "CREATE TABLE journal__entries (id bigint); INSERT INTO journal__entries VALUES (1)",
        )
        .unwrap();
    let row = plugin
        .query_one(
            "SELECT current_setting('search_path'), (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'journal'), (SELECT count(*) FROM core__users)",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "journal, core");
    assert_eq!(row.get::<_, String>(1), "svp_journal");
    assert_eq!(row.get::<_, i64>(2), 1, "the granted column's table");
    assert_eq!(
        refused(&mut plugin, "SELECT display_name FROM core__users"),
        "42501"
    );
    assert_eq!(
        refused(&mut plugin, "SELECT * FROM notes.notes__notes"),
        "42501"
    );
    drop(plugin);

    // Names that are not plugin ids never reach a statement.
    for (sql, code) in [
        (
            "SELECT sv_admin.create_plugin_role('x''; DROP ROLE svc_core; --', 'a-long-enough-password', 1, 1)",
            "22023",
        ),
        (
            "SELECT sv_admin.create_plugin_role('core', 'a-long-enough-password', 1, 1)",
            "22023",
        ),
        (
            "SELECT sv_admin.create_plugin_role('Evil', 'a-long-enough-password', 1, 1)",
            "22023",
        ),
        (
            "SELECT sv_admin.create_plugin_role('ok', 'short', 1, 1)",
            "22023",
        ),
        ("SELECT sv_admin.drop_plugin_role('')", "22023"),
        ("SELECT sv_admin.drop_plugin_role(NULL)", "22023"),
        (
            "SELECT sv_admin.grant_mirrors('journal', ARRAY['users.id); DROP TABLE x; --'])",
            "22023",
        ),
        // The functions are the only way: the store's role itself creates no roles.
        ("CREATE ROLE svp_direct LOGIN", "42501"),
        ("ALTER ROLE svc_core PASSWORD 'stolen'", "42501"),
    ] {
        assert_eq!(refused(&mut owner, sql), code, "{sql}");
    }

    // Dropping takes the role, its schema and its events; the others are untouched.
    owner
        .batch_execute(&PluginRole::drop_sql("journal"))
        .unwrap();
    owner
        .batch_execute(&PluginRole::drop_sql("journal"))
        .unwrap();
    let gone = owner
        .query_one(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = 'svp_journal'), \
                    (SELECT count(*) FROM pg_namespace WHERE nspname = 'journal')",
            &[],
        )
        .unwrap();
    assert_eq!((gone.get::<_, i64>(0), gone.get::<_, i64>(1)), (0, 0));
    assert!(postgres::Client::connect(&journal_url, postgres::NoTls).is_err());
    assert_eq!(stores.notes_count(), 1);
}
