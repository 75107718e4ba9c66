//! The operator endpoints the platform serves beside the kernel's API, under
//! `/api/admin/` (administrators only): the same functions `sv` calls, answering JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use sovereign_kernel::extract::{AdminUser, ApiJson, ApiPath};
use sovereign_kernel::{ApiError, AppState};

use crate::{App, PlatformError, plugins, sync};

/// `GET /api/admin/plugins`, `POST /api/admin/plugins/{id}/enable|disable`,
/// `POST /api/admin/plugins/{id}/sql` (`{"sql": "..."}`: one statement behind the
/// plugin's fence), `GET /api/admin/plugins/{id}/events?limit=`, `GET /api/admin/storage`,
/// `GET /api/admin/sync`.
pub fn routes(app: Arc<App>) -> axum::Router<AppState> {
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
    axum::Router::new()
        .route(
            "/api/admin/plugins",
            get({
                let app = app.clone();
                move |_: AdminUser| async move {
                    blocking(move || plugins::list(&app)).await
                }
            }),
        )
        .route(
            "/api/admin/plugins/{id}/sql",
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
            "/api/admin/plugins/{id}/events",
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
            "/api/admin/plugins/{id}/logs",
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
        .route("/api/admin/plugins/{id}/enable", post(on(true)))
        .route("/api/admin/plugins/{id}/disable", post(on(false)))
        .route(
            "/api/admin/storage",
            get({
                let app = app.clone();
                move |_: AdminUser| async move {
                    blocking(move || plugins::inspect(&app, None)).await
                }
            }),
        )
        .route(
            "/api/admin/sync",
            get(move |_: AdminUser| async move { blocking(move || sync::status(&app)).await }),
        )
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
        PlatformError::NotRegistered { .. } => ApiError::not_found(message),
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
