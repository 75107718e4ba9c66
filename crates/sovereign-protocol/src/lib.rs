//! The kernel <-> extension host protocol.
//!
//! The kernel listens on a Unix domain socket in the data directory (mode 0600); the host
//! it spawned connects. Every message is a frame: a 4-byte big-endian length and a
//! postcard-encoded [`KernelToHost`] or [`HostToKernel`]. Requests carry ids so that many
//! can be in flight; the kernel bounds how many.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// The protocol version; kernel and host refuse to talk across versions.
pub const VERSION: u32 = 4;

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 32 * 1024 * 1024;

/// A plugin the host should load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSpec {
    /// Plugin id.
    pub id: String,
    /// Approved mirror grants as `(slice, column)`.
    pub grants: Vec<(String, String)>,
    /// The manifest as installed (its database mode, limits and events).
    pub manifest: sovereign_db_plugins::Manifest,
    /// Where its data lives when the plugin store is a database server (`None`: the
    /// SQLite files the host was started with).
    pub store_login: Option<StoreLogin>,
}

/// A plugin's own login to the plugin store's server, handed to the host only; never
/// printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreLogin {
    /// `postgres://svp_<id>:PASSWORD@HOST:PORT/DB`: the plugin's role.
    Postgres {
        /// The URL, with the role's password.
        url: String,
    },
    /// `mysql://svp_<id>:PASSWORD@HOST:PORT/DB`: the plugin's account in its database.
    Mysql {
        /// The URL, with the account's password.
        url: String,
    },
}

impl std::fmt::Debug for StoreLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLogin::Postgres { .. } => f.write_str("StoreLogin::Postgres { url: <secret> }"),
            StoreLogin::Mysql { .. } => f.write_str("StoreLogin::Mysql { url: <secret> }"),
        }
    }
}

/// An HTTP request for a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// Method.
    pub method: String,
    /// Path below `/api/plugins/<id>`, starting with `/`.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Headers the kernel chose to pass on.
    pub headers: Vec<(String, String)>,
    /// Body (size-capped by the kernel).
    pub body: Vec<u8>,
}

/// A plugin's response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// How severe a plugin's log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Trace.
    Trace,
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warning.
    Warn,
    /// Error.
    Error,
}

/// A line a plugin logged while serving a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLogLine {
    /// Plugin id.
    pub plugin: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Severity.
    pub level: LogLevel,
    /// The message (at most 4,096 characters).
    pub message: String,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// User id.
    pub user_id: i64,
    /// Tenant id.
    pub tenant_id: i64,
    /// Roles (`admin`, `member`).
    pub roles: Vec<String>,
}

/// Why the host did not produce a plugin response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostError {
    /// No such plugin is loaded.
    UnknownPlugin(String),
    /// The plugin could not be loaded (bad component, missing file).
    NotLoaded(String),
    /// The plugin trapped (panic, out of memory, ...); its transaction was rolled back.
    Trap(String),
    /// The request ran past the plugin's `request_ms`; rolled back.
    Deadline,
    /// The request went past one of the plugin's limits (events per request or per
    /// minute); rolled back.
    LimitExceeded(String),
    /// Anything else.
    Internal(String),
}

/// How the host is sandboxed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxStatus {
    /// Landlock restricts the host to the plugin store files and packages.
    Enforced,
    /// Landlock is on but the kernel supports only part of the rules.
    Partial(String),
    /// No sandbox: the kernel has no Landlock (or it is disabled).
    Unavailable(String),
}

/// The outcome of loading one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLoad {
    /// Plugin id.
    pub id: String,
    /// `None` if loaded, else why not.
    pub error: Option<String>,
}

/// An event a plugin emitted in a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginEvent {
    /// Globally unique id (the inbox key).
    pub event_id: String,
    /// The emitting plugin.
    pub plugin: String,
    /// Topic.
    pub topic: String,
    /// JSON payload.
    pub payload_json: String,
    /// When it was emitted (unix ms).
    pub created_at_ms: i64,
}

/// Messages from the kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KernelToHost {
    /// The plugins to load; sent once after the host connects.
    Configure {
        /// Protocol version.
        version: u32,
        /// Installed plugins.
        plugins: Vec<PluginSpec>,
    },
    /// Handle a plugin request.
    Handle {
        /// Request id.
        id: u64,
        /// Plugin id.
        plugin: String,
        /// The request.
        request: HttpRequest,
        /// The caller.
        caller: Caller,
    },
    /// Are you alive?
    Heartbeat {
        /// Request id.
        id: u64,
    },
    /// Try to open `path` read-only and report whether it worked (the kernel uses this to
    /// prove the sandbox keeps the host away from `core.db`).
    Probe {
        /// Request id.
        id: u64,
        /// The path.
        path: String,
    },
    /// These events were stored in the core inbox; mark them delivered.
    EventsStored {
        /// Event ids.
        event_ids: Vec<String>,
    },
    /// Finish in-flight requests and exit.
    Shutdown,
}

/// Messages from the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostToKernel {
    /// Configured and sandboxed; ready for requests.
    Ready {
        /// Protocol version.
        version: u32,
        /// The sandbox.
        sandbox: SandboxStatus,
        /// Per plugin: loaded or why not.
        plugins: Vec<PluginLoad>,
    },
    /// The answer to [`KernelToHost::Handle`].
    Response {
        /// Request id.
        id: u64,
        /// The plugin's response or the host's error.
        result: Result<HttpResponse, HostError>,
    },
    /// The answer to [`KernelToHost::Heartbeat`].
    Alive {
        /// Request id.
        id: u64,
        /// Statements the fence denied per plugin since this host started.
        denials: Vec<(String, u64)>,
    },
    /// The answer to [`KernelToHost::Probe`].
    ProbeResult {
        /// Request id.
        id: u64,
        /// `Ok` if the file could be opened, else the OS error.
        result: Result<(), String>,
    },
    /// Events from committed plugin transactions, for the core inbox.
    Events {
        /// The events, oldest first.
        events: Vec<PluginEvent>,
    },
    /// What plugins logged while serving a request (whether it committed or not).
    Logs {
        /// The lines, oldest first.
        lines: Vec<PluginLogLine>,
    },
}

/// A framing error.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// I/O.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Decoding or encoding.
    #[error("malformed frame: {0}")]
    Codec(#[from] postcard::Error),
    /// Too large.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// Encodes a message as a frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_stdvec(message)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length a frame's 4-byte prefix announces, refused past [`MAX_FRAME`]. Both
/// readers (the host's blocking one below, the kernel's async one) use it.
pub fn body_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame body.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    Ok(postcard::from_bytes(body)?)
}

/// Writes one frame (blocking).
pub fn write_frame<T: Serialize>(w: &mut impl Write, message: &T) -> Result<(), FrameError> {
    w.write_all(&encode(message)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame (blocking); `Ok(None)` at a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(
    r: &mut impl Read,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; body_len(len)?];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let message = KernelToHost::Handle {
            id: 7,
            plugin: "tasks".into(),
            request: HttpRequest {
                method: "POST".into(),
                path: "/tasks".into(),
                query: String::new(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: b"{\"title\":\"x\"}".to_vec(),
            },
            caller: Caller {
                user_id: 1,
                tenant_id: 1,
                roles: vec!["admin".into()],
            },
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &message).unwrap();
        let mut reader = &buf[..];
        let back: KernelToHost = read_frame(&mut reader).unwrap().unwrap();
        assert_eq!(back, message);
        assert!(read_frame::<KernelToHost>(&mut reader).unwrap().is_none());
    }
}
