//! Every Sovereign database file records which store it is, so that a misconfiguration
//! (a plugin store URL pointing at a copy or a link of `core.db`) is caught before any
//! plugin migration or plugin SQL touches it.

use rusqlite::{Connection, OptionalExtension};

/// Which store a database file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// `core.db`: the kernel's own data.
    Core,
    /// `plugins.db`: the shared plugin store.
    Plugins,
    /// `plugins/<id>.db`: the isolated file of one plugin.
    IsolatedPlugin(String),
    /// `mirror.db`: the mirror in a file of its own (the read-only ATTACH layout).
    Mirror,
}

impl StoreKind {
    /// The marker string written into the file.
    pub fn marker(&self) -> String {
        match self {
            StoreKind::Core => "core".into(),
            StoreKind::Plugins => "plugins".into(),
            StoreKind::IsolatedPlugin(id) => format!("plugin:{id}"),
            StoreKind::Mirror => "mirror".into(),
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.marker())
    }
}

/// The file is a different store than the caller expected.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is marked as another store.
    #[error(
        "{path} is the {found} store, not the {expected} store: check DATABASE_URL and \
         PLUGIN_DATABASE_URL, they must name two different files"
    )]
    Mismatch {
        /// The database file.
        path: String,
        /// The kind the caller wanted.
        expected: String,
        /// The kind recorded in the file.
        found: String,
    },
    /// SQLite failed while reading or writing the marker.
    #[error("cannot read the store marker of {path}: {error}")]
    Sqlite {
        /// The database file.
        path: String,
        /// SQLite's error (its message is part of this error's, once: not a source).
        error: rusqlite::Error,
    },
}

/// The kind recorded in the file, if any.
pub fn recorded_kind(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let has_table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = '_sv_store'",
        [],
        |row| row.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    conn.query_row(
        "SELECT value FROM _sv_store WHERE key = 'kind'",
        [],
        |row| row.get(0),
    )
    .optional()
}

/// Marks a fresh file as `kind`, or checks that an existing mark says `kind`.
pub fn claim(conn: &Connection, kind: &StoreKind) -> Result<(), StoreError> {
    let path = conn.path().unwrap_or("(memory)").to_owned();
    let sqlite_err = |error| StoreError::Sqlite {
        path: path.clone(),
        error,
    };
    match recorded_kind(conn).map_err(sqlite_err)? {
        Some(found) if found == kind.marker() => Ok(()),
        Some(found) => Err(StoreError::Mismatch {
            path: path.clone(),
            expected: kind.marker(),
            found,
        }),
        None => {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS _sv_store (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT",
            )
            .map_err(sqlite_err)?;
            conn.execute(
                "INSERT OR IGNORE INTO _sv_store (key, value) VALUES ('kind', ?1)",
                [kind.marker()],
            )
            .map_err(sqlite_err)?;
            // Re-check: a concurrent claimer may have won with another kind.
            match recorded_kind(conn).map_err(sqlite_err)? {
                Some(found) if found == kind.marker() => Ok(()),
                found => Err(StoreError::Mismatch {
                    path: path.clone(),
                    expected: kind.marker(),
                    found: found.unwrap_or_default(),
                }),
            }
        }
    }
}

/// Checks the mark without writing anything (for read-only inspection).
pub fn expect(conn: &Connection, kind: &StoreKind) -> Result<(), StoreError> {
    let path = conn.path().unwrap_or("(memory)").to_owned();
    match recorded_kind(conn) {
        Ok(Some(found)) if found == kind.marker() => Ok(()),
        Ok(found) => Err(StoreError::Mismatch {
            path,
            expected: kind.marker(),
            found: found.unwrap_or_else(|| "unmarked".into()),
        }),
        Err(error) => Err(StoreError::Sqlite { path, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_file_cannot_be_claimed_as_the_plugin_store() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("x.db")).unwrap();
        claim(&conn, &StoreKind::Core).unwrap();
        claim(&conn, &StoreKind::Core).unwrap();
        let err = claim(&conn, &StoreKind::Plugins).unwrap_err();
        assert!(
            err.to_string()
                .contains("is the core store, not the plugins store")
        );
    }
}
