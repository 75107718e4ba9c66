//! What the MySQL tests share: a throwaway MariaDB, a plugin store with plugin accounts
//! and a users mirror, and reading an outcome's rows.
#![allow(dead_code)]

use std::path::PathBuf;

use mysql::prelude::Queryable;
use sovereign_db_plugins::{Outcome, SqlValue};
use sovereign_mysql::{RolePlan, Server};

/// A throwaway MariaDB from `scripts/mariadb`.
pub fn mariadb() -> Server {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb");
    Server::start(&script).unwrap()
}

/// A MariaDB with the plugin store's plan applied (the core elsewhere), a mirror table
/// `core__users` made and filled by `users` (SQL run as the store's account), an account
/// per id of `accounts` (with `password` and connection `limit`) and `grant`
/// (`(plugin, columns)`) on the users mirror.
pub fn plugin_store(
    users: &str,
    accounts: &[&str],
    password: &str,
    limit: u32,
    grant: (&str, &str),
) -> Server {
    let server = mariadb();
    let plugins_url = server.url("svc_plugins", "plugins-secret-12", "sv_plugins");
    RolePlan::new(None, &plugins_url)
        .unwrap()
        .apply(server.admin_url())
        .unwrap();
    let mut store = sovereign_mysql::roles::connect(&plugins_url).unwrap();
    store.query_drop(users).unwrap();
    for id in accounts {
        store
            .exec_drop(
                "CALL sv_admin.create_plugin_account(?, ?, ?)",
                (id, password, limit),
            )
            .unwrap();
    }
    store
        .exec_drop(
            "CALL sv_admin.grant_mirror(?, ?, ?)",
            (grant.0, "users", grant.1),
        )
        .unwrap();
    server
}

/// The rows of a query's outcome.
pub fn rows(outcome: Outcome) -> Vec<Vec<SqlValue>> {
    match outcome {
        Outcome::Rows { rows, .. } => rows,
        other => panic!("not rows: {other:?}"),
    }
}
