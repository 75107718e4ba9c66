//! `plugin.json`, the public contract between a plugin package and the platform.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::is_valid_plugin_id;
use crate::mirror::MirrorCatalog;

/// Where a plugin's tables live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseMode {
    /// In the shared `plugins.db`, under the plugin's `<id>__` namespace.
    #[default]
    Shared,
    /// In `data/plugins/<id>.db`, a file of its own.
    Isolated,
}

impl DatabaseMode {
    /// `shared` or `isolated`.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseMode::Shared => "shared",
            DatabaseMode::Isolated => "isolated",
        }
    }
}

/// A database server a plugin store can live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite files (`data/plugins.db`, `data/plugins/<id>.db`).
    Sqlite,
    /// A PostgreSQL database (a schema and a role per plugin).
    Postgres,
    /// A MySQL/MariaDB server (a database and an account per plugin).
    Mysql,
}

impl Backend {
    /// `sqlite`, `postgres` or `mysql`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }

    /// Where a package keeps this backend's migrations, below its `migrations/`
    /// (`None`: `migrations/` itself).
    pub fn migrations_subdir(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => None,
            Backend::Postgres => Some("postgres"),
            Backend::Mysql => Some("mysql"),
        }
    }
}

fn sqlite_only() -> Vec<Backend> {
    vec![Backend::Sqlite]
}

/// A database mode that is neither `shared` nor `isolated` (for example in a damaged
/// registry): an error, never silently `shared`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a database mode: expected `shared` or `isolated`")]
pub struct UnknownDatabaseMode(pub String);

impl std::str::FromStr for DatabaseMode {
    type Err = UnknownDatabaseMode;

    fn from_str(text: &str) -> Result<DatabaseMode, UnknownDatabaseMode> {
        match text {
            "shared" => Ok(DatabaseMode::Shared),
            "isolated" => Ok(DatabaseMode::Isolated),
            other => Err(UnknownDatabaseMode(other.to_owned())),
        }
    }
}

/// Resource limits of a plugin; every field is optional in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Storage quota in MiB.
    pub storage_mb: u32,
    /// Deadline of one SQL statement in milliseconds.
    pub statement_ms: u32,
    /// WebAssembly memory cap in MiB.
    pub memory_mb: u32,
    /// Deadline of one request in milliseconds; it covers the request's SQL too.
    pub request_ms: u32,
    /// Largest string or blob value in KiB (bounds what one SQL function call can chew on).
    pub value_kb: u32,
    /// Most bytes of values one query may return, in KiB (bounds host memory per request).
    pub result_kb: u32,
    /// Most events one request may emit.
    pub events_per_request: u32,
    /// Most events the plugin may emit per minute (every event becomes a row in the core).
    pub events_per_minute: u32,
    /// Largest event payload in KiB.
    pub event_kb: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            storage_mb: 64,
            statement_ms: 1000,
            memory_mb: 64,
            request_ms: 5000,
            value_kb: 1024,
            result_kb: 8192,
            events_per_request: 100,
            events_per_minute: 1000,
            event_kb: 64,
        }
    }
}

/// A validated plugin manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin id: the table namespace `<id>__` and the URL segment.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// `shared` (default) or `isolated`.
    #[serde(default)]
    pub database: DatabaseMode,
    /// Mirror slices and the columns the plugin wants to read.
    #[serde(default)]
    pub reads: BTreeMap<String, Vec<String>>,
    /// Event topics the plugin emits.
    #[serde(default)]
    pub emits: Vec<String>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// The plugin API (`sovereign:plugin@<version>`) the package is built against; when
    /// given, its component must use exactly that version.
    #[serde(default)]
    pub plugin_api: Option<String>,
    /// The plugin store backends the package supports, with migrations for each
    /// (`migrations/*.sql` for SQLite, `migrations/postgres/*.sql` for PostgreSQL);
    /// SQLite only when absent.
    #[serde(default = "sqlite_only")]
    pub backends: Vec<Backend>,
}

/// One problem in a manifest: where (a JSON path such as `$.limits.storage_mb`), what is
/// wrong, and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestProblem {
    /// JSON path of the offending value.
    pub path: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// A manifest that cannot be accepted; nothing was installed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The manifest file.
        file: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// One or more problems, each with its JSON path.
    #[error("{file} is not a valid plugin manifest:{}", problems.iter().map(|p| format!("\n  {}: {}", p.path, p.message)).collect::<String>())]
    Invalid {
        /// The manifest file.
        file: String,
        /// Every problem found.
        problems: Vec<ManifestProblem>,
    },
}

