//! Function instances: pools per function version, cold starts on demand,
//! scale to zero, a memory budget with LRU eviction, and deadline-aware
//! priority queues.
//!
//! - An **instance** is one ONNX Runtime session of a function version. ONNX
//!   Runtime's `Run` is not safe to call concurrently on one session (the `ort`
//!   crate takes `&mut`), so an instance runs one call at a time; a version
//!   scales out to `scaling.max_instances` instances.
//! - Each version has its own **queue**, bounded at `max_instances ×
//!   concurrency` waiting calls, ordered by priority (`high`, `normal`, `low`)
//!   then arrival. A saturated version only queues its own calls. When the
//!   queue is full, a call of higher priority displaces the newest call of the
//!   lowest priority (which gets 503 `overloaded`); otherwise the newcomer does.
//! - **Deadlines**: a call whose estimated start (queue ahead of it × the
//!   version's average run time ÷ instances) falls after its deadline is
//!   refused at once with 503 `overloaded` instead of waiting to time out.
//! - **Cold starts** run in their own task (a caller giving up does not cancel
//!   them); concurrent first calls share them. Model bytes come from the model
//!   store. Each cold start is logged with its parts (fetch, load, first run)
//!   and observed in `taskmesh_runtime_cold_start_seconds`.
//! - **Scale to zero**: instances idle longer than `idle_timeout_s` are dropped,
//!   down to `min_instances` (which are started at registration).
//! - **Memory budget**: each instance is charged an estimate of its memory
//!   (see [`instance_memory_estimate`]). Loading beyond the budget evicts the
//!   least recently used idle instances of any version (never below a version's
//!   `min_instances`); when nothing can be evicted the call gets 503
//!   `overloaded` with `retry-after`.
//! - **Batching**: a version with `batching` sends its calls to a batcher task
//!   that gathers them into one run while it waits for an instance (see
//!   `batcher.rs`).
//!
//! The module's files, in layers: each uses only those above it in this list,
//! never one below, so there is no import cycle.
//! 1. `types.rs`: the shared vocabulary: [`EngineConfig`], [`Sources`],
//!    [`RunOutcome`], the snapshots, [`Instance`], the batched call.
//! 2. `pool.rs`: the [`Engine`] struct and its state; per-version pools, the
//!    priority queue and its waiters; grants and the leases that return
//!    instances (`release`).
//! 3. `instances.rs`: `acquire` (an idle instance or a place in the queue),
//!    cold starts (`start_instance`, `load_instance`), the memory budget with
//!    LRU eviction, `execute` (one run on an instance), and the reaper.
//! 4. `batcher.rs`: the per-version batcher (`collect_batches`, `run_batch`).
//! 5. `mod.rs` (this file): the public API of [`Engine`] (`new`, `run`,
//!    `warm`, `precheck`, `snapshot`, ...) and the re-exports.

mod batcher;
mod instances;
mod pool;
mod types;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::protocol::TensorInputs;
use contract::FunctionVersion;
use contract::{ApiError, ErrorCode};

use self::pool::State;
use self::types::{key_of, overloaded};
use crate::metrics::{InstanceLabels, RuntimeMetrics, VersionLabels};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

pub use self::instances::instance_memory_estimate;
pub use self::pool::Engine;
pub use self::types::{
    EngineConfig, EngineSnapshot, Instance, PoolSnapshot, RunOutcome, Sources, Ticket,
};
pub use contract::headers::Priority;

