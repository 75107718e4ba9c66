//! The fence's cost: a fenced plugin connection against a raw rusqlite connection on the
//! same file, for a point select by primary key and a single-row insert (each in its own
//! autocommit transaction). Rounds alternate between the two so that machine noise hits
//! both alike; the figure is the ratio of the medians.
//!
//! Run: `cargo bench -p sovereign-db-plugins --bench fence` (goal: ratio <= 1.15).

use std::time::{Duration, Instant};

use sovereign_db::OpenOptions;
use sovereign_db::rusqlite::Connection;
use sovereign_db_plugins::{
    DatabaseMode, Limits, PluginDb, PluginDbConfig, SqlValue, StoreLocation,
};

const ROWS: i64 = 10_000;
const ROUNDS: usize = 9;
const SELECTS_PER_ROUND: i64 = 20_000;
const INSERTS_PER_ROUND: i64 = 2_000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let location = StoreLocation {
        shared_store: dir.path().join("plugins.db"),
        isolated_dir: dir.path().join("plugins"),
        mirror_file: None,
    };
    let fenced = PluginDb::open(
        &location,
        PluginDbConfig {
            plugin_id: "bench".into(),
            mode: DatabaseMode::Shared,
            grants: vec![],
            limits: Limits {
                storage_mb: 1024,
                ..Limits::default()
            },
        },
    )
    .unwrap();
    fenced
        .execute("CREATE TABLE bench__items (id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL)", &[])
        .unwrap();
    fenced.begin().unwrap();
    for i in 1..=ROWS {
        fenced
            .execute(
                "INSERT INTO bench__items (id, title, done) VALUES (?1, ?2, 0)",
                &[SqlValue::Integer(i), SqlValue::Text(format!("item {i}"))],
            )
            .unwrap();
    }
    fenced.commit().unwrap();
    let raw: Connection =
        sovereign_db::open_database(&location.shared_store, &OpenOptions::plugins()).unwrap();

    let select = "SELECT id, title, done FROM bench__items WHERE id = ?1";
    let insert = "INSERT INTO bench__items (title, done) VALUES (?1, 0)";
    let (mut raw_select, mut fenced_select, mut raw_insert, mut fenced_insert) =
        (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let start = Instant::now();
        for i in 0..SELECTS_PER_ROUND {
            let id = 1 + (i * 7919) % ROWS;
            let row: (i64, String, i64) = raw
                .prepare_cached(select)
                .unwrap()
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap();
            std::hint::black_box(row);
        }
        raw_select.push(start.elapsed());

        let start = Instant::now();
        for i in 0..SELECTS_PER_ROUND {
            let id = 1 + (i * 7919) % ROWS;
            std::hint::black_box(fenced.execute(select, &[SqlValue::Integer(id)]).unwrap());
        }
        fenced_select.push(start.elapsed());

        let start = Instant::now();
        for i in 0..INSERTS_PER_ROUND {
            raw.prepare_cached(insert)
                .unwrap()
                .execute([format!("raw {round} {i}")])
                .unwrap();
        }
        raw_insert.push(start.elapsed());

        let start = Instant::now();
        for i in 0..INSERTS_PER_ROUND {
            fenced
                .execute(insert, &[SqlValue::Text(format!("fenced {round} {i}"))])
                .unwrap();
        }
        fenced_insert.push(start.elapsed());
    }
    let report = |name: &str, raw: Vec<Duration>, fenced: Vec<Duration>, n: i64| {
        let (raw, fenced) = (median(raw), median(fenced));
        let per = |d: Duration| d.as_nanos() as f64 / n as f64 / 1000.0;
        println!(
            "{name:<28} raw {:>7.2} µs/op   fenced {:>7.2} µs/op   ratio {:.3}",
            per(raw),
            per(fenced),
            fenced.as_secs_f64() / raw.as_secs_f64()
        );
    };
    println!(
        "fence overhead, median of {ROUNDS} alternating rounds ({ROWS} rows, WAL, synchronous=NORMAL):"
    );
    report(
        "point select by primary key",
        raw_select,
        fenced_select,
        SELECTS_PER_ROUND,
    );
    report(
        "single-row insert",
        raw_insert,
        fenced_insert,
        INSERTS_PER_ROUND,
    );
}
