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

    /// Admits one login attempt, or `Err(retry_after)` while the account or the address
    /// is locked. An admitted attempt is counted as a failure at once (and may set a
    /// lock for the attempts after it), so that concurrent guesses cannot all slip in
    /// before the first one fails; [`succeeded`](Self::succeeded) takes it back. Returns
    /// the locks this attempt set, for the audit log.
    pub fn attempt(
        &self,
        email: &str,
        address: Option<IpAddr>,
    ) -> Result<Vec<Triggered>, Duration> {
        let now = Instant::now();
        let email = email.trim().to_lowercase();
        let mut state = self.lock_state();
        let keys = keys(&email, address);
        let wait = keys
            .iter()
            .filter_map(|key| {
                let counter = state.get_mut(key)?;
                counter.expire(now);
                counter.remaining(now)
            })
            .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        let mut triggered = Vec::new();
        for key in keys {
            let counter = state.entry(key.clone()).or_default();
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
        Ok(triggered)
    }

    /// A successful login clears its account's failures and takes its own attempt back
    /// from its address.
    pub fn succeeded(&self, email: &str, address: Option<IpAddr>) {
        let email = email.trim().to_lowercase();
        let mut state = self.lock_state();
        state.remove(&LockKey::Account(email.clone()));
        if let Some(counter) = address.and_then(|a| state.get_mut(&LockKey::Address(a))) {
            counter.failures = counter.failures.saturating_sub(1);
            counter.accounts.remove(&email);
        }
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
            assert!(t.attempt("a@x", Some(ip)).unwrap().is_empty());
        }
        let locks = t.attempt("A@x", Some(ip)).unwrap();
        assert_eq!(locks.len(), 1);
        assert_eq!(locks[0].key, LockKey::Account("a@x".into()));
        assert!(
            t.attempt("a@x", Some(ip)).is_err(),
            "locked: not even tried"
        );
        assert!(
            t.attempt("b@x", Some(ip)).is_ok(),
            "another account is not locked"
        );
        assert!(t.clear(&LockKey::Account("a@x".into())));
        assert!(t.attempt("a@x", Some(ip)).is_ok());
    }

    #[test]
    fn a_successful_login_takes_its_attempt_back() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "10.0.0.4".parse().unwrap();
        for _ in 0..20 {
            t.attempt("me@x", Some(ip)).unwrap();
            t.succeeded("me@x", Some(ip));
        }
        assert!(t.attempt("me@x", Some(ip)).is_ok());
        assert!(t.list().iter().all(|l| l.failures <= 1));
    }

    #[test]
    fn an_address_failing_on_many_accounts_is_locked() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let mut locked = false;
        for n in 0..=ADDRESS_ACCOUNT_ALLOWANCE {
            locked |= t
                .attempt(&format!("user{n}@x"), Some(ip))
                .unwrap()
                .iter()
                .any(|l| l.key == LockKey::Address(ip));
        }
        assert!(locked);
        assert!(t.attempt("fresh@x", Some(ip)).is_err());
        let elsewhere: IpAddr = "10.0.0.3".parse().unwrap();
        assert!(t.attempt("fresh@x", Some(elsewhere)).is_ok());
    }
}