impl Engine {
    pub fn new(sources: Sources, config: EngineConfig) -> Arc<Self> {
        let engine = Arc::new(Engine {
            sources,
            config,
            state: Mutex::new(State {
                pools: HashMap::new(),
                memory_used: 0,
            }),
            next_id: AtomicU64::new(1),
            metrics: RuntimeMetrics::new(),
            batchers: Mutex::new(HashMap::new()),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(Engine::reap_forever(Arc::downgrade(&engine)));
        }
        engine
    }

    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn metrics(&self) -> &RuntimeMetrics {
        &self.metrics
    }

    /// The node's metrics (`RuntimeMetrics::encode`), plus its state now, as gauges:
    /// instances per version and state, queued calls per version, calls in
    /// flight, and the memory budget and its use.
    pub fn metrics_text(&self) -> String {
        let now = self.snapshot();
        let mut gauges = Registry::with_prefix("taskmesh_runtime");
        let instances = Family::<InstanceLabels, Gauge>::default();
        let queued = Family::<VersionLabels, Gauge>::default();
        for f in &now.functions {
            let version = |state| InstanceLabels {
                tenant: f.tenant.clone(),
                function: f.function.clone(),
                version: f.version.to_string(),
                state,
            };
            let idle = f.instances.saturating_sub(f.busy);
            for (state, n) in [("idle", idle), ("busy", f.busy), ("loading", f.loading)] {
                instances.get_or_create(&version(state)).set(n as i64);
            }
            let labels = VersionLabels {
                tenant: f.tenant.clone(),
                function: f.function.clone(),
                version: f.version.to_string(),
            };
            queued.get_or_create(&labels).set(f.queued as i64);
        }
        gauges.register(
            "instances",
            "Instances of each function version on this node, by state (idle, busy, loading)",
            instances,
        );
        gauges.register(
            "queue_depth",
            "Calls waiting in each function version's queue on this node",
            queued,
        );
        let in_flight = Gauge::<i64>::default();
        in_flight.set(now.in_flight as i64);
        gauges.register(
            "in_flight",
            "Calls running or queued on this node",
            in_flight,
        );
        let (used, budget) = (Gauge::<i64>::default(), Gauge::<i64>::default());
        used.set(now.memory_used_bytes as i64);
        budget.set(now.memory_budget_bytes as i64);
        gauges.register_with_unit(
            "memory_used",
            "Estimated memory held by this node's instances",
            Unit::Bytes,
            used,
        );
        gauges.register_with_unit(
            "memory_budget",
            "The memory budget of this node's instances",
            Unit::Bytes,
            budget,
        );
        let mut out = self.metrics.encode();
        if prometheus_client::encoding::text::encode_registry(&mut out, &gauges).is_err() {
            return self.metrics.encode();
        }
        out
    }

    /// Whether an instance of this version is loaded.
    pub fn is_warm(&self, version: &FunctionVersion) -> bool {
        self.lock()
            .pools
            .get(&key_of(version))
            .is_some_and(|p| !p.slots.is_empty())
    }

    /// Loaded instances, busy calls and memory, per version.
    pub fn snapshot(&self) -> EngineSnapshot {
        let state = self.lock();
        let functions: Vec<PoolSnapshot> = state
            .pools
            .values()
            .filter(|p| !p.slots.is_empty() || p.loading > 0 || !p.queue.is_empty())
            .map(|p| PoolSnapshot {
                function: p.version.name.clone(),
                version: p.version.version,
                tenant: p.version.tenant.clone(),
                instances: p.slots.len(),
                busy: p.slots.iter().filter(|s| s.busy).count(),
                loading: p.loading,
                queued: p.queue.len(),
            })
            .collect();
        EngineSnapshot {
            memory_budget_bytes: self.config.memory_budget_bytes,
            memory_used_bytes: state.memory_used,
            in_flight: functions.iter().map(|f| f.busy + f.queued).sum(),
            functions,
        }
    }

    /// Starts instances until the version has `min_instances` (at registration).
    pub fn ensure_min_instances(self: &Arc<Self>, version: &Arc<FunctionVersion>) {
        let mut state = self.lock();
        let wanted = version.definition.scaling.min_instances as usize;
        let key = key_of(version);
        let have = state
            .pools
            .get(&key)
            .map_or(0, |p| p.slots.len() + p.loading);
        for _ in have..wanted {
            if let Err(e) = self.start_instance(&mut state, version, false) {
                tracing::warn!(function = %version.name, version = version.version, error = %e.message, "cannot keep min_instances warm");
                break;
            }
        }
    }

    /// Refuses, before the body is even read, a call that would be refused in
    /// the queue: the queue is full of calls of its priority or higher, or it
    /// could not start before its deadline. A refused body is never read, so
    /// a saturated function does not hold the node's connections.
    pub fn precheck(
        &self,
        version: &FunctionVersion,
        ticket: Ticket,
        budget: Option<Duration>,
    ) -> Result<(), ApiError> {
        let limit = Duration::from_millis(version.definition.timeout_ms);
        let deadline = Instant::now() + budget.map_or(limit, |b| b.min(limit));
        let state = self.lock();
        let Some(pool) = state.pools.get(&key_of(version)) else {
            return Ok(());
        };
        if !pool.has_room(ticket.priority) {
            let wait = pool.average_run.unwrap_or(Duration::from_secs(1));
            return Err(overloaded(
                format!("the queue of function {} is full", version.name),
                wait,
            ));
        }
        pool.check_deadline(ticket, deadline)
    }

    /// Makes sure `version` has a loaded instance, cold-starting one if it has
    /// none (a rollout warms its target before the first step, so the canary
    /// is not judged on a cold start). The instance goes back to the pool.
    pub async fn warm(self: &Arc<Self>, version: &Arc<FunctionVersion>) -> Result<(), ApiError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let grant = self
            .acquire(version, deadline, Ticket::of(Priority::Normal))
            .await?;
        drop(grant.lease);
        Ok(())
    }

    /// Runs one invocation within `budget` (never more than the version's `timeout_ms`).
    ///
    /// Time spent queued counts against the budget. When the caller gives up,
    /// the run is terminated inside ONNX Runtime so the instance is free at once.
    pub async fn run(
        self: &Arc<Self>,
        version: &Arc<FunctionVersion>,
        inputs: TensorInputs,
        budget: Option<Duration>,
        ticket: Ticket,
    ) -> Result<RunOutcome, ApiError> {
        let limit = Duration::from_millis(version.definition.timeout_ms);
        let timeout = budget.map_or(limit, |b| b.min(limit));
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout(timeout, self.run_inner(version, inputs, deadline, ticket)).await
        {
            Ok(result) => result,
            Err(_) => Err(ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "function {} version {} did not finish within {} ms",
                    version.name,
                    version.version,
                    timeout.as_millis()
                ),
            )),
        }
    }

    async fn run_inner(
        self: &Arc<Self>,
        version: &Arc<FunctionVersion>,
        inputs: TensorInputs,
        deadline: Instant,
        ticket: Ticket,
    ) -> Result<RunOutcome, ApiError> {
        if version.definition.batching.is_some() {
            return self.run_batched(version, inputs, deadline, ticket).await;
        }
        let grant = self.acquire(version, deadline, ticket).await?;
        let cold_start = grant.cold;
        let outputs = self.execute(version, grant, inputs).await?;
        Ok(RunOutcome {
            outputs,
            cold_start,
        })
    }
}
