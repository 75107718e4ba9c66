//! How `sv` finds plugins and opens their fenced connections: installed plugins come
//! from the core registry (mode, approved grants, limits); a bare package directory with
//! migrations but no `plugin.json` runs in shared mode with default limits.

use std::path::PathBuf;

use anyhow::{Context, bail};
use sovereign_config::Config;
use sovereign_db::OpenOptions;
use sovereign_db_core::plugins::PluginRecord;
use sovereign_db_plugins::mirror::MirrorCatalog;
use sovereign_db_plugins::{DatabaseMode, Limits, Manifest, PluginDbConfig, StoreLocation};
use sovereign_sync::SyncSettings;

/// The sync configuration (`[sync]`, `[mirror.*]`).
pub fn sync_settings(config: &Config) -> anyhow::Result<SyncSettings> {
    Ok(SyncSettings::from_config(config)?)
}

/// Where the plugin stores (and, in the ATTACH layout, the mirror file) live.
pub fn store_location(config: &Config) -> anyhow::Result<StoreLocation> {
    Ok(StoreLocation {
        shared_store: config.plugins_db_path(),
        isolated_dir: config.data_dir_path().join("plugins"),
        mirror_file: sync_settings(config)?.mirror_file(config),
    })
}

/// The mirror slices this installation publishes.
pub fn mirror_catalog(config: &Config) -> anyhow::Result<MirrorCatalog> {
    Ok(sync_settings(config)?.catalog)
}

/// The package directory of plugin `id`.
pub fn package_dir(config: &Config, id: &str) -> PathBuf {
    config.plugins_dir_path().join(id)
}

/// The registry entry of `id`, if core.db exists and has one.
pub fn registered(config: &Config, id: &str) -> anyhow::Result<Option<PluginRecord>> {
    let path = config.core_db_path();
    if !path.exists() {
        return Ok(None);
    }
    let conn = sovereign_db::open_database(&path, &OpenOptions::core().read_only())?;
    let has_registry: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'plugins'",
        [],
        |r| r.get(0),
    )?;
    if !has_registry {
        return Ok(None);
    }
    Ok(sovereign_db_core::plugins::get(&conn, id)?)
}

/// The fence configuration of a registered plugin.
pub fn config_from_record(record: &PluginRecord) -> anyhow::Result<PluginDbConfig> {
    let manifest: Manifest = serde_json::from_str(&record.manifest).with_context(|| {
        format!(
            "the registry's manifest of plugin {} is unreadable",
            record.id
        )
    })?;
    Ok(PluginDbConfig {
        plugin_id: record.id.clone(),
        mode: record.database_mode.parse()?,
        grants: record.grants.clone(),
        limits: manifest.limits,
    })
}

/// How plugin `id` runs, or `None` for a package with a manifest that is not installed.
pub fn plugin_db_config(config: &Config, id: &str) -> anyhow::Result<Option<PluginDbConfig>> {
    if let Some(record) = registered(config, id)? {
        return config_from_record(&record).map(Some);
    }
    let dir = package_dir(config, id);
    if dir.join("plugin.json").exists() {
        return Ok(None);
    }
    if !dir.join("migrations").is_dir() {
        bail!(
            "plugin {id:?} is not installed and {} has no migrations",
            dir.display()
        );
    }
    Ok(Some(PluginDbConfig {
        plugin_id: id.to_owned(),
        mode: DatabaseMode::Shared,
        grants: vec![],
        limits: Limits::default(),
    }))
}

/// Makes sure the mirror tables a plugin reads exist in the shared store, so that its
/// views and queries on them compile before the first sync.
pub fn ensure_mirrors(config: &Config, grants: &[(String, String)]) -> anyhow::Result<()> {
    if grants.is_empty() {
        return Ok(());
    }
    let settings = sync_settings(config)?;
    let catalog = &settings.catalog;
    let store = settings.open_mirror(config)?;
    for (slice, _) in grants {
        if let Some(slice) = catalog.slice(slice) {
            store.ensure_mirror(slice)?;
        }
    }
    Ok(())
}

/// The database files of this configuration.
pub fn layout(config: &Config) -> anyhow::Result<sovereign_ops::Layout> {
    let location = store_location(config)?;
    Ok(sovereign_ops::Layout {
        core: config.core_db_path(),
        plugins: location.shared_store,
        isolated_dir: location.isolated_dir,
        mirror_file: location.mirror_file,
        data_dir: config.data_dir_path(),
    })
}
