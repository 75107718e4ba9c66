//! `sv plugins ...`: installing, listing, removing plugins and running SQL as a plugin.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use sovereign_config::Config;
use sovereign_db::migrate::split_statements;
use sovereign_db_core::plugins::{self as registry, PluginRecord};
use sovereign_db_plugins::{
    DatabaseMode, Manifest, Outcome, PluginDb, SqlValue, TrustedPluginStore,
};

use crate::plugin_support::{self, package_dir, store_location};

#[derive(Subcommand)]
pub enum PluginsCommand {
    /// Validate a plugin package, approve its mirror grants, apply its migrations and
    /// register it.
    Install {
        /// The package directory (holding plugin.json, migrations/, plugin.wasm).
        dir: PathBuf,
        /// Approve the mirror columns the manifest asks for without asking.
        #[arg(long)]
        yes: bool,
    },
    /// List installed plugins.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Unregister a plugin; its data stays unless --purge.
    Remove {
        /// Plugin id.
        id: String,
        /// Also drop the plugin's tables (or its isolated file).
        #[arg(long)]
        purge: bool,
    },
    /// Serve a plugin's routes again.
    Enable {
        /// Plugin id.
        id: String,
    },
    /// Stop serving a plugin's routes (its data stays).
    Disable {
        /// Plugin id.
        id: String,
    },
    /// Run one SQL statement exactly as the plugin would (same fence, same limits).
    Sql {
        /// Plugin id.
        id: String,
        /// One SQL statement.
        sql: String,
        /// Print rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move an installed plugin's tables to the other database mode.
    Move {
        /// Plugin id.
        id: String,
        /// The mode to move to.
        #[arg(long, value_enum)]
        to: ModeArg,
    },
    /// The extension host of the running platform.
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Plugin databases.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
}

#[derive(Subcommand)]
pub enum DbCommand {
    /// An interactive SQL prompt behind the plugin's fence.
    Shell {
        /// Plugin id.
        id: String,
    },
    /// Per plugin: tables, rows, bytes on disk, share of the file; free pages; mirror size.
    Inspect {
        /// Only this plugin.
        id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop one plugin's data, after writing a backup of it.
    Purge {
        /// Plugin id.
        id: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Do not write a backup first.
        #[arg(long)]
        no_backup: bool,
    },
    /// Reclaim free pages of the plugin store and isolated files.
    Vacuum,
}

#[derive(Subcommand)]
pub enum HostCommand {
    /// Restart the extension host (also after a crash loop).
    Restart,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// The shared plugins.db.
    Shared,
    /// The plugin's own file.
    Isolated,
}

pub fn run(config: &Config, command: PluginsCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginsCommand::Install { dir, yes } => install(config, &dir, yes),
        PluginsCommand::List { json } => list(config, json),
        PluginsCommand::Remove { id, purge } => remove(config, &id, purge),
        PluginsCommand::Enable { id } => set_enabled(config, &id, true),
        PluginsCommand::Disable { id } => set_enabled(config, &id, false),
        PluginsCommand::Sql { id, sql, json } => run_sql(config, &id, &sql, json),
        PluginsCommand::Move { id, to } => move_plugin(
            config,
            &id,
            match to {
                ModeArg::Shared => DatabaseMode::Shared,
                ModeArg::Isolated => DatabaseMode::Isolated,
            },
        ),
        PluginsCommand::Host {
            command: HostCommand::Restart,
        } => restart_host(config),
        PluginsCommand::Db { command } => match command {
            DbCommand::Shell { id } => shell(config, &id),
            DbCommand::Inspect { id, json } => inspect(config, id.as_deref(), json),
            DbCommand::Purge { id, yes, no_backup } => purge(config, &id, yes, no_backup),
            DbCommand::Vacuum => vacuum(config),
        },
    }
}

fn installed(conn: &sovereign_db::rusqlite::Connection, id: &str) -> anyhow::Result<PluginRecord> {
    registry::get(conn, id)?
        .with_context(|| format!("plugin {id:?} is not installed (see `sv plugins list`)"))
}

pub fn install(config: &Config, dir: &Path, yes: bool) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(dir, &plugin_support::mirror_catalog(config)?)?;
    let id = manifest.id.clone();
    sovereign_db_plugins::check_plugin_id(&id)?;
    let core = crate::migrate::open_migrated_core(config)?;
    if let Some(existing) = registry::list(&core)?
        .into_iter()
        .find(|p| p.id.eq_ignore_ascii_case(&id))
    {
        bail!(
            "plugin {} {} is already installed; a package with the same id never replaces it. \
             Remove it first (`sv plugins remove {}`; its data stays unless --purge) or upgrade it \
             explicitly when upgrades are available",
            existing.id,
            existing.version,
            existing.id
        );
    }
    // The whole package is checked before anything is written: migrations that parse,
    // and a component that compiles and fits the plugin API this host serves.
    let migrations_dir = dir.join("migrations");
    if !migrations_dir.is_dir() {
        bail!(
            "{} is missing: a plugin package needs a migrations directory (it may be empty); \
             nothing was installed",
            migrations_dir.display()
        );
    }
    let component = sovereign_host::component::check_component(&dir.join("plugin.wasm"))
        .context("nothing was installed")?;
    let grants = manifest.requested_grants();
    if !grants.is_empty() {
        println!("plugin {id} asks to read these mirrored core columns:");
        for (slice, columns) in &manifest.reads {
            println!("  {slice}: {}", columns.join(", "));
        }
        if !yes && !confirm("approve?")? {
            bail!(
                "grants not approved; nothing was installed (pass --yes to approve non-interactively)"
            );
        }
    }

