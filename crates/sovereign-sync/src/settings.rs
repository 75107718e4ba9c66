//! `[sync]` and `[mirror.<slice>]` in `sovereign.toml`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sovereign_config::Config;
use sovereign_db_plugins::mirror::{MirrorCatalog, MirrorSlice};

use crate::SyncError;

/// When changes reach the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Freshness {
    /// Pushed within `coalesce_ms` of the commit.
    NearRealTime,
    /// Applied by a job every `interval_secs`.
    Scheduled,
}

/// Where the mirror lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorLayout {
    /// `core__<slice>` tables inside `plugins.db` (the RFC's materialized copies).
    PluginStore,
    /// A file of its own (`data/mirror.db`), written only by the trusted sync path and
    /// attached read-only into every plugin connection (the RFC's ATTACH alternative).
    MirrorFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncSection {
    #[serde(default = "default_mode")]
    mode: Freshness,
    #[serde(default = "default_coalesce")]
    coalesce_ms: u64,
    #[serde(default = "default_interval")]
    interval_secs: u64,
    #[serde(default = "default_layout")]
    layout: MirrorLayout,
    #[serde(default = "default_batch")]
    batch_size: usize,
}

fn default_mode() -> Freshness {
    Freshness::NearRealTime
}
fn default_coalesce() -> u64 {
    10
}
fn default_interval() -> u64 {
    3600
}
fn default_layout() -> MirrorLayout {
    MirrorLayout::PluginStore
}
fn default_batch() -> usize {
    5000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SliceSection {
    source: String,
    columns: Vec<String>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    allow_secret: Vec<String>,
}

/// The effective sync configuration.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Published slices.
    pub catalog: MirrorCatalog,
    /// Near-real-time or scheduled.
    pub freshness: Freshness,
    /// How long changes are coalesced before a push.
    pub coalesce: Duration,
    /// The scheduled job's interval.
    pub interval: Duration,
    /// Where the mirror lives.
    pub layout: MirrorLayout,
    /// Most outbox rows per batch.
    pub batch_size: usize,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            catalog: MirrorCatalog::default(),
            freshness: default_mode(),
            coalesce: Duration::from_millis(default_coalesce()),
            interval: Duration::from_secs(default_interval()),
            layout: default_layout(),
            batch_size: default_batch(),
        }
    }
}

impl SyncSettings {
    /// Reads `[sync]` and `[mirror.<slice>]` from the configuration file. Without a
    /// `[mirror]` table the default catalog (the `users` slice) applies.
    pub fn from_config(config: &Config) -> Result<SyncSettings, SyncError> {
        let mut settings = SyncSettings::default();
        let err = |section: &str, e: toml::de::Error| {
            SyncError::Config(format!(
                "[{section}] in {}: {e}",
                config
                    .file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ))
        };
        if let Some(value) = config.sections.get("sync") {
            let section: SyncSection = value.clone().try_into().map_err(|e| err("sync", e))?;
            settings.freshness = section.mode;
            settings.coalesce = Duration::from_millis(section.coalesce_ms);
            settings.interval = Duration::from_secs(section.interval_secs.max(1));
            settings.layout = section.layout;
            settings.batch_size = section.batch_size.clamp(1, 100_000);
        }
        if let Some(value) = config.sections.get("mirror") {
            let table = value.as_table().ok_or_else(|| {
                SyncError::Config("[mirror] must be a table of slices, e.g. [mirror.users]".into())
            })?;
            let mut slices = Vec::new();
            for (name, value) in table {
                let section: SliceSection = value
                    .clone()
                    .try_into()
                    .map_err(|e| err(&format!("mirror.{name}"), e))?;
                slices.push(MirrorSlice {
                    name: name.clone(),
                    source_table: section.source,
                    columns: section.columns,
                    filter: section.filter,
                    allow_secret: section.allow_secret,
                });
            }
            settings.catalog = MirrorCatalog::new(slices);
        }
        Ok(settings)
    }

    /// The mirror's own file in the [`MirrorLayout::MirrorFile`] layout.
    pub fn mirror_file(&self, config: &Config) -> Option<PathBuf> {
        (self.layout == MirrorLayout::MirrorFile).then(|| config.data_dir_path().join("mirror.db"))
    }

    /// The file holding the mirror tables in this layout (refused when the plugin store,
    /// and with it the mirror, is on PostgreSQL).
    pub fn mirror_store_path(&self, config: &Config) -> Result<PathBuf, SyncError> {
        if config.plugins_mysql_url().is_some() {
            return Err(SyncError::NotOnMysqlMirror {
                operation: "a mirror file",
            });
        }
        if config.plugins_postgres_url().is_some() {
            return Err(SyncError::NotOnPostgres {
                operation: "a mirror file",
            });
        }
        self.mirror_file(config)
            .or_else(|| config.plugins_db_path())
            .ok_or(SyncError::NotOnPostgres {
                operation: "a mirror file",
            })
    }

    /// Opens the mirror's trusted handle in this layout (on PostgreSQL: the plugin
    /// database, as its owner).
    pub fn open_mirror(&self, config: &Config) -> Result<crate::Mirror, SyncError> {
        if let Some(url) = config.plugins_postgres_url() {
            return Ok(crate::Mirror::Postgres(std::cell::RefCell::new(
                sovereign_postgres::mirror::PgMirror::connect(url.expose())?,
            )));
        }
        if let Some(url) = config.plugins_mysql_url() {
            return Ok(crate::Mirror::Mysql(std::cell::RefCell::new(
                sovereign_mysql::mirror::MyMirror::connect(url.expose())?,
            )));
        }
        let path = self.mirror_store_path(config)?;
        Ok(crate::Mirror::Sqlite(match self.layout {
            MirrorLayout::PluginStore => {
                sovereign_db_plugins::TrustedPluginStore::open_shared(&path)?
            }
            MirrorLayout::MirrorFile => {
                sovereign_db_plugins::TrustedPluginStore::open_mirror_file(&path)?
            }
        }))
    }

    /// Opens the existing mirror read-only, for reports on a read-only data directory
    /// (on PostgreSQL: as its owner, which reports only read).
    pub fn open_mirror_read_only(&self, config: &Config) -> Result<crate::Mirror, SyncError> {
        if config.plugins_postgres_url().is_some() || config.plugins_mysql_url().is_some() {
            return self.open_mirror(config);
        }
        let path = self.mirror_store_path(config)?;
        let kind = match self.layout {
            MirrorLayout::PluginStore => sovereign_db::StoreKind::Plugins,
            MirrorLayout::MirrorFile => sovereign_db::StoreKind::Mirror,
        };
        Ok(crate::Mirror::Sqlite(
            sovereign_db_plugins::TrustedPluginStore::open_read_only(&path, &kind)?,
        ))
    }
}
