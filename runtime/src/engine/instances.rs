//! An instance's life: how a call gets one (`acquire`: an idle instance, or a
//! place in the queue, shedding the lowest priority, with a cold start on
//! demand), loading it (`start_instance`, `load_instance`) within the memory
//! budget (`make_room`: LRU eviction), running a call on it (`execute`), and
//! dropping it when idle (`reap`).
//!
//! Uses `engine::types` and `engine::pool`; the batcher and `engine/mod.rs`
//! use it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::ports::Blobs;
use contract::protocol::{TensorInputs, TensorOutputs};
use contract::FunctionVersion;
use contract::{ApiError, ErrorCode};
use ort::session::RunOptions;
use tokio::sync::oneshot;

use super::pool::{worst_waiter, Engine, Grant, Lease, Pool, Slot, State, Waiter};
use super::types::{key_of, overloaded, ColdParts, Instance, Ticket};
use crate::session::{self, SessionOptions};

/// The memory an instance is charged: twice the model's bytes (weights as
/// loaded plus ONNX Runtime's arena for activations, typically of the same
/// order for these models) plus 4 MiB of fixed session overhead.
pub fn instance_memory_estimate(model_bytes: u64) -> u64 {
    model_bytes.saturating_mul(2).saturating_add(4 << 20)
}

impl Engine {
    /// Finds an idle instance, or queues for one (starting a new instance when allowed).
    pub(super) async fn acquire(
        self: &Arc<Self>,
        version: &Arc<FunctionVersion>,
        deadline: Instant,
        ticket: Ticket,
    ) -> Result<Grant, ApiError> {
        let priority = ticket.priority;
        let rx = {
            let mut state = self.lock();
            let key = key_of(version);
            let pool = state
                .pools
                .entry(key.clone())
                .or_insert_with(|| Pool::new(version.clone()));
            if let Some(slot) = pool.slots.iter_mut().find(|s| !s.busy) {
                slot.busy = true;
                let cold = std::mem::replace(&mut slot.fresh, false);
                return Ok(Grant {
                    lease: Lease::new(self, &key, &slot.instance, ticket.cost),
                    cold,
                });
            }
            pool.check_deadline(ticket, deadline)?;
            if pool.queue.len() >= pool.queue_capacity() {
                let victim =
                    worst_waiter(&pool.queue).filter(|i| pool.queue[*i].priority < priority);
                let Some(victim) = victim else {
                    let wait = pool.average_run.unwrap_or(Duration::from_secs(1));
                    return Err(overloaded(
                        format!("the queue of function {} is full", version.name),
                        wait,
                    ));
                };
                let shed = pool.queue.remove(victim);
                let _ = shed.tx.send(Err(overloaded(
                    format!(
                        "shed from the full queue of function {} for a call of higher priority",
                        version.name
                    ),
                    pool.average_run.unwrap_or(Duration::from_secs(1)),
                )));
            }
            let pool = state.pools.get_mut(&key).expect("pool exists");
            let uncovered = pool.queue.len() + 1 > pool.loading;
            if uncovered && pool.slots.len() + pool.loading < pool.max_instances() {
                let starting = self.start_instance(&mut state, version, true);
                let pool = state.pools.get_mut(&key).expect("pool exists");
                if let Err(e) = starting {
                    if pool.slots.is_empty() && pool.loading == 0 {
                        return Err(e);
                    }
                }
            }
            let pool = state.pools.get_mut(&key).expect("pool exists");
            let (tx, rx) = oneshot::channel();
            pool.seq += 1;
            let seq = pool.seq;
            pool.queue.push(Waiter {
                priority,
                cost: ticket.cost,
                seq,
                tx,
            });
            rx
        };
        let queued_at = Instant::now();
        match rx.await {
            Ok(result) => {
                let waited = queued_at.elapsed().as_secs_f64();
                let metrics = &self.metrics;
                metrics.queue_wait(&version.tenant, &version.name, waited);
                result
            }
            Err(_) => Err(ApiError::new(
                ErrorCode::Internal,
                "the instance pool went away",
            )),
        }
    }

