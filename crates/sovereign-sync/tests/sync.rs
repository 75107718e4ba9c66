//! Sync against real SQLite files: randomized core writes leave the mirror exactly equal
//! to the projection, incrementally and after a full resync; reconcile finds and repairs
//! exactly the drifted rows.

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sovereign_db::rusqlite::Connection;
use sovereign_db_plugins::TrustedPluginStore;
use sovereign_db_plugins::mirror::{MirrorCatalog, MirrorSlice};
use sovereign_sync::reconcile::DifferenceKind;
use sovereign_sync::{Mirror, SyncError, capture, full, publish, reconcile};

struct Stores {
    _dir: tempfile::TempDir,
    core_path: PathBuf,
    core: Connection,
    mirror: Mirror,
    catalog: MirrorCatalog,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let core_path = dir.path().join("core.db");
    let core = sovereign_db_core::open(&core_path).unwrap();
    sovereign_db_core::migrations().deploy(&core).unwrap();
    let catalog = MirrorCatalog::default();
    capture::install(&core, &catalog).unwrap();
    let mirror =
        Mirror::Sqlite(TrustedPluginStore::open_shared(&dir.path().join("plugins.db")).unwrap());
    Stores {
        _dir: dir,
        core_path,
        core,
        mirror,
        catalog,
    }
}

type Projection = Vec<(i64, i64, String, Option<String>)>;

