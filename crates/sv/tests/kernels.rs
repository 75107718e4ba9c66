//! Several kernels on one database server (issue 12 on PostgreSQL, then MySQL/MariaDB):
//! two `sv` processes with the same URLs serve every route; sessions made on one work on
//! the other; one sync leader at a time, taken over when it dies; events ingested once
//! whichever kernel's host relays them; a plugin installed while both run reaches both
//! hosts, and a third kernel with a directory of its own and no packages runs them from
//! the core's copies. Under 50 clients writing through both in turn, `kill -9` of the
//! leading kernel and then of the other one's extension host lose no acknowledged write;
//! a restore from another directory is refused while a kernel serves the core.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Workdir;
use mysql::prelude::Queryable;
use serde_json::Value;
use sovereign_postgres::Cluster;

const CLIENTS: usize = 50;
const LOAD: Duration = Duration::from_secs(20);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// `/health`'s sync part: this kernel, every kernel, the leader.
fn sync_health(server: &common::Server) -> Value {
    server.get("/health", None).body["sync"].clone()
}

/// Waits until `check` holds, or fails with what was last seen.
fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match check() {
            Ok(()) => return,
            Err(seen) if Instant::now() > deadline => panic!("{what}: {seen}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[derive(Default)]
struct Tally {
    /// Tasks whose creation was acknowledged (201): id.
    created: BTreeSet<i64>,
    /// Tasks whose completion was acknowledged (200): id.
    completed: BTreeSet<i64>,
    /// Requests answered with success, per kernel.
    served: BTreeMap<String, u64>,
    /// Failed requests, per kernel and kind (a status, or the connection refused).
    errors: BTreeMap<String, u64>,
}

/// `<kernel> <status>` or `<kernel> <transport error>` of a failed request.
fn failure(base: &str, reply: &Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> String {
    match reply {
        Ok(r) => format!("{base} {}", r.status().as_u16()),
        Err(ureq::Error::Io(e)) => format!("{base} {:?}", e.kind()),
        Err(e) => format!("{base} {e}"),
    }
}

/// The database server the kernels share, with administrator access for the checks.
enum Shared {
    Postgres(Cluster),
    Mysql(sovereign_mysql::Server),
}

impl Shared {
    fn name(&self) -> &'static str {
        match self {
            Shared::Postgres(_) => "PostgreSQL",
            Shared::Mysql(_) => "MySQL",
        }
    }

    /// `sovereign.toml` for both stores on this server, after `sv <kind>:roles --apply`.
    fn configure(&self, w: &Workdir) {
        let (core_url, plugins_url, roles, admin) = match self {
            Shared::Postgres(cluster) => (
                cluster.url("svc_core", "core-secret", "sv_core"),
                cluster.url("svc_plugins", "plugins-secret", "sv_plugins"),
                "postgres:roles",
                cluster.admin_url(),
            ),
            Shared::Mysql(server) => (
                server.url("svc_core", "core-secret-1234", "sv_core"),
                server.url("svc_plugins", "plugins-secret-12", "sv_plugins"),
                "mysql:roles",
                server.admin_url(),
            ),
        };
        std::fs::write(
            w.path().join("sovereign.toml"),
            format!("database_url = \"{core_url}\"\nplugin_database_url = \"{plugins_url}\"\n"),
        )
        .unwrap();
        w.sv_ok(&[roles, "--apply", "--admin-url", admin]);
    }

    /// The dialect directory of plugin migrations.
    fn migrations_dir(&self) -> &'static str {
        match self {
            Shared::Postgres(_) => "postgres",
            Shared::Mysql(_) => "mysql",
        }
    }

    /// The ids of `tasks`' tasks, read as the administrator.
    fn task_ids(&self) -> BTreeSet<i64> {
        let text = match self {
            Shared::Postgres(cluster) => common::psql_text(
                &cluster.admin_url().replace("/postgres", "/sv_plugins"),
                "SELECT id FROM tasks.tasks__tasks",
            ),
            Shared::Mysql(server) => mysql_text(
                server.admin_url(),
                "SELECT id FROM sv_plugins_tasks.tasks__tasks",
            ),
        };
        text.lines().map(|l| l.parse().unwrap()).collect()
    }

    /// `task.completed` events in the core's inbox, per task id.
    fn completion_events(&self) -> BTreeMap<i64, i64> {
        let text = match self {
            Shared::Postgres(cluster) => common::psql_text(
                &cluster.admin_url().replace("/postgres", "/sv_core"),
                "SELECT payload->>'task_id', count(*) FROM event_inbox
                 WHERE topic = 'task.completed' GROUP BY 1",
            ),
            Shared::Mysql(server) => mysql_text(
                server.admin_url(),
                "SELECT JSON_UNQUOTE(JSON_EXTRACT(payload, '$.task_id')), count(*)
                 FROM sv_core.event_inbox WHERE topic = 'task.completed' GROUP BY 1",
            ),
        };
        text.lines()
            .map(|l| {
                let (id, n) = l.split_once('|').unwrap();
                (id.parse().unwrap(), n.parse().unwrap())
            })
            .collect()
    }

    /// Events that made more than one activity feed entry.
    fn events_fed_twice(&self) -> String {
        let sql = "SELECT count(*) FROM (SELECT source_event FROM activity_feed
                   GROUP BY source_event HAVING count(*) > 1) twice";
        match self {
            Shared::Postgres(cluster) => {
                common::psql_text(&cluster.admin_url().replace("/postgres", "/sv_core"), sql)
            }
            Shared::Mysql(server) => {
                mysql_text(&server.admin_url().replace("/mysql", "/sv_core"), sql)
            }
        }
    }
}

