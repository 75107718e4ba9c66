//! Users and their credentials.

use serde::Serialize;
use sovereign_db::rusqlite::{self, OptionalExtension, Row, params};

use crate::{CoreAccess, CoreError, CoreHandle, password};

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May manage users, settings and plugins.
    Admin,
    /// An ordinary user.
    Member,
}

impl Role {
    /// The value stored in `users.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    fn from_db(text: &str) -> Role {
        if text == "admin" {
            Role::Admin
        } else {
            Role::Member
        }
    }
}

/// A user as the API shows it (never with secrets other than the e-mail address).
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Primary key.
    pub id: i64,
    /// Tenant.
    pub tenant_id: i64,
    /// Login e-mail address.
    pub email: String,
    /// Name shown to others.
    pub display_name: String,
    /// Optional avatar image URL.
    pub avatar_url: Option<String>,
    /// Role.
    pub role: Role,
    /// Whether the user may log in.
    pub active: bool,
    /// Creation time (UTC).
    pub created_at: String,
    /// Last change (UTC).
    pub updated_at: String,
}

const USER_COLUMNS: &str =
    "id, tenant_id, email, display_name, avatar_url, role, active, created_at, updated_at";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        email: row.get(2)?,
        display_name: row.get(3)?,
        avatar_url: row.get(4)?,
        role: Role::from_db(&row.get::<_, String>(5)?),
        active: row.get(6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
    })
}

/// What it takes to create a user.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Login e-mail address (unique, case-insensitive).
    pub email: String,
    /// Plain-text password; only its argon2id hash is stored.
    pub password: String,
    /// Name shown to others.
    pub display_name: String,
    /// Optional avatar URL.
    pub avatar_url: Option<String>,
    /// Role.
    pub role: Role,
    /// Tenant (the default tenant is 1).
    pub tenant_id: i64,
}

/// A partial update; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New e-mail address.
    pub email: Option<String>,
    /// New display name.
    pub display_name: Option<String>,
    /// New avatar URL; `Some(None)` clears it.
    pub avatar_url: Option<Option<String>>,
    /// New role.
    pub role: Option<Role>,
    /// Activate or deactivate.
    pub active: Option<bool>,
    /// New password (hashed before storing).
    pub password: Option<String>,
}

/// A field of a user that does not have an acceptable value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    /// The field name as the API spells it.
    pub field: &'static str,
    /// What is expected.
    pub message: &'static str,
}

/// Checks an e-mail address for the shape `local@domain.tld`, returning it trimmed.
pub fn validate_email(email: &str) -> Result<String, InvalidField> {
    let email = email.trim();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.contains('@') && domain.contains('.')
                && !domain.starts_with('.') && !domain.ends_with('.'));
    if valid {
        Ok(email.to_owned())
    } else {
        Err(InvalidField {
            field: "email",
            message: "expected an e-mail address such as ada@example.com",
        })
    }
}

/// Passwords are 10 to 1024 characters long.
pub fn validate_password(password: &str) -> Result<(), InvalidField> {
    match password.chars().count() {
        10..=1024 => Ok(()),
        _ => Err(InvalidField {
            field: "password",
            message: "the password must be 10 to 1024 characters long",
        }),
    }
}

/// Display names are 1 to 100 characters without control characters; returns it trimmed.
pub fn validate_display_name(name: &str) -> Result<String, InvalidField> {
    let name = name.trim();
    if (1..=100).contains(&name.chars().count()) && !name.chars().any(char::is_control) {
        Ok(name.to_owned())
    } else {
        Err(InvalidField {
            field: "display_name",
            message: "the display name must be 1 to 100 characters, without control characters",
        })
    }
}

/// Avatar URLs are http(s) URLs of at most 2048 characters; returns it trimmed.
pub fn validate_avatar_url(url: &str) -> Result<String, InvalidField> {
    let url = url.trim();
    let scheme_len = if url.starts_with("https://") {
        8
    } else if url.starts_with("http://") {
        7
    } else {
        0
    };
    if scheme_len > 0 && url.len() > scheme_len && url.len() <= 2048 {
        Ok(url.to_owned())
    } else {
        Err(InvalidField {
            field: "avatar_url",
            message: "expected an http(s) URL of at most 2048 characters",
        })
    }
}

