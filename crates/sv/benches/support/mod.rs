//! What the platform benchmarks share: running `sv` in a scratch directory, an HTTP
//! agent, and a served platform with plugins and users installed.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The password of every benchmark user.
pub const PASSWORD: &str = "bench password 1";

/// `sv` in `dir`, without the developer's configuration.
pub fn sv(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sv"));
    c.current_dir(dir).env("SV_LOG", "error");
    for var in sovereign_config::VARIABLES {
        c.env_remove(var);
    }
    c
}

/// Runs `sv args` in `dir`, which must succeed; returns its standard output.
pub fn sv_ok(dir: &Path, args: &[&str]) -> String {
    let out = sv(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An HTTP agent that returns error statuses instead of failing.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// `GET /health` (`Null` when it does not answer).
pub fn health(agent: &ureq::Agent, base: &str) -> serde_json::Value {
    agent
        .get(format!("{base}/health"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_json().ok())
        .unwrap_or_default()
}

/// Waits until the extension host runs; returns its part of `/health`.
pub fn wait_running(agent: &ureq::Agent, base: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = health(agent, base);
        if h["extension_host"]["status"] == "running" {
            return h["extension_host"].clone();
        }
        assert!(Instant::now() < deadline, "the host never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS:`, `VmHWM:`).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `POST /api/auth/login`; returns `(status, token)` (`0` when it did not answer).
pub fn login(agent: &ureq::Agent, base: &str, email: &str, password: &str) -> (u16, String) {
    match agent
        .post(format!("{base}/api/auth/login"))
        .send_json(serde_json::json!({ "email": email, "password": password }))
    {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let v: serde_json::Value = r.body_mut().read_json().unwrap_or_default();
            (status, v["token"].as_str().unwrap_or_default().to_owned())
        }
        Err(_) => (0, String::new()),
    }
}

/// A platform served by `sv serve` from a scratch directory.
pub struct Platform {
    /// The data and packages.
    pub dir: tempfile::TempDir,
    /// The `sv serve` process.
    pub server: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Platform {
    /// Migrates, installs the repository's `plugins` (paths under `plugins/`), creates
    /// `users` (`(email, admin)`, password [`PASSWORD`]) and serves, with the host running.
    pub fn start(plugins: &[&str], users: &[(&str, bool)]) -> Platform {
        Platform::serve(Platform::prepare(plugins, users))
    }

    /// What [`start`](Self::start) does before serving: a scratch directory, migrated,
    /// with `plugins` installed and `users` created, for a benchmark to add to.
    pub fn prepare(plugins: &[&str], users: &[(&str, bool)]) -> tempfile::TempDir {
        Platform::prepare_in(tempfile::tempdir().unwrap(), plugins, users)
    }

    /// [`prepare`](Self::prepare) in `dir`, which may hold a `sovereign.toml` already.
    pub fn prepare_in(
        dir: tempfile::TempDir,
        plugins: &[&str],
        users: &[(&str, bool)],
    ) -> tempfile::TempDir {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins");
        sv_ok(dir.path(), &["migrate:deploy"]);
        for p in plugins {
            sv_ok(
                dir.path(),
                &[
                    "plugins",
                    "install",
                    root.join(p).to_str().unwrap(),
                    "--yes",
                ],
            );
        }
        for (email, admin) in users {
            let mut create = sv(dir.path());
            create.args(["users", "create", "--email", email, "--password-stdin"]);
            if *admin {
                create.arg("--admin");
            }
            let mut child = create.stdin(Stdio::piped()).spawn().unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{PASSWORD}\n").as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success());
        }
        dir
    }

    /// Serves `dir` with `sv serve` and waits until the extension host runs.
    pub fn serve(dir: tempfile::TempDir) -> Platform {
        let mut server = sv(dir.path())
            .args(["serve", "--port", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let base = BufReader::new(server.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("Sovereign is running at ").map(String::from))
            .unwrap();
        wait_running(&agent(), &base);
        Platform { dir, server, base }
    }

    /// Logs `email` in; returns `(status, token)`.
    pub fn login(&self, agent: &ureq::Agent, email: &str, password: &str) -> (u16, String) {
        login(agent, &self.base, email, password)
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
