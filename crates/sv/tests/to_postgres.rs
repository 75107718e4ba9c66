//! `sv migrate:to-postgres`: a generated SQLite install (10,000 users, `tasks` shared
//! with data and events, `notes` isolated) moved into a real PostgreSQL server, checked
//! row by row and over HTTP; a move killed half-way and a move that fails half-way leave
//! the target empty and the SQLite files byte for byte as they were.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Workdir;
use sovereign_postgres::Cluster;

/// Writes to a child's standard input, keeping it open.
fn say(child: &mut std::process::Child, input: &str) {
    use std::io::Write;
    let stdin = child.stdin.as_mut().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
}

/// Reads the child's standard output up to a line holding `text`.
fn wait_for_line(child: &mut std::process::Child, text: &str) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(child.stdout.as_mut().unwrap());
    let mut line = String::new();
    while !line.contains(text) {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "no {text:?}");
    }
}

/// Every file of the data directory and its SHA-256.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, String)> {
    use sha2::Digest;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "db") {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, hex::encode(sha2::Sha256::digest(&bytes))));
            }
        }
    }
    out.sort();
    out
}

/// What the plugins answer: every task and every note, as JSON text.
fn plugin_answers(server: &common::Server, token: &str) -> (String, String) {
    let tasks = server.get("/api/plugins/tasks/tasks?limit=1000", Some(token));
    assert_eq!(tasks.status, 200, "{}", tasks.text);
    let notes = server.get("/api/plugins/notes/notes", Some(token));
    assert_eq!(notes.status, 200, "{}", notes.text);
    (tasks.body.to_string(), notes.body.to_string())
}

struct Install {
    w: Workdir,
    password: String,
    answers: (String, String),
    users: Vec<(i64, String, String)>,
}

/// A SQLite install with 10,000 users (written into core.db directly: hashing 10,000
/// passwords would take minutes), tasks with events, and isolated notes.
fn generated_install() -> Install {
    let w = Workdir::new();
    let packages = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins");
    for id in ["notes", "tasks"] {
        common::copy_package(&packages.join(id), &w.path().join("plugins").join(id));
    }
    let server = w.start(&["dev"]);
    let password = server.printed_password();
    server.wait_host_running();
    let token = server.login("admin@sovereign.local", &password);
    for i in 0..40 {
        let task = server.send(
            "POST",
            "/api/plugins/tasks/tasks",
            Some(&token),
            Some(
                serde_json::json!({ "title": format!("task {i}\twith\\odd\ntext"), "assignee": 1 }),
            ),
        );
        assert_eq!(task.status, 201, "{}", task.text);
        if i % 4 == 0 {
            let id = task.body["id"].as_i64().unwrap();
            let done = server.send(
                "POST",
                &format!("/api/plugins/tasks/tasks/{id}/complete"),
                Some(&token),
                None,
            );
            assert_eq!(done.status, 200, "{}", done.text);
        }
    }
    for i in 0..15 {
        let note = server.send(
            "POST",
            "/api/plugins/notes/notes",
            Some(&token),
            Some(serde_json::json!({ "title": format!("note {i}"), "body": "ünïcode ✓" })),
        );
        assert_eq!(note.status, 201, "{}", note.text);
    }
    // Events reach the inbox before the answers are taken.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let inbox: i64 = common::raw(&w.core_db())
            .query_row("SELECT count(*) FROM event_inbox", [], |r| r.get(0))
            .unwrap();
        if inbox == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "{inbox} events in the inbox");
        std::thread::sleep(Duration::from_millis(50));
    }
    let answers = plugin_answers(&server, &token);
    server.stop();
    let core = common::raw(&w.core_db());
    core.execute_batch(
        "BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9999)
         INSERT INTO users (display_name, email, role, avatar_url)
         SELECT 'User ' || i, 'user' || i || '@example.com', 'member',
                CASE WHEN i % 3 = 0 THEN NULL ELSE 'https://a.example/' || i END FROM n;
         INSERT INTO credentials (user_id, password_hash)
         SELECT id, (SELECT password_hash FROM credentials WHERE user_id = 1) FROM users WHERE id > 1;
         COMMIT;",
    )
    .unwrap();
    let users = core
        .prepare("SELECT id, email, display_name FROM users ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(users.len(), 10_000);
    drop(core);
    Install {
        w,
        password,
        answers,
        users,
    }
}