/// Maps a UNIQUE violation of a statement writing `users` to [`CoreError::EmailTaken`]:
/// `email` is the table's only UNIQUE column (the id is its rowid, whose conflicts are
/// SQLITE_CONSTRAINT_PRIMARYKEY), so the extended code alone tells.
fn map_unique_email(email: &str) -> impl FnOnce(rusqlite::Error) -> CoreError + '_ {
    move |e| match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            CoreError::EmailTaken(email.to_owned())
        }
        _ => CoreError::Sqlite(e),
    }
}

/// The PostgreSQL side of [`map_unique_email`]: a unique violation of `users_email`.
fn map_unique_email_pg(email: &str) -> impl FnOnce(CoreError) -> CoreError + '_ {
    move |e| match &e {
        CoreError::Postgres(pg)
            if pg
                .as_db_error()
                .is_some_and(|db| db.constraint() == Some("users_email")) =>
        {
            CoreError::EmailTaken(email.to_owned())
        }
        _ => e,
    }
}

/// The MySQL side of [`map_unique_email`]: a duplicate key of a statement writing
/// `users`, whose only unique key besides its `AUTO_INCREMENT` id is `users_email`.
fn map_unique_email_my(email: &str) -> impl FnOnce(CoreError) -> CoreError + '_ {
    move |e| match &e {
        CoreError::Mysql(my) if crate::mysql_core::is_duplicate_key(my) => {
            CoreError::EmailTaken(email.to_owned())
        }
        _ => e,
    }
}

/// A user's row on MySQL, in [`USER_COLUMNS`] order.
type MyUserRow = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    String,
    bool,
    String,
    String,
);

fn user_from_my(
    (id, tenant_id, email, display_name, avatar_url, role, active, created_at, updated_at): MyUserRow,
) -> User {
    User {
        id,
        tenant_id,
        email,
        display_name,
        avatar_url,
        role: Role::from_db(&role),
        active,
        created_at,
        updated_at,
    }
}

fn user_from_pg(row: &postgres::Row) -> User {
    User {
        id: row.get(0),
        tenant_id: row.get(1),
        email: row.get(2),
        display_name: row.get(3),
        avatar_url: row.get(4),
        role: Role::from_db(row.get(5)),
        active: row.get::<_, i32>(6) != 0,
        created_at: row.get(7),
        updated_at: row.get(8),
    }
}

/// Creates a user with a hashed password, in one transaction.
pub fn create(conn: &dyn CoreAccess, new: &NewUser) -> Result<User, CoreError> {
    let hash = password::hash(&new.password)?;
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            let tx = crate::write_transaction(conn)?;
            tx.execute(
                "INSERT INTO users (tenant_id, email, display_name, avatar_url, role)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    new.tenant_id,
                    new.email,
                    new.display_name,
                    new.avatar_url,
                    new.role.as_str()
                ],
            )
            .map_err(map_unique_email(&new.email))?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO credentials (user_id, password_hash) VALUES (?1, ?2)",
                params![id, hash],
            )?;
            let user = get(&tx, id)?.expect("row inserted in this transaction");
            tx.commit()?;
            Ok(user)
        }
        CoreHandle::Postgres(pg) => pg.transaction(|| {
            let row = pg
                .query_opt(
                    "INSERT INTO users (tenant_id, email, display_name, avatar_url, role)
                     VALUES ($1, $2, $3, $4, $5)
                     RETURNING id, tenant_id, email, display_name, avatar_url, role, active,
                               created_at, updated_at",
                    &[
                        &new.tenant_id,
                        &new.email,
                        &new.display_name,
                        &new.avatar_url,
                        &new.role.as_str(),
                    ],
                )
                .map_err(map_unique_email_pg(&new.email))?
                .expect("INSERT ... RETURNING returns the row");
            let user = user_from_pg(&row);
            pg.execute(
                "INSERT INTO credentials (user_id, password_hash) VALUES ($1, $2)",
                &[&user.id, &hash],
            )?;
            Ok(user)
        }),
        CoreHandle::Mysql(my) => my.transaction(|| {
            let id = my
                .insert(
                    "INSERT INTO users (tenant_id, email, display_name, avatar_url, role)
                     VALUES (?, ?, ?, ?, ?)",
                    (
                        new.tenant_id,
                        &new.email,
                        &new.display_name,
                        &new.avatar_url,
                        new.role.as_str(),
                    ),
                )
                .map_err(map_unique_email_my(&new.email))?;
            my.execute(
                "INSERT INTO credentials (user_id, password_hash) VALUES (?, ?)",
                (id, &hash),
            )?;
            Ok(get(my, id)?.expect("row inserted in this transaction"))
        }),
    }
}

