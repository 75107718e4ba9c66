//! Sovereign on a real MariaDB from `scripts/mariadb`: `sv mysql:roles` (the printed
//! script, run by a DBA with the `mariadb` client, and `--apply` make the same databases,
//! accounts and provisioning procedures; a bad URL is refused with what to fix), and the
//! served platform with its core store on MySQL, beside a plugin store on MySQL or in
//! SQLite files (where the mirror is fed by capture triggers on the MySQL core), which
//! then serves its core alone. The fence is tested in `sovereign-mysql/tests/fence.rs`.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use common::Workdir;
use mysql::prelude::Queryable;
use sovereign_mysql::Server;

#[test]
fn sv_prints_and_applies_the_mysql_accounts_and_procedures() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb");
    let server = Server::start(&script).unwrap();
    let core_url = server.url("svc_core", "core-secret-1234", "sv_core");
    let plugins_url = server.url("svc_plugins", "plugins-secret-12", "sv_plugins");
    let w = Workdir::new();
    let urls = [
        "--database-url",
        core_url.as_str(),
        "--plugin-database-url",
        plugins_url.as_str(),
    ];

    let mut print = urls.to_vec();
    print.extend(["mysql:roles", "--print"]);
    let printed = w.sv_ok(&print);
    assert!(
        printed.contains("CREATE DATABASE IF NOT EXISTS `sv_core`"),
        "{printed}"
    );
    assert!(
        printed.contains("sv_admin.create_plugin_account"),
        "{printed}"
    );
    // The DBA's way: the printed script through the `mariadb` client.
    let admin = sovereign_mysql::StoreUrl::parse("admin", server.admin_url()).unwrap();
    let (host, port) = admin.server.split_once(':').unwrap();
    let mut client = std::process::Command::new("mariadb")
        .args([
            "--protocol=tcp",
            "-h",
            host,
            "-P",
            port,
            "-u",
            &admin.account,
            &format!("-p{}", admin.password),
        ])
        .stdin(Stdio::piped())
        .output_with(printed.as_bytes());
    assert!(
        client.status.success(),
        "{}",
        String::from_utf8_lossy(&client.stderr)
    );
    client.stdout.clear();

    let mut apply = urls.to_vec();
    apply.extend(["mysql:roles", "--apply", "--admin-url", server.admin_url()]);
    let applied = w.sv_ok(&apply);
    assert!(
        applied.contains("the core and plugin databases"),
        "{applied}"
    );

    let mut store = sovereign_mysql::roles::connect(&plugins_url).unwrap();
    store
        .exec_drop(
            "CALL sv_admin.create_plugin_account(?, ?, ?)",
            ("tasks", "taskstaskstasks12", 10),
        )
        .unwrap();
    let mut tasks = sovereign_mysql::roles::connect(&server.url(
        "svp_tasks",
        "taskstaskstasks12",
        "sv_plugins_tasks",
    ))
    .unwrap();
    tasks
        .query_drop("CREATE TABLE tasks__lists (id BIGINT PRIMARY KEY)")
        .unwrap();

    let refused = w.sv_err(&[
        "--plugin-database-url",
        "mysql://svc_plugins@127.0.0.1/sv_plugins",
        "mysql:roles",
        "--print",
    ]);
    assert!(refused.contains("it has no password"), "{refused}");
}

