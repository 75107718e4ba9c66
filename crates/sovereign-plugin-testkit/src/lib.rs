//! Tests for a Sovereign plugin against the real platform: `sv plugins test` builds the
//! package, installs it into a throwaway platform (a real `sv serve` with its sandboxed
//! extension host and fresh stores), and runs the package's tests with that platform's
//! address in the environment. There is no mock host.
//!
//! ```no_run
//! use sovereign_plugin_testkit::TestPlatform;
//!
//! #[test]
//! fn hello_answers() {
//!     let platform = TestPlatform::connect();
//!     let reply = platform.get("/hello");
//!     assert_eq!(reply.status, 200, "{}", reply.text);
//! }
//! ```
//!
//! The client is a few lines of HTTP/1.1 over `std::net` on purpose: the package builds
//! from the dependency versions it ships with, and only `serde_json` is among them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub use serde_json::{self, Value, json};

/// The password of users [`TestPlatform::add_user`] creates.
pub const USER_PASSWORD: &str = "test password 1";

/// The platform `sv plugins test` started for this run.
pub struct TestPlatform {
    address: String,
    token: String,
    plugin: String,
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// The body as text.
    pub text: String,
    /// The body as JSON (`Null` if it is not JSON).
    pub body: Value,
}

impl TestPlatform {
    /// Connects to the platform of this `sv plugins test` run, as its administrator.
    ///
    /// # Panics
    /// When the tests are not run by `sv plugins test` (the variables are missing).
    pub fn connect() -> TestPlatform {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run these tests with `sv plugins test <package dir>`")
            })
        };
        let url = var("SV_TEST_URL");
        TestPlatform {
            address: url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            token: var("SV_TEST_TOKEN"),
            plugin: var("SV_TEST_PLUGIN"),
        }
    }

    /// `GET /api/plugins/<plugin><path>` as the administrator.
    pub fn get(&self, path: &str) -> Reply {
        self.plugin_request("GET", path, None)
    }

    /// `POST` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.plugin_request("POST", path, Some(body))
    }

    /// `PUT` with a JSON body.
    pub fn put(&self, path: &str, body: &Value) -> Reply {
        self.plugin_request("PUT", path, Some(body))
    }

    /// `PATCH` with a JSON body.
    pub fn patch(&self, path: &str, body: &Value) -> Reply {
        self.plugin_request("PATCH", path, Some(body))
    }

    /// `DELETE`.
    pub fn delete(&self, path: &str) -> Reply {
        self.plugin_request("DELETE", path, None)
    }

    /// Runs one SQL statement exactly as the plugin would (same fence, same limits):
    /// to seed its tables or to look at them. A query answers an array of rows (JSON
    /// objects by column name); a change answers `{"rows_affected", "last_insert_id"}`.
    ///
    /// # Panics
    /// When the statement fails; the message says why.
    pub fn sql(&self, statement: &str) -> Value {
        let reply = self.request(
            "POST",
            &format!("/api/admin/plugins/{}/sql", self.plugin),
            Some(&json!({ "sql": statement })),
        );
        assert_eq!(reply.status, 200, "{statement}: {}", reply.text);
        reply.body
    }

    /// The events of this plugin the core stored, newest first.
    pub fn events(&self) -> Vec<Value> {
        let reply = self.request(
            "GET",
            &format!("/api/admin/plugins/{}/events", self.plugin),
            None,
        );
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.body.as_array().cloned().unwrap_or_default()
    }

    /// Waits (up to 10 s) until the core has stored an event of `topic` from this
    /// plugin, and returns the newest one. Events travel after their request commits, so
    /// a test that just made one waits for it here rather than reading [`events`].
    ///
    /// [`events`]: TestPlatform::events
    pub fn wait_for_event(&self, topic: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(event) = self.events().into_iter().find(|e| e["topic"] == topic) {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "no {topic} event reached the core"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates a core user (password [`USER_PASSWORD`]) and waits until the core's
    /// mirrors (`core__users`) have it; returns its id.
    pub fn add_user(&self, email: &str, display_name: &str) -> i64 {
        let reply = self.request(
            "POST",
            "/api/users",
            Some(
                &json!({ "email": email, "password": USER_PASSWORD, "display_name": display_name }),
            ),
        );
        assert_eq!(reply.status, 201, "creating {email}: {}", reply.text);
        let id = reply.body["id"].as_i64().expect("a created user has an id");
        self.wait_for_mirrors();
        id
    }

    /// Waits until every mirror has caught up with the core.
    pub fn wait_for_mirrors(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sync = self.request("GET", "/api/admin/sync", None);
            let caught_up = sync.status == 200
                && sync.body["slices"].as_array().is_some_and(|s| {
                    s.iter()
                        .all(|s| s["backlog_rows"] == 0 && s["built"] == true)
                });
            if caught_up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the mirrors did not catch up: {}",
                sync.text
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn plugin_request(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        self.request(method, &format!("/api/plugins/{}{path}", self.plugin), body)
    }

    /// One request on a connection of its own.
    ///
    /// # Panics
    /// When the platform cannot be reached or answers something that is not HTTP.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut stream = TcpStream::connect(&self.address)
            .unwrap_or_else(|e| panic!("cannot reach the platform at {}: {e}", self.address));
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("a timeout can be set");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.address,
            self.token,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body.as_bytes()))
            .unwrap_or_else(|e| panic!("sending {method} {path}: {e}"));
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("reading the answer to {method} {path}: {e}"));
        parse_response(&raw).unwrap_or_else(|| panic!("{method} {path}: not an HTTP answer"))
    }
}

/// Splits an HTTP/1.1 answer read to its end: status, and the body (de-chunked).
fn parse_response(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Some(Reply {
        status,
        text,
        body: json,
    })
}

/// Decodes a chunked transfer-encoded body.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_plain_and_chunked() {
        let plain =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!((plain.status, plain.body["a"].as_i64()), (200, Some(1)));
        let chunked = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"b\r\n4\r\n\":2}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((chunked.status, chunked.body["b"].as_i64()), (404, Some(2)));
        assert!(parse_response(b"garbage").is_none());
    }
}
