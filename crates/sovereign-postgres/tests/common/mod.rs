//! What the PostgreSQL suites share: a real server (`scripts/postgres`), the stores of a
//! platform with two plugins on it, and the statements a plugin's role must not run.

#![allow(dead_code)]

use std::path::PathBuf;

use sovereign_postgres::{Cluster, PluginRole, RolePlan, migrate};

pub fn cluster() -> Cluster {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    Cluster::start(&script).unwrap()
}

pub fn password() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// The error code of a failed batch (panics if it ran).
pub fn refused(client: &mut postgres::Client, sql: &str) -> String {
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
pub const HOSTILE: &[(&str, &str)] = &[
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
    // The provisioning functions are the plugin store's role's alone.
    (
        "SELECT sv_admin.create_plugin_role('evil', 'a-long-enough-password', 1, 1)",
        "42501",
    ),
    ("SELECT sv_admin.drop_plugin_role('notes')", "42501"),
    (
        "SELECT sv_admin.grant_mirrors('tasks', ARRAY['users.email'])",
        "42501",
    ),
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

/// A server with the core and plugin databases, the roles of `tasks` (granted
/// `users.id` and `users.display_name`) and `notes` (granted nothing), the plugin
/// database's bookkeeping, a mirror table with one user, and `notes`' secret note.
pub struct Stores {
    pub server: Cluster,
    pub core_url: String,
    pub plugins_url: String,
    pub tasks_url: String,
    pub notes_url: String,
    pub plan: RolePlan,
}

impl Stores {
    pub fn start() -> Stores {
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
            Some(&core_url),
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

        // The plugin store's owner (svc_plugins) deploys its bookkeeping and builds a
        // mirror table; the plan runs again and grants on them.
        let mut store = connect(&plugins_url);
        migrate::deploy(&mut store, &migrate::plugin_store_system()).unwrap();
        store
            .batch_execute(
                "CREATE TABLE core.core__users (id bigint PRIMARY KEY, display_name text, email text);
                 INSERT INTO core.core__users VALUES (1, 'Ada', 'ada@example.com');
                 CREATE TABLE public.sv_bookkeeping (a int);",
            )
            .unwrap();
        plan.apply(server.admin_url()).unwrap();

        // The other plugin's data, made by that plugin.
        let notes_url = server.url("svp_notes", &notes_pw, "sv_plugins");
        connect(&notes_url)
            .batch_execute("CREATE TABLE notes__notes (id serial PRIMARY KEY, body text); INSERT INTO notes__notes (body) VALUES ('the secret')")
            .unwrap();
        Stores {
            tasks_url: server.url("svp_tasks", &tasks_pw, "sv_plugins"),
            notes_url,
            server,
            core_url,
            plugins_url,
            plan,
        }
    }

    /// How many notes `notes` has (its secret must stay one).
    pub fn notes_count(&self) -> i64 {
        connect(&self.notes_url)
            .query_one("SELECT count(*) FROM notes__notes", &[])
            .unwrap()
            .get(0)
    }
}