const LIMIT_RANGES: [(&str, u32, u32); 9] = [
    ("storage_mb", 1, 102_400),
    ("statement_ms", 1, 60_000),
    ("memory_mb", 1, 4096),
    ("request_ms", 1, 300_000),
    ("value_kb", 1, 4096),
    ("result_kb", 16, 65_536),
    ("events_per_request", 0, 10_000),
    ("events_per_minute", 0, 100_000),
    ("event_kb", 1, 1024),
];

impl Manifest {
    /// Reads and validates `<dir>/plugin.json` against the mirror slices that exist.
    pub fn load(dir: &Path, catalog: &MirrorCatalog) -> Result<Manifest, ManifestError> {
        let file = dir.join("plugin.json");
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
            file: file.display().to_string(),
            source,
        })?;
        Manifest::parse(&file.display().to_string(), &text, catalog)
    }

    /// Parses and validates manifest text; `file` names it in errors.
    pub fn parse(
        file: &str,
        text: &str,
        catalog: &MirrorCatalog,
    ) -> Result<Manifest, ManifestError> {
        let invalid = |problems| ManifestError::Invalid {
            file: file.to_owned(),
            problems,
        };
        let de = &mut serde_json::Deserializer::from_str(text);
        let manifest: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = if inner.to_string().starts_with("unknown field") {
                format!(
                    "{inner}; unknown fields are refused so that a typo cannot be silently ignored"
                )
            } else {
                inner.to_string()
            };
            invalid(vec![ManifestProblem {
                path: if path == "." {
                    "$".into()
                } else {
                    format!("$.{path}")
                },
                message,
            }])
        })?;
        let problems = manifest.problems(catalog);
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(invalid(problems))
        }
    }

    /// The `(slice, column)` pairs the manifest asks to read.
    pub fn requested_grants(&self) -> Vec<(String, String)> {
        self.reads
            .iter()
            .flat_map(|(slice, cols)| cols.iter().map(move |c| (slice.clone(), c.clone())))
            .collect()
    }

    fn problems(&self, catalog: &MirrorCatalog) -> Vec<ManifestProblem> {
        let mut out = Vec::new();
        let mut problem =
            |path: String, message: String| out.push(ManifestProblem { path, message });
        if !is_valid_plugin_id(&self.id) {
            problem(
                "$.id".into(),
                format!(
                    "{:?} is not allowed: use 1 to 32 lowercase ASCII letters, digits and single underscores, starting with a letter (no `__`, not ending in `_`)",
                    self.id
                ),
            );
        } else if let Some(why) = crate::reserved_id(&self.id) {
            problem("$.id".into(), format!("{why}; choose another id"));
        }
        if self.name.trim().is_empty() || self.name.chars().count() > 100 {
            problem("$.name".into(), "must be 1 to 100 characters".into());
        }
        if semver::Version::parse(&self.version).is_err() {
            problem(
                "$.version".into(),
                format!("{:?} is not a semantic version such as 1.2.3", self.version),
            );
        }
        if let Some(api) = &self.plugin_api
            && semver::Version::parse(api).is_err()
        {
            problem(
                "$.plugin_api".into(),
                format!("{api:?} is not a plugin API version such as 0.1.0"),
            );
        }
        if self.backends.is_empty() {
            problem(
                "$.backends".into(),
                "name at least one backend: \"sqlite\", \"postgres\"".into(),
            );
        }
        for (slice, columns) in &self.reads {
            let Some(available) = catalog.slice(slice) else {
                problem(
                    format!("$.reads.{slice}"),
                    format!(
                        "there is no mirror slice {slice:?}; available: {}",
                        catalog.names().join(", ")
                    ),
                );
                continue;
            };
            if columns.is_empty() {
                problem(
                    format!("$.reads.{slice}"),
                    "list at least one column".into(),
                );
            }
            for (i, column) in columns.iter().enumerate() {
                if !available.columns.iter().any(|c| c == column) {
                    problem(
                        format!("$.reads.{slice}[{i}]"),
                        format!(
                            "slice {slice:?} has no column {column:?}; available: {}",
                            available.columns.join(", ")
                        ),
                    );
                } else if columns[..i].contains(column) {
                    problem(
                        format!("$.reads.{slice}[{i}]"),
                        format!("{column:?} is listed twice"),
                    );
                }
            }
        }
        for (i, topic) in self.emits.iter().enumerate() {
            if !is_valid_topic(topic) {
                problem(
                    format!("$.emits[{i}]"),
                    format!(
                        "{topic:?} is not a topic: use dot-separated lowercase words such as \"task.completed\" (at most 64 characters)"
                    ),
                );
            }
        }
        let limits = [
            self.limits.storage_mb,
            self.limits.statement_ms,
            self.limits.memory_mb,
            self.limits.request_ms,
            self.limits.value_kb,
            self.limits.result_kb,
            self.limits.events_per_request,
            self.limits.events_per_minute,
            self.limits.event_kb,
        ];
        for ((field, min, max), value) in LIMIT_RANGES.iter().zip(limits) {
            if !(*min..=*max).contains(&value) {
                problem(
                    format!("$.limits.{field}"),
                    format!("{value} is out of range; allowed: {min} to {max}"),
                );
            }
        }
        out
    }
}

