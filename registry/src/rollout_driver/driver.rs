//! The driver: every [`TICK`] it takes one step of each active rollout whose
//! lease this process holds (see the parent module's docs).

use std::sync::Arc;
use std::time::Duration;

use contract::{ApiError, ErrorCode};
use policies::rollout::{self, Verdict};

use super::{Rollouts, LEASE_TTL_MS, TICK};
use crate::rollouts::{Evidence, RolloutRecord, RolloutState, StepRecord};
use crate::store::{now_ms, store_error};
use contract::FunctionVersion;

impl Rollouts {
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
