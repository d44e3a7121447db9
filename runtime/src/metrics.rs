//! Runtime metrics (Prometheus text, appended to the router's `/metrics` in
//! single-process mode and served at the node's own `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

pub struct RuntimeMetrics {
    registry: Registry,
    cold_starts: Family<FunctionLabels, Histogram>,
    evictions: Family<FunctionLabels, Counter>,
    batch_sizes: Family<FunctionLabels, Histogram>,
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
            "Time from a call needing a new instance to the end of its first run (fetch, load, first run), by function",
            Unit::Seconds,
            cold_starts.clone(),
        );
        let evictions = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "evictions",
            "Idle instances evicted to fit the memory budget, by function",
            evictions.clone(),
        );
        let batch_sizes = Family::<FunctionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 11))
        });
        registry.register(
            "batch_size",
            "Calls combined into one run by dynamic batching, by function",
            batch_sizes.clone(),
        );
        RuntimeMetrics {
            registry,
            cold_starts,
            evictions,
            batch_sizes,
        }
    }

    pub fn cold_start(&self, function: &str, seconds: f64) {
        self.cold_starts
            .get_or_create(&FunctionLabels {
                function: function.to_string(),
            })
            .observe(seconds);
    }

    pub fn batch(&self, function: &str, calls: usize) {
        self.batch_sizes
            .get_or_create(&FunctionLabels {
                function: function.to_string(),
            })
            .observe(calls as f64);
    }

    pub fn evicted(&self, function: &str) {
        self.evictions
            .get_or_create(&FunctionLabels {
                function: function.to_string(),
            })
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
