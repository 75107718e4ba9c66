//! Helpers for tests that run the real `sv` binary against temporary data directories.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Variables that would leak the developer's configuration into a test.
const CONFIG_VARS: &[&str] = sovereign_config::VARIABLES;

/// A temporary working directory for `sv`.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn core_db(&self) -> PathBuf {
        self.path().join("data/core.db")
    }

    pub fn plugins_db(&self) -> PathBuf {
        self.path().join("data/plugins.db")
    }

    /// A `sv` command running in this directory with a clean configuration environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sv"));
        cmd.args(args)
            .current_dir(self.path())
            .env("SV_LOG", "warn");
        for var in CONFIG_VARS {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs `sv` to completion.
    pub fn sv(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs `sv` with `input` on its standard input.
    pub fn sv_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        feed(&mut child, input);
        child.wait_with_output().unwrap()
    }

    /// Creates a user from the command line with the given password.
    pub fn create_user(&self, email: &str, password: &str, admin: bool) {
        let mut args = vec!["users", "create", "--email", email, "--password-stdin"];
        if admin {
            args.push("--admin");
        }
        let out = self.sv_with_input(&args, &format!("{password}\n"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `sv` and asserts success, returning stdout.
    pub fn sv_ok(&self, args: &[&str]) -> String {
        let out = self.sv(args);
        assert!(
            out.status.success(),
            "sv {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `sv`, asserts failure, returns stderr.
    pub fn sv_err(&self, args: &[&str]) -> String {
        let out = self.sv(args);
        assert!(
            !out.status.success(),
            "sv {args:?} should have failed:\nstdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Writes a plugin migration file.
    pub fn plugin_migration(&self, plugin: &str, file: &str, sql: &str) -> PathBuf {
        let dir = self.path().join("plugins").join(plugin).join("migrations");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(file);
        std::fs::write(&path, sql).unwrap();
        path
    }

    /// Starts `sv <args> --port 0` and waits until it serves.
    pub fn start(&self, args: &[&str]) -> Server {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--port", "0"]);
        let mut child = self
            .command(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.push(line.clone());
                if let Some(addr) = line.strip_prefix("Sovereign is running at ") {
                    let _ = tx.send(Ok((addr.to_owned(), lines.clone())));
                }
            }
            let _ = tx.send(Err(lines));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok((base, stdout))) => Server {
                child,
                base,
                stdout,
                agent: agent(),
            },
            other => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "sv {args:?} did not start: {other:?}\nstderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A running `sv dev` / `sv serve`.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// Standard output up to the "running" line.
    pub stdout: Vec<String>,
    agent: ureq::Agent,
}

/// An HTTP answer: status and JSON body (Null when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Server {
    /// The extension host's part of `/health`.
    pub fn host_state(&self) -> Value {
        self.get("/health", None).body["extension_host"].clone()
    }

    /// Waits until the extension host runs; returns its part of `/health`.
    pub fn wait_host_running(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = self.host_state();
            if state["status"] == "running" {
                return state;
            }
            assert!(Instant::now() < deadline, "the host never ran: {state}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn reply(mut response: ureq::http::Response<ureq::Body>) -> Reply {
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, body, text }
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.agent.get(self.url(path));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        Self::reply(req.call().unwrap())
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let response = match body {
            Some(b) => self
                .agent
                .run(
                    req.header("content-type", "application/json")
                        .body(b.to_string())
                        .unwrap(),
                )
                .unwrap(),
            None => self.agent.run(req.body(()).unwrap()).unwrap(),
        };
        Self::reply(response)
    }

    /// Sends a raw body with an optional content type.
    pub fn send_raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Reply {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        Self::reply(self.agent.run(req.body(body.to_owned()).unwrap()).unwrap())
    }

    /// Sends a raw body with a token and an optional content type.
    pub fn send_raw_with_token(
        &self,
        method: &str,
        path: &str,
        token: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Reply {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("Authorization", format!("Bearer {token}"));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        Self::reply(self.agent.run(req.body(body.to_owned()).unwrap()).unwrap())
    }

    /// Logs in and returns the token.
    pub fn login(&self, email: &str, password: &str) -> String {
        let r = self.send(
            "POST",
            "/api/auth/login",
            None,
            Some(serde_json::json!({ "email": email, "password": password })),
        );
        assert_eq!(r.status, 200, "login failed: {}", r.text);
        r.body["token"].as_str().unwrap().to_owned()
    }

    /// The first admin password printed by `sv dev`.
    pub fn printed_password(&self) -> String {
        self.stdout
            .iter()
            .find_map(|l| l.trim().strip_prefix("password: "))
            .expect("sv dev printed a password")
            .to_owned()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.stop_ref()
    }
}

impl Server {
    /// The platform's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, waits for the exit and returns it with everything logged to stderr.
    pub fn stop_with_log(mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let mut stderr = self.child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let status = self.stop_ref();
        (status, reader.join().unwrap())
    }

    fn stop_ref(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "sv did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The host and port the server listens on.
    pub fn address(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a database file for inspection in a test (not through Sovereign's code).
pub fn raw(path: &Path) -> rusqlite_for_tests::Connection {
    rusqlite_for_tests::Connection::open(path).unwrap()
}

pub use sovereign_db::rusqlite as rusqlite_for_tests;

/// Names of the tables in a database file.
pub fn tables(path: &Path) -> Vec<String> {
    let conn = raw(path);
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Writes `input` to a child's stdin.
pub fn feed(child: &mut Child, input: &str) {
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
}

/// A real plugin component (the `notes` example, built by `sv`'s build script), for
/// packages written by tests: install compiles and checks `plugin.wasm`.
pub fn example_component() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/notes/plugin.wasm")
}

/// Copies the example component into package `dir` as its `plugin.wasm`.
pub fn add_component(dir: &Path) {
    std::fs::copy(example_component(), dir.join("plugin.wasm")).unwrap();
}

/// Copies a plugin package directory (recursively).
pub fn copy_package(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_package(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Runs `sql` with `psql` on `url` (which must succeed); its rows, unaligned, trimmed.
pub fn psql_text(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A task of `tasks` assigned to user `ada` (display name "Ada") shows her mirrored name
/// (captured on the core, applied by the sync worker), and her new name after a rename;
/// completing it twice reaches the core's activity feed once.
pub fn tasks_follow_the_core(served: &Server, token: &str, ada: i64) {
    let token = Some(token);
    let task = served.send(
        "POST",
        "/api/plugins/tasks/tasks",
        token,
        Some(serde_json::json!({ "title": "Port the core", "assignee": ada })),
    );
    assert_eq!(task.status, 201, "{}", task.text);
    let id = task.body["id"].as_i64().unwrap();
    let assignee_becomes = |name: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let read = served.get(&format!("/api/plugins/tasks/tasks/{id}"), token);
            if read.body["assignee_name"] == name {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the mirror never had {name}: {}",
                read.text
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    assignee_becomes("Ada");
    let renamed = served.send(
        "PATCH",
        &format!("/api/users/{ada}"),
        token,
        Some(serde_json::json!({ "display_name": "Ada L." })),
    );
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    assignee_becomes("Ada L.");
    for _ in 0..2 {
        let done = served.send(
            "POST",
            &format!("/api/plugins/tasks/tasks/{id}/complete"),
            token,
            None,
        );
        assert_eq!(done.status, 200, "{}", done.text);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let feed = served.get("/api/activity", token);
        let entries = feed.body.as_array().map_or(0, Vec::len);
        if entries > 0 {
            assert_eq!(entries, 1, "{}", feed.text);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no activity: {}",
            feed.text
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
