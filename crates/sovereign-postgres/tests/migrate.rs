//! The migration runner on a real PostgreSQL server (scripts/postgres).

use std::path::PathBuf;

use sovereign_db::{Migration, MigrationSet, MigrationState};
use sovereign_postgres::{Cluster, PgError, migrate};

fn cluster() -> Cluster {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    Cluster::start(&script).unwrap()
}

fn set(files: &[(u32, &str, &str)]) -> MigrationSet {
    MigrationSet::new(
        "core",
        files
            .iter()
            .map(|(version, name, sql)| Migration {
                version: *version,
                name: (*name).into(),
                sql: (*sql).into(),
                origin: "test".into(),
            })
            .collect(),
    )
    .unwrap()
}

const INIT: &str = "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- a semicolon; inside a dollar-quoted body
  RETURN NEW;
END $$;";
const SETTINGS: &str = "CREATE TABLE settings (key text PRIMARY KEY, value jsonb NOT NULL);";
const BROKEN: &str = "CREATE TABLE audit (id bigserial PRIMARY KEY);
INSERT INTO audit DEFAULT VALUES;
SELEC 1;";

#[test]
fn migrations_apply_once_in_order_whole_or_not_at_all() {
    let cluster = cluster();
    let mut client = postgres::Client::connect(cluster.admin_url(), postgres::NoTls).unwrap();
    let two = set(&[(1, "init", INIT), (2, "settings", SETTINGS)]);
    assert!(
        migrate::status(&mut client, &two)
            .unwrap()
            .iter()
            .all(|s| s.state == MigrationState::Pending)
    );
    assert_eq!(
        migrate::deploy(&mut client, &two).unwrap(),
        ["0001_init.sql", "0002_settings.sql"]
    );
    assert!(
        migrate::deploy(&mut client, &two).unwrap().is_empty(),
        "nothing twice"
    );
    assert!(
        migrate::status(&mut client, &two)
            .unwrap()
            .iter()
            .all(|s| matches!(s.state, MigrationState::Applied { .. }))
    );

    // A failing migration leaves nothing of itself (its DDL included) and names the line.
    let three = set(&[
        (1, "init", INIT),
        (2, "settings", SETTINGS),
        (3, "audit", BROKEN),
    ]);
    let err = migrate::deploy(&mut client, &three)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("0003_audit.sql failed at line 3") && err.contains("SELEC"),
        "{err}"
    );
    let audit: bool = client
        .query_one("SELECT to_regclass('audit') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    assert!(!audit, "the failed migration's table was rolled back");

    // An applied migration edited later is refused with both checksums; so is a
    // database that has a migration this set does not know.
    let edited = set(&[
        (1, "init", &format!("{INIT}\n-- edited")),
        (2, "settings", SETTINGS),
    ]);
    let err = migrate::deploy(&mut client, &edited).unwrap_err();
    assert!(
        matches!(
            &err,
            PgError::Migration(sovereign_db::MigrationError::Changed { .. })
        ),
        "{err}"
    );
    let older = set(&[(1, "init", INIT)]);
    let err = migrate::deploy(&mut client, &older)
        .unwrap_err()
        .to_string();
    assert!(err.contains("0002_settings"), "{err}");
}

#[test]
fn two_deployers_at_once_apply_each_migration_once() {
    let cluster = cluster();
    let files: Vec<(u32, String, String)> = (1..=20)
        .map(|v| {
            (
                v,
                format!("step{v}"),
                format!("CREATE TABLE t{v} (id int); INSERT INTO t{v} VALUES ({v});"),
            )
        })
        .collect();
    let deployers: Vec<_> = (0..2)
        .map(|_| {
            let url = cluster.admin_url().to_owned();
            let files = files.clone();
            std::thread::spawn(move || {
                let set = set(&files
                    .iter()
                    .map(|(v, n, s)| (*v, n.as_str(), s.as_str()))
                    .collect::<Vec<_>>());
                let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                migrate::deploy(&mut client, &set).unwrap().len()
            })
        })
        .collect();
    let applied: usize = deployers.into_iter().map(|d| d.join().unwrap()).sum();
    assert_eq!(
        applied, 20,
        "every migration applied by exactly one deployer"
    );
    let mut client = postgres::Client::connect(cluster.admin_url(), postgres::NoTls).unwrap();
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM _sv_migrations WHERE scope = 'core'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 20);
}
