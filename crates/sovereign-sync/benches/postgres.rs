//! Sync figures with the mirror on PostgreSQL (issue 11), each against a baseline in the
//! same run, on a throwaway cluster from `scripts/postgres`:
//!
//! 1. Full mirror build of 1,000,000 user rows (core on SQLite, mirror by binary `COPY`)
//!    vs `INSERT INTO ... SELECT` of the same rows between two schemas of that server
//!    (goal: >= 0.5x its speed).
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

use common::{backlog_after, env_num, load_users, measure_lag, median, spawn_worker};
use sovereign_db::rusqlite::Connection;
use sovereign_postgres::mirror::PgMirror;
use sovereign_postgres::{Cluster, RolePlan, migrate};
use sovereign_sync::{Mirror, SyncSettings, capture, full};

fn mirror(owner_url: &str) -> Mirror {
    Mirror::Postgres(RefCell::new(PgMirror::connect(owner_url).unwrap()))
}

fn full_build(owner_url: &str, core: &Connection, rows: u64) {
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
        "full build of {rows} user rows into PostgreSQL: sovereign {:.2} s, INSERT ... SELECT \
         between two schemas {:.2} s, speed ratio {:.2}x (goal >= 0.5x)",
        ours.as_secs_f64(),
        baseline.as_secs_f64(),
        baseline.as_secs_f64() / ours.as_secs_f64()
    );
}

fn lag(owner_url: &str, core_path: &Path, rows: u64, seconds: u64) {
    let (worker, waker) = spawn_worker(
        core_path,
        Arc::new({
            let url = owner_url.to_owned();
            move || Ok(Mirror::Postgres(RefCell::new(PgMirror::connect(&url)?)))
        }),
    );
    let mut watch = PgMirror::connect(owner_url).unwrap();
    let core = sovereign_db_core::open_existing(core_path).unwrap();
    let mut backlog = || backlog_after(&core, watch.watermark().unwrap());
    while backlog() > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut poll_conn = PgMirror::connect(owner_url).unwrap();
    let run = measure_lag(
        core_path,
        rows,
        seconds,
        &waker,
        &mut backlog,
        Box::new(move || poll_conn.watermark().unwrap_or(0)),
    );
    worker.stop();
    println!(
        "incremental lag into PostgreSQL under {:.0} core writes/s for {seconds} s: {} \
         (goal p99 < 100 ms)",
        run.achieved,
        run.summary()
    );
}

fn main() {
    let rows = env_num("SV_BENCH_ROWS", 1_000_000);
    let seconds = env_num("SV_BENCH_SECONDS", 30);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = Cluster::start(&script).unwrap();
    let owner_url = cluster.url("svc_plugins", "bench-plugins-secret", "sv_plugins");
    RolePlan::new(None, &owner_url, vec![])
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
    full_build(&owner_url, &core, rows);
    lag(&owner_url, &core_path, rows, seconds);
}
