//! Figures of the operator console with 50 installed plugins and 1,000,000 mirrored rows
//! (core users, mirrored into `core__users`):
//!
//! 1. the console page's weight: the HTML, script and styles it loads (uncompressed);
//! 2. each JSON panel's latency (median and p95 of 30 requests, warm), beside `/health`
//!    measured in the same run as the baseline. Goal: every panel < 200 ms.
//!
//! The plugins' storage report (`dbstat` over every file) is measured in the background
//! every 30 s; panels read the last report, so its cost is reported separately.
//!
//! Run: `cargo bench -p sv --bench console`.

mod support;

use std::time::{Duration, Instant};

use support::{PASSWORD, Platform, agent, sv_ok};

const PLUGINS: usize = 50;
const MIRRORED_ROWS: i64 = 1_000_000;
const SAMPLES: usize = 30;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let dir = Platform::prepare(&["tasks", "notes"], &[("bench@example.com", true)]);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let component = root.join("plugins/tasks/plugin.wasm");
    // 48 small plugins of their own (a table each, a few hundred rows) besides the two
    // examples: 50 in all.
    let started = Instant::now();
    for n in 0..PLUGINS - 2 {
        let id = format!("bench_{n:02}");
        let pkg = dir.path().join("packages").join(&id);
        std::fs::create_dir_all(pkg.join("migrations")).unwrap();
        std::fs::write(
            pkg.join("plugin.json"),
            format!(r#"{{ "id": "{id}", "name": "Bench {n}", "version": "0.1.0" }}"#),
        )
        .unwrap();
        std::fs::write(
            pkg.join("migrations/0001_init.sql"),
            format!(
                "CREATE TABLE {id}__items (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
                 INSERT INTO {id}__items (body)
                   WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 300)
                   SELECT printf('item %d of {id}', i) FROM r;"
            ),
        )
        .unwrap();
        std::fs::copy(&component, pkg.join("plugin.wasm")).unwrap();
        sv_ok(
            dir.path(),
            &["plugins", "install", pkg.to_str().unwrap(), "--yes"],
        );
    }
    // A million core users, written straight into core.db (as an import would), then
    // mirrored by a full resync.
    {
        let core =
            sovereign_db::rusqlite::Connection::open(dir.path().join("data/core.db")).unwrap();
        core.execute_batch(&format!(
            "BEGIN;
             INSERT INTO users (display_name, email)
               WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < {MIRRORED_ROWS})
               SELECT printf('User %d', i), printf('user%d@example.com', i) FROM r;
             DELETE FROM _sv_change_outbox;
             COMMIT;"
        ))
        .unwrap();
    }
    sv_ok(dir.path(), &["sync:run", "--full"]);
    let mirrored = sv_ok(
        dir.path(),
        &[
            "plugins",
            "sql",
            "tasks",
            "SELECT count(*) AS n FROM core__users",
            "--json",
        ],
    );
    let mirrored: serde_json::Value = serde_json::from_str(&mirrored).unwrap();
    assert_eq!(
        mirrored[0]["n"],
        MIRRORED_ROWS + 1,
        "the mirror holds every user"
    );
    println!(
        "setup: {PLUGINS} plugins, {MIRRORED_ROWS} mirrored users in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let platform = Platform::serve(dir);
    let base = platform.base.clone();
    let agent = agent();
    let (_, token) = platform.login(&agent, "bench@example.com", PASSWORD);

    // The storage report the panels read, measured once here the way the background
    // thread does.
    let storage_started = Instant::now();
    sv_ok(platform.dir.path(), &["plugins", "db", "inspect", "--json"]);
    let storage_s = storage_started.elapsed().as_secs_f64();

    // 1. Page weight, and the page's first load over HTTP (its three files, then the
    // session and the first panel it asks for).
    let mut page_bytes = 0;
    let load_started = Instant::now();
    for path in [
        "/console",
        "/console/console.js",
        "/console/console.css",
        "/api/auth/me",
        "/api/admin/plugins",
    ] {
        let mut r = agent
            .get(format!("{base}{path}"))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let body = r.body_mut().read_to_vec().unwrap();
        if path.starts_with("/console") {
            page_bytes += body.len();
        }
    }
    println!(
        "console page weight: {:.1} KB (HTML + script + styles, uncompressed; goal < 150 KB); \
         first load (files, session, plugins panel): {:.1} ms",
        page_bytes as f64 / 1000.0,
        load_started.elapsed().as_secs_f64() * 1000.0
    );

    // 2. Panel latency, warm, against /health in the same run.
    let time = |path: &str, auth: bool| -> Vec<f64> {
        let mut times = Vec::new();
        for i in 0..SAMPLES + 3 {
            let mut request = agent.get(format!("{base}{path}"));
            if auth {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            let t = Instant::now();
            let mut r = request.call().unwrap();
            let _ = r.body_mut().read_to_vec().unwrap();
            assert_eq!(r.status(), 200, "{path}");
            if i >= 3 {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        times.sort_by(f64::total_cmp);
        times
    };
    // The first plugins panel may measure the storage report itself; let the background
    // thread's report exist first.
    std::thread::sleep(Duration::from_secs(1));
    let health = time("/health", false);
    let health_median = percentile(&health, 0.5);
    println!(
        "baseline /health: median {:.2} ms, p95 {:.2} ms",
        health_median,
        percentile(&health, 0.95)
    );
    let mut worst: f64 = 0.0;
    for panel in [
        "plugins",
        "stores",
        "sync",
        "sync/history",
        "host",
        "backups",
        "audit",
        "events",
        "storage",
    ] {
        let times = time(&format!("/api/admin/{panel}"), true);
        let (median, p95) = (percentile(&times, 0.5), percentile(&times, 0.95));
        worst = worst.max(p95);
        println!(
            "panel {panel:13} median {median:7.2} ms  p95 {p95:7.2} ms  ({:.1}x /health)",
            median / health_median
        );
    }
    println!("slowest panel p95: {worst:.1} ms (goal < 200 ms)");
    println!(
        "storage report (dbstat over every file, measured in the background every 30 s): {storage_s:.2} s"
    );
}
