//! The watchdog of the extension host: spawns it (as `sv host ...` with a cleared
//! environment), serves it the plugin configuration over the socket, checks its heartbeat,
//! restarts it with backoff when it exits or stops answering, and stops restarting after a
//! crash loop until an operator asks (SIGUSR1, sent by `sv plugins host restart`).
//!
//! Core routes never wait on any of this: plugin requests go through [`HostHandle::call`],
//! which answers "unavailable" at once while the host is down.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sovereign_db_core::CoreError;
use sovereign_protocol::{
    Caller, HostError, HostToKernel, HttpRequest, HttpResponse, KernelToHost, PluginEvent,
    PluginLoad, PluginSpec, SandboxStatus, StoreLogin, VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

use crate::CorePool;

/// How often the host is asked whether it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// How long an answer may take before the host counts as hung.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(3);
/// How long the host may take to connect and load its plugins.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Crashes within [`CRASH_WINDOW`] that make a crash loop.
const CRASH_LIMIT: usize = 3;
const CRASH_WINDOW: Duration = Duration::from_secs(300);
/// How often the registry is compared with what the host loaded.
const REGISTRY_CHECK_EVERY: Duration = Duration::from_secs(2);
/// Plugin requests in flight at once.
const MAX_IN_FLIGHT: usize = 64;

/// How to start the host.
#[derive(Debug, Clone)]
pub struct HostCommand {
    /// The executable (`sv`).
    pub program: PathBuf,
    /// Its arguments (`host --socket ...`).
    pub args: Vec<OsString>,
    /// The only environment it gets.
    pub env: Vec<(String, String)>,
    /// The socket path the kernel listens on.
    pub socket: PathBuf,
    /// `core.db`, which the kernel asks a freshly started host to open: the sandbox must
    /// refuse, and `/health` shows that it did. `None` when the core store is on
    /// PostgreSQL: there is no file, and the host is never given a core login.
    pub core_db: Option<PathBuf>,
    /// When the plugin store is a database server: a plugin's login from its id, mode
    /// and its password (kept in the core store), handed to the host.
    pub store_login: Option<StoreLoginFn>,
    /// Run (blocking) before every start of the host: with the core on PostgreSQL, the
    /// platform brings the plugins directory in line with the packages the core stores.
    pub before_start: Option<BeforeStart>,
}

/// Work before a host starts; an error is logged and the host starts anyway.
#[derive(Clone)]
pub struct BeforeStart(pub Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for BeforeStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeStart")
    }
}

/// `(plugin id, its database mode, password) -> its login`.
type LoginBuilder =
    dyn Fn(&str, sovereign_db_plugins::DatabaseMode, &str) -> StoreLogin + Send + Sync;

/// Builds a plugin's login to the plugin store's server from its id, its database mode
/// (an isolated plugin has a database of its own) and its password.
#[derive(Clone)]
pub struct StoreLoginFn(pub Arc<LoginBuilder>);

impl std::fmt::Debug for StoreLoginFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLoginFn")
    }
}

/// The host's state, as `/health` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HostState {
    /// Starting (or restarting) the process.
    Starting {
        /// Restarts so far.
        restarts: u64,
    },
    /// Serving.
    Running {
        /// The sandbox as the host reported it.
        sandbox: SandboxStatus,
        /// Per plugin, loaded or why not.
        plugins: Vec<PluginLoad>,
        /// Restarts so far.
        restarts: u64,
        /// Process id.
        pid: u32,
        /// What happened when the host was asked to open `core.db` (it must be refused).
        core_db_probe: CoreDbProbe,
    },
    /// Stopped because the kernel is shutting down.
    Stopped,
    /// Crashed too often; waiting for an operator (`sv plugins host restart`).
    CrashLoop {
        /// Crashes in the window.
        crashes: usize,
        /// The last reason.
        last_error: String,
    },
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostState::Starting { restarts } => write!(f, "starting (restarts so far: {restarts})"),
            HostState::Running { pid, restarts, .. } => {
                write!(f, "running as pid {pid} (restarts so far: {restarts})")
            }
            HostState::Stopped => f.write_str("stopped"),
            HostState::CrashLoop {
                crashes,
                last_error,
            } => write!(
                f,
                "in a crash loop ({crashes} crashes; last: {last_error}); `sv plugins host restart` tries again"
            ),
        }
    }
}

