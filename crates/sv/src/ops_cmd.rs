//! `sv backup`, `sv backup:verify`, `sv restore`, `sv migrate:split`, `sv doctor`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sovereign_config::Config;
use sovereign_kernel::RuntimeLock;
use sovereign_ops::backup::{BackupOptions, backup, verify};
use sovereign_ops::split::{Destination, Mapping};

use crate::{migrate, plugin_support};

#[derive(Args)]
pub struct BackupArgs {
    /// The backup directory to create (default: backups/sv-backup-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Back up core.db only.
    #[arg(long)]
    no_plugins: bool,
    /// Leave out one plugin's data (repeatable).
    #[arg(long = "exclude-plugin", value_name = "ID")]
    exclude_plugins: Vec<String>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The backup directory.
    path: PathBuf,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup directory.
    path: PathBuf,
    /// Stop a running platform (SIGTERM to the pid in the lock file) before restoring.
    #[arg(long)]
    stop: bool,
}

#[derive(Args)]
pub struct SplitArgs {
    /// The single legacy SQLite file holding core and plugin tables.
    #[arg(long)]
    from: PathBuf,
    /// Print the plan, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Attribute a table: `TABLE=PLUGIN` (into that plugin's namespace) or `TABLE=skip`.
    #[arg(long = "map", value_name = "TABLE=PLUGIN|skip")]
    maps: Vec<String>,
}

fn byte_bar(label: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(label);
    bar
}

pub fn run_backup(config: &Config, args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let layout = plugin_support::layout(config)?;
    let out = args.out.clone().unwrap_or_else(|| {
        config
            .base_dir
            .join("backups")
            .join(format!("sv-backup-{}", sovereign_ops::stamp()))
    });
    let bar = byte_bar("backup");
    let started = Instant::now();
    let manifest = backup(
        &layout,
        &BackupOptions {
            out: out.clone(),
            include_plugin_data: !args.no_plugins,
            exclude_plugins: args.exclude_plugins.clone(),
        },
        &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )?;
    bar.finish_and_clear();
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    println!("backup written to {}", out.display());
    for f in &manifest.files {
        println!("  {:<24} {:>12} bytes  sha256 {}", f.name, f.size, f.sha256);
    }
    println!(
        "  {} bytes in {:.2} s; mirror watermark {}, core acknowledged {}",
        bytes,
        started.elapsed().as_secs_f64(),
        manifest.mirror_watermark,
        manifest.core_acked_seq
    );
    println!("check it with `sv backup:verify {}`", out.display());
    Ok(ExitCode::SUCCESS)
}

pub fn run_verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let manifest = verify(&args.path)?;
    println!(
        "{} is a valid backup: {} file(s), taken {} by sv {}, schema {:?}",
        args.path.display(),
        manifest.files.len(),
        manifest.created_at,
        manifest.project_version,
        manifest.schema_versions
    );
    Ok(ExitCode::SUCCESS)
}

