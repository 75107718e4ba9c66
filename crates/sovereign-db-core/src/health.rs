//! What the kernel's `/health` and `/metrics` read of the core store.

use crate::{CoreAccess, CoreError, CoreHandle};

/// Checks that the core store answers and is the core store.
pub fn ping(conn: &dyn CoreAccess) -> Result<(), CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            conn.query_row("SELECT count(*) FROM _sv_store", [], |r| r.get::<_, i64>(0))?;
        }
        CoreHandle::Postgres(pg) => {
            pg.query_opt("SELECT count(*) FROM _sv_store", &[])?;
        }
        CoreHandle::Mysql(my) => {
            my.query_opt::<i64>("SELECT count(*) FROM _sv_store", ())?;
        }
    }
    Ok(())
}

/// Work waiting in the core store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Captured changes not yet pruned after the mirror applied them.
    pub outbox_rows: i64,
    /// When the oldest of them was captured (unix milliseconds).
    pub oldest_change_ms: Option<i64>,
    /// Inbox events not yet handled.
    pub unhandled_events: i64,
}

/// The change outbox's and the event inbox's backlog.
pub fn backlog(conn: &dyn CoreAccess) -> Result<Backlog, CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            let (outbox_rows, oldest_change_ms) = conn.query_row(
                "SELECT count(*), min(at_ms) FROM _sv_change_outbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let unhandled_events = conn.query_row(
                "SELECT count(*) FROM event_inbox WHERE handled_at IS NULL",
                [],
                |r| r.get(0),
            )?;
            Ok(Backlog {
                outbox_rows,
                oldest_change_ms,
                unhandled_events,
            })
        }
        CoreHandle::Postgres(pg) => {
            let outbox = pg
                .query_opt("SELECT count(*), min(at_ms) FROM _sv_change_outbox", &[])?
                .expect("an aggregate returns a row");
            let inbox = pg
                .query_opt(
                    "SELECT count(*) FROM event_inbox WHERE handled_at IS NULL",
                    &[],
                )?
                .expect("an aggregate returns a row");
            Ok(Backlog {
                outbox_rows: outbox.get(0),
                oldest_change_ms: outbox.get(1),
                unhandled_events: inbox.get(0),
            })
        }
        CoreHandle::Mysql(my) => {
            let (outbox_rows, oldest_change_ms) = my
                .query_opt("SELECT count(*), min(at_ms) FROM _sv_change_outbox", ())?
                .expect("an aggregate returns a row");
            let unhandled_events = my
                .query_opt(
                    "SELECT count(*) FROM event_inbox WHERE handled_at IS NULL",
                    (),
                )?
                .expect("an aggregate returns a row");
            Ok(Backlog {
                outbox_rows,
                oldest_change_ms,
                unhandled_events,
            })
        }
    }
}

/// The advisory lock (two-key form, on the core database) whose holder publishes the
/// mirror when several kernels share a PostgreSQL core: one leader at a time, and the
/// server frees it the moment the leader's session ends.
pub const SYNC_LEADER_LOCK: (i32, i32) = (0x5356, 1);

/// The advisory lock every running kernel holds shared on a PostgreSQL core, so that an
/// operation that must not run beside kernels (a restore) can tell any of them runs.
pub const KERNEL_RUNNING_LOCK: (i32, i32) = (0x5356, 2);

/// The `application_name` prefix of each kernel's sync session on a PostgreSQL core;
/// the rest is the kernel's name.
pub const KERNEL_SESSION_PREFIX: &str = "sv-kernel ";

/// The kernels serving a PostgreSQL core (as their sync sessions show them) or a MySQL
/// core (as they registered).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kernels {
    /// Every kernel connected, by name (`host/pid address`), sorted.
    pub running: Vec<String>,
    /// The one publishing the mirror now (`None` while leadership changes hands).
    pub sync_leader: Option<String>,
}

/// Who serves a PostgreSQL or MySQL core and who leads its sync; `None` on a SQLite core
/// (one platform per data directory, which leads its own sync).
pub fn kernels(conn: &dyn CoreAccess) -> Result<Option<Kernels>, CoreError> {
    let pg = match conn.core_handle() {
        CoreHandle::Postgres(pg) => pg,
        CoreHandle::Mysql(my) => return crate::mysql_kernels::kernels(my).map(Some),
        CoreHandle::Sqlite(_) => return Ok(None),
    };
    let rows = pg.query(
        "SELECT substr(a.application_name, length($1) + 1),
                EXISTS (SELECT FROM pg_locks l
                        WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
                          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                          AND l.classid = $2::int4::oid AND l.objid = $3::int4::oid
                          AND l.objsubid = 2 AND l.mode = 'ExclusiveLock')
         FROM pg_stat_activity a
         WHERE a.datname = current_database() AND starts_with(a.application_name, $1)
         ORDER BY 1",
        &[
            &KERNEL_SESSION_PREFIX,
            &SYNC_LEADER_LOCK.0,
            &SYNC_LEADER_LOCK.1,
        ],
    )?;
    let mut kernels = Kernels {
        running: Vec::new(),
        sync_leader: None,
    };
    for row in rows {
        let name: String = row.get(0);
        if row.get::<_, bool>(1) {
            kernels.sync_leader = Some(name.clone());
        }
        kernels.running.push(name);
    }
    kernels.running.dedup();
    Ok(Some(kernels))
}

/// Takes the kernels' "running" lock exclusively on this connection (held until it
/// closes), if no kernel holds it: `false` when a kernel serves the PostgreSQL core. On a
/// MySQL core the kernels' gate, if no kernel is registered (see
/// [`crate::mysql_kernels`]). Always `true` on a SQLite core (its data directory's lock
/// file does this job).
pub fn exclude_kernels(conn: &dyn CoreAccess) -> Result<bool, CoreError> {
    let pg = match conn.core_handle() {
        CoreHandle::Postgres(pg) => pg,
        CoreHandle::Mysql(my) => return crate::mysql_kernels::exclude(my),
        CoreHandle::Sqlite(_) => return Ok(true),
    };
    Ok(pg
        .query_opt(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&KERNEL_RUNNING_LOCK.0, &KERNEL_RUNNING_LOCK.1],
        )?
        .expect("a function call returns a row")
        .get(0))
}
