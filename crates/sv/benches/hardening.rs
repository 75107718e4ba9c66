//! Figures of the hardening work, with real processes (`sv serve`, its extension host,
//! the `tasks` example and the hostile fixture) over HTTP on loopback:
//!
//! 1. A neighbour plugin (`tasks`, one write and one read per iteration) while the
//!    hostile fixture attacks the shared store: its failed requests, its worst latency
//!    and its recovery time (from the attack's answer to the first neighbour request no
//!    slower than 2x the baseline p99), against a baseline without attack in the same
//!    run. Goal: no neighbour failure, recovery < 1 s.
//! 2. Peak resident memory of the extension host after the wide-row attack, against its
//!    idle size. Goal: SQLite's heap limit + the WebAssembly caps + a fixed overhead.
//! 3. 50 clients guessing passwords for 5 s: attempts per second that reach password
//!    verification for one account (and for many accounts from one address), against
//!    the attempts made; legitimate logins of another account meanwhile.
//! 4. Connections one client holding slow headers keeps open: at 1 s, and after the
//!    header read timeout.
//!
//! Run: `cargo bench -p sv --bench hardening`.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{PASSWORD, Platform, agent, health, status_kb};

fn call(agent: &ureq::Agent, method: &str, url: &str, token: &str, body: Option<&str>) -> u16 {
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    let result = match body {
        Some(b) => agent.run(request.body(b.to_owned()).unwrap()),
        None => agent.run(request.body(()).unwrap()),
    };
    match result {
        Ok(mut r) => {
            let _ = r.body_mut().read_to_vec();
            r.status().as_u16()
        }
        Err(_) => 0,
    }
}