    // Stage the package next to its final place, migrate from the staged copy, and only
    // then swap it in and register it: a failure leaves the previous install as it was.
    let target = package_dir(config, &id);
    let in_place = same_dir(dir, &target);
    let staged = if in_place {
        None
    } else {
        let staging = config
            .plugins_dir_path()
            .join(format!(".{id}.staging-{}", std::process::id()));
        copy_dir(dir, &staging)
            .with_context(|| format!("copying {} into {}", dir.display(), staging.display()))?;
        Some(staging)
    };
    let source = staged.clone().unwrap_or_else(|| target.clone());
    let location = store_location(config)?;
    let data_file = location.file_for(&id, manifest.database);
    let file_existed = data_file.exists();
    let result = (|| -> anyhow::Result<Vec<String>> {
        let db_config = sovereign_db_plugins::PluginDbConfig {
            plugin_id: id.clone(),
            mode: manifest.database,
            grants: grants.clone(),
            limits: manifest.limits,
        };
        plugin_support::ensure_mirrors(config, &grants)?;
        let set = sovereign_db::MigrationSet::from_dir(
            &sovereign_db_plugins::migration_scope(&id),
            &source.join("migrations"),
        )?;
        let db = PluginDb::open(&location, db_config)?;
        // All of the package's migrations or none: a failed install leaves nothing.
        Ok(db.migrate_all_or_nothing(&set)?)
    })();
    let applied = match result {
        Ok(applied) => applied,
        Err(e) => {
            if let Some(staging) = &staged {
                let _ = std::fs::remove_dir_all(staging);
            }
            if !file_existed && manifest.database == DatabaseMode::Isolated {
                // The isolated file this install created holds nothing of value.
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", data_file.display()));
                }
            }
            return Err(e.context(format!(
                "installing plugin {id} failed; nothing was registered and nothing of it remains"
            )));
        }
    };
    if let Some(staging) = staged {
        swap_in(&staging, &target)?;
    }
    registry::register(
        &core,
        &PluginRecord {
            id: id.clone(),
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            database_mode: manifest.database.as_str().into(),
            enabled: true,
            manifest: serde_json::to_string(&manifest)?,
            grants,
            load: registry::LoadState::NotReported,
        },
    )?;
    sovereign_db_core::audit::record(
        &core,
        None,
        "plugin.install",
        Some(&format!("plugin:{id}")),
        Some(
            &serde_json::json!({ "version": manifest.version, "database": manifest.database.as_str() }),
        ),
    )?;
    for file in &applied {
        println!("plugin:{id}: applied {file}");
    }
    println!(
        "installed {id} {} ({} mode, plugin API {}, data in {})",
        manifest.version,
        manifest.database.as_str(),
        component.api_version,
        data_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// Replaces `target` with `staging`, keeping the old package until the new one is in.
fn swap_in(staging: &Path, target: &Path) -> anyhow::Result<()> {
    let old = target.with_file_name(format!(
        ".{}.old-{}",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("plugin"),
        std::process::id()
    ));
    let had_old = target.exists();
    if had_old {
        std::fs::rename(target, &old)
            .with_context(|| format!("moving {} aside", target.display()))?;
    }
    if let Err(e) = std::fs::rename(staging, target) {
        if had_old {
            let _ = std::fs::rename(&old, target);
        }
        return Err(e).with_context(|| format!("moving the new package into {}", target.display()));
    }
    if had_old {
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("removing the previous package {}", old.display()))?;
    }
    Ok(())
}