fn cluster() -> Cluster {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    Cluster::start(&script).unwrap()
}

struct Target {
    core: String,
    plugins: String,
}

fn target(w: &Workdir, cluster: &Cluster) -> Target {
    let target = Target {
        core: cluster.url("svc_core", "core-secret", "sv_core"),
        plugins: cluster.url("svc_plugins", "plugins-secret", "sv_plugins"),
    };
    w.sv_ok(&[
        "--database-url",
        &target.core,
        "--plugin-database-url",
        &target.plugins,
        "postgres:roles",
        "--apply",
        "--admin-url",
        cluster.admin_url(),
    ]);
    target
}

/// Tables the target's core and plugin databases hold, and plugin roles.
fn target_contents(cluster: &Cluster, target: &Target) -> String {
    let core = common::psql_text(
        &target.core,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
    );
    let plugins = common::psql_text(
        &target.plugins,
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    );
    let roles = common::psql_text(
        cluster.admin_url(),
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'svp\\_%'",
    );
    let databases = common::psql_text(
        cluster.admin_url(),
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'sv\\_plugins\\_%'",
    );
    format!(
        "core tables {core}, plugin tables {plugins}, plugin roles {roles}, plugin databases {databases}"
    )
}

const EMPTY: &str = "core tables 0, plugin tables 0, plugin roles 0, plugin databases 0";

fn move_args<'a>(target: &'a Target, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "migrate:to-postgres",
        "--core-url",
        target.core.as_str(),
        "--plugins-url",
        target.plugins.as_str(),
    ];
    args.extend(extra);
    args
}

