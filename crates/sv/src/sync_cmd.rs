//! `sv sync:*`: running, inspecting and reconciling the core -> plugins mirror.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sovereign_platform::{App, PlatformError, sync};

#[derive(Args)]
pub struct RunArgs {
    /// Rebuild every mirror table from the core (prints the plan first).
    #[arg(long)]
    full: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ReconcileArgs {
    /// Rewrite exactly the rows that differ.
    #[arg(long)]
    repair: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum SyncCommand {
    /// Catch the mirror up (or rebuild it with --full).
    Run(RunArgs),
    /// Per slice: watermark, backlog, lag, last error.
    Status(StatusArgs),
    /// Compare core and mirror by checksums; --repair fixes only what differs.
    Reconcile(ReconcileArgs),
    /// What a full resync would change.
    Plan,
}

pub fn dispatch(app: &App, command: SyncCommand) -> anyhow::Result<ExitCode> {
    match command {
        SyncCommand::Run(args) => run(app, &args),
        SyncCommand::Status(args) => show_status(app, &args),
        SyncCommand::Reconcile(args) => run_reconcile(app, &args),
        SyncCommand::Plan => {
            for step in sync::plan(app)? {
                println!("{step}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn bar(label: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} rows ({per_sec}, eta {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(label);
    bar
}

fn run(app: &App, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let progress = bar("full resync");
    let done = sync::run(app, args.full, &|done, total| {
        progress.set_length(total);
        progress.set_position(done);
    });
    progress.finish_and_clear();
    let done = match done {
        Err(PlatformError::ProjectionChanged { slice, plan }) => {
            for step in &plan {
                println!("plan: {step}");
            }
            return Err(PlatformError::ProjectionChanged { slice, plan }.into());
        }
        other => other?,
    };
    if let Some(rebuild) = &done.rebuild {
        if let Some(reason) = &rebuild.reason {
            println!("the mirror needs a full build ({reason:?})");
        }
        for step in &rebuild.plan {
            println!("plan: {step}");
        }
        for (slice, rows) in &rebuild.report.rows {
            println!("rebuilt core__{slice}: {rows} rows");
        }
        for slice in &rebuild.report.dropped {
            println!("dropped core__{slice}");
        }
        println!("watermark {}", rebuild.report.watermark);
    }
    let caught_up = &done.caught_up;
    println!(
        "caught up: {} change(s) in {} batch(es); watermark {}",
        caught_up.changes, caught_up.batches, caught_up.watermark
    );
    Ok(ExitCode::SUCCESS)
}

fn show_status(app: &App, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let status = sync::status(app)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let settings = app.sync_settings();
    let mirror = match app.config().plugins_postgres_url() {
        Some(url) => format!("{url} (schema core)"),
        None => settings
            .mirror_store_path(app.config())?
            .display()
            .to_string(),
    };
    println!(
        "mirror: {mirror} ({:?}, {:?})",
        settings.layout, settings.freshness
    );
    println!(
        "{:<16} {:>10} {:>10} {:>10}  built",
        "slice", "watermark", "backlog", "lag"
    );
    for s in &status.slices {
        println!(
            "{:<16} {:>10} {:>10} {:>8}ms  {}",
            s.slice,
            s.watermark,
            s.backlog_rows,
            s.lag_ms,
            if s.built {
                "yes"
            } else {
                "no (run `sv sync:run`)"
            }
        );
    }
    match &status.last_error {
        Some((error, at)) => println!("last error at {at}: {error}"),
        None => println!("last error: none"),
    }
    Ok(ExitCode::SUCCESS)
}

fn run_reconcile(app: &App, args: &ReconcileArgs) -> anyhow::Result<ExitCode> {
    let progress = bar("reconcile");
    let report = sync::reconcile(app, args.repair, &|done, total| {
        progress.set_length(total);
        progress.set_position(done);
    });
    progress.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} chunk(s) compared, {} differ; {} row(s) differ, {} pending",
            report.chunks,
            report.chunks_differing,
            report.differences.len(),
            report.pending
        );
        for d in report.differences.iter().take(100) {
            println!("  {} key {}: {:?}", d.slice, d.key, d.kind);
        }
        if report.differences.len() > 100 {
            println!(
                "  ... and {} more (use --json for all)",
                report.differences.len() - 100
            );
        }
        if args.repair {
            println!("repaired {} row(s)", report.repaired);
        }
    }
    Ok(if report.differences.is_empty() || args.repair {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
