//! Parsing of SQLite `file:` URLs as used by `DATABASE_URL` and `PLUGIN_DATABASE_URL`.

use std::path::{Path, PathBuf};

/// A parsed `file:` URL naming a SQLite database file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    path: PathBuf,
}

/// A URL that is not of the form `file:PATH`.
#[derive(Debug, thiserror::Error)]
#[error(
    "{variable} is not a valid SQLite URL ({value:?}): {reason}; \
     expected `file:PATH`, for example `file:data/core.db` or `file:/var/lib/sovereign/core.db`"
)]
pub struct UrlError {
    /// The configuration variable the value came from, e.g. `DATABASE_URL`.
    pub variable: String,
    /// The offending value.
    pub value: String,
    /// What exactly is wrong with it.
    pub reason: String,
}

impl DatabaseUrl {
    /// Parses `value`, naming `variable` in the error if it is malformed.
    ///
    /// Accepted forms: `file:relative/path.db`, `file:./x.db`, `file:/abs/x.db`,
    /// `file:///abs/x.db`. Query strings, fragments, `:memory:` and other schemes are refused.
    pub fn parse(variable: &str, value: &str) -> Result<Self, UrlError> {
        let fail = |reason: &str| UrlError {
            variable: variable.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = value.trim();
        let Some(rest) = trimmed.strip_prefix("file:") else {
            return Err(if is_postgres(trimmed) {
                UrlError {
                    variable: variable.to_owned(),
                    // Never echo a password.
                    value: PostgresUrl(trimmed.to_owned()).to_string(),
                    reason: "a SQLite file is needed here, not a PostgreSQL database".into(),
                }
            } else if trimmed.contains("://") {
                fail("only the `file:` scheme is supported for SQLite")
            } else {
                fail("it does not start with `file:`")
            });
        };
        let path = match rest.strip_prefix("//") {
            // `file:///abs` -> `/abs`; `file://host/x` names a host, which SQLite cannot use.
            Some(after) if after.starts_with('/') => after,
            Some(_) => {
                return Err(fail(
                    "`file://` must be followed by an absolute path (`file:///...`)",
                ));
            }
            None => rest,
        };
        if path.is_empty() {
            return Err(fail("the path is empty"));
        }
        if path.contains('?') || path.contains('#') {
            return Err(fail(
                "query parameters and fragments are not supported; pragmas are set by Sovereign",
            ));
        }
        if path == ":memory:" || path.starts_with(":memory:") {
            return Err(fail("an in-memory database would lose all data on exit"));
        }
        if path.ends_with('/') {
            return Err(fail("the path names a directory, not a file"));
        }
        Ok(Self {
            path: PathBuf::from(path),
        })
    }

    /// Builds a URL from a file path.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The path as written in the URL (may be relative).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The absolute path, resolving a relative one against `base`.
    pub fn resolve(&self, base: &Path) -> PathBuf {
        if self.path.is_absolute() {
            normalize(&self.path)
        } else {
            normalize(&base.join(&self.path))
        }
    }
}

fn is_postgres(value: &str) -> bool {
    value.starts_with("postgres://") || value.starts_with("postgresql://")
}

fn is_mysql(value: &str) -> bool {
    value.starts_with("mysql://") || value.starts_with("mariadb://")
}

/// Where a store lives: a SQLite file, a PostgreSQL database, or a MySQL/MariaDB one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    /// `file:PATH`: the store's file.
    File(DatabaseUrl),
    /// `postgres://ROLE:PASSWORD@HOST:PORT/DB`.
    Postgres(PostgresUrl),
    /// `mysql://ACCOUNT:PASSWORD@HOST:PORT/DB`.
    Mysql(MysqlUrl),
}

/// A `mysql://` URL as given (checked in full where it is used); shown without its
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlUrl(String);

impl MysqlUrl {
    /// The URL, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MysqlUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        masked(&self.0, f)
    }
}

impl std::fmt::Debug for MysqlUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MysqlUrl({self})")
    }
}

/// `scheme://user:secret@host/db` shown as `scheme://user:***@host/db`.
fn masked(url: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((login, server)) => {
                let user = login.split(':').next().unwrap_or_default();
                write!(f, "{scheme}://{user}:***@{server}")
            }
            None => write!(f, "{scheme}://{rest}"),
        },
        None => f.write_str("?://?"),
    }
}

