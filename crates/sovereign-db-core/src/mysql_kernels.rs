//! The kernels serving a MySQL/MariaDB core. MySQL's named locks (`GET_LOCK`) are
//! server-wide and exclusive only, so the PostgreSQL way (every kernel holds one advisory
//! lock shared, a restore takes it exclusively) becomes:
//!
//! - each kernel registers on a connection of its own: a row in `_sv_kernels`, live while
//!   that connection holds the lock `sv <hash> kernel <connection id>`;
//! - registrations and restores take turns on the lock `sv <hash> gate`: a kernel holds it
//!   only while it registers, a restore for as long as it runs, and finds no live kernel
//!   first;
//! - one sync worker at a time holds `sv <hash> sync` and records its connection and its
//!   kernel's name in `_sv_sync_leader`.
//!
//! `<hash>` is made of the core database's name (lock names are server-wide and at most
//! 64 characters). Kernels share a core when their plugin store is on the same MySQL
//! too; a kernel with its plugin store in SQLite files must be the only one.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sovereign_db::MysqlUrl;

use crate::health::Kernels;
use crate::{CoreError, MyCore};

/// A lock name: `sv <hash of the core database's name><suffix>` (an SQL expression).
macro_rules! lock_name {
    ($suffix:literal) => {
        concat!("CONCAT('sv ', LEFT(SHA1(DATABASE()), 20), '", $suffix, "')")
    };
    ($suffix:literal, $id:literal) => {
        concat!(
            "CONCAT('sv ', LEFT(SHA1(DATABASE()), 20), '",
            $suffix,
            "', ",
            $id,
            ")"
        )
    };
}

/// Takes the gate, waiting at most `?` seconds (1 when taken).
const TAKE_GATE: &str = concat!("SELECT GET_LOCK(", lock_name!(" gate"), ", ?)");
const RELEASE_GATE: &str = concat!("DO RELEASE_LOCK(", lock_name!(" gate"), ")");
/// Marks this connection's registration as live.
const TAKE_OWN: &str = concat!(
    "SELECT GET_LOCK(",
    lock_name!(" kernel ", "CONNECTION_ID()"),
    ", 0)"
);
/// Whether a row's connection holds its lock (a connection id the server reused after a
/// restart does not, unless it registered again).
macro_rules! live {
    () => {
        concat!(
            "IS_USED_LOCK(",
            lock_name!(" kernel ", "connection_id"),
            ") <=> connection_id"
        )
    };
}

const PRUNE: &str = concat!("DELETE FROM _sv_kernels WHERE NOT (", live!(), ")");
const LIVE_KERNELS: &str = concat!(
    "SELECT name, shares_stores FROM _sv_kernels WHERE ",
    live!(),
    " ORDER BY name"
);
const COUNT_LIVE: &str = concat!("SELECT count(*) FROM _sv_kernels WHERE ", live!());
const REGISTER: &str = "REPLACE INTO _sv_kernels (connection_id, name, shares_stores)
                        VALUES (CONNECTION_ID(), ?, ?)";
const RENAME: &str = "UPDATE _sv_kernels SET name = ? WHERE connection_id = CONNECTION_ID()";
const TAKE_SYNC: &str = concat!("SELECT GET_LOCK(", lock_name!(" sync"), ", 0)");
const MARK_SYNC: &str = "REPLACE INTO _sv_sync_leader (id, connection_id, kernel)
                         VALUES (1, CONNECTION_ID(), ?)";
/// The live kernels.
const KERNELS: &str = concat!(
    "SELECT name FROM _sv_kernels WHERE ",
    live!(),
    " ORDER BY name"
);
/// The sync leader, while its worker's connection holds the sync lock.
const SYNC_LEADER: &str = concat!(
    "SELECT kernel FROM _sv_sync_leader WHERE connection_id <=> IS_USED_LOCK(",
    lock_name!(" sync"),
    ")"
);

/// How long a kernel waits for the gate (a restore holds it while it runs).
pub(crate) const GATE_WAIT_SECONDS: u64 = 10;

/// How often the registration's connection is used, so that the server's `wait_timeout`
/// (8 hours by default) never closes it, and how soon a lost one is replaced.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// A kernel's registration on a MySQL core, live until dropped (or until the process
/// ends, which closes its connection).
pub struct KernelRegistration {
    /// The registration's connection (replaced by the keeper when lost) and name.
    state: Arc<Mutex<Registered>>,
    /// Dropped to stop the keeper.
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<JoinHandle<()>>,
}

struct Registered {
    core: Option<MyCore>,
    name: String,
    shares_stores: bool,
}

impl std::fmt::Debug for KernelRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelRegistration")
    }
}

