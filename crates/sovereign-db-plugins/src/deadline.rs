//! Deadlines kept from outside a plugin's session, for the database backends whose
//! statements the plugin could otherwise keep running (PostgreSQL: a plugin can
//! `set_config` its own `statement_timeout` away; MySQL proper has no statement time
//! limit for writes): one thread per process calls each armed alarm's `stop` (a cancel
//! request, a `KILL QUERY`) for any statement still running at its deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::Instant;

/// How to stop a connection's running statement (from another thread).
pub type Stop = Box<dyn Fn() + Send + Sync>;

/// A connection's alarm: how to stop its statement, and whether it did.
pub struct Alarm {
    stop: Stop,
    /// Held while a stop is sent; `true` while a statement of this connection runs.
    running: Mutex<bool>,
    /// A stop was sent for the statement armed last.
    fired: AtomicBool,
}

impl Alarm {
    /// An alarm that calls `stop` when a statement of its connection outlives its
    /// deadline.
    pub fn new(stop: Stop) -> Arc<Alarm> {
        Arc::new(Alarm {
            stop,
            running: Mutex::new(false),
            fired: AtomicBool::new(false),
        })
    }

    /// Whether a stop was sent for the statement armed last. A server may act on it
    /// late (after the statement ended by itself), so the session must absorb it before
    /// its next statement.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    fn fire(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if *running {
            self.fired.store(true, Ordering::SeqCst);
            (self.stop)();
        }
        drop(running);
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
        .name("sv-deadlines".into())
        .spawn(move || worker.run())
        .expect("spawning the deadline thread");
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
                    alarm.fire();
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

/// A statement's deadline; dropping it disarms (waiting for a stop being sent, so that
/// a stop never reaches the connection's next statement).
pub struct Armed {
    key: (Instant, u64),
    alarm: Arc<Alarm>,
}

/// Arms `alarm` for a statement that must end by `deadline`.
pub fn arm(alarm: &Arc<Alarm>, deadline: Instant) -> Armed {
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
