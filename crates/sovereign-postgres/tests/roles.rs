//! The roles and grants on a real PostgreSQL server (started by `scripts/postgres` as an
//! unprivileged user): a plugin's role reaches its own schema and its granted mirror
//! columns, and every way out we know of is refused by the database itself.

use std::path::PathBuf;
use std::process::Command;

use sovereign_postgres::{Cluster, PluginRole, RolePlan};

fn cluster() -> Cluster {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    Cluster::start(&script).unwrap()
}

fn password() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// The error code of a failed batch (panics if it ran).
fn refused(client: &mut postgres::Client, sql: &str) -> String {
    match client.batch_execute(sql) {
        Ok(()) => panic!("ran, but must be refused: {sql}"),
        Err(e) => {
            let code = e
                .code()
                .map(|c| c.code().to_owned())
                .unwrap_or_else(|| format!("no SQLSTATE: {e}"));
            // A failed statement may leave a transaction open, or a setting changed.
            let _ = client.batch_execute("ROLLBACK");
            let _ = client.batch_execute("RESET search_path");
            code
        }
    }
}

/// Statements a plugin's role must not run, with the SQLSTATE the server answers
/// (42501: insufficient privilege; others where PostgreSQL refuses differently).
const HOSTILE: &[(&str, &str)] = &[
    // Mirror columns it was not granted, and writes to the mirror.
    ("SELECT * FROM core__users", "42501"),
    ("SELECT email FROM core.core__users", "42501"),
    ("SELECT id FROM core__users WHERE email LIKE '%a%'", "42501"),
    (
        "INSERT INTO core__users (id, display_name) VALUES (99, 'x')",
        "42501",
    ),
    ("UPDATE core__users SET display_name = 'x'", "42501"),
    ("DELETE FROM core__users", "42501"),
    ("TRUNCATE core.core__users", "42501"),
    ("SELECT id FROM core__users FOR UPDATE", "42501"),
    (
        "BEGIN; LOCK TABLE core.core__users IN ACCESS EXCLUSIVE MODE; COMMIT",
        "42501",
    ),
    ("DROP TABLE core.core__users", "42501"),
    ("ALTER TABLE core.core__users ADD COLUMN x int", "42501"),
    ("CREATE INDEX ON core.core__users (display_name)", "42501"),
    ("COMMENT ON TABLE core.core__users IS 'x'", "42501"),
    ("GRANT SELECT ON core.core__users TO svp_notes", "42501"),
    ("REINDEX TABLE core.core__users", "42501"),
    (
        "CREATE TABLE tasks__pins (user_id bigint REFERENCES core.core__users (id))",
        "42501",
    ),
    (
        "CREATE TRIGGER t AFTER INSERT ON core.core__users FOR EACH ROW EXECUTE FUNCTION pg_catalog.now()",
        "42501",
    ),
    ("CREATE TABLE core.evil (a int)", "42501"),
    // Another plugin's schema, every way.
    ("SELECT * FROM notes.notes__notes", "42501"),
    // A schema it may not use is skipped by name resolution: "does not exist".
    (
        "SELECT set_config('search_path', 'notes', false); SELECT * FROM notes__notes",
        "42P01",
    ),
    (
        "SET search_path = notes; SELECT * FROM notes__notes",
        "42P01",
    ),
    (
        "INSERT INTO notes.notes__notes (body) VALUES ('x')",
        "42501",
    ),
    ("CREATE TABLE notes.evil (a int)", "42501"),
    ("DROP SCHEMA notes CASCADE", "42501"),
    ("ALTER SCHEMA notes OWNER TO svp_tasks", "42501"),
    ("ALTER TABLE notes.notes__notes OWNER TO svp_tasks", "42501"),
    (
        "DO $$ BEGIN EXECUTE 'SELECT * FROM notes.notes__notes'; END $$",
        "42501",
    ),
    (
        "CREATE VIEW tasks__peek AS SELECT * FROM notes.notes__notes",
        "42501",
    ),
    (
        "ALTER DEFAULT PRIVILEGES FOR ROLE svp_notes GRANT SELECT ON TABLES TO svp_tasks",
        "42501",
    ),
    ("REASSIGN OWNED BY svp_notes TO svp_tasks", "42501"),
    // The plugin store's bookkeeping.
    ("SELECT * FROM public.sv_bookkeeping", "42501"),
    ("CREATE TABLE public.evil (a int)", "42501"),
    // Becoming someone else.
    ("SET ROLE svc_plugins", "42501"),
    ("SET ROLE svc_core", "42501"),
    ("SET ROLE svp_notes", "42501"),
    ("SET SESSION AUTHORIZATION svc_core", "42501"),
    ("SET SESSION AUTHORIZATION sv_admin", "42501"),
    ("GRANT svc_plugins TO svp_tasks", "42501"),
    ("ALTER ROLE svp_tasks SUPERUSER", "42501"),
    ("ALTER ROLE svp_tasks CREATEROLE", "42501"),
    ("ALTER ROLE svp_notes PASSWORD 'taken'", "42501"),
    ("CREATE ROLE evil LOGIN", "42501"),
    ("CREATE DATABASE evil", "42501"),
    ("CREATE SCHEMA evil", "42501"),
    // Files, programs and the server.
    ("SELECT pg_read_file('/etc/passwd')", "42501"),
    ("SELECT pg_read_binary_file('/etc/passwd')", "42501"),
    ("SELECT pg_ls_dir('.')", "42501"),
    ("SELECT pg_stat_file('postgresql.conf')", "42501"),
    ("COPY tasks__tasks TO PROGRAM 'id'", "42501"),
    ("COPY tasks__tasks FROM '/etc/passwd'", "42501"),
    ("COPY (SELECT 1) TO '/tmp/sv-evil'", "42501"),
    ("SELECT lo_import('/etc/passwd')", "42501"),
    ("SELECT lo_export(0, '/tmp/sv-evil')", "42501"),
    ("SELECT pg_reload_conf()", "42501"),
    ("ALTER SYSTEM SET log_statement = 'all'", "42501"),
    ("SET session_replication_role = replica", "42501"),
    ("SELECT * FROM pg_authid", "42501"),
    ("LOAD 'plpgsql'", "42501"),
    ("CREATE EXTENSION dblink", "42501"),
    ("CREATE EXTENSION file_fdw", "42501"),
    (
        "CREATE FUNCTION evil() RETURNS int AS 'libc', 'getpid' LANGUAGE c",
        "42501",
    ),
    ("CREATE FOREIGN DATA WRAPPER evil", "42501"),
    ("CREATE PUBLICATION evil FOR ALL TABLES", "42501"),
    ("CREATE TEMP TABLE scratch (a int)", "42501"),
    // Running past the deadline its sessions start with.
    ("SELECT pg_sleep(5)", "57014"),
];

