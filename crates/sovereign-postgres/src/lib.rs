//! Sovereign on PostgreSQL, the fence the database itself keeps (RFC-0003): which roles
//! exist, which databases and schemas they own, and what each may reach.
//!
//! - `svc_core` (the user of `DATABASE_URL`) owns the core database and is the only role
//!   that may connect to it;
//! - `svc_plugins` (the user of `PLUGIN_DATABASE_URL`) owns the plugin database, its
//!   `public` schema and the `core` schema of mirrored slices, and the databases of
//!   isolated plugins ([`isolated`]);
//! - every plugin has a LOGIN role of its own (`svp_<id>`) owning one schema (`<id>`),
//!   with `CONNECT` on the plugin database (or its own) only, no `TEMP`, no `CREATE` outside its
//!   schema, a connection limit, and `SELECT` on exactly the mirror columns it was granted.
//!
//! [`RolePlan`] turns the two URLs and the plugins into SQL; `print` gives a DBA the
//! script, `apply` runs it as an administrator. Both are idempotent.

mod cluster;
pub mod dump;
pub mod isolated;
pub mod migrate;
pub mod mirror;
mod plugin_db;
mod roles;
pub mod sql_text;

pub use cluster::Cluster;
pub use plugin_db::values::row_values;
pub use plugin_db::{PgPluginConfig, PgPluginDb};

pub use roles::{PgError, PluginRole, RolePlan, Step, StoreUrl, Target, plugin_role_name};
