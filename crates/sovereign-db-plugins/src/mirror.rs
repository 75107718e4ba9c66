//! Mirror slices: the read-only copies of core data published into the plugin store as
//! `core__<slice>` tables. Only the trusted sync path writes them; plugins read the
//! columns they were granted.

use serde::{Deserialize, Serialize};

/// Prefix of every mirror table.
pub const MIRROR_PREFIX: &str = "core__";

/// A mirror column's type, from the core column's declared type (SQLite's affinity);
/// each server store maps it to a column type of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `INTEGER` affinity: 64-bit integers.
    Integer,
    /// `REAL` affinity: doubles.
    Real,
    /// `TEXT` affinity (and anything else): text.
    Text,
    /// No declared type or `BLOB`: bytes.
    Blob,
}

impl ColumnKind {
    /// SQLite's affinity rules applied to a declared type (a MySQL core's column types
    /// map the same way: `BIGINT`, `VARCHAR`, `LONGTEXT`, `LONGBLOB`, `DOUBLE`).
    pub fn from_declared(declared: &str) -> ColumnKind {
        let upper = declared.to_ascii_uppercase();
        if upper.contains("INT") {
            ColumnKind::Integer
        } else if ["CHAR", "CLOB", "TEXT"].iter().any(|t| upper.contains(t)) {
            ColumnKind::Text
        } else if upper.is_empty() || upper.contains("BLOB") {
            ColumnKind::Blob
        } else if ["REAL", "FLOA", "DOUB"].iter().any(|t| upper.contains(t)) {
            ColumnKind::Real
        } else {
            ColumnKind::Text
        }
    }
}

/// One published slice of a core table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorSlice {
    /// Slice name; the table is `core__<name>`.
    pub name: String,
    /// The core table it is projected from.
    pub source_table: String,
    /// Published columns; the first is the primary key.
    pub columns: Vec<String>,
    /// Optional SQL row filter on the source table (e.g. `active = 1`).
    pub filter: Option<String>,
    /// Secret columns an operator explicitly allowed in this slice.
    #[serde(default)]
    pub allow_secret: Vec<String>,
}

impl MirrorSlice {
    /// `core__<name>`.
    pub fn table_name(&self) -> String {
        format!("{MIRROR_PREFIX}{}", self.name)
    }

    /// The primary-key column.
    pub fn key_column(&self) -> &str {
        &self.columns[0]
    }

    /// `CREATE TABLE IF NOT EXISTS` for the mirror table.
    pub fn create_table_sql(&self) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("\"{c}\" INTEGER PRIMARY KEY")
                } else {
                    format!("\"{c}\"")
                }
            })
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS \"{}\" ({})",
            self.table_name(),
            columns.join(", ")
        )
    }
}

/// The set of slices this installation publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorCatalog {
    slices: Vec<MirrorSlice>,
}

impl Default for MirrorCatalog {
    /// The default catalog: the `users` slice (id, tenant, display name, avatar URL) of
    /// active users. Never e-mail addresses or credentials.
    fn default() -> Self {
        MirrorCatalog {
            slices: vec![MirrorSlice {
                name: "users".into(),
                source_table: "users".into(),
                columns: ["id", "tenant_id", "display_name", "avatar_url"]
                    .map(String::from)
                    .to_vec(),
                filter: Some("active = 1".into()),
                allow_secret: vec![],
            }],
        }
    }
}

impl MirrorCatalog {
    /// A catalog of exactly these slices.
    pub fn new(slices: Vec<MirrorSlice>) -> MirrorCatalog {
        MirrorCatalog { slices }
    }

    /// A slice by name.
    pub fn slice(&self, name: &str) -> Option<&MirrorSlice> {
        self.slices.iter().find(|s| s.name == name)
    }

    /// Every slice.
    pub fn slices(&self) -> &[MirrorSlice] {
        &self.slices
    }

    /// Slice names.
    pub fn names(&self) -> Vec<&str> {
        self.slices.iter().map(|s| s.name.as_str()).collect()
    }
}

/// One change to apply to a mirror table: the row's current projection, or `None` when
/// the row is gone from the slice (deleted, or no longer matching the filter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorChange {
    /// Slice name.
    pub slice: String,
    /// Primary key of the row.
    pub key: i64,
    /// The projected row in slice column order, or `None` to delete it.
    pub row: Option<Vec<crate::SqlValue>>,
}

/// A batch of changes covering the core change outbox up to `upto_seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MirrorBatch {
    /// The highest outbox sequence number this batch covers.
    pub upto_seq: i64,
    /// The changes, at most one per (slice, key).
    pub changes: Vec<MirrorChange>,
    /// The outbox held nothing after this batch when it was read: no need to ask again
    /// before the next commit.
    #[serde(default)]
    pub drained: bool,
}

/// The last row of each key a batch changed (`None`: deleted).
pub type LastRows<'a> = std::collections::BTreeMap<i64, Option<&'a [crate::SqlValue]>>;

impl MirrorBatch {
    /// The batch's changes by slice of `catalog` (changes of slices it lacks are
    /// skipped), each key's last row only: what a server mirror writes in bulk.
    pub fn last_rows<'a>(
        &'a self,
        catalog: &'a MirrorCatalog,
    ) -> std::collections::BTreeMap<&'a str, (&'a MirrorSlice, LastRows<'a>)> {
        let mut last = std::collections::BTreeMap::new();
        for change in &self.changes {
            if let Some(slice) = catalog.slice(&change.slice) {
                last.entry(slice.name.as_str())
                    .or_insert_with(|| (slice, LastRows::new()))
                    .1
                    .insert(change.key, change.row.as_deref());
            }
        }
        last
    }
}

/// Writes one row of a mirror table in `main`: replaces it with `row`, or deletes the key
/// when `row` is `None`. Used by batch application and by reconcile's repair.
pub fn write_mirror_row(
    conn: &sovereign_db::rusqlite::Connection,
    slice: &MirrorSlice,
    key: i64,
    row: Option<&[crate::SqlValue]>,
) -> sovereign_db::rusqlite::Result<()> {
    let table = slice.table_name().replace('"', "\"\"");
    match row {
        Some(row) => {
            let placeholders = (1..=row.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ");
            conn.prepare_cached(&format!(
                "INSERT OR REPLACE INTO main.\"{table}\" VALUES ({placeholders})"
            ))?
            .execute(sovereign_db::rusqlite::params_from_iter(row.iter()))?;
        }
        None => {
            let key_column = slice.key_column().replace('"', "\"\"");
            conn.prepare_cached(&format!(
                "DELETE FROM main.\"{table}\" WHERE \"{key_column}\" = ?1"
            ))?
            .execute([key])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod column_kind_tests {
    use super::ColumnKind;

    #[test]
    fn declared_types_map_by_sqlite_affinity() {
        for (declared, kind) in [
            ("INTEGER", ColumnKind::Integer),
            ("BIGINT", ColumnKind::Integer),
            ("TEXT", ColumnKind::Text),
            ("VARCHAR(20)", ColumnKind::Text),
            ("longtext", ColumnKind::Text),
            ("", ColumnKind::Blob),
            ("BLOB", ColumnKind::Blob),
            ("longblob", ColumnKind::Blob),
            ("REAL", ColumnKind::Real),
            ("DOUBLE PRECISION", ColumnKind::Real),
            ("NUMERIC", ColumnKind::Text),
        ] {
            assert_eq!(ColumnKind::from_declared(declared), kind, "{declared}");
        }
    }
}
