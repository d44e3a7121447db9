//! Rollout records: the durable state of an automated canary.
//!
//! A rollout moves an alias from its previous routes to one version in steps
//! (`policies::rollout`). Its whole state is one record in the store,
//! written with compare-and-set on `revision` ([`crate::Store::update_rollout`]),
//! so the driver and the API (pause, resume, abort) never lose each other's
//! writes, and a restarted driver continues from the stored step. The driver
//! is `rollout_driver`.

use policies::rollout::{RolloutSpec, Stats};
use policies::split::Route;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// The target version is being warmed; the alias is unchanged.
    Warming,
    /// Steps are being taken.
    Running,
    /// Held at its current step by an operator.
    Paused,
    /// Done: the alias serves the target alone.
    Promoted,
    /// A step breached its thresholds; the alias is back on its previous routes.
    RolledBack,
    /// Stopped by an operator; the alias is back on its previous routes.
    Aborted,
}

impl RolloutState {
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutState::Warming | RolloutState::Running | RolloutState::Paused
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Warming => "warming",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }
}

/// What one version (or the old versions together) served in a step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Evidence {
    pub calls: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
}

impl From<&Stats> for Evidence {
    fn from(s: &Stats) -> Self {
        Evidence {
            calls: s.calls,
            errors: s.errors,
            error_rate: s.error_rate(),
            p99_ms: s.p99_ms(),
        }
    }
}

/// One step reached, with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub percent: u32,
    pub routes: Vec<Route>,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    /// `passed`, `breached` or `aborted`; none while the step holds.
    pub verdict: Option<String>,
    /// The new version's evidence so far.
    pub new: Evidence,
    /// The old versions' evidence so far.
    pub old: Evidence,
    /// Counter readings when the step began (evidence is measured from them).
    pub baseline_new: Stats,
    pub baseline_old: Stats,
}

/// The stored state of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: String,
    pub tenant: String,
    pub function: String,
    pub alias: String,
    pub to_version: u32,
    pub spec: RolloutSpec,
    /// The alias's routes before the rollout; a rollback restores them.
    pub previous_routes: Vec<Route>,
    pub state: RolloutState,
    /// Index into `spec.steps` of the current step (meaningful once running).
    pub step: usize,
    pub steps: Vec<StepRecord>,
    /// What the current step waits for, or why the rollout ended.
    pub status: Option<String>,
    /// Why it was rolled back or aborted.
    pub reason: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// Bumped by every write; writes compare it first.
    pub revision: u64,
}

impl RolloutRecord {
    pub fn is_active(&self) -> bool {
        self.state.is_active()
    }

    /// The percent on the target now (0 before the first step, or after a rollback).
    pub fn percent(&self) -> u32 {
        match self.state {
            RolloutState::Running | RolloutState::Paused => {
                self.spec.steps.get(self.step).copied().unwrap_or(0)
            }
            RolloutState::Promoted => 100,
            _ => 0,
        }
    }
}

pub use policies::rollout::stats_keys;

/// Reads [`Stats`] back from the values of [`stats_keys`].
pub fn stats_from(values: &[u64]) -> Stats {
    Stats {
        calls: values.first().copied().unwrap_or(0),
        errors: values.get(1).copied().unwrap_or(0),
        latency: values.iter().skip(2).copied().collect(),
    }
}
