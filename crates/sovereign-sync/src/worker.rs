//! The background sync job: near-real-time (changes pushed within the coalescing window
//! after they commit) or scheduled (every interval). A locked or unavailable mirror only
//! delays it, with backoff; core writes never wait on it, because capture only appends
//! to the outbox in `core.db`.
//!
//! The worker is the one writer of the mirror while the platform runs: it applies each
//! batch with its watermark on its own trusted connection to the mirror store. The
//! kernel wakes it after each of its commits ([`SyncWaker`]); commits by other processes
//! (an operator's `sv users create`) are found by a slow poll. A housekeeping thread
//! prunes the core outbox and checkpoints the mirror, so batches never wait for either.

use mysql::prelude::Queryable;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sovereign_db_core::{CoreConn, CoreLocation};

use crate::{Freshness, Mirror, SyncError, SyncSettings, full, publish};

/// How often the near-real-time worker looks for changes nobody woke it for (commits
/// by other processes).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often the housekeeping thread prunes applied changes from the core outbox and
/// checkpoints the mirror store.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(250);
/// How often the mirror is checked for needing a rebuild (and always after reopening it).
const REBUILD_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Longest wait after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Opens what the worker needs.
pub struct SyncTarget {
    /// The core store.
    pub core: CoreLocation,
    /// Opens the mirror's trusted handle (the plugin store, or the mirror file).
    pub open_mirror: OpenMirror,
    /// Told about every batch applied: how many changes, how long the apply took.
    pub observe: Option<Observe>,
    /// Wakes the worker when the core commits.
    pub waker: SyncWaker,
    /// The kernel's name (`host/pid address`): on a PostgreSQL core, its sync session
    /// shows it, so that `/health` and `sv doctor` can tell which kernel leads.
    pub kernel_name: String,
}

/// Opens a trusted handle on the mirror store.
pub type OpenMirror = Arc<dyn Fn() -> Result<Mirror, SyncError> + Send + Sync>;

/// Called after each applied batch with its number of changes and apply time.
pub type Observe = Box<dyn Fn(usize, Duration) + Send>;

/// Wakes the sync worker: call [`SyncWaker::wake`] after a commit to `core.db`.
#[derive(Clone, Default)]
pub struct SyncWaker(Arc<(Mutex<bool>, Condvar)>);

impl SyncWaker {
    /// Tells the worker there may be new changes.
    pub fn wake(&self) {
        let (woken, signal) = &*self.0;
        *woken.lock().unwrap_or_else(|e| e.into_inner()) = true;
        signal.notify_one();
    }

    /// Waits until woken or `timeout` passes; a wake that came before counts.
    fn wait(&self, timeout: Duration) {
        let (woken, signal) = &*self.0;
        let guard = woken.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) = signal
            .wait_timeout_while(guard, timeout, |woken| !*woken)
            .unwrap_or_else(|e| e.into_inner());
        *guard = false;
    }
}

/// A running sync worker; stops when dropped.
pub struct SyncWorker {
    stop: Arc<AtomicBool>,
    waker: SyncWaker,
    thread: Option<JoinHandle<()>>,
    housekeeping: Option<JoinHandle<()>>,
    listener: Option<JoinHandle<()>>,
}

impl SyncWorker {
    /// Starts the worker thread.
    pub fn spawn(settings: SyncSettings, target: SyncTarget) -> SyncWorker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let waker = target.waker.clone();
        let open = target.open_mirror.clone();
        let core = target.core.clone();
        // A PostgreSQL core announces commits of every process (`sv` commands, other
        // kernels) on a channel; SQLite's and MySQL's are found by the poll.
        let listener = match &core {
            CoreLocation::Postgres(url) => {
                let (url, waker, flag) = (url.clone(), waker.clone(), stop.clone());
                Some(
                    std::thread::Builder::new()
                        .name("sv-sync-listen".into())
                        .spawn(move || listen(&url, &waker, &flag))
                        .expect("spawning the sync listener thread"),
                )
            }
            CoreLocation::File(_) | CoreLocation::Mysql(_) => None,
        };
        let thread = std::thread::Builder::new()
            .name("sv-sync".into())
            .spawn(move || run(&settings, &target, &flag))
            .expect("spawning the sync thread");
        let flag = stop.clone();
        let housekeeping = std::thread::Builder::new()
            .name("sv-sync-housekeeping".into())
            .spawn(move || housekeeping(&core, &open, &flag))
            .expect("spawning the sync housekeeping thread");
        SyncWorker {
            stop,
            waker,
            thread: Some(thread),
            housekeeping: Some(housekeeping),
            listener,
        }
    }

    /// Stops the worker and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
        for t in [
            self.thread.take(),
            self.housekeeping.take(),
            self.listener.take(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = t.join();
        }
    }
}

impl Drop for SyncWorker {
    fn drop(&mut self) {
        self.halt();
    }
}

fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
}

