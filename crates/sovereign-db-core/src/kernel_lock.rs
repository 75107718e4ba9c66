//! One kernel per MySQL/MariaDB core: the kernel serving it, and a restore while it
//! runs, hold a server-wide named lock (`GET_LOCK`) named after the core database, on a
//! connection of their own. A second kernel pointed at the same database (from another
//! data directory or machine) is refused at start, and so is a restore while a kernel
//! runs anywhere. MySQL's named locks are exclusive only, so the PostgreSQL way for
//! several kernels (each holding a lock shared, a restore taking it exclusively) has no
//! counterpart here.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use sovereign_db::MysqlUrl;

use crate::{CoreError, MyCore};

// The lock's name is server-wide, so it is made of the core database's name (hashed:
// lock names are limited to 64 characters): `sv-kernel <sha1 of the database name>`.

/// Takes the lock if no other session holds it (1), without waiting.
const TAKE: &str = "SELECT GET_LOCK(CONCAT('sv-kernel ', SHA1(DATABASE())), 0)";

/// The connection id of the session holding the lock, if any.
const HOLDER: &str = "SELECT IS_USED_LOCK(CONCAT('sv-kernel ', SHA1(DATABASE())))";

/// The client address of a session of the same account (others are not visible without
/// the `PROCESS` privilege, which the core's account does not have).
const CLIENT_OF: &str = "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = ?";

/// How often the holder's connection is used, so that the server's `wait_timeout` (8
/// hours by default) never closes it, and how soon a lost connection is replaced.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The kernel lock of a MySQL core, held until dropped (or until the process ends, which
/// closes the connection and so frees the lock).
pub struct MysqlKernelLock {
    /// Dropped to stop the keeper.
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MysqlKernelLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MysqlKernelLock")
    }
}

/// Takes the lock on `core`'s connection if nobody holds it: `false` when another
/// session does.
fn try_take(core: &MyCore) -> Result<bool, CoreError> {
    let got: Option<Option<i64>> = core.query_opt(TAKE, ())?;
    Ok(got.flatten() == Some(1))
}

/// Who holds the lock, as well as `core`'s account can tell.
fn holder(core: &MyCore) -> Result<String, CoreError> {
    let Some(id) = core.query_opt::<Option<u64>>(HOLDER, ())?.flatten() else {
        // Freed in the meantime.
        return Ok("a session that has just ended; try again".into());
    };
    Ok(match core.query_opt::<String>(CLIENT_OF, (id,))? {
        Some(client) => format!("connection {id} from {client}"),
        None => format!("connection {id} of another account"),
    })
}

impl MysqlKernelLock {
    /// Takes the lock of the core database at `url` on a connection of its own, or says
    /// who holds it ([`CoreError::KernelRunning`]).
    pub fn take(url: &MysqlUrl) -> Result<MysqlKernelLock, CoreError> {
        // Unchecked: `sv dev` takes it before it migrates an empty database.
        let core = MyCore::connect_unchecked(url)?;
        if !try_take(&core)? {
            return Err(CoreError::KernelRunning {
                holder: holder(&core)?,
            });
        }
        let (stop, stopped) = mpsc::channel();
        let url = url.clone();
        let keeper = std::thread::Builder::new()
            .name("sv-kernel-lock".into())
            .spawn(move || keep(&url, core, &stopped))
            .map_err(|e| {
                CoreError::Unavailable(format!("starting the kernel lock's keeper: {e}"))
            })?;
        Ok(MysqlKernelLock {
            stop: Some(stop),
            keeper: Some(keeper),
        })
    }
}

/// Keeps the lock's connection in use; when it is lost (the lock with it), connects and
/// takes the lock again.
fn keep(url: &MysqlUrl, core: MyCore, stopped: &mpsc::Receiver<()>) {
    let mut held = Some(core);
    loop {
        match stopped.recv_timeout(KEEP_ALIVE) {
            Err(RecvTimeoutError::Timeout) => {}
            // Dropped: the connection closes and frees the lock.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if held.as_ref().is_some_and(|core| core.ping().is_ok()) {
            continue;
        }
        let lost = held.take().is_some();
        let retaken = MyCore::connect_unchecked(url).and_then(|core| {
            if try_take(&core)? {
                Ok(Ok(core))
            } else {
                Ok(Err(holder(&core)?))
            }
        });
        match retaken {
            Ok(Ok(core)) => {
                tracing::info!("the MySQL core's kernel lock is held again");
                held = Some(core);
            }
            Ok(Err(holder)) => tracing::error!(
                %holder,
                "this kernel's connection to the MySQL core was lost and another process took \
                 the kernel lock: two kernels may be serving this core; stop one of them"
            ),
            Err(error) if lost => tracing::warn!(
                %error,
                "the connection holding the MySQL core's kernel lock was lost; retrying"
            ),
            Err(error) => tracing::debug!(%error, "retaking the MySQL core's kernel lock"),
        }
    }
}

impl Drop for MysqlKernelLock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }
}
