//! SQLite plumbing shared by both sides of the trust boundary.
//!
//! - [`url`]: the `file:` URLs of `DATABASE_URL` / `PLUGIN_DATABASE_URL`.
//! - [`open`]: the one place that opens a SQLite file with the right pragmas.
//! - [`store`]: the identity marker that says which store a file is.
//! - [`migrate`]: the scoped migration runner used by the core and the plugin store.

pub mod migrate;
pub mod open;
pub mod store;
pub mod throwaway;
pub mod url;

pub use migrate::{
    AppliedRow, Migration, MigrationError, MigrationSet, MigrationState, MigrationStatus,
};
pub use open::{OpenError, OpenOptions, open_database};
pub use store::{StoreError, StoreKind};
pub use url::{DatabaseUrl, MysqlUrl, PostgresUrl, StoreTarget, UrlError};

/// Re-exported so that dependants use the exact same rusqlite as this crate.
pub use rusqlite;