/// A `postgres://` URL as given (checked in full where it is used); shown without its
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    /// The URL, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The server and database the URL names (`host:port/database`, port 5432 if not
    /// given, lower-cased host), which is what two URLs share when they name one database
    /// whatever role logs in.
    pub fn database_identity(&self) -> String {
        let rest = self.0.split_once("://").map_or("", |(_, rest)| rest);
        let server = rest.rsplit_once('@').map_or(rest, |(_, server)| server);
        let (host_port, database) = server.split_once('/').unwrap_or((server, ""));
        let database = database.split('?').next().unwrap_or_default();
        // `[::1]:5433` keeps its colons inside the brackets.
        let port_at = host_port
            .rfind(':')
            .filter(|at| host_port.rfind(']').is_none_or(|end| *at > end));
        let (host, port) = match port_at {
            Some(at) => (&host_port[..at], &host_port[at + 1..]),
            None => (host_port, "5432"),
        };
        format!("{}:{port}/{database}", host.to_ascii_lowercase())
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // postgres://role:secret@host/db -> postgres://role:***@host/db
        masked(&self.0, f)
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({self})")
    }
}

impl StoreTarget {
    /// Parses `value`: a `postgres://` (or `postgresql://`) URL, else a `file:` URL.
    pub fn parse(variable: &str, value: &str) -> Result<Self, UrlError> {
        let trimmed = value.trim();
        if is_postgres(trimmed) {
            return Ok(StoreTarget::Postgres(PostgresUrl(trimmed.to_owned())));
        }
        if is_mysql(trimmed) {
            return Ok(StoreTarget::Mysql(MysqlUrl(trimmed.to_owned())));
        }
        Ok(StoreTarget::File(DatabaseUrl::parse(variable, value)?))
    }

    /// The file, for a SQLite store.
    pub fn file(&self) -> Option<&DatabaseUrl> {
        match self {
            StoreTarget::File(url) => Some(url),
            StoreTarget::Postgres(_) | StoreTarget::Mysql(_) => None,
        }
    }
}

impl std::fmt::Display for StoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreTarget::File(url) => url.fmt(f),
            StoreTarget::Postgres(url) => url.fmt(f),
            StoreTarget::Mysql(url) => url.fmt(f),
        }
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "file:{}", self.path.display())
    }
}

/// Removes `.` and resolves `..` lexically, so that two spellings of a path compare equal.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_postgres_urls_name_one_database_whatever_role_logs_in() {
        let identity = |url: &str| match StoreTarget::parse("X", url).unwrap() {
            StoreTarget::Postgres(url) => url.database_identity(),
            other => panic!("{url} is not a PostgreSQL URL: {other}"),
        };
        assert_eq!(
            identity("postgres://svc_core:a@DB.example:5432/sv"),
            identity("postgresql://svc_plugins:b@db.example/sv?sslmode=disable")
        );
        assert_ne!(
            identity("postgres://a:a@db/sv_core"),
            identity("postgres://a:a@db/sv_plugins")
        );
        assert_eq!(identity("postgres://a:b@[::1]:5433/x"), "[::1]:5433/x");
        assert_eq!(identity("postgres://a:b@[::1]/x"), "[::1]:5432/x");
    }

    #[test]
    fn accepts_the_documented_forms() {
        let base = Path::new("/srv/app");
        for (input, expected) in [
            ("file:data/core.db", "/srv/app/data/core.db"),
            ("file:./data/../data/core.db", "/srv/app/data/core.db"),
            ("file:/var/lib/sv/core.db", "/var/lib/sv/core.db"),
            ("file:///var/lib/sv/core.db", "/var/lib/sv/core.db"),
        ] {
            let url = DatabaseUrl::parse("DATABASE_URL", input).unwrap();
            assert_eq!(url.resolve(base), PathBuf::from(expected), "{input}");
        }
    }

    #[test]
    fn refuses_malformed_urls_naming_the_variable() {
        for (input, reason) in [
            ("data/core.db", "does not start with `file:`"),
            ("postgres://localhost/x", "a SQLite file is needed here"),
            ("mysql://localhost/x", "only the `file:` scheme"),
            ("file:", "empty"),
            ("file:x.db?mode=ro", "query parameters"),
            ("file::memory:", "in-memory"),
            ("file://host/x.db", "absolute path"),
            ("file:data/", "directory"),
        ] {
            let err = DatabaseUrl::parse("DATABASE_URL", input).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("DATABASE_URL"), "{text}");
            assert!(text.contains(reason), "{input}: {text}");
            assert!(text.contains("expected `file:PATH`"), "{text}");
        }
    }
}
