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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sovereign_db::rusqlite::Connection;
use sovereign_db_plugins::TrustedPluginStore;
use sovereign_sync::worker::{SyncTarget, SyncWaker, SyncWorker};
use sovereign_sync::{Mirror, SyncSettings, capture, full};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn load_users(core: &Connection, rows: u64) {
    core.execute_batch("BEGIN").unwrap();
    {
        let mut stmt = core
            .prepare("INSERT INTO users (id, email, display_name, avatar_url, active) VALUES (?1, ?2, ?3, ?4, ?5)")
            .unwrap();
        for i in 1..=rows as i64 {
            stmt.execute(sovereign_db::rusqlite::params![
                i,
                format!("user{i}@example.com"),
                format!("User number {i}"),
                (i % 3 == 0).then(|| format!("https://avatars.example.com/{i}.png")),
                i % 10 != 0
            ])
            .unwrap();
        }
    }
    core.execute_batch("COMMIT").unwrap();
}

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
        full::full_resync(core, core_path, &mirror, &settings.catalog, &|_, _| {}).unwrap();
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
    let settings = SyncSettings::default();
    let mirror_path = dir.join("lag-plugins.db");
    // The writer wakes the worker after each commit, as the kernel's pool does.
    let waker = SyncWaker::default();
    let worker = SyncWorker::spawn(
        settings.clone(),
        SyncTarget {
            core_path: core_path.to_owned(),
            open_mirror: std::sync::Arc::new({
                let p = mirror_path.clone();
                move || Ok(Mirror::Sqlite(TrustedPluginStore::open_shared(&p)?))
            }),
            observe: None,
            waker: waker.clone(),
        },
    );
    // Let the worker build the mirror first.
    let watch = TrustedPluginStore::open_shared(&mirror_path).unwrap();
    let core = sovereign_db_core::open_existing(core_path).unwrap();
    let backlog = || -> i64 {
        let wm = watch.mirror_watermark().unwrap();
        core.query_row(
            "SELECT count(*) FROM _sv_change_outbox WHERE seq > ?1",
            [wm],
            |r| r.get(0),
        )
        .unwrap()
    };
    while watch.mirror_specs().unwrap().is_empty() || backlog() > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }

    // The poller records when each watermark became visible in the mirror.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let path = mirror_path.clone();
        std::thread::spawn(move || {
            let conn = sovereign_db::open_database(
                &path,
                &sovereign_db::OpenOptions::plugins().read_only(),
            )
            .unwrap();
            let mut seen = Vec::new();
            let mut last = -1;
            while !stop.load(Ordering::SeqCst) {
                let wm: i64 = conn
                    .query_row(
                        "SELECT value FROM _sv_mirror_state WHERE key = 'watermark'",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap_or(0);
                if wm != last {
                    seen.push((wm, Instant::now()));
                    last = wm;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            seen
        })
    };

    let writer_conn = sovereign_db_core::open_existing(core_path).unwrap();
    let per_second = 2000u64;
    let total = per_second * seconds;
    let start = Instant::now();
    let mut commits = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + Duration::from_micros(i * 1_000_000 / per_second);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = 1 + (i as i64 * 7919) % rows as i64;
        writer_conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        writer_conn
            .execute(
                "UPDATE users SET display_name = ?2 WHERE id = ?1",
                sovereign_db::rusqlite::params![id, format!("v{i}")],
            )
            .unwrap();
        let seq: i64 = writer_conn
            .query_row("SELECT max(seq) FROM _sv_change_outbox", [], |r| r.get(0))
            .unwrap();
        writer_conn.execute_batch("COMMIT").unwrap();
        commits.push((seq, Instant::now()));
        waker.wake();
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    while backlog() > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::SeqCst);
    let seen = poller.join().unwrap();
    worker.stop();

    let mut lags: Vec<Duration> = commits
        .iter()
        .map(|(seq, committed)| {
            let visible = seen
                .iter()
                .find(|(wm, _)| wm >= seq)
                .map(|(_, at)| *at)
                .expect("every change became visible");
            visible.saturating_duration_since(*committed)
        })
        .collect();
    lags.sort();
    let pct = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    println!(
        "incremental lag under {achieved:.0} core writes/s for {seconds} s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (goal p99 < 50 ms)",
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        lags.last().unwrap().as_secs_f64() * 1000.0
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
