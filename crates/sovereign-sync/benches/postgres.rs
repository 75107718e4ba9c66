//! Sync figures with the mirror on PostgreSQL (issue 11), each against a baseline in the
//! same run, on a throwaway cluster from `scripts/postgres`, first with the core on
//! SQLite, then with the core on PostgreSQL too (its own database on the same server):
//!
//! 1. Full mirror build of 1,000,000 user rows (mirror by binary `COPY`) vs `INSERT INTO
//!    ... SELECT` of the same rows between two schemas of that server (goal: >= 0.5x
//!    its speed).
//! 2. Incremental lag p50/p99 (core commit -> watermark visible in PostgreSQL) while
//!    2,000 core writes per second run for 30 s, with the near-real-time worker (goal:
//!    p99 < 100 ms).
//!
//! Run: `cargo bench -p sovereign-sync --bench postgres`. `SV_BENCH_ROWS` and
//! `SV_BENCH_SECONDS` shrink it for a quick look.

mod common;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    backlog_after, env_num, load_users, measure_lag, median, spawn_worker, sqlite_writer,
};
use sovereign_db::{PostgresUrl, StoreTarget};
use sovereign_db_core::{CoreAccess, CoreConn, CoreLocation, PgCore};
use sovereign_postgres::mirror::PgMirror;
use sovereign_postgres::{Cluster, RolePlan, migrate};
use sovereign_sync::{Mirror, SyncSettings, capture, full};

fn mirror(owner_url: &str) -> Mirror {
    Mirror::Postgres(RefCell::new(PgMirror::connect(owner_url).unwrap()))
}

fn full_build(owner_url: &str, core: &dyn CoreAccess, label: &str, rows: u64) {
    let settings = SyncSettings::default();
    let mut admin = postgres::Client::connect(owner_url, postgres::NoTls).unwrap();
    let (mut ours, mut baseline) = (vec![], vec![]);
    for _ in 0..3 {
        let start = Instant::now();
        full::full_resync(core, &mirror(owner_url), &settings.catalog, &|_, _| {}).unwrap();
        ours.push(start.elapsed());
        // The same rows, typed the same, copied between two schemas of the server.
        admin
            .batch_execute(
                "DROP SCHEMA IF EXISTS bench_copy CASCADE; CREATE SCHEMA bench_copy;
                 CREATE TABLE bench_copy.users (id bigint PRIMARY KEY, tenant_id bigint,
                                                display_name text, avatar_url text);",
            )
            .unwrap();
        let start = Instant::now();
        admin
            .batch_execute(
                "INSERT INTO bench_copy.users SELECT id, tenant_id, display_name, avatar_url
                 FROM core.core__users",
            )
            .unwrap();
        baseline.push(start.elapsed());
    }
    let (ours, baseline) = (median(ours), median(baseline));
    println!(
        "{label}: full build of {rows} user rows into PostgreSQL: sovereign {:.2} s, \
         INSERT ... SELECT between two schemas {:.2} s, speed ratio {:.2}x (goal >= 0.5x)",
        ours.as_secs_f64(),
        baseline.as_secs_f64(),
        baseline.as_secs_f64() / ours.as_secs_f64()
    );
}

