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
    common::add_component(&dir);
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

    // A second install of the same id never replaces the installed plugin, even with
    // another name, version and component.
    std::fs::write(
        pkg.join("plugin.json"),
        tasks_manifest("shared")
            .replace("\"Tasks\"", "\"Impostor\"")
            .replace("0.1.0", "9.9.9"),
    )
    .unwrap();
    let err = w.sv_err(&["plugins", "install", path_str(&pkg), "--yes"]);
    assert!(err.contains("tasks 0.1.0 is already installed"), "{err}");
    let list = w.sv_ok(&["plugins", "list"]);
    assert!(list.contains("0.1.0") && !list.contains("9.9.9"), "{list}");
    assert_eq!(
        std::fs::read(w.path().join("plugins/tasks/plugin.json")).unwrap(),
        tasks_manifest("shared").as_bytes(),
        "the installed package is untouched"
    );

    // New migrations of the installed package are deployed as plugin-scope migrations.
    std::fs::write(
        w.path().join("plugins/tasks/migrations/0002_done.sql"),
        "ALTER TABLE tasks__items ADD COLUMN done INTEGER NOT NULL DEFAULT 0;",
    )
    .unwrap();
    let out = w.sv_ok(&["migrate:deploy", "--scope=plugins"]);
    assert!(
        out.contains("0002_done.sql") && !out.contains("0001_init"),
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
    assert!(err.contains("already installed"), "{err}");

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
    // Migrations are tracked in the new file: nothing is pending there.
    let out = w.sv_ok(&["migrate:status", "--scope=plugins"]);
    assert!(!out.contains("pending"), "{out}");
    w.sv_ok(&["plugins", "move", "tasks", "--to", "shared"]);
    let out = w.sv_ok(&[
        "plugins",
        "sql",
        "tasks",
        "SELECT count(*) FROM tasks__items",
    ]);
    assert!(out.contains("\n2\n"), "{out}");
}

