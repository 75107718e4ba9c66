//! The background sync job: near-real-time (changes pushed within the coalescing window
//! after they commit) or scheduled (every interval). A locked or unavailable mirror only
//! delays it, with backoff; core writes never wait on it, because capture only appends
//! to the outbox in `core.db`.
//!
//! The worker is the one writer of the mirror while the platform runs: it applies each
//! batch with its watermark on its own trusted connection to the mirror store. The
//! kernel wakes it after each of its commits ([`SyncWaker`]); commits by other processes
//! (an operator's `sv users create`) are found by a slow poll.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sovereign_db::rusqlite::Connection;
use sovereign_db_plugins::TrustedPluginStore;

use crate::{Freshness, SyncError, SyncSettings, full, publish};

/// How often the near-real-time worker looks for changes nobody woke it for (commits
/// by other processes).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often applied changes are pruned from the core outbox while changes keep coming.
const ACK_EVERY: Duration = Duration::from_millis(250);
/// How often the mirror is checked for needing a rebuild (and always after reopening it).
const REBUILD_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Longest wait after repeated failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Opens what the worker needs.
pub struct SyncTarget {
    /// `core.db`.
    pub core_path: PathBuf,
    /// Opens the mirror's trusted handle (the plugin store, or the mirror file).
    pub open_mirror: Box<dyn Fn() -> Result<TrustedPluginStore, SyncError> + Send>,
    /// Told about every batch applied: how many changes, how long the apply took.
    pub observe: Option<Observe>,
    /// Wakes the worker when the core commits.
    pub waker: SyncWaker,
}

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
}

impl SyncWorker {
    /// Starts the worker thread.
    pub fn spawn(settings: SyncSettings, target: SyncTarget) -> SyncWorker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let waker = target.waker.clone();
        let thread = std::thread::Builder::new()
            .name("sv-sync".into())
            .spawn(move || run(&settings, &target, &flag))
            .expect("spawning the sync thread");
        SyncWorker {
            stop,
            waker,
            thread: Some(thread),
        }
    }

    /// Stops the worker and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
        if let Some(t) = self.thread.take() {
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

fn run(settings: &SyncSettings, target: &SyncTarget, stop: &AtomicBool) {
    let mut backoff = Duration::from_millis(100);
    let mut core: Option<Connection> = None;
    let mut mirror: Option<TrustedPluginStore> = None;
    let mut seen_seq = -1i64;
    let mut acked_seq = -1i64;
    let mut last_ack = Instant::now();
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
                core = Some(sovereign_db_core::open_existing(&target.core_path)?);
            }
            let core = core.as_ref().expect("opened above");
            if settings.freshness == Freshness::NearRealTime {
                let newest: i64 = core.query_row(
                    "SELECT coalesce(max(seq), 0) FROM _sv_change_outbox",
                    [],
                    |r| r.get(0),
                )?;
                if newest == seen_seq && mirror.is_some() {
                    // Idle: prune what was applied.
                    if acked_seq < seen_seq {
                        publish::acknowledge(core, seen_seq)?;
                        acked_seq = seen_seq;
                        last_ack = Instant::now();
                    }
                    return Ok(false);
                }
                // Coalesce: let a burst of commits land in one batch.
                std::thread::sleep(settings.coalesce);
            }
            if mirror.is_none() {
                let opened = (target.open_mirror)()?;
                opened
                    .connection()
                    .busy_timeout(Duration::from_millis(200))
                    .map_err(SyncError::Sqlite)?;
                mirror = Some(opened);
            }
            let mirror = mirror.as_ref().expect("opened above");
            if last_rebuild_check.is_none_or(|t| t.elapsed() >= REBUILD_CHECK_EVERY) {
                if let Some(reason) = publish::needs_rebuild(core, mirror, &settings.catalog)? {
                    tracing::info!(?reason, "building the mirror from the core");
                    full::full_resync(
                        core,
                        &target.core_path,
                        mirror,
                        &settings.catalog,
                        &|_, _| {},
                    )?;
                }
                last_rebuild_check = Some(Instant::now());
            }
            let catalog = &settings.catalog;
            let report =
                publish::catch_up_with(core, mirror, catalog, settings.batch_size, &|batch| {
                    let started = Instant::now();
                    let applied = mirror.apply_batch(catalog, batch, crate::now_ms())?;
                    if let Some(observe) = &target.observe {
                        observe(batch.changes.len(), started.elapsed());
                    }
                    Ok(applied)
                })?;
            seen_seq = report.watermark;
            // Pruning the outbox writes core.db; under a stream of core writes it is done
            // a few times a second, not after every batch.
            if acked_seq < seen_seq && last_ack.elapsed() >= ACK_EVERY {
                publish::acknowledge(core, seen_seq)?;
                acked_seq = seen_seq;
                last_ack = Instant::now();
            }
            if report.changes > 0 {
                tracing::debug!(
                    changes = report.changes,
                    watermark = report.watermark,
                    "mirror synced"
                );
            }
            Ok(true)
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
                last_rebuild_check = None;
                sleep_unless_stopped(stop, backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
