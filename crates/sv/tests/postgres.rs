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
    _cluster: Option<Cluster>,
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
                let plan = sovereign_postgres::RolePlan::new(
                    &cluster.url("svc_core", "core-secret", "sv_core"),
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
                    Some(sovereign_protocol::PostgresLogin { url }),
                    Some(cluster),
                )
            }
        };
        NotesStore {
            spec: sovereign_protocol::PluginSpec {
                id: "notes".into(),
                grants: vec![],
                manifest,
                postgres,
            },
            location,
            _dir: dir,
            _cluster: cluster,
        }
    }
}

/// The `notes` component, built once, runs unchanged on a SQLite and on a PostgreSQL
/// plugin store: the same requests, the same answers.
#[test]
fn the_notes_plugin_runs_unchanged_on_both_plugin_store_backends() {
    use sovereign_db_plugins::Backend;
    use sovereign_host::runtime::Runtime;
    use sovereign_protocol::{Caller, HttpRequest};

    let executor = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let store = NotesStore::new(backend);
        let runtime = Runtime::load(
            Runtime::engine().unwrap(),
            &store.location,
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
