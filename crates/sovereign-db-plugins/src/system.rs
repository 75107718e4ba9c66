//! The plugin store's own bookkeeping tables (event outbox, mirror state) as a versioned
//! migration scope, `system`, tracked in `_sv_migrations` like the core's and every
//! plugin's. Every writable open of a plugin store, isolated file or mirror file applies
//! what is pending, on the trusted connection before any fence goes up.

use sovereign_db::MigrationSet;
use sovereign_db::rusqlite::Connection;

use crate::PluginStoreError;

/// The scope of the store's own bookkeeping in `_sv_migrations`.
pub const SYSTEM_SCOPE: &str = "system";

const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_event_outbox.sql",
        include_str!("../system_migrations/0001_event_outbox.sql"),
    ),
    (
        "0002_mirror_state.sql",
        include_str!("../system_migrations/0002_mirror_state.sql"),
    ),
];

/// The bookkeeping migrations of a plugin store.
pub fn system_migrations() -> MigrationSet {
    MigrationSet::embedded(SYSTEM_SCOPE, MIGRATIONS)
        .expect("embedded system migrations are well-formed")
}

/// Applies the pending bookkeeping migrations to a store opened for writing.
pub(crate) fn prepare(conn: &Connection) -> Result<(), PluginStoreError> {
    system_migrations().deploy(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_scope_applies_once_and_adopts_stores_that_have_the_tables() {
        let conn = Connection::open_in_memory().unwrap();
        // A store from before the scope existed already has the tables.
        conn.execute_batch(include_str!("../system_migrations/0002_mirror_state.sql"))
            .unwrap();
        prepare(&conn).unwrap();
        prepare(&conn).unwrap();
        let applied: i64 = conn
            .query_row(
                "SELECT count(*) FROM _sv_migrations WHERE scope = 'system'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(applied, 2);
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name IN ('_sv_event_outbox', '_sv_mirror_state', '_sv_mirror_slices')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 3);
    }
}
