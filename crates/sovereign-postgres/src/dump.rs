//! Backups with PostgreSQL's own client programs: `pg_dump` in directory format from a
//! snapshot exported by a transaction this process holds open (so several dumps of one
//! database, and what this process reads beside them, see the same data), `pg_restore`
//! turning a dump into a script, and `psql` running scripts in one transaction.
//!
//! Passwords reach the programs in their environment (`PGPASSWORD`), never on a command
//! line another user could read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use postgres::Client;

use crate::{PgError, StoreUrl};

/// Where `pg_dump`, `pg_restore` and `psql` are.
#[derive(Debug, Clone)]
pub struct ClientTools {
    /// The directory holding all three (`None`: found on `PATH`).
    bindir: Option<PathBuf>,
}

/// A running program's failure.
fn tool_error(program: &str, message: impl Into<String>) -> PgError {
    PgError::ClientTool {
        program: program.to_owned(),
        message: message.into(),
    }
}

impl ClientTools {
    /// Finds the client programs: the newest `/usr/lib/postgresql/*/bin` that has them
    /// (a `pg_dump` must be at least as new as the server), else `PATH`.
    pub fn find() -> Result<ClientTools, PgError> {
        let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                ["pg_dump", "pg_restore", "psql"]
                    .iter()
                    .all(|p| bin.join(p).is_file())
                    .then_some((version, bin))
            })
            .collect();
        versioned.sort();
        if let Some((_, bin)) = versioned.pop() {
            return Ok(ClientTools { bindir: Some(bin) });
        }
        let tools = ClientTools { bindir: None };
        for program in ["pg_dump", "pg_restore", "psql"] {
            tools
                .command(program)
                .arg("--version")
                .output()
                .map_err(|e| {
                    tool_error(
                        program,
                        format!(
                            "cannot run it ({e}): install PostgreSQL's client programs \
                         (apt-get install postgresql-client), as new as the server or newer"
                        ),
                    )
                })?;
        }
        Ok(tools)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = match &self.bindir {
            Some(bin) => Command::new(bin.join(program)),
            None => Command::new(program),
        };
        // Only what this module sets decides where the programs connect.
        for var in ["PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGPASSFILE"] {
            command.env_remove(var);
        }
        command
    }

    /// `program` connecting to `url`'s database as its role.
    fn connected(&self, program: &str, url: &StoreUrl) -> Command {
        let mut command = self.command(program);
        command
            .env("PGHOST", &url.host)
            .env("PGPORT", url.port.to_string())
            .env("PGUSER", &url.role)
            .env("PGPASSWORD", &url.password)
            .env("PGDATABASE", &url.database)
            .env("PGCONNECT_TIMEOUT", "10");
        command
    }

    /// Dumps (`pg_dump --format=directory`) what `request` names from `url`'s database.
    pub fn dump(&self, url: &StoreUrl, request: &DumpRequest<'_>) -> Result<(), PgError> {
        let mut command = self.connected("pg_dump", url);
        command
            .arg("--format=directory")
            .arg("--compress=6")
            .arg("--file")
            .arg(request.out);
        if let Some(snapshot) = request.snapshot {
            command.arg(format!("--snapshot={snapshot}"));
        }
        for schema in request.schemas {
            command.arg(format!("--schema={schema}"));
        }
        if let Some(role) = request.role {
            command.arg(format!("--role={role}"));
        }
        checked("pg_dump", command.output())?;
        Ok(())
    }

    /// The entries of a dump's table of contents (`pg_restore --list`), which also checks
    /// that the dump can be read.
    pub fn list(&self, dump: &Path) -> Result<Vec<TocEntry>, PgError> {
        let mut command = self.command("pg_restore");
        command.arg("--list").arg(dump);
        let out = checked("pg_restore", command.output())?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(TocEntry::parse)
            .collect())
    }

    /// Writes the SQL that recreates a dump's objects (owned by whoever runs it: no
    /// `OWNER TO`) into `script`. `without_schemas` leaves out the `CREATE SCHEMA`
    /// entries, for a schema that the restore creates itself.
    pub fn restore_script(
        &self,
        dump: &Path,
        script: &Path,
        without_schemas: bool,
    ) -> Result<(), PgError> {
        let mut command = self.command("pg_restore");
        command.arg("--no-owner").arg("--file").arg(script);
        if without_schemas {
            let entries = self.list(dump)?;
            let list: String = entries
                .iter()
                .filter(|e| e.kind != "SCHEMA")
                .map(|e| format!("{}\n", e.line))
                .collect();
            let list_path = PathBuf::from(format!("{}.list", script.display()));
            std::fs::write(&list_path, list).map_err(|e| {
                tool_error(
                    "pg_restore",
                    format!("writing {}: {e}", list_path.display()),
                )
            })?;
            command.arg(format!("--use-list={}", list_path.display()));
        }
        command.arg(dump);
        checked("pg_restore", command.output())?;
        Ok(())
    }

    /// Runs `script` with `psql` on `url`'s database in one transaction: all of it or, on
    /// the first error, none of it.
    pub fn run_in_one_transaction(&self, url: &StoreUrl, script: &Path) -> Result<(), PgError> {
        let mut command = self.connected("psql", url);
        command
            .arg("--no-psqlrc")
            .arg("--quiet")
            .arg("--single-transaction")
            .arg("--set=ON_ERROR_STOP=1")
            .arg("--file")
            .arg(script);
        checked("psql", command.output())?;
        Ok(())
    }
}