/// A MariaDB with both stores' accounts made by `sv mysql:roles`, the URLs written to
/// `sovereign.toml` (the plugin store's only with `plugins_on_mysql`), and the core
/// migrated by `sv migrate:deploy`; returns the server and the core's URL.
fn mysql_core(w: &Workdir, plugins_on_mysql: bool) -> (Server, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb");
    let server = Server::start(&script).unwrap();
    let core_url = server.url("svc_core", "core-secret-1234", "sv_core");
    let plugins_url = server.url("svc_plugins", "plugins-secret-12", "sv_plugins");
    let mut toml = format!("database_url = \"{core_url}\"\n");
    if plugins_on_mysql {
        toml.push_str(&format!("plugin_database_url = \"{plugins_url}\"\n"));
    }
    std::fs::write(w.path().join("sovereign.toml"), toml).unwrap();
    // The plan needs a plugin store URL even when plugins stay in files.
    let applied = w.sv_ok(&[
        "--plugin-database-url",
        &plugins_url,
        "mysql:roles",
        "--apply",
        "--admin-url",
        server.admin_url(),
    ]);
    assert!(
        applied.contains("the core and plugin databases"),
        "{applied}"
    );
    // Before its migrations the core database is not a core store, and says how to fix it.
    let early = w.sv_err(&["users", "list"]);
    assert!(early.contains("migrate:deploy --scope=core"), "{early}");
    assert!(!early.contains("core-secret"), "a password leaked: {early}");
    let deployed = w.sv_ok(&["migrate:deploy", "--scope=core"]);
    assert!(deployed.contains("0007_plugin_packages.sql"), "{deployed}");
    let status = w.sv_ok(&["migrate:status", "--scope=core"]);
    assert!(
        status.contains("0001_init.sql") && !status.contains("pending"),
        "{status}"
    );
    w.sv_ok(&["migrate:deploy"]);
    assert!(!w.core_db().exists(), "no core.db is made");
    (server, core_url)
}

