//! MariaDB's and MySQL's client programs for backups: `mariadb-dump` (or `mysqldump`)
//! writes a database as SQL from one consistent snapshot (`--single-transaction`), and
//! `mariadb` (or `mysql`) loads such a file. The password reaches them in an options
//! file readable by its owner only, never on a command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{MyError, StoreUrl};

/// The client programs found on this machine.
#[derive(Debug, Clone)]
pub struct ClientTools {
    dump: PathBuf,
    client: PathBuf,
}

/// The first of `names` on the `PATH` (or in `/usr/bin`).
fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin")])
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// An options file with the login of `url`, removed when dropped.
struct Login(tempfile::NamedTempFile);

impl Login {
    fn new(url: &StoreUrl) -> Result<Login, MyError> {
        let (host, port) = url
            .server
            .rsplit_once(':')
            .unwrap_or((url.server.as_str(), "3306"));
        // `tempfile` creates it readable by its owner only.
        let mut file = tempfile::NamedTempFile::new().map_err(|e| MyError::Tool {
            tool: "an options file".into(),
            problem: e.to_string(),
        })?;
        // Passwords of store URLs hold no quote or backslash (`StoreUrl::parse`).
        writeln!(
            file,
            "[client]\nhost={host}\nport={port}\nprotocol=tcp\nuser={}\npassword=\"{}\"",
            url.account, url.password
        )
        .map_err(|e| MyError::Tool {
            tool: "an options file".into(),
            problem: e.to_string(),
        })?;
        Ok(Login(file))
    }

    fn arg(&self) -> String {
        format!("--defaults-extra-file={}", self.0.path().display())
    }
}

/// Runs `command`, feeding it `input` if given; an error carries its standard error.
fn run(tool: &Path, command: &mut Command, input: Option<&Path>) -> Result<(), MyError> {
    let fail = |problem: String| MyError::Tool {
        tool: tool.display().to_string(),
        problem,
    };
    if let Some(input) = input {
        let file = std::fs::File::open(input)
            .map_err(|e| fail(format!("cannot read {}: {e}", input.display())))?;
        command.stdin(file);
    } else {
        command.stdin(Stdio::null());
    }
    let output = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(fail(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}

impl ClientTools {
    /// Finds `mariadb-dump` and `mariadb` (or MySQL's `mysqldump` and `mysql`).
    pub fn find() -> Result<ClientTools, MyError> {
        let missing = |what: &str| MyError::Tool {
            tool: what.into(),
            problem: "not found on the PATH: install the distribution's mariadb-client (or \
                      mysql-client) package"
                .into(),
        };
        Ok(ClientTools {
            dump: find(&["mariadb-dump", "mysqldump"]).ok_or_else(|| missing("mariadb-dump"))?,
            client: find(&["mariadb", "mysql"]).ok_or_else(|| missing("mariadb"))?,
        })
    }

    /// Dumps `database` as `url`'s account into `out` (SQL: each table dropped and made
    /// again, its rows, its triggers), from one consistent snapshot, leaving out the
    /// tables and views of `leave_out`.
    pub fn dump(
        &self,
        url: &StoreUrl,
        database: &str,
        out: &Path,
        leave_out: &[String],
    ) -> Result<(), MyError> {
        let login = Login::new(url)?;
        let mut command = Command::new(&self.dump);
        command
            .arg(login.arg())
            .args([
                "--single-transaction",
                "--skip-lock-tables",
                "--no-tablespaces",
                "--triggers",
                "--skip-routines",
                "--skip-events",
                "--hex-blob",
                "--default-character-set=utf8mb4",
            ])
            .arg(format!("--result-file={}", out.display()));
        for name in leave_out {
            command.arg(format!("--ignore-table={database}.{name}"));
        }
        command.arg(database);
        run(&self.dump, &mut command, None)
    }

    /// Dumps the stored functions and procedures of `database` (no tables, rows or
    /// triggers) into `out`, as `url`'s account: it must be their definer, as MySQL shows
    /// a routine's body to its definer (or to administrators) only.
    pub fn dump_routines(&self, url: &StoreUrl, database: &str, out: &Path) -> Result<(), MyError> {
        let login = Login::new(url)?;
        let mut command = Command::new(&self.dump);
        command
            .arg(login.arg())
            .args([
                "--skip-lock-tables",
                "--no-tablespaces",
                "--no-create-info",
                "--no-data",
                "--skip-triggers",
                "--routines",
                "--skip-events",
                "--default-character-set=utf8mb4",
            ])
            .arg(format!("--result-file={}", out.display()))
            .arg(database);
        run(&self.dump, &mut command, None)
    }

    /// Loads the SQL file `file` into `database` as `url`'s account; stops at the first
    /// error.
    pub fn load(&self, url: &StoreUrl, database: &str, file: &Path) -> Result<(), MyError> {
        let login = Login::new(url)?;
        let mut command = Command::new(&self.client);
        command
            .arg(login.arg())
            .args(["--default-character-set=utf8mb4", "--binary-mode"])
            .arg(database);
        run(&self.client, &mut command, Some(file))
    }
}