fn list(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let core = crate::migrate::open_migrated_core(config)?;
    let plugins = registry::list(&core)?;
    if json {
        let rows: Vec<serde_json::Value> = plugins
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id, "name": p.name, "version": p.version, "database": p.database_mode,
                    "enabled": p.enabled,
                    "grants": p.grants.iter().map(|(s, c)| format!("{s}.{c}")).collect::<Vec<_>>(),
                    "load": p.load,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if plugins.is_empty() {
        println!("no plugins installed");
    }
    for p in plugins {
        let grants: Vec<String> = p.grants.iter().map(|(s, c)| format!("{s}.{c}")).collect();
        println!(
            "{:<20} {:<10} {:<9} {:<9} {:<10} {}",
            p.id,
            p.version,
            p.database_mode,
            if p.enabled { "enabled" } else { "disabled" },
            match &p.load {
                registry::LoadState::NotReported => "unreported",
                registry::LoadState::Loaded { .. } => "loaded",
                registry::LoadState::Failed { .. } => "FAILED",
            },
            if grants.is_empty() {
                "-".to_owned()
            } else {
                grants.join(",")
            }
        );
        if let registry::LoadState::Failed { error, at } = &p.load {
            println!("    the extension host could not load it ({at}): {error}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(config: &Config, id: &str, purge: bool) -> anyhow::Result<ExitCode> {
    let core = crate::migrate::open_migrated_core(config)?;
    let record = installed(&core, id)?;
    if purge {
        let location = store_location(config)?;
        match record.database_mode.parse::<DatabaseMode>()? {
            DatabaseMode::Shared => {
                let store = TrustedPluginStore::open_shared(&location.shared_store)?;
                for dropped in store.drop_plugin_data(id)? {
                    println!("dropped {dropped}");
                }
            }
            DatabaseMode::Isolated => {
                let file = location.file_for(id, DatabaseMode::Isolated);
                for suffix in ["", "-wal", "-shm"] {
                    let path = PathBuf::from(format!("{}{suffix}", file.display()));
                    if path.exists() {
                        std::fs::remove_file(&path)
                            .with_context(|| format!("removing {}", path.display()))?;
                        println!("removed {}", path.display());
                    }
                }
            }
        }
    }
    registry::unregister(&core, id)?;
    sovereign_db_core::audit::record(
        &core,
        None,
        "plugin.remove",
        Some(&format!("plugin:{id}")),
        Some(&serde_json::json!({ "purge": purge })),
    )?;
    println!(
        "removed {id}{}",
        if purge {
            " and its data"
        } else {
            " (its data is kept; `--purge` drops it)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn set_enabled(config: &Config, id: &str, enabled: bool) -> anyhow::Result<ExitCode> {
    let core = crate::migrate::open_migrated_core(config)?;
    installed(&core, id)?;
    registry::set_enabled(&core, id, enabled)?;
    let action = if enabled {
        "plugin.enable"
    } else {
        "plugin.disable"
    };
    sovereign_db_core::audit::record(&core, None, action, Some(&format!("plugin:{id}")), None)?;
    println!("{id} {}", if enabled { "enabled" } else { "disabled" });
    Ok(ExitCode::SUCCESS)
}

/// Opens the plugin's fenced connection, as the extension host would.
fn open_fenced(config: &Config, id: &str) -> anyhow::Result<PluginDb> {
    let db_config = plugin_support::plugin_db_config(config, id)?.with_context(|| {
        format!(
            "plugin {id:?} is not installed; run `sv plugins install {}`",
            package_dir(config, id).display()
        )
    })?;
    Ok(PluginDb::open(&store_location(config)?, db_config)?)
}

fn run_sql(config: &Config, id: &str, sql: &str, json: bool) -> anyhow::Result<ExitCode> {
    let db = open_fenced(config, id)?;
    let outcome = db.transaction(|db| db.execute(sql, &[]))?;
    print_outcome(&mut std::io::stdout().lock(), &outcome, json)?;
    Ok(ExitCode::SUCCESS)
}

fn print_outcome(out: &mut impl Write, outcome: &Outcome, json: bool) -> std::io::Result<()> {
    match outcome {
        Outcome::Changed {
            rows_affected,
            last_insert_id,
        } => {
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "rows_affected": rows_affected, "last_insert_id": last_insert_id })
                )
            } else {
                writeln!(
                    out,
                    "{rows_affected} row(s) affected (last insert id {last_insert_id})"
                )
            }
        }
        Outcome::Rows { columns, rows } if json => {
            let objects: Vec<serde_json::Value> = rows
                .iter()
                .map(|row| {
                    serde_json::Value::Object(
                        columns
                            .iter()
                            .cloned()
                            .zip(row.iter().map(SqlValue::to_json))
                            .collect(),
                    )
                })
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&objects).unwrap_or_default()
            )
        }
        Outcome::Rows { columns, rows } => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| r.iter().map(|v| v.to_string()).collect())
                .collect();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].chars().count())
                        .chain([c.chars().count()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |values: Vec<&str>| {
                values
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect::<Vec<_>>()
                    .join(" | ")
                    .trim_end()
                    .to_owned()
            };
            writeln!(
                out,
                "{}",
                line(columns.iter().map(String::as_str).collect())
            )?;
            writeln!(
                out,
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("-+-")
            )?;
            for row in &cells {
                writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
            }
            writeln!(
                out,
                "({} row{})",
                rows.len(),
                if rows.len() == 1 { "" } else { "s" }
            )
        }
    }
}

