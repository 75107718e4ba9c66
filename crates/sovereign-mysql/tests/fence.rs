//! The fence in MySQL's terms, on a real MariaDB server from `scripts/mariadb`: the role
//! plan, the provisioning procedures (callable by the plugin store's account only,
//! refusing what is not a plugin id), and a plugin account that reaches its own database
//! and its granted mirror columns only: a hostile corpus refused by the server with typed
//! denials, nothing leaking where the server answers instead of refusing, the connection
//! limit, and a statement cancelled from outside with `KILL QUERY` by the account itself.

mod common;

use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use sovereign_mysql::{Denial, RolePlan};

const ALPHA_PASSWORD: &str = "alphaalphaalpha1";
const BETA_PASSWORD: &str = "betabetabetabeta2";

fn connect(url: &str) -> mysql::Conn {
    sovereign_mysql::roles::connect(url).unwrap()
}

/// The denial `sql` meets (panics when it runs).
fn refused(conn: &mut mysql::Conn, sql: &str) -> Denial {
    match conn.query_drop(sql) {
        Ok(()) => panic!("ran: {sql}"),
        Err(e) => Denial::of(&e).unwrap_or_else(|| panic!("{sql}: not a denial: {e}")),
    }
}

fn rows(conn: &mut mysql::Conn, sql: &str) -> Vec<String> {
    conn.query::<Option<String>, _>(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .map(|v| v.unwrap_or_else(|| "NULL".into()))
        .collect()
}

#[test]
fn a_plugin_account_reaches_its_own_database_and_granted_mirror_columns_only() {
    let server = common::mariadb();
    let core_url = server.url("svc_core", "core-secret-1234", "sv_core");
    let plugins_url = server.url("svc_plugins", "plugins-secret-12", "sv_plugins");
    let plan = RolePlan::new(Some(&core_url), &plugins_url).unwrap();
    assert!(plan.print().contains("DELIMITER //"));
    let ran = plan.apply(server.admin_url()).unwrap();
    // Applying twice changes nothing and fails nothing.
    assert_eq!(plan.apply(server.admin_url()).unwrap(), ran);

    let mut core = connect(&core_url);
    core.query_drop(
        "CREATE TABLE users (id BIGINT PRIMARY KEY, display_name TEXT, email TEXT);
         INSERT INTO users VALUES (1, 'Ada', 'ada@example.com')",
    )
    .unwrap();

    // The plugin store's account: mirrors in its database, plugin accounts through the
    // procedures only.
    let mut store = connect(&plugins_url);
    store
        .query_drop(
            "CREATE TABLE core__users (id BIGINT PRIMARY KEY, display_name TEXT, email TEXT);
             INSERT INTO core__users VALUES (1, 'Ada', 'ada@example.com')",
        )
        .unwrap();
    store
        .exec_drop(
            "CALL sv_admin.create_plugin_account(?, ?, ?)",
            ("alpha", ALPHA_PASSWORD, 3),
        )
        .unwrap();
    store
        .exec_drop(
            "CALL sv_admin.create_plugin_account(?, ?, ?)",
            ("beta", BETA_PASSWORD, 3),
        )
        .unwrap();
    store
        .exec_drop(
            "CALL sv_admin.grant_mirror(?, ?, ?)",
            ("alpha", "users", "id,display_name"),
        )
        .unwrap();
    for (id, password, limit) in [
        ("Alpha", ALPHA_PASSWORD, 3),
        ("a'b", ALPHA_PASSWORD, 3),
        ("x` ; DROP DATABASE sv_core; --", ALPHA_PASSWORD, 3),
        ("core", ALPHA_PASSWORD, 3),
        ("mysql", ALPHA_PASSWORD, 3),
        ("double__under", ALPHA_PASSWORD, 3),
        ("gamma", "short", 3),
        ("gamma", "with'quote0123456789", 3),
        ("gamma", ALPHA_PASSWORD, 0),
    ] {
        let refused = store
            .exec_drop(
                "CALL sv_admin.create_plugin_account(?, ?, ?)",
                (id, password, limit),
            )
            .unwrap_err();
        assert_eq!(
            Denial::of(&refused),
            Some(Denial::InvalidArgument),
            "{id:?}: {refused}"
        );
    }
    let bad_columns = store
        .exec_drop(
            "CALL sv_admin.grant_mirror(?, ?, ?)",
            ("alpha", "users", "id, email) ON *.* TO svp_alpha; --"),
        )
        .unwrap_err();
    assert_eq!(Denial::of(&bad_columns), Some(Denial::InvalidArgument));
    for sql in [
        "CREATE USER 'evil'@'%' IDENTIFIED BY 'evilevilevilevil'",
        "GRANT ALL ON *.* TO 'svp_alpha'@'%'",
        "SELECT * FROM sv_core.users",
        "ALTER USER 'svc_core'@'%' IDENTIFIED BY 'takenover1234567'",
        "SELECT * FROM mysql.global_priv",
    ] {
        assert_eq!(refused(&mut store, sql), Denial::AccessDenied, "{sql}");
    }

    let mut beta = connect(&server.url("svp_beta", BETA_PASSWORD, "sv_plugins_beta"));
    beta.query_drop(
        "CREATE TABLE secrets (id INT PRIMARY KEY, secret TEXT);
         INSERT INTO secrets VALUES (1, 'beta only')",
    )
    .unwrap();
    let beta_thread: u32 = beta.query_first("SELECT CONNECTION_ID()").unwrap().unwrap();

    let alpha_url = server.url("svp_alpha", ALPHA_PASSWORD, "sv_plugins_alpha");
    let mut alpha = connect(&alpha_url);
    // Its own database: the DDL and DML a plugin's migrations and requests use.
    alpha
        .query_drop(
            "CREATE TABLE notes (id BIGINT AUTO_INCREMENT PRIMARY KEY, title TEXT NOT NULL);
             CREATE INDEX notes_title ON notes (title(20));
             ALTER TABLE notes ADD COLUMN done INT NOT NULL DEFAULT 0;
             INSERT INTO notes (title) VALUES ('mine');
             UPDATE notes SET done = 1;
             CREATE VIEW open_notes AS SELECT * FROM notes WHERE done = 0;
             DELETE FROM notes WHERE id = 0",
        )
        .unwrap();
    assert_eq!(rows(&mut alpha, "SELECT title FROM notes"), ["mine"]);
    assert_eq!(
        rows(
            &mut alpha,
            "SELECT display_name FROM sv_plugins.core__users"
        ),
        ["Ada"]
    );

    let thread = beta_thread.to_string();
    let corpus: Vec<String> = [
        // Another plugin's database.
        "SELECT * FROM sv_plugins_beta.secrets",
        "INSERT INTO sv_plugins_beta.secrets VALUES (2, 'forged')",
        "UPDATE sv_plugins_beta.secrets SET secret = 'x'",
        "DELETE FROM sv_plugins_beta.secrets",
        "DROP TABLE sv_plugins_beta.secrets",
        "CREATE TABLE sv_plugins_beta.planted (id INT)",
        "ALTER TABLE sv_plugins_beta.secrets ADD COLUMN x INT",
        "TRUNCATE TABLE sv_plugins_beta.secrets",
        "RENAME TABLE sv_plugins_beta.secrets TO sv_plugins_alpha.stolen",
        "CREATE VIEW leak AS SELECT * FROM sv_plugins_beta.secrets",
        "USE sv_plugins_beta",
        "DROP DATABASE sv_plugins_beta",
        "HANDLER sv_plugins_beta.secrets OPEN",
        "SHOW CREATE TABLE sv_plugins_beta.secrets",
        "SHOW COLUMNS FROM sv_plugins_beta.secrets",
        // The core's database and the server's own.
        "SELECT * FROM sv_core.users",
        "USE sv_core",
        "SELECT * FROM mysql.user",
        "SELECT * FROM mysql.global_priv",
        "UPDATE mysql.global_priv SET priv = '{}'",
        "SELECT * FROM mysql.proc",
        "SHOW GRANTS FOR 'svp_beta'@'%'",
        "SHOW GRANTS FOR 'svc_plugins'@'%'",
        // Mirrors: writes, and columns not granted.
        "INSERT INTO sv_plugins.core__users VALUES (2, 'Eve', 'eve@example.com')",
        "UPDATE sv_plugins.core__users SET display_name = 'Eve'",
        "DELETE FROM sv_plugins.core__users",
        "SELECT email FROM sv_plugins.core__users",
        "SELECT * FROM sv_plugins.core__users",
        "SELECT id FROM sv_plugins.core__users WHERE email LIKE 'a%'",
        "DROP TABLE sv_plugins.core__users",
        "CREATE TABLE sv_plugins.planted (id INT)",
        // Files.
        "SELECT 'x' INTO OUTFILE '/tmp/sv-fence-outfile'",
        "SELECT 'x' INTO DUMPFILE '/tmp/sv-fence-dumpfile'",
        "LOAD DATA INFILE '/etc/passwd' INTO TABLE notes",
        "LOAD XML INFILE '/etc/passwd' INTO TABLE notes",
        // The server, accounts and privileges.
        "SET GLOBAL max_connections = 1",
        "SET GLOBAL general_log = 1",
        "FLUSH PRIVILEGES",
        "SHUTDOWN",
        "CREATE USER 'evil'@'%' IDENTIFIED BY 'evilevilevilevil'",
        "DROP USER 'svp_beta'@'%'",
        "RENAME USER 'svp_beta'@'%' TO 'gone'@'%'",
        "ALTER USER 'svp_beta'@'%' IDENTIFIED BY 'takenover1234567'",
        "SET PASSWORD FOR 'svp_beta'@'%' = PASSWORD('takenover1234567')",
        "GRANT SELECT ON sv_plugins_beta.* TO 'svp_alpha'@'%'",
        "GRANT SELECT ON sv_plugins_alpha.* TO 'svp_beta'@'%'",
        "GRANT SELECT (email) ON sv_plugins.core__users TO 'svp_alpha'@'%'",
        "REVOKE ALL PRIVILEGES ON sv_plugins_beta.* FROM 'svp_beta'@'%'",
        "CREATE ROLE evil",
        "SET ROLE svc_plugins",
        "CALL sv_admin.create_plugin_account('gamma', 'gammagammagamma1', 3)",
        "CALL sv_admin.grant_mirror('alpha', 'users', 'email')",
        "CALL sv_admin.drop_plugin_account('beta')",
        "INSTALL SONAME 'ha_connect'",
        "CREATE SERVER evil FOREIGN DATA WRAPPER mysql OPTIONS (HOST '127.0.0.1')",
        "SHOW ENGINE INNODB STATUS",
        "SHOW BINLOG EVENTS",
        "PURGE BINARY LOGS BEFORE NOW()",
        "RESET MASTER",
        "CHANGE MASTER TO MASTER_HOST = '127.0.0.1'",
        "CREATE DATABASE planted",
        // What its own database does not include.
        "CREATE TEMPORARY TABLE shadow (id INT)",
        "LOCK TABLES notes WRITE",
        "CREATE PROCEDURE sv_plugins_beta.p() SELECT 1",
        "CREATE FUNCTION sv_plugins.f() RETURNS INT RETURN 1",
        "CREATE EVENT e ON SCHEDULE EVERY 1 HOUR DO DELETE FROM notes",
        "CREATE TRIGGER t BEFORE INSERT ON notes FOR EACH ROW SET NEW.title = 'x'",
        // Prepared, the same.
        "PREPARE leak FROM 'SELECT * FROM sv_plugins_beta.secrets'",
        "PREPARE leak FROM 'SELECT email FROM sv_plugins.core__users'",
        "PREPARE evil FROM 'SET GLOBAL max_connections = 1'",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("KILL QUERY {thread}"), format!("KILL {thread}")])
    .collect();
    assert!(corpus.len() >= 50, "{} statements", corpus.len());
    let mut kinds = std::collections::BTreeMap::new();
    for sql in &corpus {
        let denial = refused(&mut alpha, sql);
        *kinds.entry(format!("{denial:?}")).or_insert(0) += 1;
    }
    eprintln!("{} hostile statements refused: {kinds:?}", corpus.len());
    // Beta's session survived the kill attempts, its data is intact.
    assert_eq!(rows(&mut beta, "SELECT secret FROM secrets"), ["beta only"]);

    // A finding the plugin connection must answer: HANDLER opens a mirror table on column
    // privileges alone (MariaDB 10.11) and reads every column through it, the ungranted
    // ones included. The server's grants do not fence HANDLER; the platform's plugin
    // connection on MySQL has to refuse HANDLER statements itself.
    alpha
        .query_drop("HANDLER sv_plugins.core__users OPEN AS mirror")
        .unwrap();
    let read: Vec<mysql::Row> = alpha.query("HANDLER mirror READ FIRST").unwrap();
    let columns: Vec<String> = read[0]
        .columns_ref()
        .iter()
        .map(|c| c.name_str().into_owned())
        .collect();
    assert_eq!(columns, ["id", "display_name", "email"]);
    alpha.query_drop("HANDLER mirror CLOSE").unwrap();

    // Where the server answers instead of refusing, nothing of others shows.
    assert_eq!(
        rows(&mut alpha, "SHOW DATABASES"),
        ["information_schema", "sv_plugins", "sv_plugins_alpha"]
    );
    assert!(rows(
        &mut alpha,
        "SELECT table_name FROM information_schema.tables WHERE table_schema IN ('sv_plugins_beta', 'sv_core', 'mysql')"
    )
    .is_empty());
    assert_eq!(
        rows(
            &mut alpha,
            "SELECT column_name FROM information_schema.columns
             WHERE table_schema = 'sv_plugins' AND table_name = 'core__users' ORDER BY 1"
        ),
        ["display_name", "id"]
    );
    assert_eq!(
        rows(&mut alpha, "SELECT LOAD_FILE('/etc/passwd')"),
        ["NULL"]
    );
    assert_eq!(
        rows(
            &mut alpha,
            "SELECT DISTINCT user FROM information_schema.processlist"
        ),
        ["svp_alpha"]
    );
    assert!(
        rows(
            &mut alpha,
            "SELECT grantee FROM information_schema.user_privileges"
        )
        .iter()
        .all(|grantee| grantee.contains("svp_alpha"))
    );

    // The connection limit (3; `alpha` holds one).
    let second = connect(&alpha_url);
    let third = connect(&alpha_url);
    let over = sovereign_mysql::roles::connect(&alpha_url).unwrap_err();
    let sovereign_mysql::MyError::Connect { source, .. } = &over else {
        panic!("{over}");
    };
    assert_eq!(Denial::of(source), Some(Denial::ConnectionLimit), "{over}");
    drop((second, third));

    // A statement past its deadline is cancelled from outside by the account itself
    // (the plugin may turn max_statement_time off; KILL QUERY of its own thread needs
    // no privilege). SLEEP and BENCHMARK end early with a value, other statements with
    // an Interrupted denial.
    alpha
        .query_drop("SET SESSION max_statement_time = 0")
        .unwrap();
    for sql in [
        "SELECT SLEEP(30)",
        "SELECT BENCHMARK(10000000000, SHA2('x', 512))",
        "SELECT count(*) FROM information_schema.columns a, information_schema.columns b, information_schema.columns c",
    ] {
        let thread: u32 = alpha
            .query_first("SELECT CONNECTION_ID()")
            .unwrap()
            .unwrap();
        let watchdog = std::thread::spawn({
            let alpha_url = alpha_url.clone();
            move || {
                std::thread::sleep(Duration::from_millis(300));
                let mut own = connect(&alpha_url);
                own.query_drop(format!("KILL QUERY {thread}")).unwrap();
            }
        });
        let started = Instant::now();
        if let Err(e) = alpha.query_drop(sql) {
            assert_eq!(Denial::of(&e), Some(Denial::Interrupted), "{sql}: {e}");
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{sql} ran on");
        watchdog.join().unwrap();
    }

    // Dropping a plugin removes its account and database.
    store
        .exec_drop("CALL sv_admin.drop_plugin_account(?)", ("beta",))
        .unwrap();
    drop(beta);
    assert!(
        sovereign_mysql::roles::connect(&server.url("svp_beta", BETA_PASSWORD, "sv_plugins_beta"))
            .is_err()
    );
}
