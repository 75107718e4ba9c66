//! The operator console's sessions and the headers that keep it apart from plugin code.
//!
//! The console logs in with the same accounts (administrators only) into a cookie that
//! is `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page sends it)
//! and `Path=/console` (the browser sends it to the console's routes only, and the kernel
//! honours it nowhere else). Requests that change anything also carry the session's
//! anti-CSRF token in a header, which only the console's own page can read. Every
//! console response forbids framing and loads nothing but the console's own files; every
//! plugin response is sandboxed (`Content-Security-Policy: sandbox`), so a plugin that
//! answers with HTML never runs script as the platform's origin.

use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sovereign_db_core::sessions;
use sovereign_db_core::users::{Role, User};

use crate::extract::{CONSOLE_COOKIE, CSRF_HEADER, CurrentUser, console_cookie};
use crate::{ApiError, AppState};

/// The policy of every console response: its own scripts, styles and API only.
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// The policy of every plugin response: a document of its own, never the platform's origin.
pub const PLUGIN_CSP: &str = "sandbox allow-scripts; frame-ancestors 'none'";

/// A console session as the page sees it.
#[derive(Debug, Serialize)]
pub struct ConsoleSession {
    /// The administrator.
    pub user: User,
    /// What the page sends in the `x-csrf-token` header with every change.
    pub csrf_token: String,
    /// The header's name.
    pub csrf_header: &'static str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleLogin {
    email: String,
    password: String,
}

/// `/console/login`, `/console/logout`, `/console/session`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/session", get(session))
}

async fn login(
    State(state): State<AppState>,
    parts: Parts,
    crate::extract::ApiJson(body): crate::extract::ApiJson<ConsoleLogin>,
) -> Result<Response, ApiError> {
    let (token, user) =
        crate::api::open_session(&state, &parts, body.email, body.password, Some(Role::Admin))
            .await?;
    let cookie = format!(
        "{CONSOLE_COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
        state.session_ttl_seconds
    );
    let mut response = Json(ConsoleSession {
        user,
        csrf_token: sessions::csrf_token(&token),
        csrf_header: CSRF_HEADER,
    })
    .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    Ok(response)
}

async fn session(
    parts: Parts,
    CurrentUser(user): CurrentUser,
) -> Result<Json<ConsoleSession>, ApiError> {
    if user.role != Role::Admin {
        return Err(ApiError::forbidden("the console is for administrators"));
    }
    let token = console_cookie(&parts.headers)
        .ok_or_else(|| ApiError::unauthorized("not logged in to the console"))?;
    Ok(Json(ConsoleSession {
        user,
        csrf_token: sessions::csrf_token(&token),
        csrf_header: CSRF_HEADER,
    }))
}

async fn logout(
    State(state): State<AppState>,
    parts: Parts,
    CurrentUser(_): CurrentUser,
) -> Result<Response, ApiError> {
    if let Some(token) = console_cookie(&parts.headers) {
        state
            .core
            .run(&state.metrics, move |conn| {
                Ok(sessions::delete(conn, &token)?)
            })
            .await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "sv_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(response)
}

/// Adds the console's headers to every response under `/console`.
pub(crate) async fn console_headers(request: Request, next: Next) -> Response {
    let console = request.uri().path() == "/console"
        || request
            .uri()
            .path()
            .starts_with(crate::extract::CONSOLE_PREFIX);
    let mut response = next.run(request).await;
    if console {
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONSOLE_CSP),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    response
}
