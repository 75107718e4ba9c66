//! The Sovereign plugin SDK: write a plugin as a small router of handlers.
//!
//! ```ignore
//! use sovereign_plugin_sdk::{Request, Response, Router, Error, db, export_plugin};
//!
//! fn router() -> Router {
//!     Router::new().get("/hello/{name}", |req| Response::json(200, &req.param("name")))
//! }
//! export_plugin!(router);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` is the
//! component that goes into the package as `plugin.wasm`. The plugin only reaches what
//! the WIT contract (`wit/0.2/plugin.wit`, plugin API 0.2.0) gives it: no files, no
//! network, no environment.

use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bindings generated from `wit/0.2/plugin.wit` (`sovereign:plugin@0.2.0`).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../wit/0.2",
        pub_export_macro: true,
        export_macro_name: "export_world",
        default_bindings_module: "sovereign_plugin_sdk::bindings",
    });
}

use bindings::sovereign::plugin::{context, database, events as wit_events, log as wit_log, types};

pub use types::SqlValue as Value;

/// An incoming request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path below `/api/plugins/<id>`, starting with `/`.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Headers the kernel passed on.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    params: HashMap<String, String>,
}

impl Request {
    /// A path parameter captured by `{name}` in the route pattern.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// A path parameter parsed as `T`, or a 400 error naming it.
    pub fn param_as<T: std::str::FromStr>(&self, name: &str) -> Result<T, Error> {
        self.param(name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Error::BadRequest(format!("path parameter {name} is missing or malformed"))
            })
    }

    /// A query-string parameter (not percent-decoded beyond `+` for space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| v.replace('+', " "))
        })
    }

    /// A header value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON: a 415 error unless the request says it is JSON
    /// (`content-type: application/json` or `application/*+json`), a 400 error saying
    /// what is wrong if it does not parse.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let content_type = self.header("content-type").unwrap_or_default();
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let is_json = essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"));
        if !is_json {
            return Err(Error::UnsupportedMediaType(format!(
                "the body must be JSON with `content-type: application/json` (got {:?})",
                if content_type.is_empty() {
                    "none"
                } else {
                    content_type
                }
            )));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Result<Response, Error> {
        let body = serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        })
    }

    /// A plain-text response.
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: text.into().into_bytes(),
        }
    }

    /// An empty response (e.g. 204).
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: vec![],
            body: vec![],
        }
    }
}

/// Errors a handler returns; each becomes a JSON error response with a fitting status.
#[derive(Debug, Clone)]
pub enum Error {
    /// 400.
    BadRequest(String),
    /// 403.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409.
    Conflict(String),
    /// 415: the body is not of a type the handler takes.
    UnsupportedMediaType(String),
    /// A database error; its kind decides the status (see [`DbError`]).
    Db(DbError),
    /// 500.
    Internal(String),
}

/// A database error as the host reports it: one kind per way a statement can fail,
/// each with a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    /// The fence refused the statement (403).
    Denied(String),
    /// A UNIQUE, NOT NULL, CHECK or FOREIGN KEY constraint failed (409).
    Constraint(String),
    /// The plugin's storage quota is full (507).
    QuotaExceeded(String),
    /// A size limit: result cap, SQLite limits, too many open cursors (500).
    Limit(String),
    /// The database stayed locked by another writer (503: retry later).
    Busy(String),
    /// The statement ran past its deadline or the request's (504).
    Deadline(String),
    /// Any other SQL error in the plugin's statement (500).
    Sql(String),
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Denied(m)
            | DbError::Constraint(m)
            | DbError::QuotaExceeded(m)
            | DbError::Limit(m)
            | DbError::Busy(m)
            | DbError::Deadline(m)
            | DbError::Sql(m) => f.write_str(m),
        }
    }
}