/// Registers `core`'s connection as kernel `name` under the gate, unless that would make
/// two kernels where one of them must be alone.
fn register_on(core: &MyCore, name: &str, shares_stores: bool) -> Result<(), CoreError> {
    let gate: Option<Option<i64>> = core.query_opt(TAKE_GATE, (GATE_WAIT_SECONDS,))?;
    if gate.flatten() != Some(1) {
        return Err(CoreError::KernelsExcluded);
    }
    let registered = (|| {
        core.execute(PRUNE, ())?;
        let live: Vec<(String, bool)> = core.query(LIVE_KERNELS, ())?;
        if !live.is_empty() && (!shares_stores || live.iter().any(|(_, shares)| !shares)) {
            return Err(CoreError::KernelsAlone {
                kernels: live.into_iter().map(|(name, _)| name).collect(),
            });
        }
        let own: Option<Option<i64>> = core.query_opt(TAKE_OWN, ())?;
        if own.flatten() != Some(1) {
            return Err(CoreError::Unavailable(
                "the MySQL core refused this kernel's registration lock".into(),
            ));
        }
        core.execute(REGISTER, (name, shares_stores))?;
        Ok(())
    })();
    let released = core.execute(RELEASE_GATE, ());
    registered?;
    released?;
    Ok(())
}

impl KernelRegistration {
    /// Registers this process as kernel `name` of the core database at `url`, on a
    /// connection of its own. `shares_stores`: its plugin store is on MySQL too, so other
    /// kernels may serve the core beside it; otherwise it must be the only one.
    pub fn register(
        url: &MysqlUrl,
        name: &str,
        shares_stores: bool,
    ) -> Result<KernelRegistration, CoreError> {
        let core = MyCore::connect(url)?;
        register_on(&core, name, shares_stores)?;
        let state = Arc::new(Mutex::new(Registered {
            core: Some(core),
            name: name.to_owned(),
            shares_stores,
        }));
        let (stop, stopped) = mpsc::channel();
        let keeper = {
            let (url, state) = (url.clone(), state.clone());
            std::thread::Builder::new()
                .name("sv-kernel-registration".into())
                .spawn(move || keep(&url, &state, &stopped))
                .map_err(|e| {
                    CoreError::Unavailable(format!(
                        "starting the kernel registration's keeper: {e}"
                    ))
                })?
        };
        Ok(KernelRegistration {
            state,
            stop: Some(stop),
            keeper: Some(keeper),
        })
    }

    /// Renames this kernel (once it knows the address it serves on).
    pub fn rename(&self, name: &str) -> Result<(), CoreError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.name = name.to_owned();
        if let Some(core) = &state.core {
            core.execute(RENAME, (name,))?;
        }
        Ok(())
    }
}

/// Keeps the registration's connection in use; when it is lost (the registration with
/// it), connects and registers again.
fn keep(url: &MysqlUrl, state: &Mutex<Registered>, stopped: &mpsc::Receiver<()>) {
    loop {
        match stopped.recv_timeout(KEEP_ALIVE) {
            Err(RecvTimeoutError::Timeout) => {}
            // Dropped: the connection closes, which ends the registration.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        if state.core.as_ref().is_some_and(|core| core.ping().is_ok()) {
            continue;
        }
        let lost = state.core.take().is_some();
        let again = MyCore::connect(url)
            .and_then(|core| register_on(&core, &state.name, state.shares_stores).map(|()| core));
        match again {
            Ok(core) => {
                tracing::info!("this kernel is registered on the MySQL core again");
                state.core = Some(core);
            }
            Err(error) if lost => tracing::error!(
                %error,
                "this kernel's registration on the MySQL core was lost (its connection \
                 ended); registering again every {}s",
                KEEP_ALIVE.as_secs()
            ),
            Err(error) => tracing::warn!(%error, "registering this kernel on the MySQL core"),
        }
    }
}

impl Drop for KernelRegistration {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }
}

/// The live kernels and the sync leader.
pub(crate) fn kernels(core: &MyCore) -> Result<Kernels, CoreError> {
    Ok(Kernels {
        running: core.query(KERNELS, ())?,
        sync_leader: core.query_opt(SYNC_LEADER, ())?,
    })
}

/// Takes the gate on `core`'s connection (held until it closes) if no kernel is live and
/// no kernel is registering: `false` otherwise.
pub(crate) fn exclude(core: &MyCore) -> Result<bool, CoreError> {
    let gate: Option<Option<i64>> = core.query_opt(TAKE_GATE, (0u64,))?;
    if gate.flatten() != Some(1) {
        return Ok(false);
    }
    let live: i64 = core
        .query_opt(COUNT_LIVE, ())?
        .expect("an aggregate returns a row");
    if live > 0 {
        core.execute(RELEASE_GATE, ())?;
        return Ok(false);
    }
    Ok(true)
}

/// Takes the sync leadership on `core`'s connection if nobody holds it (held until the
/// connection closes) and records that kernel `kernel_name` leads.
pub fn take_sync_leadership(core: &MyCore, kernel_name: &str) -> Result<bool, CoreError> {
    let got: Option<Option<i64>> = core.query_opt(TAKE_SYNC, ())?;
    if got.flatten() != Some(1) {
        return Ok(false);
    }
    core.execute(MARK_SYNC, (kernel_name,))?;
    Ok(true)
}