/// What happened when a freshly started host was asked to open `core.db`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CoreDbProbe {
    /// Refused, as it must be (the sandbox works).
    Refused {
        /// The host's error.
        error: String,
    },
    /// The host could open `core.db`: it is not sandboxed.
    Opened,
    /// The core store is on PostgreSQL: no file to probe; the host holds no core login
    /// and plugin roles may not connect to the core database.
    NoCoreFile,
}

impl std::fmt::Display for CoreDbProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoreDbProbe::Refused { error } => write!(f, "refused: {error}"),
            CoreDbProbe::Opened => f.write_str("OPENED: the host can read core.db"),
            CoreDbProbe::NoCoreFile => f.write_str(
                "no core file (the core store is on PostgreSQL; the host holds no login for it)",
            ),
        }
    }
}

/// Why a plugin call produced no plugin response.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The host is down or restarting: 503 with `Retry-After`.
    Unavailable {
        /// Seconds to suggest in `Retry-After`.
        retry_after: u64,
    },
    /// The request ran out of time: 504.
    Timeout,
    /// The host answered with an error.
    Host(HostError),
}

struct Connection {
    tx: mpsc::UnboundedSender<KernelToHost>,
    pending: Mutex<HashMap<u64, oneshot::Sender<HostToKernel>>>,
}

/// Hands plugin events to the core (the kernel's inbox); returns the ids stored (new or
/// already there), which the host then marks delivered.
pub type EventSink = Arc<dyn Fn(Vec<PluginEvent>) -> Vec<String> + Send + Sync>;

/// Receives what plugins logged (for the per-plugin logs the platform keeps).
pub type PluginLogSink = Arc<dyn Fn(Vec<sovereign_protocol::PluginLogLine>) + Send + Sync>;

struct Inner {
    command: HostCommand,
    core: CorePool,
    state: Mutex<HostState>,
    connection: Mutex<Option<Arc<Connection>>>,
    next_id: AtomicU64,
    in_flight: Semaphore,
    restart_now: Notify,
    /// Set when the kernel shuts down: the host's end is then not a crash.
    shutting_down: AtomicBool,
    shutdown_now: Notify,
    events: EventSink,
    logs: Option<PluginLogSink>,
    /// Fence denials per plugin, as the running host last reported them.
    denials: Mutex<Vec<(String, u64)>>,
}

/// A handle on the supervised host.
#[derive(Clone)]
pub struct HostHandle {
    inner: Arc<Inner>,
}