#[test]
fn reserved_ids_are_refused_at_install_behind_the_fence_and_by_doctor() {
    let w = setup();
    for id in [
        "core", "sv", "sqlite", "sqlite_x", "main", "temp", "mirror", "pragma_x",
    ] {
        let pkg = package(
            &w,
            id,
            &format!(r#"{{ "id": "{id}", "name": "X", "version": "1.0.0" }}"#),
            &[(
                "0001_init.sql",
                &format!("CREATE TABLE {id}__users (id INTEGER PRIMARY KEY, display_name TEXT);"),
            )],
        );
        let err = w.sv_err(&["plugins", "install", path_str(&pkg), "--yes"]);
        assert!(
            err.contains("$.id") && err.contains("reserved"),
            "{id}: {err}"
        );
    }
    assert!(
        !tables(&w.plugins_db())
            .iter()
            .any(|t| t.starts_with("core__") || t.starts_with("sv__")),
        "nothing was created"
    );
    // A bare package directory named `core` cannot act as a plugin either.
    w.plugin_migration(
        "core",
        "0001_x.sql",
        "CREATE TABLE core__users (id INTEGER);",
    );
    let err = w.sv_err(&["plugins", "sql", "core", "DROP TABLE core__users"]);
    assert!(err.contains("cannot be a plugin id"), "{err}");
    std::fs::remove_dir_all(w.path().join("plugins/core")).unwrap();

    // A registry written by an older version with a reserved id fails the doctor.
    common::raw(&w.core_db())
        .execute(
            "INSERT INTO plugins (id, enabled, manifest)
             VALUES ('core', 1, '{\"id\": \"core\", \"name\": \"ghost\", \"version\": \"1.0.0\"}')",
            [],
        )
        .unwrap();
    let out = w.sv(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("registry") && text.contains("\"core\"") && text.contains("reserved"),
        "{text}"
    );
}

#[test]
fn a_broken_package_installs_nothing_and_says_why() {
    let w = setup();
    let manifest = r#"{ "id": "broken", "name": "B", "version": "1.0.0" }"#;
    let migration = (
        "0001_init.sql",
        "CREATE TABLE broken__t (id INTEGER PRIMARY KEY);",
    );

    let pkg = package(&w, "broken", manifest, &[migration]);
    std::fs::remove_dir_all(pkg.join("migrations")).unwrap();
    let err = w.sv_err(&["plugins", "install", path_str(&pkg), "--yes"]);
    assert!(
        err.contains("migrations") && err.contains("is missing"),
        "{err}"
    );

    let pkg = package(&w, "broken", manifest, &[migration]);
    std::fs::remove_file(pkg.join("plugin.wasm")).unwrap();
    let err = w.sv_err(&["plugins", "install", path_str(&pkg), "--yes"]);
    assert!(err.contains("plugin.wasm does not exist"), "{err}");

    std::fs::write(pkg.join("plugin.wasm"), b"not wasm at all").unwrap();
    let err = w.sv_err(&["plugins", "install", path_str(&pkg), "--yes"]);
    assert!(err.contains("is not a WebAssembly component"), "{err}");

    // A core module (the smallest valid wasm) is not a component.
    std::fs::write(pkg.join("plugin.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let err = w.sv_err(&["plugins", "install", path_str(&pkg), "--yes"]);
    assert!(err.contains("is not a WebAssembly component"), "{err}");

    // A component of a plugin API this host does not serve.
    let mut bytes = std::fs::read(common::example_component()).unwrap();
    let (from, to) = (b"@0.2.0", b"@9.9.0");
    let mut patched = 0;
    for at in 0..bytes.len() - from.len() {
        if &bytes[at..at + from.len()] == from {
            bytes[at..at + to.len()].copy_from_slice(to);
            patched += 1;
        }
    }
    assert!(patched > 0, "the component names its API version");
    std::fs::write(pkg.join("plugin.wasm"), &bytes).unwrap();
    let err = w.sv_err(&["plugins", "install", path_str(&pkg), "--yes"]);
    assert!(err.contains("targets plugin API 9.9.0"), "{err}");

    assert!(!w.path().join("plugins/broken").exists());
    assert!(!tables(&w.plugins_db()).contains(&"broken__t".to_owned()));
    assert!(
        w.sv_ok(&["plugins", "list"])
            .contains("no plugins installed")
    );
}

#[test]
fn a_failed_install_leaves_nothing_behind() {
    for mode in ["shared", "isolated"] {
        let w = setup();
        let pkg = package(
            &w,
            "half",
            &format!(
                r#"{{ "id": "half", "name": "H", "version": "1.0.0", "database": "{mode}" }}"#
            ),
            &[
                (
                    "0001_a.sql",
                    "CREATE TABLE half__a (id INTEGER PRIMARY KEY);",
                ),
                (
                    "0002_b.sql",
                    "CREATE TABLE half__b (id INTEGER PRIMARY KEY);",
                ),
                (
                    "0003_bad.sql",
                    "CREATE TABLE half__c (id INTEGER PRIMARY KEY);\nSELECT nonsense FROM;",
                ),
            ],
        );
        let err = w.sv_err(&["plugins", "install", path_str(&pkg), "--yes"]);
        assert!(
            err.contains("0003_bad.sql") && err.contains("nothing of it remains"),
            "{err}"
        );
        assert!(
            !tables(&w.plugins_db())
                .iter()
                .any(|t| t.starts_with("half__")),
            "{mode}: no tables of the earlier migrations"
        );
        let recorded: i64 = common::raw(&w.plugins_db())
            .query_row(
                "SELECT count(*) FROM _sv_migrations WHERE scope = 'plugin:half'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        assert_eq!(recorded, 0, "{mode}: no migration records");
        assert!(
            !w.path().join("data/plugins/half.db").exists(),
            "{mode}: no isolated file"
        );
        assert!(!w.path().join("plugins/half").exists());
        // Fixed, the same package installs.
        std::fs::write(
            pkg.join("migrations/0003_bad.sql"),
            "CREATE TABLE half__c (id INTEGER);",
        )
        .unwrap();
        w.sv_ok(&["plugins", "install", path_str(&pkg), "--yes"]);
    }
}

#[test]
fn a_new_package_builds_validates_installs_and_answers() {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    let pkg = w.path().join("authoring/hello");
    let out = w.sv_ok(&["plugins", "new", "hello", "--dir", path_str(&pkg)]);
    assert!(out.contains("GET /api/plugins/hello/hello"), "{out}");
    for file in [
        "Cargo.toml",
        "plugin.json",
        "migrations/0001_init.sql",
        "src/lib.rs",
        "sdk/wit/plugin.wit",
    ] {
        assert!(pkg.join(file).is_file(), "{file} was not written");
    }
    let again = w.sv_err(&["plugins", "new", "hello", "--dir", path_str(&pkg)]);
    assert!(again.contains("is not empty"), "{again}");
    let reserved = w.sv_err(&["plugins", "new", "core"]);
    assert!(reserved.contains("cannot be a plugin id"), "{reserved}");

    // The example plugins' target directory holds the compiled dependencies already.
    let shared_target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm-plugins");
    let no_rustc = w
        .command(&["plugins", "build", path_str(&pkg)])
        .env("RUSTC", "/nonexistent/rustc")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&no_rustc.stderr);
    assert!(
        !no_rustc.status.success() && stderr.contains("install Rust"),
        "{stderr}"
    );
    let with_cached_deps = |args: &[&str]| {
        let mut command = w.command(args);
        command.env("CARGO_TARGET_DIR", &shared_target);
        command
    };
    let built = with_cached_deps(&["plugins", "build", path_str(&pkg)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success() && stdout.contains("the package is valid"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(pkg.join("plugin.wasm").is_file());

    // A manifest stating a plugin API this host does not serve is refused, naming both.
    let manifest = std::fs::read_to_string(pkg.join("plugin.json")).unwrap();
    std::fs::write(
        pkg.join("plugin.json"),
        manifest.replace("\"plugin_api\": \"0.2.0\"", "\"plugin_api\": \"9.0.0\""),
    )
    .unwrap();
    let wrong_api = w.sv_err(&["plugins", "install", path_str(&pkg), "--yes"]);
    assert!(
        wrong_api.contains("plugin API 9.0.0") && wrong_api.contains("serves 0.1.0, 0.2.0"),
        "{wrong_api}"
    );
    std::fs::write(pkg.join("plugin.json"), &manifest).unwrap();

    // The package's own tests run against a throwaway platform with the real host.
    let tested = with_cached_deps(&["plugins", "test", path_str(&pkg)])
        .output()
        .unwrap();
    assert!(
        tested.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );
    assert!(
        String::from_utf8_lossy(&tested.stdout)
            .contains("hello_answers_the_greeting_in_its_table ... ok")
    );
    std::fs::write(
        pkg.join("tests/wrong.rs"),
        "#[test]\nfn expects_another_greeting() {\n    let p = sovereign_plugin_testkit::TestPlatform::connect();\n    assert_eq!(p.get(\"/hello\").body[\"text\"], \"Goodbye\");\n}\n",
    )
    .unwrap();
    let failed = with_cached_deps(&["plugins", "test", path_str(&pkg)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success() && stderr.contains("the plugin's tests failed"),
        "{stderr}"
    );
    std::fs::remove_file(pkg.join("tests/wrong.rs")).unwrap();

    w.sv_ok(&["plugins", "install", path_str(&pkg), "--yes"]);
    w.create_user("root@example.com", "root password 1", true);
    let server = w.start(&["serve"]);
    let token = server.login("root@example.com", "root password 1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let reply = loop {
        let reply = server.get("/api/plugins/hello/hello", Some(&token));
        if reply.status != 503 || std::time::Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["text"], "Hello from hello");

    // Waits until the route answers `text` (the host reloads after a change).
    let answers = |text: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let reply = server.get("/api/plugins/hello/hello", Some(&token));
            if reply.status == 200 && reply.body["text"] == text {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the route never answered {text:?}: {} {}",
                reply.status,
                reply.text
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };

    // An upgrade: a newer version with a second migration, applied behind the fence.
    std::fs::write(
        pkg.join("migrations/0002_again.sql"),
        "UPDATE hello__greetings SET text = 'Hello again';",
    )
    .unwrap();
    let manifest = std::fs::read_to_string(pkg.join("plugin.json")).unwrap();
    std::fs::write(
        pkg.join("plugin.json"),
        manifest.replace("\"version\": \"0.1.0\"", "\"version\": \"0.2.0\""),
    )
    .unwrap();
    let out = w.sv_ok(&["plugins", "upgrade", path_str(&pkg), "--yes"]);
    assert!(
        out.contains("applied 0002_again.sql") && out.contains("0.1.0 -> 0.2.0"),
        "{out}"
    );
    answers("Hello again");
    let same = w.sv_err(&["plugins", "upgrade", path_str(&pkg)]);
    assert!(same.contains("is not newer"), "{same}");

    // The development loop: an edit to the source is built, installed and reloaded.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let dev_output = w.path().join("dev.out");
    let _dev = KillOnDrop(
        with_cached_deps(&["plugins", "dev", path_str(&pkg)])
            .stdout(std::fs::File::create(&dev_output).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    let source = std::fs::read_to_string(pkg.join("src/lib.rs")).unwrap();
    std::fs::write(
        pkg.join("src/lib.rs"),
        source.replace(
            "SELECT id, text FROM",
            "SELECT id, upper(text) AS text FROM",
        ),
    )
    .unwrap();
    answers("HELLO AGAIN");
    // The plugin's log lines show in the same terminal, and in `sv plugins logs`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let printed = std::fs::read_to_string(&dev_output).unwrap();
        if printed.contains("[hello]") && printed.contains("INFO  answered greeting") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line in the dev loop's output: {printed}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let logs = w.sv_ok(&["plugins", "logs", "hello", "--lines", "1"]);
    assert!(
        logs.contains("answered greeting") && logs.lines().count() == 1,
        "{logs}"
    );
    let unknown = w.sv_err(&["plugins", "logs", "nope"]);
    assert!(unknown.contains("not installed"), "{unknown}");
}
