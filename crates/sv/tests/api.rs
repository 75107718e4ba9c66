//! The kernel's HTTP API, over real HTTP against `sv dev` / `sv serve`.

mod common;

use common::Workdir;
use serde_json::json;

const ADMIN: &str = "admin@sovereign.local";

#[test]
fn login_logout_and_admin_only_endpoints() {
    let w = Workdir::new();
    let server = w.start(&["dev"]);
    let admin = server.login(ADMIN, &server.printed_password());

    let me = server.get("/api/auth/me", Some(&admin));
    assert_eq!(me.status, 200);
    assert_eq!(me.body["email"], ADMIN);
    assert_eq!(me.body["role"], "admin");

    let created = server.send(
        "POST",
        "/api/users",
        Some(&admin),
        Some(json!({ "email": "bob@example.com", "password": "bob's long password", "display_name": "Bob" })),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.body["role"], "member");
    assert!(created.body.get("password").is_none() && !created.text.contains("argon2"));
    let bob_id = created.body["id"].as_i64().unwrap();

    let bob = server.login("bob@example.com", "bob's long password");
    for (method, path) in [
        ("GET", "/api/users".to_owned()),
        ("GET", format!("/api/users/{bob_id}")),
        ("DELETE", format!("/api/users/{bob_id}")),
        ("GET", "/api/settings".to_owned()),
    ] {
        let r = server.send(method, &path, Some(&bob), None);
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text);
        assert_eq!(r.body["error"]["code"], "forbidden");
    }
    let r = server.send(
        "PUT",
        "/api/settings/site.name",
        Some(&bob),
        Some(json!({ "value": "x" })),
    );
    assert_eq!(r.status, 403);
    assert_eq!(server.get("/api/users", None).status, 401);
    assert_eq!(
        server.get("/api/users", Some("svs_not_a_token")).status,
        401
    );

    let wrong = server.send(
        "POST",
        "/api/auth/login",
        None,
        Some(json!({ "email": "bob@example.com", "password": "wrong password" })),
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body["error"]["code"], "unauthorized");

    assert_eq!(
        server
            .send("POST", "/api/auth/logout", Some(&bob), None)
            .status,
        204
    );
    assert_eq!(server.get("/api/auth/me", Some(&bob)).status, 401);
    assert_eq!(server.get("/api/auth/me", Some(&admin)).status, 200);
}

#[test]
fn users_crud_and_settings_for_admins() {
    let w = Workdir::new();
    let server = w.start(&["dev"]);
    let admin = server.login(ADMIN, &server.printed_password());
    let created = server.send(
        "POST",
        "/api/users",
        Some(&admin),
        Some(json!({ "email": "carol@example.com", "password": "carol's password", "display_name": "Carol",
                     "avatar_url": "https://example.com/c.png" })),
    );
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_i64().unwrap();
    let dup = server.send(
        "POST",
        "/api/users",
        Some(&admin),
        Some(json!({ "email": "CAROL@example.com", "password": "another password", "display_name": "C2" })),
    );
    assert_eq!(dup.status, 409);
    assert_eq!(dup.body["error"]["field"], "email");

    let patched = server.send(
        "PATCH",
        &format!("/api/users/{id}"),
        Some(&admin),
        Some(json!({ "display_name": "Carol D.", "avatar_url": null, "role": "admin" })),
    );
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.body["display_name"], "Carol D.");
    assert!(patched.body["avatar_url"].is_null());
    assert_eq!(patched.body["role"], "admin");
    let list = server.get("/api/users", Some(&admin));
    assert_eq!(list.body.as_array().unwrap().len(), 2);
    assert_eq!(
        server
            .send("DELETE", &format!("/api/users/{id}"), Some(&admin), None)
            .status,
        204
    );
    assert_eq!(
        server.get(&format!("/api/users/{id}"), Some(&admin)).status,
        404
    );

    // The last admin cannot lock everybody out.
    let me = server.get("/api/auth/me", Some(&admin)).body["id"]
        .as_i64()
        .unwrap();
    let r = server.send(
        "PATCH",
        &format!("/api/users/{me}"),
        Some(&admin),
        Some(json!({ "active": false })),
    );
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "last_admin");

    let put = server.send(
        "PUT",
        "/api/settings/site.name",
        Some(&admin),
        Some(json!({ "value": { "en": "Acme" } })),
    );
    assert_eq!(put.status, 200, "{}", put.text);
    let got = server.get("/api/settings/site.name", Some(&admin));
    assert_eq!(got.body["value"]["en"], "Acme");
    assert_eq!(
        server
            .get("/api/settings", Some(&admin))
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        server
            .send("DELETE", "/api/settings/site.name", Some(&admin), None)
            .status,
        204
    );
    assert_eq!(
        server.get("/api/settings/site.name", Some(&admin)).status,
        404
    );
    let bad_key = server.send(
        "PUT",
        "/api/settings/Bad%20Key",
        Some(&admin),
        Some(json!({ "value": 1 })),
    );
    assert_eq!(bad_key.status, 422);
    assert_eq!(bad_key.body["error"]["field"], "key");
}

