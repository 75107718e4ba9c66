//! `sv migrate:deploy` and `sv migrate:status`, for the core scope and the plugin scopes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use sovereign_config::Config;
use sovereign_db::rusqlite::Connection;
use sovereign_db::{MigrationSet, MigrationState, OpenOptions};
use sovereign_db_plugins::{PluginDb, PluginDbConfig};

use crate::plugin_support;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    /// `core.db`, with the migrations built into `sv`.
    Core,
    /// The plugin store, with each plugin's `migrations/` directory.
    Plugins,
    /// Both.
    All,
}

#[derive(Args)]
pub struct DeployArgs {
    /// Which store to migrate.
    #[arg(long, value_enum, default_value = "all")]
    scope: Scope,
    /// Limit the plugin scope to one plugin.
    #[arg(long, value_name = "ID")]
    plugin: Option<String>,
    /// Print what would run, change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Which store to report on.
    #[arg(long, value_enum, default_value = "all")]
    scope: Scope,
    /// Limit the plugin scope to one plugin.
    #[arg(long, value_name = "ID")]
    plugin: Option<String>,
    /// Exit with status 1 when any migration is pending, changed or unknown (for
    /// scripts and deploy checks).
    #[arg(long)]
    check: bool,
}

#[derive(Subcommand)]
pub enum MigrateCommand {
    /// Apply pending migrations.
    Deploy(DeployArgs),
    /// Show applied, pending and changed migrations.
    Status(StatusArgs),
}

/// Which store a migration set belongs to.
enum Store {
    Core,
    /// A plugin's database, migrated behind that plugin's fence.
    Plugin(PluginDbConfig),
}

/// One migration set and the file it applies to.
struct Target {
    set: MigrationSet,
    store: Store,
    path: PathBuf,
}

impl Target {
    /// Applies pending migrations, creating the file if needed. Plugin migrations run on
    /// the plugin's fenced connection: they cannot create or touch anything outside the
    /// plugin's namespace, and never reach a file marked as the core store.
    fn apply(&self, config: &Config) -> anyhow::Result<Vec<String>> {
        Ok(match &self.store {
            Store::Core => {
                let conn = sovereign_db_core::open(&self.path)?;
                let applied = self.set.deploy(&conn)?;
                // Change capture is derived from the configured projections.
                sovereign_sync::capture::install(&conn, &plugin_support::mirror_catalog(config)?)?;
                applied
            }
            Store::Plugin(plugin) => {
                plugin_support::ensure_mirrors(config, &plugin.grants)?;
                let db = PluginDb::open(&plugin_support::store_location(config)?, plugin.clone())?;
                db.migrate(&self.set)?
            }
        })
    }

    /// Opens the file read-only, or an empty in-memory database if it does not exist
    /// (everything is then pending).
    fn open_for_read(&self) -> anyhow::Result<Connection> {
        if !self.path.exists() {
            return Ok(Connection::open_in_memory()?);
        }
        Ok(sovereign_db::open_database(
            &self.path,
            &OpenOptions::core().read_only(),
        )?)
    }
}

fn targets(config: &Config, scope: Scope, plugin: Option<&str>) -> anyhow::Result<Vec<Target>> {
    if plugin.is_some() && scope == Scope::Core {
        bail!("--plugin limits the plugin scope; use it with --scope=plugins or --scope=all");
    }
    let mut out = Vec::new();
    if matches!(scope, Scope::Core | Scope::All) && plugin.is_none() {
        out.push(Target {
            set: sovereign_db_core::migrations(),
            store: Store::Core,
            path: config.core_db_path(),
        });
    }
    if matches!(scope, Scope::Plugins | Scope::All) {
        let plugins_dir = config.plugins_dir_path();
        let ids = match plugin {
            Some(id) => {
                if !sovereign_db_plugins::discover_plugins(&plugins_dir)?
                    .iter()
                    .any(|p| p == id)
                {
                    bail!(
                        "no plugin {id:?} in {} (expected {}/{id}/migrations/)",
                        plugins_dir.display(),
                        plugins_dir.display()
                    );
                }
                vec![id.to_owned()]
            }
            None => sovereign_db_plugins::discover_plugins(&plugins_dir)?,
        };
        let location = plugin_support::store_location(config)?;
        for id in ids {
            let Some(plugin_config) = plugin_support::plugin_db_config(config, &id)? else {
                tracing::info!(plugin = %id, "skipping a plugin package that is not installed");
                continue;
            };
            out.push(Target {
                set: sovereign_db_plugins::plugin_migrations(&plugins_dir, &id)?,
                path: location.file_for(&id, plugin_config.mode),
                store: Store::Plugin(plugin_config),
            });
        }
    }
    Ok(out)
}

