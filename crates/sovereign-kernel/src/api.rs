//! The kernel's HTTP API: authentication, users, settings, health and metrics.

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use sovereign_db_core::users::{
    NewUser, Role, User, UserPatch, validate_avatar_url, validate_display_name, validate_email,
    validate_password,
};
use sovereign_db_core::{audit, sessions, settings, users};

use crate::extract::{AdminUser, ApiJson, ApiPath, CurrentUser, bearer_token};
use crate::{ApiError, AppState, health, metrics};

pub(crate) fn router(state: AppState, routes: Router<AppState>) -> Router {
    Router::new()
        .merge(routes)
        .merge(crate::console::routes())
        .route("/health", get(health::health))
        .route("/metrics", get(metrics_text))
        .route("/api/auth/login", post(login))
        .route("/api/auth/logout", post(logout))
        .route("/api/auth/me", get(me))
        .route("/api/users", get(list_users).post(create_user))
        .route(
            "/api/users/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/api/activity", get(my_activity))
        .route("/api/admin/login-locks", get(list_login_locks))
        .route(
            "/api/admin/login-locks/{kind}/{key}",
            axum::routing::delete(clear_login_lock),
        )
        .route(
            "/api/plugins/{id}",
            axum::routing::any(crate::plugin_routes::handle),
        )
        .route(
            "/api/plugins/{id}/{*rest}",
            axum::routing::any(crate::plugin_routes::handle),
        )
        .route("/api/settings", get(list_settings))
        .route(
            "/api/settings/{key}",
            get(get_setting).put(put_setting).delete(delete_setting),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new_status(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on this route"),
            )
        })
        .layer(axum::middleware::from_fn(crate::console::console_headers))
        .layer(axum::middleware::from_fn(crate::server::bounded_request))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    metrics::refresh(&state).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

// ---------------------------------------------------------------- authentication

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    parts: Parts,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Json<Value>, ApiError> {
    let ttl = state.session_ttl_seconds;
    let (token, user) = open_session(&state, &parts, body.email, body.password, None).await?;
    Ok(Json(
        json!({ "token": token, "expires_in": ttl, "user": user }),
    ))
}

/// Checks an e-mail address and password under the login throttle and opens a session
/// (audited); returns its token and the user. With `required_role`, a user of another
/// role is refused and gets no session.
pub(crate) async fn open_session(
    state: &AppState,
    parts: &Parts,
    email: String,
    password: String,
    required_role: Option<Role>,
) -> Result<(String, User), ApiError> {
    let ttl = state.session_ttl_seconds;
    let address = crate::server::peer(parts).map(|p| p.ip());
    let email = email.trim().to_owned();
    // Locked keys are refused before any password is verified.
    let locks = state.logins.attempt(&email, address).map_err(|wait| {
        ApiError::too_many_requests(wait, "too many failed logins; wait before trying again")
    })?;
    let logins = state.logins.clone();
    state
        .core
        .run(&state.metrics, move |conn| {
            let Some(user) = users::authenticate(conn, &email, &password)? else {
                for lock in &locks {
                    tracing::warn!(key = %lock.key, seconds = lock.duration.as_secs(), "login throttled");
                    audit::record(
                        conn,
                        None,
                        "auth.throttled",
                        Some(&lock.key.to_string()),
                        Some(&json!({
                            "failures": lock.failures,
                            "locked_seconds": lock.duration.as_secs(),
                        })),
                    )?;
                }
                return Err(ApiError::unauthorized("wrong e-mail address or password"));
            };
            logins.succeeded(&email, address);
            if required_role.is_some_and(|role| role != user.role) {
                return Err(ApiError::forbidden("this is for administrators only"));
            }
            let token = sessions::create(conn, user.id, ttl)?;
            audit::record(
                conn,
                Some(user.id),
                "auth.login",
                Some(&format!("user:{}", user.id)),
                None,
            )?;
            Ok((token, user))
        })
        .await
}

async fn list_login_locks(
    State(state): State<AppState>,
    _admin: AdminUser,
) -> Json<Vec<crate::throttle::LockInfo>> {
    Json(state.logins.list())
}

