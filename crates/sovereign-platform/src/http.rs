//! The operator endpoints the platform serves beside the kernel's API, under
//! `/api/admin/` (administrators only): the same functions `sv` calls, answering JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use sovereign_kernel::extract::{AdminUser, ApiJson, ApiPath};
use sovereign_kernel::{ApiError, AppState};

use crate::console::{CONSOLE_CSS, CONSOLE_JS, Console, INDEX_HTML};
use crate::{App, PlatformError, plugins, sync};

/// The operator endpoints, under `/api/admin/` for scripts (a bearer token) and under
/// `/console/api/` for the console's page (its cookie and anti-CSRF token), and the
/// console's page itself (`/console`). Plugins: `GET plugins` (the panel: usage, quota,
/// traffic, denials, last problem), `POST plugins/{id}/enable|disable`,
/// `POST plugins/{id}/purge` (`{"confirm": "<id>"}`; a backup first),
/// `POST plugins/{id}/sql` (`{"sql": "..."}`: one statement behind the plugin's fence),
/// `GET plugins/{id}/events?limit=`, `GET plugins/{id}/logs?limit=`. Stores:
/// `GET storage`, `GET stores`. Sync: `GET sync`, `GET sync/history`,
/// `POST sync/reconcile`. Host: `GET host`, `POST host/restart`. Backups: `GET backups`,
/// `POST backups` (start one), `GET backups/job`, `POST backups/{name}/verify`.
/// Logs: `GET audit?plugin=&before=&limit=`, `GET events?plugin=&topic=&before=&limit=`.
pub fn routes(app: Arc<App>, console: Arc<Console>) -> axum::Router<AppState> {
    let admin = admin_routes(app, console);
    axum::Router::new()
        .nest("/api/admin", admin.clone())
        .nest("/console/api", admin)
        .route(
            "/console",
            get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/console.js",
            get(|| async { page("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { page("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
}

/// One of the console's embedded files (revalidated on every load: they change with `sv`).
fn page(content_type: &'static str, body: &'static str) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn admin_routes(app: Arc<App>, console: Arc<Console>) -> axum::Router<AppState> {
    let on = |enabled: bool| {
        let app = app.clone();
        move |AdminUser(admin): AdminUser, ApiPath(id): ApiPath<String>| {
            let app = app.clone();
            async move {
                blocking(move || {
                    plugins::set_enabled(&app, &id, enabled, Some(admin.id))?;
                    Ok(Toggled { id, enabled })
                })
                .await
            }
        }
    };
    // Each handler gets its own handles on the app and the console.
    let with = || (app.clone(), console.clone());
    axum::Router::new()
        .route(
            "/plugins",
            get({
                let (app, console) = with();
                move |_: AdminUser, State(state): State<AppState>| async move {
                    blocking(move || crate::console::plugins(&app, &console, &state)).await
                }
            }),
        )
        .route(
            "/plugins/{id}/sql",
            post({
                let app = app.clone();
                move |AdminUser(admin): AdminUser,
                      ApiPath(id): ApiPath<String>,
                      ApiJson(body): ApiJson<SqlBody>| async move {
                    blocking(move || plugins::sql(&app, &id, &body.sql, Some(admin.id))).await
                }
            }),
        )
        .route(
            "/plugins/{id}/events",
            get({
                let app = app.clone();
                move |_: AdminUser,
                      ApiPath(id): ApiPath<String>,
                      Query(page): Query<LimitQuery>| async move {
                    blocking(move || plugins::events(&app, &id, page.limit.unwrap_or(100).min(1000)))
                        .await
                }
            }),
        )
        .route(
            "/plugins/{id}/logs",
            get({
                let app = app.clone();
                move |_: AdminUser,
                      ApiPath(id): ApiPath<String>,
                      Query(page): Query<LimitQuery>| async move {
                    let count = page.limit.unwrap_or(100).min(1000) as usize;
                    blocking(move || crate::plugin_logs::recent(&app, &id, count)).await
                }
            }),
        )
        .route(
            "/plugins/{id}/purge",
            post({
                let (app, console) = with();
                move |AdminUser(admin): AdminUser,
                      ApiPath(id): ApiPath<String>,
                      ApiJson(body): ApiJson<PurgeBody>| async move {
                    blocking(move || {
                        if body.confirm != id {
                            return Err(PlatformError::PurgeNotConfirmed { id });
                        }
                        let plan = plugins::plan_purge(&app, &id)?;
                        let report = plugins::purge(&app, &plan, true)?;
                        sovereign_db_core::audit::record(
                            &app.open_migrated_core()?,
                            Some(admin.id),
                            "plugin.purge",
                            Some(&format!("plugin:{id}")),
                            None,
                        )?;
                        console.storage_changed(&app);
                        Ok(report)
                    })
                    .await
                }
            }),
        )
        .route("/plugins/{id}/enable", post(on(true)))
        .route("/plugins/{id}/disable", post(on(false)))
        .route(
            "/storage",
            get({
                let (app, console) = with();
                move |_: AdminUser| async move {
                    blocking(move || Ok((*console.storage(&app)?).clone())).await
                }
            }),
        )
        .route(
            "/stores",
            get({
                let (app, console) = with();
                move |_: AdminUser| async move {
                    blocking(move || crate::console::stores(&app, &console)).await
                }
            }),
        )
        .route(
            "/sync",
            get({
                let app = app.clone();
                move |_: AdminUser| async move { blocking(move || sync::status(&app)).await }
            }),
        )
        .route(
            "/sync/history",
            get({
                let console = console.clone();
                move |_: AdminUser| async move { Json(console.lag_history()) }
            }),
        )
        .route(
            "/sync/reconcile",
            post({
                let app = app.clone();
                move |AdminUser(_): AdminUser| async move {
                    blocking(move || sync::reconcile(&app, false, &|_, _| {})).await
                }
            }),
        )
        .route(
            "/host",
            get(|_: AdminUser, State(state): State<AppState>| async move {
                Json(crate::console::host(&state))
            }),
        )
        .route(
            "/host/restart",
            post(
                |AdminUser(admin): AdminUser, State(state): State<AppState>| async move {
                    let Some(host) = state.host() else {
                        return Err(ApiError::unavailable(
                            "this platform runs without an extension host",
                        ));
                    };
                    host.restart();
                    tracing::info!(admin = admin.id, "the console restarted the extension host");
                    Ok(StatusCode::ACCEPTED)
                },
            ),
        )
        .route(
            "/backups",
            get({
                let (app, console) = with();
                move |_: AdminUser| async move {
                    blocking(move || crate::console::backups(&app, &console, 20)).await
                }
            })
            .post({
                let (app, console) = with();
                move |AdminUser(_): AdminUser| async move {
                    blocking(move || console.start_backup((*app).clone())).await
                }
            }),
        )
        .route(
            "/backups/job",
            get({
                let console = console.clone();
                move |_: AdminUser| async move { Json(console.backup_job()) }
            }),
        )
        .route(
            "/backups/{name}/verify",
            post({
                let (app, console) = with();
                move |AdminUser(_): AdminUser, ApiPath(name): ApiPath<String>| async move {
                    blocking(move || console.verify(&app, &name)).await
                }
            }),
        )
        .route(
            "/audit",
            get({
                let app = app.clone();
                move |_: AdminUser, Query(q): Query<PageQuery>| async move {
                    blocking(move || {
                        crate::console::audit(&app, q.plugin.as_deref(), q.before, q.limit())
                    })
                    .await
                }
            }),
        )
        .route(
            "/events",
            get({
                let app = app.clone();
                move |_: AdminUser, Query(q): Query<PageQuery>| async move {
                    blocking(move || {
                        let limit = q.limit();
                        let filter = sovereign_db_core::events::EventFilter {
                            plugin: q.plugin,
                            topic: q.topic,
                            before: q.before,
                        };
                        crate::console::events(&app, &filter, limit)
                    })
                    .await
                }
            }),
        )
}

/// The body of `POST .../plugins/{id}/purge`: the id typed again.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    confirm: String,
}

/// The query of the audit log and the event inbox: filters and a page.
#[derive(Debug, Deserialize)]
struct PageQuery {
    plugin: Option<String>,
    topic: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

impl PageQuery {
    fn limit(&self) -> u32 {
        self.limit.unwrap_or(50).clamp(1, 500)
    }
}

/// The body of `POST /api/admin/plugins/{id}/sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlBody {
    sql: String,
}

/// The query of `GET /api/admin/plugins/{id}/events` and `.../logs`: how many (the
/// newest; 100 unless given, at most 1,000).
#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<u32>,
}

/// The answer to enabling or disabling a plugin.
#[derive(Debug, Serialize)]
struct Toggled {
    id: String,
    enabled: bool,
}

/// Runs a platform function on the blocking pool and answers its result as JSON.
async fn blocking<T: Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<T, PlatformError> + Send + 'static,
) -> Result<Json<T>, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(Json(value)),
        Ok(Err(e)) => Err(api_error(&e)),
        Err(e) => Err(ApiError::internal(format!("the operation failed: {e}"))),
    }
}

/// The HTTP status of a platform error: refusals the caller can fix are 4xx.
fn api_error(e: &PlatformError) -> ApiError {
    let message = e.to_string();
    match e {
        PlatformError::NotRegistered { .. }
        | PlatformError::NoSuchBackup { .. }
        | PlatformError::NothingToPurge { .. } => ApiError::not_found(message),
        PlatformError::PurgeNotConfirmed { .. } => ApiError::bad_request(message),
        PlatformError::BackupRunning => {
            ApiError::new_status(StatusCode::CONFLICT, "conflict", message)
        }
        PlatformError::PluginStore(
            sovereign_db_plugins::PluginStoreError::BadId(_)
            | sovereign_db_plugins::PluginStoreError::ReservedId { .. },
        ) => ApiError::bad_request(message),
        PlatformError::Fence(sovereign_db_plugins::FenceError::Denied { .. }) => {
            ApiError::forbidden(message)
        }
        PlatformError::Fence(_) => ApiError::bad_request(message),
        PlatformError::CoreMissing { .. } | PlatformError::CoreNotMigrated { .. } => {
            ApiError::unavailable(message)
        }
        _ => ApiError::new_status(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
    }
}