fn projection(core: &Connection) -> Projection {
    core.prepare(
        "SELECT id, tenant_id, display_name, avatar_url FROM users WHERE active = 1 ORDER BY id",
    )
    .unwrap()
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// The SQLite store under a test's mirror.
fn sqlite(mirror: &Mirror) -> &TrustedPluginStore {
    mirror.sqlite("a test").unwrap()
}

/// Reconciles the stores' core and mirror (with `repair`), without progress.
fn reconcile_now(s: &Stores, repair: bool) -> reconcile::ReconcileReport {
    reconcile::reconcile(
        &s.core_path,
        sqlite(&s.mirror),
        &s.catalog,
        repair,
        &|_, _| {},
    )
    .unwrap()
}

fn mirror_rows(mirror: &Mirror) -> Projection {
    sqlite(mirror)
        .connection()
        .prepare("SELECT id, tenant_id, display_name, avatar_url FROM core__users ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn random_write(core: &Connection, rng: &mut StdRng, next_id: &mut i64) {
    let ids: Vec<i64> = core
        .prepare("SELECT id FROM users")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let pick = |rng: &mut StdRng| ids[rng.random_range(0..ids.len())];
    match rng.random_range(0..10) {
        0..=3 => {
            *next_id += 1;
            core.execute(
                "INSERT INTO users (id, email, display_name, active, avatar_url) VALUES (?1, ?2, ?3, ?4, ?5)",
                sovereign_db::rusqlite::params![
                    *next_id,
                    format!("u{next_id}@example.com"),
                    format!("User {next_id}"),
                    rng.random_bool(0.7),
                    rng.random_bool(0.5).then(|| format!("https://img/{next_id}.png"))
                ],
            )
            .unwrap();
        }
        4 | 5 if !ids.is_empty() => {
            core.execute(
                "UPDATE users SET display_name = ?2 WHERE id = ?1",
                sovereign_db::rusqlite::params![
                    pick(rng),
                    format!("Renamed {}", rng.random::<u32>())
                ],
            )
            .unwrap();
        }
        6 if !ids.is_empty() => {
            // The filter column: rows enter and leave the slice.
            core.execute(
                "UPDATE users SET active = 1 - active WHERE id = ?1",
                [pick(rng)],
            )
            .unwrap();
        }
        7 if !ids.is_empty() => {
            core.execute("DELETE FROM users WHERE id = ?1", [pick(rng)])
                .unwrap();
        }
        8 if !ids.is_empty() => {
            // The key itself changes.
            *next_id += 1;
            core.execute(
                "UPDATE users SET id = ?2 WHERE id = ?1",
                [pick(rng), *next_id],
            )
            .unwrap();
        }
        _ if !ids.is_empty() => {
            // Several rows in one transaction, including one that does not touch the slice.
            core.execute_batch("BEGIN").unwrap();
            core.execute(
                "UPDATE users SET avatar_url = NULL WHERE id = ?1",
                [pick(rng)],
            )
            .unwrap();
            core.execute(
                "UPDATE users SET updated_at = 'x' WHERE id = ?1",
                [pick(rng)],
            )
            .unwrap();
            core.execute_batch("COMMIT").unwrap();
        }
        _ => {}
    }
}

#[test]
fn random_core_writes_leave_the_mirror_equal_to_the_projection() {
    for seed in [1u64, 2, 3, 42, 2026] {
        let s = stores();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut next_id = 0;
        full::full_resync(&s.core, &s.mirror, &s.catalog, &|_, _| {}).unwrap();
        for round in 0..40 {
            for _ in 0..rng.random_range(1..25) {
                random_write(&s.core, &mut rng, &mut next_id);
            }
            // Small batches exercise batch boundaries.
            publish::catch_up(&s.core, &s.mirror, &s.catalog, 7).unwrap();
            assert_eq!(
                mirror_rows(&s.mirror),
                projection(&s.core),
                "seed {seed}, round {round}"
            );
        }
        let report = reconcile_now(&s, false);
        assert!(
            report.differences.is_empty() && report.pending == 0,
            "seed {seed}: {report:?}"
        );
        let outbox: i64 = s
            .core
            .query_row("SELECT count(*) FROM _sv_change_outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(outbox, 0, "applied changes are pruned");

        // A full resync from scratch arrives at the same rows.
        sqlite(&s.mirror)
            .connection()
            .execute_batch("DELETE FROM core__users")
            .unwrap();
        for _ in 0..30 {
            random_write(&s.core, &mut rng, &mut next_id);
        }
        full::full_resync(&s.core, &s.mirror, &s.catalog, &|_, _| {}).unwrap();
        assert_eq!(
            mirror_rows(&s.mirror),
            projection(&s.core),
            "seed {seed} after full resync"
        );
        for _ in 0..30 {
            random_write(&s.core, &mut rng, &mut next_id);
        }
        publish::catch_up(&s.core, &s.mirror, &s.catalog, 1000).unwrap();
        assert_eq!(
            mirror_rows(&s.mirror),
            projection(&s.core),
            "seed {seed}: incremental after full"
        );
    }
}

#[test]
fn reapplying_a_batch_changes_nothing_and_pruning_waits_for_the_ack() {
    let s = stores();
    full::full_resync(&s.core, &s.mirror, &s.catalog, &|_, _| {}).unwrap();
    s.core
        .execute_batch(
            "INSERT INTO users (email, display_name) VALUES ('a@x.io', 'A'), ('b@x.io', 'B')",
        )
        .unwrap();
    let batch = publish::next_batch(&s.core, &s.catalog, 0, 100)
        .unwrap()
        .unwrap();
    assert_eq!(batch.changes.len(), 2);
    assert!(s.mirror.apply_batch(&s.catalog, &batch, 1).unwrap());
    let outbox: i64 = s
        .core
        .query_row("SELECT count(*) FROM _sv_change_outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(outbox, 2, "nothing is pruned before the acknowledgement");
    sqlite(&s.mirror)
        .connection()
        .execute_batch("UPDATE core__users SET display_name = 'local edit'")
        .unwrap();
    assert!(
        !s.mirror.apply_batch(&s.catalog, &batch, 2).unwrap(),
        "at or below the watermark: a no-op"
    );
    let names: Vec<String> = sqlite(&s.mirror)
        .connection()
        .prepare("SELECT display_name FROM core__users")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(names, ["local edit", "local edit"]);
    publish::acknowledge(&s.core, batch.upto_seq).unwrap();
    let outbox: i64 = s
        .core
        .query_row("SELECT count(*) FROM _sv_change_outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(outbox, 0);
}

#[test]
fn reconcile_reports_exactly_the_corrupted_rows_and_repairs_only_them() {
    let s = stores();
    for i in 0..2500 {
        s.core
            .execute(
                "INSERT INTO users (email, display_name) VALUES (?1, ?2)",
                [format!("u{i}@x.io"), format!("User {i}")],
            )
            .unwrap();
    }
    full::full_resync(&s.core, &s.mirror, &s.catalog, &|_, _| {}).unwrap();
    let m = sqlite(&s.mirror).connection();
    m.execute_batch(
        "UPDATE core__users SET display_name = 'tampered' WHERE id = 10;
         DELETE FROM core__users WHERE id = 1500;
         INSERT INTO core__users VALUES (99999, 1, 'ghost', NULL);
         UPDATE core__users SET avatar_url = 'https://evil' WHERE id = 2500;",
    )
    .unwrap();
    let before: Vec<(i64, String)> = m
        .prepare("SELECT id, display_name FROM core__users WHERE id IN (11, 1499, 1501)")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let report = reconcile_now(&s, false);
    let found: Vec<(i64, DifferenceKind)> =
        report.differences.iter().map(|d| (d.key, d.kind)).collect();
    assert_eq!(
        found,
        vec![
            (10, DifferenceKind::Different),
            (1500, DifferenceKind::Missing),
            (2500, DifferenceKind::Different),
            (99999, DifferenceKind::Extra),
        ]
    );
    assert!(
        report.chunks >= 3 && report.chunks_differing == 3,
        "{report:?}"
    );
    let repaired = reconcile_now(&s, true);
    assert_eq!(repaired.repaired, 4);
    let after = reconcile_now(&s, false);
    assert!(after.differences.is_empty(), "{after:?}");
    assert_eq!(mirror_rows(&s.mirror), projection(&s.core));
    let untouched: Vec<(i64, String)> = m
        .prepare("SELECT id, display_name FROM core__users WHERE id IN (11, 1499, 1501)")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(before, untouched);
}

#[test]
fn changes_not_yet_applied_are_pending_not_drift() {
    let s = stores();
    full::full_resync(&s.core, &s.mirror, &s.catalog, &|_, _| {}).unwrap();
    s.core
        .execute(
            "INSERT INTO users (email, display_name) VALUES ('p@x.io', 'P')",
            [],
        )
        .unwrap();
    let report = reconcile_now(&s, false);
    assert!(report.differences.is_empty());
    assert_eq!(report.pending, 1);
}

#[test]
fn secret_columns_are_refused_unless_allowed_and_changed_projections_need_the_operator() {
    let s = stores();
    let slice = |columns: &[&str], allow: &[&str]| MirrorSlice {
        name: "people".into(),
        source_table: "users".into(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        filter: None,
        allow_secret: allow.iter().map(|c| c.to_string()).collect(),
    };
    let err = capture::validate(
        &s.core,
        &MirrorCatalog::new(vec![slice(&["id", "email"], &[])]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("users.email is secret"), "{err}");
    capture::validate(
        &s.core,
        &MirrorCatalog::new(vec![slice(&["id", "email"], &["email"])]),
    )
    .unwrap();
    let creds = MirrorSlice {
        name: "creds".into(),
        source_table: "credentials".into(),
        columns: vec!["user_id".into()],
        filter: None,
        allow_secret: vec![],
    };
    assert!(capture::validate(&s.core, &MirrorCatalog::new(vec![creds])).is_err());
    for bad in [slice(&["display_name"], &[]), slice(&["id", "nope"], &[])] {
        assert!(capture::validate(&s.core, &MirrorCatalog::new(vec![bad])).is_err());
    }

    full::full_resync(&s.core, &s.mirror, &s.catalog, &|_, _| {}).unwrap();
    let mut changed = MirrorCatalog::default().slices().to_vec();
    changed[0].columns.pop();
    changed[0].filter = None;
    let changed = MirrorCatalog::new(changed);
    let err = publish::needs_rebuild(&s.core, &s.mirror, &changed).unwrap_err();
    assert!(matches!(err, SyncError::ProjectionChanged(_)), "{err}");
    let plan = full::plan(&s.mirror, &changed).unwrap();
    assert!(
        plan[0].contains("remove columns [\"avatar_url\"]") && plan[0].contains("filter"),
        "{plan:?}"
    );
    capture::install(&s.core, &changed).unwrap();
    full::full_resync(&s.core, &s.mirror, &changed, &|_, _| {}).unwrap();
    assert!(
        publish::needs_rebuild(&s.core, &s.mirror, &changed)
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_mirror_restored_behind_the_pruned_outbox_is_rebuilt() {
    let s = stores();
    full::full_resync(&s.core, &s.mirror, &s.catalog, &|_, _| {}).unwrap();
    assert!(
        publish::needs_rebuild(&s.core, &s.mirror, &s.catalog)
            .unwrap()
            .is_none()
    );
    s.core
        .execute(
            "INSERT INTO users (email, display_name) VALUES ('a@x.io', 'A')",
            [],
        )
        .unwrap();
    publish::catch_up(&s.core, &s.mirror, &s.catalog, 100).unwrap();
    // Simulate restoring an older plugin store: its watermark is behind what was pruned.
    sqlite(&s.mirror)
        .connection()
        .execute_batch("UPDATE _sv_mirror_state SET value = 0 WHERE key = 'watermark'; DELETE FROM core__users;")
        .unwrap();
    let reason = publish::needs_rebuild(&s.core, &s.mirror, &s.catalog).unwrap();
    assert!(
        matches!(
            reason,
            Some(publish::RebuildReason::BehindPrunedOutbox { .. })
        ),
        "{reason:?}"
    );
}
