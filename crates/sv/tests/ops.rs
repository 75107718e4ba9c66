//! Operating the dual-file layout through the real binary: backup under load and restore,
//! refusals that leave live files byte-for-byte unchanged, the legacy split, purge, doctor.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Workdir, raw, tables};

fn sha(path: &Path) -> String {
    use std::io::Read;
    let mut data = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    format!("{:x}", md5ish(&data))
}

/// A cheap content fingerprint for "byte-for-byte unchanged" (not security relevant).
fn md5ish(data: &[u8]) -> u128 {
    let mut h: u128 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u128;
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^ data.len() as u128
}

fn install_plugin(w: &Workdir, id: &str, mode: &str, sql: &str) {
    let pkg = w.path().join("packages").join(id);
    std::fs::create_dir_all(pkg.join("migrations")).unwrap();
    std::fs::write(
        pkg.join("plugin.json"),
        format!(r#"{{ "id": "{id}", "name": "{id}", "version": "1.0.0", "database": "{mode}" }}"#),
    )
    .unwrap();
    std::fs::write(pkg.join("migrations/0001_init.sql"), sql).unwrap();
    common::add_component(&pkg);
    w.sv_ok(&["plugins", "install", pkg.to_str().unwrap()]);
}

fn count(path: &Path, sql: &str) -> i64 {
    raw(path).query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn backup_under_concurrent_writes_restores_everything_committed_before_it() {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    install_plugin(
        &w,
        "tasks",
        "shared",
        "CREATE TABLE tasks__items (id INTEGER PRIMARY KEY, title TEXT);",
    );
    install_plugin(
        &w,
        "notes",
        "isolated",
        "CREATE TABLE notes__pages (id INTEGER PRIMARY KEY, body TEXT);",
    );
    let server = w.start(&["dev"]);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [
        (w.core_db(), "INSERT INTO users (email, display_name) VALUES ('w' || hex(randomblob(8)) || '@x.io', 'W')"),
        (w.plugins_db(), "INSERT INTO tasks__items (title) VALUES (hex(randomblob(200)))"),
        (w.path().join("data/plugins/notes.db"), "INSERT INTO notes__pages (body) VALUES (hex(randomblob(200)))"),
    ]
    .into_iter()
    .map(|(path, sql)| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let conn = raw(&path);
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            while !stop.load(Ordering::SeqCst) {
                conn.execute(sql, []).unwrap();
            }
        })
    })
    .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = (
        count(&w.core_db(), "SELECT max(id) FROM users"),
        count(&w.plugins_db(), "SELECT max(id) FROM tasks__items"),
        count(
            &w.path().join("data/plugins/notes.db"),
            "SELECT max(id) FROM notes__pages",
        ),
    );
    let out = w.sv_ok(&["backup", "--out", "backups/b1"]);
    assert!(out.contains("backup written to"), "{out}");
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    for t in writers {
        t.join().unwrap();
    }
    drop(server);

    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(w.path().join("backups/b1/manifest.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["plugins.db", "plugins/notes.db", "core.db"]);
    assert_eq!(manifest["schema_versions"]["core"], 7);
    assert_eq!(manifest["schema_versions"]["plugin:tasks"], 1);
    assert!(manifest["files"][0]["sha256"].as_str().unwrap().len() == 64);
    {
        use std::os::unix::fs::PermissionsExt;
        let mut entries: Vec<String> = std::fs::read_dir(w.path().join("backups/b1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            ["core.db", "manifest.json", "plugins", "plugins.db"],
            "no -wal/-shm side files"
        );
        let mode = std::fs::metadata(w.path().join("backups/b1/core.db"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "backups hold password hashes");
        let mode = std::fs::metadata(w.path().join("backups/b1"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }
    let verify = w.sv_ok(&["backup:verify", "backups/b1"]);
    assert!(verify.contains("is a valid backup"), "{verify}");

    // Restore into a fresh data directory.
    let out = w.sv_ok(&["restore", "backups/b1", "--data-dir", "fresh"]);
    assert!(
        out.contains("restored 3 store(s)") && out.contains("sv sync:run"),
        "{out}"
    );
    let fresh = w.path().join("fresh");
    assert!(count(&fresh.join("core.db"), "SELECT count(*) FROM users") >= before.0);
    assert_eq!(
        count(
            &fresh.join("core.db"),
            &format!("SELECT count(*) FROM users WHERE id <= {}", before.0)
        ),
        count(
            &w.core_db(),
            &format!("SELECT count(*) FROM users WHERE id <= {}", before.0)
        )
    );
    assert_eq!(
        count(
            &fresh.join("plugins.db"),
            &format!("SELECT count(*) FROM tasks__items WHERE id <= {}", before.1)
        ),
        before.1
    );
    assert_eq!(
        count(
            &fresh.join("plugins/notes.db"),
            &format!("SELECT count(*) FROM notes__pages WHERE id <= {}", before.2)
        ),
        before.2
    );
    for file in ["core.db", "plugins.db", "plugins/notes.db"] {
        let check: String = raw(&fresh.join(file))
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "{file}");
    }
    w.sv_ok(&["sync:run", "--data-dir", "fresh"]);
    let out = w.sv_ok(&["sync:reconcile", "--data-dir", "fresh"]);
    assert!(out.contains(" 0 row(s) differ, 0 pending"), "{out}");
}

fn live_fingerprints(w: &Workdir) -> Vec<(PathBuf, String)> {
    [w.core_db(), w.plugins_db()]
        .into_iter()
        .map(|p| (p.clone(), sha(&p)))
        .collect()
}

#[test]
fn a_bad_backup_is_refused_and_live_files_stay_byte_for_byte() {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    install_plugin(
        &w,
        "tasks",
        "shared",
        "CREATE TABLE tasks__items (id INTEGER PRIMARY KEY, title TEXT);",
    );
    w.sv_ok(&["sync:run"]);
    w.sv_ok(&["backup", "--out", "good"]);
    raw(&w.core_db())
        .execute(
            "INSERT INTO users (email, display_name) VALUES ('after@x.io', 'After')",
            [],
        )
        .unwrap();
    let live = live_fingerprints(&w);
    let copy = |name: &str| {
        let dir = w.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(w.path().join("good")).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(dir.join(entry.file_name())).unwrap();
            } else {
                std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
            }
        }
        dir
    };

    // A corrupted file (same size, the b-tree header of page 2 flipped): the checksum
    // catches it.
    let corrupt = copy("corrupt");
    let mut bytes = std::fs::read(corrupt.join("core.db")).unwrap();
    for b in &mut bytes[4096..4096 + 64] {
        *b ^= 0xff;
    }
    std::fs::write(corrupt.join("core.db"), &bytes).unwrap();
    // A corrupted file whose manifest was "fixed" to match: integrity_check catches it.
    let resealed = copy("resealed");
    std::fs::write(resealed.join("core.db"), &bytes).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(resealed.join("manifest.json")).unwrap())
            .unwrap();
    let digest = {
        use std::process::Command;
        let out = Command::new("sha256sum")
            .arg(resealed.join("core.db"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    for f in manifest["files"].as_array_mut().unwrap() {
        if f["name"] == "core.db" {
            f["sha256"] = digest.clone().into();
        }
    }
    std::fs::write(resealed.join("manifest.json"), manifest.to_string()).unwrap();
    // A missing file.
    let missing = copy("missing");
    std::fs::remove_file(missing.join("plugins.db")).unwrap();
    // A manifest from a newer schema.
    let newer = copy("newer");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(newer.join("manifest.json")).unwrap())
            .unwrap();
    manifest["schema_versions"]["core"] = 99.into();
    std::fs::write(newer.join("manifest.json"), manifest.to_string()).unwrap();

    for (dir, needle) in [
        ("corrupt", "does not match the manifest"),
        ("resealed", "integrity check failed"),
        ("missing", "plugins.db is missing"),
        ("newer", "newer than this build knows"),
    ] {
        let err = w.sv_err(&["restore", dir]);
        assert!(err.contains(needle), "{dir}: {err}");
        let err = w.sv_err(&["backup:verify", dir]);
        assert!(err.contains(needle), "{dir}: {err}");
        assert_eq!(live_fingerprints(&w), live, "{dir}: live files changed");
        assert!(!w.path().join("data").read_dir().unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("pre-restore")
        }));
    }

    // A restore refuses while the platform runs, and the good backup restores, moving
    // the current files aside rather than deleting them.
    let server = w.start(&["dev"]);
    let err = w.sv_err(&["restore", "good"]);
    assert!(
        err.contains("the platform is running") && err.contains("--stop"),
        "{err}"
    );
    let out = w.sv_ok(&["restore", "good", "--stop"]);
    assert!(out.contains("stopped the running platform"), "{out}");
    drop(server);
    assert_eq!(
        count(
            &w.core_db(),
            "SELECT count(*) FROM users WHERE email = 'after@x.io'"
        ),
        0
    );
    let aside: Vec<PathBuf> = w
        .path()
        .join("data")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pre-restore")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        count(
            &aside[0].join("core.db"),
            "SELECT count(*) FROM users WHERE email = 'after@x.io'"
        ),
        1
    );
}