/// Opens `core.db` for an operator command; it must exist with every core migration
/// applied.
pub fn open_migrated_core(config: &Config) -> anyhow::Result<Connection> {
    open_migrated_core_with(config, sovereign_db_core::open_existing)
}

/// Like [`open_migrated_core`], read-only: for reports that must work on a read-only
/// data directory.
pub fn open_migrated_core_read_only(config: &Config) -> anyhow::Result<Connection> {
    open_migrated_core_with(config, sovereign_db_core::open_existing_read_only)
}

fn open_migrated_core_with(
    config: &Config,
    open: fn(&std::path::Path) -> Result<Connection, sovereign_db_core::CoreError>,
) -> anyhow::Result<Connection> {
    let path = config.core_db_path();
    if !path.exists() {
        bail!(
            "{} does not exist; run `sv migrate:deploy --scope=core` first",
            path.display()
        );
    }
    let conn = open(&path)?;
    let pending = sovereign_db_core::migrations()
        .status(&conn)?
        .iter()
        .any(|s| !matches!(s.state, MigrationState::Applied { .. }));
    if pending {
        bail!(
            "{} has core migrations that are not applied; run `sv migrate:deploy --scope=core` first",
            path.display()
        );
    }
    Ok(conn)
}

/// Applies every pending migration of every scope; used by `sv dev`. Also makes sure both
/// store files exist, even with no plugin migrations.
pub fn deploy_all(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut applied = Vec::new();
    for target in targets(config, Scope::All, None)? {
        for file in target.apply(config)? {
            applied.push(format!("{}: {file}", target.set.scope()));
        }
    }
    sovereign_db_plugins::open_shared_store(&config.plugins_db_path())?;
    Ok(applied)
}

/// Every migration that is not cleanly applied, as `scope: file (state)`; used by
/// `sv serve` to refuse to start.
pub fn not_applied(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for target in targets(config, Scope::All, None)? {
        let conn = target.open_for_read()?;
        for status in target.set.status(&conn)? {
            let state = match status.state {
                MigrationState::Applied { .. } => continue,
                MigrationState::Pending => "pending",
                MigrationState::Changed { .. } => "changed after it was applied",
                MigrationState::Unknown { .. } => "applied but unknown to this build",
            };
            out.push(format!("{}: {} ({state})", status.scope, status.file_name));
        }
    }
    Ok(out)
}

pub fn deploy(config: &Config, args: &DeployArgs) -> anyhow::Result<ExitCode> {
    let targets = targets(config, args.scope, args.plugin.as_deref())?;
    if targets.is_empty() {
        println!(
            "nothing to migrate: no plugins in {}",
            config.plugins_dir_path().display()
        );
    }
    for target in &targets {
        let scope = target.set.scope();
        let path = target.path.display();
        if args.dry_run {
            let conn = target.open_for_read()?;
            let plan = target.set.plan(&conn)?;
            if plan.is_empty() {
                println!("{scope}: up to date ({path})");
            }
            for migration in plan {
                println!("{scope}: would apply {} to {path}", migration.file_name());
            }
            continue;
        }
        let applied = target
            .apply(config)
            .with_context(|| format!("migrating {path}"))?;
        if applied.is_empty() {
            println!("{scope}: up to date ({path})");
        }
        for file in applied {
            println!("{scope}: applied {file} to {path}");
        }
    }
    if !args.dry_run && args.scope != Scope::Core {
        // The plugin store exists once its scope is deployed, even with no plugins yet.
        sovereign_db_plugins::open_shared_store(&config.plugins_db_path())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(config: &Config, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let targets = targets(config, args.scope, args.plugin.as_deref())?;
    let mut needs_action = 0;
    for target in &targets {
        let conn = target.open_for_read()?;
        let statuses = target.set.status(&conn)?;
        println!("{} ({})", target.set.scope(), target.path.display());
        if statuses.is_empty() {
            println!("  (no migrations)");
        }
        for s in statuses {
            let state = match &s.state {
                MigrationState::Applied { applied_at } => format!("applied  {applied_at}"),
                MigrationState::Pending => {
                    needs_action += 1;
                    "pending".to_owned()
                }
                MigrationState::Changed { recorded, current } => {
                    needs_action += 1;
                    format!("CHANGED after apply (applied {recorded}, file now {current})")
                }
                MigrationState::Unknown { .. } => {
                    needs_action += 1;
                    "UNKNOWN: applied, but no such file here".to_owned()
                }
            };
            println!("  {:<40} {state}", s.file_name);
        }
    }
    if needs_action > 0 {
        println!(
            "{needs_action} migration(s) need attention; `sv migrate:deploy` applies pending ones"
        );
        if args.check {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
