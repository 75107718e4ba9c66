//! `GET /health`: the core store and the plugin store, reported separately. The core is
//! "ok" whatever state the plugin store is in; the plugin store is only looked at
//! read-only, under a deadline, so a locked or broken `plugins.db` cannot hold the
//! answer up.

use std::path::Path;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sovereign_db::StoreKind;

use crate::AppState;
pub use crate::host::CoreDbProbe;
use crate::host::HostState;

const PLUGIN_STORE_DEADLINE: Duration = Duration::from_millis(1000);

/// The answer of `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The platform as a whole.
    pub status: Overall,
    /// The core store.
    pub core: StoreHealth,
    /// The shared plugin store.
    pub plugins: StoreHealth,
    /// The extension host.
    pub extension_host: ExtensionHost,
    /// Plugins the running host could not load (served by nobody).
    pub plugins_not_loaded: Vec<sovereign_protocol::PluginLoad>,
    /// This kernel, the kernels sharing its core, and which one leads the sync.
    pub sync: SyncHealth,
}

/// Who publishes the mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncHealth {
    /// The kernel that answered (`host/pid address`).
    pub kernel: String,
    /// The kernel publishing the mirror now: this one on a SQLite core; on a PostgreSQL
    /// core the holder of the leader lock (`None` while it changes hands, or when the
    /// core does not answer).
    pub leader: Option<String>,
    /// Every kernel serving the core (this one alone on a SQLite core).
    pub kernels: Vec<String>,
}

/// The platform as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overall {
    /// Everything works.
    Ok,
    /// The core works; the plugin side does not fully.
    Degraded,
    /// The core store does not answer.
    Unavailable,
}

/// One store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StoreHealth {
    /// Answers.
    Ok,
    /// Does not answer.
    Unavailable {
        /// Why.
        error: String,
    },
}

/// The extension host, if the platform runs one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExtensionHost {
    /// The watchdog's view of it.
    Watched(HostState),
    /// This platform runs without an extension host (`{"status": "disabled"}`).
    Disabled(NoHost),
}

/// The tag of [`ExtensionHost::Disabled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum NoHost {
    /// No extension host.
    Disabled,
}

pub(crate) async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let core = state
        .core
        .run(&state.metrics, |conn| {
            sovereign_db_core::health::ping(conn)
                .map_err(|e| crate::ApiError::unavailable(e.to_string()))
        })
        .await;
    let kernels = state
        .core
        .run(&state.metrics, |conn| {
            sovereign_db_core::health::kernels(conn)
                .map_err(|e| crate::ApiError::unavailable(e.to_string()))
        })
        .await;
    let this = state.kernel_name.to_string();
    let sync = match kernels {
        Ok(Some(kernels)) => SyncHealth {
            kernel: this,
            leader: kernels.sync_leader,
            kernels: kernels.running,
        },
        Ok(None) => SyncHealth {
            leader: Some(this.clone()),
            kernels: vec![this.clone()],
            kernel: this,
        },
        Err(_) => SyncHealth {
            kernel: this,
            leader: None,
            kernels: Vec::new(),
        },
    };
    let core = match core {
        Ok(_) => StoreHealth::Ok,
        Err(e) => StoreHealth::Unavailable {
            error: format!("{e:?}"),
        },
    };

    let probe = state.plugin_store_probe.clone();
    let probe = tokio::task::spawn_blocking(move || probe());
    let plugins = match tokio::time::timeout(PLUGIN_STORE_DEADLINE, probe).await {
        Ok(Ok(Ok(()))) => StoreHealth::Ok,
        Ok(Ok(Err(error))) => {
            state.metrics.database_error("plugins");
            StoreHealth::Unavailable { error }
        }
        Ok(Err(join)) => StoreHealth::Unavailable {
            error: join.to_string(),
        },
        Err(_) => {
            state.metrics.database_error("plugins");
            StoreHealth::Unavailable {
                error: "the plugin store did not answer within 1 s".into(),
            }
        }
    };

    // A plugin the host could not load is served by nobody: that is degraded, not ok.
    let extension_host = match state.host.as_ref() {
        Some(h) => ExtensionHost::Watched(h.state()),
        None => ExtensionHost::Disabled(NoHost::Disabled),
    };
    let plugins_not_loaded = match &extension_host {
        ExtensionHost::Watched(HostState::Running { plugins, .. }) => plugins
            .iter()
            .filter(|p| p.error.is_some())
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let core_ok = core == StoreHealth::Ok;
    let status = match (
        core_ok,
        plugins == StoreHealth::Ok && plugins_not_loaded.is_empty(),
    ) {
        (true, true) => Overall::Ok,
        (true, false) => Overall::Degraded,
        _ => Overall::Unavailable,
    };
    let code = if core_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Health {
            status,
            core,
            plugins,
            extension_host,
            plugins_not_loaded,
            sync,
        }),
    )
}

/// Opens the plugin store read-only (never creating it) and checks its marker.
pub(crate) fn probe_plugin_store(path: &Path) -> Result<(), String> {
    let options = sovereign_db::OpenOptions::plugins()
        .read_only()
        .busy_timeout(Duration::from_millis(250));
    let conn = sovereign_db::open_database(path, &options).map_err(|e| e.to_string())?;
    sovereign_db::store::expect(&conn, &StoreKind::Plugins).map_err(|e| e.to_string())
}
