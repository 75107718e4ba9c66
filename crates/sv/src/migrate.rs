//! `sv migrate:deploy` and `sv migrate:status`, for the core scope and the plugin scopes.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use sovereign_db::MigrationState;
use sovereign_platform::App;
use sovereign_platform::migrations::{self, Scope};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeArg {
    /// `core.db`, with the migrations built into `sv`.
    Core,
    /// The plugin store, with each plugin's `migrations/` directory.
    Plugins,
    /// Both.
    All,
}

impl From<ScopeArg> for Scope {
    fn from(scope: ScopeArg) -> Scope {
        match scope {
            ScopeArg::Core => Scope::Core,
            ScopeArg::Plugins => Scope::Plugins,
            ScopeArg::All => Scope::All,
        }
    }
}

#[derive(Args)]
pub struct DeployArgs {
    /// Which store to migrate.
    #[arg(long, value_enum, default_value = "all")]
    scope: ScopeArg,
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
    scope: ScopeArg,
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

pub fn deploy(app: &App, args: &DeployArgs) -> anyhow::Result<ExitCode> {
    let scope = Scope::from(args.scope);
    let targets = migrations::targets(app, scope, args.plugin.as_deref())?;
    if targets.is_empty() {
        println!(
            "nothing to migrate: no plugins in {}",
            app.config().plugins_dir_path().display()
        );
    }
    if args.dry_run {
        for target in &targets {
            let (scope, path) = (target.scope(), target.path().display());
            let plan = target.plan()?;
            if plan.is_empty() {
                println!("{scope}: up to date ({path})");
            }
            for file in plan {
                println!("{scope}: would apply {file} to {path}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    migrations::deploy(app, &targets, scope, &mut |applied| {
        let path = applied.path.display();
        if applied.files.is_empty() {
            println!("{}: up to date ({path})", applied.scope);
        }
        for file in &applied.files {
            println!("{}: applied {file} to {path}", applied.scope);
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn status(app: &App, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let targets = migrations::targets(app, args.scope.into(), args.plugin.as_deref())?;
    let mut needs_action = 0;
    for target in &targets {
        let statuses = target.status()?;
        println!("{} ({})", target.scope(), target.path().display());
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