#[test]
fn sv_serves_the_core_api_and_plugins_with_both_stores_on_mysql() {
    let w = Workdir::new();
    let (server, core_url) = mysql_core(&w, true);
    assert!(!w.plugins_db().exists(), "no plugins.db is made");
    install(&w, "notes");
    // The plugin's password is in the core database; its account still cannot use it.
    let mut core = sovereign_mysql::roles::connect(&core_url).unwrap();
    let password: String = core
        .query_first("SELECT password FROM plugin_store_logins WHERE plugin_id = 'notes'")
        .unwrap()
        .unwrap();
    let as_plugin = sovereign_mysql::roles::connect(&server.url("svp_notes", &password, "sv_core"));
    assert!(
        as_plugin.is_err(),
        "a plugin account reached the core database"
    );
    // tasks reads mirrored users: `core__users` in the plugin database, fed from the core's
    // capture triggers, shown to tasks as a view of its granted columns.
    install(&w, "tasks");
    w.create_user("root@example.com", "root password 1", true);
    let served = w.start(&["serve"]);
    let host = served.wait_host_running();
    assert_eq!(host["plugins"][0]["id"], "notes", "{host}");
    let health = served.get("/health", None);
    assert_eq!(health.body["core"]["status"], "ok", "{}", health.text);
    let token = served.login("root@example.com", "root password 1");
    let me = served.get("/api/auth/me", Some(&token));
    assert_eq!(me.body["email"], "root@example.com", "{}", me.text);
    let user = |email: &str| {
        served.send(
            "POST",
            "/api/users",
            Some(&token),
            Some(serde_json::json!({
                "email": email, "password": "a long password", "display_name": "Ada"
            })),
        )
    };
    let created = user("ada@example.com");
    assert_eq!(created.status, 201, "{}", created.text);
    let duplicate = user("ADA@example.com");
    assert_eq!(duplicate.status, 409, "{}", duplicate.text);
    let put = served.send(
        "PUT",
        "/api/settings/site.name",
        Some(&token),
        Some(serde_json::json!({ "value": {"name": "Acme"} })),
    );
    assert!((200..300).contains(&put.status), "{}", put.text);
    let got = served.get("/api/settings/site.name", Some(&token));
    assert_eq!(
        got.body["value"],
        serde_json::json!({"name": "Acme"}),
        "{}",
        got.text
    );
    // The operator's stores panel and storage report read both databases.
    let stores = served.get("/api/admin/stores", Some(&token));
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
    assert!(!stores.text.contains("core-secret"), "{}", stores.text);
    let storage = served.get("/api/admin/storage", Some(&token));
    assert_eq!(storage.status, 200, "{}", storage.text);
    assert!(storage.text.contains("tasks__tasks"), "{}", storage.text);
    let note = served.send(
        "POST",
        "/api/plugins/notes/notes",
        Some(&token),
        Some(serde_json::json!({ "title": "both on MySQL", "body": "" })),
    );
    assert_eq!(note.status, 201, "{}", note.text);
    let listed = served.get("/api/plugins/notes/notes", Some(&token));
    assert_eq!(listed.body[0]["title"], "both on MySQL", "{}", listed.text);
    let ada = new_user_follows_the_core(&served, &token, "ada.l@example.com");
    let logout = served.send("POST", "/api/auth/logout", Some(&token), None);
    assert!((200..300).contains(&logout.status), "{}", logout.text);
    assert_eq!(served.get("/api/auth/me", Some(&token)).status, 401);
    served.stop();
    let doctor = w.sv_ok(&["doctor"]);
    assert!(
        !doctor.contains("core-secret"),
        "a password leaked: {doctor}"
    );
    // With the platform stopped: a clean reconcile, then drift in the MySQL mirror found
    // and repaired from the MySQL core, and a full resync.
    let clean = w.sv_ok(&["sync:reconcile"]);
    assert!(clean.contains("0 row(s) differ"), "{clean}");
    let mut store = sovereign_mysql::roles::connect(&server.url(
        "svc_plugins",
        "plugins-secret-12",
        "sv_plugins",
    ))
    .unwrap();
    store
        .exec_drop(
            "UPDATE core__users SET display_name = 'drifted' WHERE id = ?",
            (ada,),
        )
        .unwrap();
    w.sv_err(&["sync:reconcile"]);
    let repaired = w.sv_ok(&["sync:reconcile", "--repair"]);
    assert!(repaired.contains("repaired 1"), "{repaired}");
    assert!(w.sv_ok(&["sync:reconcile"]).contains("0 row(s) differ"));
    let rebuilt = w.sv_ok(&["sync:run", "--full"]);
    assert!(rebuilt.contains("users"), "{rebuilt}");
    // The rebuilt table (swapped in by name) is still readable through tasks' view, as
    // tasks' own account: its column grants are by name and carried over.
    let tasks_password: String = core
        .query_first("SELECT password FROM plugin_store_logins WHERE plugin_id = 'tasks'")
        .unwrap()
        .unwrap();
    let mut tasks_db = sovereign_mysql::roles::connect(&server.url(
        "svp_tasks",
        &tasks_password,
        "sv_plugins_tasks",
    ))
    .unwrap();
    let names: Vec<String> = tasks_db
        .query("SELECT display_name FROM core__users ORDER BY id")
        .unwrap();
    assert_eq!(names, ["root", "Ada", "Ada L."]);
    // Only its granted columns: the mirror's other columns are refused.
    assert!(
        tasks_db
            .query_drop("SELECT tenant_id FROM sv_plugins.core__users")
            .is_err()
    );
    // An upgrade that reads fewer columns and adds a migration: a broken migration fails
    // the upgrade by name and keeps the installed version; fixed, it applies, and the
    // column no longer read is no longer granted.
    let next = w.path().join("tasks-next");
    common::copy_package(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins/tasks"),
        &next,
    );
    let manifest = std::fs::read_to_string(next.join("plugin.json")).unwrap();
    std::fs::write(
        next.join("plugin.json"),
        manifest.replace("\"0.1.0\"", "\"0.2.0\"").replace(
            "[\"id\", \"display_name\", \"avatar_url\"]",
            "[\"id\", \"display_name\"]",
        ),
    )
    .unwrap();
    for dir in ["migrations", "migrations/postgres", "migrations/mysql"] {
        std::fs::write(
            next.join(dir).join("0002_priority.sql"),
            "ALTER TABLE tasks__tasks ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;",
        )
        .unwrap();
    }
    std::fs::write(next.join("migrations/mysql/0003_broken.sql"), "SELEC 1;").unwrap();
    let failed = w.sv_err(&["plugins", "upgrade", next.to_str().unwrap(), "--yes"]);
    assert!(failed.contains("0003_broken.sql"), "{failed}");
    assert!(w.sv_ok(&["plugins", "list"]).contains("0.1.0"));
    std::fs::remove_file(next.join("migrations/mysql/0003_broken.sql")).unwrap();
    w.sv_ok(&["plugins", "upgrade", next.to_str().unwrap(), "--yes"]);
    assert!(w.sv_ok(&["plugins", "list"]).contains("0.2.0"));
    let mut tasks_db = sovereign_mysql::roles::connect(&server.url(
        "svp_tasks",
        &tasks_password,
        "sv_plugins_tasks",
    ))
    .unwrap();
    tasks_db
        .query_drop("SELECT priority FROM tasks__tasks")
        .unwrap();
    tasks_db
        .query_drop("SELECT display_name FROM core__users")
        .unwrap();
    for narrowed in [
        "SELECT avatar_url FROM core__users",
        "SELECT avatar_url FROM sv_plugins.core__users",
    ] {
        assert!(tasks_db.query_drop(narrowed).is_err(), "{narrowed}");
    }
    // Plugin data per database; a purge dumps it first and drops the tables (account,
    // views and outbox stay), the migrations make them again; vacuum rebuilds tables.
    let inspect = w.sv_ok(&["plugins", "db", "inspect", "notes"]);
    assert!(
        inspect.contains("plugin notes:") && inspect.contains("notes__notes"),
        "{inspect}"
    );
    assert!(!inspect.contains("plugin tasks"), "{inspect}");
    let purged = w.sv_ok(&["plugins", "db", "purge", "notes", "--yes"]);
    assert!(
        purged.contains("table sv_plugins_notes.notes__notes") && purged.contains(".sql"),
        "{purged}"
    );
    // Its function went too, and was dumped first, as its own account (the definer).
    assert!(
        purged.contains("function sv_plugins_notes.strftime"),
        "{purged}"
    );
    let routines = std::fs::read_dir(w.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".routines.sql"))
        .expect("the purge dumped notes' routines");
    let dumped = std::fs::read_to_string(&routines).unwrap();
    assert!(
        dumped.contains("FUNCTION `strftime`") && dumped.contains("-- Dump completed"),
        "{dumped}"
    );
    let gone = w.sv_err(&[
        "plugins",
        "sql",
        "notes",
        "SELECT count(*) FROM notes__notes",
    ]);
    assert!(gone.contains("notes__notes"), "{gone}");
    let remigrated = w.sv_ok(&["migrate:deploy", "--scope=plugins"]);
    assert!(remigrated.contains("0001_init.sql"), "{remigrated}");
    let empty = w.sv_ok(&[
        "plugins",
        "sql",
        "notes",
        "SELECT count(*) AS n FROM notes__notes",
        "--json",
    ]);
    assert!(empty.contains("\"n\": 0"), "{empty}");
    let vacuumed = w.sv_ok(&["plugins", "db", "vacuum"]);
    assert!(vacuumed.contains("mysql://"), "{vacuumed}");
}

