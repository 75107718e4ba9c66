//! Bearer-token sessions. Only a SHA-256 of each token is stored.

use rand::RngCore;
use sha2::{Digest, Sha256};
use sovereign_db::rusqlite::{OptionalExtension, params};

use crate::users::{self, User};
use crate::{CoreAccess, CoreError, CoreHandle, unix_now};

/// Prefix of every token, so that a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "svs_";

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The anti-CSRF token of a session: derived from the session token (which only its
/// holder knows), so it needs no storage and dies with the session.
pub fn csrf_token(token: &str) -> String {
    hex::encode(Sha256::digest(format!("sv-csrf:{token}").as_bytes()))
}

/// Creates a session for `user_id` valid for `ttl_seconds`; returns the bearer token,
/// which exists nowhere else afterwards.
pub fn create(conn: &dyn CoreAccess, user_id: i64, ttl_seconds: i64) -> Result<String, CoreError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let now = unix_now();
    let expires = now + ttl_seconds;
    match conn.core_handle() {
        CoreHandle::Sqlite(conn) => {
            conn.execute(
                "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash(&token), user_id, now, expires],
            )?;
            // Opportunistic clean-up keeps the table from growing without a separate job.
            conn.execute("DELETE FROM sessions WHERE expires_at < ?1", [now])?;
        }
        CoreHandle::Postgres(pg) => {
            pg.execute(
                "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                &[&token_hash(&token), &user_id, &now, &expires],
            )?;
            pg.execute("DELETE FROM sessions WHERE expires_at < $1", &[&now])?;
        }
        CoreHandle::Mysql(my) => {
            my.execute(
                "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (token_hash(&token), user_id, now, expires),
            )?;
            my.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))?;
        }
    }
    Ok(token)
}

/// The active user a token belongs to, if the session exists and has not expired.
pub fn user_for_token(conn: &dyn CoreAccess, token: &str) -> Result<Option<User>, CoreError> {
    let user_id: Option<i64> = match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn
            .prepare_cached(
                "SELECT user_id FROM sessions WHERE token_hash = ?1 AND expires_at > ?2",
            )?
            .query_row(params![token_hash(token), unix_now()], |r| r.get(0))
            .optional()?,
        CoreHandle::Postgres(pg) => pg
            .query_opt(
                "SELECT user_id FROM sessions WHERE token_hash = $1 AND expires_at > $2",
                &[&token_hash(token), &unix_now()],
            )?
            .map(|r| r.get(0)),
        CoreHandle::Mysql(my) => my.query_opt(
            "SELECT user_id FROM sessions WHERE token_hash = ? AND expires_at > ?",
            (token_hash(token), unix_now()),
        )?,
    };
    match user_id {
        Some(id) => Ok(users::get(conn, id)?.filter(|u| u.active)),
        None => Ok(None),
    }
}

/// Ends a session; `false` if it did not exist.
pub fn delete(conn: &dyn CoreAccess, token: &str) -> Result<bool, CoreError> {
    Ok(match conn.core_handle() {
        CoreHandle::Sqlite(conn) => conn.execute(
            "DELETE FROM sessions WHERE token_hash = ?1",
            [token_hash(token)],
        )?,
        CoreHandle::Postgres(pg) => pg.execute(
            "DELETE FROM sessions WHERE token_hash = $1",
            &[&token_hash(token)],
        )? as usize,
        CoreHandle::Mysql(my) => my.execute(
            "DELETE FROM sessions WHERE token_hash = ?",
            (token_hash(token),),
        )? as usize,
    } > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::core_db;
    use crate::users::{NewUser, Role};

    #[test]
    fn tokens_resolve_only_while_valid_and_are_stored_hashed() {
        let (_dir, conn) = core_db();
        let user = users::create(
            &conn,
            &NewUser {
                email: "a@example.com".into(),
                password: "a long password".into(),
                display_name: "A".into(),
                avatar_url: None,
                role: Role::Admin,
                tenant_id: 1,
            },
        )
        .unwrap();
        let token = create(&conn, user.id, 60).unwrap();
        let stored: String = conn
            .query_row("SELECT token_hash FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_ne!(stored, token);
        assert!(!stored.contains(&token[TOKEN_PREFIX.len()..]));
        assert_eq!(user_for_token(&conn, &token).unwrap().unwrap().id, user.id);
        assert!(user_for_token(&conn, "svs_bogus").unwrap().is_none());
        let expired = create(&conn, user.id, -1).unwrap();
        assert!(user_for_token(&conn, &expired).unwrap().is_none());
        assert!(delete(&conn, &token).unwrap());
        assert!(user_for_token(&conn, &token).unwrap().is_none());
    }
}
