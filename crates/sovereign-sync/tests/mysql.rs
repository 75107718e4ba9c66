//! Sync on real MariaDB servers (`scripts/mariadb`): change capture by triggers on a
//! MySQL core, batches, a full build and reconcile, into a SQLite mirror and into the
//! MySQL plugin database; a SQLite core into the MySQL mirror; a rebuilt MySQL mirror's
//! statistics; and concurrent core writers never leave a change behind the watermark.

use std::cell::RefCell;
use std::path::PathBuf;

use mysql::prelude::Queryable;
use sovereign_db::{MysqlUrl, StoreTarget};
use sovereign_db_core::{CoreConn, MyCore};
use sovereign_db_plugins::TrustedPluginStore;
use sovereign_db_plugins::mirror::{MirrorCatalog, MirrorSlice};
use sovereign_mysql::mirror::MyMirror;
use sovereign_mysql::{RolePlan, Server};
use sovereign_sync::{Mirror, capture, full, publish, reconcile};

type Projection = Vec<(i64, i64, String, Option<String>)>;

struct Setup {
    _server: Server,
    _dir: tempfile::TempDir,
    core_url: MysqlUrl,
    plugins_url: String,
    sqlite_mirror: PathBuf,
}

fn setup() -> Setup {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb");
    let server = Server::start(&script).unwrap();
    let core = server.url("svc_core", "core-secret-1234", "sv_core");
    let plugins_url = server.url("svc_plugins", "plugins-secret-12", "sv_plugins");
    RolePlan::new(Some(&core), &plugins_url)
        .unwrap()
        .apply(server.admin_url())
        .unwrap();
    let StoreTarget::Mysql(core_url) = StoreTarget::parse("DATABASE_URL", &core).unwrap() else {
        panic!("{core} is a MySQL URL");
    };
    let mut owner = MyCore::connect_unchecked(&core_url).unwrap();
    sovereign_mysql::migrate::deploy(owner.conn_mut(), &sovereign_db_core::mysql_migrations())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    Setup {
        _server: server,
        sqlite_mirror: dir.path().join("mirror.db"),
        _dir: dir,
        core_url,
        plugins_url,
    }
}

fn core(setup: &Setup) -> CoreConn {
    CoreConn::Mysql(Box::new(MyCore::connect(&setup.core_url).unwrap()))
}

fn sql(core: &CoreConn, statements: &[&str]) {
    let CoreConn::Mysql(my) = core else {
        panic!("a MySQL core")
    };
    my.with_conn(|c| {
        for statement in statements {
            c.query_drop(statement).unwrap();
        }
    });
}

/// `INSERT ... SELECT` rows numbered 1..=n, by a recursive common table expression.
fn numbered(n: u32, select: &str) -> String {
    format!(
        "INSERT INTO users (display_name, email, avatar_url)
         WITH RECURSIVE s (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})
         {select} FROM s"
    )
}

fn projection(core: &CoreConn) -> Projection {
    let CoreConn::Mysql(my) = core else {
        panic!("a MySQL core")
    };
    my.with_conn(|c| {
        c.query(
            "SELECT id, tenant_id, display_name, avatar_url FROM users WHERE active = 1 ORDER BY id",
        )
    })
    .unwrap()
}

fn mirror_rows(setup: &Setup, mirror: &Mirror) -> Projection {
    let query = "SELECT id, tenant_id, display_name, avatar_url FROM core__users ORDER BY id";
    match mirror {
        Mirror::Sqlite(store) => store
            .connection()
            .prepare(query)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap(),
        Mirror::Mysql(_) => sovereign_mysql::roles::connect(&setup.plugins_url)
            .unwrap()
            .query(query)
            .unwrap(),
        Mirror::Postgres(_) => unreachable!("no PostgreSQL here"),
    }
}

/// The two mirror stores tested here.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    Mysql,
}

fn open_mirror(setup: &Setup, kind: Kind) -> Mirror {
    match kind {
        Kind::Sqlite => {
            Mirror::Sqlite(TrustedPluginStore::open_mirror_file(&setup.sqlite_mirror).unwrap())
        }
        Kind::Mysql => Mirror::Mysql(RefCell::new(MyMirror::connect(&setup.plugins_url).unwrap())),
    }
}

