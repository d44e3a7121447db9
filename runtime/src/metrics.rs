//! Runtime metrics (Prometheus text, appended to the router's `/metrics` in
//! single-process mode and served at the node's own `/metrics`).
//!
//! Every family leads with the function's `tenant`, so that two tenants'
//! functions of the same name are two series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub tenant: String,
    pub function: String,
}

fn labels(tenant: &str, function: &str) -> FunctionLabels {
    FunctionLabels {
        tenant: tenant.to_string(),
        function: function.to_string(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub tenant: String,
    pub function: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub tenant: String,
    pub function: String,
    pub version: String,
    /// `idle`, `busy` or `loading`.
    pub state: &'static str,
}

pub struct RuntimeMetrics {
    registry: Registry,
    cold_starts: Family<FunctionLabels, Histogram>,
    evictions: Family<FunctionLabels, Counter>,
    batch_sizes: Family<FunctionLabels, Histogram>,
    queue_waits: Family<FunctionLabels, Histogram>,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("taskmesh_runtime");
        let cold_starts = Family::<FunctionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register_with_unit(
            "cold_start",
            "Time from a call needing a new instance to the end of its first run (fetch, load, first run), by tenant and function",
            Unit::Seconds,
            cold_starts.clone(),
        );
        let evictions = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "evictions",
            "Idle instances evicted to fit the memory budget, by tenant and function",
            evictions.clone(),
        );
        let batch_sizes = Family::<FunctionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 11))
        });
        registry.register(
            "batch_size",
            "Calls combined into one run by dynamic batching, by tenant and function",
            batch_sizes.clone(),
        );
        let queue_waits = Family::<FunctionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register_with_unit(
            "queue_wait",
            "Time a call waited in its version's queue for an instance (calls that found one idle are not counted), by tenant and function",
            Unit::Seconds,
            queue_waits.clone(),
        );
        RuntimeMetrics {
            registry,
            cold_starts,
            evictions,
            batch_sizes,
            queue_waits,
        }
    }

    pub fn cold_start(&self, tenant: &str, function: &str, seconds: f64) {
        self.cold_starts
            .get_or_create(&labels(tenant, function))
            .observe(seconds);
    }

    pub fn batch(&self, tenant: &str, function: &str, calls: usize) {
        self.batch_sizes
            .get_or_create(&labels(tenant, function))
            .observe(calls as f64);
    }

    pub fn queue_wait(&self, tenant: &str, function: &str, seconds: f64) {
        self.queue_waits
            .get_or_create(&labels(tenant, function))
            .observe(seconds);
    }

    pub fn evicted(&self, tenant: &str, function: &str) {
        self.evictions
            .get_or_create(&labels(tenant, function))
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_function_name_in_two_tenants_is_two_series() {
        let m = RuntimeMetrics::new();
        m.cold_start("a", "digits", 0.2);
        m.cold_start("b", "digits", 0.3);
        m.cold_start("b", "digits", 0.3);
        m.batch("a", "digits", 4);
        m.evicted("b", "digits");
        let text = m.encode();
        for needle in [
            r#"taskmesh_runtime_cold_start_seconds_count{tenant="a",function="digits"} 1"#,
            r#"taskmesh_runtime_cold_start_seconds_count{tenant="b",function="digits"} 2"#,
            r#"taskmesh_runtime_batch_size_count{tenant="a",function="digits"} 1"#,
            r#"taskmesh_runtime_batch_size_sum{tenant="a",function="digits"} 4"#,
            r#"taskmesh_runtime_evictions_total{tenant="b",function="digits"} 1"#,
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert!(
            !text.contains(r#"taskmesh_runtime_evictions_total{tenant="a""#),
            "{text}"
        );
    }
}