    /// Reserves memory and starts loading one instance (call with the lock held).
    pub(super) fn start_instance(
        self: &Arc<Self>,
        state: &mut State,
        version: &Arc<FunctionVersion>,
        on_demand: bool,
    ) -> Result<(), ApiError> {
        let model_bytes = self
            .sources
            .models
            .size_of(version.model_hex())
            .unwrap_or(version.model_size_bytes);
        let need = instance_memory_estimate(model_bytes);
        self.make_room(state, need)?;
        state.memory_used += need;
        let key = key_of(version);
        state
            .pools
            .entry(key.clone())
            .or_insert_with(|| Pool::new(version.clone()))
            .loading += 1;
        let engine = self.clone();
        let version = version.clone();
        tokio::spawn(async move {
            let loaded = load_instance(
                engine.sources.models.as_ref(),
                engine.config.session,
                &version,
                need,
                engine.next_id.fetch_add(1, Ordering::Relaxed),
                on_demand,
            )
            .await;
            let dispatch_key = key.clone();
            let mut state = engine.lock();
            let pool = state
                .pools
                .entry(key)
                .or_insert_with(|| Pool::new(version.clone()));
            pool.loading -= 1;
            match loaded {
                Ok(instance) => {
                    pool.slots.push(Slot {
                        instance: Arc::new(instance),
                        busy: false,
                        fresh: on_demand,
                        last_used: Instant::now(),
                    });
                    pool.dispatch(&engine, &dispatch_key);
                }
                Err(e) => {
                    // Nothing will serve these calls: tell them why.
                    if pool.slots.is_empty() && pool.loading == 0 {
                        for waiter in pool.queue.drain(..) {
                            let _ = waiter.tx.send(Err(e.clone()));
                        }
                    }
                    state.memory_used = state.memory_used.saturating_sub(need);
                }
            }
        });
        Ok(())
    }

    /// Evicts least recently used idle instances until `need` more bytes fit.
    fn make_room(&self, state: &mut State, need: u64) -> Result<(), ApiError> {
        let budget = self.config.memory_budget_bytes;
        while state.memory_used + need > budget {
            let victim = state
                .pools
                .iter()
                .filter(|(_, p)| p.slots.len() > p.min_instances())
                .flat_map(|(k, p)| {
                    p.slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| !s.busy)
                        .map(move |(i, s)| (k.clone(), i, s.last_used))
                })
                .min_by_key(|(_, _, used)| *used);
            let Some((key, index, _)) = victim else {
                return Err(overloaded(
                    format!(
                        "the node's memory budget ({} MiB) is taken by busy instances",
                        budget >> 20
                    ),
                    Duration::from_secs(1),
                ));
            };
            let pool = state.pools.get_mut(&key).expect("victim pool");
            let slot = pool.slots.remove(index);
            state.memory_used = state.memory_used.saturating_sub(slot.instance.memory);
            self.metrics.evicted(&key.0, &key.1);
            tracing::info!(function = %key.1, version = key.2, "evicted the least recently used idle instance");
        }
        Ok(())
    }

    /// Runs `inputs` on a granted instance and returns it to the pool afterwards.
    pub(super) async fn execute(
        self: &Arc<Self>,
        version: &Arc<FunctionVersion>,
        grant: Grant,
        inputs: TensorInputs,
    ) -> Result<TensorOutputs, ApiError> {
        let mut lease = grant.lease;
        lease.started = Instant::now();
        let options =
            Arc::new(RunOptions::new().map_err(|e| {
                ApiError::new(ErrorCode::FunctionFailed, format!("run options: {e}"))
            })?);
        // If this call is abandoned (its deadline passed), the run is terminated
        // inside ONNX Runtime, so the instance is free for the next call.
        let _terminate = TerminateOnDrop(options.clone());
        let instance = lease.instance.clone();
        let run_started = Instant::now();
        let outputs = tokio::task::spawn_blocking(move || {
            let mut session = instance.session.lock().unwrap_or_else(|p| p.into_inner());
            session::run_with(&mut session, inputs, &options)
        })
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::FunctionFailed,
                format!("inference task failed: {e}"),
            )
        })?
        .map_err(|reason| {
            ApiError::new(
                ErrorCode::FunctionFailed,
                format!("onnx runtime failed: {reason}"),
            )
        })?;
        let first_run = run_started.elapsed();
        if let Some(parts) = lease
            .instance
            .cold
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let total = parts.fetch + parts.load + first_run;
            self.metrics
                .cold_start(&version.tenant, &version.name, total.as_secs_f64());
            tracing::info!(
                function = %version.name,
                version = version.version,
                provider = if version.definition.resources.gpu { "cuda" } else { "cpu" },
                fetch_ms = parts.fetch.as_secs_f64() * 1e3,
                load_ms = parts.load.as_secs_f64() * 1e3,
                first_run_ms = first_run.as_secs_f64() * 1e3,
                total_ms = total.as_secs_f64() * 1e3,
                "cold start"
            );
        }
        drop(lease);
        Ok(outputs)
    }

    /// Drops instances idle longer than their version's `idle_timeout_s`.
    fn reap(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        let mut freed = 0;
        for pool in state.pools.values_mut() {
            let idle_timeout = Duration::from_secs(pool.version.definition.scaling.idle_timeout_s);
            let keep = pool.min_instances();
            while pool.slots.len() > keep {
                let Some(index) = pool
                    .slots
                    .iter()
                    .position(|s| !s.busy && now.duration_since(s.last_used) >= idle_timeout)
                else {
                    break;
                };
                let slot = pool.slots.remove(index);
                freed += slot.instance.memory;
                tracing::info!(function = %pool.version.name, version = pool.version.version, "idle instance dropped");
            }
        }
        state.memory_used = state.memory_used.saturating_sub(freed);
    }

    pub(super) async fn reap_forever(engine: std::sync::Weak<Engine>) {
        loop {
            let interval = match engine.upgrade() {
                Some(e) => {
                    e.reap();
                    e.config.reap_interval
                }
                None => return,
            };
            tokio::time::sleep(interval).await;
        }
    }
}