fn reconcile_now(core: &CoreConn, mirror: &Mirror, repair: bool) -> reconcile::ReconcileReport {
    let catalog = MirrorCatalog::default();
    match mirror {
        Mirror::Sqlite(store) => {
            reconcile::reconcile_from_server_core(core, store, &catalog, repair, &|_, _| {})
        }
        Mirror::Mysql(my) => reconcile::reconcile_server_mirror(
            core,
            &mut *my.borrow_mut(),
            &catalog,
            repair,
            &|_, _| {},
        ),
        Mirror::Postgres(_) => unreachable!("no PostgreSQL here"),
    }
    .unwrap()
}

#[test]
fn a_mysql_core_feeds_a_sqlite_and_a_mysql_mirror_exactly() {
    for kind in [Kind::Sqlite, Kind::Mysql] {
        feeds_exactly(kind);
    }
}

fn feeds_exactly(kind: Kind) {
    let setup = setup();
    let core = core(&setup);
    let mirror = open_mirror(&setup, kind);
    let catalog = MirrorCatalog::default();
    assert!(capture::install(&core, &catalog).unwrap());
    assert!(
        !capture::install(&core, &catalog).unwrap(),
        "installing again changes nothing"
    );
    sql(
        &core,
        &[&numbered(
            300,
            "SELECT CONCAT('user ', i), CONCAT('u', i, '@example.com'), NULL",
        )],
    );
    let built = full::full_resync(&core, &mirror, &catalog, &|_, _| {}).unwrap();
    assert_eq!(built.rows, [("users".to_owned(), 300)], "{kind:?}");
    assert_eq!(mirror_rows(&setup, &mirror), projection(&core), "{kind:?}");
    assert!(
        publish::needs_rebuild(&core, &mirror, &catalog)
            .unwrap()
            .is_none()
    );
    // Inserts, updates, a key change, deactivation (the slice's filter), deletes.
    sql(
        &core,
        &[
            &numbered(
                40,
                "SELECT CONCAT('late ', i), CONCAT('late', i, '@example.com'), CONCAT('https://a/', i)",
            ),
            "UPDATE users SET display_name = CONCAT(display_name, ' (renamed)') WHERE id % 7 = 0",
            "UPDATE users SET active = 0 WHERE id % 11 = 0",
            "UPDATE users SET id = 100000 WHERE id = 5",
            "DELETE FROM users WHERE id % 13 = 0",
        ],
    );
    let caught = publish::catch_up(&core, &mirror, &catalog, 64).unwrap();
    assert!(caught.batches > 1, "{kind:?}: {caught:?}");
    assert_eq!(mirror_rows(&setup, &mirror), projection(&core), "{kind:?}");
    let clean = reconcile_now(&core, &mirror, false);
    assert!(clean.differences.is_empty(), "{kind:?}: {clean:?}");
    // Drift behind the writer's back is found and repaired, exactly.
    let drift = "UPDATE core__users SET display_name = 'drifted' WHERE id = 2";
    match &mirror {
        Mirror::Sqlite(store) => store.connection().execute_batch(drift).unwrap(),
        _ => sovereign_mysql::roles::connect(&setup.plugins_url)
            .unwrap()
            .query_drop(drift)
            .unwrap(),
    }
    let found = reconcile_now(&core, &mirror, true);
    assert_eq!(found.differences.len(), 1, "{kind:?}: {found:?}");
    assert_eq!(found.repaired, 1, "{kind:?}");
    assert_eq!(mirror_rows(&setup, &mirror), projection(&core), "{kind:?}");
    let status = sovereign_sync::status::status(&core, &mirror, &catalog).unwrap();
    assert_eq!(status.slices[0].backlog_rows, 0, "{kind:?}");
    // A fresh build lands where incremental sync did (on MySQL: swapped in by name).
    full::full_resync(&core, &mirror, &catalog, &|_, _| {}).unwrap();
    assert_eq!(mirror_rows(&setup, &mirror), projection(&core), "{kind:?}");
    assert!(
        publish::needs_rebuild(&core, &mirror, &catalog)
            .unwrap()
            .is_none()
    );
}

