//! `sv postgres:roles` against a real PostgreSQL server (scripts/postgres).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Workdir;
use sovereign_postgres::Cluster;

fn psql(url: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
        .output()
        .unwrap()
}

#[test]
fn sv_creates_the_stores_roles_and_databases_and_prints_them_for_a_dba() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = Cluster::start(&script).unwrap();
    let core = cluster.url("svc_core", "core-secret", "sv_core");
    let plugins = cluster.url("svc_plugins", "plugins-secret", "sv_plugins");
    let w = Workdir::new();
    let urls = [
        "--database-url",
        core.as_str(),
        "--plugin-database-url",
        plugins.as_str(),
    ];

    let printed = w.sv_ok(&[&["postgres:roles", "--print"][..], &urls].concat());
    assert!(
        printed.contains("CREATE DATABASE \"sv_core\" OWNER \"svc_core\""),
        "{printed}"
    );
    let refused = w.sv_err(&[&["postgres:roles", "--apply"][..], &urls].concat());
    assert!(refused.contains("--admin-url"), "{refused}");
    for _ in 0..2 {
        let out = w.sv_ok(
            &[
                &[
                    "postgres:roles",
                    "--apply",
                    "--admin-url",
                    cluster.admin_url(),
                ][..],
                &urls,
            ]
            .concat(),
        );
        assert!(out.contains("applied"), "{out}");
    }
    let made = psql(&core, "CREATE TABLE t (a int); SELECT current_user");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // The plugin store's role cannot even connect to the core database.
    let crossed = psql(
        &cluster.url("svc_plugins", "plugins-secret", "sv_core"),
        "SELECT 1",
    );
    assert!(!crossed.status.success());
    assert!(
        String::from_utf8_lossy(&crossed.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&crossed.stderr)
    );

    let same = w.sv_err(&[
        "postgres:roles",
        "--print",
        "--database-url",
        &core,
        "--plugin-database-url",
        &cluster.url("svc_plugins", "x", "sv_core"),
    ]);
    assert!(same.contains("same database"), "{same}");
}

/// One backend's plugin store, ready for `notes` (migrated), and the spec the host gets.
struct NotesStore {
    spec: sovereign_protocol::PluginSpec,
    location: sovereign_db_plugins::StoreLocation,
    _dir: tempfile::TempDir,
    /// The PostgreSQL cluster or MariaDB server, kept running.
    _server: Option<Box<dyn std::any::Any>>,
}

fn notes_manifest() -> sovereign_db_plugins::Manifest {
    let file = plugins_dir().join("notes/plugin.json");
    sovereign_db_plugins::Manifest::parse(
        &file.display().to_string(),
        &std::fs::read_to_string(&file).unwrap(),
        &sovereign_db_plugins::mirror::MirrorCatalog::default(),
    )
    .unwrap()
}

/// A throwaway MariaDB from `scripts/mariadb`.
fn mariadb() -> sovereign_mysql::Server {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb");
    sovereign_mysql::Server::start(&script).unwrap()
}

fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins")
}

impl NotesStore {
    fn new(backend: sovereign_db_plugins::Backend) -> NotesStore {
        use sovereign_db_plugins::{Backend, PluginDb, PluginDbConfig, plugin_migrations_for};
        let manifest = notes_manifest();
        assert!(manifest.backends.contains(&backend));
        let migrations = plugin_migrations_for(&plugins_dir(), "notes", backend).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let location = sovereign_db_plugins::StoreLocation {
            shared_store: dir.path().join("plugins.db"),
            isolated_dir: dir.path().join("plugins"),
            mirror_file: None,
        };
        let (postgres, cluster) = match backend {
            Backend::Sqlite => {
                sovereign_db_plugins::open_shared_store(&location.shared_store).unwrap();
                std::fs::create_dir_all(&location.isolated_dir).unwrap();
                let db = PluginDb::open(
                    &location,
                    PluginDbConfig {
                        plugin_id: "notes".into(),
                        mode: manifest.database,
                        grants: vec![],
                        limits: manifest.limits,
                    },
                )
                .unwrap();
                db.migrate(&migrations).unwrap();
                (None, None)
            }
            Backend::Postgres => {
                let script =
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
                let cluster = Cluster::start(&script).unwrap();
                let plugins_url = cluster.url("svc_plugins", "plugins-secret", "sv_plugins");
                // The core store stays on SQLite: the plan makes the plugin side only.
                let plan = sovereign_postgres::RolePlan::new(
                    None,
                    &plugins_url,
                    vec![sovereign_postgres::PluginRole {
                        id: "notes".into(),
                        password: "notes-secret-password".into(),
                        grants: vec![],
                        connection_limit: 8,
                        statement_ms: manifest.limits.statement_ms,
                    }],
                )
                .unwrap();
                plan.apply(cluster.admin_url()).unwrap();
                let mut owner = postgres::Client::connect(&plugins_url, postgres::NoTls).unwrap();
                sovereign_postgres::migrate::deploy(
                    &mut owner,
                    &sovereign_postgres::migrate::plugin_store_system(),
                )
                .unwrap();
                plan.apply(cluster.admin_url()).unwrap();
                let url = cluster.url("svp_notes", "notes-secret-password", "sv_plugins");
                let mut db =
                    sovereign_postgres::PgPluginDb::open(&sovereign_postgres::PgPluginConfig {
                        plugin_id: "notes".into(),
                        url: url.clone(),
                        limits: manifest.limits,
                    })
                    .unwrap();
                assert_eq!(db.migrate(&migrations).unwrap(), ["0001_init.sql"]);
                (
                    Some(sovereign_protocol::StoreLogin::Postgres { url }),
                    Some(Box::new(cluster) as Box<dyn std::any::Any>),
                )
            }
            Backend::Mysql => {
                let server = mariadb();
                let plugins_url = server.url("svc_plugins", "plugins-secret-12", "sv_plugins");
                sovereign_mysql::RolePlan::new(None, &plugins_url)
                    .unwrap()
                    .apply(server.admin_url())
                    .unwrap();
                let mut owner = sovereign_mysql::roles::connect(&plugins_url).unwrap();
                mysql::prelude::Queryable::exec_drop(
                    &mut owner,
                    "CALL sv_admin.create_plugin_account(?, ?, ?)",
                    ("notes", "notessecretpassword1", 8),
                )
                .unwrap();
                let url = server.url("svp_notes", "notessecretpassword1", "sv_plugins_notes");
                let mut db = sovereign_mysql::MyPluginDb::open(&sovereign_mysql::MyPluginConfig {
                    plugin_id: "notes".into(),
                    url: url.clone(),
                    limits: manifest.limits,
                })
                .unwrap();
                assert_eq!(db.migrate(&migrations).unwrap(), ["0001_init.sql"]);
                (
                    Some(sovereign_protocol::StoreLogin::Mysql { url }),
                    Some(Box::new(server) as Box<dyn std::any::Any>),
                )
            }
        };
        NotesStore {
            spec: sovereign_protocol::PluginSpec {
                id: "notes".into(),
                grants: vec![],
                manifest,
                store_login: postgres,
            },
            location,
            _dir: dir,
            _server: cluster,
        }
    }
}

