//! `sv plugins ...` through the real binary.

mod common;

use std::path::{Path, PathBuf};

use common::{Workdir, tables};

/// Writes a plugin package into `<workdir>/packages/<id>` and returns its path.
fn package(w: &Workdir, id: &str, manifest: &str, migrations: &[(&str, &str)]) -> PathBuf {
    let dir = w.path().join("packages").join(id);
    std::fs::create_dir_all(dir.join("migrations")).unwrap();
    std::fs::write(dir.join("plugin.json"), manifest).unwrap();
    for (file, sql) in migrations {
        std::fs::write(dir.join("migrations").join(file), sql).unwrap();
    }
    dir
}

fn tasks_manifest(mode: &str) -> String {
    format!(
        r#"{{ "id": "tasks", "name": "Tasks", "version": "0.1.0", "database": "{mode}",
              "reads": {{ "users": ["id", "display_name"] }}, "emits": ["task.completed"] }}"#
    )
}

const TASKS_MIGRATION: (&str, &str) = (
    "0001_init.sql",
    "CREATE TABLE tasks__items (id INTEGER PRIMARY KEY, title TEXT NOT NULL, assignee INTEGER);\n\
     CREATE INDEX tasks__items_assignee ON tasks__items (assignee);\n\
     INSERT INTO tasks__items (title) VALUES ('first');",
);