/// A user by id.
pub fn get(conn: &dyn CoreAccess, id: i64) -> Result<Option<User>, CoreError> {
    match conn.core_handle() {
        // Every authenticated request looks its caller up: the statement is cached.
        CoreHandle::Sqlite(conn) => Ok(conn
            .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))?
            .query_row([id], user_from_row)
            .optional()?),
        CoreHandle::Postgres(pg) => Ok(pg
            .query_opt(
                "SELECT id, tenant_id, email, display_name, avatar_url, role, active,
                        created_at, updated_at
                 FROM users WHERE id = $1",
                &[&id],
            )?
            .as_ref()
            .map(user_from_pg)),
        CoreHandle::Mysql(my) => Ok(my
            .query_opt::<MyUserRow>(
                "SELECT id, tenant_id, email, display_name, avatar_url, role, active,
                        created_at, updated_at
                 FROM users WHERE id = ?",
                (id,),
            )?
            .map(user_from_my)),
    }
}

/// All users, by id.
pub fn list(conn: &dyn CoreAccess) -> Result<Vec<User>, CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))?;
            let rows = stmt.query_map([], user_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        }
        CoreHandle::Postgres(pg) => Ok(pg
            .query(
                "SELECT id, tenant_id, email, display_name, avatar_url, role, active,
                        created_at, updated_at
                 FROM users ORDER BY id",
                &[],
            )?
            .iter()
            .map(user_from_pg)
            .collect()),
        CoreHandle::Mysql(my) => Ok(my
            .query::<MyUserRow>(
                "SELECT id, tenant_id, email, display_name, avatar_url, role, active,
                        created_at, updated_at
                 FROM users ORDER BY id",
                (),
            )?
            .into_iter()
            .map(user_from_my)
            .collect()),
    }
}

/// How many users exist.
pub fn count(conn: &dyn CoreAccess) -> Result<i64, CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            Ok(conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
        }
        CoreHandle::Postgres(pg) => Ok(pg
            .query_opt("SELECT count(*) FROM users", &[])?
            .expect("count(*) returns a row")
            .get(0)),
        CoreHandle::Mysql(my) => Ok(my
            .query_opt("SELECT count(*) FROM users", ())?
            .expect("count(*) returns a row")),
    }
}

/// Checks an e-mail/password pair. Returns the user only if it exists, is active and the
/// password matches; spends the same hashing work when the account does not exist.
pub fn authenticate(
    conn: &dyn CoreAccess,
    email: &str,
    password: &str,
) -> Result<Option<User>, CoreError> {
    let found: Option<(i64, String)> = match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn
            .query_row(
                "SELECT u.id, c.password_hash FROM users u JOIN credentials c ON c.user_id = u.id
                 WHERE u.email = ?1",
                [email],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?,
        CoreHandle::Postgres(pg) => pg
            .query_opt(
                "SELECT u.id, c.password_hash FROM users u JOIN credentials c ON c.user_id = u.id
                 WHERE lower(u.email) = lower($1)",
                &[&email],
            )?
            .map(|r| (r.get(0), r.get(1))),
        // `users.email`'s collation folds case.
        CoreHandle::Mysql(my) => my.query_opt(
            "SELECT u.id, c.password_hash FROM users u JOIN credentials c ON c.user_id = u.id
             WHERE u.email = ?",
            (email,),
        )?,
    };
    let Some((id, phc)) = found else {
        password::verify_dummy(password);
        return Ok(None);
    };
    if !password::verify(password, &phc) {
        return Ok(None);
    }
    Ok(get(conn, id)?.filter(|u| u.active))
}

