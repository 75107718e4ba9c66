//! The operator console in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs; nothing is downloaded), driven over
//! WebDriver against a real `sv serve` with the example plugins.
//!
//! On failure the screenshots taken at each step are kept under
//! `target/console-screenshots/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, Workdir};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const ADMIN: (&str, &str) = ("root@example.com", "root password 1");
const MEMBER: (&str, &str) = ("member@example.com", "member password 1");

fn repo_plugin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins")
        .join(name)
}

fn find_program(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: the console tests need Debian's chromium and \
                 chromium-driver (`apt-get install chromium chromium-driver`; .ci/run does)"
            )
        })
}

/// chromedriver and a headless Chromium session; both end when dropped.
struct Browser {
    driver: Child,
    client: Option<Client>,
    shots: PathBuf,
    step: usize,
}

impl Browser {
    async fn start(profile: &Path, shots: PathBuf) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(find_program("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,800".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        // Chromium's own sandbox cannot run as root (CI runs as root); tests only.
        if unsafe { libc::geteuid() } == 0 {
            args.push("--no-sandbox".to_owned());
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": find_program("chromium"), "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(connector.clone())
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot start headless Chromium through chromedriver: {e}"),
            }
        };
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            client: Some(client),
            shots,
            step: 0,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Runs `script` (a function body returning JSON) in the page.
    async fn js(&self, script: &str) -> Value {
        self.client().execute(script, vec![]).await.unwrap()
    }

    /// Waits until `script` returns `true`; on timeout panics with the page's text.
    async fn wait(&mut self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                self.shot(&format!("timeout-{what}")).await;
                let text = self.js("return document.body.innerText").await;
                panic!("timed out waiting for {what}; the page says:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    async fn type_into(&self, css: &str, text: &str) {
        let field = self.client().find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    async fn shot(&mut self, name: &str) {
        self.step += 1;
        if let Ok(png) = self.client().screenshot().await {
            let _ = std::fs::write(self.shots.join(format!("{:02}-{name}.png", self.step)), png);
        }
    }

    async fn tab(&mut self, panel: &str) {
        self.click(&format!(".tab[data-panel='{panel}']")).await;
        self.wait(
            &format!("the {panel} panel"),
            &format!("return !document.getElementById('panel-{panel}').hidden"),
        )
        .await;
    }

    async fn login(&mut self, (email, password): (&str, &str)) {
        self.type_into("#login-email", email).await;
        self.type_into("#login-password", password).await;
        self.click("#login-form button[type=submit]").await;
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        if std::thread::panicking() {
            let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../console-screenshots");
            let _ = std::fs::create_dir_all(&kept);
            for entry in std::fs::read_dir(&self.shots)
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
            }
            eprintln!("console screenshots: {}", kept.display());
        }
    }
}

fn platform() -> (Workdir, Server, String) {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    for p in ["tasks", "notes"] {
        w.sv_ok(&[
            "plugins",
            "install",
            repo_plugin(p).to_str().unwrap(),
            "--yes",
        ]);
    }
    w.create_user(ADMIN.0, ADMIN.1, true);
    w.create_user(MEMBER.0, MEMBER.1, false);
    let server = w.start(&["serve"]);
    server.wait_host_running();
    let token = server.login(ADMIN.0, ADMIN.1);
    (w, server, token)
}

/// A raw request with cookies and headers of the test's choosing.
fn raw(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, ureq::http::HeaderMap, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = match body {
        Some(body) => agent.run(
            request
                .header("content-type", "application/json")
                .body(body.to_string())
                .unwrap(),
        ),
        None => agent.run(request.body(()).unwrap()),
    }
    .unwrap();
    let headers = response.headers().clone();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (response.status().as_u16(), headers, text)
}

#[test]
fn an_operator_runs_the_platform_from_the_console_in_a_real_browser() {
    let (w, server, token) = platform();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut b = Browser::start(&w.path().join("chromium"), w.path().join("screenshots")).await;

        // An anonymous visitor gets the login form; the panels' data is refused.
        b.client().goto(&server.url("/console")).await.unwrap();
        b.wait("the login form", "return !document.getElementById('login').hidden").await;
        let (status, _, _) = raw("GET", &server.url("/console/api/plugins"), &[], None);
        assert_eq!(status, 401);
        b.shot("login").await;

        // A member is refused, with the reason in the page.
        b.login(MEMBER).await;
        b.wait(
            "the member's refusal",
            "return document.getElementById('error').innerText.includes('administrators only')",
        )
        .await;
        assert_eq!(b.js("return document.getElementById('app').hidden").await, true);

        // The administrator sees both plugins with their storage.
        b.login(ADMIN).await;
        b.wait(
            "both plugins",
            "return document.querySelectorAll('#plugins-body tr[data-plugin]').length === 2",
        )
        .await;
        b.wait(
            "the tasks plugin's storage",
            "const row = document.querySelector('tr[data-plugin=tasks]');
             return row.innerText.includes('of 64.0 MiB') && row.innerText.includes('enabled')
                    && row.children[3].innerText === '0.2.0'",
        )
        .await;
        // The session cookie is not readable by any script of the page.
        assert_eq!(b.js("return document.cookie").await, "");
        b.shot("plugins").await;

        // Refreshing moves nothing on the page: no layout shift over three refreshes.
        b.js(
            "window.__shift = 0;
             new PerformanceObserver((list) => {
               for (const e of list.getEntries()) if (!e.hadRecentInput) window.__shift += e.value;
             }).observe({ type: 'layout-shift' });
             return true",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(6500)).await;
        let shift = b.js("return window.__shift").await.as_f64().unwrap();
        assert!(shift < 0.01, "the page shifted by {shift} while refreshing");

        // Keyboard only: a tab is reached and opened with the keyboard.
        b.js("document.querySelector(\".tab[data-panel='stores']\").focus(); return true")
            .await;
        let focused = b.client().active_element().await.unwrap();
        focused
            .send_keys(&fantoccini::key::Key::Enter.to_string())
            .await
            .unwrap();
        b.wait(
            "the stores panel opened from the keyboard",
            "return !document.getElementById('panel-stores').hidden",
        )
        .await;
        b.tab("plugins").await;

        // Disable (confirmed) -> the route answers 404; enable -> 200.
        b.click("tr[data-plugin=tasks] button.toggle").await;
        b.wait("the confirmation", "return document.getElementById('confirm').open").await;
        b.click("#confirm-ok").await;
        b.wait(
            "tasks disabled",
            "return document.querySelector('tr[data-plugin=tasks]').innerText.includes('disabled')",
        )
        .await;
        assert_eq!(server.get("/api/plugins/tasks/tasks", Some(&token)).status, 404);
        b.click("tr[data-plugin=tasks] button.toggle").await;
        b.wait(
            "tasks enabled",
            "const t = document.querySelector('tr[data-plugin=tasks]').innerText;
             return t.includes('enabled') && !t.includes('disabled')",
        )
        .await;
        assert_eq!(server.get("/api/plugins/tasks/tasks", Some(&token)).status, 200);

        // A purge needs the id typed; a wrong one changes nothing and says so.
        b.click("tr[data-plugin=notes] button.purge").await;
        b.wait("the purge dialog", "return document.getElementById('confirm').open").await;
        b.type_into("#confirm-typed", "tasks").await;
        b.click("#confirm-ok").await;
        b.wait(
            "the refusal of a wrong confirmation",
            "return document.getElementById('error').innerText.includes('Nothing was changed')",
        )
        .await;

        // The sync panel follows a burst of core writes.
        b.tab("sync").await;
        b.wait("a first sample", "return Number(document.getElementById('lag-chart').dataset.samples || 0) > 0").await;
        let before = b.js("return Number(document.getElementById('lag-chart').dataset.watermark)").await;
        for i in 0..100 {
            let created = server.send(
                "POST",
                "/api/users",
                Some(&token),
                Some(json!({
                    "email": format!("burst{i}@example.com"),
                    "display_name": format!("Burst {i}"),
                    "password": "burst password 1",
                })),
            );
            assert_eq!(created.status, 201, "{}", created.text);
        }
        b.wait(
            "the watermark to move past the burst",
            &format!(
                "return Number(document.getElementById('lag-chart').dataset.watermark) >= {before} + 100"
            ),
        )
        .await;
        b.click("#reconcile").await;
        b.wait(
            "the reconcile's result",
            "return document.getElementById('reconcile-result').innerText.includes('0 rows differ')",
        )
        .await;
        b.shot("sync").await;

        // The host: running, restarted from the console, running again.
        b.tab("host").await;
        b.wait(
            "the host running",
            "return document.getElementById('host-status').dataset.status === 'running'
                    && document.getElementById('host-probe').innerText.startsWith('refused')",
        )
        .await;
        b.click("#host-restart").await;
        b.wait("the confirmation", "return document.getElementById('confirm').open").await;
        b.click("#confirm-ok").await;
        b.wait(
            "the host back after one restart",
            "return document.getElementById('host-status').dataset.status === 'running'
                    && document.getElementById('host-restarts').innerText === '1'
                    && document.getElementById('host-memory').innerText.includes('MiB')",
        )
        .await;
        b.shot("host").await;
        assert_eq!(server.get("/api/plugins/tasks/tasks", Some(&token)).status, 200);

        // A backup, taken and verified from the console.
        b.tab("backups").await;
        b.click("#backup-start").await;
        b.wait(
            "a verified backup",
            "return [...document.querySelectorAll('#backups-body tr[data-backup]')]
                    .some(r => r.innerText.includes('verified:'))",
        )
        .await;
        b.shot("backups").await;

        // Stores, audit log and events show what happened.
        b.tab("stores").await;
        b.wait(
            "the stores",
            "const core = document.querySelector('#stores-body tr[data-key=core]');
             return core !== null && core.innerText.includes('ok (')
                    && document.getElementById('pending-migrations').innerText.includes('none')",
        )
        .await;
        b.shot("stores").await;
        b.tab("logs").await;
        b.wait(
            "the newest audit entries",
            "return document.getElementById('audit-body').innerText.includes('user.create')",
        )
        .await;
        b.type_into("#filter-plugin", "tasks").await;
        b.click("#logs-filter button[type=submit]").await;
        b.wait(
            "the audit log filtered by plugin",
            "const t = document.getElementById('audit-body').innerText;
             return t.includes('plugin.disable') && t.includes('plugin.enable') && !t.includes('user.create')",
        )
        .await;
        b.shot("logs").await;

        // At phone width the page still lays out (no horizontal scroll of the page).
        b.client().set_window_size(390, 844).await.unwrap();
        b.tab("plugins").await;
        assert_eq!(
            b.js("return document.documentElement.scrollWidth <= window.innerWidth + 1").await,
            true,
            "the page scrolls sideways at phone width"
        );
        b.shot("phone").await;
        if let Some(out) = std::env::var_os("SV_CONSOLE_SCREENSHOT") {
            b.client().set_window_size(1280, 800).await.unwrap();
            b.tab("plugins").await;
            let png = b.client().screenshot().await.unwrap();
            std::fs::write(out, png).unwrap();
        }
        b.close().await;
    });

    // The cookie's flags, the console's policy, and a forged change without the token.
    let (status, headers, body) = raw(
        "POST",
        &server.url("/console/login"),
        &[],
        Some(json!({ "email": ADMIN.0, "password": ADMIN.1 })),
    );
    assert_eq!(status, 200, "{body}");
    let set_cookie = headers
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set_cookie.contains(flag), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = serde_json::from_str::<Value>(&body).unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let disable = server.url("/console/api/plugins/notes/disable");
    let (forged, _, text) = raw("POST", &disable, &[("cookie", &cookie)], None);
    assert_eq!(forged, 403, "{text}");
    let (wrong, _, _) = raw(
        "POST",
        &disable,
        &[("cookie", &cookie), ("x-csrf-token", "0000")],
        None,
    );
    assert_eq!(wrong, 403);
    assert_eq!(
        server.get("/api/plugins/notes/notes", Some(&token)).status,
        200
    );
    let (real, _, text) = raw(
        "POST",
        &disable,
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        None,
    );
    assert_eq!(real, 200, "{text}");
    // The cookie counts under /console only: the API wants a bearer token.
    let (api, _, _) = raw(
        "GET",
        &server.url("/api/admin/plugins"),
        &[("cookie", &cookie)],
        None,
    );
    assert_eq!(api, 401);
    let (_, page_headers, _) = raw("GET", &server.url("/console"), &[], None);
    let csp = page_headers
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let plugin = raw(
        "GET",
        &server.url("/api/plugins/tasks/tasks"),
        &[("authorization", &format!("Bearer {token}"))],
        None,
    );
    let sandbox = plugin
        .1
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(sandbox.starts_with("sandbox"), "{sandbox}");
    server.stop();
}