/// Wakes the worker on every notification of [`crate::capture::CHANGES_CHANNEL`] from
/// the PostgreSQL core (the capture triggers notify at commit; the notification carries
/// nothing, the worker reads the outbox). Reconnects after a failure.
fn listen(url: &sovereign_db::PostgresUrl, waker: &SyncWaker, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let listened = (|| -> Result<(), postgres::Error> {
            let mut client = postgres::Client::connect(url.expose(), postgres::NoTls)?;
            client.batch_execute(&format!("LISTEN {}", crate::capture::CHANGES_CHANNEL))?;
            while !stop.load(Ordering::SeqCst) {
                let mut notifications = client.notifications();
                let mut arrived = notifications.timeout_iter(Duration::from_millis(250));
                while postgres::fallible_iterator::FallibleIterator::next(&mut arrived)?.is_some() {
                    waker.wake();
                }
            }
            Ok(())
        })();
        if let Err(e) = listened {
            tracing::debug!(error = %e, "listening for core commits failed; retrying");
            sleep_unless_stopped(stop, Duration::from_secs(1));
        }
    }
}

/// Off the worker's path, so that its batches never wait for either: prunes the core
/// outbox up to what the mirror has applied (a write to `core.db`, which competes with
/// the kernel's writers for its lock), and checkpoints the mirror store's WAL (PASSIVE:
/// it blocks neither the worker nor readers).
fn housekeeping(location: &CoreLocation, open: &OpenMirror, stop: &AtomicBool) {
    let mut core: Option<CoreConn> = None;
    let mut mirror: Option<Mirror> = None;
    let mut acked = -1i64;
    while !stop.load(Ordering::SeqCst) {
        sleep_unless_stopped(stop, HOUSEKEEPING_EVERY);
        let round = (|| -> Result<(), SyncError> {
            if core.is_none() {
                core = Some(location.open_existing()?);
            }
            if mirror.is_none() {
                mirror = Some(open()?);
            }
            let (core, mirror) = (
                core.as_ref().expect("opened above"),
                mirror.as_ref().expect("opened above"),
            );
            let applied = mirror.watermark()?;
            if applied > acked {
                publish::acknowledge(core, applied)?;
                acked = applied;
            }
            match mirror {
                Mirror::Sqlite(store) => store
                    .connection()
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    .map_err(SyncError::Sqlite),
                // The servers checkpoint by themselves.
                Mirror::Postgres(_) | Mirror::Mysql(_) => Ok(()),
            }
        })();
        if let Err(e) = round {
            tracing::debug!(error = %e, "sync housekeeping failed; reopening");
            (core, mirror) = (None, None);
        }
    }
}

/// The newest outbox sequence number ever issued (the outbox itself is pruned); on
/// PostgreSQL the sequence's last value, which may run ahead of what is committed: a
/// wake-up hint only, the batches read committed rows.
fn newest_seq(core: &CoreConn) -> Result<i64, SyncError> {
    Ok(match core {
        CoreConn::Sqlite(conn) => conn
            .prepare_cached(
                "SELECT coalesce((SELECT seq FROM sqlite_sequence
                                  WHERE name = '_sv_change_outbox'), 0)",
            )?
            .query_row([], |r| r.get(0))?,
        CoreConn::Postgres(pg) => {
            let newest = pg.prepared(
                "SELECT coalesce(pg_sequence_last_value(
                     pg_get_serial_sequence('_sv_change_outbox', 'seq')::regclass), 0)",
            )?;
            pg.with_client(|client| client.query_one(&newest, &[]))?
                .get(0)
        }
        // The newest row still in the outbox (pruned up to the watermark): a change in
        // the meantime makes it differ from what was seen.
        CoreConn::Mysql(my) => my
            .with_conn(|conn| {
                conn.query_first("SELECT coalesce(max(seq), 0) FROM _sv_change_outbox")
            })?
            .unwrap_or(0),
    })
}

/// Names the worker's session after its kernel and marks the kernel as running (a
/// shared lock held as long as the session lives).
fn announce(core: &CoreConn, kernel_name: &str) -> Result<(), SyncError> {
    let CoreConn::Postgres(pg) = core else {
        return Ok(());
    };
    let (class, id) = sovereign_db_core::health::KERNEL_RUNNING_LOCK;
    let name = format!(
        "{}{kernel_name}",
        sovereign_db_core::health::KERNEL_SESSION_PREFIX
    );
    pg.with_client(|client| {
        client.batch_execute(&format!(
            "SET application_name = '{}'",
            name.replace('\'', "''")
        ))?;
        client.execute("SELECT pg_advisory_lock_shared($1, $2)", &[&class, &id])
    })?;
    Ok(())
}

/// Takes the sync leadership if nobody holds it: on a SQLite core the worker always
/// leads (one platform per data directory); on a PostgreSQL core the session-level
/// leader lock, on a MySQL core the named one (recorded as `kernel_name`'s), held until
/// this session ends.
fn take_leadership(core: &CoreConn, kernel_name: &str) -> Result<bool, SyncError> {
    let pg = match core {
        CoreConn::Postgres(pg) => pg,
        CoreConn::Mysql(my) => {
            return Ok(sovereign_db_core::mysql_kernels::take_sync_leadership(
                my,
                kernel_name,
            )?);
        }
        CoreConn::Sqlite(_) => return Ok(true),
    };
    let (class, id) = sovereign_db_core::health::SYNC_LEADER_LOCK;
    Ok(pg
        .with_client(|client| {
            client.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &id])
        })?
        .get(0))
}

