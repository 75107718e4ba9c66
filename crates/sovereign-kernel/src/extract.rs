//! Request extractors shared by the API and the plugin routes: path and JSON bodies
//! whose rejections use the API's error shape, and the authenticated caller.

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use sovereign_db_core::sessions;
use sovereign_db_core::users::{Role, User};

use crate::{ApiError, AppState};

/// Path parameters whose rejections use the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// A JSON body whose rejections use the API's error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// The cookie holding a console session (`Path=/console`, `HttpOnly`,
/// `SameSite=Strict`): the browser sends it to the console only, and no script reads it.
pub const CONSOLE_COOKIE: &str = "sv_console";

/// The header a console page sends its session's anti-CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Where the console's routes live; the console cookie counts nowhere else.
pub const CONSOLE_PREFIX: &str = "/console/";

/// The authenticated caller.
pub(crate) struct CurrentUser(pub(crate) User);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = session_token(parts)?;
        let user = state
            .core
            .run(&state.metrics, move |conn| {
                Ok(sessions::user_for_token(conn, &token)?)
            })
            .await?;
        user.map(CurrentUser).ok_or_else(invalid_session)
    }
}

/// The authenticated caller, who must be an admin.
pub struct AdminUser(pub User);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let CurrentUser(user) = CurrentUser::from_request_parts(parts, state).await?;
        if user.role != Role::Admin {
            return Err(ApiError::forbidden("this endpoint is for administrators"));
        }
        Ok(AdminUser(user))
    }
}

pub(crate) fn bearer_token(parts: &Parts) -> Result<String, ApiError> {
    bearer_token_from(&parts.headers)
}

/// The session of a request: `Authorization: Bearer`, or under [`CONSOLE_PREFIX`] the
/// console cookie, in which case a request that changes anything must also carry the
/// session's anti-CSRF token (a cookie is sent by the browser whoever built the request;
/// the token only by the console's own page).
pub(crate) fn session_token(parts: &Parts) -> Result<String, ApiError> {
    // A nested router sees its own part of the path; the whole one decides.
    let path = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(parts.uri.path(), |original| original.0.path());
    if parts.headers.contains_key(header::AUTHORIZATION) || !path.starts_with(CONSOLE_PREFIX) {
        return bearer_token(parts);
    }
    let token = console_cookie(&parts.headers).ok_or_else(|| {
        ApiError::unauthorized("not logged in to the console; log in at /console")
    })?;
    if !parts.method.is_safe() {
        let sent = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !same_secret(sent, &sessions::csrf_token(&token)) {
            return Err(ApiError::forbidden(
                "the request lacks the console's anti-CSRF token; reload the console and try again",
            ));
        }
    }
    Ok(token)
}

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |differ, (x, y)| differ | (x ^ y))
            == 0
}

/// The console session token of the request's cookies, if any.
pub(crate) fn console_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == CONSOLE_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The session token of `Authorization: Bearer <token>`.
pub(crate) fn bearer_token_from(headers: &axum::http::HeaderMap) -> Result<String, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <token>` header"))?;
    header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))
}

/// The answer to a token that names no live session.
pub(crate) fn invalid_session() -> ApiError {
    ApiError::unauthorized("the session token is invalid or expired; log in again")
}
