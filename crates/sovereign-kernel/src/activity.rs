//! Recent plugin traffic for operators: requests per minute, error rate and p95 latency
//! over the last minutes, and the last error, per plugin (`/metrics` keeps the totals).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How far back the figures look.
const WINDOW: Duration = Duration::from_secs(300);
/// Most requests remembered per plugin (the figures then cover less than the window).
const MAX_SAMPLES: usize = 20_000;

/// One plugin's recent traffic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginActivity {
    /// Plugin id.
    pub plugin: String,
    /// Requests in the last minute.
    pub requests_last_minute: usize,
    /// Share of 5xx answers among the last five minutes' requests (0 to 1).
    pub error_rate: f64,
    /// 95th percentile latency over the last five minutes, in milliseconds.
    pub p95_ms: Option<f64>,
    /// The last 5xx answer.
    pub last_error: Option<LastError>,
}

/// A plugin's last failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Recent {
    samples: VecDeque<(Instant, u16, f64)>,
    last_error: Option<LastError>,
}

/// Every plugin's recent requests.
#[derive(Default)]
pub struct ActivityLog {
    plugins: Mutex<HashMap<String, Recent>>,
}

impl ActivityLog {
    /// Records one request.
    pub fn observe(&self, plugin: &str, status: u16, seconds: f64) {
        let now = Instant::now();
        let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        let recent = plugins.entry(plugin.to_owned()).or_default();
        recent.samples.push_back((now, status, seconds * 1000.0));
        while recent.samples.len() > MAX_SAMPLES
            || recent
                .samples
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) > WINDOW)
        {
            recent.samples.pop_front();
        }
        if status >= 500 {
            recent.last_error = Some(LastError {
                at_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
                status,
            });
        }
    }

    /// The figures of every plugin that served a request since the platform started.
    pub fn summary(&self) -> Vec<PluginActivity> {
        let now = Instant::now();
        let plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<PluginActivity> = plugins
            .iter()
            .map(|(plugin, recent)| {
                let window: Vec<&(Instant, u16, f64)> = recent
                    .samples
                    .iter()
                    .filter(|(at, _, _)| now.duration_since(*at) <= WINDOW)
                    .collect();
                let last_minute = window
                    .iter()
                    .filter(|(at, _, _)| now.duration_since(*at) <= Duration::from_secs(60))
                    .count();
                let errors = window
                    .iter()
                    .filter(|(_, status, _)| *status >= 500)
                    .count();
                let mut latencies: Vec<f64> = window.iter().map(|(_, _, ms)| *ms).collect();
                latencies.sort_by(f64::total_cmp);
                let p95_ms = (!latencies.is_empty())
                    .then(|| latencies[(latencies.len() * 95).div_ceil(100).saturating_sub(1)]);
                PluginActivity {
                    plugin: plugin.clone(),
                    requests_last_minute: last_minute,
                    error_rate: if window.is_empty() {
                        0.0
                    } else {
                        errors as f64 / window.len() as f64
                    },
                    p95_ms,
                    last_error: recent.last_error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_count_requests_errors_and_the_95th_percentile() {
        let log = ActivityLog::default();
        for i in 1..=100 {
            log.observe(
                "tasks",
                if i % 10 == 0 { 500 } else { 200 },
                i as f64 / 1000.0,
            );
        }
        log.observe("notes", 200, 0.002);
        let summary = log.summary();
        assert_eq!(summary.len(), 2);
        let tasks = &summary[1];
        assert_eq!(tasks.plugin, "tasks");
        assert_eq!(tasks.requests_last_minute, 100);
        assert!((tasks.error_rate - 0.1).abs() < 1e-9);
        assert_eq!(tasks.p95_ms, Some(95.0));
        assert_eq!(tasks.last_error.as_ref().map(|e| e.status), Some(500));
        assert_eq!(summary[0].last_error, None);
    }
}