#[test]
fn bad_bodies_get_one_json_error_shape() {
    let w = Workdir::new();
    let server = w.start(&["dev"]);
    let admin = server.login(ADMIN, &server.printed_password());
    let cases = [
        (
            json!({ "email": "not-an-email", "password": "long enough pw", "display_name": "X" }),
            422,
            Some("email"),
        ),
        (
            json!({ "email": "x@example.com", "password": "short", "display_name": "X" }),
            422,
            Some("password"),
        ),
        (
            json!({ "email": "x@example.com", "password": "long enough pw", "display_name": "" }),
            422,
            Some("display_name"),
        ),
        (
            json!({ "email": "x@example.com", "password": "long enough pw", "display_name": "X", "avatar_url": "ftp://x" }),
            422,
            Some("avatar_url"),
        ),
        (
            json!({ "email": "x@example.com", "password": "long enough pw", "display_name": "X", "is_admin": true }),
            422,
            None,
        ),
        (json!({ "email": "x@example.com" }), 422, None),
        (
            json!({ "email": "x@example.com", "password": "long enough pw", "display_name": "X", "role": "root" }),
            422,
            None,
        ),
    ];
    for (body, status, field) in cases {
        let r = server.send("POST", "/api/users", Some(&admin), Some(body.clone()));
        assert_eq!(r.status, status, "{body}: {}", r.text);
        assert!(r.body["error"]["code"].is_string(), "{}", r.text);
        assert!(r.body["error"]["message"].is_string(), "{}", r.text);
        if let Some(field) = field {
            assert_eq!(r.body["error"]["field"], field, "{}", r.text);
        }
    }
    // Malformed JSON and a missing content type.
    let r = server.send_raw("POST", "/api/auth/login", Some("application/json"), "{nope");
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "malformed_json");
    let r = server.send_raw("POST", "/api/auth/login", None, "{}");
    assert_eq!(r.status, 415);
    assert_eq!(r.body["error"]["code"], "unsupported_media_type");
    let r = server.get("/api/nowhere", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["code"], "not_found");
}