/// The core on MySQL, plugins in SQLite files: `tasks` reads mirrored users that capture
/// triggers on the MySQL core record and the sync worker applies; its events reach the
/// core's activity feed once; reconcile finds and repairs drift.
#[test]
fn a_mysql_core_feeds_the_mirror_and_takes_events_exactly_once() {
    let w = Workdir::new();
    let (_server, _core_url) = mysql_core(&w, false);
    install(&w, "tasks");
    w.create_user("root@example.com", "root password 1", true);
    let served = w.start(&["serve"]);
    served.wait_host_running();
    let token = served.login("root@example.com", "root password 1");
    let ada = new_user_follows_the_core(&served, &token, "ada@example.com");
    served.stop();
    let status = w.sv_ok(&["sync:status"]);
    assert!(status.contains("users"), "{status}");
    let clean = w.sv_ok(&["sync:reconcile"]);
    assert!(clean.contains("0 row(s) differ"), "{clean}");
    let raw = common::raw(&w.plugins_db());
    raw.execute(
        &format!("UPDATE core__users SET display_name = 'drifted' WHERE id = {ada}"),
        [],
    )
    .unwrap();
    drop(raw);
    w.sv_err(&["sync:reconcile"]);
    let repaired = w.sv_ok(&["sync:reconcile", "--repair"]);
    assert!(repaired.contains("repaired 1"), "{repaired}");
    let clean = w.sv_ok(&["sync:reconcile"]);
    assert!(clean.contains("0 row(s) differ"), "{clean}");
    // A full resync from the MySQL core rebuilds the mirror at the outbox's watermark.
    let rebuilt = w.sv_ok(&["sync:run", "--full"]);
    assert!(rebuilt.contains("users"), "{rebuilt}");
}