impl From<types::DbError> for Error {
    fn from(e: types::DbError) -> Self {
        Error::Db(match e {
            types::DbError::Denied(m) => DbError::Denied(m),
            types::DbError::Constraint(m) => DbError::Constraint(m),
            types::DbError::QuotaExceeded(m) => DbError::QuotaExceeded(m),
            types::DbError::Limit(m) => DbError::Limit(m),
            types::DbError::Busy(m) => DbError::Busy(m),
            types::DbError::Deadline(m) => DbError::Deadline(m),
            types::DbError::Sql(m) => DbError::Sql(m),
        })
    }
}

impl Error {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Error::BadRequest(m) => (400, "bad_request", m),
            Error::Forbidden(m) => (403, "forbidden", m),
            Error::NotFound(m) => (404, "not_found", m),
            Error::Conflict(m) => (409, "conflict", m),
            Error::UnsupportedMediaType(m) => (415, "unsupported_media_type", m),
            Error::Db(DbError::Denied(m)) => (403, "denied", m),
            Error::Db(DbError::Constraint(m)) => (409, "conflict", m),
            Error::Db(DbError::QuotaExceeded(m)) => (507, "quota", m),
            Error::Db(DbError::Limit(m)) => (500, "limit", m),
            Error::Db(DbError::Busy(m)) => (503, "busy", m),
            Error::Db(DbError::Deadline(m)) => (504, "deadline", m),
            Error::Db(DbError::Sql(m)) => (500, "database", m),
            Error::Internal(m) => (500, "internal", m),
        };
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }
}

/// A handler.
pub type Handler = fn(&Request) -> Result<Response, Error>;

/// Routes by method and path pattern (`/tasks/{id}/complete`).
#[derive(Default)]
pub struct Router {
    routes: Vec<(String, Vec<String>, Handler)>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds a route for `method`.
    pub fn route(mut self, method: &str, pattern: &str, handler: Handler) -> Router {
        let segments = pattern
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        self.routes
            .push((method.to_ascii_uppercase(), segments, handler));
        self
    }

    /// `GET pattern`.
    pub fn get(self, pattern: &str, handler: Handler) -> Router {
        self.route("GET", pattern, handler)
    }

    /// `POST pattern`.
    pub fn post(self, pattern: &str, handler: Handler) -> Router {
        self.route("POST", pattern, handler)
    }

    /// `PUT pattern`.
    pub fn put(self, pattern: &str, handler: Handler) -> Router {
        self.route("PUT", pattern, handler)
    }

    /// `PATCH pattern`.
    pub fn patch(self, pattern: &str, handler: Handler) -> Router {
        self.route("PATCH", pattern, handler)
    }

    /// `DELETE pattern`.
    pub fn delete(self, pattern: &str, handler: Handler) -> Router {
        self.route("DELETE", pattern, handler)
    }

    fn dispatch(&self, mut req: Request) -> Response {
        let parts: Vec<&str> = req
            .path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let mut path_matched = false;
        for (method, segments, handler) in &self.routes {
            if segments.len() != parts.len() {
                continue;
            }
            let mut params = HashMap::new();
            let matched = segments.iter().zip(&parts).all(|(seg, part)| {
                match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => {
                        params.insert(name.to_owned(), (*part).to_owned());
                        true
                    }
                    None => seg == part,
                }
            });
            if !matched {
                continue;
            }
            path_matched = true;
            if *method != req.method {
                continue;
            }
            req.params = params;
            return handler(&req).unwrap_or_else(Error::into_response);
        }
        if path_matched {
            Error::BadRequest(format!("method {} is not allowed here", req.method))
                .into_response_with(405)
        } else {
            Error::NotFound(format!("no route for {} {}", req.method, req.path)).into_response()
        }
    }
}

impl Error {
    fn into_response_with(self, status: u16) -> Response {
        let mut r = self.into_response();
        r.status = status;
        r
    }
}

/// Runs the router built by `build` on a request from the host. Used by [`export_plugin!`].
#[doc(hidden)]
pub fn dispatch(build: fn() -> Router, req: types::Request) -> types::Response {
    let request = Request {
        method: req.method.to_ascii_uppercase(),
        path: req.path,
        query: req.query,
        headers: req.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        body: req.body,
        params: HashMap::new(),
    };
    let response = build().dispatch(request);
    types::Response {
        status: response.status,
        headers: response
            .headers
            .into_iter()
            .map(|(name, value)| types::Header { name, value })
            .collect(),
        body: response.body,
    }
}

