//! `sv backup`, `sv backup:verify`, `sv restore`, `sv migrate:split`, `sv doctor`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sovereign_platform::App;
use sovereign_platform::doctor::{self, Level};
use sovereign_platform::ops::{self, Destination};

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

pub fn run_backup(app: &App, args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let bar = byte_bar("backup");
    let done = ops::backup(
        app,
        &ops::BackupRequest {
            out: args.out.clone(),
            core_only: args.no_plugins,
            exclude_plugins: args.exclude_plugins.clone(),
        },
        &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    );
    bar.finish_and_clear();
    let done = done?;
    let manifest = &done.manifest;
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    println!("backup written to {}", done.dir.display());
    for f in &manifest.files {
        println!("  {:<24} {:>12} bytes  sha256 {}", f.name, f.size, f.sha256);
    }
    println!(
        "  {} bytes in {:.2} s; mirror watermark {}, core acknowledged {}",
        bytes,
        done.took.as_secs_f64(),
        manifest.mirror_watermark,
        manifest.core_acked_seq
    );
    println!("check it with `sv backup:verify {}`", done.dir.display());
    Ok(ExitCode::SUCCESS)
}

pub fn run_verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let manifest = ops::verify(&args.path)?;
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

pub fn run_restore(app: &App, args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let restored = ops::restore(app, &args.path, args.stop, &mut |_| {
        // Lets the tests simulate a crash in the middle of a restore.
        if std::env::var("SV_TEST_CRASH_BEFORE_SWAP").is_ok_and(|point| point == "1") {
            std::process::abort();
        }
    })?;
    if let Some(pid) = restored.stopped_pid {
        println!("stopped the running platform (pid {pid})");
    }
    let report = &restored.report;
    println!(
        "restored {} store(s) from {}",
        report.restored.len(),
        args.path.display()
    );
    for what in &report.restored {
        println!("  {what}");
    }
    println!("what they replaced is in {}", report.aside_dir.display());
    println!(
        "next: `sv sync:run` (brings the mirror up to date from the restored core), then `sv serve`"
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_split(app: &App, args: &SplitArgs) -> anyhow::Result<ExitCode> {
    let mut mappings = BTreeMap::new();
    for map in &args.maps {
        let (table, mapping) = ops::parse_mapping(map)?;
        mappings.insert(table, mapping);
    }
    let plan = ops::plan_split(&args.from, &mappings)?;
    let core = app.core_file("sv split")?;
    println!(
        "{:<28} {:<34} {:<28} {:>10}",
        "source table", "destination", "table", "rows"
    );
    for e in &plan.entries {
        let dest = match &e.destination {
            Destination::Core => format!("core ({})", core.display()),
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
    if args.dry_run && plan.unattributed.is_empty() {
        println!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    let split = ops::split(app, &args.from, &plan)?;
    for c in &split.copied {
        println!(
            "copied {} -> {} {}: {} rows, sha256 {}",
            c.source_table,
            c.file.display(),
            c.target_table,
            c.rows,
            c.checksum
        );
    }
    for (slice, rows) in &split.mirror_rows {
        println!("built mirror core__{slice}: {rows} rows");
    }
    println!(
        "{} is unchanged; the split install is ready for `sv serve`",
        args.from.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_doctor(app: &App) -> anyhow::Result<ExitCode> {
    let report = doctor::report(app)?;
    for f in &report.findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("{tag} {:<12} {}", f.check, f.detail);
    }
    // Warnings are for the operator to read; only a failure needs action.
    Ok(if report.worst() == Level::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
