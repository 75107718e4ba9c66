//! Mirror slices: the read-only copies of core data published into the plugin store as
//! `core__<slice>` tables. Only the trusted sync path writes them; plugins read the
//! columns they were granted.

use serde::{Deserialize, Serialize};

/// Prefix of every mirror table.
pub const MIRROR_PREFIX: &str = "core__";

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
            }],
        }
    }
}

impl MirrorCatalog {
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
