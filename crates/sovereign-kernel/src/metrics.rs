//! Prometheus metrics: requests and latency by route, database errors by scope, plugin
//! requests and latency by plugin, fence denials, the extension host's state and
//! restarts, the sync outbox and batch apply time, the event inbox. Values that live
//! elsewhere (host state, outbox and inbox sizes) are read when `/metrics` is scraped.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginStatusLabels {
    plugin: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The states `sv_extension_host_state` reports (1 for the current one).
const HOST_STATES: [&str; 4] = ["starting", "running", "crash_loop", "stopped"];

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The kernel's metrics and their registry.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    db_errors: Family<ScopeLabels, Counter>,
    plugin_requests: Family<PluginStatusLabels, Counter>,
    plugin_latency: Family<PluginLabels, Histogram, fn() -> Histogram>,
    fence_denials: Family<PluginLabels, Gauge>,
    host_state: Family<StateLabels, Gauge>,
    host_restarts: Gauge,
    sync_outbox_rows: Gauge,
    sync_oldest_change_seconds: Gauge<f64, AtomicU64>,
    sync_batch_seconds: Histogram,
    sync_changes: Counter,
    event_inbox_unhandled: Gauge,
    /// Each plugin's recent requests, for the console.
    activity: crate::activity::ActivityLog,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates the registry with the kernel's own metrics.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sv");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let db_errors = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "database_errors",
            "Database errors by scope (core, plugins)",
            db_errors.clone(),
        );
        let plugin_requests = Family::<PluginStatusLabels, Counter>::default();
        let plugin_latency =
            Family::<PluginLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let fence_denials = Family::<PluginLabels, Gauge>::default();
        let host_state = Family::<StateLabels, Gauge>::default();
        let host_restarts = Gauge::default();
        let sync_outbox_rows = Gauge::default();
        let sync_oldest_change_seconds = Gauge::<f64, AtomicU64>::default();
        let sync_batch_seconds = latency_histogram();
        let sync_changes = Counter::default();
        let event_inbox_unhandled = Gauge::default();
        registry.register(
            "plugin_requests",
            "Plugin route requests by plugin and status",
            plugin_requests.clone(),
        );
        registry.register(
            "plugin_request_duration_seconds",
            "Plugin route latency by plugin",
            plugin_latency.clone(),
        );
        registry.register(
            "fence_denials",
            "Statements the fence denied, per plugin, since the extension host started",
            fence_denials.clone(),
        );
        registry.register(
            "extension_host_state",
            "1 for the extension host's current state",
            host_state.clone(),
        );
        registry.register(
            "extension_host_restarts",
            "Restarts of the extension host since the kernel started",
            host_restarts.clone(),
        );
        registry.register(
            "sync_outbox_rows",
            "Core changes in the sync outbox (not yet applied or not yet pruned)",
            sync_outbox_rows.clone(),
        );
        registry.register(
            "sync_oldest_change_age_seconds",
            "Age of the oldest change in the sync outbox (an upper bound of the mirror's lag)",
            sync_oldest_change_seconds.clone(),
        );
        registry.register(
            "sync_batch_apply_duration_seconds",
            "Time to apply one mirror batch",
            sync_batch_seconds.clone(),
        );
        registry.register(
            "sync_changes_applied",
            "Core changes applied to the mirror",
            sync_changes.clone(),
        );
        registry.register(
            "event_inbox_unhandled",
            "Plugin events stored in the core but not handled yet",
            event_inbox_unhandled.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            latency,
            db_errors,
            plugin_requests,
            plugin_latency,
            fence_denials,
            host_state,
            host_restarts,
            sync_outbox_rows,
            sync_oldest_change_seconds,
            sync_batch_seconds,
            sync_changes,
            event_inbox_unhandled,
            activity: Default::default(),
        }
    }

    /// Counts a database error in `scope`.
    pub fn database_error(&self, scope: &str) {
        self.db_errors
            .get_or_create(&ScopeLabels {
                scope: scope.to_owned(),
            })
            .inc();
    }

    /// Records one plugin route request.
    pub fn observe_plugin_request(&self, plugin: &str, status: u16, seconds: f64) {
        self.plugin_requests
            .get_or_create(&PluginStatusLabels {
                plugin: plugin.to_owned(),
                status,
            })
            .inc();
        self.plugin_latency
            .get_or_create(&PluginLabels {
                plugin: plugin.to_owned(),
            })
            .observe(seconds);
        self.activity.observe(plugin, status, seconds);
    }

    /// Each plugin's recent traffic (requests per minute, error rate, p95, last error).
    pub fn plugin_activity(&self) -> Vec<crate::activity::PluginActivity> {
        self.activity.summary()
    }

    /// Records one applied mirror batch.
    pub fn observe_sync_batch(&self, changes: usize, seconds: f64) {
        self.sync_batch_seconds.observe(seconds);
        self.sync_changes.inc_by(changes as u64);
    }

    /// Lets other parts register their metrics.
    pub fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry())
            .expect("writing to a String cannot fail");
        out
    }
}

/// Reads the values that live elsewhere: the host's state, restarts and denials, and
/// the sizes of the sync outbox and event inbox (core store only: a scrape never
/// waits on the plugin store).
pub(crate) async fn refresh(state: &AppState) {
    let metrics = &state.metrics;
    if let Some(host) = &state.host {
        let (current, restarts) = match host.state() {
            crate::host::HostState::Starting { restarts } => ("starting", restarts),
            crate::host::HostState::Running { restarts, .. } => ("running", restarts),
            crate::host::HostState::CrashLoop { .. } => ("crash_loop", 0),
            crate::host::HostState::Stopped => ("stopped", 0),
        };
        for name in HOST_STATES {
            metrics
                .host_state
                .get_or_create(&StateLabels { state: name })
                .set(i64::from(name == current));
        }
        if restarts > 0 {
            metrics.host_restarts.set(restarts as i64);
        }
        for (plugin, count) in host.denials() {
            metrics
                .fence_denials
                .get_or_create(&PluginLabels { plugin })
                .set(count as i64);
        }
    }
    let sizes = state
        .core
        .run(metrics, |conn| {
            Ok(sovereign_db_core::health::backlog(conn)?)
        })
        .await;
    if let Ok(sovereign_db_core::health::Backlog {
        outbox_rows: rows,
        oldest_change_ms: oldest,
        unhandled_events: inbox,
    }) = sizes
    {
        metrics.sync_outbox_rows.set(rows);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        metrics
            .sync_oldest_change_seconds
            .set(oldest.map_or(0.0, |at| (now_ms - at).max(0) as f64 / 1000.0));
        metrics.event_inbox_unhandled.set(inbox);
    }
}

/// Middleware recording every request.
pub(crate) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let start = Instant::now();
    let response = next.run(request).await;
    let elapsed = start.elapsed().as_secs_f64();
    let metrics = &state.metrics;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .latency
        .get_or_create(&RouteLabels { method, route })
        .observe(elapsed);
    response
}
