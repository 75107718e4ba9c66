//! The same routes on SQLite and on PostgreSQL (issue 11), with real processes over HTTP:
//! three platforms (`sv serve` + extension host) with `notes` installed: both stores on
//! SQLite; the plugin store on PostgreSQL; both stores on PostgreSQL (a cluster of its
//! own, since plugin roles are cluster-wide). Throughput from the same clients, rounds
//! alternating, and the ratios to SQLite: the plugin route `GET
//! /api/plugins/notes/notes/{id}` (one row) with the plugin store on PostgreSQL, and the
//! core route `GET /api/auth/me` (the session and its user) with the core store on
//! PostgreSQL. The servers are throwaway clusters from `scripts/postgres` on this
//! machine. Then (issue 12) a second kernel joins the platform with both stores on
//! PostgreSQL, and the same two routes are measured through one kernel against through
//! both in turn (on a 2-core machine: no regression is the point, not scaling).
//!
//! A fourth platform with both stores on MariaDB (`scripts/mariadb`) joins the first
//! comparison: the same two routes on SQLite, PostgreSQL and MariaDB side by side
//! (issue 15); and a second kernel joins it too, as on PostgreSQL.
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

/// Requests per second from [`CLIENTS`] clients for one round, each client sending its
/// requests to `urls` in turn (one URL per kernel serving the same route).
fn throughput(urls: &[String], token: &str) -> f64 {
    let deadline = Instant::now() + ROUND;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (urls, token) = (urls.to_vec(), token.to_owned());
            std::thread::spawn(move || {
                let agent = agent();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let url = &urls[(client + n as usize) % urls.len()];
                    let mut r = agent
                        .get(url)
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

/// A served platform with `notes` and one user, the URL of one of their notes and the
/// user's token.
fn platform(
    database_url: Option<&str>,
    plugin_database_url: Option<&str>,
) -> (Platform, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut toml = String::new();
    if let Some(url) = database_url {
        toml.push_str(&format!("database_url = \"{url}\"\n"));
    }
    if let Some(url) = plugin_database_url {
        toml.push_str(&format!("plugin_database_url = \"{url}\"\n"));
    }
    std::fs::write(dir.path().join("sovereign.toml"), toml).unwrap();
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

/// A throwaway cluster with the roles and databases of `urls` (`--database-url`,
/// `--plugin-database-url` and their values).
fn cluster_for(script: &std::path::Path, urls: &dyn Fn(&Cluster) -> Vec<String>) -> Cluster {
    let cluster = Cluster::start(script).unwrap();
    let roles = tempfile::tempdir().unwrap();
    let mut args = vec![
        "postgres:roles".to_owned(),
        "--apply".to_owned(),
        "--admin-url".to_owned(),
        cluster.admin_url().to_owned(),
    ];
    args.extend(urls(&cluster));
    sv_ok(
        roles.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    cluster
}

/// Median requests per second of `ROUNDS` rounds on each target, rounds alternating
/// between them so that the machine's load hits all alike.
fn compare(targets: &[(Vec<String>, &str)]) -> Vec<f64> {
    for (urls, token) in targets {
        throughput(urls, token);
    }
    let mut rounds = vec![Vec::new(); targets.len()];
    for _ in 0..ROUNDS {
        for (i, (urls, token)) in targets.iter().enumerate() {
            rounds[i].push(throughput(urls, token));
        }
    }
    rounds
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect()
}

fn main() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let plugins_only = cluster_for(&script, &|c| {
        vec![
            "--plugin-database-url".into(),
            c.url("svc_plugins", "bench-plugins-secret", "sv_plugins"),
        ]
    });
    let both = cluster_for(&script, &|c| {
        vec![
            "--database-url".into(),
            c.url("svc_core", "bench-core-secret", "sv_core"),
            "--plugin-database-url".into(),
            c.url("svc_plugins", "bench-plugins-secret", "sv_plugins"),
        ]
    });
    let (sqlite, sqlite_note, sqlite_token) = platform(None, None);
    let (_pg_plugins, pg_note, pg_plugins_token) = platform(
        None,
        Some(&plugins_only.url("svc_plugins", "bench-plugins-secret", "sv_plugins")),
    );
    let (pg_both, pg_both_note, pg_both_token) = platform(
        Some(&both.url("svc_core", "bench-core-secret", "sv_core")),
        Some(&both.url("svc_plugins", "bench-plugins-secret", "sv_plugins")),
    );
    // Both stores on MariaDB (issue 15).
    let mariadb = sovereign_mysql::Server::start(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb"),
    )
    .unwrap();
    let my_core_url = mariadb.url("svc_core", "bench-core-secret", "sv_core");
    let my_plugins_url = mariadb.url("svc_plugins", "bench-plugins-secret", "sv_plugins");
    let roles = tempfile::tempdir().unwrap();
    sv_ok(
        roles.path(),
        &[
            "--database-url",
            &my_core_url,
            "--plugin-database-url",
            &my_plugins_url,
            "mysql:roles",
            "--apply",
            "--admin-url",
            mariadb.admin_url(),
        ],
    );
    let (my_both, my_note, my_token) = platform(Some(&my_core_url), Some(&my_plugins_url));
    let sqlite_me = format!("{}/api/auth/me", sqlite.base);
    let pg_me = format!("{}/api/auth/me", pg_both.base);
    let my_me = format!("{}/api/auth/me", my_both.base);

    let my_note_url = my_note.clone();
    let plugin = compare(&[
        (vec![sqlite_note], &sqlite_token),
        (vec![pg_note], &pg_plugins_token),
        (vec![my_note], &my_token),
    ]);
    let core = compare(&[
        (vec![sqlite_me], &sqlite_token),
        (vec![pg_me.clone()], &pg_both_token),
        (vec![my_me], &my_token),
    ]);
    println!(
        "{CLIENTS} clients, median of {ROUNDS} rounds of {}s, rounds alternating \
         (plugin route: the plugin store on the server, core on SQLite for PostgreSQL, \
         both stores on the server for MariaDB; core route: both stores on the server):",
        ROUND.as_secs()
    );
    println!(
        "{:<40} {:>12} {:>12} {:>12} {:>8} {:>8}",
        "route", "SQLite", "PostgreSQL", "MariaDB", "PG/SQL", "My/SQL"
    );
    for (route, rates) in [
        ("plugin GET /api/plugins/notes/notes/{id}", &plugin),
        ("core   GET /api/auth/me", &core),
    ] {
        println!(
            "{route:<40} {:>8.0} r/s {:>8.0} r/s {:>8.0} r/s {:>7.2}x {:>7.2}x",
            rates[0],
            rates[1],
            rates[2],
            rates[1] / rates[0],
            rates[2] / rates[0]
        );
    }

    println!(
        "{:<56} {:>12} {:>12} {:>12}",
        "both stores on one server", "one kernel", "two kernels", "two / one"
    );
    two_kernels("PostgreSQL", &pg_both, &pg_both_note, &pg_both_token);
    two_kernels("MariaDB", &my_both, &my_note_url, &my_token);
}

/// A second kernel joins `first` on the same two databases (its own directory, no
/// packages: it fetches notes from the core): the plugin and core routes through one
/// kernel, then through both in turn.
fn two_kernels(server: &str, first: &Platform, note: &str, token: &str) {
    let second_dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        first.dir.path().join("sovereign.toml"),
        second_dir.path().join("sovereign.toml"),
    )
    .unwrap();
    let second = Platform::serve(second_dir);
    let note_path = note
        .strip_prefix(&first.base)
        .expect("the note's URL is on the first kernel")
        .to_owned();
    let me = format!("{}/api/auth/me", first.base);
    let plugin = compare(&[
        (vec![note.to_owned()], token),
        (
            vec![note.to_owned(), format!("{}{note_path}", second.base)],
            token,
        ),
    ]);
    let core = compare(&[
        (vec![me.clone()], token),
        (vec![me, format!("{}/api/auth/me", second.base)], token),
    ]);
    for (route, rates) in [
        ("plugin GET /api/plugins/notes/notes/{id}", &plugin),
        ("core   GET /api/auth/me", &core),
    ] {
        println!(
            "{:<56} {:>8.0} r/s {:>8.0} r/s {:>11.2}x",
            format!("{server}: {route}"),
            rates[0],
            rates[1],
            rates[1] / rates[0]
        );
    }
}
