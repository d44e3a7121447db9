//! Router metrics (Prometheus text at `/metrics`).
//!
//! Names follow `taskmesh_<area>_<name>_<unit>`; counters end in `_total`.
//! Labels never carry keys, bodies or anything a caller typed except the
//! function name of a registered function (unknown names are `-`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<FunctionLabels, Histogram>,
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
        Metrics {
            registry,
            requests,
            duration,
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