/// Applies `patch`; `Ok(None)` if there is no such user. Refuses to demote or deactivate
/// the last active admin.
pub fn update(
    conn: &dyn CoreAccess,
    id: i64,
    patch: &UserPatch,
) -> Result<Option<User>, CoreError> {
    let hash = patch.password.as_deref().map(password::hash).transpose()?;
    let merged = |before: &User| {
        (
            patch.email.clone().unwrap_or(before.email.clone()),
            patch
                .display_name
                .clone()
                .unwrap_or(before.display_name.clone()),
            patch
                .avatar_url
                .clone()
                .unwrap_or(before.avatar_url.clone()),
            patch.role.unwrap_or(before.role).as_str(),
            patch.active.unwrap_or(before.active),
        )
    };
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            let tx = crate::write_transaction(conn)?;
            let Some(before) = get(&tx, id)? else {
                return Ok(None);
            };
            let (email, display_name, avatar_url, role, active) = merged(&before);
            tx.execute(
                "UPDATE users SET email = ?2, display_name = ?3, avatar_url = ?4, role = ?5,
                        active = ?6, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE id = ?1",
                params![id, email, display_name, avatar_url, role, active],
            )
            .map_err(map_unique_email(&email))?;
            if let Some(hash) = hash {
                tx.execute(
                    "UPDATE credentials SET password_hash = ?2,
                            updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                     WHERE user_id = ?1",
                    params![id, hash],
                )?;
                // A new password ends every existing session of that user.
                tx.execute("DELETE FROM sessions WHERE user_id = ?1", [id])?;
            }
            if active_admins(&tx)? == 0 {
                return Err(CoreError::LastAdmin);
            }
            let after = get(&tx, id)?;
            tx.commit()?;
            Ok(after)
        }
        CoreHandle::Postgres(pg) => pg.transaction(|| {
            let Some(before) = get(pg, id)? else {
                return Ok(None);
            };
            let (email, display_name, avatar_url, role, active) = merged(&before);
            pg.execute(
                "UPDATE users SET email = $2, display_name = $3, avatar_url = $4, role = $5,
                        active = $6, updated_at = sv_now_text()
                 WHERE id = $1",
                &[
                    &id,
                    &email,
                    &display_name,
                    &avatar_url,
                    &role,
                    &i32::from(active),
                ],
            )
            .map_err(map_unique_email_pg(&email))?;
            if let Some(hash) = &hash {
                pg.execute(
                    "UPDATE credentials SET password_hash = $2, updated_at = sv_now_text()
                     WHERE user_id = $1",
                    &[&id, hash],
                )?;
                // A new password ends every existing session of that user.
                pg.execute("DELETE FROM sessions WHERE user_id = $1", &[&id])?;
            }
            if active_admins(pg)? == 0 {
                return Err(CoreError::LastAdmin);
            }
            get(pg, id)
        }),
        CoreHandle::Mysql(my) => my.transaction(|| {
            let Some(before) = get(my, id)? else {
                return Ok(None);
            };
            let (email, display_name, avatar_url, role, active) = merged(&before);
            my.execute(
                concat!(
                    "UPDATE users SET email = ?, display_name = ?, avatar_url = ?, role = ?,
                            active = ?, updated_at = ",
                    crate::mysql_core::my_now_text!(),
                    " WHERE id = ?"
                ),
                (&email, &display_name, &avatar_url, role, active, id),
            )
            .map_err(map_unique_email_my(&email))?;
            if let Some(hash) = &hash {
                my.execute(
                    concat!(
                        "UPDATE credentials SET password_hash = ?, updated_at = ",
                        crate::mysql_core::my_now_text!(),
                        " WHERE user_id = ?"
                    ),
                    (hash, id),
                )?;
                // A new password ends every existing session of that user.
                my.execute("DELETE FROM sessions WHERE user_id = ?", (id,))?;
            }
            if active_admins(my)? == 0 {
                return Err(CoreError::LastAdmin);
            }
            get(my, id)
        }),
    }
}

