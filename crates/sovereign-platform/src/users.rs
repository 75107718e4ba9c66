//! Operator commands on users.

use sovereign_db_core::users::{self, NewUser, Role, User};

use crate::{App, PlatformError};

/// A user to create.
#[derive(Debug, Clone)]
pub struct UserRequest {
    /// Login e-mail address.
    pub email: String,
    /// Name shown to others (default: the part of the e-mail before `@`).
    pub display_name: Option<String>,
    /// The password; `None` generates one.
    pub password: Option<String>,
    /// Make the user an administrator.
    pub admin: bool,
}

/// A user created, with the generated password if one was generated (shown once).
#[derive(Debug, Clone)]
pub struct CreatedUser {
    /// The user.
    pub user: User,
    /// The generated password, if `password` was `None`.
    pub generated_password: Option<String>,
}

/// Validates and creates a user, and audits it as done by `via`.
pub fn create(app: &App, request: &UserRequest, via: &str) -> Result<CreatedUser, PlatformError> {
    let conn = app.open_migrated_core()?;
    let (password, generated) = match &request.password {
        Some(p) => (p.clone(), false),
        None => (sovereign_db_core::password::generate(), true),
    };
    users::validate_password(&password)?;
    let email = users::validate_email(&request.email)?;
    let display_name = users::validate_display_name(
        &request
            .display_name
            .clone()
            .unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_owned()),
    )?;
    let user = users::create(
        &conn,
        &NewUser {
            email,
            password: password.clone(),
            display_name,
            avatar_url: None,
            role: if request.admin {
                Role::Admin
            } else {
                Role::Member
            },
            tenant_id: 1,
        },
    )?;
    sovereign_db_core::audit::record(
        &conn,
        None,
        "user.create",
        Some(&format!("user:{}", user.id)),
        Some(&serde_json::json!({ "via": via, "role": user.role })),
    )?;
    Ok(CreatedUser {
        user,
        generated_password: generated.then_some(password),
    })
}

/// Every user.
pub fn list(app: &App) -> Result<Vec<User>, PlatformError> {
    Ok(users::list(&app.open_migrated_core()?)?)
}