/// A kernel whose plugin store is in SQLite files is the only one serving its MySQL
/// core: a second `sv serve` with the same core from another data directory (another
/// machine, as far as the lock files know) is refused and names the kernel serving it;
/// once that one stops, the second starts. (Kernels sharing both stores on MySQL:
/// `kernels.rs`.)
#[test]
fn a_kernel_with_plugin_files_serves_its_mysql_core_alone() {
    let w = Workdir::new();
    let (_server, _core_url) = mysql_core(&w, false);
    let other = Workdir::new();
    std::fs::copy(
        w.path().join("sovereign.toml"),
        other.path().join("sovereign.toml"),
    )
    .unwrap();
    other.sv_ok(&["migrate:deploy"]);
    let served = w.start(&["serve"]);
    let name = served.get("/health", None).body["sync"]["kernel"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = other.sv_err(&["serve", "--port", "0"]);
    assert!(
        refused.contains("kernels already serve this MySQL core") && refused.contains(&name),
        "{refused}"
    );
    assert!(
        !refused.contains("core-secret"),
        "a password leaked: {refused}"
    );
    // Its sync worker takes the leadership once it has connected.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let health = loop {
        let health = served.get("/health", None);
        if health.body["sync"]["leader"] == name.as_str() || std::time::Instant::now() > deadline {
            break health;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(health.status, 200, "the first kernel serves on");
    assert_eq!(health.body["sync"]["kernels"], serde_json::json!([name]));
    assert_eq!(
        health.body["sync"]["leader"],
        name.as_str(),
        "{}",
        health.text
    );
    served.stop();
    let second = other.start(&["serve"]);
    assert_eq!(second.get("/health", None).status, 200);
    second.stop();
}

/// Ada (`email`) created through the core API shows as a task's assignee (captured on the MySQL
/// core, applied to the mirror by the sync worker), her new name too; completing the task
/// twice reaches the core's activity feed once. Returns Ada's id.
fn new_user_follows_the_core(served: &common::Server, token: &str, email: &str) -> i64 {
    let created = served.send(
        "POST",
        "/api/users",
        Some(token),
        Some(serde_json::json!({
            "email": email, "password": "a long password", "display_name": "Ada"
        })),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    let ada = created.body["id"].as_i64().unwrap();
    common::tasks_follow_the_core(served, token, ada);
    ada
}

/// `sv backup` with both stores on MariaDB writes `mariadb-dump` files with the manifest's
/// checksums; a truncated dump (resealed) and a backup of SQLite files are refused
/// before anything changes; a restore keeps what it replaced as a restorable backup.
#[test]
fn sv_backs_up_and_restores_both_mysql_stores() {
    use sha2::Digest;
    let w = Workdir::new();
    let (server, _core_url) = mysql_core(&w, true);
    install(&w, "notes");
    w.create_user("root@example.com", "root password 1", true);
    w.sv_ok(&[
        "plugins",
        "sql",
        "notes",
        "INSERT INTO notes__notes (owner, title) VALUES (1, 'kept')",
    ]);
    let backup = w.path().join("backups/my");
    w.sv_ok(&["backup", "--out", backup.to_str().unwrap()]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(backup.join("manifest.json")).unwrap())
            .unwrap();
    let roles: Vec<&str> = manifest["mysql_dumps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["plugins", "plugin:notes", "plugin-routines:notes", "core"],
        "{manifest}"
    );
    assert_eq!(manifest["format"], 3);
    w.sv_ok(&["backup:verify", backup.to_str().unwrap()]);

    // A dump cut short, its manifest resealed: refused by verify and by restore.
    let damaged = w.path().join("backups/damaged");
    common::copy_package(&backup, &damaged);
    let text = std::fs::read_to_string(damaged.join("core.sql")).unwrap();
    let cut = &text[..text.rfind("-- Dump completed").unwrap()];
    std::fs::write(damaged.join("core.sql"), cut).unwrap();
    let mut resealed = manifest.clone();
    for file in resealed["files"].as_array_mut().unwrap() {
        if file["name"] == "core.sql" {
            file["sha256"] = hex::encode(sha2::Sha256::digest(cut.as_bytes())).into();
            file["size"] = (cut.len() as u64).into();
        }
    }
    std::fs::write(damaged.join("manifest.json"), resealed.to_string()).unwrap();
    let refused = w.sv_err(&["backup:verify", damaged.to_str().unwrap()]);
    assert!(refused.contains("not a whole dump"), "{refused}");
    let refused = w.sv_err(&["restore", damaged.to_str().unwrap()]);
    assert!(refused.contains("not a whole dump"), "{refused}");
    // A backup of SQLite files is not restored into MySQL stores.
    let files = Workdir::new();
    files.sv_ok(&["migrate:deploy"]);
    let of_files = files.path().join("backups/files");
    files.sv_ok(&["backup", "--out", of_files.to_str().unwrap()]);
    let refused = w.sv_err(&["restore", of_files.to_str().unwrap()]);
    assert!(
        refused.contains("SQLite") && refused.contains("MySQL"),
        "{refused}"
    );
    let notes = w.sv_ok(&["plugins", "sql", "notes", "SELECT title FROM notes__notes"]);
    assert!(notes.contains("kept"), "nothing changed: {notes}");

    // A restore keeps what it replaced, as a backup that verifies. Notes' function is
    // gone first, as on a new server: the restore loads it as notes' own account.
    w.sv_ok(&[
        "plugins",
        "sql",
        "notes",
        "INSERT INTO notes__notes (owner, title) VALUES (1, 'after')",
    ]);
    let mut admin = mysql::Conn::new(mysql::Opts::from_url(server.admin_url()).unwrap()).unwrap();
    admin
        .query_drop("DROP FUNCTION sv_plugins_notes.strftime")
        .unwrap();
    w.sv_ok(&["restore", backup.to_str().unwrap()]);
    let definer: Option<String> = admin
        .query_first(
            "SELECT DEFINER FROM information_schema.ROUTINES
             WHERE ROUTINE_SCHEMA = 'sv_plugins_notes' AND ROUTINE_NAME = 'strftime'",
        )
        .unwrap();
    assert_eq!(
        definer.as_deref(),
        Some("svp_notes@%"),
        "notes' function is back"
    );
    let stamp = w.sv_ok(&[
        "plugins",
        "sql",
        "notes",
        "SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now') AS stamp",
    ]);
    assert!(stamp.contains("Z"), "{stamp}");
    let notes = w.sv_ok(&["plugins", "sql", "notes", "SELECT title FROM notes__notes"]);
    assert!(
        notes.contains("kept") && !notes.contains("after"),
        "{notes}"
    );
    let aside = std::fs::read_dir(w.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pre-restore-")
        })
        .expect("the replaced stores are kept");
    w.sv_ok(&["backup:verify", aside.to_str().unwrap()]);
    w.sv_ok(&["restore", aside.to_str().unwrap()]);
    let notes = w.sv_ok(&["plugins", "sql", "notes", "SELECT title FROM notes__notes"]);
    assert!(notes.contains("after"), "{notes}");
}

/// `sv migrate:to-mysql` moves a SQLite install (users, `tasks` with its mirror, isolated
/// `notes`) into MariaDB table by table with matching digests; a move that fails at a
/// plugin's migration leaves the target empty; the moved install serves the same data;
/// a second move into the filled target is refused; the SQLite files stay byte for byte.
#[test]
fn sv_moves_a_sqlite_install_to_mysql_checked_table_by_table() {
    use sha2::Digest;
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    w.create_user("root@example.com", "root password 1", true);
    for i in 0..40 {
        w.create_user(&format!("user{i}@example.com"), "a long password", false);
    }
    install(&w, "tasks");
    install(&w, "notes");
    let sql = |id: &str, statement: &str| w.sv_ok(&["plugins", "sql", id, statement, "--json"]);
    sql(
        "tasks",
        "INSERT INTO tasks__tasks (title, created_by, assignee) VALUES ('port it', 1, 2)",
    );
    sql(
        "notes",
        "INSERT INTO notes__notes (owner, title) VALUES (1, 'moved note')",
    );
    w.sv_ok(&["sync:run"]);
    let digest =
        |path: &std::path::Path| hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()));
    let before = (digest(&w.core_db()), digest(&w.plugins_db()));

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb");
    let server = Server::start(&script).unwrap();
    let core_url = server.url("svc_core", "core-secret-1234", "sv_core");
    let plugins_url = server.url("svc_plugins", "plugins-secret-12", "sv_plugins");
    w.sv_ok(&[
        "--database-url",
        &core_url,
        "--plugin-database-url",
        &plugins_url,
        "mysql:roles",
        "--apply",
        "--admin-url",
        server.admin_url(),
    ]);
    let run = |extra: &[&str], ok: bool| {
        let mut args = vec![
            "migrate:to-mysql",
            "--core-url",
            core_url.as_str(),
            "--plugins-url",
            plugins_url.as_str(),
        ];
        args.extend_from_slice(extra);
        if ok { w.sv_ok(&args) } else { w.sv_err(&args) }
    };
    let plan = run(&["--dry-run"], true);
    assert!(
        plan.contains("users") && plan.contains("tasks__tasks") && plan.contains("can go ahead"),
        "{plan}"
    );

    // A plugin migration that fails: the move stops and the target is emptied again.
    let broken = w
        .path()
        .join("plugins/notes/migrations/mysql/0002_broken.sql");
    std::fs::write(&broken, "SELEC 1;").unwrap();
    let failed = run(&[], false);
    assert!(
        failed.contains("0002_broken.sql") && failed.contains("emptied again"),
        "{failed}"
    );
    let mut admin = sovereign_mysql::roles::connect(server.admin_url()).unwrap();
    let left: i64 = admin
        .query_first(
            "SELECT (SELECT count(*) FROM information_schema.TABLES
                     WHERE TABLE_SCHEMA IN ('sv_core', 'sv_plugins')
                        OR TABLE_SCHEMA LIKE 'sv\\_plugins\\_%')
                  + (SELECT count(*) FROM mysql.user WHERE User LIKE 'svp\\_%')",
        )
        .unwrap()
        .unwrap();
    assert_eq!(left, 0, "a failed move leaves nothing");
    std::fs::remove_file(&broken).unwrap();

    let moved = run(&[], true);
    assert!(moved.contains("both sides match"), "{moved}");
    assert!(moved.contains("mirror built (users 41)"), "{moved}");
    assert_eq!(
        (digest(&w.core_db()), digest(&w.plugins_db())),
        before,
        "the SQLite files are only read"
    );
    let again = run(&[], false);
    assert!(again.contains("not empty"), "{again}");

    // The moved install, configured with the new URLs, has the same data and serves it.
    std::fs::write(
        w.path().join("sovereign.toml"),
        format!("database_url = \"{core_url}\"\nplugin_database_url = \"{plugins_url}\"\n"),
    )
    .unwrap();
    let users = w.sv_ok(&["users", "list"]);
    assert!(users.contains("user39@example.com"), "{users}");
    let notes = sql("notes", "SELECT title FROM notes__notes");
    assert!(notes.contains("moved note"), "{notes}");
    let served = w.start(&["serve"]);
    served.wait_host_running();
    let token = served.login("root@example.com", "root password 1");
    let tasks = served.get("/api/plugins/tasks/tasks", Some(&token));
    assert_eq!(tasks.status, 200, "{}", tasks.text);
    assert_eq!(tasks.body[0]["assignee_name"], "user0", "{}", tasks.text);
    let created = served.send(
        "POST",
        "/api/users",
        Some(&token),
        Some(serde_json::json!({
            "email": "new@example.com", "password": "a long password", "display_name": "New"
        })),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    assert!(
        created.body["id"].as_i64().unwrap() > 41,
        "new ids follow the copied ones: {}",
        created.text
    );
}

/// Installs the example plugin `id` from the repository.
fn install(w: &Workdir, id: &str) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins");
    w.sv_ok(&[
        "plugins",
        "install",
        repo.join(id).to_str().unwrap(),
        "--yes",
    ]);
}

/// Runs a command with `input` on its standard input.
trait OutputWith {
    fn output_with(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWith for std::process::Command {
    fn output_with(&mut self, input: &[u8]) -> std::process::Output {
        let mut child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}