fn setup() -> Workdir {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    w
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn install_registers_copies_and_migrates_behind_the_fence() {
    let w = setup();
    let pkg = package(&w, "tasks", &tasks_manifest("shared"), &[TASKS_MIGRATION]);
    let out = w.sv_ok(&["plugins", "install", path_str(&pkg), "--yes"]);
    assert!(out.contains("users: id, display_name"), "{out}");
    assert!(out.contains("plugin:tasks: applied 0001_init.sql"), "{out}");
    assert!(out.contains("installed tasks 0.1.0 (shared mode"), "{out}");
    assert!(
        w.path().join("plugins/tasks/plugin.json").exists(),
        "package copied into the plugins dir"
    );
    assert!(tables(&w.plugins_db()).contains(&"tasks__items".to_owned()));
    assert!(
        tables(&w.plugins_db()).contains(&"core__users".to_owned()),
        "granted mirror exists"
    );
    assert!(
        !tables(&w.core_db())
            .iter()
            .any(|t| t.starts_with("tasks__"))
    );
    let list = w.sv_ok(&["plugins", "list"]);
    assert!(
        list.contains("tasks") && list.contains("enabled") && list.contains("users.display_name"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&w.sv_ok(&["plugins", "list", "--json"])).unwrap();
    assert_eq!(json[0]["database"], "shared");

    // Re-installing is idempotent and a second migration is applied.
    std::fs::write(
        pkg.join("migrations/0002_done.sql"),
        "ALTER TABLE tasks__items ADD COLUMN done INTEGER NOT NULL DEFAULT 0;",
    )
    .unwrap();
    let out = w.sv_ok(&["plugins", "install", path_str(&pkg), "--yes"]);
    assert!(
        out.contains("applied 0002_done.sql") && !out.contains("0001_init"),
        "{out}"
    );
    let status = w.sv_ok(&["migrate:status", "--scope=plugins"]);
    assert!(
        status.contains("plugin:tasks") && !status.contains("pending"),
        "{status}"
    );
}

#[test]
fn unapproved_grants_and_bad_manifests_install_nothing() {
    let w = setup();
    let pkg = package(&w, "tasks", &tasks_manifest("shared"), &[TASKS_MIGRATION]);
    let err = w.sv_err(&["plugins", "install", path_str(&pkg)]);
    assert!(err.contains("grants not approved"), "{err}");
    assert!(!w.path().join("plugins/tasks").exists());
    assert!(!tables(&w.plugins_db()).contains(&"tasks__items".to_owned()));
    assert!(
        w.sv_ok(&["plugins", "list"])
            .contains("no plugins installed")
    );

    let bad = package(
        &w,
        "bad",
        r#"{ "id": "Bad__Id", "name": "B", "version": "one", "limits": { "memory_gb": 1 } }"#,
        &[],
    );
    let err = w.sv_err(&["plugins", "install", path_str(&bad), "--yes"]);
    assert!(
        err.contains("$.limits.memory_gb") && err.contains("unknown field"),
        "{err}"
    );
    let bad2 = package(
        &w,
        "bad2",
        r#"{ "id": "Bad__Id", "name": "B", "version": "one" }"#,
        &[],
    );
    let err = w.sv_err(&["plugins", "install", path_str(&bad2), "--yes"]);
    assert!(err.contains("$.id") && err.contains("$.version"), "{err}");
}

#[test]
fn a_migration_reaching_outside_its_namespace_fails_the_install() {
    let w = setup();
    let notes = package(
        &w,
        "notes",
        r#"{ "id": "notes", "name": "Notes", "version": "1.0.0" }"#,
        &[(
            "0001_init.sql",
            "CREATE TABLE notes__n (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes__n (body) VALUES ('private');",
        )],
    );
    w.sv_ok(&["plugins", "install", path_str(&notes)]);
    let evil = package(
        &w,
        "evil",
        r#"{ "id": "evil", "name": "Evil", "version": "1.0.0" }"#,
        &[
            ("0001_ok.sql", "CREATE TABLE evil__loot (body TEXT);"),
            (
                "0002_steal.sql",
                "INSERT INTO evil__loot SELECT body FROM notes__n;",
            ),
        ],
    );
    let err = w.sv_err(&["plugins", "install", path_str(&evil)]);
    assert!(err.contains("0002_steal.sql"), "{err}");
    assert!(err.contains("plugin evil may not read notes__n"), "{err}");
    assert!(err.contains("nothing was registered"), "{err}");
    assert!(!w.sv_ok(&["plugins", "list"]).contains("evil"));
    let planted = package(
        &w,
        "planter",
        r#"{ "id": "planter", "name": "P", "version": "1.0.0" }"#,
        &[("0001.sql", "")],
    );
    std::fs::remove_file(planted.join("migrations/0001.sql")).unwrap();
    std::fs::write(
        planted.join("migrations/0001_plant.sql"),
        "CREATE TABLE notes__fake (x);",
    )
    .unwrap();
    let err = w.sv_err(&["plugins", "install", path_str(&planted)]);
    assert!(err.contains("may not create table notes__fake"), "{err}");
    assert!(!tables(&w.plugins_db()).contains(&"notes__fake".to_owned()));
}

#[test]
fn plugins_sql_runs_exactly_as_the_plugin_would() {
    let w = setup();
    let pkg = package(&w, "tasks", &tasks_manifest("shared"), &[TASKS_MIGRATION]);
    w.sv_ok(&["plugins", "install", path_str(&pkg), "--yes"]);
    let out = w.sv_ok(&[
        "plugins",
        "sql",
        "tasks",
        "SELECT id, title FROM tasks__items",
    ]);
    assert!(
        out.contains("id | title") && out.contains("first") && out.contains("(1 row)"),
        "{out}"
    );
    let out = w.sv_ok(&[
        "plugins",
        "sql",
        "tasks",
        "INSERT INTO tasks__items (title) VALUES ('second')",
    ]);
    assert!(out.contains("1 row(s) affected"), "{out}");
    let json: serde_json::Value = serde_json::from_str(&w.sv_ok(&[
        "plugins",
        "sql",
        "tasks",
        "SELECT title FROM tasks__items ORDER BY id",
        "--json",
    ]))
    .unwrap();
    assert_eq!(json[1]["title"], "second");
    for (sql, needle) in [
        (
            "SELECT * FROM sqlite_schema",
            "plugin tasks may not read sqlite_schema",
        ),
        ("SELECT email FROM core__users", "no such column: email"),
        (
            "SELECT avatar_url FROM core__users",
            "core__users.avatar_url",
        ),
        (
            "DELETE FROM core__users",
            "plugin tasks may not write mirror table core__users",
        ),
        (
            "ATTACH DATABASE 'data/core.db' AS core",
            "plugin tasks may not attach",
        ),
        ("SELECT 1; SELECT 2", "exactly one SQL statement"),
    ] {
        let err = w.sv_err(&["plugins", "sql", "tasks", sql]);
        assert!(err.contains(needle), "{sql}: {err}");
    }
    let err = w.sv_err(&["plugins", "sql", "nobody", "SELECT 1"]);
    assert!(err.contains("not installed"), "{err}");
}

#[test]
fn the_db_shell_reads_statements_until_semicolons() {
    let w = setup();
    let pkg = package(&w, "tasks", &tasks_manifest("shared"), &[TASKS_MIGRATION]);
    w.sv_ok(&["plugins", "install", path_str(&pkg), "--yes"]);
    let out = w.sv_with_input(
        &["plugins", "db", "shell", "tasks"],
        ".tables\nINSERT INTO tasks__items (title)\n  VALUES ('from shell');\nSELECT count(*) AS n FROM tasks__items;\nSELECT * FROM notes__x;\n.quit\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("table    tasks__items"), "{text}");
    assert!(text.contains("1 row(s) affected"), "{text}");
    assert!(text.contains("n\n") && text.contains("2\n"), "{text}");
    assert!(
        text.contains("error: plugin tasks may not read notes__x"),
        "{text}"
    );
    assert!(
        !out.status.success(),
        "a failed statement in a script exits non-zero"
    );
}

#[test]
fn remove_keeps_data_unless_purged_and_enable_disable_toggle() {
    let w = setup();
    let pkg = package(&w, "tasks", &tasks_manifest("shared"), &[TASKS_MIGRATION]);
    w.sv_ok(&["plugins", "install", path_str(&pkg), "--yes"]);
    w.sv_ok(&["plugins", "disable", "tasks"]);
    assert!(w.sv_ok(&["plugins", "list"]).contains("disabled"));
    w.sv_ok(&["plugins", "enable", "tasks"]);
    let out = w.sv_ok(&["plugins", "remove", "tasks"]);
    assert!(out.contains("data is kept"), "{out}");
    assert!(tables(&w.plugins_db()).contains(&"tasks__items".to_owned()));
    w.sv_ok(&["plugins", "install", path_str(&pkg), "--yes"]);
    let out = w.sv_ok(&[
        "plugins",
        "sql",
        "tasks",
        "SELECT count(*) FROM tasks__items",
    ]);
    assert!(
        out.contains("\n1\n"),
        "data survived remove and reinstall: {out}"
    );
    w.sv_ok(&["plugins", "remove", "tasks", "--purge"]);
    assert!(
        !tables(&w.plugins_db())
            .iter()
            .any(|t| t.starts_with("tasks__"))
    );
    let err = w.sv_err(&["plugins", "remove", "tasks"]);
    assert!(err.contains("not installed"), "{err}");
}

#[test]
fn switching_mode_needs_the_explicit_move_which_keeps_the_data() {
    let w = setup();
    let pkg = package(&w, "tasks", &tasks_manifest("shared"), &[TASKS_MIGRATION]);
    w.sv_ok(&["plugins", "install", path_str(&pkg), "--yes"]);
    w.sv_ok(&[
        "plugins",
        "sql",
        "tasks",
        "INSERT INTO tasks__items (title) VALUES ('keep me')",
    ]);
    std::fs::write(pkg.join("plugin.json"), tasks_manifest("isolated")).unwrap();
    let err = w.sv_err(&["plugins", "install", path_str(&pkg), "--yes"]);
    assert!(err.contains("sv plugins move tasks --to isolated"), "{err}");

    let out = w.sv_ok(&["plugins", "move", "tasks", "--to", "isolated"]);
    assert!(out.contains("moved tasks__items (2 rows)"), "{out}");
    let isolated = w.path().join("data/plugins/tasks.db");
    assert!(tables(&isolated).contains(&"tasks__items".to_owned()));
    assert!(
        !tables(&w.plugins_db())
            .iter()
            .any(|t| t.starts_with("tasks__"))
    );
    let out = w.sv_ok(&[
        "plugins",
        "sql",
        "tasks",
        "SELECT title FROM tasks__items ORDER BY id",
    ]);
    assert!(out.contains("keep me"), "{out}");
    // The mirror is still readable, read-only, through the attachment.
    w.sv_ok(&[
        "plugins",
        "sql",
        "tasks",
        "SELECT count(*) FROM core__users",
    ]);
    let err = w.sv_err(&["plugins", "sql", "tasks", "DELETE FROM core__users"]);
    assert!(err.contains("may not"), "{err}");
    // Now the isolated package installs, and migrations are tracked in the new file.
    let out = w.sv_ok(&["plugins", "install", path_str(&pkg), "--yes"]);
    assert!(!out.contains("applied 0001_init.sql"), "{out}");
    w.sv_ok(&["plugins", "move", "tasks", "--to", "shared"]);
    let out = w.sv_ok(&[
        "plugins",
        "sql",
        "tasks",
        "SELECT count(*) FROM tasks__items",
    ]);
    assert!(out.contains("\n2\n"), "{out}");
}