#[test]
fn a_plugin_role_reaches_its_schema_and_granted_columns_and_nothing_else() {
    let server = cluster();
    let (core_pw, plugins_pw, tasks_pw, notes_pw) =
        (password(), password(), password(), password());
    let core_url = server.url("svc_core", &core_pw, "sv_core");
    let plugins_url = server.url("svc_plugins", &plugins_pw, "sv_plugins");
    let role = |id: &str, pw: &str, grants: &[(&str, &str)]| PluginRole {
        id: id.into(),
        password: pw.into(),
        grants: grants
            .iter()
            .map(|(s, c)| (s.to_string(), c.to_string()))
            .collect(),
        connection_limit: 4,
        statement_ms: 300,
    };
    let plan = RolePlan::new(
        &core_url,
        &plugins_url,
        vec![
            role(
                "tasks",
                &tasks_pw,
                &[("users", "id"), ("users", "display_name")],
            ),
            role("notes", &notes_pw, &[]),
        ],
    )
    .unwrap();
    plan.apply(server.admin_url()).unwrap();
    // Idempotent: a second run changes nothing and fails nothing.
    plan.apply(server.admin_url()).unwrap();

    // The mirror writer (svc_plugins) builds a mirror table and its bookkeeping; the plan
    // runs again and grants the approved columns.
    let mut store = connect(&plugins_url);
    store
        .batch_execute(
            "CREATE TABLE core.core__users (id bigint PRIMARY KEY, display_name text, email text);
             INSERT INTO core.core__users VALUES (1, 'Ada', 'ada@example.com');
             CREATE TABLE public.sv_bookkeeping (a int);",
        )
        .unwrap();
    plan.apply(server.admin_url()).unwrap();

    // The core database: its owner only.
    let mut core = connect(&core_url);
    core.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, email text); INSERT INTO users VALUES (1, 'ada@example.com')")
        .unwrap();
    for (who, pw) in [("svp_tasks", &tasks_pw), ("svc_plugins", &plugins_pw)] {
        let err = postgres::Client::connect(&server.url(who, pw, "sv_core"), postgres::NoTls)
            .err()
            .unwrap_or_else(|| panic!("{who} connected to the core database"));
        assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{who}: {err}");
    }

    // The other plugin's data, made by that plugin.
    let mut notes = connect(&server.url("svp_notes", &notes_pw, "sv_plugins"));
    notes
        .batch_execute("CREATE TABLE notes__notes (id serial PRIMARY KEY, body text); INSERT INTO notes__notes (body) VALUES ('the secret')")
        .unwrap();
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
    let mut tasks = connect(&server.url("svp_tasks", &tasks_pw, "sv_plugins"));
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
    let secret: i64 = notes
        .query_one("SELECT count(*) FROM notes__notes", &[])
        .unwrap()
        .get(0);
    assert_eq!(secret, 1);
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
        &server.url("svc_core", &core_pw, "sv_core"),
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
        &server.url("svc_core", "a", "sv"),
        &server.url("svc_plugins", "b", "sv"),
        vec![],
    );
    assert!(same_db.unwrap_err().to_string().contains("same database"));
    let same_role = RolePlan::new(
        &server.url("svc", "a", "core"),
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
        let err = RolePlan::new(url, &server.url("svc_plugins", "b", "plugins"), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("DATABASE_URL"), "{url}: {err}");
    }
}