#[test]
fn sv_moves_a_sqlite_install_to_postgres_and_it_serves_the_same_data() {
    let install = generated_install();
    let w = &install.w;
    let before = fingerprint(&w.path().join("data"));
    let cluster = cluster();
    let target = target(w, &cluster);

    let plan = w.sv_ok(&move_args(&target, &["--dry-run"]));
    assert!(
        plan.contains("users") && plan.contains("10000 rows"),
        "{plan}"
    );
    assert!(
        plan.contains("plugin notes (isolated): database sv_plugins_notes"),
        "{plan}"
    );
    assert!(
        plan.contains("plugin tasks (shared): schema tasks"),
        "{plan}"
    );
    assert!(plan.contains("target: empty"), "{plan}");
    assert_eq!(target_contents(&cluster, &target), EMPTY);

    // Killed half-way: the core's rows are copied (not committed) and the plugin side
    // waits for a lock this test holds.
    let mut blocker = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &target.plugins])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    say(
        &mut blocker,
        "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('sv-migrations', 0)); \\echo locked\n",
    );
    wait_for_line(&mut blocker, "locked");
    let mut moving = w.command(&move_args(&target, &[])).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting = common::psql_text(
            cluster.admin_url(),
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'sv_plugins' AND wait_event_type = 'Lock'",
        );
        if waiting == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the move never reached the plugin side"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let copied = common::psql_text(
        cluster.admin_url(),
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'sv_core' AND state = 'idle in transaction'",
    );
    assert_eq!(copied, "1", "the core's transaction is open");
    moving.kill().unwrap();
    moving.wait().unwrap();
    say(&mut blocker, "ROLLBACK;\n\\q\n");
    blocker.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while target_contents(&cluster, &target) != EMPTY {
        assert!(
            Instant::now() < deadline,
            "{}",
            target_contents(&cluster, &target)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fingerprint(&w.path().join("data")), before);

    // Fails half-way, after the plugin database committed: the isolated database cannot
    // be made while its template is in use. Everything made is removed again.
    let mut template = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-d",
            &cluster.admin_url().replace("/postgres", "/template1"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    say(&mut template, "\\echo connected\n");
    wait_for_line(&mut template, "connected");
    let failed = w.sv_err(&move_args(&target, &[]));
    assert!(failed.contains("copying the plugins failed"), "{failed}");
    assert!(failed.contains("the plugin side was removed"), "{failed}");
    say(&mut template, "\\q\n");
    template.wait().unwrap();
    assert_eq!(target_contents(&cluster, &target), EMPTY);
    assert_eq!(fingerprint(&w.path().join("data")), before);

    // The move.
    let moved = w.sv_ok(&move_args(&target, &[]));
    assert!(moved.contains("moved "), "{moved}");
    assert!(moved.contains("reconciled: no differences"), "{moved}");
    assert_eq!(fingerprint(&w.path().join("data")), before);
    // A second move refuses the filled target.
    let refused = w.sv_err(&move_args(&target, &[]));
    assert!(refused.contains("the target is not empty"), "{refused}");
    // Resuming a finished move checks it again.
    let checked = w.sv_ok(&move_args(&target, &["--resume"]));
    assert!(checked.contains("checked "), "{checked}");
    // What a move killed between its plugin side's commit and its core's leaves: a
    // plugin side without a core. Refused as it is; --resume clears it and moves again.
    common::psql_text(
        &cluster.admin_url().replace("/postgres", "/sv_core"),
        "DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION svc_core; \
         REVOKE ALL ON SCHEMA public FROM PUBLIC",
    );
    let refused = w.sv_err(&move_args(&target, &[]));
    assert!(
        refused.contains("holds plugin schemas or bookkeeping"),
        "{refused}"
    );
    let resumed = w.sv_ok(&move_args(&target, &["--resume"]));
    assert!(resumed.contains("moved "), "{resumed}");

    // Every user row, as PostgreSQL has it.
    let on_postgres = common::psql_text(
        &target.core,
        "SELECT id || '|' || email || '|' || display_name FROM users ORDER BY id",
    );
    let on_sqlite: Vec<String> = install
        .users
        .iter()
        .map(|(id, email, name)| format!("{id}|{email}|{name}"))
        .collect();
    assert_eq!(on_postgres, on_sqlite.join("\n"));
    assert_eq!(
        common::psql_text(&target.core, "SELECT count(*) FROM event_inbox"),
        "10"
    );
    // New rows get ids past the copied ones.
    assert_eq!(
        common::psql_text(
            &target.core,
            "INSERT INTO audit_log (action) VALUES ('test') RETURNING id > (SELECT max(id) - 1 FROM audit_log)"
        ),
        "t"
    );

    // The platform on PostgreSQL answers as it did on SQLite.
    std::fs::write(
        w.path().join("sovereign.toml"),
        format!(
            "database_url = \"{}\"\nplugin_database_url = \"{}\"\n",
            target.core, target.plugins
        ),
    )
    .unwrap();
    let server = w.start(&["serve"]);
    server.wait_host_running();
    let token = server.login("admin@sovereign.local", &install.password);
    assert_eq!(plugin_answers(&server, &token), install.answers);
    let member = server.login("user77@example.com", &install.password);
    let created = server.send(
        "POST",
        "/api/plugins/tasks/tasks",
        Some(&member),
        Some(serde_json::json!({ "title": "after the move", "assignee": 78 })),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["id"].as_i64(), Some(41), "{}", created.text);
    let id = created.body["id"].as_i64().unwrap();
    let read = server.get(&format!("/api/plugins/tasks/tasks/{id}"), Some(&member));
    assert_eq!(read.body["assignee_name"], "User 77", "{}", read.text);
    server.stop();
    assert_eq!(fingerprint(&w.path().join("data")), before);
}