/// The neighbour: `tasks`, one write and one read per iteration, timing each request.
struct Neighbour {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Instant, Duration, bool)>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Neighbour {
    fn start(base: &str, token: &str) -> Neighbour {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (base, token, stop, samples) = (
                base.to_owned(),
                token.to_owned(),
                stop.clone(),
                samples.clone(),
            );
            std::thread::spawn(move || {
                let agent = agent();
                let url = format!("{base}/api/plugins/tasks/tasks");
                while !stop.load(Ordering::SeqCst) {
                    for (method, body) in [("POST", Some(r#"{"title": "n"}"#)), ("GET", None)] {
                        let started = Instant::now();
                        let status = call(&agent, method, &url, &token, body);
                        let took = started.elapsed();
                        samples.lock().unwrap().push((
                            started + took,
                            took,
                            (200..300).contains(&status),
                        ));
                    }
                    // Keep the listing small.
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Neighbour {
            stop,
            samples,
            thread,
        }
    }

    fn finish(self) -> Vec<(Instant, Duration, bool)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        Arc::try_unwrap(self.samples).unwrap().into_inner().unwrap()
    }
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let platform = Platform::start(
        &["tasks", "fixtures/hostile"],
        &[("bench@example.com", true), ("other@example.com", false)],
    );
    let base = platform.base.clone();
    let client = agent();
    let agent = &client;
    let pid = health(agent, &base)["extension_host"]["pid"]
        .as_u64()
        .unwrap() as u32;
    let (_, token) = platform.login(agent, "bench@example.com", PASSWORD);
    let idle_host_kb = status_kb(pid, "VmRSS:");

    // 1. Baseline, then each attack beside the neighbour.
    let neighbour = Neighbour::start(&base, &token);
    std::thread::sleep(Duration::from_secs(3));
    let baseline = neighbour.finish();
    let base_p50 = percentile(baseline.iter().map(|s| s.1).collect(), 0.5);
    let base_p99 = percentile(baseline.iter().map(|s| s.1).collect(), 0.99);
    println!(
        "neighbour baseline: {} requests, p50 {:.1} ms, p99 {:.1} ms, {} failed",
        baseline.len(),
        base_p50.as_secs_f64() * 1e3,
        base_p99.as_secs_f64() * 1e3,
        baseline.iter().filter(|s| !s.2).count()
    );
    let attacks: [(&str, &str, &str, usize); 4] = [
        (
            "4 x lock the store, then sleep 30 s",
            "POST",
            "/api/plugins/hostile/lock-and-sleep",
            4,
        ),
        (
            "quadratic-looking function calls",
            "POST",
            "/api/plugins/hostile/slow-function",
            1,
        ),
        (
            "200 columns x 1 MB rows",
            "GET",
            "/api/plugins/hostile/wide-rows",
            1,
        ),
        (
            "100,000 events in one request",
            "POST",
            "/api/plugins/hostile/flood-events",
            1,
        ),
    ];
    for (name, method, path, parallel) in attacks {
        let neighbour = Neighbour::start(&base, &token);
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let attackers: Vec<_> = (0..parallel)
            .map(|_| {
                let (url, token, method) =
                    (format!("{base}{path}"), token.clone(), method.to_owned());
                std::thread::spawn(move || call(&self::agent(), &method, &url, &token, None))
            })
            .collect();
        let statuses: Vec<u16> = attackers.into_iter().map(|t| t.join().unwrap()).collect();
        let answered = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        let samples = neighbour.finish();
        let during: Vec<_> = samples.iter().filter(|s| s.0 >= started).collect();
        let failed = during.iter().filter(|s| !s.2).count();
        let worst = during.iter().map(|s| s.1).max().unwrap_or_default();
        let recovered = samples
            .iter()
            .find(|s| s.0 >= answered && s.2 && s.1 <= base_p99 * 2)
            .map(|s| s.0.saturating_duration_since(answered))
            .unwrap_or(Duration::MAX);
        println!(
            "attack: {name}: attacker answered {statuses:?} after {:.0} ms; neighbour {} requests, {failed} failed, worst {:.0} ms ({:.1}x baseline p99), recovered {:.0} ms after the attacker's answer",
            answered.duration_since(started).as_secs_f64() * 1e3,
            during.len(),
            worst.as_secs_f64() * 1e3,
            worst.as_secs_f64() / base_p99.as_secs_f64(),
            recovered.as_secs_f64() * 1e3,
        );
    }

    // 2. Host memory.
    let peak_host_kb = status_kb(pid, "VmHWM:");
    println!(
        "host memory: idle {} MiB, peak after the attacks {} MiB ({:.1}x idle); bound: SQLite heap 256 MiB + 4 workers x memory_mb + result_kb",
        idle_host_kb / 1024,
        peak_host_kb / 1024,
        peak_host_kb as f64 / idle_host_kb.max(1) as f64
    );

    // 3. Password guessing, 50 clients, 5 s per run.
    for (name, distinct) in [("one account", false), ("many accounts, one address", true)] {
        let attempts = Arc::new(AtomicU64::new(0));
        let verified = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let guessers: Vec<_> = (0..50)
            .map(|n| {
                let (base, attempts, verified) = (base.clone(), attempts.clone(), verified.clone());
                std::thread::spawn(move || {
                    let agent = self::agent();
                    let mut i = 0;
                    while Instant::now() < deadline {
                        let email = if distinct {
                            format!("victim{n}-{i}@example.com")
                        } else {
                            "bench@example.com".to_owned()
                        };
                        let (status, _) = support::login(&agent, &base, &email, "guess");
                        attempts.fetch_add(1, Ordering::Relaxed);
                        if status == 401 {
                            verified.fetch_add(1, Ordering::Relaxed);
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        let mut legit = (0, 0);
        while Instant::now() < deadline {
            let (status, _) = platform.login(agent, "other@example.com", PASSWORD);
            legit.0 += 1;
            legit.1 += usize::from(status == 200);
            std::thread::sleep(Duration::from_millis(250));
        }
        guessers.into_iter().for_each(|t| t.join().unwrap());
        let (a, v) = (
            attempts.load(Ordering::Relaxed),
            verified.load(Ordering::Relaxed),
        );
        println!(
            "guessing, {name}: {:.0} attempts/s, {:.1} reached password verification/s ({:.3} of attempts); legitimate logins of another account: {}/{} succeeded",
            a as f64 / 5.0,
            v as f64 / 5.0,
            v as f64 / a.max(1) as f64,
            legit.1,
            legit.0
        );
        // Clear the locks for the next run (as an admin would).
        let locks: serde_json::Value = agent
            .get(format!("{base}/api/admin/login-locks"))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_json().ok())
            .unwrap_or_default();
        for lock in locks.as_array().into_iter().flatten() {
            let url = format!(
                "{base}/api/admin/login-locks/{}/{}",
                lock["kind"].as_str().unwrap(),
                lock["key"].as_str().unwrap()
            );
            call(agent, "DELETE", &url, &token, None);
        }
    }

    // 4. Slow headers from one client.
    let addr = base.trim_start_matches("http://").to_owned();
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..400 {
        if let Ok(mut s) = TcpStream::connect(&addr) {
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n");
            held.push(s);
        }
    }
    let count_open = |held: &mut Vec<TcpStream>| {
        held.iter_mut()
            .map(|s| {
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 1];
                matches!(std::io::Read::read(s, &mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .filter(|open| *open)
            .count()
    };
    std::thread::sleep(Duration::from_secs(1));
    let at_1s = count_open(&mut held);
    let health_ok = health(agent, &base)["status"] == "ok";
    std::thread::sleep(Duration::from_secs(11));
    let at_12s = count_open(&mut held);
    println!(
        "slow headers: one client opened 400 connections; open after 1 s: {at_1s} (per-address cap 128), after 12 s: {at_12s} (header timeout 10 s); /health from the same address meanwhile: {}",
        if health_ok { "ok" } else { "refused" }
    );
    drop(held);
}
