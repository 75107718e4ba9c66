//! Sync figures with the core on MySQL/MariaDB (issue 15), against a baseline in the same
//! run: incremental lag p50/p99 (core commit -> watermark visible in the mirror) while
//! 2,000 core writes per second run for 30 s with the near-real-time worker: the core on
//! SQLite into a SQLite `plugins.db` (the baseline), the core on a throwaway MariaDB from
//! `scripts/mariadb` (capture triggers) into a SQLite `plugins.db`, and both stores on
//! that MariaDB (the mirror in the plugin database). Goal: p99 < 100 ms.
//!
//! Run: `cargo bench -p sovereign-sync --bench mysql`. `SV_BENCH_ROWS` (users, default
//! 100,000) and `SV_BENCH_SECONDS` shrink it for a quick look.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{
    LagRun, backlog_after, env_num, load_users, measure_lag, spawn_worker, sqlite_writer,
};
use mysql::prelude::Queryable;
use sovereign_db::StoreTarget;
use sovereign_db_core::{CoreConn, CoreLocation, MyCore};
use sovereign_db_plugins::TrustedPluginStore;
use sovereign_mysql::mirror::MyMirror;
use sovereign_sync::{Mirror, SyncSettings, capture};

/// Where a lag run's mirror is.
enum LagMirror<'a> {
    /// A SQLite plugin store file.
    File(&'a Path),
    /// The plugin database on MariaDB, as `svc_plugins` (this URL).
    Mysql(&'a str),
}

impl LagMirror<'_> {
    fn open(&self) -> Mirror {
        match self {
            LagMirror::File(path) => Mirror::Sqlite(TrustedPluginStore::open_shared(path).unwrap()),
            LagMirror::Mysql(url) => {
                Mirror::Mysql(std::cell::RefCell::new(MyMirror::connect(url).unwrap()))
            }
        }
    }
}

/// The lag of `write`'s commits into `mirror` fed from `core`.
fn lag(
    core: CoreLocation,
    mirror: LagMirror<'_>,
    write: &mut common::Writer,
    rows: u64,
    seconds: u64,
) -> LagRun {
    let opener: sovereign_sync::worker::OpenMirror = match &mirror {
        LagMirror::File(path) => {
            let p = path.to_path_buf();
            Arc::new(move || Ok(Mirror::Sqlite(TrustedPluginStore::open_shared(&p)?)))
        }
        LagMirror::Mysql(url) => {
            let url = url.to_string();
            Arc::new(move || {
                Ok(Mirror::Mysql(std::cell::RefCell::new(MyMirror::connect(
                    &url,
                )?)))
            })
        }
    };
    let (worker, waker) = spawn_worker(core.clone(), opener);
    let watch = mirror.open();
    let reader = core.open_existing().unwrap();
    let mut backlog = || pending_after(&reader, watch.watermark().unwrap());
    while watch.specs().unwrap().is_empty() || backlog() > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let poll = mirror.open();
    let run = measure_lag(
        write,
        rows,
        seconds,
        &waker,
        &mut backlog,
        Box::new(move || poll.watermark().unwrap_or(0)),
    );
    worker.stop();
    run
}

/// Outbox rows of the core after `watermark`.
fn pending_after(core: &CoreConn, watermark: i64) -> i64 {
    match core {
        CoreConn::Sqlite(conn) => backlog_after(conn, watermark),
        CoreConn::Mysql(my) => my
            .with_conn(|c| {
                c.exec_first(
                    "SELECT count(*) FROM _sv_change_outbox WHERE seq > ?",
                    (watermark,),
                )
            })
            .unwrap()
            .unwrap_or(0),
        CoreConn::Postgres(_) => unreachable!("no PostgreSQL core in this bench"),
    }
}

