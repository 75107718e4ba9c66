//! Password-guessing defence: failed logins are counted per account and, for credential
//! stuffing, per client address over the distinct accounts it failed on. Past a free
//! allowance each further failure locks the key for twice as long as the one before
//! (capped); while locked, logins answer 429 with `Retry-After` without verifying any
//! password. Unknown e-mail addresses are counted like known ones, so a lock reveals
//! nothing about which accounts exist.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Failures are forgotten after this long without another.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failed logins of one account before it is locked.
const ACCOUNT_ALLOWANCE: u32 = 5;
/// Distinct accounts one address may fail on before it is locked.
const ADDRESS_ACCOUNT_ALLOWANCE: usize = 10;
/// Failed logins from one address (any accounts) before it is locked.
const ADDRESS_ALLOWANCE: u32 = 100;
/// The longest lock.
const MAX_LOCK: Duration = Duration::from_secs(15 * 60);

/// What is locked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "key", rename_all = "snake_case")]
pub enum LockKey {
    /// An account, by lower-case e-mail address.
    Account(String),
    /// A client address.
    Address(IpAddr),
}

impl std::fmt::Display for LockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockKey::Account(email) => write!(f, "account:{email}"),
            LockKey::Address(ip) => write!(f, "address:{ip}"),
        }
    }
}

/// A key's state, as an admin sees it.
#[derive(Debug, Clone, Serialize)]
pub struct LockInfo {
    /// What.
    #[serde(flatten)]
    pub key: LockKey,
    /// Failures counted in the window.
    pub failures: u32,
    /// Distinct accounts failed on (addresses only).
    pub accounts: Option<usize>,
    /// Seconds until the lock ends; 0 when not locked.
    pub locked_for_seconds: u64,
}

#[derive(Default)]
struct Counter {
    failures: u32,
    accounts: HashSet<String>,
    last_failure: Option<Instant>,
    locked_until: Option<Instant>,
    locks: u32,
}

impl Counter {
    fn expire(&mut self, now: Instant) {
        let idle = self
            .last_failure
            .is_some_and(|t| now.duration_since(t) > WINDOW);
        let unlocked = self.locked_until.is_none_or(|t| t <= now);
        if idle && unlocked {
            *self = Counter::default();
        }
    }

    fn remaining(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|t| *t > now)
            .map(|t| t.duration_since(now))
    }

    /// Locks for 1 s, 2 s, 4 s, ... (capped) and says for how long.
    fn lock(&mut self, now: Instant) -> Duration {
        let length = Duration::from_secs(1u64 << self.locks.min(20)).min(MAX_LOCK);
        self.locks += 1;
        self.locked_until = Some(now + length);
        length
    }
}

/// The login throttle of one kernel.
#[derive(Default)]
pub struct LoginThrottle {
    state: Mutex<HashMap<LockKey, Counter>>,
}

/// A lock that a failure just set, for the audit log.
#[derive(Debug, Clone)]
pub struct Triggered {
    /// What was locked.
    pub key: LockKey,
    /// For how long.
    pub duration: Duration,
    /// Failures that led to it.
    pub failures: u32,
}

impl LoginThrottle {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, HashMap<LockKey, Counter>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(retry_after)` while the account or the address is locked.
    pub fn check(&self, email: &str, address: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut state = self.lock_state();
        let keys = keys(email, address);
        let mut wait = Duration::ZERO;
        for key in &keys {
            if let Some(counter) = state.get_mut(key) {
                counter.expire(now);
                if let Some(left) = counter.remaining(now) {
                    wait = wait.max(left);
                }
            }
        }
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    /// Counts a failed login; returns the locks it set.
    pub fn failed(&self, email: &str, address: Option<IpAddr>) -> Vec<Triggered> {
        let now = Instant::now();
        let email = email.trim().to_lowercase();
        let mut state = self.lock_state();
        let mut triggered = Vec::new();
        for key in keys(&email, address) {
            let counter = state.entry(key.clone()).or_default();
            counter.expire(now);
            counter.failures += 1;
            counter.last_failure = Some(now);
            let over = match &key {
                LockKey::Account(_) => counter.failures >= ACCOUNT_ALLOWANCE,
                LockKey::Address(_) => {
                    counter.accounts.insert(email.clone());
                    counter.accounts.len() > ADDRESS_ACCOUNT_ALLOWANCE
                        || counter.failures >= ADDRESS_ALLOWANCE
                }
            };
            if over {
                let duration = counter.lock(now);
                triggered.push(Triggered {
                    key,
                    duration,
                    failures: counter.failures,
                });
            }
        }
        triggered
    }

    /// A successful login clears its account's failures (not its address's).
    pub fn succeeded(&self, email: &str) {
        self.lock_state()
            .remove(&LockKey::Account(email.trim().to_lowercase()));
    }

    /// Every key with failures or a lock.
    pub fn list(&self) -> Vec<LockInfo> {
        let now = Instant::now();
        let mut state = self.lock_state();
        state.values_mut().for_each(|c| c.expire(now));
        state.retain(|_, c| c.failures > 0 || c.locked_until.is_some());
        let mut out: Vec<LockInfo> = state
            .iter()
            .map(|(key, c)| LockInfo {
                key: key.clone(),
                failures: c.failures,
                accounts: matches!(key, LockKey::Address(_)).then_some(c.accounts.len()),
                locked_for_seconds: c.remaining(now).map_or(0, |d| d.as_secs().max(1)),
            })
            .collect();
        out.sort_by_key(|info| info.key.to_string());
        out
    }

    /// Clears a key's failures and lock; `false` if it had none.
    pub fn clear(&self, key: &LockKey) -> bool {
        self.lock_state().remove(key).is_some()
    }
}

fn keys(email: &str, address: Option<IpAddr>) -> Vec<LockKey> {
    let mut keys = vec![LockKey::Account(email.trim().to_lowercase())];
    keys.extend(address.map(LockKey::Address));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_locks_after_its_allowance_and_others_from_the_same_address_do_not() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..ACCOUNT_ALLOWANCE - 1 {
            assert!(t.failed("a@x", Some(ip)).is_empty());
        }
        let locks = t.failed("A@x", Some(ip));
        assert_eq!(locks.len(), 1);
        assert_eq!(locks[0].key, LockKey::Account("a@x".into()));
        assert!(t.check("a@x", Some(ip)).is_err());
        assert!(
            t.check("b@x", Some(ip)).is_ok(),
            "another account is not locked"
        );
        assert!(t.clear(&LockKey::Account("a@x".into())));
        assert!(t.check("a@x", Some(ip)).is_ok());
    }

    #[test]
    fn an_address_failing_on_many_accounts_is_locked() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let mut locked = false;
        for n in 0..=ADDRESS_ACCOUNT_ALLOWANCE {
            locked |= t
                .failed(&format!("user{n}@x"), Some(ip))
                .iter()
                .any(|l| l.key == LockKey::Address(ip));
        }
        assert!(locked);
        assert!(t.check("fresh@x", Some(ip)).is_err());
        assert!(
            t.check("fresh@x", Some("10.0.0.3".parse().unwrap()))
                .is_ok()
        );
    }
}