/// A SQLite core (core.db) feeds the mirror in the MySQL plugin database.
#[test]
fn a_sqlite_core_feeds_the_mysql_mirror() {
    let setup = setup();
    let dir = tempfile::tempdir().unwrap();
    let conn = sovereign_db_core::open(&dir.path().join("core.db")).unwrap();
    sovereign_db_core::migrations().deploy(&conn).unwrap();
    let core = CoreConn::Sqlite(conn);
    let catalog = MirrorCatalog::default();
    capture::install(&core, &catalog).unwrap();
    let CoreConn::Sqlite(conn) = &core else {
        unreachable!()
    };
    conn.execute_batch(
        "WITH RECURSIVE s (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50)
         INSERT INTO users (display_name, email) SELECT 'user ' || i, 'u' || i || '@x.io' FROM s;",
    )
    .unwrap();
    let mirror = open_mirror(&setup, Kind::Mysql);
    full::full_resync(&core, &mirror, &catalog, &|_, _| {}).unwrap();
    conn.execute_batch(
        "UPDATE users SET display_name = 'renamed' WHERE id = 3; DELETE FROM users WHERE id = 4;",
    )
    .unwrap();
    publish::catch_up(&core, &mirror, &catalog, 16).unwrap();
    let rows = mirror_rows(&setup, &mirror);
    assert_eq!(rows.len(), 49);
    assert_eq!(rows[2].2, "renamed");
    assert!(reconcile_now(&core, &mirror, false).differences.is_empty());
}

/// A changed slice's capture triggers are replaced (on MariaDB in one statement each, so
/// the table is never without its trigger), obsolete ones dropped, and the new projection
/// is what the outbox records.
#[test]
fn changed_capture_triggers_are_replaced_and_obsolete_ones_dropped() {
    let setup = setup();
    let core = core(&setup);
    let slice = |name: &str, columns: &[&str]| MirrorSlice {
        name: name.into(),
        source_table: "users".into(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        filter: None,
        allow_secret: Vec::new(),
    };
    let triggers = || -> Vec<(String, String)> {
        let CoreConn::Mysql(my) = &core else {
            unreachable!()
        };
        my.with_conn(|c| {
            c.query(
                "SELECT TRIGGER_NAME, ACTION_STATEMENT FROM information_schema.TRIGGERS
                 WHERE TRIGGER_SCHEMA = DATABASE() ORDER BY TRIGGER_NAME",
            )
        })
        .unwrap()
    };
    let first = MirrorCatalog::new(vec![
        slice("people", &["id", "display_name"]),
        slice("avatars", &["id", "avatar_url"]),
    ]);
    assert!(capture::install(&core, &first).unwrap());
    assert_eq!(triggers().len(), 6);
    let second = MirrorCatalog::new(vec![slice("people", &["id", "avatar_url"])]);
    assert!(capture::install(&core, &second).unwrap());
    let now = triggers();
    let names: Vec<&str> = now.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "_sv_capture_people_delete",
            "_sv_capture_people_insert",
            "_sv_capture_people_update"
        ]
    );
    assert!(
        !capture::install(&core, &second).unwrap(),
        "nothing left to change"
    );
    sql(
        &core,
        &[&numbered(
            3,
            "SELECT CONCAT('u', i), CONCAT('u', i, '@x.io'), NULL",
        )],
    );
    let mirror = open_mirror(&setup, Kind::Mysql);
    full::full_resync(&core, &mirror, &second, &|_, _| {}).unwrap();
    sql(
        &core,
        &["UPDATE users SET avatar_url = 'https://a/2' WHERE id = 2"],
    );
    publish::catch_up(&core, &mirror, &second, 16).unwrap();
    let avatars: Vec<(i64, Option<String>)> = sovereign_mysql::roles::connect(&setup.plugins_url)
        .unwrap()
        .query("SELECT id, avatar_url FROM core__people ORDER BY id")
        .unwrap();
    assert_eq!(
        avatars,
        [(1, None), (2, Some("https://a/2".to_owned())), (3, None)]
    );
}

