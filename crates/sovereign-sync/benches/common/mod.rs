//! What the sync benchmarks share: sizes from the environment, medians, and a core
//! store loaded with users.
#![allow(dead_code)]

use std::time::Duration;

use sovereign_db::rusqlite::Connection;

/// A size from the environment (`SV_BENCH_ROWS`, `SV_BENCH_SECONDS`), or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `v`.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Inserts `rows` users (every tenth inactive, every third with an avatar) in one
/// transaction.
pub fn load_users(core: &Connection, rows: u64) {
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

/// Lag percentiles of one run.
pub struct LagRun {
    /// Core writes per second achieved.
    pub achieved: f64,
    /// Commit -> visible, sorted.
    pub lags: Vec<Duration>,
}

impl LagRun {
    /// The `p` percentile (0..1).
    pub fn pct(&self, p: f64) -> Duration {
        self.lags[((self.lags.len() as f64 * p) as usize).min(self.lags.len() - 1)]
    }

    /// `p50 .. ms, p99 .. ms, max .. ms`.
    pub fn summary(&self) -> String {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.pct(0.50).as_secs_f64() * 1000.0,
            self.pct(0.99).as_secs_f64() * 1000.0,
            self.lags.last().unwrap().as_secs_f64() * 1000.0
        )
    }
}

/// A core writer: renames user `id` to `name` in a transaction of its own and returns the
/// outbox sequence number of the change.
pub type Writer = Box<dyn FnMut(i64, &str) -> i64>;

/// Renames user `id` to `name` in a transaction of its own on a SQLite core; returns
/// the outbox sequence number of the change.
pub fn sqlite_writer(core_path: &std::path::Path) -> impl FnMut(i64, &str) -> i64 + use<> {
    let writer = sovereign_db_core::open_existing(core_path).unwrap();
    move |id, name| {
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        writer
            .execute(
                "UPDATE users SET display_name = ?2 WHERE id = ?1",
                sovereign_db::rusqlite::params![id, name],
            )
            .unwrap();
        let seq: i64 = writer
            .query_row("SELECT max(seq) FROM _sv_change_outbox", [], |r| r.get(0))
            .unwrap();
        writer.execute_batch("COMMIT").unwrap();
        seq
    }
}

/// Runs 2,000 core writes per second for `seconds` (`write` renames one of `rows`
/// users and returns the change's sequence number; each commit wakes the worker as the
/// kernel's pool does) while `poll` reads the mirror's watermark in a thread of its
/// own; waits until `backlog` is 0; returns when each commit became visible.
pub fn measure_lag(
    write: &mut dyn FnMut(i64, &str) -> i64,
    rows: u64,
    seconds: u64,
    waker: &sovereign_sync::worker::SyncWaker,
    backlog: &mut dyn FnMut() -> i64,
    mut poll: Box<dyn FnMut() -> i64 + Send>,
) -> LagRun {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    // The poller records when each watermark became visible in the mirror, every 2 ms:
    // fine enough for a 100 ms goal, and not so often that the instrument's own queries
    // (as many as the writes at 0.5 ms) load the server it measures.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut last = -1;
            while !stop.load(Ordering::SeqCst) {
                let wm = poll();
                if wm != last {
                    seen.push((wm, Instant::now()));
                    last = wm;
                }
                std::thread::sleep(Duration::from_micros(2000));
            }
            seen
        })
    };
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
        let seq = write(id, &format!("v{i}"));
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
    LagRun { achieved, lags }
}

/// Outbox rows of `core` after `watermark` (what the mirror has not applied yet).
pub fn backlog_after(core: &Connection, watermark: i64) -> i64 {
    core.query_row(
        "SELECT count(*) FROM _sv_change_outbox WHERE seq > ?1",
        [watermark],
        |r| r.get(0),
    )
    .unwrap()
}

/// The near-real-time worker on `open`'s mirror, and the waker a writer calls after
/// each commit (as the kernel's pool does).
pub fn spawn_worker(
    core: sovereign_db_core::CoreLocation,
    open: sovereign_sync::worker::OpenMirror,
) -> (
    sovereign_sync::worker::SyncWorker,
    sovereign_sync::worker::SyncWaker,
) {
    let waker = sovereign_sync::worker::SyncWaker::default();
    let worker = sovereign_sync::worker::SyncWorker::spawn(
        sovereign_sync::SyncSettings::default(),
        sovereign_sync::worker::SyncTarget {
            core,
            open_mirror: open,
            observe: None,
            waker: waker.clone(),
            kernel_name: "sync bench".into(),
        },
    );
    (worker, waker)
}
