//! `sv migrate:to-postgres` against plain bulk loading (issue 12): a SQLite install with
//! `tasks` and [`ROWS`] rows in each of `users` (with credentials), `audit_log` and
//! `tasks__tasks` is moved into a throwaway cluster by the real command; then the same
//! rows, taken back out of PostgreSQL with `COPY ... TO`, are loaded again with nothing
//! but `COPY ... FROM` in one transaction (what `pg_restore` of a data dump does), timed
//! and rolled back. Reported per run: the move's copy phase (reading SQLite, `COPY`, the
//! checksums of both sides, sequences) and the whole command (migrations, roles, mirror
//! rebuild and reconcile too) in rows/s, and each as a ratio to the bulk load's rows/s.
//!
//! Run: `cargo bench -p sv --bench to_postgres` (a new cluster per run, three runs).

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use sovereign_db::rusqlite::Connection;
use sovereign_ops::table_copy::{foreign_key_order, postgres_tables};
use sovereign_postgres::Cluster;
use support::{Platform, sv_ok};

const ROWS: usize = 100_000;
const RUNS: usize = 3;

/// Fills the SQLite install with [`ROWS`] users (and credentials), audit entries and tasks.
fn generate(dir: &std::path::Path) {
    let core = Connection::open(dir.join("data/core.db")).unwrap();
    core.execute_batch(&format!(
        "BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
         INSERT INTO users (display_name, email, avatar_url)
         SELECT 'User ' || i, 'user' || i || '@example.com', 'https://a.example/' || i FROM n;
         INSERT INTO credentials (user_id, password_hash)
         SELECT id, (SELECT password_hash FROM credentials LIMIT 1) FROM users
         WHERE id NOT IN (SELECT user_id FROM credentials);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
         INSERT INTO audit_log (actor_user_id, action, target, detail)
         SELECT i, 'user.update', 'user:' || i, '{{\"field\": \"display_name\"}}' FROM n;
         COMMIT;"
    ))
    .unwrap();
    let plugins = Connection::open(dir.join("data/plugins.db")).unwrap();
    plugins
        .execute_batch(&format!(
            "BEGIN;
             INSERT INTO tasks__lists (name, owner) VALUES ('bench', 1);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
             INSERT INTO tasks__tasks (list_id, title, assignee, created_by, done)
             SELECT 1, 'task number ' || i, i % 1000 + 1, 1, i % 2 FROM n;
             COMMIT;"
        ))
        .unwrap();
}

/// One table's rows in `COPY`'s text format.
struct Dumped {
    table: String,
    data: Vec<u8>,
}

fn dump(client: &mut postgres::Client, schema: &str, skip: &[&str]) -> Vec<Dumped> {
    let tables: Vec<String> = postgres_tables(client, schema)
        .unwrap()
        .into_iter()
        .filter(|t| !skip.contains(&t.as_str()))
        .collect();
    foreign_key_order(client, schema, tables)
        .unwrap()
        .into_iter()
        .map(|table| {
            let mut data = Vec::new();
            client
                .copy_out(&format!("COPY \"{schema}\".\"{table}\" TO STDOUT"))
                .unwrap()
                .read_to_end(&mut data)
                .unwrap();
            Dumped {
                table: format!("\"{schema}\".\"{table}\""),
                data,
            }
        })
        .collect()
}

/// Loads `dumped` with `COPY ... FROM` into emptied tables in one transaction (as
/// `role`, if given) and rolls back; returns rows loaded and seconds spent loading.
fn bulk_load(client: &mut postgres::Client, role: Option<&str>, dumped: &[Dumped]) -> (u64, f64) {
    let mut tx = client.transaction().unwrap();
    if let Some(role) = role {
        tx.batch_execute(&format!("SET LOCAL ROLE {role}")).unwrap();
    }
    let all: Vec<&str> = dumped.iter().map(|d| d.table.as_str()).collect();
    tx.batch_execute(&format!("TRUNCATE {} CASCADE", all.join(", ")))
        .unwrap();
    let started = Instant::now();
    let mut rows = 0;
    for table in dumped {
        let mut writer = tx
            .copy_in(&format!("COPY {} FROM STDIN", table.table))
            .unwrap();
        writer.write_all(&table.data).unwrap();
        rows += writer.finish().unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    tx.rollback().unwrap();
    (rows, seconds)
}

/// `label: <number> ...` from the command's report.
fn number_after(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} in {text}"))
        + label.len();
    text[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches(|c: char| !c.is_ascii_digit() && c != '.')
        .parse()
        .unwrap()
}

fn main() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    println!(
        "sv migrate:to-postgres vs COPY bulk load, {ROWS} rows in each of users, credentials, audit_log, tasks__tasks"
    );
    for run in 1..=RUNS {
        let dir = Platform::prepare(&["tasks"], &[("bench@example.com", true)]);
        generate(dir.path());
        let cluster = Cluster::start(&script).unwrap();
        let core_url = cluster.url("svc_core", "core-secret", "sv_core");
        let plugins_url = cluster.url("svc_plugins", "plugins-secret", "sv_plugins");
        sv_ok(
            dir.path(),
            &[
                "--database-url",
                &core_url,
                "--plugin-database-url",
                &plugins_url,
                "postgres:roles",
                "--apply",
                "--admin-url",
                cluster.admin_url(),
            ],
        );
        let started = Instant::now();
        let out = sv_ok(
            dir.path(),
            &[
                "migrate:to-postgres",
                "--core-url",
                &core_url,
                "--plugins-url",
                &plugins_url,
            ],
        );
        let whole = started.elapsed().as_secs_f64();
        let moved = number_after(&out, "moved ");
        let copy_seconds = number_after(&out, &format!("moved {moved} rows in "));

        let mut core = postgres::Client::connect(&core_url, postgres::NoTls).unwrap();
        let core_tables = dump(
            &mut core,
            "public",
            &[
                "_sv_store",
                "_sv_migrations",
                "_sv_change_outbox",
                "_sv_sync_state",
                "plugin_packages",
                "plugin_package_files",
            ],
        );
        let mut plugins = postgres::Client::connect(&plugins_url, postgres::NoTls).unwrap();
        plugins.batch_execute("SET ROLE svp_tasks").unwrap();
        let task_tables = dump(&mut plugins, "tasks", &["_sv_migrations"]);
        plugins.batch_execute("RESET ROLE").unwrap();
        let outbox: Vec<Dumped> = dump(&mut plugins, "public", &[])
            .into_iter()
            .filter(|d| d.table.ends_with("\"_sv_event_outbox\""))
            .collect();
        let (core_rows, core_seconds) = bulk_load(&mut core, None, &core_tables);
        let (task_rows, task_seconds) = bulk_load(&mut plugins, Some("svp_tasks"), &task_tables);
        let (outbox_rows, outbox_seconds) = bulk_load(&mut plugins, None, &outbox);
        let copy_rows = (core_rows + task_rows + outbox_rows) as f64;
        let copy_rate = copy_rows / (core_seconds + task_seconds + outbox_seconds);
        let move_rate = moved / copy_seconds;
        let whole_rate = moved / whole;
        println!(
            "run {run}: moved {moved} rows; copy phase {copy_seconds:.2} s = {move_rate:.0} rows/s, \
             whole command {whole:.2} s = {whole_rate:.0} rows/s; COPY bulk load of the same \
             {copy_rows} rows {:.2} s = {copy_rate:.0} rows/s; ratio copy phase/COPY {:.2}x, \
             whole/COPY {:.2}x",
            core_seconds + task_seconds + outbox_seconds,
            move_rate / copy_rate,
            whole_rate / copy_rate
        );
    }
}
