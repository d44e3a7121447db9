//! The rollout metrics (`taskmesh_rollout_*`), labelled by tenant first
//! like every metric naming a function.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::rollouts::RolloutRecord;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    tenant: String,
    function: String,
    alias: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    tenant: String,
    function: String,
    alias: String,
    outcome: String,
}

/// The rollout metrics (`taskmesh_rollout_*`).
pub(super) struct RolloutMetrics {
    pub(super) registry: prometheus_client::registry::Registry,
    step: Family<RolloutLabels, Gauge>,
    percent: Family<RolloutLabels, Gauge>,
    outcomes: Family<OutcomeLabels, Counter>,
}

impl RolloutMetrics {
    pub(super) fn new() -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix("taskmesh_rollout");
        let step = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "step",
            "Current step (0-based) of the active rollout of an alias; -1 when none is active",
            step.clone(),
        );
        let percent = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "percent",
            "Percent of the alias's traffic on the rollout's target version",
            percent.clone(),
        );
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "outcomes",
            "Rollouts ended by this process, by outcome (promoted, rolled_back, aborted)",
            outcomes.clone(),
        );
        RolloutMetrics {
            registry,
            step,
            percent,
            outcomes,
        }
    }

    pub(super) fn observe(&self, record: &RolloutRecord) {
        let labels = RolloutLabels {
            tenant: record.tenant.clone(),
            function: record.function.clone(),
            alias: record.alias.clone(),
        };
        let step = if record.is_active() {
            record.step as i64
        } else {
            -1
        };
        self.step.get_or_create(&labels).set(step);
        self.percent
            .get_or_create(&labels)
            .set(i64::from(record.percent()));
    }

    pub(super) fn ended(&self, record: &RolloutRecord) {
        self.observe(record);
        self.outcomes
            .get_or_create(&OutcomeLabels {
                tenant: record.tenant.clone(),
                function: record.function.clone(),
                alias: record.alias.clone(),
                outcome: record.state.as_str().to_string(),
            })
            .inc();
    }
}
