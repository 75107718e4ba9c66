//! The plugin API versions this host serves, side by side: each has its bindings
//! generated from its own frozen WIT (`wit/<version>/`), and [`RequestState`] serves
//! every version's imports. A component is bound to the one version it imports
//! ([`PluginPre`]); nothing a newer version adds changes how an older plugin runs.
//!
//! What the versions share (values, requests, events, log, context) is written once in
//! `serve_version!`; what differs (the database errors, cursors) is written per version.

use sovereign_db_plugins::{CursorId, FenceError, Outcome, SqlValue};
use sovereign_protocol::{HttpRequest, HttpResponse, LogLevel};
use wasmtime::Store;
use wasmtime::component::{HasSelf, Linker, Resource};

use crate::runtime::RequestState;

/// `sovereign:plugin@0.1.0`, served unchanged for plugins built against it.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../../wit/0.1",
        // The handler runs as a future so that a request can be stopped at its deadline
        // even while the guest waits (a WASI sleep or poll); the plugin API imports stay
        // blocking host calls, each bounded by the statement deadline.
        exports: { default: async },
    });
}

/// `sovereign:plugin@0.2.0`: typed database errors and cursors.
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../../wit/0.2",
        exports: { default: async },
        with: { "sovereign:plugin/database.cursor": super::CursorHandle },
    });
}

/// The plugin API versions this host serves, oldest first.
pub const SUPPORTED_API_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];

/// What a guest's `cursor` handle stands for: an open cursor of the request's connection.
pub struct CursorHandle {
    id: CursorId,
    columns: Vec<String>,
}

/// A compiled component bound to the API version it was built against.
pub(crate) enum PluginPre {
    V0_1(v0_1::PluginPre<RequestState>),
    V0_2(v0_2::PluginPre<RequestState>),
}

impl PluginPre {
    /// Binds `pre` to `version` (one of [`SUPPORTED_API_VERSIONS`]): checks that the
    /// component exports that version's handler.
    pub(crate) fn new(
        version: &str,
        pre: wasmtime::component::InstancePre<RequestState>,
    ) -> wasmtime::Result<PluginPre> {
        match version {
            "0.1.0" => Ok(PluginPre::V0_1(v0_1::PluginPre::new(pre)?)),
            "0.2.0" => Ok(PluginPre::V0_2(v0_2::PluginPre::new(pre)?)),
            other => Err(wasmtime::Error::msg(format!(
                "plugin API {other} is not served by this host"
            ))),
        }
    }

    /// Instantiates the component and calls its handler.
    pub(crate) async fn handle(
        &self,
        store: &mut Store<RequestState>,
        request: HttpRequest,
    ) -> wasmtime::Result<HttpResponse> {
        match self {
            PluginPre::V0_1(pre) => {
                let instance = pre.instantiate_async(&mut *store).await?;
                let response = instance
                    .sovereign_plugin_handler()
                    .call_handle(&mut *store, &request.into())
                    .await?;
                Ok(response.into())
            }
            PluginPre::V0_2(pre) => {
                let instance = pre.instantiate_async(&mut *store).await?;
                let response = instance
                    .sovereign_plugin_handler()
                    .call_handle(&mut *store, &request.into())
                    .await?;
                Ok(response.into())
            }
        }
    }
}

/// Adds every served version's imports to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<RequestState>) -> wasmtime::Result<()> {
    v0_1::Plugin::add_to_linker::<RequestState, HasSelf<RequestState>>(linker, |s| s)?;
    v0_2::Plugin::add_to_linker::<RequestState, HasSelf<RequestState>>(linker, |s| s)?;
    Ok(())
}

