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

/// The authenticated caller.
pub(crate) struct CurrentUser(pub(crate) User);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(parts)?;
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