/// Event topics: dot-separated segments of `[a-z0-9_]`, each starting with a letter.
pub fn is_valid_topic(topic: &str) -> bool {
    (1..=64).contains(&topic.len())
        && topic.split('.').all(|seg| {
            seg.starts_with(|c: char| c.is_ascii_lowercase())
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse("plugin.json", text, &MirrorCatalog::default())
    }

    #[test]
    fn the_documented_example_is_valid() {
        let m = parse(
            r#"{ "id": "tasks", "name": "Tasks", "version": "0.1.0", "database": "shared",
                 "reads": { "users": ["id", "display_name", "avatar_url"] },
                 "emits": ["task.completed"],
                 "limits": { "storage_mb": 64, "statement_ms": 1000, "memory_mb": 64, "request_ms": 5000 } }"#,
        )
        .unwrap();
        assert_eq!(m.requested_grants().len(), 3);
        let minimal = parse(r#"{ "id": "notes", "name": "Notes", "version": "1.0.0" }"#).unwrap();
        assert_eq!(minimal.database, DatabaseMode::Shared);
        assert_eq!(minimal.limits, Limits::default());
    }

    #[test]
    fn problems_name_the_json_path_and_what_is_allowed() {
        let cases = [
            (
                r#"{"id":"Tasks","name":"T","version":"1.0.0"}"#,
                "$.id",
                "lowercase",
            ),
            (
                r#"{"id":"a__b","name":"T","version":"1.0.0"}"#,
                "$.id",
                "no `__`",
            ),
            (
                r#"{"id":"t","name":"T","version":"1.0"}"#,
                "$.version",
                "semantic version",
            ),
            (
                r#"{"id":"t","name":"T","version":"1.0.0","database":"private"}"#,
                "$.database",
                "unknown variant",
            ),
            (
                r#"{"id":"t","name":"T","version":"1.0.0","colour":"red"}"#,
                "$.colour",
                "unknown field `colour`",
            ),
            (
                r#"{"id":"t","name":"T","version":"1.0.0","limits":{"storage_gb":1}}"#,
                "$.limits.storage_gb",
                "unknown field `storage_gb`",
            ),
            (
                r#"{"id":"t","name":"T","version":"1.0.0","limits":{"storage_mb":"lots"}}"#,
                "$.limits.storage_mb",
                "invalid type",
            ),
            (
                r#"{"id":"t","name":"T","version":"1.0.0","limits":{"statement_ms":0}}"#,
                "$.limits.statement_ms",
                "allowed: 1 to 60000",
            ),
            (
                r#"{"id":"t","name":"T","version":"1.0.0","reads":{"users":["email"]}}"#,
                "$.reads.users[0]",
                "no column \"email\"",
            ),
            (
                r#"{"id":"t","name":"T","version":"1.0.0","reads":{"passwords":["x"]}}"#,
                "$.reads.passwords",
                "no mirror slice",
            ),
            (
                r#"{"id":"t","name":"T","version":"1.0.0","emits":["Task Completed"]}"#,
                "$.emits[0]",
                "not a topic",
            ),
        ];
        for (text, path, needle) in cases {
            let err = parse(text).unwrap_err();
            let ManifestError::Invalid { problems, .. } = &err else {
                panic!("{err}")
            };
            assert!(
                problems
                    .iter()
                    .any(|p| p.path == path && p.message.contains(needle)),
                "{text}: {err}"
            );
        }
    }
}
