//! Figures of the plugin author's loop, with a real `sv serve` and its extension host:
//!
//! 1. Wall time from `sv plugins new` through `sv plugins build` and `sv plugins install`
//!    to the first successful request to the new route, with a fresh target directory
//!    (the dependencies cached in cargo's registry, compiled from scratch), and with a
//!    warm one. Goal < 60 s.
//! 2. One edit -> rebuild -> reinstall -> reload -> request cycle under
//!    `sv plugins dev`, median of 3. Goal < 10 s.
//!
//! Run: `cargo bench -p sv --bench authoring`.

mod support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::{PASSWORD, Platform, agent, sv, sv_ok};

fn get_text(agent: &ureq::Agent, url: &str, token: &str) -> Option<String> {
    let mut r = agent
        .get(url)
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let body: serde_json::Value = r.body_mut().read_json().ok()?;
    body["text"].as_str().map(str::to_owned)
}

/// Waits until `url` answers `text`.
fn until_answers(agent: &ureq::Agent, url: &str, token: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while get_text(agent, url, token).as_deref() != Some(text) {
        assert!(Instant::now() < deadline, "{url} never answered {text:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `new` -> `build` -> `install` -> first good request, in seconds.
fn new_to_first_request(platform: &Platform, token: &str, id: &str, target: &Path) -> f64 {
    let agent = agent();
    let dir = platform.dir.path();
    let pkg = dir.join("authoring").join(id);
    let started = Instant::now();
    sv_ok(dir, &["plugins", "new", id, "--dir", pkg.to_str().unwrap()]);
    let built = sv(dir)
        .args(["plugins", "build", pkg.to_str().unwrap()])
        .env("CARGO_TARGET_DIR", target)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stdout)
    );
    sv_ok(dir, &["plugins", "install", pkg.to_str().unwrap(), "--yes"]);
    until_answers(
        &agent,
        &format!("{}/api/plugins/{id}/hello", platform.base),
        token,
        &format!("Hello from {id}"),
    );
    started.elapsed().as_secs_f64()
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let platform = Platform::start(&[], &[("bench@example.com", true)]);
    let (_, token) = platform.login(&agent(), "bench@example.com", PASSWORD);
    let scratch = tempfile::tempdir().unwrap();
    let cold = new_to_first_request(&platform, &token, "cold", &scratch.path().join("target"));
    let warm = new_to_first_request(&platform, &token, "warm", &scratch.path().join("target"));
    println!(
        "sv plugins new -> build -> install -> first request: {cold:.1} s with a fresh target \
         directory, {warm:.1} s with a warm one (goal < 60 s)"
    );

    let pkg = platform.dir.path().join("authoring/warm");
    let _dev = KillOnDrop(
        sv(platform.dir.path())
            .args(["plugins", "dev", pkg.to_str().unwrap()])
            .env("CARGO_TARGET_DIR", scratch.path().join("target"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let agent = agent();
    let url = format!("{}/api/plugins/warm/hello", platform.base);
    until_answers(&agent, &url, &token, "Hello from warm");
    std::thread::sleep(Duration::from_secs(2));
    let source_path = pkg.join("src/lib.rs");
    let original = std::fs::read_to_string(&source_path).unwrap();
    let mut cycles = Vec::new();
    for (round, function) in ["upper", "lower", "upper"].iter().enumerate() {
        let expected = if *function == "upper" {
            "HELLO FROM WARM"
        } else {
            "hello from warm"
        };
        let started = Instant::now();
        std::fs::write(
            &source_path,
            original.replace(
                "SELECT id, text FROM",
                &format!("SELECT id, {function}(text) || '' AS text FROM"),
            ) + &format!("\n// edit {round}\n"),
        )
        .unwrap();
        until_answers(&agent, &url, &token, expected);
        cycles.push(started.elapsed().as_secs_f64());
    }
    cycles.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "sv plugins dev: edit -> rebuild -> reinstall -> request, median {:.1} s of {} (goal < 10 s)",
        cycles[cycles.len() / 2],
        cycles.len()
    );
}
