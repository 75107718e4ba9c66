//! `sv users ...`: operator commands on the core store.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use sovereign_config::Config;
use sovereign_db_core::users::{self, NewUser, Role};

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Create a user (prints a generated password once unless --password-stdin).
    Create {
        /// Make the user an administrator.
        #[arg(long)]
        admin: bool,
        /// Login e-mail address.
        #[arg(long)]
        email: String,
        /// Name shown to others (default: the part of the e-mail before `@`).
        #[arg(long)]
        display_name: Option<String>,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
}

pub fn run(config: &Config, command: UsersCommand) -> anyhow::Result<ExitCode> {
    let conn = crate::migrate::open_migrated_core(config)?;
    match command {
        UsersCommand::Create {
            admin,
            email,
            display_name,
            password_stdin,
        } => {
            let (password, generated) = if password_stdin {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the password from standard input")?;
                let password = text.trim_end_matches(['\r', '\n']).to_owned();
                (password, false)
            } else {
                (sovereign_db_core::password::generate(), true)
            };
            users::validate_password(&password)?;
            let email = users::validate_email(&email)?;
            let display_name = users::validate_display_name(
                &display_name
                    .unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_owned()),
            )?;
            let user = users::create(
                &conn,
                &NewUser {
                    email,
                    password: password.clone(),
                    display_name,
                    avatar_url: None,
                    role: if admin { Role::Admin } else { Role::Member },
                    tenant_id: 1,
                },
            )?;
            sovereign_db_core::audit::record(
                &conn,
                None,
                "user.create",
                Some(&format!("user:{}", user.id)),
                Some(&serde_json::json!({ "via": "sv users create", "role": user.role })),
            )?;
            println!(
                "created {} {} (id {})",
                user.role.as_str(),
                user.email,
                user.id
            );
            if generated {
                println!("password (shown only once): {password}");
            }
        }
        UsersCommand::List => {
            for u in users::list(&conn)? {
                println!(
                    "{:>5}  {:<32} {:<7} {:<8} {}",
                    u.id,
                    u.email,
                    u.role.as_str(),
                    if u.active { "active" } else { "inactive" },
                    u.display_name
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
