//! Router metrics (Prometheus text at `/metrics`).
//!
//! Names follow `taskmesh_<area>_<name>_<unit>`; counters end in `_total`.
//! Every family that names a function leads with its `tenant`, so that two
//! tenants' functions of the same name are two series. Labels never carry
//! keys, bodies or anything a caller typed except the tenant and name of a
//! registered function (unknown or unauthenticated calls are tenant `-`,
//! function `-`).
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
    pub tenant: String,
    pub function: String,
    pub version: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub tenant: String,
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub tenant: String,
    pub function: String,
    pub version: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub tenant: String,
    pub function: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionErrorLabels {
    pub tenant: String,
    pub function: String,
    pub version: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub tenant: String,
    pub function: String,
    pub outcome: String,
}

/// The task queues' numbers (read from the task store, so every router of a
/// cluster shows the same queue gauges: aggregate them with `max`, not `sum`)
/// and this router's task outcomes.
#[derive(Clone, Default)]
pub struct TaskMetrics {
    pub queued: Family<FunctionLabels, Gauge>,
    pub running: Family<FunctionLabels, Gauge>,
    pub backlog_cost: Family<FunctionLabels, Gauge>,
    pub oldest_age: Family<FunctionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub dead: Family<FunctionLabels, Gauge>,
    pub outcomes: Family<OutcomeLabels, Counter>,
}

impl TaskMetrics {
    fn register(&self, registry: &mut Registry) {
        let tasks = registry.sub_registry_with_prefix("tasks");
        tasks.register("queued", "Tasks waiting in their queue (queued, or failed and waiting for a retry), by tenant and function", self.queued.clone());
        tasks.register(
            "running",
            "Tasks a worker is running, by tenant and function",
            self.running.clone(),
        );
        tasks.register("backlog_cost", "The summed cost of waiting and running tasks (the autoscaling signal), by tenant and function", self.backlog_cost.clone());
        tasks.register_with_unit(
            "oldest_age",
            "Age of the oldest unfinished task entry, by tenant and function",
            prometheus_client::registry::Unit::Seconds,
            self.oldest_age.clone(),
        );
        tasks.register(
            "dead",
            "Dead tasks kept (retries exhausted), by tenant and function",
            self.dead.clone(),
        );
        tasks.register("outcomes", "Task events on this router by tenant, function and outcome: submitted, succeeded, retried, dead, deferred", self.outcomes.clone());
    }

