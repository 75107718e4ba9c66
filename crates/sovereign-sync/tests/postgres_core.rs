//! Sync from a core store on a real PostgreSQL server (`scripts/postgres`): change
//! capture in PL/pgSQL, batches, a full build and reconcile, into a SQLite mirror and
//! into the PostgreSQL plugin database; and concurrent core writers never leave a change
//! behind the watermark.

use std::cell::RefCell;
use std::path::PathBuf;

use sovereign_db::{PostgresUrl, StoreTarget};
use sovereign_db_core::{CoreConn, PgCore};
use sovereign_db_plugins::TrustedPluginStore;
use sovereign_db_plugins::mirror::MirrorCatalog;
use sovereign_postgres::mirror::PgMirror;
use sovereign_postgres::{Cluster, RolePlan};
use sovereign_sync::{Mirror, capture, full, publish, reconcile};

type Projection = Vec<(i64, i64, String, Option<String>)>;

struct Setup {
    _cluster: Cluster,
    _dir: tempfile::TempDir,
    core_url: PostgresUrl,
    plugins_url: String,
    sqlite_mirror: PathBuf,
}

fn setup() -> Setup {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = Cluster::start(&script).unwrap();
    let core = cluster.url("svc_core", "core-secret", "sv_core");
    let plugins_url = cluster.url("svc_plugins", "plugins-secret", "sv_plugins");
    RolePlan::new(Some(&core), &plugins_url, vec![])
        .unwrap()
        .apply(cluster.admin_url())
        .unwrap();
    let StoreTarget::Postgres(core_url) = StoreTarget::parse("DATABASE_URL", &core).unwrap() else {
        panic!("{core} is a PostgreSQL URL");
    };
    let mut owner = PgCore::connect_unchecked(&core_url).unwrap();
    sovereign_postgres::migrate::deploy(
        owner.client_mut(),
        &sovereign_db_core::postgres_migrations(),
    )
    .unwrap();
    let mut plugins = postgres::Client::connect(&plugins_url, postgres::NoTls).unwrap();
    sovereign_postgres::migrate::deploy(
        &mut plugins,
        &sovereign_postgres::migrate::plugin_store_system(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    Setup {
        _cluster: cluster,
        sqlite_mirror: dir.path().join("mirror.db"),
        _dir: dir,
        core_url,
        plugins_url,
    }
}

fn core(setup: &Setup) -> CoreConn {
    CoreConn::Postgres(Box::new(PgCore::connect(&setup.core_url).unwrap()))
}

fn sql(core: &CoreConn, statement: &str) {
    let CoreConn::Postgres(pg) = core else {
        panic!("a PostgreSQL core")
    };
    pg.with_client(|c| c.batch_execute(statement)).unwrap();
}

fn projection(core: &CoreConn) -> Projection {
    let CoreConn::Postgres(pg) = core else {
        panic!("a PostgreSQL core")
    };
    pg.with_client(|c| {
        c.query(
            "SELECT id, tenant_id, display_name, avatar_url FROM users WHERE active = 1 ORDER BY id",
            &[],
        )
    })
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
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
        Mirror::Postgres(_) => {
            let mut c = postgres::Client::connect(&setup.plugins_url, postgres::NoTls).unwrap();
            c.query(&query.replace("core__users", "core.core__users"), &[])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect()
        }
        Mirror::Mysql(_) => unreachable!("no MySQL here (tests/mysql.rs)"),
    }
}

/// The two mirror stores a PostgreSQL core can feed.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    Postgres,
}

fn open_mirror(setup: &Setup, kind: Kind) -> Mirror {
    match kind {
        Kind::Sqlite => {
            Mirror::Sqlite(TrustedPluginStore::open_mirror_file(&setup.sqlite_mirror).unwrap())
        }
        Kind::Postgres => {
            Mirror::Postgres(RefCell::new(PgMirror::connect(&setup.plugins_url).unwrap()))
        }
    }
}

fn reconcile_now(core: &CoreConn, mirror: &Mirror, repair: bool) -> reconcile::ReconcileReport {
    let catalog = MirrorCatalog::default();
    match (core, mirror) {
        (CoreConn::Postgres(pg), Mirror::Sqlite(store)) => {
            reconcile::reconcile_from_server_core(&**pg, store, &catalog, repair, &|_, _| {})
        }
        (_, Mirror::Postgres(pg)) => reconcile::reconcile_server_mirror(
            core,
            &mut *pg.borrow_mut(),
            &catalog,
            repair,
            &|_, _| {},
        ),
        _ => unreachable!("a PostgreSQL core"),
    }
    .unwrap()
}

#[test]
fn a_postgres_core_feeds_a_sqlite_and_a_postgres_mirror_exactly() {
    // One core feeds one mirror (acknowledging prunes the outbox): a cluster each.
    for kind in [Kind::Sqlite, Kind::Postgres] {
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
        "INSERT INTO users (display_name, email) SELECT 'user ' || i, 'u' || i || '@example.com'
         FROM generate_series(1, 300) i",
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
        "INSERT INTO users (display_name, email, avatar_url)
             SELECT 'late ' || i, 'late' || i || '@example.com', 'https://a/' || i
             FROM generate_series(1, 40) i;
         UPDATE users SET display_name = display_name || ' (renamed)' WHERE id % 7 = 0;
         UPDATE users SET active = 0 WHERE id % 11 = 0;
         UPDATE users SET id = 100000 WHERE id = 5;
         DELETE FROM users WHERE id % 13 = 0;",
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
        Mirror::Postgres(_) => postgres::Client::connect(&setup.plugins_url, postgres::NoTls)
            .unwrap()
            .batch_execute(&drift.replace("core__users", "core.core__users"))
            .unwrap(),
        Mirror::Mysql(_) => unreachable!("no MySQL here (tests/mysql.rs)"),
    }
    let found = reconcile_now(&core, &mirror, true);
    assert_eq!(found.differences.len(), 1, "{kind:?}: {found:?}");
    assert_eq!(found.repaired, 1, "{kind:?}");
    assert_eq!(mirror_rows(&setup, &mirror), projection(&core), "{kind:?}");
    let status = sovereign_sync::status::status(&core, &mirror, &catalog).unwrap();
    assert_eq!(status.slices[0].backlog_rows, 0, "{kind:?}");
    // A fresh build lands where incremental sync did.
    full::full_resync(&core, &mirror, &catalog, &|_, _| {}).unwrap();
    assert_eq!(mirror_rows(&setup, &mirror), projection(&core), "{kind:?}");
}

