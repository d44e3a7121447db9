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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::tensor::Violation;
use contract::{ApiError, ErrorCode};
use policies::rollout::{self, RolloutSpec, Stats, Verdict};
use policies::split::Route;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde_json::json;

use crate::rollouts::{stats_from, stats_keys, Evidence, RolloutRecord, RolloutState, StepRecord};
use crate::service::Registry;
use crate::store::{now_ms, store_error};
use contract::FunctionVersion;

/// How often the driver looks at active rollouts.
pub const TICK: Duration = Duration::from_millis(250);
/// How long a driver's lease on a rollout lasts without renewal.
pub const LEASE_TTL_MS: u64 = 5_000;

/// Warms a function version before a rollout's first step.
#[async_trait::async_trait]
pub trait Warmer: Send + Sync {
    async fn warm(&self, version: &Arc<FunctionVersion>) -> Result<(), String>;
}

/// The body of `POST /v1/functions/{name}/rollouts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default = "live")]
    alias: String,
    to_version: u32,
    #[serde(default = "default_steps")]
    steps: Vec<u32>,
    #[serde(default = "default_interval")]
    step_interval_s: u64,
    #[serde(default = "default_min_calls")]
    min_calls_per_step: u64,
    #[serde(default = "default_error_rate")]
    max_error_rate: f64,
    #[serde(default)]
    max_p99_ms: Option<f64>,
    #[serde(default = "default_margin")]
    error_rate_margin: f64,
    #[serde(default = "default_ratio")]
    p99_ratio: f64,
}

fn live() -> String {
    crate::aliases::LIVE.to_string()
}
fn default_steps() -> Vec<u32> {
    vec![5, 25, 50, 100]
}
fn default_interval() -> u64 {
    60
}
fn default_min_calls() -> u64 {
    50
}
fn default_error_rate() -> f64 {
    0.01
}
fn default_margin() -> f64 {
    0.005
}
fn default_ratio() -> f64 {
    1.5
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    function: String,
    alias: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    function: String,
    alias: String,
    outcome: String,
}

/// The rollout metrics (`taskmesh_rollout_*`).
struct RolloutMetrics {
    registry: prometheus_client::registry::Registry,
    step: Family<RolloutLabels, Gauge>,
    percent: Family<RolloutLabels, Gauge>,
    outcomes: Family<OutcomeLabels, Counter>,
}