/// Where the lag run's core is, and how it writes.
enum LagCore<'a> {
    Sqlite(&'a Path),
    Postgres(&'a PostgresUrl),
}

fn lag(owner_url: &str, core: LagCore<'_>, rows: u64, seconds: u64) {
    let (label, location) = match &core {
        LagCore::Sqlite(path) => ("core on SQLite", CoreLocation::File(path.to_path_buf())),
        LagCore::Postgres(url) => ("core on PostgreSQL", CoreLocation::Postgres((*url).clone())),
    };
    let (worker, waker) = spawn_worker(
        location.clone(),
        Arc::new({
            let url = owner_url.to_owned();
            move || Ok(Mirror::Postgres(RefCell::new(PgMirror::connect(&url)?)))
        }),
    );
    let mut watch = PgMirror::connect(owner_url).unwrap();
    let reader = location.open_existing().unwrap();
    let mut backlog = || pending_after(&reader, watch.watermark().unwrap());
    while backlog() > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut write: common::Writer = match core {
        LagCore::Sqlite(path) => Box::new(sqlite_writer(path)),
        LagCore::Postgres(url) => {
            // One round trip per write, as an application sending its transaction in
            // one go would (the values are the bench's own integers and names).
            let mut client = postgres::Client::connect(url.expose(), postgres::NoTls).unwrap();
            Box::new(move |id, name| {
                let messages = client
                    .simple_query(&format!(
                        "BEGIN; UPDATE users SET display_name = '{name}' WHERE id = {id};
                         SELECT currval(pg_get_serial_sequence('_sv_change_outbox', 'seq'));
                         COMMIT;"
                    ))
                    .unwrap();
                messages
                    .iter()
                    .find_map(|m| match m {
                        postgres::SimpleQueryMessage::Row(row) => row.get(0),
                        _ => None,
                    })
                    .and_then(|seq| seq.parse().ok())
                    .expect("currval returns the change's sequence number")
            })
        }
    };
    let mut poll_conn = PgMirror::connect(owner_url).unwrap();
    let run = measure_lag(
        &mut write,
        rows,
        seconds,
        &waker,
        &mut backlog,
        Box::new(move || poll_conn.watermark().unwrap_or(0)),
    );
    worker.stop();
    println!(
        "{label}: incremental lag into PostgreSQL under {:.0} core writes/s for {seconds} s: \
         {} (goal p99 < 100 ms)",
        run.achieved,
        run.summary()
    );
}

/// Outbox rows of the core after `watermark`, on either backend.
fn pending_after(core: &CoreConn, watermark: i64) -> i64 {
    match core {
        CoreConn::Sqlite(conn) => backlog_after(conn, watermark),
        CoreConn::Postgres(pg) => pg
            .with_client(|c| {
                c.query_one(
                    "SELECT count(*) FROM _sv_change_outbox WHERE seq > $1",
                    &[&watermark],
                )
            })
            .unwrap()
            .get(0),
        CoreConn::Mysql(_) => unreachable!("no MySQL core in this bench"),
    }
}

fn main() {
    let rows = env_num("SV_BENCH_ROWS", 1_000_000);
    let seconds = env_num("SV_BENCH_SECONDS", 30);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = Cluster::start(&script).unwrap();
    let owner_url = cluster.url("svc_plugins", "bench-plugins-secret", "sv_plugins");
    let core_url = cluster.url("svc_core", "bench-core-secret", "sv_core");
    RolePlan::new(Some(&core_url), &owner_url, vec![])
        .unwrap()
        .apply(cluster.admin_url())
        .unwrap();
    let mut owner = postgres::Client::connect(&owner_url, postgres::NoTls).unwrap();
    migrate::deploy(&mut owner, &migrate::plugin_store_system()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let core_path = dir.path().join("core.db");
    let core = sovereign_db_core::open(&core_path).unwrap();
    sovereign_db_core::migrations().deploy(&core).unwrap();
    load_users(&core, rows);
    capture::install(&core, &SyncSettings::default().catalog).unwrap();
    full_build(&owner_url, &core, "core on SQLite", rows);
    lag(&owner_url, LagCore::Sqlite(&core_path), rows, seconds);

    // Both stores on PostgreSQL: the same rows in the core database.
    let StoreTarget::Postgres(core_url) = StoreTarget::parse("DATABASE_URL", &core_url).unwrap()
    else {
        unreachable!("a PostgreSQL URL");
    };
    let mut pg_core = PgCore::connect_unchecked(&core_url).unwrap();
    migrate::deploy(
        pg_core.client_mut(),
        &sovereign_db_core::postgres_migrations(),
    )
    .unwrap();
    pg_core
        .client_mut()
        .batch_execute(&format!(
            "INSERT INTO users (id, email, display_name, avatar_url, active)
             SELECT i, 'user' || i || '@example.com', 'User number ' || i,
                    CASE WHEN i % 3 = 0 THEN 'https://avatars.example.com/' || i || '.png' END,
                    CASE WHEN i % 10 = 0 THEN 0 ELSE 1 END
             FROM generate_series(1, {rows}) i"
        ))
        .unwrap();
    let pg_core = PgCore::connect(&core_url).unwrap();
    capture::install(&pg_core, &SyncSettings::default().catalog).unwrap();
    full_build(&owner_url, &pg_core, "core on PostgreSQL", rows);
    lag(&owner_url, LagCore::Postgres(&core_url), rows, seconds);
}