/// A rebuilt MySQL mirror table is swapped in with statistics of its whole size, so a
/// batch's `DELETE ... WHERE id IN (...)` goes by key: with the statistics InnoDB took
/// while the table filled (a few dozen rows), it scanned the whole table on every batch.
#[test]
fn a_rebuilt_mysql_mirror_knows_its_size_so_batches_delete_by_key() {
    let setup = setup();
    let dir = tempfile::tempdir().unwrap();
    let conn = sovereign_db_core::open(&dir.path().join("core.db")).unwrap();
    sovereign_db_core::migrations().deploy(&conn).unwrap();
    conn.execute_batch(
        "WITH RECURSIVE s (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000)
         INSERT INTO users (display_name, email) SELECT 'user ' || i, 'u' || i || '@x.io' FROM s;",
    )
    .unwrap();
    let core = CoreConn::Sqlite(conn);
    let catalog = MirrorCatalog::default();
    let mirror = open_mirror(&setup, Kind::Mysql);
    let mut plugins = sovereign_mysql::roles::connect(&setup.plugins_url).unwrap();
    // The first build, then a rebuild that swaps the old table out.
    for build in ["first build", "rebuild"] {
        full::full_resync(&core, &mirror, &catalog, &|_, _| {}).unwrap();
        let estimated: u64 = plugins
            .query_first(
                "SELECT TABLE_ROWS FROM information_schema.TABLES
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'core__users'",
            )
            .unwrap()
            .unwrap();
        assert!(
            (10_000..=40_000).contains(&estimated),
            "{build}: 20,000 rows estimated at {estimated}"
        );
        let keys: Vec<String> = (1..=30).map(|i| (i * 97).to_string()).collect();
        let plan: Vec<mysql::Row> = plugins
            .query(format!(
                "EXPLAIN DELETE FROM core__users WHERE id IN ({})",
                keys.join(", ")
            ))
            .unwrap();
        let access: Option<String> = plan[0].get("key").unwrap();
        assert_eq!(access.as_deref(), Some("PRIMARY"), "{build}: {plan:?}");
    }
}

/// Capturing transactions are serialised by the lock row, so outbox order is commit
/// order: batches read while four writers commit never skip a change.
#[test]
fn concurrent_mysql_core_writers_never_leave_a_change_behind_the_watermark() {
    let setup = setup();
    let core = core(&setup);
    let catalog = MirrorCatalog::default();
    capture::install(&core, &catalog).unwrap();
    let mirror = open_mirror(&setup, Kind::Mysql);
    full::full_resync(&core, &mirror, &catalog, &|_, _| {}).unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = setup.core_url.clone();
            std::thread::spawn(move || {
                let my = MyCore::connect(&url).unwrap();
                for i in 0..40 {
                    my.with_conn(|c| -> Result<(), mysql::Error> {
                        let mut tx = c.start_transaction(mysql::TxOpts::default())?;
                        tx.query_drop(format!(
                            "INSERT INTO users (display_name, email) VALUES
                                 ('w{w} {i} a', 'w{w}.{i}.a@example.com'),
                                 ('w{w} {i} b', 'w{w}.{i}.b@example.com')"
                        ))?;
                        tx.query_drop("DO SLEEP(0.01)")?;
                        tx.query_drop(format!(
                            "UPDATE users SET display_name = CONCAT(display_name, '!')
                             WHERE email = 'w{w}.{i}.a@example.com'"
                        ))?;
                        tx.commit()
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    while writers.iter().any(|w| !w.is_finished()) {
        publish::catch_up(&core, &mirror, &catalog, 16).unwrap();
    }
    for w in writers {
        w.join().unwrap();
    }
    publish::catch_up(&core, &mirror, &catalog, 16).unwrap();
    let rows = mirror_rows(&setup, &mirror);
    assert_eq!(rows.len(), 320);
    assert_eq!(rows, projection(&core));
}