/// Loads an instance; `on_demand` when a call waits for it (a cold start).
async fn load_instance(
    models: &dyn Blobs,
    options: SessionOptions,
    version: &FunctionVersion,
    memory: u64,
    id: u64,
    on_demand: bool,
) -> Result<Instance, ApiError> {
    let started = Instant::now();
    let bytes = models.get(version.model_hex()).await.map_err(|e| {
        tracing::error!(function = %version.name, version = version.version, error = %e, "model fetch failed");
        ApiError::new(ErrorCode::Unavailable, format!("model {} is not available on this node", version.definition.model)).with_retry_after(1)
    })?;
    let fetch = started.elapsed();
    let options = SessionOptions {
        gpu: version.definition.resources.gpu,
        ..options
    };
    if options.gpu && !session::cuda_available() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "function {} needs a GPU and this node has no CUDA execution provider; it cannot serve GPU functions",
                version.name
            ),
        )
        .with_retry_after(1));
    }
    let session = tokio::task::spawn_blocking(move || session::build_session(&bytes, options))
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::FunctionFailed,
                format!("session task failed: {e}"),
            )
        })?
        .map_err(|reason| {
            ApiError::new(
                ErrorCode::FunctionFailed,
                format!("loading the model failed: {reason}"),
            )
        })?;
    let load = started.elapsed() - fetch;
    if !on_demand {
        tracing::info!(
            function = %version.name,
            version = version.version,
            fetch_ms = fetch.as_secs_f64() * 1e3,
            load_ms = load.as_secs_f64() * 1e3,
            "instance warmed ahead of calls"
        );
    }
    let cold = on_demand.then_some(ColdParts { fetch, load });
    Ok(Instance {
        id,
        session: Mutex::new(session),
        memory,
        cold: Mutex::new(cold),
    })
}

/// Terminates a run when the call waiting for it goes away.
struct TerminateOnDrop(Arc<RunOptions>);

impl Drop for TerminateOnDrop {
    fn drop(&mut self) {
        // Terminating a finished run is harmless: these options are used once.
        let _ = self.0.terminate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_estimate_grows_with_the_model() {
        assert_eq!(instance_memory_estimate(0), 4 << 20);
        assert_eq!(instance_memory_estimate(1 << 20), 6 << 20);
    }
}
