//! `sv config`.

use std::process::ExitCode;

use clap::Args;
use sovereign_platform::App;

#[derive(Args)]
pub struct ConfigArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Prints the configuration; `[sync]` and `[mirror.*]` were checked when `app` was
/// made, so a mistake there shows up here before a start.
pub fn run(app: &App, args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let config = app.config();
    let rows = [
        (
            "DATABASE_URL",
            config.database_url.value.to_string(),
            match config.core_db_path() {
                Some(path) => path.display().to_string(),
                None => "(PostgreSQL)".into(),
            },
            config.database_url.source.to_string(),
        ),
        (
            "PLUGIN_DATABASE_URL",
            config.plugin_database_url.value.to_string(),
            match config.plugins_db_path() {
                Some(path) => path.display().to_string(),
                None => "(PostgreSQL)".into(),
            },
            config.plugin_database_url.source.to_string(),
        ),
        (
            "SV_DATA_DIR",
            config.data_dir.value.display().to_string(),
            config.data_dir_path().display().to_string(),
            config.data_dir.source.to_string(),
        ),
        (
            "SV_PLUGINS_DIR",
            config.plugins_dir.value.display().to_string(),
            config.plugins_dir_path().display().to_string(),
            config.plugins_dir.source.to_string(),
        ),
        (
            "SV_PORT",
            config.port.value.to_string(),
            String::new(),
            config.port.source.to_string(),
        ),
        (
            "SV_BIND",
            config.bind.value.to_string(),
            String::new(),
            config.bind.source.to_string(),
        ),
    ];
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(name, value, resolved, source)| {
                let mut entry = serde_json::json!({ "value": value, "source": source });
                if !resolved.is_empty() {
                    entry["resolved"] = resolved.clone().into();
                }
                (name.to_string(), entry)
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        let width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        for (name, value, resolved, source) in rows {
            let resolved = if resolved.is_empty() || resolved == value {
                String::new()
            } else {
                format!(" -> {resolved}")
            };
            println!("{name:<20} {value:<width$}  ({source}){resolved}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
