//! What the server refuses, typed by its error code (never by message text).

/// Why MySQL/MariaDB refused a statement of a fenced account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No privilege on the database, table, column, routine or command
    /// (1044, 1045, 1142, 1143, 1227, 1370, 1410).
    AccessDenied,
    /// Killing another account's thread (1095).
    NotOwnThread,
    /// The account's connection limit (1226).
    ConnectionLimit,
    /// The statement was cancelled from outside (`KILL QUERY`, 1317) or ran past
    /// `max_statement_time` (1969).
    Interrupted,
    /// A provisioning procedure refused its arguments (`SIGNAL`, 1644).
    InvalidArgument,
    /// A role the account was not granted (1959).
    InvalidRole,
}

impl Denial {
    /// The denial a server error code means, if it is one.
    pub fn from_code(code: u16) -> Option<Denial> {
        Some(match code {
            1044 | 1045 | 1142 | 1143 | 1227 | 1370 | 1410 => Denial::AccessDenied,
            1095 => Denial::NotOwnThread,
            1226 => Denial::ConnectionLimit,
            1317 | 1969 => Denial::Interrupted,
            1644 => Denial::InvalidArgument,
            1959 => Denial::InvalidRole,
            _ => return None,
        })
    }

    /// The denial a driver error is, if the server refused.
    pub fn of(error: &mysql::Error) -> Option<Denial> {
        match error {
            mysql::Error::MySqlError(e) => Denial::from_code(e.code),
            _ => None,
        }
    }
}
