//! Running plugin components in wasmtime: one instance per request, a memory cap, an
//! epoch deadline, no WASI filesystem, network or environment, and the plugin's fenced
//! database inside one transaction per request.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sovereign_db_plugins::{
    FencedConnection, Limits, Manifest, PluginDb, PluginDbConfig, StoreLocation,
};
use sovereign_mysql::{MyPluginConfig, MyPluginDb};
use sovereign_postgres::{PgPluginConfig, PgPluginDb};
use sovereign_protocol::StoreLogin;
use sovereign_protocol::{
    Caller, HostError, HttpRequest, HttpResponse, LogLevel, PluginEvent, PluginLogLine, PluginSpec,
};
use wasmtime::component::{Linker, ResourceTable};

use crate::api::PluginPre;
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Requests that can hold an instance at once (the workers, with room to spare); the
/// pooling allocator reserves address space, not memory, for each.
const POOL_SLOTS: u32 = 64;

/// How often the epoch advances; deadlines are multiples of it.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What a store holds while one request runs.
pub(crate) struct RequestState {
    wasi: WasiCtx,
    table: ResourceTable,
    store_limits: RequestLimits,
    db: Box<dyn FencedConnection>,
    plugin: String,
    emits: Vec<String>,
    caller: Caller,
    emitted: u32,
    limits: Limits,
    /// When the plugin's recent events were emitted (the per-minute window).
    event_window: Arc<Mutex<VecDeque<Instant>>>,
    /// Set when an emit went past a limit: the request is rolled back.
    over_limit: Option<String>,
    /// What the plugin logged in this request (for the kernel's per-plugin log).
    logs: Vec<PluginLogLine>,
    /// Log lines past [`MAX_LOG_LINES`], dropped.
    logs_dropped: u32,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl RequestState {
    /// The plugin's fenced connection, in the request's transaction.
    pub(crate) fn db(&mut self) -> &mut dyn FencedConnection {
        &mut *self.db
    }

    /// The store's resources (the guest's cursors).
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// Who is calling.
    pub(crate) fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The plugin's id.
    pub(crate) fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Emits an event for the core into the request's outbox, within the manifest's
    /// topics and the event limits (going past a limit rolls the request back).
    pub(crate) fn emit_event(&mut self, topic: String, payload_json: String) -> Result<(), String> {
        if !self.emits.contains(&topic) {
            tracing::warn!(plugin = %self.plugin, topic, "event topic not declared in the manifest; rejected");
            return Err(format!(
                "topic {topic:?} is not declared in plugin.json \"emits\" (declared: {:?})",
                self.emits
            ));
        }
        let max_payload = self.limits.event_kb as usize * 1024;
        if payload_json.len() > max_payload {
            return Err(format!(
                "event payload of {} bytes exceeds limits.event_kb ({max_payload} bytes)",
                payload_json.len()
            ));
        }
        if serde_json::from_str::<serde_json::Value>(&payload_json).is_err() {
            return Err("the event payload is not valid JSON".into());
        }
        // Every event becomes a row in the core store: a plugin may not grow it at will.
        // Going past a cap fails the emit and rolls the whole request back.
        if self.emitted >= self.limits.events_per_request {
            let message = format!(
                "more than {} events in one request (limits.events_per_request)",
                self.limits.events_per_request
            );
            self.over_limit.get_or_insert(message.clone());
            return Err(message);
        }
        {
            let mut window = self.event_window.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            while window
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
            {
                window.pop_front();
            }
            if window.len() >= self.limits.events_per_minute as usize {
                let message = format!(
                    "more than {} events per minute (limits.events_per_minute)",
                    self.limits.events_per_minute
                );
                self.over_limit.get_or_insert(message.clone());
                return Err(message);
            }
            window.push_back(now);
        }
        self.db
            .emit_event(&topic, &payload_json)
            .map_err(|e| e.to_string())?;
        self.emitted += 1;
        Ok(())
    }

    /// Writes one of the plugin's log lines (at most 4,096 characters) to the host's log
    /// and keeps it for the kernel's per-plugin log (at most [`MAX_LOG_LINES`] a request).
    pub(crate) fn write_log(&mut self, level: LogLevel, message: String) {
        let message: String = message.chars().take(4096).collect();
        let plugin = &self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
        if self.logs.len() >= MAX_LOG_LINES {
            self.logs_dropped += 1;
            return;
        }
        self.logs.push(PluginLogLine {
            plugin: self.plugin.clone(),
            at_ms: now_ms(),
            level,
            message,
        });
    }
}

/// Most log lines one request keeps for the kernel; the rest are counted.
pub const MAX_LOG_LINES: usize = 200;

/// What serving one request produced.
pub struct Handled {
    /// The plugin's response, or why there is none.
    pub result: Result<HttpResponse, HostError>,
    /// The events it committed.
    pub events: Vec<PluginEvent>,
    /// What it logged.
    pub logs: Vec<PluginLogLine>,
}

impl Handled {
    fn failed(error: HostError) -> Handled {
        Handled {
            result: Err(error),
            events: vec![],
            logs: vec![],
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A loaded plugin: its compiled component and its fenced connections.
pub struct LoadedPlugin {
    id: String,
    manifest: Manifest,
    pre: PluginPre,
    /// One connection per request lane; a running request takes one out.
    lanes: Mutex<Vec<Box<dyn FencedConnection>>>,
    /// The platform's own connection (event relay and acknowledgements), so that its
    /// work never waits for a plugin request.
    platform: Mutex<Box<dyn FencedConnection>>,
    event_window: Arc<Mutex<VecDeque<Instant>>>,
}

/// Bytes of each pooled linear memory kept resident between requests (a Rust guest's
/// shadow stack and first heap pages sit in its first 2 MiB).
const KEEP_RESIDENT: usize = 2 << 20;

/// The runtime: the engine and every loaded plugin.
pub struct Runtime {
    engine: Engine,
    plugins: HashMap<String, Arc<LoadedPlugin>>,
    failed: HashMap<String, String>,
}

impl Runtime {
    /// A wasmtime engine with epoch interruption (deadlines), the component model, and
    /// the pooling allocator: every request gets a fresh instance, and reusing the slots
    /// (memories, tables, async stacks) keeps that cheap.
    pub fn engine() -> anyhow::Result<Engine> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_SLOTS)
            .total_core_instances(POOL_SLOTS * 16)
            .total_memories(POOL_SLOTS * 2)
            .total_tables(POOL_SLOTS * 8)
            .total_stacks(POOL_SLOTS)
            // Reset a slot's first pages with memset instead of madvise: the next request's
            // instance then finds its stack and heap resident instead of faulting them in.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        Ok(Engine::new(&config)?)
    }

    /// The imports a plugin gets: WASI without filesystem, network or environment (the
    /// context grants none), and the plugin API.
    pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<RequestState>> {
        let mut linker: Linker<RequestState> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        crate::api::add_to_linker(&mut linker)?;
        Ok(linker)
    }

    /// Loads every plugin: opens its fenced database and compiles its `plugin.wasm`.
    /// Failures are recorded per plugin; the others still load.
    pub fn load(
        engine: Engine,
        location: Option<&StoreLocation>,
        packages: &Path,
        specs: &[PluginSpec],
    ) -> anyhow::Result<Runtime> {
        let mut plugins = HashMap::new();
        let mut failed = HashMap::new();
        for spec in specs {
            match Self::load_one(&engine, location, packages, spec) {
                Ok(p) => {
                    plugins.insert(spec.id.clone(), Arc::new(p));
                }
                Err(e) => {
                    tracing::error!(plugin = %spec.id, error = %format!("{e:#}"), "plugin not loaded");
                    failed.insert(spec.id.clone(), format!("{e:#}"));
                }
            }
        }
        Ok(Runtime {
            engine,
            plugins,
            failed,
        })
    }

    fn load_one(
        engine: &Engine,
        location: Option<&StoreLocation>,
        packages: &Path,
        spec: &PluginSpec,
    ) -> anyhow::Result<LoadedPlugin> {
        let manifest = spec.manifest.clone();
        anyhow::ensure!(
            manifest.id == spec.id,
            "the manifest's id {} is not {}",
            manifest.id,
            spec.id
        );
        let open = || -> anyhow::Result<Box<dyn FencedConnection>> {
            Ok(match &spec.store_login {
                Some(StoreLogin::Postgres { url }) => {
                    Box::new(PgPluginDb::open(&PgPluginConfig {
                        plugin_id: spec.id.clone(),
                        url: url.clone(),
                        limits: manifest.limits,
                    })?)
                }
                Some(StoreLogin::Mysql { url }) => Box::new(MyPluginDb::open(&MyPluginConfig {
                    plugin_id: spec.id.clone(),
                    url: url.clone(),
                    limits: manifest.limits,
                })?),
                None => Box::new(PluginDb::open(
                    location.ok_or_else(|| {
                        anyhow::anyhow!(
                            "the plugin store is a database server and this plugin has no \
                             login there; reinstall it (`sv plugins install`)"
                        )
                    })?,
                    PluginDbConfig {
                        plugin_id: spec.id.clone(),
                        mode: manifest.database,
                        grants: spec.grants.clone(),
                        limits: manifest.limits,
                    },
                )?),
            })
        };
        let lanes = (0..crate::scheduler::REQUEST_LANES)
            .map(|_| open())
            .collect::<Result<Vec<_>, _>>()?;
        let platform = open()?;
        let wasm = packages.join(&spec.id).join("plugin.wasm");
        let (pre, _) = crate::component::compile_checked(engine, &wasm)?;
        Ok(LoadedPlugin {
            id: spec.id.clone(),
            manifest,
            pre,
            lanes: Mutex::new(lanes),
            platform: Mutex::new(platform),
            event_window: Arc::default(),
        })
    }

    /// The engine (for the epoch ticker).
    pub fn engine_handle(&self) -> &Engine {
        &self.engine
    }

    /// Per plugin: `None` if loaded, else why not.
    pub fn load_report(&self) -> Vec<(String, Option<String>)> {
        let mut out: Vec<(String, Option<String>)> =
            self.plugins.keys().map(|id| (id.clone(), None)).collect();
        out.extend(
            self.failed
                .iter()
                .map(|(id, e)| (id.clone(), Some(e.clone()))),
        );
        out.sort();
        out
    }

    /// Handles one request: a fresh instance, the plugin's connection in a transaction,
    /// commit on a non-5xx response, rollback on a 5xx, an error, a trap or the deadline.
    /// The deadline is `received + request_ms` and covers everything: the guest's code
    /// (epoch interruption), its waits (the call is dropped) and its SQL (no statement
    /// runs past it). `executor` (one per worker thread) drives the call and its timers.
    /// Returns the events committed with it.
    pub fn handle(
        &self,
        executor: &tokio::runtime::Runtime,
        plugin: &str,
        request: HttpRequest,
        caller: Caller,
        received: Instant,
    ) -> Handled {
        let Some(loaded) = self.plugins.get(plugin) else {
            let error = match self.failed.get(plugin) {
                Some(e) => HostError::NotLoaded(e.clone()),
                None => HostError::UnknownPlugin(plugin.to_owned()),
            };
            return Handled::failed(error);
        };
        let limits = loaded.manifest.limits;
        let deadline = received + Duration::from_millis(u64::from(limits.request_ms));
        if Instant::now() >= deadline {
            // It waited its whole budget in the queue; the kernel has answered 504.
            return Handled::failed(HostError::Deadline);
        }
        // The scheduler runs at most one request per lane: a connection is free.
        let taken = loaded.lanes.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let Some(mut db) = taken else {
            return Handled::failed(HostError::Internal(
                "no free connection for the plugin's request".into(),
            ));
        };
        let give_back = |db: Box<dyn FencedConnection>| {
            loaded
                .lanes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(db)
        };
        db.set_request_deadline(Some(deadline));
        // Reads (GET/HEAD) need no write lock up front; everything else takes it at once,
        // so a request never fails half-way on a lock upgrade.
        let begun = db.begin(!matches!(request.method.as_str(), "GET" | "HEAD"));
        if let Err(e) = begun {
            db.set_request_deadline(None);
            give_back(db);
            return Handled::failed(HostError::Internal(e.to_string()));
        }
        let state = RequestState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            store_limits: RequestLimits {
                limits: StoreLimitsBuilder::new()
                    .memory_size(limits.memory_mb as usize * 1024 * 1024)
                    .instances(16)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_refused: false,
            },
            db,
            plugin: loaded.id.clone(),
            emits: loaded.manifest.emits.clone(),
            caller,
            emitted: 0,
            limits,
            event_window: loaded.event_window.clone(),
            over_limit: None,
            logs: Vec::new(),
            logs_dropped: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.store_limits);
        let ticks = (u64::from(limits.request_ms) / EPOCH_TICK.as_millis() as u64).max(1);
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let outcome = executor.block_on(async {
            let call = loaded.pre.handle(&mut store, request);
            // On the deadline the call is dropped: the guest stops wherever it waited.
            tokio::time::timeout_at(deadline.into(), call).await
        });
        let state = store.into_data();
        let outcome = match outcome {
            Ok(outcome) => outcome.map_err(|trap| {
                classify(&trap, state.store_limits.memory_refused, limits.memory_mb)
            }),
            Err(_) => Err(HostError::Deadline),
        };
        let mut db = state.db;
        db.set_request_deadline(None);
        let result = match (outcome, state.over_limit) {
            (_, Some(limit)) => {
                let _ = db.rollback();
                tracing::warn!(plugin = %loaded.id, %limit, "plugin request went past a limit; rolled back");
                Err(HostError::LimitExceeded(limit))
            }
            (Ok(response), None) if response.status < 500 => match db.commit() {
                Ok(()) => Ok(response),
                Err(e) => {
                    let _ = db.rollback();
                    Err(HostError::Internal(format!("commit failed: {e}")))
                }
            },
            // A 5xx answer is the plugin saying it failed: nothing of it is kept.
            (Ok(response), None) => {
                let _ = db.rollback();
                Ok(response)
            }
            (Err(error), None) => {
                let _ = db.rollback();
                tracing::warn!(plugin = %loaded.id, error = ?error, "plugin request failed");
                Err(error)
            }
        };
        let events = if state.emitted > 0 && result.is_ok() {
            pending(&mut *db, &loaded.id)
        } else {
            vec![]
        };
        give_back(db);
        let mut logs = state.logs;
        if state.logs_dropped > 0 {
            logs.push(PluginLogLine {
                plugin: loaded.id.clone(),
                at_ms: now_ms(),
                level: LogLevel::Warn,
                message: format!(
                    "{} more lines of this request were dropped (at most {MAX_LOG_LINES} per request)",
                    state.logs_dropped
                ),
            });
        }
        Handled {
            result,
            events,
            logs,
        }
    }

