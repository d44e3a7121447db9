//! Per-version pools and their priority queues: the [`Engine`]'s state, the
//! waiters, the grants and leases that hand instances to calls and back.
//!
//! The `Engine` struct is defined here (its public methods are in
//! `engine/mod.rs`) because its state, the pools, and the leases that return
//! instances to it refer to one another. This module uses only
//! `engine::types`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::headers::Priority;
use contract::ApiError;
use contract::FunctionVersion;
use tokio::sync::{mpsc, oneshot};

use super::types::{overloaded, BatchItem, EngineConfig, Instance, Sources, Ticket, VersionKey};
use crate::metrics::RuntimeMetrics;

/// The node's instances, keyed by function version.
pub struct Engine {
    pub(super) sources: Sources,
    pub(super) config: EngineConfig,
    pub(super) state: Mutex<State>,
    pub(super) next_id: AtomicU64,
    pub(super) metrics: RuntimeMetrics,
    pub(super) batchers: Mutex<HashMap<VersionKey, mpsc::Sender<BatchItem>>>,
}

pub(super) struct State {
    pub(super) pools: HashMap<VersionKey, Pool>,
    pub(super) memory_used: u64,
}

pub(super) struct Slot {
    pub(super) instance: Arc<Instance>,
    pub(super) busy: bool,
    /// Not yet handed to any call: its first call is a cold start.
    pub(super) fresh: bool,
    pub(super) last_used: Instant,
}

/// An instance handed to one call. Its lease returns the instance to the pool
/// when dropped, wherever that happens (even if the call went away before it
/// received the grant), so a slot can never leak.
pub(super) struct Grant {
    pub(super) lease: Lease,
    pub(super) cold: bool,
}

pub(super) struct Waiter {
    pub(super) priority: Priority,
    pub(super) cost: u64,
    pub(super) seq: u64,
    pub(super) tx: oneshot::Sender<Result<Grant, ApiError>>,
}

pub(super) struct Pool {
    pub(super) version: Arc<FunctionVersion>,
    pub(super) slots: Vec<Slot>,
    pub(super) loading: usize,
    pub(super) queue: Vec<Waiter>,
    /// Exponentially weighted average run time of one cost unit.
    pub(super) average_run: Option<Duration>,
    pub(super) seq: u64,
}

impl Pool {
    pub(super) fn new(version: Arc<FunctionVersion>) -> Self {
        Pool {
            version,
            slots: Vec::new(),
            loading: 0,
            queue: Vec::new(),
            average_run: None,
            seq: 0,
        }
    }

    pub(super) fn max_instances(&self) -> usize {
        self.version.definition.scaling.max_instances.max(1) as usize
    }

    pub(super) fn min_instances(&self) -> usize {
        self.version.definition.scaling.min_instances as usize
    }

    pub(super) fn queue_capacity(&self) -> usize {
        let s = &self.version.definition.scaling;
        (s.max_instances.max(1) as usize).saturating_mul(s.concurrency.max(1) as usize)
    }

    /// Hands idle instances to waiting calls, best priority first.
    pub(super) fn dispatch(&mut self, engine: &Arc<Engine>, key: &VersionKey) {
        while let Some(index) = self.slots.iter().position(|s| !s.busy) {
            let Some(best) = best_waiter(&self.queue) else {
                return;
            };
            let waiter = self.queue.remove(best);
            let slot = &mut self.slots[index];
            let grant = Grant {
                lease: Lease::new(engine, key, &slot.instance, waiter.cost),
                cold: slot.fresh,
            };
            match waiter.tx.send(Ok(grant)) {
                Ok(()) => {
                    slot.busy = true;
                    slot.fresh = false;
                }
                // The caller is gone: the slot stays idle (and the pool is locked here).
                Err(Ok(unsent)) => unsent.lease.disarm(),
                Err(Err(_)) => {}
            }
        }
    }

    /// Refuses at once a call that could not finish before its deadline: the
    /// cost units queued ahead of it, its own included, shared among the
    /// instances, at the average run time of a unit.
    pub(super) fn check_deadline(&self, ticket: Ticket, deadline: Instant) -> Result<(), ApiError> {
        let priority = ticket.priority;
        let Some(average) = self.average_run else {
            return Ok(());
        };
        if self.slots.iter().any(|s| !s.busy) {
            return Ok(());
        }
        let ahead: u64 = self
            .queue
            .iter()
            .filter(|w| w.priority >= priority)
            .map(|w| w.cost)
            .sum();
        let workers = (self.slots.len() + self.loading).max(1) as u64;
        let units = (ahead + ticket.cost.max(1)).div_ceil(workers);
        let wait = average.saturating_mul(u32::try_from(units).unwrap_or(u32::MAX));
        if wait > deadline.saturating_duration_since(Instant::now()) {
            return Err(overloaded(
                format!(
                    "function {} is saturated: a call would wait about {} ms, beyond its deadline",
                    self.version.name,
                    wait.as_millis()
                ),
                wait,
            ));
        }
        Ok(())
    }

    /// Whether a call of `priority` would find room in the queue (possibly by shedding).
    pub(super) fn has_room(&self, priority: Priority) -> bool {
        self.slots.iter().any(|s| !s.busy)
            || self.queue.len() < self.queue_capacity()
            || self.queue.iter().any(|w| w.priority < priority)
    }