fn shell(config: &Config, id: &str) -> anyhow::Result<ExitCode> {
    let db = open_fenced(config, id)?;
    let interactive = std::io::stdin().is_terminal();
    let mut stdout = std::io::stdout().lock();
    if interactive {
        writeln!(
            stdout,
            "SQL as plugin {id}, behind its fence. End statements with `;`. `.tables` lists its tables, `.quit` leaves."
        )?;
    }
    let mut buffer = String::new();
    let mut failures = 0;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            write!(
                stdout,
                "{}",
                if buffer.is_empty() {
                    format!("{id}> ")
                } else {
                    "   ...> ".into()
                }
            )?;
            stdout.flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        if buffer.is_empty() {
            match line.trim() {
                ".quit" | ".exit" => break,
                ".tables" => {
                    let path = store_location(config)?.file_for(id, plugin_mode(config, id)?);
                    let store = match plugin_mode(config, id)? {
                        DatabaseMode::Shared => TrustedPluginStore::open_shared(&path)?,
                        DatabaseMode::Isolated => TrustedPluginStore::open_isolated(&path, id)?,
                    };
                    for (kind, name) in store.plugin_objects(id)? {
                        writeln!(stdout, "{kind:<8} {name}")?;
                    }
                    continue;
                }
                "" => continue,
                _ => {}
            }
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !buffer.trim_end().ends_with(';')
            || split_statements(&buffer)
                .iter()
                .any(|(_, s)| !s.ends_with(';'))
        {
            continue;
        }
        for (_, statement) in split_statements(&buffer) {
            match db.transaction(|db| db.execute(statement, &[])) {
                Ok(outcome) => print_outcome(&mut stdout, &outcome, false)?,
                Err(e) => {
                    failures += 1;
                    writeln!(stdout, "error: {e}")?;
                }
            }
        }
        buffer.clear();
    }
    Ok(if failures > 0 && !interactive {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn plugin_mode(config: &Config, id: &str) -> anyhow::Result<DatabaseMode> {
    Ok(plugin_support::plugin_db_config(config, id)?
        .map(|c| c.mode)
        .unwrap_or_default())
}

/// Moves an installed plugin's tables between the shared store and its own file: every
/// table (schema and rows), view, index and trigger, plus its migration tracking rows,
/// copied in one transaction on the destination, checked by row counts, and only then
/// dropped from the source and the registry updated.
fn move_plugin(config: &Config, id: &str, to: DatabaseMode) -> anyhow::Result<ExitCode> {
    let core = crate::migrate::open_migrated_core(config)?;
    let mut record = installed(&core, id)?;
    let from: DatabaseMode = record.database_mode.parse()?;
    if from == to {
        println!("{id} is already in {} mode", to.as_str());
        return Ok(ExitCode::SUCCESS);
    }
    let location = store_location(config)?;
    let open = |mode: DatabaseMode| match mode {
        DatabaseMode::Shared => TrustedPluginStore::open_shared(&location.shared_store),
        DatabaseMode::Isolated => {
            TrustedPluginStore::open_isolated(&location.file_for(id, DatabaseMode::Isolated), id)
        }
    };
    let source = open(from)?;
    let destination = open(to)?;
    let moved = destination.copy_plugin_from(&source, id)?;
    source.drop_plugin_data(id)?;
    record.database_mode = to.as_str().into();
    let mut manifest: Manifest = serde_json::from_str(&record.manifest)?;
    manifest.database = to;
    record.manifest = serde_json::to_string(&manifest)?;
    registry::register(&core, &record)?;
    sovereign_db_core::audit::record(
        &core,
        None,
        "plugin.move",
        Some(&format!("plugin:{id}")),
        Some(&serde_json::json!({ "from": from.as_str(), "to": to.as_str() })),
    )?;
    for (table, rows) in moved {
        println!("moved {table} ({rows} rows)");
    }
    println!(
        "{id} is now in {} mode; update \"database\" in its plugin.json to match",
        to.as_str()
    );
    Ok(ExitCode::SUCCESS)
}

fn inspect(config: &Config, only: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let layout = plugin_support::layout(config)?;
    let report = sovereign_ops::inspect::inspect(
        &layout.plugins,
        &layout.isolated_files()?,
        layout.mirror_file.as_deref(),
        only,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    for f in &report.files {
        println!(
            "{}: {} bytes, {} free pages ({} bytes reclaimable)",
            f.path.display(),
            f.bytes,
            f.free_pages,
            f.free_pages * f.page_size
        );
    }
    println!("mirror tables: {} bytes", report.mirror_bytes);
    if report.plugins.is_empty() {
        println!(
            "no plugin data{}",
            only.map(|o| format!(" for {o}")).unwrap_or_default()
        );
    }
    for p in &report.plugins {
        println!(
            "plugin {}: {} bytes ({:.1}% of {})",
            p.id,
            p.bytes,
            p.share_of_file * 100.0,
            p.file.display()
        );
        for t in &p.tables {
            println!("  {:<40} {:>10} rows {:>12} bytes", t.name, t.rows, t.bytes);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn purge(config: &Config, id: &str, yes: bool, no_backup: bool) -> anyhow::Result<ExitCode> {
    let layout = plugin_support::layout(config)?;
    let mode = plugin_mode(config, id).unwrap_or_default();
    let isolated = layout.isolated_dir.join(format!("{id}.db"));
    let report = sovereign_ops::inspect::inspect(
        &layout.plugins,
        &layout.isolated_files()?,
        None,
        Some(id),
    )?;
    let Some(usage) = report.plugins.iter().find(|p| p.id == id) else {
        bail!("plugin {id} has no data to purge");
    };
    println!(
        "plugin {id}: {} table(s), {} rows, {} bytes in {}",
        usage.tables.len(),
        usage.tables.iter().map(|t| t.rows).sum::<u64>(),
        usage.bytes,
        usage.file.display()
    );
    if !yes && !confirm(&format!("drop all data of plugin {id}?"))? {
        bail!("not confirmed; nothing was dropped (pass --yes to purge non-interactively)");
    }
    let backups = config.base_dir.join("backups");
    let result = sovereign_ops::inspect::purge(
        &layout.plugins,
        Some(&isolated),
        id,
        if usage.file == isolated {
            DatabaseMode::Isolated
        } else {
            mode
        },
        (!no_backup).then_some(backups.as_path()),
    )?;
    if let Some(backup) = &result.backup {
        println!("backed up {id}'s data to {}", backup.display());
    }
    for d in &result.dropped {
        println!("dropped {d}");
    }
    Ok(ExitCode::SUCCESS)
}

fn vacuum(config: &Config) -> anyhow::Result<ExitCode> {
    let layout = plugin_support::layout(config)?;
    let mut files = vec![layout.plugins.clone()];
    files.extend(layout.isolated_files()?.into_iter().map(|(_, p)| p));
    for file in files.iter().filter(|f| f.exists()) {
        let (before, after, full) = sovereign_ops::inspect::vacuum(file)?;
        if full {
            println!(
                "warning: {} is not set up for incremental vacuum; a full VACUUM locked it while it ran",
                file.display()
            );
        }
        println!(
            "{}: {before} -> {after} bytes ({} reclaimed)",
            file.display(),
            before.saturating_sub(after)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn restart_host(config: &Config) -> anyhow::Result<ExitCode> {
    let lock = config.lock_file_path();
    let Some(pid) = sovereign_kernel::RuntimeLock::holder(&lock) else {
        bail!(
            "the platform is not running (no process holds {})",
            lock.display()
        );
    };
    let pid: i32 = pid
        .parse()
        .with_context(|| format!("{} holds no pid", lock.display()))?;
    crate::ops_cmd::signal(pid, rustix::process::Signal::USR1)?;
    println!("asked the platform (pid {pid}) to restart its extension host");
    Ok(ExitCode::SUCCESS)
}