#[test]
fn a_committed_core_change_notifies_the_workers_channel_and_carries_no_data() {
    let setup = setup();
    let core = core(&setup);
    capture::install(&core, &MirrorCatalog::default()).unwrap();
    let mut listener = postgres::Client::connect(setup.core_url.expose(), postgres::NoTls).unwrap();
    listener
        .batch_execute(&format!("LISTEN {}", capture::CHANGES_CHANNEL))
        .unwrap();
    let arrived = |listener: &mut postgres::Client| {
        let mut notes = listener.notifications();
        let mut it = notes.timeout_iter(std::time::Duration::from_millis(500));
        let mut got = Vec::new();
        while let Some(n) = postgres::fallible_iterator::FallibleIterator::next(&mut it).unwrap() {
            got.push((n.channel().to_owned(), n.payload().to_owned()));
        }
        got
    };
    sql(
        &core,
        "BEGIN; INSERT INTO users (display_name, email) VALUES ('a', 'a@example.com');
         ROLLBACK;",
    );
    assert!(
        arrived(&mut listener).is_empty(),
        "a rolled-back change notified"
    );
    sql(
        &core,
        "INSERT INTO users (display_name, email) VALUES ('b', 'b@example.com'), ('c', 'c@example.com')",
    );
    assert_eq!(
        arrived(&mut listener),
        [(capture::CHANGES_CHANNEL.to_owned(), String::new())],
        "one empty notification per committed transaction"
    );
}

#[test]
fn concurrent_core_writers_never_leave_a_change_behind_the_watermark() {
    let setup = setup();
    let core = core(&setup);
    let catalog = MirrorCatalog::default();
    capture::install(&core, &catalog).unwrap();
    let mirror = Mirror::Postgres(RefCell::new(PgMirror::connect(&setup.plugins_url).unwrap()));
    full::full_resync(&core, &mirror, &catalog, &|_, _| {}).unwrap();
    // Four writers with transactions of several rows each, while batches are applied.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = setup.core_url.clone();
            std::thread::spawn(move || {
                let pg = PgCore::connect(&url).unwrap();
                for i in 0..40 {
                    pg.with_client(|c| {
                        c.batch_execute(&format!(
                            "BEGIN;
                             INSERT INTO users (display_name, email) VALUES
                                 ('w{w} {i} a', 'w{w}.{i}.a@example.com'),
                                 ('w{w} {i} b', 'w{w}.{i}.b@example.com');
                             SELECT pg_sleep(0.01);
                             UPDATE users SET display_name = display_name || '!'
                                 WHERE email = 'w{w}.{i}.a@example.com';
                             COMMIT;"
                        ))
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

/// Random inserts, updates (in and out of the filter), deletes and key changes on a
/// PostgreSQL core, applied in small batches (several changes of one key in a batch,
/// a key deleted and made again): each mirror equals the projection after every batch.
#[test]
fn random_core_writes_leave_either_mirror_equal_to_the_projection() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let setup = setup();
    let core = core(&setup);
    let catalog = MirrorCatalog::default();
    capture::install(&core, &catalog).unwrap();
    for kind in [Kind::Postgres, Kind::Sqlite] {
        let mirror = open_mirror(&setup, kind);
        full::full_resync(&core, &mirror, &catalog, &|_, _| {}).unwrap();
        let mut rng = StdRng::seed_from_u64(2026);
        let mut made = 0;
        for round in 0..30 {
            for _ in 0..rng.random_range(1..30) {
                let id = rng.random_range(1..40);
                made += 1;
                let statement = match rng.random_range(0..5) {
                    0 | 1 => format!(
                        "INSERT INTO users (id, email, display_name, active) \
                         VALUES ({id}, '{kind:?}{made}@example.com', 'name {}', {}) \
                         ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
                        rng.random_range(0..1000),
                        rng.random_range(0..2)
                    ),
                    2 => format!(
                        "UPDATE users SET active = 1 - active, avatar_url = 'a{}' WHERE id = {id}",
                        rng.random_range(0..1000)
                    ),
                    3 => format!("DELETE FROM users WHERE id = {id}"),
                    _ => format!(
                        "UPDATE users SET id = {} WHERE id = {id} \
                         AND NOT EXISTS (SELECT 1 FROM users WHERE id = {})",
                        id + 40,
                        id + 40
                    ),
                };
                sql(&core, &statement);
            }
            publish::catch_up(&core, &mirror, &catalog, 7).unwrap();
            assert_eq!(
                mirror_rows(&setup, &mirror),
                projection(&core),
                "{kind:?}, round {round}"
            );
        }
        let report = reconcile_now(&core, &mirror, false);
        assert!(report.differences.is_empty(), "{kind:?}: {report:?}");
    }
}