    /// Every plugin's committed, undelivered events (after a restart, or unacknowledged).
    pub fn pending_events(&self) -> Vec<PluginEvent> {
        let mut out = Vec::new();
        for loaded in self.plugins.values() {
            let mut db = loaded.platform.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(pending(&mut **db, &loaded.id));
        }
        out
    }

    /// Marks events delivered after the core stored them.
    pub fn mark_delivered(&self, event_ids: &[String], now_ms: i64) {
        const RETAIN_MS: i64 = 7 * 24 * 3600 * 1000;
        for loaded in self.plugins.values() {
            let mut db = loaded.platform.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = db.mark_delivered(event_ids, now_ms, RETAIN_MS) {
                tracing::warn!(plugin = %loaded.id, error = %e, "cannot mark events delivered");
            }
        }
    }
}

fn pending(db: &mut dyn FencedConnection, plugin: &str) -> Vec<PluginEvent> {
    match db.pending_events(500) {
        Ok(rows) => rows
            .into_iter()
            .map(
                |(event_id, topic, payload_json, created_at_ms)| PluginEvent {
                    event_id,
                    plugin: plugin.to_owned(),
                    topic,
                    payload_json,
                    created_at_ms,
                },
            )
            .collect(),
        Err(e) => {
            tracing::warn!(plugin, error = %e, "cannot read the event outbox");
            vec![]
        }
    }
}

/// Why a call trapped: the epoch deadline, the memory cap (the limiter refused a grow),
/// or the guest's own trap (a panic, ...).
fn classify(error: &wasmtime::Error, memory_refused: bool, memory_mb: u32) -> HostError {
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>()
        && *trap == wasmtime::Trap::Interrupt
    {
        return HostError::Deadline;
    }
    if memory_refused {
        return HostError::Trap(format!(
            "the plugin exceeded its memory cap of {memory_mb} MiB"
        ));
    }
    let text = format!("{error:#}");
    HostError::Trap(text.lines().next().unwrap_or("trap").to_owned())
}

/// The store's limits, remembering whether a memory grow was refused (so that a trap
/// is classified by what happened, not by its message).
struct RequestLimits {
    limits: StoreLimits,
    memory_refused: bool,
}

impl wasmtime::ResourceLimiter for RequestLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum);
        if !matches!(allowed, Ok(true)) {
            self.memory_refused = true;
        }
        allowed
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}