/// The program's output if it succeeded; its last lines of errors otherwise.
fn checked(program: &str, output: std::io::Result<Output>) -> Result<Output, PgError> {
    let output = output.map_err(|e| tool_error(program, format!("cannot run it: {e}")))?;
    if output.status.success() {
        return Ok(output);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(6)..].join("\n  ");
    Err(tool_error(program, format!("{}:\n  {tail}", output.status)))
}

/// What one `pg_dump` writes.
#[derive(Debug, Clone)]
pub struct DumpRequest<'a> {
    /// The directory to create.
    pub out: &'a Path,
    /// The snapshot to dump (from [`ExportedSnapshot`]); `None`: a snapshot of its own.
    pub snapshot: Option<&'a str>,
    /// Only these schemas (none: every schema).
    pub schemas: &'a [String],
    /// The role to dump as (`SET ROLE`), for a schema only that role may read.
    pub role: Option<&'a str>,
}

/// One line of a dump's table of contents: `ID; CATALOG OID TYPE SCHEMA NAME OWNER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    /// The line as `pg_restore --list` printed it (a `--use-list` line).
    pub line: String,
    /// The object's type (`TABLE`, `SCHEMA`, `TABLE DATA`, `ACL`, ...): the words
    /// before the schema field.
    pub kind: String,
    /// The rest: schema (`-` for none), name and owner.
    pub object: Vec<String>,
}

impl TocEntry {
    fn parse(line: &str) -> Option<TocEntry> {
        let (id, rest) = line.split_once(';')?;
        id.trim().parse::<u64>().ok()?;
        let words: Vec<&str> = rest.split_whitespace().collect();
        // Catalog OID, object OID, then the type's words, all capitals.
        let type_words: Vec<&str> = words
            .iter()
            .skip(2)
            .take_while(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .copied()
            .collect();
        let object = words
            .iter()
            .skip(2 + type_words.len())
            .map(|w| (*w).to_owned())
            .collect();
        Some(TocEntry {
            line: line.to_owned(),
            kind: type_words.join(" "),
            object,
        })
    }

    /// Whether this entry is the table `schema.name`.
    pub fn is_table(&self, schema: &str, name: &str) -> bool {
        self.kind == "TABLE" && self.object.first().map(String::as_str) == Some(schema) && {
            self.object.get(1).map(String::as_str) == Some(name)
        }
    }
}

/// A repeatable-read transaction whose snapshot other sessions (`pg_dump --snapshot`)
/// import; it stays open, and the snapshot valid, until [`ExportedSnapshot::finish`].
pub struct ExportedSnapshot {
    client: Client,
    id: String,
}

impl ExportedSnapshot {
    /// Connects with `conn` (a URL or key-value string; `target` names it in errors) and
    /// exports a snapshot.
    pub fn begin(conn: &str, target: &str) -> Result<ExportedSnapshot, PgError> {
        let mut client =
            Client::connect(conn, postgres::NoTls).map_err(|source| PgError::Connect {
                target: target.to_owned(),
                source,
            })?;
        let begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
        client
            .batch_execute(begin)
            .map_err(|source| PgError::Statement {
                statement: begin.into(),
                source,
            })?;
        let export = "SELECT pg_export_snapshot()";
        let id: String = client
            .query_one(export, &[])
            .map_err(|source| PgError::Statement {
                statement: export.into(),
                source,
            })?
            .get(0);
        Ok(ExportedSnapshot { client, id })
    }

    /// The snapshot's id (`pg_dump --snapshot=ID`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The connection inside the snapshot's transaction (reads see the dumped data).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Ends the transaction (the snapshot can no longer be imported).
    pub fn finish(mut self) -> Result<(), PgError> {
        self.client
            .batch_execute("COMMIT")
            .map_err(|source| PgError::Statement {
                statement: "COMMIT".into(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::TocEntry;

    #[test]
    fn table_of_contents_lines_are_read_by_field() {
        let table = TocEntry::parse("215; 1259 16401 TABLE public _sv_store svc_core").unwrap();
        assert_eq!(table.kind, "TABLE");
        assert!(table.is_table("public", "_sv_store"));
        let data = TocEntry::parse("3380; 0 16401 TABLE DATA public _sv_store svc_core").unwrap();
        assert_eq!(data.kind, "TABLE DATA");
        assert!(!data.is_table("public", "_sv_store"));
        let schema = TocEntry::parse("6; 2615 16385 SCHEMA - notes svp_notes").unwrap();
        assert_eq!(schema.kind, "SCHEMA");
        assert_eq!(schema.object, ["-", "notes", "svp_notes"]);
        assert!(TocEntry::parse(";").is_none());
        assert!(TocEntry::parse("; Archive created at 2026-11-29").is_none());
    }
}