/// The imports and conversions every version has in the same shape. `$database` holds
/// the version's own `database::Host` items beyond execute, query and batch.
macro_rules! serve_version {
    ($v:ident, { $($database:item)* }) => {
        impl From<$v::sovereign::plugin::types::SqlValue> for SqlValue {
            fn from(v: $v::sovereign::plugin::types::SqlValue) -> SqlValue {
                use $v::sovereign::plugin::types::SqlValue as Wit;
                match v {
                    Wit::Null => SqlValue::Null,
                    Wit::Integer(i) => SqlValue::Integer(i),
                    Wit::Real(f) => SqlValue::Real(f),
                    Wit::Text(t) => SqlValue::Text(t),
                    Wit::Blob(b) => SqlValue::Blob(b),
                }
            }
        }

        impl From<SqlValue> for $v::sovereign::plugin::types::SqlValue {
            fn from(v: SqlValue) -> Self {
                use $v::sovereign::plugin::types::SqlValue as Wit;
                match v {
                    SqlValue::Null => Wit::Null,
                    SqlValue::Integer(i) => Wit::Integer(i),
                    SqlValue::Real(f) => Wit::Real(f),
                    SqlValue::Text(t) => Wit::Text(t),
                    SqlValue::Blob(b) => Wit::Blob(b),
                }
            }
        }

        impl From<HttpRequest> for $v::sovereign::plugin::types::Request {
            fn from(request: HttpRequest) -> Self {
                Self {
                    method: request.method,
                    path: request.path,
                    query: request.query,
                    headers: request
                        .headers
                        .into_iter()
                        .map(|(name, value)| $v::sovereign::plugin::types::Header { name, value })
                        .collect(),
                    body: request.body,
                }
            }
        }

        impl From<$v::sovereign::plugin::types::Response> for HttpResponse {
            fn from(response: $v::sovereign::plugin::types::Response) -> Self {
                HttpResponse {
                    status: response.status,
                    headers: response
                        .headers
                        .into_iter()
                        .map(|h| (h.name, h.value))
                        .collect(),
                    body: response.body,
                }
            }
        }

        impl $v::sovereign::plugin::types::Host for RequestState {}

        impl $v::sovereign::plugin::database::Host for RequestState {
            fn execute(
                &mut self,
                sql: String,
                params: Vec<$v::sovereign::plugin::types::SqlValue>,
            ) -> Result<
                $v::sovereign::plugin::types::ExecResult,
                $v::sovereign::plugin::types::DbError,
            > {
                let params: Vec<SqlValue> = params.into_iter().map(SqlValue::from).collect();
                let (rows_affected, last_insert_id) = match self.db().execute(&sql, &params)? {
                    Outcome::Changed {
                        rows_affected,
                        last_insert_id,
                    } => (rows_affected, last_insert_id),
                    Outcome::Rows { .. } => (0, 0),
                };
                Ok($v::sovereign::plugin::types::ExecResult {
                    rows_affected,
                    last_insert_id,
                })
            }

            fn query(
                &mut self,
                sql: String,
                params: Vec<$v::sovereign::plugin::types::SqlValue>,
            ) -> Result<$v::sovereign::plugin::types::Rows, $v::sovereign::plugin::types::DbError>
            {
                let params: Vec<SqlValue> = params.into_iter().map(SqlValue::from).collect();
                Ok(match self.db().execute(&sql, &params)? {
                    Outcome::Rows { columns, rows } => $v::sovereign::plugin::types::Rows {
                        columns: columns.to_vec(),
                        rows: rows
                            .into_iter()
                            .map(|r| r.into_iter().map(Into::into).collect())
                            .collect(),
                    },
                    Outcome::Changed { .. } => $v::sovereign::plugin::types::Rows {
                        columns: vec![],
                        rows: vec![],
                    },
                })
            }

            fn batch(
                &mut self,
                statements: Vec<(String, Vec<$v::sovereign::plugin::types::SqlValue>)>,
            ) -> Result<
                Vec<$v::sovereign::plugin::types::ExecResult>,
                $v::sovereign::plugin::types::DbError,
            > {
                statements
                    .into_iter()
                    .map(|(sql, params)| {
                        $v::sovereign::plugin::database::Host::execute(self, sql, params)
                    })
                    .collect()
            }

            $($database)*
        }

        impl $v::sovereign::plugin::events::Host for RequestState {
            fn emit(&mut self, topic: String, payload_json: String) -> Result<(), String> {
                self.emit_event(topic, payload_json)
            }
        }

        impl $v::sovereign::plugin::log::Host for RequestState {
            fn log(&mut self, level: $v::sovereign::plugin::log::Level, message: String) {
                use $v::sovereign::plugin::log::Level;
                let level = match level {
                    Level::Trace => LogLevel::Trace,
                    Level::Debug => LogLevel::Debug,
                    Level::Info => LogLevel::Info,
                    Level::Warn => LogLevel::Warn,
                    Level::Error => LogLevel::Error,
                };
                self.write_log(level, message);
            }
        }

        impl $v::sovereign::plugin::context::Host for RequestState {
            fn current_caller(&mut self) -> $v::sovereign::plugin::types::Caller {
                let caller = self.caller();
                $v::sovereign::plugin::types::Caller {
                    user_id: caller.user_id,
                    tenant_id: caller.tenant_id,
                    roles: caller.roles.clone(),
                }
            }

            fn plugin_id(&mut self) -> String {
                self.plugin().to_owned()
            }
        }
    };
}

