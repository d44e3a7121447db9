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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::ports::{Blobs, Catalog};
use contract::protocol::{TensorInputs, TensorOutputs};
use contract::FunctionVersion;
use contract::{ApiError, ErrorCode};
use ort::session::{RunOptions, Session};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::batch;
use crate::metrics::RuntimeMetrics;
use crate::session::{self, SessionOptions};

type VersionKey = (String, String, u32);

pub use contract::headers::Priority;

/// Node-wide settings of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub session: SessionOptions,
    /// Memory the node may spend on loaded instances (estimated).
    pub memory_budget_bytes: u64,
    /// How often idle instances are looked for.
    pub reap_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            session: SessionOptions::default(),
            memory_budget_bytes: 4 << 30,
            reap_interval: Duration::from_millis(250),
        }
    }
}

/// The memory an instance is charged: twice the model's bytes (weights as
/// loaded plus ONNX Runtime's arena for activations, typically of the same
/// order for these models) plus 4 MiB of fixed session overhead.
pub fn instance_memory_estimate(model_bytes: u64) -> u64 {
    model_bytes.saturating_mul(2).saturating_add(4 << 20)
}

/// How a cold start was spent, reported after the instance's first run.
#[derive(Debug, Clone, Copy)]
struct ColdParts {
    fetch: Duration,
    load: Duration,
}

/// A loaded session of one function version.
pub struct Instance {
    id: u64,
    session: Mutex<Session>,
    memory: u64,
    cold: Mutex<Option<ColdParts>>,
}

/// The result of one run.
pub struct Outcome {
    pub outputs: TensorOutputs,
    /// Whether this call waited for an instance to be loaded.
    pub cold_start: bool,
}

struct Slot {
    instance: Arc<Instance>,
    busy: bool,
    /// Not yet handed to any call: its first call is a cold start.
    fresh: bool,
    last_used: Instant,
}

/// An instance handed to one call. Its lease returns the instance to the pool
/// when dropped, wherever that happens (even if the call went away before it
/// received the grant), so a slot can never leak.
struct Grant {
    lease: Lease,
    cold: bool,
}

struct Waiter {
    priority: Priority,
    seq: u64,
    tx: oneshot::Sender<Result<Grant, ApiError>>,
}

struct Pool {
    version: Arc<FunctionVersion>,
    slots: Vec<Slot>,
    loading: usize,
    queue: Vec<Waiter>,
    /// Exponentially weighted average run time.
    average_run: Option<Duration>,
    seq: u64,
}

impl Pool {
    fn new(version: Arc<FunctionVersion>) -> Self {
        Pool {
            version,
            slots: Vec::new(),
            loading: 0,
            queue: Vec::new(),
            average_run: None,
            seq: 0,
        }
    }

    fn max_instances(&self) -> usize {
        self.version.definition.scaling.max_instances.max(1) as usize
    }

    fn min_instances(&self) -> usize {
        self.version.definition.scaling.min_instances as usize
    }

    fn queue_capacity(&self) -> usize {
        let s = &self.version.definition.scaling;
        (s.max_instances.max(1) as usize).saturating_mul(s.concurrency.max(1) as usize)
    }

