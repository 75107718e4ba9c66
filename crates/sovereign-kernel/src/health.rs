//! `GET /health`: the core store and the plugin store, reported separately. The core is
//! "ok" whatever state the plugin store is in; the plugin store is only looked at
//! read-only, under a deadline, so a locked or broken `plugins.db` cannot hold the
//! answer up.

use std::path::Path;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use sovereign_db::StoreKind;

use crate::AppState;

const PLUGIN_STORE_DEADLINE: Duration = Duration::from_millis(1000);

pub(crate) async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let core = state
        .core
        .run(&state.metrics, |conn| {
            conn.query_row("SELECT count(*) FROM _sv_store", [], |r| r.get::<_, i64>(0))
                .map_err(|e| crate::ApiError::unavailable(e.to_string()))
        })
        .await;
    let core = match core {
        Ok(_) => json!({ "status": "ok" }),
        Err(e) => json!({ "status": "unavailable", "error": format!("{e:?}") }),
    };

    let path = state.plugins_db.clone();
    let probe = tokio::task::spawn_blocking(move || probe_plugin_store(&path));
    let plugins = match tokio::time::timeout(PLUGIN_STORE_DEADLINE, probe).await {
        Ok(Ok(Ok(()))) => json!({ "status": "ok" }),
        Ok(Ok(Err(message))) => {
            state.metrics.database_error("plugins");
            json!({ "status": "unavailable", "error": message })
        }
        Ok(Err(join)) => json!({ "status": "unavailable", "error": join.to_string() }),
        Err(_) => {
            state.metrics.database_error("plugins");
            json!({ "status": "unavailable", "error": "the plugin store did not answer within 1 s" })
        }
    };

    // A plugin the host could not load is served by nobody: that is degraded, not ok.
    let failed_plugins: Vec<&sovereign_protocol::PluginLoad> = Vec::new();
    let host_state = state.host.as_ref().map(|h| h.state());
    let failed_plugins = match &host_state {
        Some(crate::host::HostState::Running { plugins, .. }) => {
            plugins.iter().filter(|p| p.error.is_some()).collect()
        }
        _ => failed_plugins,
    };
    let core_ok = core["status"] == "ok";
    let status = match (
        core_ok,
        plugins["status"] == "ok" && failed_plugins.is_empty(),
    ) {
        (true, true) => "ok",
        (true, false) => "degraded",
        _ => "unavailable",
    };
    let code = if core_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let failed: Vec<Value> = failed_plugins
        .iter()
        .map(|p| json!({ "id": p.id, "error": p.error }))
        .collect();
    let host = match &host_state {
        Some(h) => serde_json::to_value(h)
            .unwrap_or_else(|e| json!({ "status": "unknown", "error": e.to_string() })),
        None => json!({ "status": "disabled" }),
    };
    (
        code,
        Json(json!({
            "status": status, "core": core, "plugins": plugins, "extension_host": host,
            "plugins_not_loaded": failed,
        })),
    )
}

/// Opens the plugin store read-only (never creating it) and checks its marker.
fn probe_plugin_store(path: &Path) -> Result<(), String> {
    let options = sovereign_db::OpenOptions::plugins()
        .read_only()
        .busy_timeout(Duration::from_millis(250));
    let conn = sovereign_db::open_database(path, &options).map_err(|e| e.to_string())?;
    sovereign_db::store::expect(&conn, &StoreKind::Plugins).map_err(|e| e.to_string())
}