serve_version!(v0_1, {});

serve_version!(v0_2, {
    fn open_cursor(
        &mut self,
        sql: String,
        params: Vec<v0_2::sovereign::plugin::types::SqlValue>,
    ) -> Result<Resource<CursorHandle>, v0_2::sovereign::plugin::types::DbError> {
        let params: Vec<SqlValue> = params.into_iter().map(SqlValue::from).collect();
        let id = self.db().open_cursor(&sql, &params)?;
        let columns = self.db().cursor_columns(id)?.to_vec();
        self.table()
            .push(CursorHandle { id, columns })
            .map_err(|e| {
                self.db().close_cursor(id);
                v0_2::sovereign::plugin::types::DbError::Limit(format!(
                    "cannot hold the cursor: {e}"
                ))
            })
    }
});

impl v0_2::sovereign::plugin::database::HostCursor for RequestState {
    fn columns(&mut self, cursor: Resource<CursorHandle>) -> Vec<String> {
        // wasmtime hands the host only handles of live cursors of this store.
        match self.table().get(&cursor) {
            Ok(handle) => handle.columns.clone(),
            Err(_) => vec![],
        }
    }

    fn next(
        &mut self,
        cursor: Resource<CursorHandle>,
        max_rows: u32,
    ) -> Result<
        Vec<Vec<v0_2::sovereign::plugin::types::SqlValue>>,
        v0_2::sovereign::plugin::types::DbError,
    > {
        let id = match self.table().get(&cursor) {
            Ok(handle) => handle.id,
            Err(e) => {
                return Err(v0_2::sovereign::plugin::types::DbError::Sql(format!(
                    "not an open cursor: {e}"
                )));
            }
        };
        let rows = self.db().cursor_next(id, max_rows as usize)?;
        Ok(rows
            .into_iter()
            .map(|row| row.into_iter().map(Into::into).collect())
            .collect())
    }

    fn drop(&mut self, cursor: Resource<CursorHandle>) -> wasmtime::Result<()> {
        let handle = self.table().delete(cursor)?;
        self.db().close_cursor(handle.id);
        Ok(())
    }
}

/// 0.1 has three kinds of database error; the kinds 0.2 tells apart are `sql` (a
/// constraint, a busy database) or `limit` (deadline, quota, size) there, as they
/// always were.
impl From<FenceError> for v0_1::sovereign::plugin::types::DbError {
    fn from(e: FenceError) -> Self {
        use v0_1::sovereign::plugin::types::DbError;
        let message = e.to_string();
        match e {
            FenceError::Denied { .. } => DbError::Denied(message),
            FenceError::Deadline { .. }
            | FenceError::Quota { .. }
            | FenceError::ResultTooLarge { .. }
            | FenceError::Limit { .. } => DbError::Limit(message),
            FenceError::Constraint { .. }
            | FenceError::Busy { .. }
            | FenceError::MultipleStatements { .. }
            | FenceError::EmptyStatement { .. }
            | FenceError::TransactionEnded { .. }
            | FenceError::NotAQuery { .. }
            | FenceError::CursorClosed { .. }
            | FenceError::Sql { .. } => DbError::Sql(message),
        }
    }
}

impl From<FenceError> for v0_2::sovereign::plugin::types::DbError {
    fn from(e: FenceError) -> Self {
        use v0_2::sovereign::plugin::types::DbError;
        let message = e.to_string();
        match e {
            FenceError::Denied { .. } => DbError::Denied(message),
            FenceError::Constraint { .. } => DbError::Constraint(message),
            FenceError::Quota { .. } => DbError::QuotaExceeded(message),
            FenceError::ResultTooLarge { .. } | FenceError::Limit { .. } => DbError::Limit(message),
            FenceError::Busy { .. } => DbError::Busy(message),
            FenceError::Deadline { .. } => DbError::Deadline(message),
            FenceError::MultipleStatements { .. }
            | FenceError::EmptyStatement { .. }
            | FenceError::TransactionEnded { .. }
            | FenceError::NotAQuery { .. }
            | FenceError::CursorClosed { .. }
            | FenceError::Sql { .. } => DbError::Sql(message),
        }
    }
}
