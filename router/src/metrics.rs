//! Router metrics (Prometheus text at `/metrics`).
//!
//! Names follow `taskmesh_<area>_<name>_<unit>`; counters end in `_total`.
//! Labels never carry keys, bodies or anything a caller typed except the
//! function name of a registered function (unknown names are `-`).
//!
//! Bottom layer: names nothing else in the crate.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A source of more Prometheus text for `/metrics` (the in-process node's).
pub type MetricsSource = std::sync::Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub function: String,
    pub version: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub function: String,
    pub version: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub function: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionErrorLabels {
    pub function: String,
    pub version: String,
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    /// Calls per version that reached a node or failed on the server side.
    pub version_calls: Family<VersionLabels, Counter>,
    /// Of those, the ones answered with a 5xx, by error code.
    pub version_errors: Family<VersionErrorLabels, Counter>,
    pub version_latency: Family<VersionLabels, Histogram>,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<FunctionLabels, Histogram>,
    pub refusals: Family<RefusalLabels, Counter>,
    pub retries: Family<VersionLabels, Counter>,
    pub breaker_state: Family<VersionLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("taskmesh_router");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered by the router, by function, version and status",
            requests.clone(),
        );
        let duration = Family::<FunctionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        registry.register_with_unit(
            "request_duration",
            "Time from request start to the end of the response, by function",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests answered with an error, by function, version and error code",
            refusals.clone(),
        );
        let retries = Family::<VersionLabels, Counter>::default();
        registry.register(
            "retries",
            "Attempts retried on another node, by function and version",
            retries.clone(),
        );
        let breaker_state = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker state by function and version: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        let version_calls = Family::<VersionLabels, Counter>::default();
        registry.register(
            "version_calls",
            "Calls per function version that reached a node or failed on the server side",
            version_calls.clone(),
        );
        let version_errors = Family::<VersionErrorLabels, Counter>::default();
        registry.register(
            "version_errors",
            "Calls per function version answered with a 5xx, by error code (kind)",
            version_errors.clone(),
        );
        let version_latency = Family::<VersionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register_with_unit(
            "version_latency",
            "Latency of the calls in version_calls, by function version",
            prometheus_client::registry::Unit::Seconds,
            version_latency.clone(),
        );
        Metrics {
            registry,
            version_calls,
            version_errors,
            version_latency,
            requests,
            duration,
            refusals,
            retries,
            breaker_state,
        }
    }

    pub fn record(&self, function: &str, version: Option<u32>, status: u16, seconds: f64) {
        let version = version.map_or_else(|| "-".to_string(), |v| v.to_string());
        self.requests
            .get_or_create(&RequestLabels {
                function: function.to_string(),
                version,
                status: status.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&FunctionLabels {
                function: function.to_string(),
            })
            .observe(seconds);
    }

    /// One call of a version for the per-version metrics; `error` is the
    /// error code of a failed call.
    pub fn record_version(&self, function: &str, version: u32, error: Option<&str>, seconds: f64) {
        let labels = VersionLabels {
            function: function.to_string(),
            version: version.to_string(),
        };
        self.version_calls.get_or_create(&labels).inc();
        self.version_latency.get_or_create(&labels).observe(seconds);
        if let Some(kind) = error {
            self.version_errors
                .get_or_create(&VersionErrorLabels {
                    function: labels.function,
                    version: labels.version,
                    kind: kind.to_string(),
                })
                .inc();
        }
    }

    pub fn refused(&self, function: &str, version: Option<u32>, code: &str) {
        let version = version.map_or_else(|| "-".to_string(), |v| v.to_string());
        self.refusals
            .get_or_create(&RefusalLabels {
                function: function.to_string(),
                version,
                code: code.to_string(),
            })
            .inc();
    }

    pub fn retried(&self, function: &str, version: u32) {
        self.retries
            .get_or_create(&VersionLabels {
                function: function.to_string(),
                version: version.to_string(),
            })
            .inc();
    }

    pub fn observe_breakers(&self, states: &[(String, u32, i64)]) {
        for (function, version, state) in states {
            self.breaker_state
                .get_or_create(&VersionLabels {
                    function: function.clone(),
                    version: version.to_string(),
                })
                .set(*state);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_show_up_in_the_text_format() {
        let m = Metrics::new();
        m.record("digits", Some(2), 200, 0.003);
        m.record("digits", Some(2), 200, 0.004);
        let text = m.encode();
        assert!(text.contains("taskmesh_router_requests_total{function=\"digits\",version=\"2\",status=\"200\"} 2"), "{text}");
        assert!(
            text.contains("taskmesh_router_request_duration_seconds_count{function=\"digits\"} 2"),
            "{text}"
        );
    }
}