#[test]
fn health_reports_the_core_ok_when_the_plugin_store_is_missing_or_broken() {
    let w = Workdir::new();
    // A scheduled sync runs once at start and then not for an hour, so the test alone
    // decides what happens to the plugin store.
    std::fs::write(
        w.path().join("sovereign.toml"),
        "[sync]\nmode = \"scheduled\"\ninterval_secs = 3600\n",
    )
    .unwrap();
    w.sv_ok(&["migrate:deploy", "--scope=core"]);
    let server = w.start(&["serve"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Wait for the first sync and for the extension host (which opens the store too).
    while server.get("/health", None).body["plugins"]["status"] != "ok"
        || server.get("/health", None).body["extension_host"]["status"] != "running"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first sync never built the plugin store"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", w.plugins_db().display()));
    }
    let h = server.get("/health", None);
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.body["core"]["status"], "ok");
    assert_eq!(h.body["plugins"]["status"], "unavailable");
    assert_eq!(h.body["status"], "degraded");
    assert!(
        !w.plugins_db().exists(),
        "the health probe never creates the plugin store"
    );

    std::fs::write(
        w.plugins_db(),
        b"this is not a SQLite database, it is garbage ".repeat(200),
    )
    .unwrap();
    let h = server.get("/health", None);
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.body["core"]["status"], "ok");
    assert_eq!(h.body["plugins"]["status"], "unavailable");
    let metrics = server.get("/metrics", None).text;
    assert!(
        metrics.contains("sv_database_errors_total{scope=\"plugins\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sv_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sv_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
}

#[test]
fn users_create_from_the_command_line() {
    let w = Workdir::new();
    let err = w.sv_err(&["users", "create", "--admin", "--email", "ops@example.com"]);
    assert!(err.contains("sv migrate:deploy"), "{err}");
    w.sv_ok(&["migrate:deploy"]);
    let out = w.sv_with_input(
        &[
            "users",
            "create",
            "--admin",
            "--email",
            "ops@example.com",
            "--password-stdin",
        ],
        "ops password 123\n",
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("created admin ops@example.com"), "{text}");
    assert!(!text.contains("ops password 123"));

    let generated = w.sv_ok(&["users", "create", "--email", "dev@example.com"]);
    let password = generated
        .lines()
        .find_map(|l| l.strip_prefix("password (shown only once): "))
        .unwrap()
        .to_owned();

    let server = w.start(&["serve"]);
    assert!(
        server.stdout.iter().all(|l| !l.contains("password")),
        "serve never creates an admin"
    );
    let token = server.login("ops@example.com", "ops password 123");
    assert_eq!(server.get("/api/users", Some(&token)).status, 200);
    let dev = server.login("dev@example.com", &password);
    assert_eq!(server.get("/api/users", Some(&dev)).status, 403);
    let dup = w.sv_err(&["users", "create", "--email", "dev@example.com"]);
    assert!(dup.contains("already exists"), "{dup}");
}

#[test]
fn password_guessing_is_throttled_per_account_and_per_address() {
    let w = Workdir::new();
    let server = w.start(&["dev"]);
    let admin = server.login(ADMIN, &server.printed_password());
    for email in ["alice@example.com", "bob@example.com"] {
        let r = server.send(
            "POST",
            "/api/users",
            Some(&admin),
            Some(json!({ "email": email, "password": "a long enough password", "display_name": "U" })),
        );
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let attempt = |email: &str, password: &str| {
        server.send(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({ "email": email, "password": password })),
        )
    };
    // Forty rapid failures against alice: after the allowance they are refused with 429
    // and Retry-After, without verifying the password.
    let statuses: Vec<u16> = (0..40)
        .map(|_| attempt("alice@example.com", "guess").status)
        .collect();
    assert_eq!(&statuses[..4], &[401; 4], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    let locked = attempt("alice@example.com", "a long enough password");
    assert_eq!(
        locked.status, 429,
        "even the right password waits: {}",
        locked.text
    );
    assert_eq!(locked.body["error"]["code"], "too_many_requests");
    // Bob, from the same address, is not affected.
    let bob = attempt("bob@example.com", "a long enough password");
    assert_eq!(bob.status, 200, "{}", bob.text);

    // The admin sees the lock, it is in the audit log, and clearing it lets alice in.
    let locks = server.get("/api/admin/login-locks", Some(&admin));
    assert_eq!(locks.status, 200);
    assert!(
        locks
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["kind"] == "account"
                && l["key"] == "alice@example.com"
                && l["locked_for_seconds"].as_u64().unwrap() > 0),
        "{}",
        locks.text
    );
    let audited: i64 = common::raw(&w.core_db())
        .query_row(
            "SELECT count(*) FROM audit_log WHERE action = 'auth.throttled' AND target = 'account:alice@example.com'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(audited > 0);
    let cleared = server.send(
        "DELETE",
        "/api/admin/login-locks/account/alice@example.com",
        Some(&admin),
        None,
    );
    assert_eq!(cleared.status, 204, "{}", cleared.text);
    assert_eq!(
        attempt("alice@example.com", "a long enough password").status,
        200
    );

    // Credential stuffing: failures over many accounts lock the address, known and
    // unknown accounts alike.
    let mut last = 0;
    for n in 0..15 {
        last = attempt(&format!("nobody{n}@example.com"), "guess").status;
    }
    assert_eq!(last, 429);
    let stuffed = attempt("bob@example.com", "a long enough password");
    assert_eq!(stuffed.status, 429, "{}", stuffed.text);
    assert!(
        server
            .get("/api/admin/login-locks", Some(&admin))
            .text
            .contains("\"kind\":\"address\""),
    );
    let cleared = server.send(
        "DELETE",
        "/api/admin/login-locks/address/127.0.0.1",
        Some(&admin),
        None,
    );
    assert_eq!(cleared.status, 204, "{}", cleared.text);
    assert_eq!(
        attempt("bob@example.com", "a long enough password").status,
        200
    );
}

#[test]
fn every_rejection_has_the_json_error_shape() {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    let tasks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/tasks");
    w.sv_ok(&["plugins", "install", tasks.to_str().unwrap(), "--yes"]);
    let server = w.start(&["dev"]);
    let admin = server.login(ADMIN, &server.printed_password());
    let json_error = |r: &common::Reply, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.body["error"]["code"], code, "{}", r.text);
        assert!(r.body["error"]["message"].is_string(), "{}", r.text);
    };
    json_error(
        &server.get("/api/users/abc", Some(&admin)),
        400,
        "invalid_path",
    );
    json_error(
        &server.get("/api/settings/%ff", Some(&admin)),
        400,
        "invalid_path",
    );
    json_error(
        &server.send("PUT", "/api/auth/login", None, None),
        405,
        "method_not_allowed",
    );
    let long = format!("/api/users?{}", "x".repeat(10_000));
    json_error(&server.get(&long, Some(&admin)), 414, "uri_too_long");
    let big = json!({ "title": "x".repeat(2 * 1024 * 1024) });
    json_error(
        &server.send("POST", "/api/plugins/tasks/tasks", Some(&admin), Some(big)),
        413,
        "payload_too_large",
    );
    json_error(&server.get("/nowhere", None), 404, "not_found");
    // A plugin route gets the request's content type; the SDK refuses non-JSON bodies.
    let started = std::time::Instant::now();
    while server.get("/health", None).body["extension_host"]["status"] != "running" {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no host"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let plain = server.send_raw_with_token(
        "POST",
        "/api/plugins/tasks/tasks",
        &admin,
        Some("text/plain"),
        r#"{"title": "looks like JSON", "assignee": 1}"#,
    );
    json_error(&plain, 415, "unsupported_media_type");
}

#[test]
fn slow_clients_are_cut_off_and_shutdown_is_quiet() {
    use std::io::{Read, Write};
    let w = Workdir::new();
    let server = w.start(&["dev"]);
    // A client that sends its headers one byte at a time is disconnected.
    let mut slow = std::net::TcpStream::connect(server.address()).unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_millis(400)))
        .unwrap();
    let request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in request.iter().chain(std::iter::repeat(&b'a')) {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match slow.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {
                closed = true; // an error answer, then the close
                break;
            }
            Err(_) => {}
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            break;
        }
    }
    assert!(closed, "the slow client kept its connection for 60 s");
    // The server still serves others.
    assert_eq!(server.get("/health", None).status, 200);

    let (status, log) = server.stop_with_log();
    assert!(status.success(), "{log}");
    assert!(!log.contains("restarting"), "{log}");
    assert!(!log.contains("\u{1b}["), "no colour codes in a pipe: {log}");
}
