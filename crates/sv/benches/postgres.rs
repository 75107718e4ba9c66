//! The same plugin route on a SQLite and on a PostgreSQL plugin store (issue 11), with
//! real processes over HTTP: two platforms (`sv serve` + extension host) that differ only
//! in `PLUGIN_DATABASE_URL`, the `notes` plugin installed in both, the core on SQLite in
//! both. Throughput of `GET /api/plugins/notes/notes/{id}` (one row) from the same
//! clients, rounds alternating between the two, and the ratio PostgreSQL / SQLite. The
//! PostgreSQL server is a throwaway cluster from `scripts/postgres` on this machine.
//!
//! Run: `cargo bench -p sv --bench postgres`.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sovereign_postgres::Cluster;
use support::{PASSWORD, Platform, agent, sv_ok};

const CLIENTS: usize = 4;
const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;

/// Requests per second on `url` from [`CLIENTS`] clients for one round.
fn throughput(url: &str, token: &str) -> f64 {
    let deadline = Instant::now() + ROUND;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, token) = (url.to_owned(), token.to_owned());
            std::thread::spawn(move || {
                let agent = agent();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let mut r = agent
                        .get(&url)
                        .header("Authorization", format!("Bearer {token}"))
                        .call()
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200, "{url}");
                    let _ = r.body_mut().read_to_vec();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    total as f64 / ROUND.as_secs_f64()
}

/// A served platform with `notes` and one user, and the URL of one of their notes.
fn platform(plugin_database_url: Option<&str>) -> (Platform, String, String) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(url) = plugin_database_url {
        std::fs::write(
            dir.path().join("sovereign.toml"),
            format!("plugin_database_url = \"{url}\"\n"),
        )
        .unwrap();
    }
    let platform = Platform::serve(Platform::prepare_in(
        dir,
        &["notes"],
        &[("bench@example.com", true)],
    ));
    let agent = agent();
    let (_, token) = platform.login(&agent, "bench@example.com", PASSWORD);
    let mut r = agent
        .post(format!("{}/api/plugins/notes/notes", platform.base))
        .header("Authorization", format!("Bearer {token}"))
        .send_json(serde_json::json!({ "title": "benchmark note", "body": "one row" }))
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let note: serde_json::Value = r.body_mut().read_json().unwrap();
    let url = format!("{}/api/plugins/notes/notes/{}", platform.base, note["id"]);
    (platform, url, token)
}

fn main() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = Cluster::start(&script).unwrap();
    let plugins_url = cluster.url("svc_plugins", "bench-plugins-secret", "sv_plugins");
    let roles = tempfile::tempdir().unwrap();
    sv_ok(
        roles.path(),
        &[
            "postgres:roles",
            "--apply",
            "--admin-url",
            cluster.admin_url(),
            "--plugin-database-url",
            &plugins_url,
        ],
    );
    let (_sqlite, sqlite_url, sqlite_token) = platform(None);
    let (_postgres, postgres_url, postgres_token) = platform(Some(&plugins_url));

    // Warm both up, then alternate rounds so that the machine's load hits both alike.
    throughput(&sqlite_url, &sqlite_token);
    throughput(&postgres_url, &postgres_token);
    let (mut sqlite, mut postgres) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        sqlite.push(throughput(&sqlite_url, &sqlite_token));
        postgres.push(throughput(&postgres_url, &postgres_token));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (sqlite, postgres) = (median(&mut sqlite), median(&mut postgres));
    println!(
        "plugin route GET /api/plugins/notes/notes/{{id}}, {CLIENTS} clients, median of {ROUNDS} rounds of {}s:",
        ROUND.as_secs()
    );
    println!("  SQLite plugin store:     {sqlite:>8.0} req/s");
    println!("  PostgreSQL plugin store: {postgres:>8.0} req/s");
    println!("  PostgreSQL / SQLite:     {:>8.2}x", postgres / sqlite);
}