fn main() {
    let rows = env_num("SV_BENCH_ROWS", 100_000);
    let seconds = env_num("SV_BENCH_SECONDS", 30);
    let dir = tempfile::tempdir().unwrap();
    let catalog = SyncSettings::default().catalog;

    // The baseline: the core in core.db.
    let core_path = dir.path().join("core.db");
    let core = sovereign_db_core::open(&core_path).unwrap();
    sovereign_db_core::migrations().deploy(&core).unwrap();
    load_users(&core, rows);
    capture::install(&core, &catalog).unwrap();
    let baseline = lag(
        CoreLocation::File(core_path.clone()),
        LagMirror::File(&dir.path().join("sqlite-core-plugins.db")),
        &mut (Box::new(sqlite_writer(&core_path)) as common::Writer),
        rows,
        seconds,
    );

    // The core on MariaDB, the same rows.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb");
    let server = sovereign_mysql::Server::start(&script).unwrap();
    let core_url = server.url("svc_core", "bench-core-secret", "sv_core");
    let plugins_url = server.url("svc_plugins", "bench-plugins-secret", "sv_plugins");
    sovereign_mysql::RolePlan::new(Some(&core_url), &plugins_url)
        .unwrap()
        .apply(server.admin_url())
        .unwrap();
    let StoreTarget::Mysql(url) = StoreTarget::parse("DATABASE_URL", &core_url).unwrap() else {
        unreachable!("a MySQL URL");
    };
    let mut my_core = MyCore::connect_unchecked(&url).unwrap();
    sovereign_mysql::migrate::deploy(my_core.conn_mut(), &sovereign_db_core::mysql_migrations())
        .unwrap();
    let conn = my_core.conn_mut();
    for start in (1..=rows).step_by(1000) {
        let values: Vec<String> = (start..(start + 1000).min(rows + 1))
            .map(|i| {
                let avatar = if i % 3 == 0 {
                    format!("'https://avatars.example.com/{i}.png'")
                } else {
                    "NULL".into()
                };
                format!(
                    "({i}, 'user{i}@example.com', 'User number {i}', {avatar}, {})",
                    i32::from(i % 10 != 0)
                )
            })
            .collect();
        conn.query_drop(format!(
            "INSERT INTO users (id, email, display_name, avatar_url, active) VALUES {}",
            values.join(", ")
        ))
        .unwrap();
    }
    capture::install(&MyCore::connect(&url).unwrap(), &catalog).unwrap();
    let on_mysql = lag(
        CoreLocation::Mysql(url.clone()),
        LagMirror::File(&dir.path().join("mysql-core-plugins.db")),
        &mut mysql_writer(&url),
        rows,
        seconds,
    );
    let both_on_mysql = lag(
        CoreLocation::Mysql(url.clone()),
        LagMirror::Mysql(&plugins_url),
        &mut mysql_writer(&url),
        rows,
        seconds,
    );
    let ratio =
        |run: &LagRun| run.pct(0.99).as_secs_f64() / baseline.pct(0.99).as_secs_f64().max(1e-9);
    println!(
        "incremental lag under 2,000 core writes/s for {seconds} s (goal: p99 < 100 ms):\n  \
         core on SQLite, mirror in SQLite (baseline): {:.0} writes/s, {}\n  \
         core on MariaDB, mirror in SQLite:          {:.0} writes/s, {} (p99 {:.2}x)\n  \
         both on MariaDB:                            {:.0} writes/s, {} (p99 {:.2}x)",
        baseline.achieved,
        baseline.summary(),
        on_mysql.achieved,
        on_mysql.summary(),
        ratio(&on_mysql),
        both_on_mysql.achieved,
        both_on_mysql.summary(),
        ratio(&both_on_mysql),
    );
}

/// A writer on the MySQL core: one transaction per write, the update, then the newest
/// outbox row (its own: the capture lock keeps every other writer out until it commits).
fn mysql_writer(url: &sovereign_db::MysqlUrl) -> common::Writer {
    let mut writer = sovereign_mysql::connect_trusted(url.expose()).unwrap();
    Box::new(move |id, name| {
        let mut tx = writer.start_transaction(mysql::TxOpts::default()).unwrap();
        tx.exec_drop("UPDATE users SET display_name = ? WHERE id = ?", (name, id))
            .unwrap();
        let seq: i64 = tx
            .query_first("SELECT max(seq) FROM _sv_change_outbox")
            .unwrap()
            .unwrap();
        tx.commit().unwrap();
        seq
    })
}
