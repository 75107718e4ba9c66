//! The kernel: core services and the HTTP API, on the trusted side of the boundary.
//!
//! It owns `core.db` (through a small connection pool) and only ever *looks* at the
//! plugin store, read-only and under a deadline, for `/health`.

pub mod activity;
mod api;
pub mod console;
mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod host;
mod metrics;
mod plugin_routes;
mod pool;
mod runtime_lock;
mod server;
pub mod throttle;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use error::ApiError;
pub use metrics::Metrics;
pub use pool::{CommitHook, CorePool};
pub use runtime_lock::{RuntimeLock, RuntimeLockError};

/// Checks that the plugin store answers (blocking; `/health` gives it one second).
pub type PluginStoreProbe = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The probe of a SQLite plugin store file: it opens read-only and is a plugin store.
pub fn sqlite_plugin_store_probe(path: PathBuf) -> PluginStoreProbe {
    Arc::new(move || health::probe_plugin_store(&path))
}

/// What the kernel needs to run.
#[derive(Clone)]
pub struct KernelOptions {
    /// The core store: `core.db`, or a PostgreSQL database.
    pub core: sovereign_db_core::CoreLocation,
    /// How `/health` checks the plugin store answers (a SQLite file, or PostgreSQL).
    pub plugin_store_probe: PluginStoreProbe,
    /// The address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// How long a login session lasts.
    pub session_ttl_seconds: i64,
    /// How to start the extension host; `None` runs without plugins.
    pub host: Option<host::HostCommand>,
    /// What the core does with plugin events, by topic.
    pub event_handlers: events::EventHandlers,
    /// Called after each piece of kernel work that changed `core.db` (wakes the sync
    /// worker).
    pub on_core_commit: Option<CommitHook>,
    /// Routes the application layer serves beside the kernel's own (its operator
    /// endpoints under `/api/admin/`), behind the same limits, metrics and error shape.
    pub routes: axum::Router<AppState>,
    /// Where the lines plugins log go (besides the host's own log).
    pub on_plugin_log: Option<host::PluginLogSink>,
}

/// Shared state of every request handler.
#[derive(Clone)]
pub struct AppState {
    pub(crate) core: CorePool,
    pub(crate) plugin_store_probe: PluginStoreProbe,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) session_ttl_seconds: i64,
    pub(crate) host: Option<host::HostHandle>,
    pub(crate) logins: Arc<throttle::LoginThrottle>,
    pub(crate) kernel_name: Arc<str>,
}

impl AppState {
    /// The kernel's metrics (with each plugin's recent traffic).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The supervised extension host, when the platform runs one.
    pub fn host(&self) -> Option<&host::HostHandle> {
        self.host.as_ref()
    }
}

/// The HTTP router with every route (the kernel's and `routes`) and middleware.
pub fn router(state: AppState, routes: axum::Router<AppState>) -> axum::Router {
    api::router(state, routes)
}

/// The machine's host name (the kernel's name starts with it).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A bound, not yet serving kernel.
pub struct Kernel {
    listener: tokio::net::TcpListener,
    routes: axum::Router<AppState>,
    state: AppState,
}

impl Kernel {
    /// Opens the core pool and binds the listener.
    pub async fn bind(options: &KernelOptions) -> Result<Kernel, StartError> {
        // Opening connects (PostgreSQL's driver blocks on a runtime of its own): off the
        // async threads.
        let (location, on_commit) = (options.core.clone(), options.on_core_commit.clone());
        let core = tokio::task::spawn_blocking(move || CorePool::open(&location, on_commit))
            .await
            .map_err(|e| StartError::Task(e.to_string()))??;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| StartError::Bind(options.listen, e))?;
        let kernel_name: Arc<str> = format!(
            "{}/{} {}",
            host_name(),
            std::process::id(),
            listener
                .local_addr()
                .map_err(|e| StartError::Bind(options.listen, e))?
        )
        .into();
        let metrics = Arc::new(Metrics::new());
        let host = match &options.host {
            Some(command) => Some(
                host::HostHandle::start(
                    command.clone(),
                    core.clone(),
                    events::event_sink(core.clone(), options.event_handlers.clone()),
                    options.on_plugin_log.clone(),
                )
                .map_err(|e| StartError::Host(command.socket.clone(), e))?,
            ),
            None => None,
        };
        Ok(Kernel {
            listener,
            routes: options.routes.clone(),
            state: AppState {
                core,
                plugin_store_probe: options.plugin_store_probe.clone(),
                metrics,
                session_ttl_seconds: options.session_ttl_seconds,
                host,
                logins: Arc::default(),
                kernel_name,
            },
        })
    }

    /// This kernel's name, `host/pid address`: what `/health` calls it and what its sync
    /// session on a PostgreSQL core shows.
    pub fn name(&self) -> String {
        self.state.kernel_name.to_string()
    }

    /// The kernel's metrics (for parts that run beside it, such as the sync worker).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// The supervised extension host, if any.
    pub fn host(&self) -> Option<host::HostHandle> {
        self.state.host.clone()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = router(self.state, self.routes);
        server::serve(self.listener, app, shutdown).await
    }
}

/// Installs SIGINT and SIGTERM handlers now and returns a future that resolves when
/// either arrives. Installing before the server announces itself means a signal sent right
/// after start-up still shuts down gracefully.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static>
{
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        tracing::info!("shutdown requested; finishing in-flight requests");
    })
}

/// Why the kernel could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The core store could not be opened.
    #[error(transparent)]
    Core(#[from] sovereign_db_core::CoreError),
    /// The pool could not be built.
    #[error("cannot open a connection pool on the core store: {0}")]
    Pool(#[from] r2d2::Error),
    /// The task opening the pool failed.
    #[error("opening the core store failed: {0}")]
    Task(String),
    /// The listen address is taken or not allowed.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The host socket could not be created.
    #[error("cannot create the extension host socket {0}: {1}")]
    Host(PathBuf, std::io::Error),
}