    /// Hands idle instances to waiting calls, best priority first.
    fn dispatch(&mut self, engine: &Arc<Engine>, key: &VersionKey) {
        while let Some(index) = self.slots.iter().position(|s| !s.busy) {
            let Some(best) = best_waiter(&self.queue) else {
                return;
            };
            let waiter = self.queue.remove(best);
            let slot = &mut self.slots[index];
            let grant = Grant {
                lease: Lease::new(engine, key, &slot.instance),
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

    /// Refuses at once a call that could not start before its deadline.
    fn check_deadline(&self, priority: Priority, deadline: Instant) -> Result<(), ApiError> {
        let Some(average) = self.average_run else {
            return Ok(());
        };
        if self.slots.iter().any(|s| !s.busy) {
            return Ok(());
        }
        let ahead = self.queue.iter().filter(|w| w.priority >= priority).count();
        let workers = (self.slots.len() + self.loading).max(1);
        let wait = average.mul_f64(((ahead + 1) as f64 / workers as f64).ceil());
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
    fn has_room(&self, priority: Priority) -> bool {
        self.slots.iter().any(|s| !s.busy)
            || self.queue.len() < self.queue_capacity()
            || self.queue.iter().any(|w| w.priority < priority)
    }

    fn record_run(&mut self, took: Duration) {
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
fn worst_waiter(queue: &[Waiter]) -> Option<usize> {
    (0..queue.len()).min_by(|a, b| {
        let (a, b) = (&queue[*a], &queue[*b]);
        a.priority.cmp(&b.priority).then(b.seq.cmp(&a.seq))
    })
}

fn overloaded(message: impl Into<String>, retry_after: Duration) -> ApiError {
    let seconds = retry_after.as_millis().div_ceil(1000).max(1) as u64;
    ApiError::new(ErrorCode::Overloaded, message).with_retry_after(seconds)
}

struct State {
    pools: HashMap<VersionKey, Pool>,
    memory_used: u64,
}

/// What the node reports about one version (for `GET /v1/nodes`).
#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    pub function: String,
    pub version: u32,
    pub tenant: String,
    pub instances: usize,
    pub busy: usize,
    pub loading: usize,
    pub queued: usize,
}

/// What the node reports about itself.
#[derive(Debug, Clone, Serialize)]
pub struct EngineSnapshot {
    pub memory_budget_bytes: u64,
    pub memory_used_bytes: u64,
    pub in_flight: usize,
    pub functions: Vec<PoolSnapshot>,
}

/// Where a node gets what it runs: versions from the catalog, model bytes and
/// artifacts (tokenizers) by digest. The registry implements all three.
#[derive(Clone)]
pub struct Sources {
    pub catalog: Arc<dyn Catalog>,
    pub models: Arc<dyn Blobs>,
    pub artifacts: Arc<dyn Blobs>,
}

/// The node's instances, keyed by function version.
pub struct Engine {
    sources: Sources,
    config: EngineConfig,
    state: Mutex<State>,
    next_id: AtomicU64,
    metrics: RuntimeMetrics,
    batchers: Mutex<HashMap<VersionKey, mpsc::Sender<BatchItem>>>,
}

fn key_of(version: &FunctionVersion) -> VersionKey {
    (
        version.tenant.clone(),
        version.name.clone(),
        version.version,
    )
}

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

    pub fn metrics(&self) -> &RuntimeMetrics {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
        priority: Priority,
        budget: Option<Duration>,
    ) -> Result<(), ApiError> {
        let limit = Duration::from_millis(version.definition.timeout_ms);
        let deadline = Instant::now() + budget.map_or(limit, |b| b.min(limit));
        let state = self.lock();
        let Some(pool) = state.pools.get(&key_of(version)) else {
            return Ok(());
        };
        if !pool.has_room(priority) {
            let wait = pool.average_run.unwrap_or(Duration::from_secs(1));
            return Err(overloaded(
                format!("the queue of function {} is full", version.name),
                wait,
            ));
        }
        pool.check_deadline(priority, deadline)
    }

    /// Runs one invocation within `budget` (never more than the version's `timeout_ms`).
    ///
    /// Time spent queued counts against the budget. When the caller gives up,
    /// the run is terminated inside ONNX Runtime so the instance is free at once.
    /// Makes sure `version` has a loaded instance, cold-starting one if it has
    /// none (a rollout warms its target before the first step, so the canary
    /// is not judged on a cold start). The instance goes back to the pool.
    pub async fn warm(self: &Arc<Self>, version: &Arc<FunctionVersion>) -> Result<(), ApiError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let grant = self.acquire(version, deadline, Priority::Normal).await?;
        drop(grant.lease);
        Ok(())
    }

    pub async fn run(
        self: &Arc<Self>,
        version: &Arc<FunctionVersion>,
        inputs: TensorInputs,
        budget: Option<Duration>,
        priority: Priority,
    ) -> Result<Outcome, ApiError> {
        let limit = Duration::from_millis(version.definition.timeout_ms);
        let timeout = budget.map_or(limit, |b| b.min(limit));
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout(timeout, self.run_inner(version, inputs, deadline, priority))
            .await
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
        priority: Priority,
    ) -> Result<Outcome, ApiError> {
        if version.definition.batching.is_some() {
            return self.run_batched(version, inputs, deadline, priority).await;
        }
        let grant = self.acquire(version, deadline, priority).await?;
        let cold_start = grant.cold;
        let outputs = self.execute(version, grant, inputs).await?;
        Ok(Outcome {
            outputs,
            cold_start,
        })
    }

    /// Runs `inputs` on a granted instance and returns it to the pool afterwards.
    async fn execute(
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
            self.metrics.cold_start(&version.name, total.as_secs_f64());
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

    /// Finds an idle instance, or queues for one (starting a new instance when allowed).
    async fn acquire(
        self: &Arc<Self>,
        version: &Arc<FunctionVersion>,
        deadline: Instant,
        priority: Priority,
    ) -> Result<Grant, ApiError> {
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
                    lease: Lease::new(self, &key, &slot.instance),
                    cold,
                });
            }
            pool.check_deadline(priority, deadline)?;
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
            pool.queue.push(Waiter { priority, seq, tx });
            rx
        };
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(ApiError::new(
                ErrorCode::Internal,
                "the instance pool went away",
            )),
        }
    }

    /// Reserves memory and starts loading one instance (call with the lock held).
    fn start_instance(
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
            self.metrics.evicted(&key.1);
            tracing::info!(function = %key.1, version = key.2, "evicted the least recently used idle instance");
        }
        Ok(())
    }

    fn release(self: &Arc<Self>, key: &VersionKey, instance: &Instance, took: Duration) {
        let mut state = self.lock();
        if let Some(pool) = state.pools.get_mut(key) {
            pool.record_run(took);
            if let Some(slot) = pool.slots.iter_mut().find(|s| s.instance.id == instance.id) {
                slot.busy = false;
                slot.last_used = Instant::now();
            }
            pool.dispatch(self, key);
        }
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

    async fn reap_forever(engine: std::sync::Weak<Engine>) {
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

impl Engine {
    /// Sends a call to its version's batcher and waits for its share of a run.
    async fn run_batched(
        self: &Arc<Self>,
        version: &Arc<FunctionVersion>,
        inputs: TensorInputs,
        deadline: Instant,
        priority: Priority,
    ) -> Result<Outcome, ApiError> {
        let rows = batch::rows(&inputs)?;
        let (tx, rx) = oneshot::channel();
        let item = BatchItem {
            shape: batch::shape_key(&inputs),
            inputs,
            rows,
            arrived: Instant::now(),
            deadline,
            priority,
            tx,
        };
        let sender = self.batcher(version);
        sender.try_send(item).map_err(|_| {
            overloaded(
                format!("the batch queue of function {} is full", version.name),
                Duration::from_secs(1),
            )
        })?;
        rx.await
            .unwrap_or_else(|_| Err(ApiError::new(ErrorCode::Internal, "the batcher went away")))
    }

    /// The version's batcher, started on first use.
    fn batcher(self: &Arc<Self>, version: &Arc<FunctionVersion>) -> mpsc::Sender<BatchItem> {
        let mut batchers = self.batchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = batchers.get(&key_of(version)).filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let capacity = version.definition.scaling.max_instances.max(1) as usize
            * version.definition.scaling.concurrency.max(1) as usize
            * version
                .definition
                .batching
                .as_ref()
                .map_or(1, |b| b.max_batch_size as usize);
        let (tx, rx) = mpsc::channel(capacity.max(1));
        batchers.insert(key_of(version), tx.clone());
        tokio::spawn(collect_batches(Arc::downgrade(self), version.clone(), rx));
        tx
    }

    /// Busy instances of `version` (for the batcher: is this version under load?).
    fn busy_instances(&self, version: &FunctionVersion) -> usize {
        self.lock()
            .pools
            .get(&key_of(version))
            .map_or(0, |p| p.slots.iter().filter(|s| s.busy).count())
    }

    /// Runs one batch on a granted instance: concatenated inputs, one run,
    /// outputs split back per call.
    async fn run_batch(self: Arc<Self>, version: Arc<FunctionVersion>, grant: Grant, batch: Batch) {
        // Calls whose callers gave up (their deadline passed while the batch
        // waited for an instance) are not run.
        let items: Vec<BatchItem> = batch
            .items
            .into_iter()
            .filter(|i| !i.tx.is_closed())
            .collect();
        if items.is_empty() {
            return;
        }
        let deadline = items
            .iter()
            .map(|i| i.deadline)
            .max()
            .unwrap_or_else(Instant::now);
        let calls = items.len();
        let cold = grant.cold;
        let (mut inputs, mut rows, mut replies) = (Vec::new(), Vec::new(), Vec::new());
        for item in items {
            inputs.push(item.inputs);
            rows.push(item.rows);
            replies.push(item.tx);
        }
        let work = async {
            let merged = batch::concat(inputs)?;
            let outputs = self.execute(&version, grant, merged).await?;
            batch::split(&outputs, &rows)
        };
        // Nobody waits past the latest caller's deadline: stop (and terminate) then.
        let result = match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::new(
                ErrorCode::Timeout,
                "the batch did not finish before its deadline",
            )),
        };
        self.metrics.batch(&version.name, calls);
        match result {
            Ok(parts) => {
                for (reply, outputs) in replies.into_iter().zip(parts) {
                    let _ = reply.send(Ok(Outcome {
                        outputs,
                        cold_start: cold,
                    }));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One call waiting to be batched.
struct BatchItem {
    inputs: TensorInputs,
    /// What calls must share to run together ([`batch::shape_key`]).
    shape: Vec<(String, contract::tensor::DType, Vec<usize>)>,
    rows: usize,
    arrived: Instant,
    deadline: Instant,
    priority: Priority,
    tx: oneshot::Sender<Result<Outcome, ApiError>>,
}

/// Calls gathered for one run: same shapes but the first dimension, at most
/// `max_rows` rows, in arrival order.
struct Batch {
    items: Vec<BatchItem>,
    rows: usize,
    max_rows: usize,
}

impl Batch {
    fn new(first: BatchItem, max_rows: usize) -> Self {
        Batch {
            rows: first.rows,
            items: vec![first],
            max_rows,
        }
    }

    fn is_full(&self) -> bool {
        self.rows >= self.max_rows
    }

    /// Takes `item` if it fits; otherwise hands it back (it opens the next
    /// batch, and this one takes nothing more, so calls keep their order).
    fn offer(&mut self, item: BatchItem) -> Option<BatchItem> {
        if item.shape != self.items[0].shape || self.rows + item.rows > self.max_rows {
            return Some(item);
        }
        self.rows += item.rows;
        self.items.push(item);
        None
    }

    fn first_arrival(&self) -> Instant {
        self.items[0].arrived
    }

    /// The earliest and the latest deadline of the batch's calls.
    fn deadlines(&self) -> (Instant, Instant) {
        let first = self.items[0].deadline;
        self.items.iter().fold((first, first), |(lo, hi), i| {
            (lo.min(i.deadline), hi.max(i.deadline))
        })
    }

    fn priority(&self) -> Priority {
        self.items
            .iter()
            .map(|i| i.priority)
            .max()
            .unwrap_or(Priority::Normal)
    }

    fn fail(self, error: ApiError) {
        for item in self.items {
            let _ = item.tx.send(Err(error.clone()));
        }
    }
}

/// A batch being gathered, and the call that did not fit in it.
struct Gather<'a> {
    rx: &'a mut mpsc::Receiver<BatchItem>,
    batch: Batch,
    next: Option<BatchItem>,
}

impl Gather<'_> {
    /// Whether the batch still takes calls.
    fn open(&self) -> bool {
        self.next.is_none() && !self.batch.is_full()
    }

    fn take(&mut self, item: BatchItem) {
        self.next = self.batch.offer(item);
    }

    /// Takes the calls already waiting, without waiting for more.
    fn take_ready(&mut self) {
        while self.open() {
            match self.rx.try_recv() {
                Ok(item) => self.take(item),
                Err(_) => return,
            }
        }
    }

    /// Takes calls as they arrive until `until`, or the batch closes.
    async fn take_until(&mut self, until: Instant) {
        while self.open() {
            match tokio::time::timeout_at(until.into(), self.rx.recv()).await {
                Ok(Some(item)) => self.take(item),
                Ok(None) | Err(_) => return,
            }
        }
    }
}

/// Gathers a version's calls into batches and runs them ("gather while busy").
///
/// - A batch opens with the first waiting call and takes every call already
///   waiting whose tensors differ only in the first dimension, up to
///   `max_batch_size` rows.
/// - It then asks the pool for an instance, and keeps taking calls while it
///   waits (during a cold start, or while every instance runs another batch).
/// - Holding an instance, it runs at once when it is full or when no other
///   instance of the version is busy: an idle function runs a lone call with no
///   delay, and a single busy instance runs everything that arrived during its
///   last run. Only when other instances are busy (calls arrive faster than one
///   instance serves them) does it wait for more, until `max_delay_us` after its
///   first call arrived.
async fn collect_batches(
    engine: std::sync::Weak<Engine>,
    version: Arc<FunctionVersion>,
    mut rx: mpsc::Receiver<BatchItem>,
) {
    let Some(policy) = version.definition.batching.clone() else {
        return;
    };
    let max_rows = policy.max_batch_size as usize;
    let delay = Duration::from_micros(policy.max_delay_us);
    let mut next: Option<BatchItem> = None;
    loop {
        let first = match next.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let mut gather = Gather {
            rx: &mut rx,
            batch: Batch::new(first, max_rows),
            next: None,
        };
        gather.take_ready();
        let (deadline, priority) = (gather.batch.deadlines().0, gather.batch.priority());
        let grant = {
            let acquire = engine.acquire(&version, deadline, priority);
            tokio::pin!(acquire);
            loop {
                let open = gather.open();
                // Nobody waits for an instance past the latest caller's deadline.
                let latest = gather.batch.deadlines().1;
                tokio::select! {
                    biased;
                    grant = &mut acquire => break grant,
                    item = gather.rx.recv(), if open => match item {
                        Some(item) => gather.take(item),
                        None => break (&mut acquire).await,
                    },
                    _ = tokio::time::sleep_until(latest.into()) => {
                        break Err(ApiError::new(
                            ErrorCode::Timeout,
                            format!(
                                "no instance of function {} was free before the batch's deadline",
                                version.name
                            ),
                        ))
                    }
                }
            }
        };
        match grant {
            Err(e) => {
                next = gather.next.take();
                gather.batch.fail(e);
            }
            Ok(grant) => {
                gather.take_ready();
                if gather.open() && engine.busy_instances(&version) > 1 {
                    gather
                        .take_until(gather.batch.first_arrival() + delay)
                        .await;
                }
                next = gather.next.take();
                tokio::spawn(engine.run_batch(version.clone(), grant, gather.batch));
            }
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

/// Returns an instance to its pool when the call ends, however it ends.
struct Lease {
    engine: Arc<Engine>,
    key: VersionKey,
    instance: Arc<Instance>,
    started: Instant,
    armed: bool,
}

impl Lease {
    fn new(engine: &Arc<Engine>, key: &VersionKey, instance: &Arc<Instance>) -> Self {
        Lease {
            engine: engine.clone(),
            key: key.clone(),
            instance: instance.clone(),
            started: Instant::now(),
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
                .release(&self.key, &self.instance, self.started.elapsed());
        }
    }
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

    fn waiter(priority: Priority, seq: u64) -> Waiter {
        Waiter {
            priority,
            seq,
            tx: oneshot::channel().0,
        }
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

    #[test]
    fn memory_estimate_grows_with_the_model() {
        assert_eq!(instance_memory_estimate(0), 4 << 20);
        assert_eq!(instance_memory_estimate(1 << 20), 6 << 20);
    }
}