impl HostHandle {
    /// Starts supervising: binds the socket (mode 0600) and spawns the watchdog task.
    pub fn start(
        command: HostCommand,
        core: CorePool,
        events: EventSink,
        logs: Option<PluginLogSink>,
    ) -> std::io::Result<HostHandle> {
        let _ = std::fs::remove_file(&command.socket);
        if let Some(parent) = command.socket.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let listener = UnixListener::bind(&command.socket)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&command.socket, std::fs::Permissions::from_mode(0o600))?;
        }
        let inner = Arc::new(Inner {
            command,
            core,
            state: Mutex::new(HostState::Starting { restarts: 0 }),
            connection: Mutex::new(None),
            next_id: AtomicU64::new(1),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            restart_now: Notify::new(),
            shutting_down: AtomicBool::new(false),
            shutdown_now: Notify::new(),
            events,
            logs,
            denials: Mutex::new(Vec::new()),
        });
        tokio::spawn(supervise(inner.clone(), listener));
        Ok(HostHandle { inner })
    }

    /// The current state.
    pub fn state(&self) -> HostState {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Fence denials per plugin since the running host started (from its heartbeats).
    pub fn denials(&self) -> Vec<(String, u64)> {
        self.inner
            .denials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Restarts the host now, also out of a crash loop.
    pub fn restart(&self) {
        self.inner.restart_now.notify_one();
    }

    /// Stops the host for good (the kernel is shutting down) and waits up to `wait` for
    /// it to exit. Its end is not counted or logged as a crash.
    pub async fn stop(&self, wait: Duration) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.shutdown_now.notify_one();
        let deadline = tokio::time::Instant::now() + wait;
        while !matches!(self.state(), HostState::Stopped) && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn connection(&self) -> Option<Arc<Connection>> {
        self.inner
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn request(
        &self,
        make: impl FnOnce(u64) -> KernelToHost,
        timeout: Duration,
    ) -> Result<HostToKernel, CallError> {
        let retry_after = match self.state() {
            HostState::CrashLoop { .. } => 60,
            _ => 1,
        };
        let Some(conn) = self.connection() else {
            return Err(CallError::Unavailable { retry_after });
        };
        let _permit = match tokio::time::timeout(timeout, self.inner.in_flight.acquire()).await {
            Ok(Ok(p)) => p,
            _ => return Err(CallError::Unavailable { retry_after }),
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if conn.tx.send(make(id)).is_err() {
            conn.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(CallError::Unavailable { retry_after });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            // The host went away with the request: the connection's pending map was dropped.
            Ok(Err(_)) => Err(CallError::Unavailable { retry_after }),
            Err(_) => {
                conn.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(CallError::Timeout)
            }
        }
    }

    /// Sends a plugin request and waits up to `timeout`.
    pub async fn call(
        &self,
        plugin: &str,
        request: HttpRequest,
        caller: Caller,
        timeout: Duration,
    ) -> Result<HttpResponse, CallError> {
        let plugin = plugin.to_owned();
        let answer = self
            .request(
                move |id| KernelToHost::Handle {
                    id,
                    plugin,
                    request,
                    caller,
                },
                timeout,
            )
            .await?;
        match answer {
            HostToKernel::Response { result, .. } => result.map_err(CallError::Host),
            other => Err(CallError::Host(HostError::Internal(format!(
                "unexpected answer {other:?}"
            )))),
        }
    }

    /// Asks the host to open `path`; `Ok(())` means it could.
    pub async fn probe(&self, path: &str) -> Result<Result<(), String>, CallError> {
        let path = path.to_owned();
        match self
            .request(
                move |id| KernelToHost::Probe { id, path },
                Duration::from_secs(5),
            )
            .await?
        {
            HostToKernel::ProbeResult { result, .. } => Ok(result),
            other => Err(CallError::Host(HostError::Internal(format!(
                "unexpected answer {other:?}"
            )))),
        }
    }
}

fn set_state(inner: &Inner, state: HostState) {
    *inner.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
}

async fn plugin_specs(
    core: &CorePool,
    store_login: Option<StoreLoginFn>,
) -> Result<Vec<PluginSpec>, CoreError> {
    core.call(move |conn| {
        sovereign_db_core::plugins::list(conn)?
            .into_iter()
            .map(|p| {
                let store_login = match &store_login {
                    // A plugin without a login cannot load (the host says why).
                    Some(login) => sovereign_db_core::plugins::store_login(conn, &p.id)?
                        .map(|password| (login.0)(&p.id, p.manifest.database, &password)),
                    None => None,
                };
                Ok(PluginSpec {
                    id: p.id,
                    grants: p.grants,
                    manifest: p.manifest,
                    store_login,
                })
            })
            .collect()
    })
    .await
}

/// Hands relayed events to the core's inbox (on the blocking pool) and acknowledges
/// the ones stored, so the host marks them delivered.
fn store_events(
    sink: &EventSink,
    ack: &mpsc::UnboundedSender<KernelToHost>,
    events: Vec<sovereign_protocol::PluginEvent>,
) {
    let (sink, ack) = (sink.clone(), ack.clone());
    tokio::task::spawn_blocking(move || {
        let stored = sink(events);
        if !stored.is_empty() {
            let _ = ack.send(KernelToHost::EventsStored { event_ids: stored });
        }
    });
}

/// Stores what the host reported about loading each plugin in the registry, so that
/// `sv plugins list` and `/health` show a plugin that failed to load, with the reason.
async fn record_loads(inner: &Inner, loads: &[PluginLoad]) {
    for load in loads {
        if let Some(error) = &load.error {
            tracing::error!(plugin = %load.id, %error, "the extension host could not load a plugin");
        }
    }
    let loads = loads.to_vec();
    let recorded = inner
        .core
        .call(move |conn| {
            for load in &loads {
                sovereign_db_core::plugins::record_load(conn, &load.id, load.error.as_deref())?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = recorded {
        tracing::warn!(error = ?e, "cannot record the plugins' load state");
    }
}

/// Reads one frame from the host (the async twin of `sovereign_protocol::read_frame`);
/// `None` at the end of the stream or on a malformed frame, which ends the connection.
async fn read_message(
    stream: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Option<HostToKernel> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await.ok()?;
    let mut body = vec![0u8; sovereign_protocol::body_len(prefix).ok()?];
    stream.read_exact(&mut body).await.ok()?;
    sovereign_protocol::decode(&body).ok()
}

/// The watchdog loop.
async fn supervise(inner: Arc<Inner>, listener: UnixListener) {
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    let mut restarts = 0u64;
    let mut backoff = Duration::from_millis(20);
    loop {
        set_state(&inner, HostState::Starting { restarts });
        let reason = run_once(&inner, &listener, restarts).await;
        *inner.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if inner.shutting_down.load(Ordering::SeqCst) {
            set_state(&inner, HostState::Stopped);
            tracing::info!("the extension host stopped");
            return;
        }
        let operator_restart = matches!(reason, Ending::Restart);
        let reason_text = match &reason {
            Ending::Failed(e) => e.clone(),
            Ending::Restart => "restart requested".into(),
            Ending::Shutdown => "shutting down".into(),
        };
        restarts += 1;
        if operator_restart {
            crashes.clear();
            backoff = Duration::from_millis(20);
            tracing::info!("restarting the extension host on request");
            continue;
        }
        tracing::error!(reason = %reason_text, "the extension host stopped; restarting");
        let now = Instant::now();
        crashes.push_back(now);
        while crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            crashes.pop_front();
        }
        if crashes.len() >= CRASH_LIMIT {
            tracing::error!(
                crashes = crashes.len(),
                "the extension host is in a crash loop; run `sv plugins host restart` after fixing it"
            );
            set_state(
                &inner,
                HostState::CrashLoop {
                    crashes: crashes.len(),
                    last_error: reason_text,
                },
            );
            inner.restart_now.notified().await;
            crashes.clear();
            backoff = Duration::from_millis(20);
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = inner.restart_now.notified() => {},
        }
        backoff = (backoff * 4).min(Duration::from_secs(5));
    }
}

enum Ending {
    Failed(String),
    Restart,
    Shutdown,
}

/// Spawns the host, configures it and serves it until it ends.
async fn run_once(inner: &Arc<Inner>, listener: &UnixListener, restarts: u64) -> Ending {
    if let Some(BeforeStart(prepare)) = inner.command.before_start.clone() {
        match tokio::task::spawn_blocking(move || prepare()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "preparing the extension host's start failed")
            }
            Err(e) => tracing::error!(error = %e, "preparing the extension host's start panicked"),
        }
    }
    let mut command = tokio::process::Command::new(&inner.command.program);
    command
        .args(&inner.command.args)
        .env_clear()
        .envs(inner.command.env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return Ending::Failed(format!("cannot start the extension host: {e}")),
    };
    let pid = child.id().unwrap_or(0);
    let accepted = tokio::select! {
        a = tokio::time::timeout(START_DEADLINE, listener.accept()) => a,
        status = child.wait() => return Ending::Failed(format!("the host exited before connecting: {status:?}")),
    };
    let stream = match accepted {
        Ok(Ok((stream, _))) => stream,
        Ok(Err(e)) => return Ending::Failed(format!("accepting the host's connection: {e}")),
        Err(_) => return Ending::Failed("the host did not connect in time".into()),
    };
    let (reader, mut writer) = stream.into_split();
    // Buffered: under load several frames arrive per read.
    let mut reader = tokio::io::BufReader::new(reader);
    let specs = plugin_specs(&inner.core, inner.command.store_login.clone()).await.unwrap_or_else(|e| {
        tracing::error!(error = ?e, "cannot read the plugin registry; starting the host without plugins");
        vec![]
    });
    let configure = KernelToHost::Configure {
        version: VERSION,
        plugins: specs.clone(),
    };
    match sovereign_protocol::encode(&configure) {
        Ok(frame) => {
            if let Err(e) = writer.write_all(&frame).await {
                return Ending::Failed(format!("configuring the host: {e}"));
            }
        }
        Err(e) => return Ending::Failed(format!("configuring the host: {e}")),
    }
    let ready = tokio::select! {
        r = tokio::time::timeout(START_DEADLINE, read_message(&mut reader)) => r,
        status = child.wait() => return Ending::Failed(format!("the host exited while loading plugins: {status:?}")),
    };
    let (sandbox, plugins) = match ready {
        Ok(Some(HostToKernel::Ready {
            version,
            sandbox,
            plugins,
        })) if version == VERSION => (sandbox, plugins),
        Ok(other) => return Ending::Failed(format!("the host did not report ready: {other:?}")),
        Err(_) => return Ending::Failed("the host did not get ready in time".into()),
    };
    if sandbox != SandboxStatus::Enforced {
        tracing::error!(?sandbox, "THE EXTENSION HOST RUNS WITHOUT A FULL SANDBOX");
    }
    record_loads(inner, &plugins).await;
    // Prove the wall: the host must not be able to open core.db. The host may already
    // be relaying events (committed before a crash): replies are matched to the probe by
    // id, and whatever else arrives first is kept for the reader below.
    let mut early_events = Vec::new();
    let core_db_probe = match &inner.command.core_db {
        None => CoreDbProbe::NoCoreFile,
        Some(core_db) => {
            let probe_id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            let probe = KernelToHost::Probe {
                id: probe_id,
                path: core_db.display().to_string(),
            };
            match sovereign_protocol::encode(&probe) {
                Ok(frame) if writer.write_all(&frame).await.is_ok() => {
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    loop {
                        match tokio::time::timeout_at(deadline, read_message(&mut reader)).await {
                            Ok(Some(HostToKernel::ProbeResult { id, result }))
                                if id == probe_id =>
                            {
                                break match result {
                                    Err(e) => CoreDbProbe::Refused {
                                        error: e.to_string(),
                                    },
                                    Ok(()) => {
                                        tracing::error!(
                                            "THE EXTENSION HOST CAN OPEN core.db: it is not sandboxed"
                                        );
                                        CoreDbProbe::Opened
                                    }
                                };
                            }
                            Ok(Some(HostToKernel::Events { events })) => {
                                early_events.extend(events)
                            }
                            Ok(Some(other)) => {
                                tracing::debug!(message = ?other, "ignoring a message before the probe's answer")
                            }
                            Ok(None) => {
                                return Ending::Failed(
                                    "the host closed its connection before answering the sandbox probe"
                                        .into(),
                                );
                            }
                            Err(_) => {
                                return Ending::Failed(
                                    "the host did not answer the sandbox probe within 5 s".into(),
                                );
                            }
                        }
                    }
                }
                _ => return Ending::Failed("cannot send the sandbox probe".into()),
            }
        }
    };
    set_state(
        inner,
        HostState::Running {
            sandbox,
            plugins,
            restarts,
            pid,
            core_db_probe,
        },
    );

    let (tx, mut rx) = mpsc::unbounded_channel::<KernelToHost>();
    let connection = Arc::new(Connection {
        tx: tx.clone(),
        pending: Mutex::new(HashMap::new()),
    });
    *inner.connection.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection.clone());

    let write_task = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            // Everything queued meanwhile goes out in the same write.
            let mut frames = Vec::new();
            let queued = std::iter::from_fn(|| rx.try_recv().ok()).take(63);
            for message in std::iter::once(message).chain(queued) {
                match sovereign_protocol::encode(&message) {
                    Ok(frame) => frames.extend_from_slice(&frame),
                    Err(e) => {
                        tracing::warn!(error = %e, "a message to the host could not be encoded")
                    }
                }
            }
            if writer.write_all(&frames).await.is_err() {
                break;
            }
        }
    });
    let read_conn = connection.clone();
    let sink = inner.events.clone();
    let ack_tx = tx.clone();
    let last_alive = Arc::new(Mutex::new(Instant::now()));
    let alive = last_alive.clone();
    let denial_counts = inner.clone();
    let logs = inner.logs.clone();
    if !early_events.is_empty() {
        store_events(&sink, &ack_tx, early_events);
    }
    let mut read_task = tokio::spawn(async move {
        while let Some(message) = read_message(&mut reader).await {
            match message {
                HostToKernel::Events { events } => store_events(&sink, &ack_tx, events),
                HostToKernel::Logs { lines } => {
                    if let Some(logs) = &logs {
                        logs(lines);
                    }
                }
                HostToKernel::Alive { denials, .. } => {
                    *alive.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    *denial_counts
                        .denials
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = denials;
                }
                HostToKernel::Response { id, .. } | HostToKernel::ProbeResult { id, .. } => {
                    let waiter = read_conn
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(message);
                    }
                }
                HostToKernel::Ready { .. } => {}
            }
        }
    });

    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut registry_check = tokio::time::interval(REGISTRY_CHECK_EVERY);
    let ending = loop {
        tokio::select! {
            status = child.wait() => break Ending::Failed(format!("the host exited: {status:?}")),
            _ = &mut read_task => break Ending::Failed("the host closed its connection".into()),
            _ = inner.restart_now.notified() => break Ending::Restart,
            _ = inner.shutdown_now.notified() => break Ending::Shutdown,
            _ = registry_check.tick() => {
                // A plugin installed, upgraded, moved or removed while the platform runs:
                // the host loads the registry at start, so start a fresh one.
                if plugin_specs(&inner.core, inner.command.store_login.clone()).await.is_ok_and(|now| now != specs) {
                    tracing::info!("the plugin registry changed; restarting the extension host");
                    break Ending::Restart;
                }
            }
            _ = heartbeat.tick() => {
                let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(KernelToHost::Heartbeat { id });
                let silent = last_alive.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                if silent > HEARTBEAT_DEADLINE {
                    break Ending::Failed(format!("the host missed its heartbeat for {silent:?}"));
                }
            }
        }
    };
    // Fail every waiting request at once, so callers answer 503 instead of hanging.
    *inner.connection.lock().unwrap_or_else(|e| e.into_inner()) = None;
    connection
        .pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let _ = tx.send(KernelToHost::Shutdown);
    if matches!(ending, Ending::Shutdown) {
        // Let it finish what it is doing and exit on its own.
        let _ = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
    }
    read_task.abort();
    write_task.abort();
    let _ = child.start_kill();
    let _ = child.wait().await;
    ending
}