async fn clear_login_lock(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiPath((kind, key)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    use crate::throttle::LockKey;
    let lock = match kind.as_str() {
        "account" => LockKey::Account(key.trim().to_lowercase()),
        "address" => LockKey::Address(
            key.parse()
                .map_err(|_| ApiError::bad_request(format!("{key:?} is not an IP address")))?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "{other:?} is not a kind of lock: use `account` or `address`"
            )));
        }
    };
    if !state.logins.clear(&lock) {
        return Err(ApiError::not_found(format!(
            "{lock} has no failures or lock"
        )));
    }
    state
        .core
        .run(&state.metrics, move |conn| {
            audit::record(
                conn,
                Some(admin.id),
                "auth.lock_cleared",
                Some(&lock.to_string()),
                None,
            )?;
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn logout(State(state): State<AppState>, parts: Parts) -> Result<StatusCode, ApiError> {
    let token = bearer_token(&parts)?;
    let ended = state
        .core
        .run(&state.metrics, move |conn| {
            Ok(sessions::delete(conn, &token)?)
        })
        .await?;
    if ended {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::unauthorized(
            "the session token is invalid or already ended",
        ))
    }
}

async fn me(CurrentUser(user): CurrentUser) -> Json<User> {
    Json(user)
}

/// The caller's activity feed (what core handlers made of plugin events).
async fn my_activity(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> Result<Json<Vec<sovereign_db_core::events::Activity>>, ApiError> {
    state
        .core
        .run(&state.metrics, move |conn| {
            Ok(Json(sovereign_db_core::events::activity(
                conn, user.id, 100,
            )?))
        })
        .await
}

// ---------------------------------------------------------------- users

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUserBody {
    email: String,
    password: String,
    display_name: String,
    #[serde(default)]
    avatar_url: Option<String>,
    #[serde(default)]
    role: Option<Role>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchUserBody {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    avatar_url: Option<Option<String>>,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    active: Option<bool>,
    #[serde(default)]
    password: Option<String>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl From<users::InvalidField> for ApiError {
    fn from(e: users::InvalidField) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

async fn list_users(
    State(state): State<AppState>,
    _admin: AdminUser,
) -> Result<Json<Vec<User>>, ApiError> {
    state
        .core
        .run(&state.metrics, |conn| Ok(Json(users::list(conn)?)))
        .await
}

async fn create_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiJson(body): ApiJson<CreateUserBody>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let new = NewUser {
        email: validate_email(&body.email)?,
        password: {
            validate_password(&body.password)?;
            body.password
        },
        display_name: validate_display_name(&body.display_name)?,
        avatar_url: body
            .avatar_url
            .as_deref()
            .map(validate_avatar_url)
            .transpose()?,
        role: body.role.unwrap_or(Role::Member),
        tenant_id: admin.tenant_id,
    };
    state
        .core
        .run(&state.metrics, move |conn| {
            let user = users::create(conn, &new)?;
            audit::record(
                conn,
                Some(admin.id),
                "user.create",
                Some(&format!("user:{}", user.id)),
                Some(&json!({ "role": user.role })),
            )?;
            Ok((StatusCode::CREATED, Json(user)))
        })
        .await
}

async fn get_user(
    State(state): State<AppState>,
    _admin: AdminUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<User>, ApiError> {
    state
        .core
        .run(&state.metrics, move |conn| {
            users::get(conn, id)?
                .map(Json)
                .ok_or_else(|| ApiError::not_found(format!("no user with id {id}")))
        })
        .await
}

async fn update_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<PatchUserBody>,
) -> Result<Json<User>, ApiError> {
    if let Some(p) = &body.password {
        validate_password(p)?;
    }
    let patch = UserPatch {
        email: body.email.as_deref().map(validate_email).transpose()?,
        display_name: body
            .display_name
            .as_deref()
            .map(validate_display_name)
            .transpose()?,
        avatar_url: match body.avatar_url {
            Some(Some(url)) => Some(Some(validate_avatar_url(&url)?)),
            other => other,
        },
        role: body.role,
        active: body.active,
        password: body.password,
    };
    let changed: Vec<&str> = [
        ("email", patch.email.is_some()),
        ("display_name", patch.display_name.is_some()),
        ("avatar_url", patch.avatar_url.is_some()),
        ("role", patch.role.is_some()),
        ("active", patch.active.is_some()),
        ("password", patch.password.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    state
        .core
        .run(&state.metrics, move |conn| {
            let user = users::update(conn, id, &patch)?
                .ok_or_else(|| ApiError::not_found(format!("no user with id {id}")))?;
            audit::record(
                conn,
                Some(admin.id),
                "user.update",
                Some(&format!("user:{id}")),
                Some(&json!({ "fields": changed })),
            )?;
            Ok(Json(user))
        })
        .await
}

async fn delete_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    state
        .core
        .run(&state.metrics, move |conn| {
            if !users::delete(conn, id)? {
                return Err(ApiError::not_found(format!("no user with id {id}")));
            }
            audit::record(
                conn,
                Some(admin.id),
                "user.delete",
                Some(&format!("user:{id}")),
                None,
            )?;
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}

// ---------------------------------------------------------------- settings

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutSettingBody {
    value: Value,
}

fn checked_key(key: String) -> Result<String, ApiError> {
    if settings::valid_key(&key) {
        Ok(key)
    } else {
        Err(ApiError::invalid(
            "key",
            "setting keys are 1 to 128 characters of a-z, 0-9, `.`, `_` and `-`, starting with a letter",
        ))
    }
}

async fn list_settings(
    State(state): State<AppState>,
    _admin: AdminUser,
) -> Result<Json<Vec<settings::Setting>>, ApiError> {
    state
        .core
        .run(&state.metrics, |conn| Ok(Json(settings::list(conn)?)))
        .await
}

async fn get_setting(
    State(state): State<AppState>,
    _admin: AdminUser,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<settings::Setting>, ApiError> {
    let key = checked_key(key)?;
    state
        .core
        .run(&state.metrics, move |conn| {
            settings::get(conn, &key)?
                .map(Json)
                .ok_or_else(|| ApiError::not_found(format!("no setting {key}")))
        })
        .await
}

async fn put_setting(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiPath(key): ApiPath<String>,
    ApiJson(body): ApiJson<PutSettingBody>,
) -> Result<Json<settings::Setting>, ApiError> {
    let key = checked_key(key)?;
    if body.value.to_string().len() > 64 * 1024 {
        return Err(ApiError::invalid(
            "value",
            "a setting value may be at most 64 KiB of JSON",
        ));
    }
    state
        .core
        .run(&state.metrics, move |conn| {
            let setting = settings::put(conn, &key, &body.value, Some(admin.id))?;
            audit::record(
                conn,
                Some(admin.id),
                "setting.put",
                Some(&format!("setting:{key}")),
                None,
            )?;
            Ok(Json(setting))
        })
        .await
}

async fn delete_setting(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiPath(key): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let key = checked_key(key)?;
    state
        .core
        .run(&state.metrics, move |conn| {
            if !settings::delete(conn, &key)? {
                return Err(ApiError::not_found(format!("no setting {key}")));
            }
            audit::record(
                conn,
                Some(admin.id),
                "setting.delete",
                Some(&format!("setting:{key}")),
                None,
            )?;
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}