    /// Counts one task event.
    pub fn outcome(&self, tenant: &str, function: &str, outcome: &str) {
        self.outcomes
            .get_or_create(&OutcomeLabels {
                tenant: tenant.into(),
                function: function.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Sets the queue gauges from the store's numbers.
    pub fn observe(&self, stats: &[contract::task::QueueStats], now_ms: u64) {
        for q in stats {
            let labels = FunctionLabels {
                tenant: q.tenant.clone(),
                function: q.function.clone(),
            };
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.queued.get_or_create(&labels).set(gauge(q.queued));
            self.running.get_or_create(&labels).set(gauge(q.running));
            self.backlog_cost
                .get_or_create(&labels)
                .set(gauge(q.backlog_cost));
            self.dead.get_or_create(&labels).set(gauge(q.dead));
            let age = q
                .oldest_created_at
                .map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0);
            self.oldest_age.get_or_create(&labels).set(age);
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub tenant: String,
    pub pipeline: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub tenant: String,
    pub pipeline: String,
    pub step: String,
    pub outcome: String,
}

/// Pipeline runs (by status) and their steps (by outcome, with durations).
#[derive(Clone)]
pub struct PipelineMetrics {
    pub runs: Family<PipelineLabels, Counter>,
    pub run_duration: Family<PipelineLabels, Histogram>,
    pub step_duration: Family<StepLabels, Histogram>,
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        let buckets = || Histogram::new(exponential_buckets(0.0005, 2.0, 18));
        PipelineMetrics {
            runs: Family::default(),
            run_duration: Family::new_with_constructor(buckets),
            step_duration: Family::new_with_constructor(buckets),
        }
    }
}

impl PipelineMetrics {
    fn register(&self, registry: &mut Registry) {
        let pipelines = registry.sub_registry_with_prefix("pipeline");
        pipelines.register(
            "runs",
            "Pipeline runs by tenant, pipeline and status",
            self.runs.clone(),
        );
        pipelines.register_with_unit(
            "run_duration",
            "Time of a pipeline run, by tenant, pipeline and status",
            prometheus_client::registry::Unit::Seconds,
            self.run_duration.clone(),
        );
        pipelines.register_with_unit(
            "step_duration",
            "Time of a pipeline's step (all its calls), by tenant, pipeline, step and outcome (succeeded, failed, refused)",
            prometheus_client::registry::Unit::Seconds,
            self.step_duration.clone(),
        );
    }

    /// One run that ended with `status`.
    pub fn run(&self, tenant: &str, pipeline: &str, status: u16, seconds: f64) {
        let labels = PipelineLabels {
            tenant: tenant.into(),
            pipeline: pipeline.into(),
            status: status.to_string(),
        };
        self.runs.get_or_create(&labels).inc();
        self.run_duration.get_or_create(&labels).observe(seconds);
    }

    /// One step that ended with `outcome`.
    pub fn step(&self, tenant: &str, pipeline: &str, step: &str, outcome: &str, seconds: f64) {
        let labels = StepLabels {
            tenant: tenant.into(),
            pipeline: pipeline.into(),
            step: step.into(),
            outcome: outcome.into(),
        };
        self.step_duration.get_or_create(&labels).observe(seconds);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

/// The listeners' connection metrics (cheap clones of the registered ones).
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    /// Connections open now, on all of the router's listeners.
    pub open: Gauge,
    /// Connections refused or closed before a request was served, by reason:
    /// `total` and `per_peer` (caps), `first_byte_timeout`, `header_timeout`,
    /// `headers_too_large`.
    pub refused: Family<ReasonLabels, Counter>,
}

impl ConnectionMetrics {
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}

fn version_labels(tenant: &str, function: &str, version: u32) -> VersionLabels {
    VersionLabels {
        tenant: tenant.to_string(),
        function: function.to_string(),
        version: version.to_string(),
    }
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
    /// Runtime nodes this router knows, by `state` (`live`, `ejected`).
    pub nodes: Family<StateLabels, Gauge>,
    pub connections: ConnectionMetrics,
    pub tasks: TaskMetrics,
    pub pipelines: PipelineMetrics,
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
            "Requests answered by the router, by tenant, function, version and status",
            requests.clone(),
        );
        let duration = Family::<FunctionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        registry.register_with_unit(
            "request_duration",
            "Time from request start to the end of the response, by tenant and function",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests answered with an error, by tenant, function, version and error code",
            refusals.clone(),
        );
        let retries = Family::<VersionLabels, Counter>::default();
        registry.register(
            "retries",
            "Attempts retried on another node, by tenant, function and version",
            retries.clone(),
        );
        let breaker_state = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker state by tenant, function and version: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        let nodes = Family::<StateLabels, Gauge>::default();
        registry.register(
            "nodes",
            "Runtime nodes in this router's membership, by state: live (in the ring) or ejected (refused a connection, out for a while)",
            nodes.clone(),
        );
        let version_calls = Family::<VersionLabels, Counter>::default();
        registry.register(
            "version_calls",
            "Calls per function version (by tenant) that reached a node or failed on the server side",
            version_calls.clone(),
        );
        let version_errors = Family::<VersionErrorLabels, Counter>::default();
        registry.register(
            "version_errors",
            "Calls per function version (by tenant) answered with a 5xx, by error code (kind)",
            version_errors.clone(),
        );
        let version_latency = Family::<VersionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register_with_unit(
            "version_latency",
            "Latency of the calls in version_calls, by tenant and function version",
            prometheus_client::registry::Unit::Seconds,
            version_latency.clone(),
        );
        let tasks = TaskMetrics::default();
        tasks.register(&mut registry);
        let pipelines = PipelineMetrics::default();
        pipelines.register(&mut registry);
        let connections = ConnectionMetrics::default();
        registry.register(
            "connections_open",
            "Connections open on the router's listeners",
            connections.open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused or closed before serving a request, by reason",
            connections.refused.clone(),
        );
        Metrics {
            registry,
            connections,
            tasks,
            pipelines,
            version_calls,
            version_errors,
            version_latency,
            requests,
            duration,
            refusals,
            retries,
            breaker_state,
            nodes,
        }
    }

    /// The membership as this router sees it now.
    pub fn observe_nodes(&self, live: usize, ejected: usize) {
        for (state, n) in [("live", live), ("ejected", ejected)] {
            let labels = StateLabels {
                state: state.to_string(),
            };
            self.nodes.get_or_create(&labels).set(n as i64);
        }
    }

    pub fn record(
        &self,
        tenant: &str,
        function: &str,
        version: Option<u32>,
        status: u16,
        seconds: f64,
    ) {
        let version = version.map_or_else(|| "-".to_string(), |v| v.to_string());
        self.requests
            .get_or_create(&RequestLabels {
                tenant: tenant.to_string(),
                function: function.to_string(),
                version,
                status: status.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&FunctionLabels {
                tenant: tenant.to_string(),
                function: function.to_string(),
            })
            .observe(seconds);
    }

    /// One call of a version for the per-version metrics; `error` is the
    /// error code of a failed call.
    pub fn record_version(
        &self,
        tenant: &str,
        function: &str,
        version: u32,
        error: Option<&str>,
        seconds: f64,
    ) {
        let labels = version_labels(tenant, function, version);
        self.version_calls.get_or_create(&labels).inc();
        self.version_latency.get_or_create(&labels).observe(seconds);
        if let Some(kind) = error {
            self.version_errors
                .get_or_create(&VersionErrorLabels {
                    tenant: labels.tenant,
                    function: labels.function,
                    version: labels.version,
                    kind: kind.to_string(),
                })
                .inc();
        }
    }

    pub fn refused(&self, tenant: &str, function: &str, version: Option<u32>, code: &str) {
        let version = version.map_or_else(|| "-".to_string(), |v| v.to_string());
        self.refusals
            .get_or_create(&RefusalLabels {
                tenant: tenant.to_string(),
                function: function.to_string(),
                version,
                code: code.to_string(),
            })
            .inc();
    }

    pub fn retried(&self, tenant: &str, function: &str, version: u32) {
        self.retries
            .get_or_create(&version_labels(tenant, function, version))
            .inc();
    }

    /// Breaker states as (tenant, function, version, state).
    pub fn observe_breakers(&self, states: &[(String, String, u32, i64)]) {
        for (tenant, function, version, state) in states {
            self.breaker_state
                .get_or_create(&version_labels(tenant, function, *version))
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
        m.record("default", "digits", Some(2), 200, 0.003);
        m.record("default", "digits", Some(2), 200, 0.004);
        m.record("-", "-", None, 401, 0.001);
        m.refused("-", "-", None, "unauthenticated");
        let text = m.encode();
        assert!(text.contains("taskmesh_router_requests_total{tenant=\"default\",function=\"digits\",version=\"2\",status=\"200\"} 2"), "{text}");
        assert!(
            text.contains("taskmesh_router_request_duration_seconds_count{tenant=\"default\",function=\"digits\"} 2"),
            "{text}"
        );
        assert!(text.contains("taskmesh_router_requests_total{tenant=\"-\",function=\"-\",version=\"-\",status=\"401\"} 1"), "{text}");
        assert!(text.contains("taskmesh_router_refusals_total{tenant=\"-\",function=\"-\",version=\"-\",code=\"unauthenticated\"} 1"), "{text}");
    }

    #[test]
    fn task_queues_and_outcomes_are_exported() {
        let m = Metrics::new();
        let stats = contract::task::QueueStats {
            tenant: "a".into(),
            function: "digits".into(),
            queued: 3,
            running: 1,
            backlog_cost: 40,
            oldest_created_at: Some(1_000),
            dead: 2,
        };
        m.tasks.observe(&[stats], 3_500);
        m.tasks.outcome("a", "digits", "succeeded");
        let text = m.encode();
        for needle in [
            "taskmesh_router_tasks_queued{tenant=\"a\",function=\"digits\"} 3",
            "taskmesh_router_tasks_running{tenant=\"a\",function=\"digits\"} 1",
            "taskmesh_router_tasks_backlog_cost{tenant=\"a\",function=\"digits\"} 40",
            "taskmesh_router_tasks_dead{tenant=\"a\",function=\"digits\"} 2",
            "taskmesh_router_tasks_oldest_age_seconds{tenant=\"a\",function=\"digits\"} 2.5",
            "taskmesh_router_tasks_outcomes_total{tenant=\"a\",function=\"digits\",outcome=\"succeeded\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn one_function_name_in_two_tenants_is_two_series() {
        let m = Metrics::new();
        m.record("a", "digits", Some(1), 200, 0.002);
        m.record("b", "digits", Some(1), 200, 0.002);
        m.record("b", "digits", Some(1), 200, 0.002);
        m.refused("a", "digits", Some(1), "rate_limited");
        m.retried("b", "digits", 1);
        m.record_version("a", "digits", 1, Some("function_failed"), 0.01);
        m.record_version("b", "digits", 1, None, 0.01);
        m.observe_breakers(&[
            ("a".to_string(), "digits".to_string(), 1, 1),
            ("b".to_string(), "digits".to_string(), 1, 0),
        ]);
        let text = m.encode();
        for needle in [
            "taskmesh_router_requests_total{tenant=\"a\",function=\"digits\",version=\"1\",status=\"200\"} 1",
            "taskmesh_router_requests_total{tenant=\"b\",function=\"digits\",version=\"1\",status=\"200\"} 2",
            "taskmesh_router_request_duration_seconds_count{tenant=\"a\",function=\"digits\"} 1",
            "taskmesh_router_request_duration_seconds_count{tenant=\"b\",function=\"digits\"} 2",
            "taskmesh_router_refusals_total{tenant=\"a\",function=\"digits\",version=\"1\",code=\"rate_limited\"} 1",
            "taskmesh_router_retries_total{tenant=\"b\",function=\"digits\",version=\"1\"} 1",
            "taskmesh_router_version_calls_total{tenant=\"a\",function=\"digits\",version=\"1\"} 1",
            "taskmesh_router_version_calls_total{tenant=\"b\",function=\"digits\",version=\"1\"} 1",
            "taskmesh_router_version_errors_total{tenant=\"a\",function=\"digits\",version=\"1\",kind=\"function_failed\"} 1",
            "taskmesh_router_version_latency_seconds_count{tenant=\"b\",function=\"digits\",version=\"1\"} 1",
            "taskmesh_router_breaker_state{tenant=\"a\",function=\"digits\",version=\"1\"} 1",
            "taskmesh_router_breaker_state{tenant=\"b\",function=\"digits\",version=\"1\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        // Only tenant a's call failed, and only tenant b's was retried.
        assert!(
            !text.contains("taskmesh_router_version_errors_total{tenant=\"b\""),
            "{text}"
        );
        assert!(
            !text.contains("taskmesh_router_retries_total{tenant=\"a\""),
            "{text}"
        );
        assert!(
            !text.contains("taskmesh_router_refusals_total{tenant=\"b\""),
            "{text}"
        );
    }
}
