//! Deadlines kept from outside the plugin's session: a plugin can `set_config` its own
//! `statement_timeout` away, so one thread per process sends PostgreSQL's cancel request
//! (a separate connection to the server) for any statement still running at its deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::Instant;

use postgres::CancelToken;

/// A connection's alarm: how to cancel its statement, and whether it did.
pub(crate) struct Alarm {
    token: CancelToken,
    /// Held while a cancel is sent; `true` while a statement of this connection runs.
    running: Mutex<bool>,
    /// A cancel was sent for the statement armed last.
    fired: AtomicBool,
}

impl Alarm {
    pub(crate) fn new(token: CancelToken) -> Arc<Alarm> {
        Arc::new(Alarm {
            token,
            running: Mutex::new(false),
            fired: AtomicBool::new(false),
        })
    }

    /// Whether a cancel was sent for the statement armed last. PostgreSQL may act on
    /// it late (after the statement ended by itself), so the session must absorb it
    /// before its next statement.
    pub(crate) fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

/// The armed alarms by deadline (with a sequence number: deadlines may tie), and the
/// last sequence number given.
type Schedule = (u64, BTreeMap<(Instant, u64), Arc<Alarm>>);

struct Watchdog {
    armed: Mutex<Schedule>,
    wake: Condvar,
}

static WATCHDOG: LazyLock<Arc<Watchdog>> = LazyLock::new(|| {
    let watchdog = Arc::new(Watchdog {
        armed: Mutex::new((0, BTreeMap::new())),
        wake: Condvar::new(),
    });
    let worker = Arc::clone(&watchdog);
    std::thread::Builder::new()
        .name("sv-pg-deadlines".into())
        .spawn(move || worker.run())
        .expect("spawning the PostgreSQL deadline thread");
    watchdog
});

impl Watchdog {
    fn run(&self) {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            match armed.1.first_key_value().map(|(key, _)| *key) {
                Some(key) if key.0 <= now => {
                    let alarm = armed.1.remove(&key).expect("the first key is there");
                    drop(armed);
                    alarm.cancel();
                    armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
                }
                Some((deadline, _)) => {
                    armed = self
                        .wake
                        .wait_timeout(armed, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None => armed = self.wake.wait(armed).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

impl Alarm {
    fn cancel(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if *running {
            // The statement fails with SQLSTATE 57014 (query_canceled): a deadline.
            self.fired.store(true, Ordering::SeqCst);
            if let Err(e) = self.token.cancel_query(postgres::NoTls) {
                tracing::warn!(error = %e, "could not send PostgreSQL a cancel request");
            }
        }
        drop(running);
    }
}

/// A statement's deadline; dropping it disarms (waiting for a cancel being sent, so that
/// a cancel never reaches the connection's next statement).
pub(crate) struct Armed {
    key: (Instant, u64),
    alarm: Arc<Alarm>,
}

/// Arms `alarm` for a statement that must end by `deadline`.
pub(crate) fn arm(alarm: &Arc<Alarm>, deadline: Instant) -> Armed {
    alarm.fired.store(false, Ordering::SeqCst);
    *alarm.running.lock().unwrap_or_else(|e| e.into_inner()) = true;
    let watchdog = &*WATCHDOG;
    let mut armed = watchdog.armed.lock().unwrap_or_else(|e| e.into_inner());
    armed.0 += 1;
    let key = (deadline, armed.0);
    let earliest = armed
        .1
        .first_key_value()
        .is_none_or(|(first, _)| key < *first);
    armed.1.insert(key, Arc::clone(alarm));
    drop(armed);
    if earliest {
        watchdog.wake.notify_one();
    }
    Armed {
        key,
        alarm: Arc::clone(alarm),
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        WATCHDOG
            .armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .remove(&self.key);
        *self.alarm.running.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}
