//! Rollouts: the API's operations and the driver that walks the steps.
//!
//! The driver runs in the process that serves the admin API (`taskmesh up`,
//! or each `taskmesh registry` in cluster mode). Every tick (250 ms) it reads
//! the active rollouts from the store and, for each whose lease it holds
//! (`rollout/<tenant>/<function>/<id>`, 5 s, renewed every tick; in Redis, so
//! exactly one registry process drives a rollout, and another takes over
//! within 5 s when it dies), takes one step of the state machine:
//!
//! 1. `warming`: the target version is warmed ([`Warmer`]), then step 0 begins.
//! 2. `running`: the alias is set to the step's routes
//!    (`policies::rollout::routes_for_step`; re-applied every tick, so a crash
//!    between two writes heals), the evidence since the step began is read
//!    from the counters the routers flush (`crate::rollouts::stats_keys`), and
//!    `policies::rollout::judge` decides: hold, pass (next step, or promote
//!    at 100 %), or breach (the alias goes straight back to the previous
//!    routes, and the reason is recorded).
//! 3. `paused` holds the current routes until resumed (the step then starts
//!    over); `abort` restores the previous routes at once.
//!
//! Every write is a compare-and-set on the record's revision; a driver that
//! loses a race re-reads and, if the rollout ended meanwhile, re-applies the
//! routes the ending calls for.
//!
//! The operations are in `operations` (start, get, list, pause, resume,
//! abort), the driver's loop and state machine in `driver`, the metrics in
//! `metrics`; this module holds [`Rollouts`] and what both halves share.

mod driver;
mod metrics;
mod operations;

pub use operations::StartBody;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::ApiError;
use policies::rollout::Stats;
use policies::split::Route;

use crate::rollouts::{stats_from, stats_keys, RolloutRecord, RolloutState};
use crate::service::Registry;
use crate::store::store_error;
use contract::FunctionVersion;
use metrics::RolloutMetrics;

/// How often the driver looks at active rollouts.
pub const TICK: Duration = Duration::from_millis(250);
/// How long a driver's lease on a rollout lasts without renewal.
pub const LEASE_TTL_MS: u64 = 5_000;

/// Warms a function version before a rollout's first step.
#[async_trait::async_trait]
pub trait Warmer: Send + Sync {
    async fn warm(&self, version: &Arc<FunctionVersion>) -> Result<(), String>;
}

/// An operator's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Abort,
}

impl Action {
    pub fn from_path(segment: &str) -> Option<Self> {
        match segment {
            "pause" => Some(Action::Pause),
            "resume" => Some(Action::Resume),
            "abort" => Some(Action::Abort),
            _ => None,
        }
    }
}

/// Rollout operations and the driver.
pub struct Rollouts {
    registry: Arc<Registry>,
    warmer: Option<Arc<dyn Warmer>>,
    holder: String,
    metrics: RolloutMetrics,
    /// Rollouts this process has warmed the target of (warmed again after a restart).
    warmed: Mutex<std::collections::HashSet<String>>,
}

impl Rollouts {
    /// `holder` names this process in rollout leases (unique per process in
    /// cluster mode).
    pub fn new(registry: Arc<Registry>, warmer: Option<Arc<dyn Warmer>>, holder: String) -> Self {
        Rollouts {
            registry,
            warmer,
            holder,
            metrics: RolloutMetrics::new(),
            warmed: Mutex::new(Default::default()),
        }
    }

    /// The rollout metrics as Prometheus text (no `# EOF`).
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.metrics.registry).is_err() {
            out.clear();
        }
        out.trim_end().trim_end_matches("# EOF").to_string()
    }

    /// Reads the counters of the target and of the old versions.
    async fn read_stats(&self, record: &RolloutRecord) -> Result<(Stats, Stats), ApiError> {
        let old_versions: Vec<u32> = record
            .previous_routes
            .iter()
            .map(|r| r.version)
            .filter(|v| *v != record.to_version)
            .collect();
        let mut keys = stats_keys(&record.tenant, &record.function, record.to_version);
        let per = keys.len();
        for v in &old_versions {
            keys.extend(stats_keys(&record.tenant, &record.function, *v));
        }
        let values = self
            .registry
            .store()
            .get_counters(&keys)
            .await
            .map_err(store_error)?;
        let new = stats_from(&values[..per]);
        let mut old = Stats::default();
        for chunk in values[per..].chunks(per) {
            old.add(&stats_from(chunk));
        }
        Ok((new, old))
    }

    /// Sets the alias to what an ended rollout leaves: the target alone when
    /// promoted, else the previous routes.
    async fn apply_ending(&self, record: &RolloutRecord) -> Result<(), ApiError> {
        let routes = match record.state {
            RolloutState::Promoted => vec![Route {
                version: record.to_version,
                weight: 100,
            }],
            RolloutState::RolledBack | RolloutState::Aborted => record.previous_routes.clone(),
            _ => return Ok(()),
        };
        self.set_routes(record, routes).await
    }

    async fn set_routes(&self, record: &RolloutRecord, routes: Vec<Route>) -> Result<(), ApiError> {
        let current = self
            .registry
            .store()
            .get_alias(&record.tenant, &record.function, &record.alias)
            .await
            .map_err(store_error)?;
        if current.as_ref().map(|a| &a.routes) != Some(&routes) {
            self.registry
                .write_alias(&record.tenant, &record.function, &record.alias, routes)
                .await?;
        }
        Ok(())
    }
}