    fn record_run(&mut self, took: Duration, cost: u64) {
        let took = took / u32::try_from(cost.max(1)).unwrap_or(u32::MAX);
        self.average_run = Some(match self.average_run {
            None => took,
            Some(avg) => avg.mul_f64(0.8) + took.mul_f64(0.2),
        });
    }
}

/// The waiter served next: highest priority, then earliest arrival.
fn best_waiter(queue: &[Waiter]) -> Option<usize> {
    (0..queue.len()).max_by(|a, b| {
        let (a, b) = (&queue[*a], &queue[*b]);
        a.priority.cmp(&b.priority).then(b.seq.cmp(&a.seq))
    })
}

/// The waiter shed first: lowest priority, then latest arrival.
pub(super) fn worst_waiter(queue: &[Waiter]) -> Option<usize> {
    (0..queue.len()).min_by(|a, b| {
        let (a, b) = (&queue[*a], &queue[*b]);
        a.priority.cmp(&b.priority).then(b.seq.cmp(&a.seq))
    })
}

impl Engine {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(self: &Arc<Self>, key: &VersionKey, instance: &Instance, took: Duration, cost: u64) {
        let mut state = self.lock();
        if let Some(pool) = state.pools.get_mut(key) {
            pool.record_run(took, cost);
            if let Some(slot) = pool.slots.iter_mut().find(|s| s.instance.id == instance.id) {
                slot.busy = false;
                slot.last_used = Instant::now();
            }
            pool.dispatch(self, key);
        }
    }
}

/// Returns an instance to its pool when the call ends, however it ends.
pub(super) struct Lease {
    engine: Arc<Engine>,
    key: VersionKey,
    pub(super) instance: Arc<Instance>,
    pub(super) started: Instant,
    /// The cost units the run serves (its average is kept per unit).
    pub(super) cost: u64,
    armed: bool,
}

impl Lease {
    pub(super) fn new(
        engine: &Arc<Engine>,
        key: &VersionKey,
        instance: &Arc<Instance>,
        cost: u64,
    ) -> Self {
        Lease {
            engine: engine.clone(),
            key: key.clone(),
            instance: instance.clone(),
            started: Instant::now(),
            cost,
            armed: true,
        }
    }

    /// Drops the lease without returning the instance (the caller already has).
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.engine
                .release(&self.key, &self.instance, self.started.elapsed(), self.cost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(priority: Priority, seq: u64) -> Waiter {
        Waiter {
            priority,
            cost: 1,
            seq,
            tx: oneshot::channel().0,
        }
    }

    fn pool(average_ms: u64, costs: &[u64]) -> Pool {
        let body = format!(
            r#"{{"name": "f", "model": "sha256:{}", "inputs": {{"x": {{"tensor": "x"}}}}, "outputs": {{"y": {{"tensor": "y"}}}}}}"#,
            "0".repeat(64)
        );
        let definition =
            contract::definition::parse(body.as_bytes(), contract::definition::Syntax::Json)
                .unwrap();
        let mut pool = Pool::new(Arc::new(FunctionVersion {
            tenant: "t".into(),
            name: "f".into(),
            version: 1,
            created_at_ms: 1,
            definition,
            signature: contract::version::ModelSignature {
                inputs: vec![],
                outputs: vec![],
            },
            inputs: vec![],
            outputs: vec![],
            model_size_bytes: 0,
            schemas: Default::default(),
        }));
        pool.average_run = Some(Duration::from_millis(average_ms));
        for (seq, cost) in costs.iter().enumerate() {
            let mut w = waiter(Priority::Normal, seq as u64);
            w.cost = *cost;
            pool.queue.push(w);
        }
        pool
    }

    #[test]
    fn the_wait_estimate_counts_cost_units_not_calls() {
        let within = |pool: &Pool, cost: u64, ms: u64| {
            let deadline = Instant::now() + Duration::from_millis(ms);
            let ticket = Ticket {
                priority: Priority::Normal,
                cost,
            };
            pool.check_deadline(ticket, deadline).is_ok()
        };
        // Two light calls ahead at 10 ms a unit: a light call needs ~30 ms.
        let light = pool(10, &[1, 1]);
        assert!(within(&light, 1, 100));
        // The same two calls weighing 20 each: 410 ms, refused at once.
        let heavy = pool(10, &[20, 20]);
        assert!(!within(&heavy, 1, 100));
        assert!(within(&heavy, 1, 1000));
        // A costly call behind light ones waits for its own units too.
        assert!(!within(&light, 50, 100));
        // Calls of lower priority are not ahead of it.
        let mut low = pool(10, &[]);
        let mut w = waiter(Priority::Low, 1);
        w.cost = 1000;
        low.queue.push(w);
        assert!(within(&low, 1, 100));
    }

    #[test]
    fn queue_order_is_priority_then_arrival() {
        let queue = vec![
            waiter(Priority::Low, 1),
            waiter(Priority::High, 2),
            waiter(Priority::Normal, 3),
            waiter(Priority::High, 4),
        ];
        assert_eq!(best_waiter(&queue), Some(1));
        assert_eq!(worst_waiter(&queue), Some(0));
        let queue = vec![waiter(Priority::Low, 1), waiter(Priority::Low, 2)];
        assert_eq!(best_waiter(&queue), Some(0));
        assert_eq!(
            worst_waiter(&queue),
            Some(1),
            "the newest of the lowest is shed first"
        );
    }
}