fn run(settings: &SyncSettings, target: &SyncTarget, stop: &AtomicBool) {
    // Whether this worker publishes the mirror: always on a SQLite core, once it runs; on
    // a PostgreSQL or MySQL core while it holds the leader lock (kernels sharing it take
    // turns).
    let mut leading = false;
    let mut backoff = Duration::from_millis(100);
    let mut core: Option<CoreConn> = None;
    let mut mirror: Option<Mirror> = None;
    let mut seen_seq = -1i64;
    // The mirror's watermark as this worker left it (`None`: read it next time).
    let mut applied: Option<i64> = None;
    let mut last_rebuild_check: Option<Instant> = None;
    let mut next_scheduled = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let due = match settings.freshness {
            Freshness::NearRealTime => true,
            Freshness::Scheduled => Instant::now() >= next_scheduled,
        };
        if !due {
            sleep_unless_stopped(stop, Duration::from_millis(200));
            continue;
        }
        let step = (|| -> Result<bool, SyncError> {
            if core.is_none() {
                let opened = target.core.open_existing()?;
                announce(&opened, &target.kernel_name)?;
                core = Some(opened);
            }
            let core = core.as_ref().expect("opened above");
            if !leading {
                if !take_leadership(core, &target.kernel_name)? {
                    // Another kernel publishes; ask again at the next wake or poll.
                    return Ok(false);
                }
                tracing::info!(kernel = %target.kernel_name, "this kernel leads the sync now");
                leading = true;
                // Whatever the previous leader left half-done is looked at afresh.
                last_rebuild_check = None;
                seen_seq = -1;
                applied = None;
            }
            if settings.freshness == Freshness::NearRealTime {
                let newest = newest_seq(core)?;
                if newest == seen_seq && mirror.is_some() {
                    return Ok(false);
                }
                // Coalesce: let a burst of commits land in one batch.
                std::thread::sleep(settings.coalesce);
            }
            if mirror.is_none() {
                let opened = (target.open_mirror)()?;
                if let Mirror::Sqlite(store) = &opened {
                    let conn = store.connection();
                    conn.busy_timeout(Duration::from_millis(200))
                        .map_err(SyncError::Sqlite)?;
                    // The housekeeping thread checkpoints; this connection's commits
                    // never do.
                    conn.pragma_update(None, "wal_autocheckpoint", 0)
                        .map_err(SyncError::Sqlite)?;
                }
                mirror = Some(opened);
            }
            let mirror = mirror.as_ref().expect("opened above");
            if last_rebuild_check.is_none_or(|t| t.elapsed() >= REBUILD_CHECK_EVERY) {
                if let Some(reason) = publish::needs_rebuild(core, mirror, &settings.catalog)? {
                    tracing::info!(?reason, "building the mirror from the core");
                    full::full_resync(core, mirror, &settings.catalog, &|_, _| {})?;
                }
                // Another writer (an operator's rebuild or repair) may have moved it.
                applied = None;
                last_rebuild_check = Some(Instant::now());
            }
            let catalog = &settings.catalog;
            let report = publish::catch_up_from(
                core,
                mirror,
                catalog,
                settings.batch_size,
                applied,
                &|batch| {
                    let started = Instant::now();
                    let done = mirror.apply_batch(catalog, batch, crate::now_ms())?;
                    if let Some(observe) = &target.observe {
                        observe(batch.changes.len(), started.elapsed());
                    }
                    Ok(done)
                },
            )?;
            // The housekeeping thread prunes what was applied.
            seen_seq = report.watermark;
            applied = Some(report.watermark);
            let worked = report.batches > 0;
            if report.changes > 0 {
                tracing::debug!(
                    changes = report.changes,
                    watermark = report.watermark,
                    "mirror synced"
                );
            }
            Ok(worked)
        })();
        match step {
            Ok(worked) => {
                if backoff > Duration::from_millis(100)
                    && let Some(core) = &core
                {
                    let _ = publish::set_state(core, "last_error", "");
                }
                backoff = Duration::from_millis(100);
                match settings.freshness {
                    Freshness::NearRealTime if !worked => target.waker.wait(IDLE_POLL),
                    Freshness::NearRealTime => {}
                    Freshness::Scheduled => next_scheduled = Instant::now() + settings.interval,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "sync delayed");
                if let Some(core) = &core {
                    let _ = publish::set_state(core, "last_error", &e.to_string());
                }
                // Reopen the mirror next time: it may have been replaced or repaired.
                mirror = None;
                applied = None;
                // A PostgreSQL session that failed may be gone, and the leadership with it:
                // connect again and ask for it again.
                if matches!(core, Some(CoreConn::Postgres(_) | CoreConn::Mysql(_))) {
                    core = None;
                    if std::mem::take(&mut leading) {
                        tracing::warn!(kernel = %target.kernel_name, "this kernel no longer leads the sync");
                    }
                }
                last_rebuild_check = None;
                sleep_unless_stopped(stop, backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
