//! Sync figures, each measured against a baseline in the same run:
//!
//! 1. Full mirror build of 1,000,000 user rows vs the `sqlite3` command-line tool doing
//!    `ATTACH` + `INSERT INTO ... SELECT` of the same projection (goal: >= 0.5x its speed).
//! 2. Incremental lag p50/p99 (commit -> visible in the mirror) while 2,000 core writes per
//!    second run for 30 s, with the near-real-time worker (goal: p99 < 50 ms).
//!
//! Run: `cargo bench -p sovereign-sync --bench sync` (needs `sqlite3` on PATH for 1).
//! `SV_BENCH_ROWS` and `SV_BENCH_SECONDS` shrink it for a quick look.

use std::path::Path;
use std::process::Command;

use std::time::{Duration, Instant};

mod common;

use common::{
    backlog_after, env_num, load_users, measure_lag, median, spawn_worker, sqlite_writer,
};
use sovereign_db::rusqlite::Connection;
use sovereign_db_plugins::TrustedPluginStore;

use sovereign_sync::{Mirror, SyncSettings, capture, full};

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn full_build(dir: &Path, core_path: &Path, core: &Connection, rows: u64) {
    let settings = SyncSettings::default();
    let has_cli = Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cli {
        println!(
            "full build: sqlite3 is not on PATH; skipping the baseline (apt-get install sqlite3)"
        );
    }
    let (mut ours, mut cli) = (vec![], vec![]);
    for round in 0..3 {
        let mirror_path = dir.join(format!("mirror-{round}.db"));
        let mirror = Mirror::Sqlite(TrustedPluginStore::open_shared(&mirror_path).unwrap());
        let start = Instant::now();
        full::full_resync(core, &mirror, &settings.catalog, &|_, _| {}).unwrap();
        ours.push(start.elapsed());
        drop(mirror);
        remove_db(&mirror_path);

        if has_cli {
            let baseline = dir.join(format!("baseline-{round}.db"));
            let script = format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                 ATTACH '{}' AS c;
                 CREATE TABLE core__users (id INTEGER PRIMARY KEY, tenant_id, display_name, avatar_url);
                 INSERT INTO core__users SELECT id, tenant_id, display_name, avatar_url FROM c.users WHERE active = 1;",
                core_path.display()
            );
            let start = Instant::now();
            let out = Command::new("sqlite3")
                .arg(&baseline)
                .arg(&script)
                .output()
                .unwrap();
            cli.push(start.elapsed());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            remove_db(&baseline);
        }
    }
    let ours = median(ours);
    print!(
        "full build of {rows} user rows: sovereign {:.2} s",
        ours.as_secs_f64()
    );
    if has_cli {
        let cli = median(cli);
        println!(
            ", sqlite3 ATTACH + INSERT SELECT {:.2} s, speed ratio {:.2}x (goal >= 0.5x)",
            cli.as_secs_f64(),
            cli.as_secs_f64() / ours.as_secs_f64()
        );
    } else {
        println!();
    }
}

fn lag(dir: &Path, core_path: &Path, rows: u64, seconds: u64) {
    let mirror_path = dir.join("lag-plugins.db");
    let (worker, waker) = spawn_worker(
        sovereign_db_core::CoreLocation::File(core_path.to_owned()),
        std::sync::Arc::new({
            let p = mirror_path.clone();
            move || Ok(Mirror::Sqlite(TrustedPluginStore::open_shared(&p)?))
        }),
    );
    // Let the worker build the mirror first.
    let watch = TrustedPluginStore::open_shared(&mirror_path).unwrap();
    let core = sovereign_db_core::open_existing(core_path).unwrap();
    let mut backlog = || backlog_after(&core, watch.mirror_watermark().unwrap());
    while watch.mirror_specs().unwrap().is_empty() || backlog() > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }

    let poll_path = mirror_path.clone();
    let poll_conn = sovereign_db::open_database(
        &poll_path,
        &sovereign_db::OpenOptions::plugins().read_only(),
    )
    .unwrap();
    let run = measure_lag(
        &mut sqlite_writer(core_path),
        rows,
        seconds,
        &waker,
        &mut backlog,
        Box::new(move || {
            poll_conn
                .query_row(
                    "SELECT value FROM _sv_mirror_state WHERE key = 'watermark'",
                    [],
                    |r| r.get(0),
                )
                .unwrap_or(0)
        }),
    );
    worker.stop();
    println!(
        "incremental lag under {:.0} core writes/s for {seconds} s: {} (goal p99 < 50 ms)",
        run.achieved,
        run.summary()
    );
}

fn main() {
    let rows = env_num("SV_BENCH_ROWS", 1_000_000);
    let seconds = env_num("SV_BENCH_SECONDS", 30);
    let dir = tempfile::tempdir().unwrap();
    let core_path = dir.path().join("core.db");
    let core = sovereign_db_core::open(&core_path).unwrap();
    sovereign_db_core::migrations().deploy(&core).unwrap();
    load_users(&core, rows);
    capture::install(&core, &SyncSettings::default().catalog).unwrap();
    full_build(dir.path(), &core_path, &core, rows);
    lag(dir.path(), &core_path, rows, seconds);
}
