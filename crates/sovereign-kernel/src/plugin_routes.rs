//! `/api/plugins/<id>/...`: authenticated, enabled-checked, size-capped requests
//! forwarded to the extension host.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sovereign_db_core::users::Role;
use sovereign_protocol::{Caller, HostError, HttpRequest};

use crate::extract::{ApiPath, bearer_token_from, invalid_session};
use crate::host::CallError;
use crate::{ApiError, AppState};

/// Largest request body forwarded to a plugin.
pub(crate) const MAX_PLUGIN_BODY: usize = 1024 * 1024;

/// Request headers a plugin may see (never credentials or cookies).
const FORWARDED_HEADERS: &[&str] = &[
    "content-type",
    "accept",
    "accept-language",
    "if-none-match",
    "if-match",
];
/// Response headers a plugin may set.
const RETURNED_HEADERS: &[&str] = &[
    "content-type",
    "cache-control",
    "etag",
    "location",
    "content-language",
];

/// The path of a plugin route: `/api/plugins/{id}` or `/api/plugins/{id}/{*rest}`.
#[derive(serde::Deserialize)]
pub(crate) struct PluginPath {
    id: String,
    #[serde(default)]
    rest: String,
}

pub(crate) async fn handle(
    State(state): State<AppState>,
    ApiPath(PluginPath { id, rest }): ApiPath<PluginPath>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = match bearer_token_from(&headers) {
        Ok(token) => token,
        Err(e) => return e.into_response(),
    };
    // The caller's session and the plugin's registry entry in one trip to the core
    // store: this is the hot path of every plugin request.
    let lookup = id.clone();
    let found = state
        .core
        .run(&state.metrics, move |conn| {
            let user = sovereign_db_core::sessions::user_for_token(conn, &token)?;
            let route = sovereign_db_core::plugins::routing_info(conn, &lookup)?;
            Ok((user, route))
        })
        .await;
    let (user, record) = match found {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    // Unauthenticated callers learn nothing about which plugins exist.
    let Some(user) = user else {
        return invalid_session().into_response();
    };
    let Some((enabled, manifest)) = record else {
        return ApiError::not_found(format!("no plugin {id:?} is installed")).into_response();
    };
    if !enabled {
        return ApiError::not_found(format!("plugin {id} is disabled")).into_response();
    }
    let Some(host) = state.host.clone() else {
        return unavailable(60, "this platform runs without an extension host");
    };
    let request_ms = u64::from(manifest.limits.request_ms);
    let request = HttpRequest {
        method: method.as_str().to_owned(),
        path: format!("/{rest}"),
        query: uri.query().unwrap_or_default().to_owned(),
        headers: headers
            .iter()
            .filter(|(name, _)| FORWARDED_HEADERS.contains(&name.as_str()))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect(),
        body: body.to_vec(),
    };
    let caller = Caller {
        user_id: user.id,
        tenant_id: user.tenant_id,
        roles: vec![
            match user.role {
                Role::Admin => "admin",
                Role::Member => "member",
            }
            .to_owned(),
        ],
    };
    // The host enforces request_ms itself; the kernel waits a little longer.
    let started = std::time::Instant::now();
    let response = forward(&id, &host, request, caller, request_ms).await;
    state.metrics.observe_plugin_request(
        &id,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Sends the request to the host and turns its answer (or failure) into a response.
async fn forward(
    id: &str,
    host: &crate::host::HostHandle,
    request: HttpRequest,
    caller: Caller,
    request_ms: u64,
) -> Response {
    match host.call(id, request, caller, Duration::from_millis(request_ms + 1000)).await {
        Ok(response) => {
            let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut out = (status, response.body).into_response();
            // Whatever a plugin answers is a document of its own origin, never ours.
            out.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(crate::console::PLUGIN_CSP),
            );
            out.headers_mut()
                .insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            for (name, value) in response.headers {
                let lower = name.to_ascii_lowercase();
                if RETURNED_HEADERS.contains(&lower.as_str())
                    && let (Ok(n), Ok(v)) = (HeaderName::try_from(lower), HeaderValue::try_from(value))
                {
                    out.headers_mut().insert(n, v);
                }
            }
            out
        }
        Err(CallError::Unavailable { retry_after }) => unavailable(retry_after, "the extension host is restarting; try again shortly"),
        Err(CallError::Timeout) | Err(CallError::Host(HostError::Deadline)) => {
            (StatusCode::GATEWAY_TIMEOUT, axum::Json(serde_json::json!({ "error": { "code": "plugin_timeout", "message": format!("plugin {id} did not answer within {request_ms} ms") } }))).into_response()
        }
        Err(CallError::Host(HostError::UnknownPlugin(_))) => {
            ApiError::not_found(format!("plugin {id} is not loaded by the extension host")).into_response()
        }
        Err(CallError::Host(HostError::NotLoaded(reason))) => unavailable(60, &format!("plugin {id} could not be loaded: {reason}")),
        Err(CallError::Host(HostError::LimitExceeded(reason))) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, "60")],
            axum::Json(serde_json::json!({ "error": { "code": "plugin_limit", "message": format!("plugin {id}: {reason}") } })),
        )
            .into_response(),
        Err(CallError::Host(HostError::Trap(reason))) => ApiError::internal(format!("plugin {id} failed: {reason}")).into_response(),
        Err(CallError::Host(HostError::Internal(reason))) => ApiError::internal(format!("extension host: {reason}")).into_response(),
    }
}

fn unavailable(retry_after: u64, message: &str) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(
            serde_json::json!({ "error": { "code": "plugins_unavailable", "message": message } }),
        ),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}
