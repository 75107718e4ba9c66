//! Core -> plugins sync through real processes: the running platform keeps the mirror
//! fresh, a locked plugin store never fails a core write, a killed sync recovers, and
//! reconcile finds and repairs drift.

mod common;

use std::time::{Duration, Instant};

use common::{Workdir, raw, tables};
use serde_json::json;

fn mirror_names(w: &Workdir) -> Vec<String> {
    let conn = raw(&w.plugins_db());
    if !tables(&w.plugins_db()).contains(&"core__users".to_owned()) {
        return vec![];
    }
    conn.prepare("SELECT display_name FROM core__users ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn projection(w: &Workdir) -> Vec<String> {
    raw(&w.core_db())
        .prepare("SELECT display_name FROM users WHERE active = 1 ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn insert_users(w: &Workdir, n: usize) {
    let conn = raw(&w.core_db());
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..n {
        conn.execute(
            "INSERT INTO users (email, display_name) VALUES (?1, ?2)",
            [format!("bulk{i}@example.com"), format!("Bulk {i}")],
        )
        .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
}

#[test]
fn the_running_platform_keeps_the_mirror_fresh() {
    let w = Workdir::new();
    let server = w.start(&["dev"]);
    let admin = server.login("admin@sovereign.local", &server.printed_password());
    let ids: Vec<i64> = (0..5)
        .map(|i| {
            let r = server.send(
                "POST",
                "/api/users",
                Some(&admin),
                Some(json!({ "email": format!("m{i}@example.com"), "password": "long password", "display_name": format!("M{i}") })),
            );
            assert_eq!(r.status, 201, "{}", r.text);
            r.body["id"].as_i64().unwrap()
        })
        .collect();
    wait_until("the new users in the mirror", || {
        mirror_names(&w) == projection(&w)
    });
    server.send(
        "PATCH",
        &format!("/api/users/{}", ids[0]),
        Some(&admin),
        Some(json!({ "active": false })),
    );
    server.send(
        "PATCH",
        &format!("/api/users/{}", ids[1]),
        Some(&admin),
        Some(json!({ "display_name": "Renamed" })),
    );
    server.send(
        "DELETE",
        &format!("/api/users/{}", ids[2]),
        Some(&admin),
        None,
    );
    wait_until("updates and deletes in the mirror", || {
        mirror_names(&w) == projection(&w)
    });
    assert!(mirror_names(&w).contains(&"Renamed".to_owned()));
    assert!(
        !mirror_names(&w).contains(&"M0".to_owned()),
        "deactivated users leave the slice"
    );

    let status: serde_json::Value =
        serde_json::from_str(&w.sv_ok(&["sync:status", "--json"])).unwrap();
    assert_eq!(status["slices"][0]["slice"], "users");
    assert_eq!(status["slices"][0]["backlog_rows"], 0);
    assert_eq!(status["slices"][0]["built"], true);
    let out = w.sv_ok(&["sync:reconcile"]);
    assert!(out.contains("0 row(s) differ"), "{out}");
    // One writer of the mirror: the platform's sync worker applied the batches, never
    // the extension host (which runs the plugins).
    let host_pid = server.get("/health", None).body["extension_host"]["pid"]
        .as_i64()
        .unwrap();
    let applied_by: i64 = raw(&w.plugins_db())
        .query_row(
            "SELECT value FROM _sv_mirror_state WHERE key = 'applied_by_pid'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(applied_by, i64::from(server.pid()));
    assert_ne!(applied_by, host_pid);
}

#[test]
fn a_locked_plugin_store_never_fails_a_core_write() {
    let w = Workdir::new();
    let server = w.start(&["dev"]);
    let admin = server.login("admin@sovereign.local", &server.printed_password());
    wait_until("the first mirror build", || !mirror_names(&w).is_empty());
    // Another process-like holder takes an exclusive lock on plugins.db for seconds.
    let holder = raw(&w.plugins_db());
    holder
        .execute_batch("BEGIN EXCLUSIVE; UPDATE _sv_store SET value = value;")
        .unwrap();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let r = server.send(
            "POST",
            "/api/users",
            Some(&admin),
            Some(json!({ "email": format!("l{i}@example.com"), "password": "long password", "display_name": format!("L{i}") })),
        );
        slowest = slowest.max(t.elapsed());
        assert_eq!(
            r.status, 201,
            "core write {i} failed while plugins.db was locked: {}",
            r.text
        );
        let h = server.get("/health", None);
        assert_eq!(h.body["core"]["status"], "ok");
        i += 1;
    }
    println!("{i} core writes during a 3 s exclusive lock on plugins.db; slowest {slowest:?}");
    assert!(
        mirror_names(&w).len() < projection(&w).len(),
        "the mirror waited for the lock"
    );
    let status: serde_json::Value =
        serde_json::from_str(&w.sv_ok(&["sync:status", "--json"])).unwrap();
    assert!(
        status["slices"][0]["backlog_rows"].as_u64().unwrap() > 0,
        "{status}"
    );
    holder.execute_batch("COMMIT").unwrap();
    wait_until("the mirror to catch up after the lock", || {
        mirror_names(&w) == projection(&w)
    });
    let out = w.sv_ok(&["sync:reconcile"]);
    assert!(out.contains("0 row(s) differ"), "{out}");
}

#[test]
fn a_sync_killed_mid_batch_recovers_and_a_fresh_store_rebuilds_itself() {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    w.sv_ok(&["sync:run"]);
    insert_users(&w, 60_000);
    for round in 0..3 {
        let mut child = w.command(&["sync:run"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(60 + 40 * round));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut child = w.command(&["sync:run", "--full"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(80));
    child.kill().unwrap();
    child.wait().unwrap();
    let out = w.sv_ok(&["sync:run"]);
    assert!(out.contains("caught up"), "{out}");
    let out = w.sv_ok(&["sync:reconcile"]);
    assert!(out.contains(" 0 row(s) differ, 0 pending"), "{out}");
    assert_eq!(mirror_names(&w), projection(&w));

    // A fresh (or lost) plugin store becomes correct by itself.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", w.plugins_db().display()));
    }
    let out = w.sv_ok(&["sync:run"]);
    assert!(out.contains("needs a full build"), "{out}");
    assert_eq!(mirror_names(&w).len(), 60_000);
    let out = w.sv_ok(&["sync:reconcile"]);
    assert!(out.contains(" 0 row(s) differ"), "{out}");
}

#[test]
fn reconcile_finds_hand_corrupted_rows_and_repair_fixes_them() {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    insert_users(&w, 3000);
    w.sv_ok(&["sync:run"]);
    raw(&w.plugins_db())
        .execute_batch(
            "UPDATE core__users SET display_name = 'evil' WHERE id = 7;
             DELETE FROM core__users WHERE id = 2000;
             INSERT INTO core__users VALUES (424242, 1, 'ghost', NULL);",
        )
        .unwrap();
    let out = w.sv(&["sync:reconcile"]);
    assert!(!out.status.success(), "drift is a failure for scripts");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 row(s) differ"), "{text}");
    assert!(text.contains("users key 7: Different"), "{text}");
    assert!(text.contains("users key 2000: Missing"), "{text}");
    assert!(text.contains("users key 424242: Extra"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&w.sv_ok(&["sync:reconcile", "--repair", "--json"])).unwrap();
    assert_eq!(json["repaired"], 3);
    let out = w.sv_ok(&["sync:reconcile"]);
    assert!(out.contains(" 0 row(s) differ"), "{out}");
}

#[test]
fn projections_are_configuration_and_a_change_is_planned_first() {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    w.sv_ok(&["sync:run"]);
    std::fs::write(
        w.path().join("sovereign.toml"),
        "[mirror.people]\nsource = \"users\"\ncolumns = [\"id\", \"email\"]\n",
    )
    .unwrap();
    let err = w.sv_err(&["sync:run"]);
    assert!(err.contains("users.email is secret"), "{err}");
    std::fs::write(
        w.path().join("sovereign.toml"),
        "[mirror.users]\nsource = \"users\"\ncolumns = [\"id\", \"display_name\"]\n",
    )
    .unwrap();
    let out = w.sv(&["sync:run"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("plan: rebuild core__users: remove columns"),
        "{text}"
    );
    let plan = w.sv_ok(&["sync:plan"]);
    assert!(
        plan.contains("filter Some(\"active = 1\") -> None"),
        "{plan}"
    );
    let out = w.sv_ok(&["sync:run", "--full"]);
    assert!(out.contains("rebuilt core__users"), "{out}");
    let cols: Vec<String> = raw(&w.plugins_db())
        .prepare("SELECT name FROM pragma_table_info('core__users')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(cols, ["id", "display_name"]);
}

#[test]
fn the_mirror_file_layout_is_attached_read_only_into_plugin_connections() {
    let w = Workdir::new();
    std::fs::write(
        w.path().join("sovereign.toml"),
        "[sync]\nlayout = \"mirror-file\"\n",
    )
    .unwrap();
    w.sv_ok(&["migrate:deploy"]);
    insert_users(&w, 3);
    w.sv_ok(&["sync:run"]);
    let mirror = w.path().join("data/mirror.db");
    assert!(tables(&mirror).contains(&"core__users".to_owned()));
    assert!(
        !tables(&w.plugins_db()).contains(&"core__users".to_owned()),
        "no copies in plugins.db"
    );
    let pkg = w.path().join("pkg");
    std::fs::create_dir_all(pkg.join("migrations")).unwrap();
    std::fs::write(
        pkg.join("plugin.json"),
        r#"{ "id": "tasks", "name": "T", "version": "1.0.0", "reads": { "users": ["id", "display_name"] } }"#,
    )
    .unwrap();
    std::fs::write(
        pkg.join("migrations/0001_init.sql"),
        "CREATE TABLE tasks__t (id INTEGER PRIMARY KEY);",
    )
    .unwrap();
    common::add_component(&pkg);
    w.sv_ok(&["plugins", "install", pkg.to_str().unwrap(), "--yes"]);
    let out = w.sv_ok(&[
        "plugins",
        "sql",
        "tasks",
        "SELECT display_name FROM core__users ORDER BY id",
    ]);
    assert!(out.contains("Bulk 2"), "{out}");
    for sql in [
        "SELECT tenant_id FROM core__users",
        "DELETE FROM core__users",
        "UPDATE mirror.core__users SET display_name = 'x'",
    ] {
        let err = w.sv_err(&["plugins", "sql", "tasks", sql]);
        assert!(err.contains("may not"), "{sql}: {err}");
    }
}

#[test]
fn scheduled_mode_applies_changes_at_the_interval() {
    let w = Workdir::new();
    std::fs::write(
        w.path().join("sovereign.toml"),
        "[sync]\nmode = \"scheduled\"\ninterval_secs = 1\n",
    )
    .unwrap();
    let _server = w.start(&["dev"]);
    wait_until("the first scheduled run", || !mirror_names(&w).is_empty());
    insert_users(&w, 2);
    wait_until("the next scheduled run", || {
        mirror_names(&w) == projection(&w)
    });
}
