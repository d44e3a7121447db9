//! The API's operations on rollouts: start, get, list, and pause, resume and
//! abort ([`Action`]).

use contract::tensor::Violation;
use contract::{ApiError, ErrorCode};
use policies::rollout::RolloutSpec;
use serde::Deserialize;
use serde_json::json;

use super::{Action, Rollouts};
use crate::rollouts::{Evidence, RolloutRecord, RolloutState};
use crate::store::{now_ms, store_error};

/// The body of `POST /v1/functions/{name}/rollouts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
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
}