/// The `notes` component, built once, runs unchanged on a SQLite, a PostgreSQL and a
/// MySQL plugin store: the same requests, the same answers.
#[test]
fn the_notes_plugin_runs_unchanged_on_every_plugin_store_backend() {
    use sovereign_db_plugins::Backend;
    use sovereign_host::runtime::Runtime;
    use sovereign_protocol::{Caller, HttpRequest};

    let executor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for backend in [Backend::Sqlite, Backend::Postgres, Backend::Mysql] {
        let store = NotesStore::new(backend);
        let runtime = Runtime::load(
            Runtime::engine().unwrap(),
            // On a database server the host gets no SQLite store at all.
            store.spec.store_login.is_none().then_some(&store.location),
            &plugins_dir(),
            std::slice::from_ref(&store.spec),
        )
        .unwrap();
        assert_eq!(
            runtime.load_report(),
            [("notes".to_owned(), None)],
            "{backend:?}"
        );
        let call = |method: &str, path: &str, user: i64, body: &str| {
            let handled = runtime.handle(
                &executor,
                "notes",
                HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    query: String::new(),
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: body.as_bytes().to_vec(),
                },
                Caller {
                    user_id: user,
                    tenant_id: 1,
                    roles: vec!["member".into()],
                },
                std::time::Instant::now(),
            );
            let response = handled
                .result
                .unwrap_or_else(|e| panic!("{backend:?} {method} {path}: {e:?}"));
            let json = if response.body.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&response.body).unwrap()
            };
            (response.status, json)
        };
        let (status, created) = call("POST", "/notes", 7, r#"{"title": " first ", "body": "b"}"#);
        assert_eq!(status, 201, "{backend:?}: {created}");
        assert_eq!(
            (created["id"].as_i64(), created["title"].as_str()),
            (Some(1), Some("first"))
        );
        let stamp = created["updated_at"].as_str().unwrap().to_owned();
        assert!(
            stamp.ends_with('Z') && stamp.len() == 24,
            "{backend:?}: {stamp}"
        );
        let (_, second) = call("POST", "/notes", 7, r#"{"title": "second"}"#);
        assert_eq!(second["id"].as_i64(), Some(2), "{backend:?}");
        assert_eq!(call("GET", "/notes", 7, "").1.as_array().unwrap().len(), 2);
        assert_eq!(
            call("GET", "/notes", 8, "").1,
            serde_json::json!([]),
            "{backend:?}"
        );
        assert_eq!(call("GET", "/notes/1", 8, "").0, 404, "{backend:?}");
        let (status, updated) = call("PUT", "/notes/1", 7, r#"{"title": "renamed", "body": ""}"#);
        assert_eq!(
            (status, updated["title"].as_str()),
            (200, Some("renamed")),
            "{backend:?}"
        );
        assert!(updated["updated_at"].as_str().unwrap() >= stamp.as_str());
        assert_eq!(call("DELETE", "/notes/1", 7, "").0, 204, "{backend:?}");
        assert_eq!(call("GET", "/notes/1", 7, "").0, 404, "{backend:?}");
        let (status, refused) = call("POST", "/notes", 7, r#"{"title": ""}"#);
        assert_eq!(status, 400, "{backend:?}: {refused}");
    }
}

/// How many roles and schemas named after plugin `id` the plugin database has.
/// Asserts that logging in with `url` is refused for want of `CONNECT`.
fn refused_connect(url: &str) {
    let out = psql(url, "SELECT 1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("permission denied for database"),
        "{url}: {stderr}"
    );
}

fn provisioned(admin_url: &str, id: &str) -> (i64, i64) {
    let mut admin = postgres::Client::connect(
        &admin_url.replace("/postgres", "/sv_plugins"),
        postgres::NoTls,
    )
    .unwrap();
    let row = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = 'svp_' || $1),
                    (SELECT count(*) FROM pg_namespace WHERE nspname = $1)",
            &[&id],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// `PLUGIN_DATABASE_URL=postgres://...` with the core on SQLite: the plugin side of the
/// roles, the store's bookkeeping, installing (its role and schema made, its password in
/// the core store), refusals that leave nothing behind, `sv plugins sql`, serving the
/// plugin's routes through the host, `/health`, and removing with `--purge`.
#[test]
fn sv_serves_plugins_from_a_postgres_plugin_store_beside_a_sqlite_core() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = Cluster::start(&script).unwrap();
    let plugins_url = cluster.url("svc_plugins", "plugins-secret", "sv_plugins");
    let w = Workdir::new();
    let pg = ["--plugin-database-url", plugins_url.as_str()];
    let with =
        |args: &[&str]| -> Vec<String> { pg.iter().chain(args).map(|s| s.to_string()).collect() };
    let run_ok =
        |args: &[&str]| w.sv_ok(&with(args).iter().map(String::as_str).collect::<Vec<_>>());
    let run_err =
        |args: &[&str]| w.sv_err(&with(args).iter().map(String::as_str).collect::<Vec<_>>());
    // `sv plugins sql ID STATEMENT`: its JSON answer, or (refused) its error.
    let sql = |id: &str, statement: &str| run_ok(&["plugins", "sql", id, statement, "--json"]);
    let sql_refused = |id: &str, statement: &str| run_err(&["plugins", "sql", id, statement]);

    let applied = run_ok(&[
        "postgres:roles",
        "--apply",
        "--admin-url",
        cluster.admin_url(),
    ]);
    assert!(applied.contains("core store stays on SQLite"), "{applied}");
    let deployed = run_ok(&["migrate:deploy"]);
    assert!(deployed.contains("0001_event_outbox.sql"), "{deployed}");
    assert!(!w.plugins_db().exists(), "no SQLite plugin store is made");

    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins");
    let installed = run_ok(&[
        "plugins",
        "install",
        repo.join("notes").to_str().unwrap(),
        "--yes",
    ]);
    // notes asks for isolated mode: a database of its own, which only its role reaches.
    assert!(installed.contains("/sv_plugins_notes#notes"), "{installed}");
    assert_eq!(provisioned(cluster.admin_url(), "notes"), (1, 1));
    let password: String = common::raw(&w.core_db())
        .query_row(
            "SELECT password FROM plugin_store_logins WHERE plugin_id = 'notes'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(password.len(), 32);
    let own = psql(
        &cluster.url("svp_notes", &password, "sv_plugins_notes"),
        "SELECT count(*) FROM notes__notes",
    );
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    // An isolated plugin's role cannot connect to the shared plugin database.
    refused_connect(&cluster.url("svp_notes", &password, "sv_plugins"));

    // tasks reads mirrored users: installing it builds the mirror on PostgreSQL (typed
    // from the core's columns) and grants its role exactly the columns it asked for.
    run_ok(&[
        "plugins",
        "install",
        repo.join("tasks").to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(provisioned(cluster.admin_url(), "tasks"), (1, 1));
    let tasks_password: String = common::raw(&w.core_db())
        .query_row(
            "SELECT password FROM plugin_store_logins WHERE plugin_id = 'tasks'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // Nor another plugin's role to an isolated plugin's database.
    refused_connect(&cluster.url("svp_tasks", &tasks_password, "sv_plugins_notes"));
    let ungranted = sql_refused("tasks", "SELECT tenant_id FROM core__users");
    assert!(ungranted.contains("may not"), "{ungranted}");
    let written = sql_refused("tasks", "DELETE FROM core__users");
    assert!(written.contains("may not"), "{written}");
    // A package without PostgreSQL migrations: refused, with nothing left behind.
    let memo = w.path().join("memo");
    std::fs::create_dir_all(memo.join("migrations")).unwrap();
    std::fs::write(
        memo.join("plugin.json"),
        r#"{"id": "memo", "name": "Memo", "version": "0.1.0"}"#,
    )
    .unwrap();
    std::fs::write(
        memo.join("migrations/0001_init.sql"),
        "CREATE TABLE memo__items (id INTEGER PRIMARY KEY);",
    )
    .unwrap();
    common::add_component(&memo);
    let refused = run_err(&["plugins", "install", memo.to_str().unwrap(), "--yes"]);
    assert!(refused.contains("\"backends\""), "{refused}");
    assert_eq!(provisioned(cluster.admin_url(), "memo"), (0, 0));
    // A database of its own cannot read the mirrors of the plugin database.
    std::fs::write(
        memo.join("plugin.json"),
        r#"{"id": "memo", "name": "Memo", "version": "0.1.0", "database": "isolated",
            "backends": ["sqlite", "postgres"], "reads": {"users": ["id"]}}"#,
    )
    .unwrap();
    std::fs::create_dir_all(memo.join("migrations/postgres")).unwrap();
    std::fs::write(
        memo.join("migrations/postgres/0001_init.sql"),
        "CREATE TABLE memo__items (id bigint PRIMARY KEY);",
    )
    .unwrap();
    let refused = run_err(&["plugins", "install", memo.to_str().unwrap(), "--yes"]);
    assert!(refused.contains("\"database\": \"shared\""), "{refused}");
    assert_eq!(provisioned(cluster.admin_url(), "memo"), (0, 0));
    // Plugin data per schema: tables, their sizes, the mirror's.
    let inspect = run_ok(&["plugins", "db", "inspect", "notes"]);
    assert!(
        inspect.contains("plugin notes:") && inspect.contains("notes__notes"),
        "{inspect}"
    );
    assert!(!inspect.contains("plugin tasks"), "{inspect}");

    // Migration status reads the store's bookkeeping and the plugin's schema.
    let status = run_ok(&["migrate:status"]);
    assert!(
        status.contains("0001_event_outbox.sql") && status.contains("plugin:notes"),
        "{status}"
    );
    assert!(!status.contains("pending"), "{status}");
    // The doctor reports the PostgreSQL store and each plugin's role.
    let doctor = run_ok(&["doctor"]);
    assert!(
        doctor.contains("answers") && doctor.contains("plugin notes: role svp_notes logs in"),
        "{doctor}"
    );
    // Operations that need SQLite files say so.
    let moved = run_err(&["plugins", "move", "notes", "--to", "shared"]);
    assert!(moved.contains("PostgreSQL"), "{moved}");
    let vacuumed = run_ok(&["plugins", "db", "vacuum"]);
    assert!(vacuumed.contains("postgres://"), "{vacuumed}");

    // `sv plugins sql` runs as the plugin's role.
    let inserted = sql(
        "notes",
        "INSERT INTO notes__notes (owner, title) VALUES (1, 'from sql') RETURNING id",
    );
    assert!(inserted.contains("\"id\""), "{inserted}");
    let fenced = sql_refused("notes", "SELECT * FROM public._sv_migrations");
    assert!(fenced.contains("may not"), "{fenced}");

    w.create_user("root@example.com", "root password 1", true);
    let server = w.start(
        &with(&["serve"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let host = server.wait_host_running();
    assert_eq!(host["plugins"][0]["id"], "notes", "{host}");
    assert_eq!(
        host["plugins"][0]["error"],
        serde_json::Value::Null,
        "{host}"
    );
    let token = server.login("root@example.com", "root password 1");
    let created = server.send(
        "POST",
        "/api/plugins/notes/notes",
        Some(&token),
        Some(serde_json::json!({ "title": "over http", "body": "served from PostgreSQL" })),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    let listed = server.get("/api/plugins/notes/notes", Some(&token));
    assert_eq!(listed.status, 200, "{}", listed.text);
    // The root user is user 1: the note `sv plugins sql` made for owner 1 is theirs too.
    let titles: Vec<&str> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["from sql", "over http"]);
    // A task assigned to the root user shows their mirrored display name (the sync
    // worker keeps the PostgreSQL mirror current); completing it reaches the core's
    // activity feed once.
    let task = server.send(
        "POST",
        "/api/plugins/tasks/tasks",
        Some(&token),
        Some(serde_json::json!({ "title": "Write the RFC", "assignee": 1 })),
    );
    assert_eq!(task.status, 201, "{}", task.text);
    let id = task.body["id"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let read = server.get(&format!("/api/plugins/tasks/tasks/{id}"), Some(&token));
        assert_eq!(read.status, 200, "{}", read.text);
        if read.body["assignee_name"] == "root" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the mirror never had root: {}",
            read.text
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for _ in 0..2 {
        let done = server.send(
            "POST",
            &format!("/api/plugins/tasks/tasks/{id}/complete"),
            Some(&token),
            None,
        );
        assert_eq!(done.status, 200, "{}", done.text);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let feed = server.get("/api/activity", Some(&token));
        if feed.body.as_array().is_some_and(|a| !a.is_empty()) {
            assert_eq!(feed.body.as_array().unwrap().len(), 1, "{}", feed.text);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the event never reached the core"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let health = server.get("/health", None);
    assert_eq!(health.body["plugins"]["status"], "ok", "{}", health.text);
    assert_eq!(health.body["status"], "ok", "{}", health.text);
    server.stop();

    // A full rebuild of the PostgreSQL mirror keeps the plugins' column grants.
    run_ok(&["sync:run", "--full"]);
    let status = run_ok(&["sync:status", "--json"]);
    assert!(status.contains("\"built\": true"), "{status}");
    let names = sql("tasks", "SELECT display_name FROM core__users");
    assert!(names.contains("root"), "{names}");
    let ungranted = sql_refused("tasks", "SELECT tenant_id FROM core__users");
    assert!(ungranted.contains("may not"), "{ungranted}");
    // Reconcile finds a row drifted behind the writer's back, repairs exactly it, and
    // a second run finds nothing.
    let clean = run_ok(&["sync:reconcile"]);
    assert!(clean.contains("0 row(s) differ"), "{clean}");
    let mut admin = postgres::Client::connect(
        &cluster.admin_url().replace("/postgres", "/sv_plugins"),
        postgres::NoTls,
    )
    .unwrap();
    admin
        .batch_execute("UPDATE core.core__users SET display_name = 'drifted' WHERE id = 1")
        .unwrap();
    let drifted = run_err(&["sync:reconcile"]);
    assert!(
        drifted.is_empty() || !drifted.contains("error"),
        "{drifted}"
    );
    let repaired = run_ok(&["sync:reconcile", "--repair"]);
    assert!(
        repaired.contains("1 row(s) differ") && repaired.contains("repaired 1 row(s)"),
        "{repaired}"
    );
    assert!(run_ok(&["sync:reconcile"]).contains("0 row(s) differ"));
    let names = sql("tasks", "SELECT display_name FROM core__users");
    assert!(
        names.contains("root") && !names.contains("drifted"),
        "{names}"
    );

    // Removing without --purge keeps the schema (a reinstall migrates on); --purge
    // drops the role, the schema and the events.
    run_ok(&["plugins", "remove", "notes"]);
    assert_eq!(provisioned(cluster.admin_url(), "notes"), (1, 1));
    run_ok(&[
        "plugins",
        "install",
        repo.join("notes").to_str().unwrap(),
        "--yes",
    ]);
    let kept = sql("notes", "SELECT count(*) AS n FROM notes__notes");
    let kept: serde_json::Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(kept[0]["n"], 2, "{kept}");
    // An upgrade applies the package's new PostgreSQL migrations as the plugin's role,
    // all or none.
    let next = w.path().join("notes-next");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(repo.join("notes"))
        .arg(&next)
        .status()
        .unwrap();
    assert!(copy.success());
    let manifest = std::fs::read_to_string(next.join("plugin.json")).unwrap();
    std::fs::write(
        next.join("plugin.json"),
        manifest.replace("\"0.1.0\"", "\"0.2.0\""),
    )
    .unwrap();
    for dir in ["migrations", "migrations/postgres"] {
        std::fs::write(
            next.join(dir).join("0002_pinned.sql"),
            "ALTER TABLE notes__notes ADD COLUMN pinned bigint NOT NULL DEFAULT 0;",
        )
        .unwrap();
    }
    std::fs::write(next.join("migrations/postgres/0003_broken.sql"), "SELEC 1;").unwrap();
    let failed = run_err(&["plugins", "upgrade", next.to_str().unwrap(), "--yes"]);
    assert!(failed.contains("0003_broken.sql"), "{failed}");
    let unchanged = sql_refused("notes", "SELECT pinned FROM notes__notes");
    assert!(
        unchanged.contains("pinned"),
        "0002 must not stay applied: {unchanged}"
    );
    std::fs::remove_file(next.join("migrations/postgres/0003_broken.sql")).unwrap();
    let upgraded = run_ok(&["plugins", "upgrade", next.to_str().unwrap(), "--yes"]);
    assert!(upgraded.contains("0002_pinned.sql"), "{upgraded}");
    sql("notes", "SELECT pinned FROM notes__notes");
    // Purging drops the plugin's data after a dump of its schema; its role stays, and
    // its migrations make the tables again.
    let purged = run_ok(&["plugins", "db", "purge", "notes", "--yes"]);
    assert!(
        purged.contains("dropped table notes.notes__notes") && purged.contains(".pgdump"),
        "{purged}"
    );
    let gone = sql_refused("notes", "SELECT count(*) FROM notes__notes");
    assert!(gone.contains("notes__notes"), "{gone}");
    assert_eq!(provisioned(cluster.admin_url(), "notes"), (1, 1));
    let remigrated = run_ok(&["migrate:deploy", "--scope=plugins"]);
    assert!(remigrated.contains("0002_pinned.sql"), "{remigrated}");
    let empty = sql("notes", "SELECT count(*) AS n FROM notes__notes");
    assert!(empty.contains("\"n\": 0"), "{empty}");
    let removed = run_ok(&["plugins", "remove", "notes", "--purge"]);
    assert!(removed.contains("database sv_plugins_notes"), "{removed}");
    assert_eq!(provisioned(cluster.admin_url(), "notes"), (0, 0));
    let databases = psql(
        cluster.admin_url(),
        "SELECT count(*) FROM pg_database WHERE datname = 'sv_plugins_notes'",
    );
    assert_eq!(String::from_utf8_lossy(&databases.stdout).trim(), "0");
}

/// A served platform with `notes` installed and a user logged in, on a SQLite plugin
/// store, on PostgreSQL, or with both stores on MySQL; returns the work directory, the server, a
/// token and the cluster to keep alive.
fn notes_platform(
    backend: sovereign_db_plugins::Backend,
) -> (
    Workdir,
    common::Server,
    String,
    Option<Box<dyn std::any::Any>>,
) {
    let w = Workdir::new();
    let cluster: Option<Box<dyn std::any::Any>> = match backend {
        sovereign_db_plugins::Backend::Sqlite => None,
        // Both stores on MySQL: the core's sessions and registry too.
        sovereign_db_plugins::Backend::Mysql => Some(Box::new(both_stores_on_mysql(&w))),
        sovereign_db_plugins::Backend::Postgres => {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
            let cluster = Cluster::start(&script).unwrap();
            let url = cluster.url("svc_plugins", "plugins-secret", "sv_plugins");
            std::fs::write(
                w.path().join("sovereign.toml"),
                format!("plugin_database_url = \"{url}\"\n"),
            )
            .unwrap();
            // The plugin store's URL from sovereign.toml, as every command reads it.
            w.sv_ok(&[
                "postgres:roles",
                "--apply",
                "--admin-url",
                cluster.admin_url(),
            ]);
            Some(Box::new(cluster))
        }
    };
    w.sv_ok(&["migrate:deploy"]);
    w.sv_ok(&[
        "plugins",
        "install",
        plugins_dir().join("notes").to_str().unwrap(),
        "--yes",
    ]);
    w.create_user("root@example.com", "root password 1", true);
    let server = w.start(&["serve"]);
    server.wait_host_running();
    let token = server.login("root@example.com", "root password 1");
    (w, server, token, cluster)
}

/// The host killed twice while two clients write: every write the platform acknowledged
/// is there exactly once afterwards, on every plugin store backend (a killed host's
/// open transactions roll back, on SQLite by the journal, on PostgreSQL and MySQL when
/// its sessions drop).
#[test]
fn killing_the_host_under_load_loses_no_acknowledged_write_on_any_backend() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    for backend in [
        sovereign_db_plugins::Backend::Sqlite,
        sovereign_db_plugins::Backend::Postgres,
        sovereign_db_plugins::Backend::Mysql,
    ] {
        let (_w, server, token, _cluster) = notes_platform(backend);
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..2)
            .map(|n| {
                let (server, stop, token) = (server.clone(), stop.clone(), token.clone());
                let (statuses, acknowledged) = (statuses.clone(), acknowledged.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let title = format!("w{n}-{i}");
                        let r = server.send(
                            "POST",
                            "/api/plugins/notes/notes",
                            Some(&token),
                            Some(serde_json::json!({ "title": title })),
                        );
                        statuses.lock().unwrap().push(r.status);
                        if r.status == 201 {
                            acknowledged.lock().unwrap().push(title);
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(500));
        for _ in 0..2 {
            let pid = server.wait_host_running()["pid"].as_i64().unwrap();
            // SAFETY: kill(2) on the host's pid as reported by /health.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            std::thread::sleep(std::time::Duration::from_millis(300));
            server.wait_host_running();
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            writer.join().unwrap();
        }
        let statuses = statuses.lock().unwrap();
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 503),
            "{backend:?}: statuses other than 201/503: {:?}",
            statuses
                .iter()
                .filter(|s| **s != 201 && **s != 503)
                .collect::<Vec<_>>()
        );
        assert!(
            statuses.contains(&503),
            "{backend:?}: the kill was not observed"
        );
        let listed = server.get("/api/plugins/notes/notes", Some(&token));
        assert_eq!(listed.status, 200, "{backend:?}: {}", listed.text);
        let mut titles: Vec<String> = listed
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["title"].as_str().unwrap().to_owned())
            .collect();
        for title in acknowledged.lock().unwrap().iter() {
            assert!(
                titles.contains(title),
                "{backend:?}: acknowledged {title} is missing"
            );
        }
        let all = titles.len();
        titles.sort();
        titles.dedup();
        assert_eq!(titles.len(), all, "{backend:?}: a write applied twice");
        assert_eq!(server.host_state()["restarts"], 2, "{backend:?}");
    }
}

#[test]
fn sv_serves_the_core_api_and_plugins_with_both_stores_on_postgres() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = Cluster::start(&script).unwrap();
    let core_url = cluster.url("svc_core", "core-secret", "sv_core");
    let plugins_url = cluster.url("svc_plugins", "plugins-secret", "sv_plugins");
    let w = Workdir::new();
    let urls = [
        "--database-url",
        core_url.as_str(),
        "--plugin-database-url",
        plugins_url.as_str(),
    ];
    let with =
        |args: &[&str]| -> Vec<String> { urls.iter().chain(args).map(|s| s.to_string()).collect() };
    let run_ok =
        |args: &[&str]| w.sv_ok(&with(args).iter().map(String::as_str).collect::<Vec<_>>());
    let run_err =
        |args: &[&str]| w.sv_err(&with(args).iter().map(String::as_str).collect::<Vec<_>>());

    let applied = run_ok(&[
        "postgres:roles",
        "--apply",
        "--admin-url",
        cluster.admin_url(),
    ]);
    assert!(
        applied.contains("the core and plugin databases"),
        "{applied}"
    );
    // Before its migrations the core database is not a core store, and says how to fix it.
    let early = run_err(&["users", "list"]);
    assert!(early.contains("migrate:deploy --scope=core"), "{early}");
    assert!(!early.contains("core-secret"), "a password leaked: {early}");
    let deployed = run_ok(&["migrate:deploy", "--scope=core"]);
    assert!(
        deployed.contains("0006_plugin_store_logins.sql"),
        "{deployed}"
    );
    let status = run_ok(&["migrate:status", "--scope=core"]);
    assert!(
        status.contains("0001_init.sql") && !status.contains("pending"),
        "{status}"
    );
    run_ok(&["migrate:deploy"]);
    assert!(
        !w.core_db().exists() && !w.plugins_db().exists(),
        "no SQLite file is made"
    );
    let tables = psql(
        cluster
            .admin_url()
            .replace("/postgres", "/sv_core")
            .as_str(),
        "SELECT count(*) FROM users",
    );
    assert!(
        tables.status.success(),
        "{}",
        String::from_utf8_lossy(&tables.stderr)
    );

    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins");
    run_ok(&[
        "plugins",
        "install",
        repo.join("notes").to_str().unwrap(),
        "--yes",
    ]);
    // The plugin's password is in the core database; with it in hand, its role still
    // cannot connect to the core database.
    let password = psql(
        cluster
            .admin_url()
            .replace("/postgres", "/sv_core")
            .as_str(),
        "SELECT password FROM plugin_store_logins WHERE plugin_id = 'notes'",
    );
    let password = String::from_utf8_lossy(&password.stdout).trim().to_owned();
    assert_eq!(password.len(), 32, "{password}");
    let as_plugin = psql(
        &cluster.url("svp_notes", &password, "sv_core"),
        "SELECT count(*) FROM users",
    );
    assert!(
        !as_plugin.status.success(),
        "a plugin role reached the core database"
    );
    assert!(
        String::from_utf8_lossy(&as_plugin.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&as_plugin.stderr)
    );
    // tasks reads mirrored users: change capture on the PostgreSQL core feeds the
    // mirror in the plugin database.
    run_ok(&[
        "plugins",
        "install",
        repo.join("tasks").to_str().unwrap(),
        "--yes",
    ]);
    let created = w.sv_with_input(
        &with(&[
            "users",
            "create",
            "--email",
            "root@example.com",
            "--password-stdin",
            "--admin",
        ])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        "root password 1\n",
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let server = w.start(
        &with(&["serve"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let host = server.wait_host_running();
    assert_eq!(host["plugins"][0]["id"], "notes", "{host}");
    let health = server.get("/health", None);
    assert_eq!(health.body["core"]["status"], "ok", "{}", health.text);
    let token = server.login("root@example.com", "root password 1");
    let me = server.get("/api/auth/me", Some(&token));
    assert_eq!(me.body["email"], "root@example.com", "{}", me.text);
    let created = server.send(
        "POST",
        "/api/users",
        Some(&token),
        Some(serde_json::json!({
            "email": "ada@example.com", "password": "a long password", "display_name": "Ada"
        })),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    let duplicate = server.send(
        "POST",
        "/api/users",
        Some(&token),
        Some(serde_json::json!({
            "email": "ADA@example.com", "password": "a long password", "display_name": "Ada"
        })),
    );
    assert_eq!(duplicate.status, 409, "{}", duplicate.text);
    let put = server.send(
        "PUT",
        "/api/settings/site.name",
        Some(&token),
        Some(serde_json::json!({ "value": {"name": "Acme"} })),
    );
    assert!((200..300).contains(&put.status), "{}", put.text);
    let got = server.get("/api/settings/site.name", Some(&token));
    assert_eq!(
        got.body["value"],
        serde_json::json!({"name": "Acme"}),
        "{}",
        got.text
    );
    let note = server.send(
        "POST",
        "/api/plugins/notes/notes",
        Some(&token),
        Some(serde_json::json!({ "title": "both on PostgreSQL", "body": "" })),
    );
    assert_eq!(note.status, 201, "{}", note.text);
    let listed = server.get("/api/plugins/notes/notes", Some(&token));
    assert_eq!(
        listed.body[0]["title"], "both on PostgreSQL",
        "{}",
        listed.text
    );
    // A task assigned to Ada shows her mirrored display name (captured on the core
    // database, applied by the sync worker); renaming her reaches the mirror too.
    let ada = created.body["id"].as_i64().unwrap();
    common::tasks_follow_the_core(&server, &token, ada);
    // The operator's stores panel and storage report read both databases.
    let stores = server.get("/api/admin/stores", Some(&token));
    assert_eq!(stores.status, 200, "{}", stores.text);
    let roles: Vec<&str> = stores.body["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["core", "plugins"], "{}", stores.text);
    assert!(
        stores.body["files"][0]["bytes"].as_u64().unwrap() > 0,
        "{}",
        stores.text
    );
    assert!(
        !stores.text.contains("core-secret"),
        "a password leaked: {}",
        stores.text
    );
    assert!(
        stores.body["pending"].as_array().unwrap().is_empty(),
        "{}",
        stores.text
    );
    let storage = server.get("/api/admin/storage", Some(&token));
    assert_eq!(storage.status, 200, "{}", storage.text);
    assert!(storage.text.contains("tasks__tasks"), "{}", storage.text);
    let logout = server.send("POST", "/api/auth/logout", Some(&token), None);
    assert!((200..300).contains(&logout.status), "{}", logout.text);
    assert_eq!(server.get("/api/auth/me", Some(&token)).status, 401);
    server.stop();
    // With the platform stopped: status, a clean reconcile, then drift in the mirror
    // found and repaired from the core database.
    let status = run_ok(&["sync:status"]);
    assert!(status.contains("users"), "{status}");
    let clean = run_ok(&["sync:reconcile"]);
    assert!(clean.contains("0 row(s) differ"), "{clean}");
    let drift = psql(
        cluster
            .admin_url()
            .replace("/postgres", "/sv_plugins")
            .as_str(),
        &format!("UPDATE core.core__users SET display_name = 'drifted' WHERE id = {ada}"),
    );
    assert!(
        drift.status.success(),
        "{}",
        String::from_utf8_lossy(&drift.stderr)
    );
    run_err(&["sync:reconcile"]);
    let repaired = run_ok(&["sync:reconcile", "--repair"]);
    assert!(
        repaired.contains("1 row(s) differ") && repaired.contains("repaired 1 row(s)"),
        "{repaired}"
    );
    assert!(run_ok(&["sync:reconcile"]).contains("0 row(s) differ"));
    let full = run_ok(&["sync:run", "--full"]);
    assert!(full.contains("users"), "{full}");
}

/// Copies a package directory (files and subdirectories).

#[test]
fn sv_dev_sets_up_and_serves_everything_with_both_stores_on_postgres() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = Cluster::start(&script).unwrap();
    let core_url = cluster.url("svc_core", "core-secret", "sv_core");
    let plugins_url = cluster.url("svc_plugins", "plugins-secret", "sv_plugins");
    let w = Workdir::new();
    for id in ["notes", "tasks"] {
        common::copy_package(&plugins_dir().join(id), &w.path().join("plugins").join(id));
    }
    let urls = [
        "--database-url",
        core_url.as_str(),
        "--plugin-database-url",
        plugins_url.as_str(),
    ];
    let mut roles = urls.to_vec();
    roles.extend([
        "postgres:roles",
        "--apply",
        "--admin-url",
        cluster.admin_url(),
    ]);
    w.sv_ok(&roles);
    // `sv dev` alone: migrations of both stores, the first admin, both packages.
    let mut dev = urls.to_vec();
    dev.push("dev");
    let server = w.start(&dev);
    let password = server.printed_password();
    let host = server.wait_host_running();
    let ids: Vec<&str> = host["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["notes", "tasks"], "{host}");
    let token = server.login("admin@sovereign.local", &password);
    let task = server.send(
        "POST",
        "/api/plugins/tasks/tasks",
        Some(&token),
        Some(serde_json::json!({ "title": "from sv dev", "assignee": 1 })),
    );
    assert_eq!(task.status, 201, "{}", task.text);
    let id = task.body["id"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let read = server.get(&format!("/api/plugins/tasks/tasks/{id}"), Some(&token));
        if read.body["assignee_name"] == "Administrator" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", read.text);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!w.core_db().exists() && !w.plugins_db().exists());
    server.stop();
}

#[test]
fn a_postgres_core_runs_beside_sqlite_plugin_files() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = Cluster::start(&script).unwrap();
    let core_url = cluster.url("svc_core", "core-secret", "sv_core");
    let plugins_url = cluster.url("svc_plugins", "plugins-secret", "sv_plugins");
    let w = Workdir::new();
    // The role plan needs a plugin URL; the plugin store itself stays in files here.
    w.sv_ok(&[
        "--database-url",
        &core_url,
        "--plugin-database-url",
        &plugins_url,
        "postgres:roles",
        "--apply",
        "--admin-url",
        cluster.admin_url(),
    ]);
    let run_ok = |args: &[&str]| {
        let mut all = vec!["--database-url", core_url.as_str()];
        all.extend(args);
        w.sv_ok(&all)
    };
    run_ok(&["migrate:deploy"]);
    assert!(!w.core_db().exists() && w.plugins_db().exists());
    let repo = plugins_dir();
    run_ok(&[
        "plugins",
        "install",
        repo.join("tasks").to_str().unwrap(),
        "--yes",
    ]);
    // Operating the plugin files works whichever backend the core is on.
    let inspect = run_ok(&["plugins", "db", "inspect"]);
    assert!(inspect.contains("tasks"), "{inspect}");
    // The mirror in plugins.db follows the PostgreSQL core.
    let created = w.sv_with_input(
        &[
            "--database-url",
            &core_url,
            "users",
            "create",
            "--email",
            "ada@example.com",
            "--display-name",
            "Ada",
            "--password-stdin",
        ],
        "a long password\n",
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    run_ok(&["sync:run"]);
    let names: Vec<String> = common::raw(&w.plugins_db())
        .prepare("SELECT display_name FROM core__users")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(names, ["Ada"]);
    common::raw(&w.plugins_db())
        .execute_batch("UPDATE core__users SET display_name = 'drifted'")
        .unwrap();
    let repaired = run_ok(&["sync:reconcile", "--repair"]);
    assert!(repaired.contains("repaired 1 row(s)"), "{repaired}");
    let rebuilt = run_ok(&["sync:run", "--full"]);
    assert!(rebuilt.contains("users"), "{rebuilt}");
    assert!(run_ok(&["sync:reconcile"]).contains("0 row(s) differ"));
    // Backups cover one backend at a time, and say what to do instead.
    let refused = w.sv_err(&["--database-url", core_url.as_str(), "backup"]);
    assert!(
        refused.contains("core on PostgreSQL and the plugin store on SQLite")
            && refused.contains("pg_dump"),
        "{refused}"
    );
}

/// A throwaway cluster with both stores of `w` on it (their URLs in `sovereign.toml`)
/// and the role plan applied.
fn both_stores_on_postgres(w: &Workdir) -> Cluster {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = Cluster::start(&script).unwrap();
    std::fs::write(
        w.path().join("sovereign.toml"),
        format!(
            "database_url = \"{}\"\nplugin_database_url = \"{}\"\n",
            cluster.url("svc_core", "core-secret", "sv_core"),
            cluster.url("svc_plugins", "plugins-secret", "sv_plugins")
        ),
    )
    .unwrap();
    w.sv_ok(&[
        "postgres:roles",
        "--apply",
        "--admin-url",
        cluster.admin_url(),
    ]);
    cluster
}

/// A MariaDB with both stores' accounts and databases, their URLs in `sovereign.toml`.
fn both_stores_on_mysql(w: &Workdir) -> sovereign_mysql::Server {
    let server = mariadb();
    std::fs::write(
        w.path().join("sovereign.toml"),
        format!(
            "database_url = \"{}\"\nplugin_database_url = \"{}\"\n",
            server.url("svc_core", "core-secret-1234", "sv_core"),
            server.url("svc_plugins", "plugins-secret-12", "sv_plugins")
        ),
    )
    .unwrap();
    w.sv_ok(&["mysql:roles", "--apply", "--admin-url", server.admin_url()]);
    server
}

/// `sv backup`, `backup:verify` and `restore` with both stores on PostgreSQL: dumps with
/// the manifest's checksums, a damaged dump refused before anything changes, and a
/// restore that brings back exactly the backup's core, plugin data, plugin roles (with
/// the restored core's passwords) and mirror grants, keeping what it replaced.
#[test]
fn sv_backs_up_and_restores_both_postgres_stores() {
    let w = Workdir::new();
    let cluster = both_stores_on_postgres(&w);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins");
    let install = |id: &str| {
        w.sv_ok(&[
            "plugins",
            "install",
            repo.join(id).to_str().unwrap(),
            "--yes",
        ])
    };
    let sql = |id: &str, statement: &str| w.sv_ok(&["plugins", "sql", id, statement, "--json"]);
    let core_db = cluster.admin_url().replace("/postgres", "/sv_core");
    let plugin_db = cluster.admin_url().replace("/postgres", "/sv_plugins");
    let scalar = |url: &str, statement: &str| {
        let out = psql(url, statement);
        assert!(
            out.status.success(),
            "{statement}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };

    w.sv_ok(&["migrate:deploy"]);
    w.create_user("root@example.com", "root password 1", true);
    install("notes");
    sql(
        "notes",
        "INSERT INTO notes__notes (owner, title) VALUES (1, 'kept')",
    );
    w.sv_ok(&["sync:run"]);

    let backup = w.path().join("backups/one");
    let out = w.sv_ok(&["backup", "--out", backup.to_str().unwrap()]);
    assert!(out.contains("core.pgdump/toc.dat"), "{out}");
    // notes is isolated: its own database's bookkeeping and its schema.
    assert!(
        out.contains("plugins.pgdump/isolated-notes/schema/toc.dat")
            && out.contains("plugins.pgdump/isolated-notes/store/toc.dat"),
        "{out}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(backup.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["format"], 2);
    assert_eq!(manifest["postgres_dumps"].as_array().unwrap().len(), 4);
    assert!(
        manifest["mirror_watermark"].as_i64().unwrap() > 0,
        "{manifest}"
    );
    assert_eq!(manifest["schema_versions"]["plugin:notes"], 1, "{manifest}");
    let verified = w.sv_ok(&["backup:verify", backup.to_str().unwrap()]);
    assert!(verified.contains("is a valid backup"), "{verified}");

    // A damaged dump is found by its checksum, and its restore changes nothing.
    let damaged = w.path().join("backups/damaged");
    common::copy_package(&backup, &damaged);
    let toc = damaged.join("core.pgdump/toc.dat");
    let mut bytes = std::fs::read(&toc).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&toc, bytes).unwrap();
    let refused = w.sv_err(&["backup:verify", damaged.to_str().unwrap()]);
    assert!(
        refused.contains("core.pgdump/toc.dat: checksum"),
        "{refused}"
    );
    let refused = w.sv_err(&["restore", damaged.to_str().unwrap()]);
    assert!(refused.contains("failed verification"), "{refused}");

    // Life goes on after the backup: a user, a note, another plugin; notes is purged.
    w.create_user("later@example.com", "later password 1", false);
    sql(
        "notes",
        "INSERT INTO notes__notes (owner, title) VALUES (1, 'after')",
    );
    install("tasks");
    w.sv_ok(&["plugins", "remove", "notes", "--purge"]);
    assert_eq!(
        scalar(
            &plugin_db,
            "SELECT count(*) FROM pg_roles WHERE rolname = 'svp_notes'"
        ),
        "0"
    );

    let restored = w.sv_ok(&["restore", backup.to_str().unwrap()]);
    assert!(restored.contains("restored 2 store(s)"), "{restored}");
    assert_eq!(
        scalar(&core_db, "SELECT string_agg(email, ',') FROM users"),
        "root@example.com"
    );
    assert_eq!(
        scalar(
            &plugin_db,
            "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'svp_%'"
        ),
        "svp_notes",
        "the backup's plugin role is back, the later one gone"
    );
    assert_eq!(
        scalar(&plugin_db, "SELECT to_regnamespace('tasks') IS NULL"),
        "t"
    );
    // The plugin's role logs in with the restored core's password and owns its data.
    let notes = sql("notes", "SELECT title FROM notes__notes ORDER BY id");
    assert!(
        notes.contains("kept") && !notes.contains("after"),
        "{notes}"
    );
    assert_eq!(
        scalar(
            &cluster
                .admin_url()
                .replace("/postgres", "/sv_plugins_notes"),
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'notes' AND tablename = 'notes__notes'"
        ),
        "svp_notes"
    );
    let migrated = w.sv_ok(&["migrate:status"]);
    assert!(!migrated.contains("pending"), "{migrated}");
    w.sv_ok(&["sync:run"]);
    w.sv_ok(&["sync:reconcile"]);

    // What the restore replaced is a backup itself, restorable in turn.
    let aside: Vec<PathBuf> = std::fs::read_dir(w.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("pre-restore-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    w.sv_ok(&["backup:verify", aside[0].to_str().unwrap()]);
    w.sv_ok(&["restore", aside[0].to_str().unwrap()]);
    assert_eq!(
        scalar(&core_db, "SELECT count(*) FROM users"),
        "2",
        "the later user is back"
    );
    assert_eq!(
        scalar(
            cluster.admin_url(),
            "SELECT count(*) FROM pg_database WHERE datname = 'sv_plugins_notes'"
        ),
        "0",
        "notes (purged then) has no database"
    );
    // The mirror catches up from the restored core, and the plugin's grant on it is back.
    w.sv_ok(&["sync:run"]);
    let tasks = sql("tasks", "SELECT count(*) AS n FROM core__users");
    assert!(tasks.contains("\"n\": 2"), "{tasks}");
}

/// One test body on either backend: a backup taken, the data changed (a user, a note,
/// a plugin purged), the backup restored: exactly the backup's users, plugin data and
/// plugins are back, the mirror catches up and reconciles clean.
#[test]
fn a_backup_round_trip_restores_exactly_the_backup_on_every_backend() {
    for backend in [
        sovereign_db_plugins::Backend::Sqlite,
        sovereign_db_plugins::Backend::Postgres,
        sovereign_db_plugins::Backend::Mysql,
    ] {
        backup_round_trip(backend);
    }
}

fn backup_round_trip(backend: sovereign_db_plugins::Backend) {
    let w = Workdir::new();
    let _server: Option<Box<dyn std::any::Any>> = match backend {
        sovereign_db_plugins::Backend::Sqlite => None,
        sovereign_db_plugins::Backend::Postgres => Some(Box::new(both_stores_on_postgres(&w))),
        sovereign_db_plugins::Backend::Mysql => Some(Box::new(both_stores_on_mysql(&w))),
    };
    let sql = |id: &str, statement: &str| w.sv_ok(&["plugins", "sql", id, statement, "--json"]);
    w.sv_ok(&["migrate:deploy"]);
    w.create_user("root@example.com", "root password 1", true);
    for id in ["notes", "tasks"] {
        w.sv_ok(&[
            "plugins",
            "install",
            plugins_dir().join(id).to_str().unwrap(),
            "--yes",
        ]);
    }
    sql(
        "notes",
        "INSERT INTO notes__notes (owner, title) VALUES (1, 'kept')",
    );
    sql(
        "tasks",
        "INSERT INTO tasks__tasks (title, created_by) VALUES ('kept task', 1)",
    );
    w.sv_ok(&["sync:run"]);
    let backup = w.path().join("backups/round-trip");
    w.sv_ok(&["backup", "--out", backup.to_str().unwrap()]);
    w.sv_ok(&["backup:verify", backup.to_str().unwrap()]);

    w.create_user("later@example.com", "later password 1", false);
    sql(
        "notes",
        "INSERT INTO notes__notes (owner, title) VALUES (1, 'after')",
    );
    w.sv_ok(&["plugins", "remove", "tasks", "--purge"]);

    let restored = w.sv_ok(&["restore", backup.to_str().unwrap()]);
    assert!(restored.contains("sv sync:run"), "{backend:?}: {restored}");
    let users = w.sv_ok(&["users", "list"]);
    assert!(
        users.contains("root@example.com") && !users.contains("later@example.com"),
        "{backend:?}: {users}"
    );
    let notes = sql("notes", "SELECT title FROM notes__notes ORDER BY id");
    assert!(
        notes.contains("kept") && !notes.contains("after"),
        "{backend:?}: {notes}"
    );
    let tasks = sql("tasks", "SELECT title FROM tasks__tasks");
    assert!(tasks.contains("kept task"), "{backend:?}: {tasks}");
    let listed = w.sv_ok(&["plugins", "list"]);
    assert!(listed.contains("tasks"), "{backend:?}: {listed}");
    w.sv_ok(&["sync:run"]);
    let reconciled = w.sv_ok(&["sync:reconcile"]);
    assert!(
        reconciled.contains("0 row(s) differ"),
        "{backend:?}: {reconciled}"
    );
}