/// Exports a plugin whose routes `build` returns.
#[macro_export]
macro_rules! export_plugin {
    ($build:path) => {
        struct __SovereignPlugin;
        impl $crate::bindings::exports::sovereign::plugin::handler::Guest for __SovereignPlugin {
            fn handle(
                req: $crate::bindings::sovereign::plugin::types::Request,
            ) -> $crate::bindings::sovereign::plugin::types::Response {
                $crate::dispatch($build, req)
            }
        }
        $crate::bindings::export_world!(__SovereignPlugin with_types_in $crate::bindings);
    };
}

/// The plugin's database.
pub mod db {
    use super::*;

    /// The outcome of a change.
    pub use types::ExecResult;
    /// Raw rows.
    pub use types::Rows;

    /// Runs one statement that changes data or schema.
    pub fn execute(sql: &str, params: &[Value]) -> Result<ExecResult, Error> {
        Ok(database::execute(sql, params)?)
    }

    /// Runs one query.
    pub fn query(sql: &str, params: &[Value]) -> Result<Rows, Error> {
        Ok(database::query(sql, params)?)
    }

    /// Runs a query and deserializes each row (columns by name) into `T`. The whole
    /// result must fit the result cap (`limits.result_kb`, 10,000 rows): use LIMIT and
    /// paging, or [`query_iter`] to go through any number of rows.
    pub fn query_as<T: DeserializeOwned>(sql: &str, params: &[Value]) -> Result<Vec<T>, Error> {
        let rows = query(sql, params)?;
        rows.rows
            .into_iter()
            .map(|row| row_as(&rows.columns, row))
            .collect()
    }

