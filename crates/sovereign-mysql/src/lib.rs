//! Sovereign on MySQL/MariaDB (RFC-0003 in MySQL's terms). MySQL has no schemas apart
//! from databases, so the fence is: the core's database, owned by the account
//! `svc_core`; the plugin database (`svc_plugins`: mirrors and bookkeeping); and per
//! plugin a database `<plugin database>_<id>` that only its own account `svp_<id>`
//! (and the store's account) may use, with `SELECT` on exactly its approved mirror
//! columns and a connection limit. The store's account provisions plugin accounts
//! through `sv_admin` procedures that run as the administrator who applied the plan, so
//! the platform never holds an administrator's login.
//!
//! Here: the role plan (`sv mysql:roles`), the provisioning procedures, what the
//! server refuses (typed, by error code), the check of plugin SQL that closes what the
//! grants leave open (`sql_text`), plugins' fenced connections (`plugin_db`), the
//! mirror's writer (`mirror`), the trusted migration runner (`migrate`, for the core's
//! schema), values of either protocol (`values`) and a throwaway server for tests.

pub mod denial;
pub mod dump;
pub mod migrate;
pub mod mirror;
pub mod plugin_db;
pub mod roles;
pub mod server;
pub mod sql_text;
pub mod values;

pub use denial::Denial;
pub use plugin_db::{MyPluginConfig, MyPluginDb};
pub use roles::{MyError, RolePlan, StoreUrl, connect_trusted, plugin_account_name};
pub use server::Server;
