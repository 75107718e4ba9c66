//! `sv sync:*`: running, inspecting and reconciling the core -> plugins mirror.

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sovereign_config::Config;
use sovereign_sync::{SyncError, capture, full, publish, reconcile, status};

use crate::plugin_support;

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

pub fn dispatch(config: &Config, command: SyncCommand) -> anyhow::Result<ExitCode> {
    match command {
        SyncCommand::Run(args) => run(config, &args),
        SyncCommand::Status(args) => show_status(config, &args),
        SyncCommand::Reconcile(args) => run_reconcile(config, &args),
        SyncCommand::Plan => plan(config),
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

pub fn run(config: &Config, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let settings = plugin_support::sync_settings(config)?;
    let core = crate::migrate::open_migrated_core(config)?;
    capture::install(&core, &settings.catalog)?;
    let mirror = settings.open_mirror(config)?;
    let rebuild = match publish::needs_rebuild(&core, &mirror, &settings.catalog) {
        Ok(reason) => reason.map(|r| format!("{r:?}")),
        Err(SyncError::ProjectionChanged(slice)) if !args.full => {
            for step in full::plan(&mirror, &settings.catalog)? {
                println!("plan: {step}");
            }
            bail!(
                "the projection of slice {slice} changed; review the plan above and run `sv sync:run --full`"
            );
        }
        Err(SyncError::ProjectionChanged(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if args.full || rebuild.is_some() {
        if let Some(reason) = &rebuild {
            println!("the mirror needs a full build ({reason})");
        }
        for step in full::plan(&mirror, &settings.catalog)? {
            println!("plan: {step}");
        }
        let progress = bar("full resync");
        let report = full::full_resync(
            &core,
            &config.core_db_path(),
            &mirror,
            &settings.catalog,
            &|done, total| {
                progress.set_length(total);
                progress.set_position(done);
            },
        )?;
        progress.finish_and_clear();
        for (slice, rows) in &report.rows {
            println!("rebuilt core__{slice}: {rows} rows");
        }
        for slice in &report.dropped {
            println!("dropped core__{slice}");
        }
        println!("watermark {}", report.watermark);
    }
    let report = publish::catch_up(&core, &mirror, &settings.catalog, settings.batch_size)?;
    println!(
        "caught up: {} change(s) in {} batch(es); watermark {}",
        report.changes, report.batches, report.watermark
    );
    publish::set_state(&core, "last_error", "")?;
    Ok(ExitCode::SUCCESS)
}

fn show_status(config: &Config, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let settings = plugin_support::sync_settings(config)?;
    let core = crate::migrate::open_migrated_core_read_only(config)?;
    let mirror = settings.open_mirror_read_only(config)?;
    let status = status::status(&core, &mirror, &settings.catalog)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "mirror: {} ({:?}, {:?})",
        settings.mirror_store_path(config).display(),
        settings.layout,
        settings.freshness
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

fn run_reconcile(config: &Config, args: &ReconcileArgs) -> anyhow::Result<ExitCode> {
    let settings = plugin_support::sync_settings(config)?;
    let core = crate::migrate::open_migrated_core(config)?;
    capture::validate(&core, &settings.catalog)?;
    let mirror = settings.open_mirror(config)?;
    let progress = bar("reconcile");
    let report = reconcile::reconcile(
        &config.core_db_path(),
        &mirror,
        &settings.catalog,
        args.repair,
        &|done, total| {
            progress.set_length(total);
            progress.set_position(done);
        },
    )?;
    progress.finish_and_clear();
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

fn plan(config: &Config) -> anyhow::Result<ExitCode> {
    let settings = plugin_support::sync_settings(config)?;
    let core = crate::migrate::open_migrated_core(config)?;
    capture::validate(&core, &settings.catalog)?;
    let mirror = settings.open_mirror(config)?;
    for step in full::plan(&mirror, &settings.catalog)? {
        println!("{step}");
    }
    Ok(ExitCode::SUCCESS)
}