/// Deletes a user (their sessions and credentials go with them). Refuses to delete the
/// last active admin. `Ok(false)` if there was no such user.
pub fn delete(conn: &dyn CoreAccess, id: i64) -> Result<bool, CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            let tx = crate::write_transaction(conn)?;
            let deleted = tx.execute("DELETE FROM users WHERE id = ?1", [id])? > 0;
            if deleted && active_admins(&tx)? == 0 {
                return Err(CoreError::LastAdmin);
            }
            tx.commit()?;
            Ok(deleted)
        }
        CoreHandle::Postgres(pg) => pg.transaction(|| {
            let deleted = pg.execute("DELETE FROM users WHERE id = $1", &[&id])? > 0;
            if deleted && active_admins(pg)? == 0 {
                return Err(CoreError::LastAdmin);
            }
            Ok(deleted)
        }),
        CoreHandle::Mysql(my) => my.transaction(|| {
            let deleted = my.execute("DELETE FROM users WHERE id = ?", (id,))? > 0;
            if deleted && active_admins(my)? == 0 {
                return Err(CoreError::LastAdmin);
            }
            Ok(deleted)
        }),
    }
}

fn active_admins(conn: &dyn CoreAccess) -> Result<i64, CoreError> {
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => Ok(conn.query_row(
            "SELECT count(*) FROM users WHERE role = 'admin' AND active = 1",
            [],
            |r| r.get(0),
        )?),
        CoreHandle::Postgres(pg) => Ok(pg
            .query_opt(
                "SELECT count(*) FROM users WHERE role = 'admin' AND active = 1",
                &[],
            )?
            .expect("count(*) returns a row")
            .get(0)),
        CoreHandle::Mysql(my) => Ok(my
            .query_opt(
                "SELECT count(*) FROM users WHERE role = 'admin' AND active = 1",
                (),
            )?
            .expect("count(*) returns a row")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::core_db;

    fn new_user(email: &str, role: Role) -> NewUser {
        NewUser {
            email: email.into(),
            password: "a long password".into(),
            display_name: "Ada".into(),
            avatar_url: None,
            role,
            tenant_id: 1,
        }
    }

    #[test]
    fn create_authenticate_and_keep_the_hash_out_of_users() {
        let (_dir, conn) = core_db();
        let user = create(&conn, &new_user("ada@example.com", Role::Admin)).unwrap();
        assert!(
            authenticate(&conn, "ADA@example.com", "a long password")
                .unwrap()
                .is_some()
        );
        assert!(
            authenticate(&conn, "ada@example.com", "wrong")
                .unwrap()
                .is_none()
        );
        assert!(
            authenticate(&conn, "nobody@example.com", "x")
                .unwrap()
                .is_none()
        );
        let err = create(&conn, &new_user("Ada@Example.com", Role::Member)).unwrap_err();
        assert!(matches!(err, CoreError::EmailTaken(_)), "{err}");
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('users')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !columns.iter().any(|c| c.contains("password")),
            "{columns:?}"
        );
        let stored: String = conn
            .query_row(
                "SELECT password_hash FROM credentials WHERE user_id = ?1",
                [user.id],
                |r| r.get(0),
            )
            .unwrap();
        assert!(stored.starts_with("$argon2id$"));
    }

    #[test]
    fn email_validation() {
        for ok in ["a@b.co", " ada@example.com ", "x.y+z@sub.example.org"] {
            assert!(validate_email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a", "a@b", "@b.co", "a@.co", "a@b.", "a b@c.de", "a@b@c.de",
        ] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_last_admin_cannot_be_removed_or_demoted() {
        let (_dir, conn) = core_db();
        let admin = create(&conn, &new_user("root@example.com", Role::Admin)).unwrap();
        let demote = UserPatch {
            role: Some(Role::Member),
            ..Default::default()
        };
        assert!(matches!(
            update(&conn, admin.id, &demote),
            Err(CoreError::LastAdmin)
        ));
        assert!(matches!(delete(&conn, admin.id), Err(CoreError::LastAdmin)));
        assert_eq!(get(&conn, admin.id).unwrap().unwrap().role, Role::Admin);
    }
}
