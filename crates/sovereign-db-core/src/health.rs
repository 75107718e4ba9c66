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
    }
}
