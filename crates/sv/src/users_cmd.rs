//! `sv users ...`: operator commands on the core store.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use sovereign_platform::App;
use sovereign_platform::users::{self, UserRequest};

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

pub fn run(app: &App, command: UsersCommand) -> anyhow::Result<ExitCode> {
    match command {
        UsersCommand::Create {
            admin,
            email,
            display_name,
            password_stdin,
        } => {
            let password = if password_stdin {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the password from standard input")?;
                Some(text.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                None
            };
            let created = users::create(
                app,
                &UserRequest {
                    email,
                    display_name,
                    password,
                    admin,
                },
                "sv users create",
            )?;
            let user = &created.user;
            println!(
                "created {} {} (id {})",
                user.role.as_str(),
                user.email,
                user.id
            );
            if let Some(password) = created.generated_password {
                println!("password (shown only once): {password}");
            }
        }
        UsersCommand::List => {
            for u in users::list(app)? {
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
