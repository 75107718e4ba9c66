//! `sv plugins ...`: installing, listing, removing plugins and running SQL as a plugin.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use sovereign_db::migrate::split_statements;
use sovereign_db_core::plugins::LoadState;
use sovereign_db_plugins::{DatabaseMode, Manifest, Outcome, SqlValue};
use sovereign_platform::plugins::{self, Approval, Moved};
use sovereign_platform::{App, PlatformError};
use sovereign_platform::{authoring, plugin_logs};

#[derive(Subcommand)]
pub enum PluginsCommand {
    /// Start a new plugin package (its own Cargo project, with the SDK in `sdk/`).
    New {
        /// The plugin id (lowercase letters, digits, single underscores).
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a plugin package into its plugin.wasm and validate it as install would.
    Build {
        /// The package directory (default: the current directory).
        dir: Option<PathBuf>,
    },
    /// Build a package, install it into a throwaway platform and run its tests against it
    /// (`cargo test` with `sovereign-plugin-testkit` connected to that platform).
    Test {
        /// The package directory (default: the current directory).
        dir: Option<PathBuf>,
    },
    /// Upgrade an installed plugin to a newer version of its package (new migrations
    /// applied behind the fence; manifest changes shown).
    Upgrade {
        /// The package directory.
        dir: PathBuf,
        /// Approve mirror columns the new version asks for without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Build, install (or upgrade) and reload a package on every change to its sources,
    /// for a running `sv dev` (development only: it approves what the package asks for).
    Dev {
        /// The package directory.
        dir: PathBuf,
    },
    /// What a plugin logged while serving requests (written by the running platform).
    Logs {
        /// Plugin id.
        id: String,
        /// How many of the last lines to show.
        #[arg(long, default_value_t = 50)]
        lines: usize,
        /// Keep printing new lines as they are written (Ctrl-C stops).
        #[arg(long, short)]
        follow: bool,
    },
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

pub fn run(app: &App, command: PluginsCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginsCommand::New { name, dir } => new_package(&name, dir),
        PluginsCommand::Build { dir } => build(app, &dir.unwrap_or_else(|| PathBuf::from("."))),
        PluginsCommand::Test { dir } => test(app, &dir.unwrap_or_else(|| PathBuf::from("."))),
        PluginsCommand::Upgrade { dir, yes } => upgrade(app, &dir, yes),
        PluginsCommand::Dev { dir } => dev(app, &dir),
        PluginsCommand::Logs { id, lines, follow } => logs(app, &id, lines, follow),
        PluginsCommand::Install { dir, yes } => install(app, &dir, yes),
        PluginsCommand::List { json } => list(app, json),
        PluginsCommand::Remove { id, purge } => remove(app, &id, purge),
        PluginsCommand::Enable { id } => set_enabled(app, &id, true),
        PluginsCommand::Disable { id } => set_enabled(app, &id, false),
        PluginsCommand::Sql { id, sql, json } => run_sql(app, &id, &sql, json),
        PluginsCommand::Move { id, to } => move_plugin(
            app,
            &id,
            match to {
                ModeArg::Shared => DatabaseMode::Shared,
                ModeArg::Isolated => DatabaseMode::Isolated,
            },
        ),
        PluginsCommand::Host {
            command: HostCommand::Restart,
        } => {
            for pid in plugins::restart_host(app)? {
                println!("asked the platform (pid {pid}) to restart its extension host");
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginsCommand::Db { command } => match command {
            DbCommand::Shell { id } => shell(app, &id),
            DbCommand::Inspect { id, json } => inspect(app, id.as_deref(), json),
            DbCommand::Purge { id, yes, no_backup } => purge(app, &id, yes, no_backup),
            DbCommand::Vacuum => vacuum(app),
        },
    }
}

fn new_package(name: &str, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    authoring::new_package(name, &dir)?;
    println!("created plugin package {name} in {}", dir.display());
    println!(
        "next: `sv plugins build {}`, then `sv plugins install {} --yes`",
        dir.display(),
        dir.display()
    );
    println!("its route: GET /api/plugins/{name}/hello");
    Ok(ExitCode::SUCCESS)
}

fn build(app: &App, dir: &Path) -> anyhow::Result<ExitCode> {
    let built = authoring::build_package(app, dir)?;
    println!(
        "built {} {}: {} ({} bytes, plugin API {}), {} migration(s); the package is valid",
        built.manifest.id,
        built.manifest.version,
        built.component.display(),
        built.bytes,
        built.api_version,
        built.migrations.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn test(app: &App, dir: &Path) -> anyhow::Result<ExitCode> {
    let run = authoring::TestRun {
        sv_executable: std::env::current_exe()?,
    };
    Ok(if authoring::test_package(app, dir, &run)? {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: the plugin's tests failed (cargo's report is above)");
        ExitCode::FAILURE
    })
}

fn upgrade(app: &App, dir: &Path, yes: bool) -> anyhow::Result<ExitCode> {
    let mut approve = |changes: &[String]| {
        println!("the new version asks for more mirrored core columns:");
        for change in changes {
            println!("  {change}");
        }
        yes || confirm("approve?").unwrap_or(false)
    };
    let upgraded = plugins::upgrade(app, dir, false, &mut approve)?;
    for change in &upgraded.changes {
        println!("{}: {change}", upgraded.id);
    }
    for file in &upgraded.applied {
        println!("plugin:{}: applied {file}", upgraded.id);
    }
    println!(
        "upgraded {} {} -> {}; a running platform reloads it within a few seconds",
        upgraded.id, upgraded.from_version, upgraded.to_version
    );
    Ok(ExitCode::SUCCESS)
}

/// How often `sv plugins dev` looks at the sources.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(300);

fn dev(app: &App, dir: &Path) -> anyhow::Result<ExitCode> {
    let mut seen = authoring::source_stamp(dir)?;
    // The plugin's log lines, printed as the running platform writes them.
    let mut log: Option<plugin_logs::LogFollower> = None;
    loop {
        // A failed round is reported and the watch goes on: the next save may fix it.
        match dev_round(app, dir) {
            Ok(id) if log.is_none() => log = Some(plugin_logs::LogFollower::new(app, &id)),
            Ok(_) => {}
            Err(e) => eprintln!("error: {}", crate::report(&e)),
        }
        println!("watching {} for changes (Ctrl-C stops)", dir.display());
        loop {
            std::thread::sleep(WATCH_EVERY);
            if let Some(follower) = &mut log {
                print_log_lines(follower)?;
            }
            let now = authoring::source_stamp(dir)?;
            if now != seen {
                seen = now;
                break;
            }
        }
    }
}

/// One round of `sv plugins dev`, printed; returns the plugin's id.
fn dev_round(app: &App, dir: &Path) -> anyhow::Result<String> {
    let started = std::time::Instant::now();
    let id = match authoring::deploy_for_development(app, dir)? {
        authoring::Deployed::Installed(installed) => {
            println!("installed {} {}", installed.id, installed.version);
            installed.id
        }
        authoring::Deployed::Reloaded(upgraded) => {
            for file in &upgraded.applied {
                println!("plugin:{}: applied {file}", upgraded.id);
            }
            println!("reloaded {} {}", upgraded.id, upgraded.to_version);
            upgraded.id
        }
    };
    println!("ready in {:.1} s", started.elapsed().as_secs_f64());
    Ok(id)
}

fn logs(app: &App, id: &str, lines: usize, follow: bool) -> anyhow::Result<ExitCode> {
    let mut follower = plugin_logs::LogFollower::new(app, id);
    for entry in plugin_logs::recent(app, id, lines)? {
        print_log_entry(id, &entry);
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(WATCH_EVERY);
        print_log_lines(&mut follower)?;
    }
}

fn print_log_lines(follower: &mut plugin_logs::LogFollower) -> anyhow::Result<()> {
    for entry in follower.read_new()? {
        print_log_entry(follower.plugin(), &entry);
    }
    Ok(())
}

/// `[id] HH:MM:SS.mmm LEVEL message` (UTC).
fn print_log_entry(id: &str, entry: &plugin_logs::LogEntry) {
    let ms = entry.at_ms.rem_euclid(86_400_000);
    let level = format!("{:?}", entry.level).to_ascii_uppercase();
    println!(
        "[{id}] {:02}:{:02}:{:02}.{:03} {level:5} {}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000,
        entry.message
    );
}

fn install(app: &App, dir: &Path, yes: bool) -> anyhow::Result<ExitCode> {
    let mut ask = |manifest: &Manifest| {
        println!(
            "plugin {} asks to read these mirrored core columns:",
            manifest.id
        );
        for (slice, columns) in &manifest.reads {
            println!("  {slice}: {}", columns.join(", "));
        }
        yes || confirm("approve?").unwrap_or(false)
    };
    let installed = plugins::install(app, dir, Approval::Ask(&mut ask))?;
    for file in &installed.applied {
        println!("plugin:{}: applied {file}", installed.id);
    }
    println!(
        "installed {} {} ({} mode, plugin API {}, data in {})",
        installed.id,
        installed.version,
        installed.mode.as_str(),
        installed.api_version,
        installed.data_location
    );
    Ok(ExitCode::SUCCESS)
}

fn confirm(question: &str) -> std::io::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// One row of `sv plugins list --json`.
#[derive(serde::Serialize)]
struct ListedPlugin<'a> {
    id: &'a str,
    name: &'a str,
    version: &'a str,
    database: DatabaseMode,
    /// The plugin API its component uses (`null`: installed before installs recorded it).
    plugin_api: Option<&'a str>,
    enabled: bool,
    grants: Vec<String>,
    load: &'a LoadState,
}

fn list(app: &App, json: bool) -> anyhow::Result<ExitCode> {
    let plugins = plugins::list(app)?;
    let grants = |grants: &[(String, String)]| -> Vec<String> {
        grants.iter().map(|(s, c)| format!("{s}.{c}")).collect()
    };
    if json {
        let rows: Vec<ListedPlugin<'_>> = plugins
            .iter()
            .map(|p| ListedPlugin {
                id: &p.id,
                name: &p.manifest.name,
                version: &p.manifest.version,
                database: p.manifest.database,
                plugin_api: p.manifest.plugin_api.as_deref(),
                enabled: p.enabled,
                grants: grants(&p.grants),
                load: &p.load,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if plugins.is_empty() {
        println!("no plugins installed");
    }
    for p in plugins {
        let granted = grants(&p.grants);
        println!(
            "{:<20} {:<10} {:<9} {:<8} {:<9} {:<10} {}",
            p.id,
            p.manifest.version,
            p.manifest.database.as_str(),
            p.manifest
                .plugin_api
                .as_deref()
                .map_or("api ?".to_owned(), |v| format!("api {v}")),
            if p.enabled { "enabled" } else { "disabled" },
            match &p.load {
                LoadState::NotReported => "unreported",
                LoadState::Loaded { .. } => "loaded",
                LoadState::Failed { .. } => "FAILED",
            },
            if granted.is_empty() {
                "-".to_owned()
            } else {
                granted.join(",")
            }
        );
        if let LoadState::Failed { error, at } = &p.load {
            println!("    the extension host could not load it ({at}): {error}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(app: &App, id: &str, purge: bool) -> anyhow::Result<ExitCode> {
    let removed = plugins::remove(app, id, purge)?;
    for dropped in &removed.dropped {
        println!("dropped {dropped}");
    }
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

fn set_enabled(app: &App, id: &str, enabled: bool) -> anyhow::Result<ExitCode> {
    plugins::set_enabled(app, id, enabled, None)?;
    println!("{id} {}", if enabled { "enabled" } else { "disabled" });
    Ok(ExitCode::SUCCESS)
}

fn run_sql(app: &App, id: &str, sql: &str, json: bool) -> anyhow::Result<ExitCode> {
    let mut db = plugins::open_fenced(app, id)?;
    let outcome = db.execute_alone(sql, &[])?;
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
            let text = serde_json::to_string_pretty(&objects).map_err(std::io::Error::other)?;
            writeln!(out, "{text}")
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

fn shell(app: &App, id: &str) -> anyhow::Result<ExitCode> {
    let mut db = plugins::open_fenced(app, id)?;
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
                    for (kind, name) in plugins::objects(app, id)? {
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
            match db.execute_alone(statement, &[]) {
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

fn move_plugin(app: &App, id: &str, to: DatabaseMode) -> anyhow::Result<ExitCode> {
    match plugins::move_to(app, id, to)? {
        Moved::AlreadyThere => println!("{id} is already in {} mode", to.as_str()),
        Moved::Tables(moved) => {
            for (table, rows) in moved {
                println!("moved {table} ({rows} rows)");
            }
            println!(
                "{id} is now in {} mode; update \"database\" in its plugin.json to match",
                to.as_str()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(app: &App, only: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let report = plugins::inspect(app, only)?;
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

fn purge(app: &App, id: &str, yes: bool, no_backup: bool) -> anyhow::Result<ExitCode> {
    let plan = plugins::plan_purge(app, id)?;
    let usage = &plan.usage;
    println!(
        "plugin {id}: {} table(s), {} rows, {} bytes in {}",
        usage.tables.len(),
        usage.tables.iter().map(|t| t.rows).sum::<u64>(),
        usage.bytes,
        usage.file.display()
    );
    if !yes && !confirm(&format!("drop all data of plugin {id}?"))? {
        return Err(PlatformError::NotConfirmed { what: "dropped" }.into());
    }
    let result = plugins::purge(app, &plan, !no_backup)?;
    if let Some(backup) = &result.backup {
        println!("backed up {id}'s data to {}", backup.display());
    }
    if let Some(backup) = &result.routines_backup {
        println!(
            "backed up {id}'s stored routines to {} (load it as the plugin's account or an administrator)",
            backup.display()
        );
    }
    for d in &result.dropped {
        println!("dropped {d}");
    }
    Ok(ExitCode::SUCCESS)
}

fn vacuum(app: &App) -> anyhow::Result<ExitCode> {
    for v in plugins::vacuum(app)? {
        if v.full {
            println!(
                "warning: {} is not set up for incremental vacuum; a full VACUUM locked it while it ran",
                v.file.display()
            );
        }
        println!(
            "{}: {} -> {} bytes ({} reclaimed)",
            v.file.display(),
            v.before,
            v.after,
            v.before.saturating_sub(v.after)
        );
    }
    Ok(ExitCode::SUCCESS)
}
