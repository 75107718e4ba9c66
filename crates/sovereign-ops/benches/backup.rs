//! Backup throughput: `sv backup` (SQLite backup API snapshots + SHA-256 manifest) of a
//! ~1 GB data set (core.db and plugins.db, about half each) against the `sqlite3` tool's
//! `.backup` of the same two files run one after the other. Goal: >= 0.8x its throughput.
//!
//! Run: `cargo bench -p sovereign-ops --bench backup` (needs `sqlite3` on PATH).
//! `SV_BENCH_MB` sets the data set size.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sovereign_db::rusqlite::params;
use sovereign_ops::Layout;
use sovereign_ops::backup::{BackupOptions, backup};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn main() {
    let total_mb: u64 = std::env::var("SV_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    if !Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!(
            "backup bench: sqlite3 is not on PATH (apt-get install sqlite3); nothing measured"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let layout = Layout {
        core: data.join("core.db"),
        plugins: data.join("plugins.db"),
        isolated_dir: data.join("plugins"),
        mirror_file: None,
        data_dir: data.clone(),
    };
    let core = sovereign_db_core::open(&layout.core).unwrap();
    sovereign_db_core::migrations().deploy(&core).unwrap();
    let half = total_mb * 1024 * 1024 / 2;
    core.execute_batch("BEGIN").unwrap();
    {
        let mut stmt = core
            .prepare("INSERT INTO audit_log (actor_user_id, action, target, detail) VALUES (?1, 'bench', ?2, json_object('pad', hex(randomblob(240))))")
            .unwrap();
        for i in 0..(half / 600) as i64 {
            stmt.execute(params![i % 1000, format!("target:{i}")])
                .unwrap();
        }
    }
    core.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let plugins = sovereign_db_plugins::TrustedPluginStore::open_shared(&layout.plugins).unwrap();
    let p = plugins.connection();
    p.execute_batch("CREATE TABLE files__blobs (id INTEGER PRIMARY KEY, data BLOB); BEGIN")
        .unwrap();
    for _ in 0..(half / (256 * 1024)) {
        p.execute(
            "INSERT INTO files__blobs (data) VALUES (randomblob(262144))",
            [],
        )
        .unwrap();
    }
    p.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    drop(plugins);
    let bytes = size(&layout.core) + size(&layout.plugins);

    if std::env::var("SV_BENCH_PHASES").is_ok() {
        for _ in 0..3 {
            let out = dir.path().join("phases");
            std::fs::create_dir_all(&out).unwrap();
            let t = Instant::now();
            sovereign_ops::backup::snapshot(&layout.plugins, &out.join("p.db")).unwrap();
            sovereign_ops::backup::snapshot(&layout.core, &out.join("c.db")).unwrap();
            println!("snapshots {:?}", t.elapsed());
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
    let (mut ours, mut cli) = (vec![], vec![]);
    for round in 0..3 {
        let out = dir.path().join(format!("ours-{round}"));
        let start = Instant::now();
        backup(
            &layout,
            &BackupOptions {
                out: out.clone(),
                include_plugin_data: true,
                exclude_plugins: vec![],
            },
            &|_, _| {},
        )
        .unwrap();
        ours.push(start.elapsed());
        std::fs::remove_dir_all(&out).unwrap();

        let base = dir.path().join(format!("cli-{round}"));
        std::fs::create_dir_all(&base).unwrap();
        let start = Instant::now();
        for (src, name) in [(&layout.plugins, "plugins.db"), (&layout.core, "core.db")] {
            let status = Command::new("sqlite3")
                .arg(src)
                .arg(format!(".backup '{}'", base.join(name).display()))
                .status()
                .unwrap();
            assert!(status.success());
        }
        cli.push(start.elapsed());
        std::fs::remove_dir_all(&base).unwrap();
    }
    let (ours, cli) = (median(ours), median(cli));
    let mbps = |d: Duration| bytes as f64 / 1024.0 / 1024.0 / d.as_secs_f64();
    println!(
        "backup of {:.0} MiB (core.db + plugins.db): sv backup {:.2} s ({:.0} MiB/s, with SHA-256 manifest), sqlite3 .backup x2 {:.2} s ({:.0} MiB/s); throughput ratio {:.2}x (goal >= 0.8x)",
        bytes as f64 / 1024.0 / 1024.0,
        ours.as_secs_f64(),
        mbps(ours),
        cli.as_secs_f64(),
        mbps(cli),
        cli.as_secs_f64() / ours.as_secs_f64()
    );
}