impl RolloutMetrics {
    fn new() -> Self {
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

    fn observe(&self, record: &RolloutRecord) {
        let labels = RolloutLabels {
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

    fn ended(&self, record: &RolloutRecord) {
        self.observe(record);
        self.outcomes
            .get_or_create(&OutcomeLabels {
                function: record.function.clone(),
                alias: record.alias.clone(),
                outcome: record.state.as_str().to_string(),
            })
            .inc();
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

fn invalid(violations: Vec<Violation>) -> ApiError {
    let summary = violations
        .iter()
        .map(|v| format!("{}: {}", v.pointer, v.message))
        .collect::<Vec<_>>()
        .join("; ");
    ApiError::new(
        ErrorCode::InvalidInput,
        format!("invalid rollout: {summary}"),
    )
    .with_details(json!(violations))
}

fn new_id() -> String {
    let random: u32 = rand::random();
    format!("r{:x}{random:08x}", now_ms())
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

    /// Starts a rollout (`POST /v1/functions/{name}/rollouts`).
    pub async fn start(
        &self,
        tenant: &str,
        function: &str,
        body: &[u8],
    ) -> Result<RolloutRecord, ApiError> {
        let latest = self.registry.require_function(tenant, function).await?;
        let body: StartBody = serde_json::from_slice(body)
            .map_err(|e| invalid(vec![Violation::new("", format!("{e}"))]))?;
        crate::aliases::check_name(&body.alias)?;
        let spec = RolloutSpec::try_new(RolloutSpec {
            steps: body.steps,
            step_interval_s: body.step_interval_s,
            min_calls_per_step: body.min_calls_per_step,
            max_error_rate: body.max_error_rate,
            max_p99_ms: body.max_p99_ms,
            error_rate_margin: body.error_rate_margin,
            p99_ratio: body.p99_ratio,
        })
        .map_err(|errors| {
            invalid(
                errors
                    .into_iter()
                    .map(|(field, message)| Violation::new(format!("/{field}"), message))
                    .collect(),
            )
        })?;
        if body.to_version == 0 || body.to_version > latest {
            return Err(invalid(vec![Violation::new(
                "/to_version",
                format!("version {} does not exist", body.to_version),
            )]));
        }
        let alias = self
            .registry
            .store()
            .get_alias(tenant, function, &body.alias)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "function {function:?} has no alias {:?}; create it first (PUT /v1/functions/{function}/aliases/{})",
                    body.alias, body.alias
                ))
            })?;
        let old_weight: u64 = alias
            .routes
            .iter()
            .filter(|r| r.version != body.to_version)
            .map(|r| u64::from(r.weight))
            .sum();
        if old_weight == 0 {
            return Err(invalid(vec![Violation::new(
                "/to_version",
                format!(
                    "alias {:?} already sends all its traffic to version {}",
                    body.alias, body.to_version
                ),
            )]));
        }
        let now = now_ms();
        let record = RolloutRecord {
            id: new_id(),
            tenant: tenant.to_string(),
            function: function.to_string(),
            alias: body.alias.clone(),
            to_version: body.to_version,
            spec,
            previous_routes: alias.routes.clone(),
            state: RolloutState::Warming,
            step: 0,
            steps: Vec::new(),
            status: Some("warming the target version".into()),
            reason: None,
            created_at_ms: now,
            updated_at_ms: now,
            finished_at_ms: None,
            revision: 0,
        };
        if let Some(existing) = self
            .registry
            .store()
            .create_rollout(&record)
            .await
            .map_err(store_error)?
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "alias {:?} of {function:?} already has an active rollout: {existing}",
                    body.alias
                ),
            )
            .with_details(json!({ "rollout": existing })));
        }
        tracing::info!(tenant, function, alias = %record.alias, id = %record.id, to_version = record.to_version, "rollout started");
        self.metrics.observe(&record);
        Ok(record)
    }

    pub async fn get(
        &self,
        tenant: &str,
        function: &str,
        id: &str,
    ) -> Result<RolloutRecord, ApiError> {
        self.registry.require_function(tenant, function).await?;
        self.registry
            .store()
            .get_rollout(tenant, function, id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                ApiError::not_found(format!("function {function:?} has no rollout {id:?}"))
            })
    }

    pub async fn list(&self, tenant: &str, function: &str) -> Result<Vec<RolloutRecord>, ApiError> {
        self.registry.require_function(tenant, function).await?;
        self.registry
            .store()
            .list_rollouts(tenant, function)
            .await
            .map_err(store_error)
    }

    /// Pauses, resumes or aborts a rollout (409 when its state does not allow it).
    pub async fn control(
        &self,
        tenant: &str,
        function: &str,
        id: &str,
        action: Action,
    ) -> Result<RolloutRecord, ApiError> {
        loop {
            let mut record = self.get(tenant, function, id).await?;
            let allowed = match action {
                Action::Pause => {
                    matches!(record.state, RolloutState::Warming | RolloutState::Running)
                }
                Action::Resume => record.state == RolloutState::Paused,
                Action::Abort => record.is_active(),
            };
            if !allowed {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "rollout {id} is {}; cannot {action:?} it",
                        record.state.as_str()
                    )
                    .to_lowercase(),
                ));
            }
            let now = now_ms();
            match action {
                Action::Pause => {
                    record.state = RolloutState::Paused;
                    record.status = Some("paused".into());
                }
                Action::Resume => {
                    // The current step starts over (or warming, if it never began).
                    if record.steps.is_empty() {
                        record.state = RolloutState::Warming;
                    } else {
                        record.state = RolloutState::Running;
                        let baseline = self.read_stats(&record).await?;
                        let step = record.steps.last_mut().expect("steps checked");
                        step.started_at_ms = now;
                        step.baseline_new = baseline.0;
                        step.baseline_old = baseline.1;
                        step.new = Evidence::default();
                        step.old = Evidence::default();
                    }
                    record.status = Some("resumed".into());
                }
                Action::Abort => {
                    record.state = RolloutState::Aborted;
                    record.reason = Some("aborted by an operator".into());
                    record.status = Some("aborted".into());
                    record.finished_at_ms = Some(now);
                    if let Some(step) = record.steps.last_mut() {
                        if step.verdict.is_none() {
                            step.verdict = Some("aborted".into());
                            step.ended_at_ms = Some(now);
                        }
                    }
                }
            }
            if let Some(stored) = self
                .registry
                .store()
                .update_rollout(&record)
                .await
                .map_err(store_error)?
            {
                if action == Action::Abort {
                    self.apply_ending(&stored).await?;
                    self.metrics.ended(&stored);
                } else {
                    self.metrics.observe(&stored);
                }
                tracing::info!(tenant, function, id, ?action, "rollout controlled");
                return Ok(stored);
            }
            // Someone else wrote first: read again and decide again.
        }
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

    /// Runs the driver until the process ends.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                self.tick().await;
                tokio::time::sleep(TICK).await;
            }
        })
    }

    /// One pass over the active rollouts.
    pub async fn tick(&self) {
        let active = match self.registry.store().active_rollouts().await {
            Ok(active) => active,
            Err(e) => {
                tracing::warn!(error = %e, "reading active rollouts failed; will retry");
                return;
            }
        };
        for record in active {
            let lease = format!(
                "rollout/{}/{}/{}",
                record.tenant, record.function, record.id
            );
            match self
                .registry
                .store()
                .try_lease(&lease, &self.holder, LEASE_TTL_MS)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "taking a rollout lease failed");
                    continue;
                }
            }
            if let Err(e) = self.advance(record).await {
                tracing::warn!(error = %e, "advancing a rollout failed; will retry");
            }
        }
    }

    /// Takes one step of one rollout's state machine.
    async fn advance(&self, mut record: RolloutRecord) -> Result<(), ApiError> {
        let now = now_ms();
        match record.state {
            RolloutState::Warming => {
                let target = self
                    .registry
                    .get(&record.tenant, &record.function, record.to_version)
                    .await?
                    .ok_or_else(|| ApiError::not_found("the rollout's target version is gone"))?;
                self.warm(&record, &target).await;
                self.begin_step(&mut record, 0, now).await?;
                self.save(record).await
            }
            RolloutState::Paused => {
                if let Some(step) = record.steps.last() {
                    self.set_routes(&record, step.routes.clone()).await?;
                }
                Ok(())
            }
            RolloutState::Running => {
                let step_routes = record
                    .steps
                    .last()
                    .map(|s| s.routes.clone())
                    .unwrap_or_default();
                if !step_routes.is_empty() {
                    // Warm again after a restart of this process (the node restarted too).
                    if let Some(target) = self
                        .registry
                        .get(&record.tenant, &record.function, record.to_version)
                        .await?
                    {
                        self.warm(&record, &target).await;
                    }
                    self.set_routes(&record, step_routes).await?;
                }
                let (new_now, old_now) = self.read_stats(&record).await?;
                let step = record.steps.last_mut().ok_or_else(|| {
                    ApiError::new(ErrorCode::Internal, "a running rollout has no step")
                })?;
                let new = new_now.since(&step.baseline_new);
                let old = old_now.since(&step.baseline_old);
                step.new = Evidence::from(&new);
                step.old = Evidence::from(&old);
                let elapsed = Duration::from_millis(now.saturating_sub(step.started_at_ms));
                match rollout::judge(&record.spec, elapsed, &new, &old) {
                    Verdict::Hold(why) => {
                        record.status = Some(why);
                        self.save(record).await
                    }
                    Verdict::Pass => {
                        step.verdict = Some("passed".into());
                        step.ended_at_ms = Some(now);
                        let next = record.step + 1;
                        if next >= record.spec.steps.len() {
                            record.state = RolloutState::Promoted;
                            record.status = Some("promoted: every step passed".into());
                            record.finished_at_ms = Some(now);
                            self.apply_ending(&record).await?;
                            tracing::info!(function = %record.function, alias = %record.alias, id = %record.id, "rollout promoted");
                        } else {
                            self.begin_step(&mut record, next, now).await?;
                        }
                        self.save(record).await
                    }
                    Verdict::Breach(reason) => {
                        step.verdict = Some("breached".into());
                        step.ended_at_ms = Some(now);
                        let percent = step.percent;
                        record.state = RolloutState::RolledBack;
                        record.reason =
                            Some(format!("step {} ({percent} %): {reason}", record.step));
                        record.status = Some("rolled back".into());
                        record.finished_at_ms = Some(now);
                        // The alias goes back first: the old routes serve at once.
                        self.apply_ending(&record).await?;
                        tracing::warn!(function = %record.function, alias = %record.alias, id = %record.id, reason = %record.reason.as_deref().unwrap_or_default(), "rollout rolled back");
                        self.save(record).await
                    }
                }
            }
            _ => Ok(()),
        }
    }

    async fn warm(&self, record: &RolloutRecord, target: &Arc<FunctionVersion>) {
        if self
            .warmed
            .lock()
            .expect("warmed lock")
            .contains(&record.id)
        {
            return;
        }
        if let Some(warmer) = &self.warmer {
            match warmer.warm(target).await {
                Ok(()) => {
                    tracing::info!(function = %record.function, version = record.to_version, "rollout target warmed")
                }
                Err(e) => {
                    tracing::warn!(function = %record.function, version = record.to_version, error = %e, "warming the rollout target failed; going on")
                }
            }
        }
        self.warmed
            .lock()
            .expect("warmed lock")
            .insert(record.id.clone());
    }

    /// Starts step `index`: sets the alias to its routes and reads the baseline.
    async fn begin_step(
        &self,
        record: &mut RolloutRecord,
        index: usize,
        now: u64,
    ) -> Result<(), ApiError> {
        let percent = record.spec.steps[index];
        let routes = rollout::routes_for_step(&record.previous_routes, record.to_version, percent);
        self.set_routes(record, routes.clone()).await?;
        let (baseline_new, baseline_old) = self.read_stats(record).await?;
        record.state = RolloutState::Running;
        record.step = index;
        record.status = Some(format!(
            "step {index}: {percent} % on version {}",
            record.to_version
        ));
        record.steps.push(StepRecord {
            percent,
            routes,
            started_at_ms: now,
            ended_at_ms: None,
            verdict: None,
            new: Evidence::default(),
            old: Evidence::default(),
            baseline_new,
            baseline_old,
        });
        tracing::info!(function = %record.function, alias = %record.alias, id = %record.id, step = index, percent, "rollout step began");
        Ok(())
    }

    /// Stores the record; when another write came first, re-reads it and, if
    /// the rollout ended meanwhile, re-applies the routes its ending calls for.
    async fn save(&self, record: RolloutRecord) -> Result<(), ApiError> {
        let store = self.registry.store();
        match store.update_rollout(&record).await.map_err(store_error)? {
            Some(stored) => {
                if stored.is_active() {
                    self.metrics.observe(&stored);
                } else {
                    self.metrics.ended(&stored);
                }
                Ok(())
            }
            None => {
                if let Some(current) = store
                    .get_rollout(&record.tenant, &record.function, &record.id)
                    .await
                    .map_err(store_error)?
                {
                    if !current.is_active() {
                        self.apply_ending(&current).await?;
                    }
                }
                Ok(())
            }
        }
    }
}