fn wait_for_stop(lock: &Path, pid: &str) -> anyhow::Result<()> {
    let pid: i32 = pid
        .parse()
        .with_context(|| format!("the lock file {} holds no pid ({pid:?})", lock.display()))?;
    signal(pid, rustix::process::Signal::TERM)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while RuntimeLock::holder(lock).is_some() {
        if Instant::now() > deadline {
            bail!("the platform (pid {pid}) did not stop within 30 s; nothing was restored");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("stopped the running platform (pid {pid})");
    Ok(())
}

pub fn run_restore(config: &Config, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let layout = plugin_support::layout(config)?;
    // Verify before anything else: a bad backup must not even stop the platform.
    verify(&args.path)?;
    let lock_path = config.lock_file_path();
    if let Some(pid) = RuntimeLock::holder(&lock_path) {
        if !args.stop {
            bail!(
                "the platform is running (pid {pid}, lock {}); stop it first or pass --stop; nothing was changed",
                lock_path.display()
            );
        }
        wait_for_stop(&lock_path, &pid)?;
    }
    let _lock = RuntimeLock::acquire(&lock_path)?;
    let report = sovereign_ops::restore::restore(&args.path, &layout, &mut |_| {
        if let Ok(point) = std::env::var("SV_TEST_CRASH_BEFORE_SWAP")
            && point == "1"
        {
            std::process::abort();
        }
    })?;
    println!(
        "restored {} file(s) from {}",
        report.restored.len(),
        args.path.display()
    );
    for f in &report.restored {
        println!("  {}", f.display());
    }
    println!(
        "the files they replaced are in {}",
        report.aside_dir.display()
    );
    println!(
        "next: `sv sync:run` (brings the mirror up to date from the restored core), then `sv serve`"
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_split(config: &Config, args: &SplitArgs) -> anyhow::Result<ExitCode> {
    let mut mappings = BTreeMap::new();
    for map in &args.maps {
        let (table, target) = map
            .split_once('=')
            .with_context(|| format!("--map {map:?}: expected TABLE=PLUGIN or TABLE=skip"))?;
        let mapping = if target == "skip" {
            Mapping::Skip
        } else if sovereign_db_plugins::is_installable_plugin_id(target) {
            Mapping::Plugin(target.to_owned())
        } else {
            bail!("--map {map:?}: {target:?} is neither `skip` nor a valid, unreserved plugin id");
        };
        mappings.insert(table.to_owned(), mapping);
    }
    if !args.from.exists() {
        bail!("{} does not exist", args.from.display());
    }
    let plan = sovereign_ops::split::plan(&args.from, &mappings)?;
    let layout = plugin_support::layout(config)?;
    println!(
        "{:<28} {:<34} {:<28} {:>10}",
        "source table", "destination", "table", "rows"
    );
    for e in &plan.entries {
        let dest = match &e.destination {
            Destination::Core => format!("core ({})", layout.core.display()),
            Destination::Shared(id) => format!("plugin {id} (plugins.db)"),
            Destination::Isolated(id) => format!("plugin {id} (plugins/{id}.db)"),
            Destination::Skip => "skipped".to_owned(),
        };
        println!(
            "{:<28} {:<34} {:<28} {:>10}",
            e.source_table, dest, e.target_table, e.rows
        );
    }
    for t in &plan.unattributed {
        println!("{t:<28} UNATTRIBUTED: map it with --map {t}=PLUGIN or --map {t}=skip");
    }
    for o in &plan.not_copied {
        println!("{o:<28} not copied (recreate it in a plugin migration)");
    }
    if !plan.unattributed.is_empty() {
        bail!(
            "{} table(s) cannot be attributed; nothing was split",
            plan.unattributed.len()
        );
    }
    if args.dry_run {
        println!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    let copied = sovereign_ops::split::split(&args.from, &plan, &layout)?;
    for c in &copied {
        println!(
            "copied {} -> {} {}: {} rows, sha256 {}",
            c.source_table,
            c.file.display(),
            c.target_table,
            c.rows,
            c.checksum
        );
    }
    // Build the mirror from the new core.
    let settings = plugin_support::sync_settings(config)?;
    let core = sovereign_db_core::open_existing(&config.core_db_path())?;
    sovereign_sync::capture::install(&core, &settings.catalog)?;
    let mirror = settings.open_mirror(config)?;
    let report = sovereign_sync::full::full_resync(
        &core,
        &config.core_db_path(),
        &mirror,
        &settings.catalog,
        &|_, _| {},
    )?;
    for (slice, rows) in report.rows {
        println!("built mirror core__{slice}: {rows} rows");
    }
    println!(
        "{} is unchanged; the split install is ready for `sv serve`",
        args.from.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// One doctor finding.
struct Finding {
    level: Level,
    check: &'static str,
    detail: String,
}

#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Level {
    Ok,
    Warn,
    Fail,
}

pub fn doctor(config: &Config) -> anyhow::Result<ExitCode> {
    let mut findings = Vec::new();
    let mut add = |level, check, detail: String| {
        findings.push(Finding {
            level,
            check,
            detail,
        })
    };
    let layout = plugin_support::layout(config)?;

    let mut files: Vec<(&'static str, PathBuf)> = vec![
        ("core store", layout.core.clone()),
        ("plugin store", layout.plugins.clone()),
    ];
    if let Some(m) = &layout.mirror_file {
        files.push(("mirror file", m.clone()));
    }
    let isolated = layout.isolated_files()?;
    for (_, path) in &isolated {
        files.push(("isolated plugin file", path.clone()));
    }
    let mut total_bytes = 0u64;
    for (what, path) in &files {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let Ok(meta) = std::fs::metadata(path) else {
            add(
                Level::Fail,
                "files",
                format!("{what} {} is missing", path.display()),
            );
            continue;
        };
        total_bytes += meta.len()
            + std::fs::metadata(format!("{}-wal", path.display()))
                .map(|m| m.len())
                .unwrap_or(0);
        let mode = meta.permissions().mode() & 0o777;
        let uid = rustix::process::geteuid().as_raw();
        if let Some(what) = sovereign_db::open::unwritable(path) {
            add(
                Level::Fail,
                "permissions",
                format!(
                    "{what} is not writable by this user (uid {}): `sv serve` cannot use {}; fix its owner or mode, or remove a stale -shm or empty -wal while the platform is stopped",
                    rustix::process::geteuid().as_raw(),
                    path.display()
                ),
            );
        } else if mode & 0o077 != 0 {
            // Others can read credentials and sessions: that needs action.
            add(
                Level::Fail,
                "permissions",
                format!(
                    "{} is mode {mode:o}; run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ),
            );
        } else if meta.uid() != uid {
            add(
                Level::Warn,
                "permissions",
                format!(
                    "{} is owned by uid {}, not {uid}",
                    path.display(),
                    meta.uid()
                ),
            );
        } else {
            add(
                Level::Ok,
                "files",
                format!("{what} {} ({} bytes, mode 600)", path.display(), meta.len()),
            );
        }
        match sovereign_db::open_database(path, &sovereign_db::OpenOptions::plugins().read_only())
            .map_err(|e| e.to_string())
            .and_then(|c| {
                c.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
                    .map_err(|e| e.to_string())
            }) {
            Ok(result) if result == "ok" => add(
                Level::Ok,
                "integrity",
                format!("{} passes quick_check", path.display()),
            ),
            Ok(result) => add(
                Level::Fail,
                "integrity",
                format!("{}: {result}; restore from a backup", path.display()),
            ),
            Err(e) => add(Level::Fail, "integrity", format!("{}: {e}", path.display())),
        }
    }

    match migrate::not_applied(config) {
        Ok(list) if list.is_empty() => add(
            Level::Ok,
            "migrations",
            "every migration of every scope is applied".into(),
        ),
        // `sv serve` refuses to start like this.
        Ok(list) => add(
            Level::Fail,
            "migrations",
            format!("{}; run `sv migrate:deploy`", list.join(", ")),
        ),
        Err(e) => add(Level::Fail, "migrations", format!("{e:#}")),
    }

    match registry_problems(config) {
        Ok(problems) if problems.is_empty() => add(
            Level::Ok,
            "registry",
            "every installed plugin id is valid and unreserved".into(),
        ),
        Ok(problems) => {
            for problem in problems {
                add(Level::Fail, "registry", problem);
            }
        }
        Err(e) => add(Level::Fail, "registry", format!("{e:#}")),
    }

    let sync = (|| -> anyhow::Result<sovereign_sync::status::SyncStatus> {
        let settings = plugin_support::sync_settings(config)?;
        let core = sovereign_db_core::open_existing_read_only(&config.core_db_path())?;
        let mirror = settings.open_mirror_read_only(config)?;
        Ok(sovereign_sync::status::status(
            &core,
            &mirror,
            &settings.catalog,
        )?)
    })();
    match sync {
        Ok(status) => {
            for s in &status.slices {
                let detail = format!(
                    "slice {}: backlog {} rows, lag {} ms, watermark {}",
                    s.slice, s.backlog_rows, s.lag_ms, s.watermark
                );
                if !s.built {
                    add(
                        Level::Warn,
                        "sync",
                        format!("{detail}; the mirror is not built: run `sv sync:run`"),
                    );
                } else if s.lag_ms > 60_000 {
                    add(
                        Level::Warn,
                        "sync",
                        format!("{detail}; is the platform running? `sv sync:run` catches up"),
                    );
                } else {
                    add(Level::Ok, "sync", detail);
                }
            }
            if let Some((error, at)) = status.last_error {
                add(
                    Level::Warn,
                    "sync",
                    format!("last sync error at {at}: {error}"),
                );
            }
        }
        Err(e) => add(Level::Fail, "sync", format!("{e:#}")),
    }

    let running_host =
        RuntimeLock::address(&config.lock_file_path()).and_then(|addr| platform_health(&addr));
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    if let Some(health) = running_host {
        let host = &health["extension_host"];
        let probe = host["core_db_probe"].as_str().unwrap_or_default();
        match (host["status"].as_str(), host["sandbox"].as_str()) {
            (Some("running"), Some("Enforced")) if probe.starts_with("refused") => add(
                Level::Ok,
                "sandbox",
                format!("the running extension host is sandboxed; opening core.db was {probe}"),
            ),
            (Some("running"), _) => add(
                Level::Fail,
                "sandbox",
                format!(
                    "the running extension host is NOT fully sandboxed: {} / core.db probe: {probe}",
                    host["sandbox"]
                ),
            ),
            (Some(status), _) => add(
                Level::Warn,
                "sandbox",
                format!("the extension host is {status}: {host}"),
            ),
            (None, _) => add(
                Level::Warn,
                "sandbox",
                "the platform runs without an extension host".into(),
            ),
        }
    } else if lsm.split(',').any(|m| m.trim() == "landlock") {
        add(
            Level::Ok,
            "sandbox",
            "the kernel offers Landlock for sandboxing the extension host".into(),
        );
    } else if lsm.is_empty() {
        add(Level::Warn, "sandbox", "cannot tell whether the kernel offers Landlock (/sys/kernel/security/lsm is not readable)".into());
    } else {
        add(
            Level::Warn,
            "sandbox",
            format!(
                "the kernel does not offer Landlock (LSMs: {}); the extension host cannot be sandboxed",
                lsm.trim()
            ),
        );
    }

    match free_bytes(&config.data_dir_path()) {
        Some(free) if free < total_bytes => add(
            Level::Fail,
            "disk",
            format!(
                "{free} bytes free, a backup needs about {total_bytes}; free space or back up elsewhere"
            ),
        ),
        Some(free) => add(
            Level::Ok,
            "disk",
            format!("{free} bytes free; a backup needs about {total_bytes}"),
        ),
        None => add(
            Level::Warn,
            "disk",
            "cannot read free space of the data directory".into(),
        ),
    }
    match RuntimeLock::holder(&config.lock_file_path()) {
        Some(pid) => add(Level::Ok, "platform", format!("running (pid {pid})")),
        None => add(Level::Ok, "platform", "not running".into()),
    }

    let worst = findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok);
    for f in &findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("{tag} {:<12} {}", f.check, f.detail);
    }
    // Warnings are for the operator to read; only a failure needs action.
    Ok(if worst == Level::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Registered plugins whose id is malformed, reserved (a namespace the platform or
/// SQLite owns) or equal to another's but for case; and plugins the host could not load.
fn registry_problems(config: &Config) -> anyhow::Result<Vec<String>> {
    let core = sovereign_db_core::open_existing_read_only(&config.core_db_path())?;
    let plugins = sovereign_db_core::plugins::list(&core)?;
    let mut problems = Vec::new();
    for (i, plugin) in plugins.iter().enumerate() {
        if let Err(e) = sovereign_db_plugins::check_plugin_id(&plugin.id) {
            problems.push(format!(
                "installed plugin {:?}: {e}; remove it with `sv plugins remove {}` and reinstall it under another id",
                plugin.id, plugin.id
            ));
        }
        if let Some(other) = plugins[..i]
            .iter()
            .find(|p| p.id.eq_ignore_ascii_case(&plugin.id))
        {
            problems.push(format!(
                "installed plugins {:?} and {:?} differ only by case and share one namespace; remove one",
                other.id, plugin.id
            ));
        }
        if let sovereign_db_core::plugins::LoadState::Failed { error, at } = &plugin.load {
            problems.push(format!(
                "plugin {} could not be loaded by the extension host ({at}): {error}",
                plugin.id
            ));
        }
    }
    Ok(problems)
}

/// `GET /health` of the running platform at `addr` (plain HTTP on loopback).
fn platform_health(addr: &str) -> Option<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .get(format!("http://{addr}/health"))
        .call()
        .ok()?
        .body_mut()
        .read_json()
        .ok()
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail * stat.f_frsize)
}

/// Sends `signal` to the platform process `pid` (read from its lock file).
pub fn signal(pid: i32, signal: rustix::process::Signal) -> anyhow::Result<()> {
    let target = rustix::process::Pid::from_raw(pid)
        .with_context(|| format!("{pid} is not a process id"))?;
    rustix::process::kill_process(target, signal)
        .with_context(|| format!("cannot signal pid {pid}"))
}