/// Runs `sql` on the MySQL server at `url`; its rows, values joined by `|`, one a line.
fn mysql_text(url: &str, sql: &str) -> String {
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(url).unwrap()).unwrap();
    let rows: Vec<mysql::Row> = conn.query(sql).unwrap();
    rows.into_iter()
        .map(|row| {
            row.unwrap()
                .into_iter()
                .map(|value| match value {
                    mysql::Value::Bytes(bytes) => String::from_utf8(bytes).unwrap(),
                    mysql::Value::NULL => String::new(),
                    other => other.as_sql(true),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn two_kernels_share_one_server_and_survive_kill_9_of_either() {
    // One server after the other: two 50-client loads at once would be too much for the
    // test machines.
    let postgres = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    two_kernels_share(Shared::Postgres(Cluster::start(&postgres).unwrap()));
    let mariadb = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb");
    two_kernels_share(Shared::Mysql(
        sovereign_mysql::Server::start(&mariadb).unwrap(),
    ));
}

fn two_kernels_share(shared: Shared) {
    eprintln!("two kernels on one {} server", shared.name());
    let w = Workdir::new();
    shared.configure(&w);
    let packages = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins");
    common::copy_package(&packages.join("tasks"), &w.path().join("plugins/tasks"));

    // Two kernels from one directory and configuration (each with its own lock and
    // host socket under data/kernels/).
    let first = w.start(&["dev"]);
    let password = first.printed_password();
    first.wait_host_running();
    let second = w.start(&["serve"]);
    second.wait_host_running();
    let mut names = Vec::new();
    for server in [&first, &second] {
        eventually("both kernels and one leader in /health", || {
            let sync = sync_health(server);
            let kernels = sync["kernels"].as_array().map_or(0, Vec::len);
            if kernels == 2 && sync["leader"].is_string() {
                Ok(())
            } else {
                Err(sync.to_string())
            }
        });
        names.push(sync_health(server)["kernel"].as_str().unwrap().to_owned());
    }
    assert_ne!(names[0], names[1]);
    let leader = sync_health(&first)["leader"].as_str().unwrap().to_owned();
    assert_eq!(sync_health(&second)["leader"], leader.as_str());
    let doctor = w.sv_ok(&["doctor"]);
    assert!(
        doctor.contains(&format!("sync leader: {leader}")),
        "{doctor}"
    );
    assert!(doctor.contains("2 kernels running here"), "{doctor}");

    // A session made on one kernel works on the other.
    let token = first.login("admin@sovereign.local", &password);
    let me = second.get("/api/auth/me", Some(&token));
    assert_eq!(me.status, 200, "{}", me.text);

    // A plugin installed while both run reaches both hosts.
    common::copy_package(&packages.join("notes"), &w.path().join("plugins/notes"));
    w.sv_ok(&["plugins", "install", "plugins/notes", "--yes"]);
    for server in [&first, &second] {
        eventually("notes served by both kernels", || {
            let notes = server.get("/api/plugins/notes/notes", Some(&token));
            if notes.status == 200 {
                Ok(())
            } else {
                Err(notes.text)
            }
        });
    }

    // A kernel on "another machine": its own directory, the same URLs, no packages. It
    // runs both plugins from the packages the core stores.
    let elsewhere = Workdir::new();
    std::fs::copy(
        w.path().join("sovereign.toml"),
        elsewhere.path().join("sovereign.toml"),
    )
    .unwrap();
    let third = elsewhere.start(&["serve"]);
    third.wait_host_running();
    for path in ["/api/plugins/notes/notes", "/api/plugins/tasks/tasks"] {
        eventually("the third kernel serves both plugins", || {
            let reply = third.get(path, Some(&token));
            if reply.status == 200 {
                Ok(())
            } else {
                Err(reply.text)
            }
        });
    }
    assert!(elsewhere.path().join("plugins/tasks/plugin.wasm").exists());
    assert!(
        elsewhere
            .path()
            .join("plugins/notes/migrations")
            .join(shared.migrations_dir())
            .is_dir()
    );
    third.stop();

    // 50 clients, each sending its requests to the two kernels in turn.
    let (leading, other) = if leader == names[0] {
        (first, second)
    } else {
        (second, first)
    };
    let bases = [leading.base.clone(), other.base.clone()];
    let tally = Arc::new(Mutex::new(Tally::default()));
    let end = Instant::now() + LOAD;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (bases, tally, token) = (bases.clone(), tally.clone(), token.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut turn = client;
                let mut count = 0;
                while Instant::now() < end {
                    let base = &bases[turn % 2];
                    turn += 1;
                    count += 1;
                    let created = agent
                        .post(format!("{base}/api/plugins/tasks/tasks"))
                        .header("Authorization", format!("Bearer {token}"))
                        .send_json(serde_json::json!({
                            "title": format!("client {client} task {count}"),
                            "assignee": 1
                        }));
                    let id = match created {
                        Ok(mut r) if r.status() == 201 => {
                            let body: Value = r.body_mut().read_json().unwrap();
                            body["id"].as_i64().unwrap()
                        }
                        failed => {
                            *tally
                                .lock()
                                .unwrap()
                                .errors
                                .entry(failure(base, &failed))
                                .or_default() += 1;
                            continue;
                        }
                    };
                    {
                        let mut tally = tally.lock().unwrap();
                        tally.created.insert(id);
                        *tally.served.entry(base.clone()).or_default() += 1;
                    }
                    if count % 5 != 0 {
                        continue;
                    }
                    let base = &bases[turn % 2];
                    turn += 1;
                    let done = agent
                        .post(format!("{base}/api/plugins/tasks/tasks/{id}/complete"))
                        .header("Authorization", format!("Bearer {token}"))
                        .send_empty();
                    let mut tally = tally.lock().unwrap();
                    match done {
                        Ok(r) if r.status() == 200 => {
                            tally.completed.insert(id);
                            *tally.served.entry(base.clone()).or_default() += 1;
                        }
                        failed => *tally.errors.entry(failure(base, &failed)).or_default() += 1,
                    }
                }
            })
        })
        .collect();
    // A third of the way in: kill -9 the leading kernel. Two thirds: its survivor's host.
    std::thread::sleep(LOAD / 3);
    let mut leading = leading;
    let leading_host = leading.host_state()["pid"].as_i64().unwrap();
    leading.child.kill().unwrap();
    leading.child.wait().unwrap();
    std::thread::sleep(LOAD / 3);
    let host = other.host_state()["pid"].as_i64().unwrap();
    // SAFETY: kill(2) on the host's pid as reported by /health.
    unsafe { libc::kill(host as i32, libc::SIGKILL) };
    for client in clients {
        client.join().unwrap();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!(
        "requests served per kernel: {:?}; errors per kernel: {:?}; tasks acknowledged: {}, \
         completions acknowledged: {}",
        tally.served,
        tally.errors,
        tally.created.len(),
        tally.completed.len()
    );
    // Only the killed kernel may refuse connections; the survivor answers every request
    // (503 while its host restarts).
    assert!(
        tally
            .errors
            .keys()
            .filter(|k| k.starts_with(&format!("{} ", bases[1])))
            .all(|k| k.ends_with(" 503")),
        "{:?}",
        tally.errors
    );
    assert!(tally.served.get(&bases[0]).copied().unwrap_or(0) > 0);
    assert!(tally.served.get(&bases[1]).copied().unwrap_or(0) > 0);

    // The killed kernel's host does not outlive it.
    eventually("the killed kernel's host exits", || {
        // SAFETY: signal 0 only asks whether the pid exists.
        match unsafe { libc::kill(leading_host as i32, 0) } {
            0 => Err(format!("host {leading_host} still runs")),
            _ => Ok(()),
        }
    });
    // The survivor leads now, alone.
    eventually("the survivor takes over the sync", || {
        let sync = sync_health(&other);
        if sync["leader"] == sync["kernel"] && sync["kernels"].as_array().map_or(0, Vec::len) == 1 {
            Ok(())
        } else {
            Err(sync.to_string())
        }
    });
    other.wait_host_running();

    // Every acknowledged task is there.
    let stored = shared.task_ids();
    let missing: Vec<_> = tally.created.difference(&stored).collect();
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    // Every acknowledged completion's event reaches the core once, and is handled once.
    eventually("every acknowledged completion's event in the inbox", || {
        let events = shared.completion_events();
        if let Some((id, n)) = events.iter().find(|(_, n)| **n != 1) {
            panic!("task {id} has {n} events");
        }
        let absent: Vec<_> = tally
            .completed
            .iter()
            .filter(|id| !events.contains_key(id))
            .collect();
        if absent.is_empty() {
            Ok(())
        } else {
            Err(format!("{} completions without an event", absent.len()))
        }
    });
    assert_eq!(shared.events_fed_twice(), "0");
    // The new leader keeps the mirror current.
    let renamed = other.send(
        "PATCH",
        "/api/users/1",
        Some(&token),
        Some(serde_json::json!({ "display_name": "Renamed by the survivor" })),
    );
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    let some_task = *tally.created.iter().next().unwrap();
    eventually("the rename reaches the mirror", || {
        let task = other.get(
            &format!("/api/plugins/tasks/tasks/{some_task}"),
            Some(&token),
        );
        if task.body["assignee_name"] == "Renamed by the survivor" {
            Ok(())
        } else {
            Err(task.text)
        }
    });
    let reconciled = w.sv_ok(&["sync:reconcile"]);
    assert!(reconciled.contains("0 row(s) differ"), "{reconciled}");
    // A restore from another machine's directory refuses while a kernel serves the core.
    let backup = elsewhere.path().join("backup");
    elsewhere.sv_ok(&["backup", "--out", backup.to_str().unwrap()]);
    let refused = elsewhere.sv_err(&["restore", backup.to_str().unwrap()]);
    assert!(
        refused.contains(&format!("kernels are serving this {} core", shared.name())),
        "{refused}"
    );
    other.stop();
}