    fn row_as<T: DeserializeOwned>(columns: &[String], row: Vec<Value>) -> Result<T, Error> {
        let object: serde_json::Map<String, serde_json::Value> = columns
            .iter()
            .cloned()
            .zip(row.into_iter().map(to_json))
            .collect();
        serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| Error::Internal(format!("a row does not fit the type: {e}")))
    }

    /// Rows read per [`Cursor::next_batch`] unless [`Cursor::batch_size`] says otherwise.
    pub const BATCH: u32 = 256;

    /// The rows of one query, read a batch at a time: only one batch is held in the
    /// plugin's memory, so any number of rows can be gone through. Dropping it frees it;
    /// it ends with the request in any case.
    pub struct Cursor {
        inner: database::Cursor,
        batch: u32,
    }

    impl Cursor {
        /// The result's column names.
        pub fn columns(&self) -> Vec<String> {
            self.inner.columns()
        }

        /// Rows per batch (1 to 10,000; the host also caps a batch's bytes).
        pub fn batch_size(mut self, rows: u32) -> Cursor {
            self.batch = rows.clamp(1, 10_000);
            self
        }

        /// The next rows; an empty batch once every row was read.
        pub fn next_batch(&mut self) -> Result<Vec<Vec<Value>>, Error> {
            Ok(self.inner.next(self.batch)?)
        }
    }

    /// Opens a [`Cursor`] over a query (changes are refused: use [`execute`]).
    pub fn cursor(sql: &str, params: &[Value]) -> Result<Cursor, Error> {
        Ok(Cursor {
            inner: database::open_cursor(sql, params)?,
            batch: BATCH,
        })
    }

    /// Goes through a query's rows as `T` (columns by name), a batch at a time.
    pub fn query_iter<T: DeserializeOwned>(
        sql: &str,
        params: &[Value],
    ) -> Result<RowIter<T>, Error> {
        let cursor = cursor(sql, params)?;
        Ok(RowIter {
            columns: cursor.columns(),
            cursor,
            batch: Vec::new().into_iter(),
            done: false,
            _row: std::marker::PhantomData,
        })
    }

    /// The rows of [`query_iter`]; a database error ends it.
    pub struct RowIter<T> {
        cursor: Cursor,
        columns: Vec<String>,
        batch: std::vec::IntoIter<Vec<Value>>,
        done: bool,
        _row: std::marker::PhantomData<fn() -> T>,
    }

    impl<T: DeserializeOwned> Iterator for RowIter<T> {
        type Item = Result<T, Error>;

        fn next(&mut self) -> Option<Result<T, Error>> {
            loop {
                if let Some(row) = self.batch.next() {
                    return Some(row_as(&self.columns, row));
                }
                if self.done {
                    return None;
                }
                match self.cursor.next_batch() {
                    Ok(rows) if rows.is_empty() => self.done = true,
                    Ok(rows) => self.batch = rows.into_iter(),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    /// The first row as `T`, if any.
    pub fn query_one<T: DeserializeOwned>(sql: &str, params: &[Value]) -> Result<Option<T>, Error> {
        Ok(query_as(sql, params)?.into_iter().next())
    }

    /// Runs several statements; stops at the first error.
    pub fn batch(statements: &[(&str, Vec<Value>)]) -> Result<Vec<ExecResult>, Error> {
        let owned: Vec<(String, Vec<Value>)> = statements
            .iter()
            .map(|(s, p)| (s.to_string(), p.clone()))
            .collect();
        Ok(database::batch(&owned)?)
    }

    fn to_json(v: Value) -> serde_json::Value {
        match v {
            Value::Null => serde_json::Value::Null,
            Value::Integer(i) => i.into(),
            Value::Real(f) => serde_json::Number::from_f64(f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Text(t) => t.into(),
            Value::Blob(b) => b.into(),
        }
    }
}

/// SQLite has no boolean type: use `#[serde(deserialize_with = "sovereign_plugin_sdk::int_bool")]`
/// on a `bool` field read from an integer column.
pub fn int_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrBool {
        Int(i64),
        Bool(bool),
    }
    Ok(match IntOrBool::deserialize(d)? {
        IntOrBool::Int(i) => i != 0,
        IntOrBool::Bool(b) => b,
    })
}

/// Turns Rust values into SQL values for parameters.
pub trait IntoValue {
    /// The SQL value.
    fn into_value(self) -> Value;
}

impl IntoValue for i64 {
    fn into_value(self) -> Value {
        Value::Integer(self)
    }
}
impl IntoValue for bool {
    fn into_value(self) -> Value {
        Value::Integer(self as i64)
    }
}
impl IntoValue for f64 {
    fn into_value(self) -> Value {
        Value::Real(self)
    }
}
impl IntoValue for &str {
    fn into_value(self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl IntoValue for String {
    fn into_value(self) -> Value {
        Value::Text(self)
    }
}
impl<T: IntoValue> IntoValue for Option<T> {
    fn into_value(self) -> Value {
        self.map_or(Value::Null, IntoValue::into_value)
    }
}

/// Builds a parameter list: `params![title, 3, Some("x")]`.
#[macro_export]
macro_rules! params {
    ($($v:expr),* $(,)?) => { vec![$($crate::IntoValue::into_value($v)),*] };
}

/// Events for the core.
pub mod events {
    use super::*;

    /// Emits an event (its topic must be declared in the manifest's `emits`). It reaches
    /// the core only if this request commits.
    pub fn emit<T: Serialize>(topic: &str, payload: &T) -> Result<(), Error> {
        let json = serde_json::to_string(payload).map_err(|e| Error::Internal(e.to_string()))?;
        super::wit_events::emit(topic, &json).map_err(Error::Internal)
    }
}

/// Logging into the host's log, tagged with the plugin id.
pub mod log {
    use super::wit_log::{Level, log};

    /// Info.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Warning.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// Error.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
    /// Debug.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
}

/// The authenticated caller.
pub fn caller() -> types::Caller {
    context::current_caller()
}

/// This plugin's id.
pub fn plugin_id() -> String {
    context::plugin_id()
}
