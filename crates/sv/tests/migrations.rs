//! Scoped migrations through the real `sv` binary.

mod common;

use common::{Workdir, raw, tables};

#[test]
fn dev_creates_both_files_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let w = Workdir::new();
    let server = w.start(&["dev"]);
    for path in [w.core_db(), w.plugins_db()] {
        assert!(path.exists(), "{} missing", path.display());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    assert!(
        server
            .stdout
            .iter()
            .any(|l| l.contains(&w.core_db().display().to_string())),
        "{:?}",
        server.stdout
    );
    assert!(
        server
            .stdout
            .iter()
            .any(|l| l.contains(&w.plugins_db().display().to_string()))
    );
    assert!(server.stop().success(), "graceful shutdown exits 0");
}

#[test]
fn a_plugin_migration_lands_in_the_plugin_store_and_never_in_core() {
    let w = Workdir::new();
    w.plugin_migration(
        "tasks",
        "0001_init.sql",
        "CREATE TABLE tasks__items (id INTEGER PRIMARY KEY, title TEXT);",
    );
    let out = w.sv_ok(&["migrate:deploy"]);
    assert!(out.contains("core: applied 0001_init.sql"), "{out}");
    assert!(out.contains("plugin:tasks: applied 0001_init.sql"), "{out}");
    assert!(tables(&w.plugins_db()).contains(&"tasks__items".to_owned()));
    assert!(!tables(&w.core_db()).contains(&"tasks__items".to_owned()));
    let core_rows: i64 = raw(&w.core_db())
        .query_row(
            "SELECT count(*) FROM _sv_migrations WHERE scope LIKE 'plugin:%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(core_rows, 0);

    // Pointing the plugin store at a copy of core.db is refused before anything runs.
    w.plugin_migration(
        "tasks",
        "0002_more.sql",
        "CREATE TABLE tasks__more (id INTEGER PRIMARY KEY);",
    );
    let copy = w.path().join("data/copy-of-core.db");
    std::fs::copy(w.core_db(), &copy).unwrap();
    let err = w.sv_err(&[
        "migrate:deploy",
        "--scope=plugins",
        "--plugin-database-url",
        "file:data/copy-of-core.db",
    ]);
    assert!(
        err.contains("is the core store, not the plugins store"),
        "{err}"
    );
    assert!(!tables(&copy).contains(&"tasks__more".to_owned()));
}

#[test]
fn a_failing_migration_leaves_no_trace_and_stops_later_ones() {
    let w = Workdir::new();
    w.plugin_migration(
        "tasks",
        "0001_init.sql",
        "CREATE TABLE tasks__items (id INTEGER PRIMARY KEY);",
    );
    w.plugin_migration(
        "tasks",
        "0002_broken.sql",
        "CREATE TABLE tasks__half (x);\nINSERT INTO tasks__half VALUES (1);\nALTER TABLE tasks__missing ADD COLUMN y;\n",
    );
    w.plugin_migration("tasks", "0003_later.sql", "CREATE TABLE tasks__later (x);");
    let out = w.sv(&["migrate:deploy", "--scope", "plugins"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0002_broken.sql"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(
        err.contains("ALTER TABLE tasks__missing ADD COLUMN y;"),
        "{err}"
    );
    assert!(err.contains("no such table: tasks__missing"), "{err}");
    let t = tables(&w.plugins_db());
    assert!(t.contains(&"tasks__items".to_owned()));
    assert!(!t.contains(&"tasks__half".to_owned()), "{t:?}");
    assert!(!t.contains(&"tasks__later".to_owned()), "{t:?}");
    let status = w.sv_ok(&["migrate:status", "--scope=plugins"]);
    assert!(
        status.contains("0002_broken.sql") && status.contains("pending"),
        "{status}"
    );
}

#[test]
fn an_edited_migration_is_refused_showing_both_checksums() {
    let w = Workdir::new();
    let file = w.plugin_migration(
        "notes",
        "0001_init.sql",
        "CREATE TABLE notes__n (id INTEGER PRIMARY KEY);",
    );
    w.sv_ok(&["migrate", "deploy", "--scope", "plugins"]);
    std::fs::write(
        &file,
        "CREATE TABLE notes__n (id INTEGER PRIMARY KEY, body TEXT);",
    )
    .unwrap();
    w.plugin_migration("notes", "0002_next.sql", "CREATE TABLE notes__next (x);");
    let err = w.sv_err(&["migrate:deploy", "--scope=plugins", "--plugin", "notes"]);
    assert!(
        err.contains("0001_init.sql was changed after it was applied"),
        "{err}"
    );
    let recorded: String = raw(&w.plugins_db())
        .query_row(
            "SELECT checksum FROM _sv_migrations WHERE scope = 'plugin:notes'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(err.contains(&recorded), "{err}");
    let now = err.split("checksum now: ").nth(1).unwrap_or_default();
    assert!(
        now.len() >= 64 && now[..64].chars().all(|c| c.is_ascii_hexdigit()),
        "{err}"
    );
    assert_ne!(&now[..64], recorded);
    assert!(!tables(&w.plugins_db()).contains(&"notes__next".to_owned()));
    let status = w.sv_ok(&["migrate", "status"]);
    assert!(status.contains("CHANGED after apply"), "{status}");
}

#[test]
fn dry_run_changes_nothing_and_plugin_flag_needs_the_plugin_scope() {
    let w = Workdir::new();
    w.plugin_migration(
        "tasks",
        "0001_init.sql",
        "CREATE TABLE tasks__items (id INTEGER PRIMARY KEY);",
    );
    let out = w.sv_ok(&["migrate:deploy", "--dry-run"]);
    assert!(out.contains("core: would apply 0001_init.sql"), "{out}");
    assert!(
        out.contains("plugin:tasks: would apply 0001_init.sql"),
        "{out}"
    );
    assert!(!w.core_db().exists() && !w.plugins_db().exists());
    let err = w.sv_err(&["migrate:deploy", "--scope=core", "--plugin", "tasks"]);
    assert!(err.contains("--plugin limits the plugin scope"), "{err}");
    let err = w.sv_err(&["migrate:deploy", "--plugin", "nope"]);
    assert!(err.contains("no plugin \"nope\""), "{err}");
}

#[test]
fn serve_refuses_pending_migrations_and_names_the_command() {
    let w = Workdir::new();
    let err = w.sv_err(&["serve"]);
    assert!(err.contains("sv migrate:deploy"), "{err}");
    w.sv_ok(&["migrate:deploy", "--scope=core"]);
    w.plugin_migration(
        "tasks",
        "0001_init.sql",
        "CREATE TABLE tasks__items (id INTEGER PRIMARY KEY);",
    );
    let err = w.sv_err(&["serve"]);
    assert!(
        err.contains("plugin:tasks: 0001_init.sql (pending)"),
        "{err}"
    );
    assert!(err.contains("run `sv migrate:deploy`"), "{err}");
    w.sv_ok(&["migrate:deploy"]);
    let server = w.start(&["serve"]);
    assert_eq!(server.get("/health", None).body["status"], "ok");
}

#[test]
fn a_second_platform_on_the_same_data_directory_is_refused() {
    let w = Workdir::new();
    let _first = w.start(&["dev"]);
    let err = w.sv_err(&["dev", "--port", "0"]);
    assert!(err.contains("already running"), "{err}");
}