#[test]
fn a_restore_that_dies_before_the_swap_leaves_the_old_set() {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    w.sv_ok(&["backup", "--out", "b"]);
    raw(&w.core_db())
        .execute(
            "INSERT INTO users (email, display_name) VALUES ('keep@x.io', 'K')",
            [],
        )
        .unwrap();
    let live = live_fingerprints(&w);
    let out = w
        .command(&["restore", "b"])
        .env("SV_TEST_CRASH_BEFORE_SWAP", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(live_fingerprints(&w), live);
    assert_eq!(
        count(
            &w.core_db(),
            "SELECT count(*) FROM users WHERE email = 'keep@x.io'"
        ),
        1
    );
}

/// A legacy single-file install: the core schema plus two plugins' tables and one
/// unprefixed table.
fn legacy_file(w: &Workdir) -> PathBuf {
    let path = w.path().join("legacy.db");
    let conn = raw(&path);
    sovereign_db_core::migrations().deploy(&conn).unwrap();
    conn.execute_batch(
        "DROP TABLE _sv_migrations;
         INSERT INTO users (id, email, display_name) VALUES (1, 'a@x.io', 'Ada'), (2, 'b@x.io', 'Bob'), (3, 'c@x.io', 'Cy');
         INSERT INTO credentials (user_id, password_hash) VALUES (1, 'h1'), (2, 'h2');
         INSERT INTO settings (key, value) VALUES ('site.name', '\"Acme\"');
         INSERT INTO plugins (id, manifest) VALUES
           ('tasks', '{\"id\":\"tasks\",\"name\":\"Tasks\",\"version\":\"1.0.0\"}'),
           ('notes', '{\"id\":\"notes\",\"name\":\"Notes\",\"version\":\"1.0.0\",\"database\":\"isolated\"}');
         CREATE TABLE tasks__items (id INTEGER PRIMARY KEY, title TEXT NOT NULL, assignee INTEGER);
         CREATE INDEX tasks__items_assignee ON tasks__items (assignee);
         CREATE TABLE notes__pages (id INTEGER PRIMARY KEY, body TEXT);
         CREATE TABLE todos (id INTEGER PRIMARY KEY, what TEXT);
         CREATE INDEX todos_what ON todos (what);
         CREATE VIEW open_todos AS SELECT * FROM todos;",
    )
    .unwrap();
    for i in 0..500 {
        conn.execute(
            "INSERT INTO tasks__items (title, assignee) VALUES (?1, ?2)",
            sovereign_db::rusqlite::params![format!("t{i}"), i % 3 + 1],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO notes__pages (body) VALUES (?1)",
            [format!("page {i}")],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO todos (what) VALUES (?1)",
            [format!("todo {i}")],
        )
        .unwrap();
    }
    drop(conn);
    // A legacy install is not in WAL mode and has no side files.
    path
}

#[test]
fn a_legacy_single_file_install_splits_with_matching_counts_and_checksums() {
    let w = Workdir::new();
    let legacy = legacy_file(&w);
    let before = sha(&legacy);
    let err = w.sv_err(&["migrate:split", "--from", "legacy.db"]);
    assert!(err.contains("cannot be attributed"), "{err}");
    let out = String::from_utf8(w.sv(&["migrate:split", "--from", "legacy.db"]).stdout).unwrap();
    assert!(
        out.contains("todos") && out.contains("UNATTRIBUTED"),
        "{out}"
    );
    assert!(
        !w.core_db().exists(),
        "nothing is written without attribution"
    );

    let plan = w.sv_ok(&[
        "migrate:split",
        "--from",
        "legacy.db",
        "--map",
        "todos=tasks",
        "--dry-run",
    ]);
    assert!(
        plan.contains("tasks__todos") && plan.contains("plugin notes (plugins/notes.db)"),
        "{plan}"
    );
    assert!(
        plan.contains("view open_todos") && plan.contains("dry run"),
        "{plan}"
    );
    assert!(!w.core_db().exists());

    let out = w.sv_ok(&[
        "migrate:split",
        "--from",
        "legacy.db",
        "--map",
        "todos=tasks",
    ]);
    assert!(
        out.contains("copied users ->") && out.contains(": 3 rows"),
        "{out}"
    );
    assert!(out.contains("built mirror core__users: 3 rows"), "{out}");
    assert_eq!(sha(&legacy), before, "the source is untouched");
    assert_eq!(count(&w.core_db(), "SELECT count(*) FROM credentials"), 2);
    assert_eq!(
        count(&w.plugins_db(), "SELECT count(*) FROM tasks__items"),
        500
    );
    assert_eq!(
        count(&w.plugins_db(), "SELECT count(*) FROM tasks__todos"),
        500
    );
    assert_eq!(
        count(
            &w.path().join("data/plugins/notes.db"),
            "SELECT count(*) FROM notes__pages"
        ),
        500
    );
    assert!(
        tables(&w.plugins_db())
            .iter()
            .all(|t| !t.starts_with("notes__"))
    );
    assert!(!tables(&w.core_db()).iter().any(|t| t.contains("__")));
    let indexes: i64 = count(
        &w.plugins_db(),
        "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name IN ('tasks__items_assignee', 'tasks__todos_what')",
    );
    assert_eq!(indexes, 2);

    // The result passes the isolation suite's checks.
    let err = w.sv_err(&["plugins", "sql", "tasks", "SELECT * FROM users"]);
    assert!(
        err.contains("no such table: users"),
        "core tables are not in the plugin store: {err}"
    );
    for (plugin, sql) in [
        ("tasks", "SELECT * FROM notes__pages"),
        ("tasks", "DELETE FROM core__users"),
        ("tasks", "SELECT * FROM sqlite_schema"),
        ("notes", "SELECT * FROM tasks__items"),
        ("notes", "DELETE FROM core__users"),
    ] {
        let err = w.sv_err(&["plugins", "sql", plugin, sql]);
        assert!(err.contains("may not"), "{plugin}: {sql}: {err}");
    }
    let out = w.sv_ok(&[
        "plugins",
        "sql",
        "tasks",
        "SELECT count(*) FROM tasks__todos",
    ]);
    assert!(out.contains("500"), "{out}");
    let err = w.sv_err(&[
        "migrate:split",
        "--from",
        "legacy.db",
        "--map",
        "todos=tasks",
    ]);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn purge_removes_exactly_one_plugins_data_after_backing_it_up() {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    install_plugin(
        &w,
        "tasks",
        "shared",
        "CREATE TABLE tasks__items (id INTEGER PRIMARY KEY, title TEXT); INSERT INTO tasks__items (title) VALUES ('a'), ('b');",
    );
    install_plugin(
        &w,
        "todo",
        "shared",
        "CREATE TABLE todo__list (id INTEGER PRIMARY KEY, x TEXT); INSERT INTO todo__list (x) VALUES ('keep');",
    );
    install_plugin(
        &w,
        "notes",
        "isolated",
        "CREATE TABLE notes__pages (id INTEGER PRIMARY KEY); INSERT INTO notes__pages DEFAULT VALUES;",
    );

    let report: serde_json::Value =
        serde_json::from_str(&w.sv_ok(&["plugins", "db", "inspect", "--json"])).unwrap();
    let ids: Vec<&str> = report["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tasks", "todo", "notes"]);
    assert_eq!(report["plugins"][0]["tables"][0]["rows"], 2);
    assert!(report["plugins"][0]["bytes"].as_u64().unwrap() >= 4096);
    let text = w.sv_ok(&["plugins", "db", "inspect", "tasks"]);
    assert!(
        text.contains("plugin tasks") && !text.contains("plugin todo"),
        "{text}"
    );

    let err = w.sv_err(&["plugins", "db", "purge", "tasks"]);
    assert!(err.contains("not confirmed"), "{err}");
    let out = w.sv_ok(&["plugins", "db", "purge", "tasks", "--yes"]);
    assert!(out.contains("backed up tasks's data to"), "{out}");
    let backup = PathBuf::from(
        out.lines()
            .find_map(|l| l.strip_prefix("backed up tasks's data to "))
            .unwrap(),
    );
    assert_eq!(count(&backup, "SELECT count(*) FROM tasks__items"), 2);
    assert!(
        !tables(&w.plugins_db())
            .iter()
            .any(|t| t.starts_with("tasks__"))
    );
    assert_eq!(
        count(&w.plugins_db(), "SELECT count(*) FROM todo__list"),
        1,
        "other plugins keep their rows"
    );
    assert_eq!(
        count(
            &w.path().join("data/plugins/notes.db"),
            "SELECT count(*) FROM notes__pages"
        ),
        1
    );

    w.sv_ok(&["plugins", "db", "purge", "notes", "--yes"]);
    assert!(!w.path().join("data/plugins/notes.db").exists());
    assert_eq!(count(&w.plugins_db(), "SELECT count(*) FROM todo__list"), 1);
    let out = w.sv_ok(&["plugins", "db", "vacuum"]);
    assert!(
        out.contains("plugins.db") && out.contains("reclaimed"),
        "{out}"
    );
}

#[test]
fn doctor_reports_and_fails_when_something_needs_action() {
    use std::os::unix::fs::PermissionsExt;
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    w.sv_ok(&["sync:run"]);
    let out = w.sv(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("integrity")
            && text.contains("sync")
            && text.contains("disk")
            && text.contains("sandbox"),
        "{text}"
    );
    let healthy = out.status.success() || text.contains("WARN sandbox");
    assert!(healthy, "{text}");
    std::fs::set_permissions(w.core_db(), std::fs::Permissions::from_mode(0o644)).unwrap();
    w.plugin_migration("late", "0001_x.sql", "CREATE TABLE late__x (a);");
    let out = w.sv(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("FAIL permissions") && text.contains("chmod 600"),
        "{text}"
    );
    assert!(
        text.contains("FAIL migrations") && text.contains("plugin:late: 0001_x.sql (pending)"),
        "{text}"
    );
}
