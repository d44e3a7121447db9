//! The task worker: a background service of every router that serves tasks.
//!
//! It polls the task store (every [`POLL`], and at once when a task was
//! queued or an attempt ended here), claims what its slots allow from each
//! function's queue, and runs each claimed task through the same path as a
//! synchronous call: the client's rate limit (a refusal defers the task to
//! its turn, it does not fail it), the version's circuit breaker, placement
//! on the ring (node breakers, bounded load), and an h2c call to the node's
//! invoke endpoint with the cluster key, so the node's queue, priorities and
//! batching apply. Every queue has its own slots ([`SLOTS_PER_QUEUE_PER_NODE`]
//! per live node, at most [`MAX_SLOTS_PER_QUEUE`]), so a heavy function's
//! backlog cannot take a light function's turn.
//!
//! An attempt's outcome ([`attempt`]): a result is stored (at most
//! [`task::MAX_RESULT_BYTES`]); a client fault (4xx: the version no longer
//! resolves, the input no longer fits) ends the task `dead` at once; a server
//! fault (5xx, a node that could not be reached) is retried with the
//! function's retry policy — the backoff is a scheduled re-delivery in the
//! store — until the last attempt, which ends it `dead`; a rate limit, an
//! open breaker, no node or an overloaded node defer it without using an attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use contract::task::{self, Claim, Finish, QueueId, TaskError, TaskRecord};
use contract::{ApiError, ErrorCode, Principal, Qualifier};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use policies::breaker::Outcome;

use super::api::now_ms;
use crate::guards::retry_policy;
use crate::node_call::{self, node_client, NodeAnswer, NodeCall, NodeClient};
use crate::pipelines;
use crate::state::RouterState;

/// How often the store is asked for work when nothing woke the worker.
pub const POLL: Duration = Duration::from_millis(50);
/// A queue's slots on one router, per live node, and at most.
pub const SLOTS_PER_QUEUE_PER_NODE: usize = 8;
pub const MAX_SLOTS_PER_QUEUE: usize = 64;
/// Tasks one router runs at once over all queues.
pub const MAX_SLOTS: usize = 256;
/// A claimed task is held for its function's longest `timeout_ms` plus this;
/// a worker that died lets go of it then.
pub const LEASE_GRACE: Duration = Duration::from_secs(10);
/// How long a worker keeps trying to record an outcome while the store fails.
const FINISH_PATIENCE: Duration = Duration::from_secs(30);
/// How many of a function's newest versions its lease looks at.
pub const LEASE_VERSIONS: usize = 32;
/// How long a task waits when nothing could take it (no node, store away).
const DEFER: Duration = Duration::from_secs(1);
/// A node's `overloaded`: try again soon.
const OVERLOADED_DEFER: Duration = Duration::from_millis(200);

/// The worker; one per router process.
pub struct TaskWorker {
    state: Arc<RouterState>,
    id: String,
    client: NodeClient,
    running: Mutex<HashMap<QueueId, usize>>,
    leases: Mutex<HashMap<QueueId, (Instant, u64)>>,
}

impl TaskWorker {
    pub fn new(state: Arc<RouterState>) -> Self {
        let client = node_client();
        TaskWorker {
            state,
            id: format!(
                "router-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            client,
            running: Mutex::default(),
            leases: Mutex::default(),
        }
    }

    fn slots_per_queue(&self) -> usize {
        (self.state.nodes.len().max(1) * SLOTS_PER_QUEUE_PER_NODE).min(MAX_SLOTS_PER_QUEUE)
    }

    /// How long this queue's claims hold a task: the longest `timeout_ms`
    /// among the function's newest [`LEASE_VERSIONS`] versions (a task runs
    /// the version it was submitted for, which need not be the default), plus
    /// [`LEASE_GRACE`]; the same for every worker of the queue, read again
    /// every 10 s.
    async fn lease_ms(&self, queue: &QueueId) -> u64 {
        if let Some((at, lease)) = self.leases.lock().expect("leases lock").get(queue) {
            if at.elapsed() < Duration::from_secs(10) {
                return *lease;
            }
        }
        let catalog = &self.state.catalog;
        if let Some(name) = queue.function.strip_prefix(task::PIPELINE_QUEUE_PREFIX) {
            let state = &self.state;
            let longest = pipelines::task::longest_timeout_ms(state, &queue.tenant, name, 32).await;
            let lease = longest.unwrap_or(600_000) + LEASE_GRACE.as_millis() as u64;
            self.leases
                .lock()
                .expect("leases lock")
                .insert(queue.clone(), (Instant::now(), lease));
            return lease;
        }
        let versions = catalog
            .versions(&queue.tenant, &queue.function)
            .await
            .unwrap_or_default();
        let mut timeout = 0;
        for v in versions.iter().rev().take(LEASE_VERSIONS) {
            let qualifier = Qualifier::Version(*v);
            if let Ok(version) = catalog
                .resolve(&queue.tenant, &queue.function, &qualifier)
                .await
            {
                timeout = timeout.max(version.definition.timeout_ms);
            }
        }
        if timeout == 0 {
            timeout = 600_000; // nothing readable: the longest a definition allows
        }
        let lease = timeout + LEASE_GRACE.as_millis() as u64;
        self.leases
            .lock()
            .expect("leases lock")
            .insert(queue.clone(), (Instant::now(), lease));
        lease
    }

    /// Claims what this queue's free slots allow and starts each task.
    async fn fill(self: &Arc<Self>, queue: &QueueId) -> Result<(), String> {
        let (free, total) = {
            let running = self.running.lock().expect("running lock");
            let total: usize = running.values().sum();
            let here = running.get(queue).copied().unwrap_or(0);
            (self.slots_per_queue().saturating_sub(here), total)
        };
        let free = free.min(MAX_SLOTS.saturating_sub(total));
        if free == 0 {
            return Ok(());
        }
        let Some(tasks) = &self.state.tasks else {
            return Ok(());
        };
        let lease = self.lease_ms(queue).await;
        let claims = tasks.store.claim(queue, &self.id, free, lease).await?;
        for claim in claims {
            *self
                .running
                .lock()
                .expect("running lock")
                .entry(queue.clone())
                .or_default() += 1;
            let worker = self.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                worker.run(claim).await;
                let mut running = worker.running.lock().expect("running lock");
                if let Some(n) = running.get_mut(&queue) {
                    *n = n.saturating_sub(1);
                }
                drop(running);
                if let Some(tasks) = &worker.state.tasks {
                    tasks.wake.notify_one();
                }
            });
        }
        Ok(())
    }

    /// Runs one attempt and records its outcome (once: under its claim).
    async fn run(&self, claim: Claim) {
        let finish = attempt(&self.state, &self.client, &claim.task).await;
        let task = &claim.task;
        let outcome = match &finish {
            Finish::Succeeded(_) => "succeeded",
            Finish::Retry { .. } => "retried",
            Finish::Dead(_) => "dead",
            Finish::Defer { .. } => "deferred",
        };
        self.state
            .metrics
            .tasks
            .outcome(&task.tenant, &task.function, outcome);
        let Some(tasks) = &self.state.tasks else {
            return;
        };
        // A store that is briefly away (Redis restarting) gets the outcome
        // when it is back; only after `FINISH_PATIENCE` is the task left to
        // its lease (and run again). A retry after a lost reply is refused by
        // the claim check, so an outcome is still recorded once.
        let mut delay = Duration::from_millis(100);
        let give_up = Instant::now() + FINISH_PATIENCE;
        let mut recorded = tasks.store.finish(&claim, finish.clone()).await;
        while recorded.is_err() && Instant::now() + delay < give_up {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            recorded = tasks.store.finish(&claim, finish.clone()).await;
        }
        match recorded {
            Ok(true) => {
                let terminal = matches!(finish, Finish::Succeeded(_) | Finish::Dead(_));
                if terminal && task.callback_url.is_some() {
                    // The recorded task, as a reader would see it now.
                    match tasks.store.get(&task.tenant, &task.task_id).await {
                        Ok(Some(done)) => super::api::notify(&self.state, &done),
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(task_id = %task.task_id, %error, "reading a finished task for its callback failed");
                        }
                    }
                }
            }
            Ok(false) => {
                tracing::warn!(task_id = %task.task_id, "another worker took this task over; its outcome here is not recorded");
            }
            Err(error) => {
                tracing::error!(task_id = %task.task_id, %error, "could not record a task's outcome; it runs again when its lease ends");
            }
        }
    }
}

/// The worker as one of the router's Pingora background services.
pub struct WorkerService(pub Arc<TaskWorker>);

#[async_trait]
impl BackgroundService for WorkerService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.clone().serve(shutdown).await;
    }
}

impl TaskWorker {
    /// Works the queues until `shutdown`.
    pub async fn serve(self: Arc<Self>, mut shutdown: ShutdownWatch) {
        let Some(tasks) = &self.state.tasks else {
            return;
        };
        let mut last_stats = None::<Instant>;
        let mut last_sweep = Instant::now();
        let mut store_down = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tasks.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            if self
                .state
                .draining
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                continue;
            }
            if last_stats.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                last_stats = Some(Instant::now());
                if let Ok(stats) = tasks.store.stats().await {
                    self.state.metrics.tasks.observe(&stats, now_ms());
                }
            }
            if last_sweep.elapsed() >= Duration::from_secs(60) {
                last_sweep = Instant::now();
                if let Err(error) = tasks.store.sweep().await {
                    tracing::warn!(%error, "sweeping finished tasks failed");
                }
            }
            let result = match tasks.store.active_queues().await {
                Ok(queues) => {
                    let mut result = Ok(());
                    for queue in &queues {
                        if let Err(e) = self.fill(queue).await {
                            result = Err(e);
                        }
                    }
                    result
                }
                Err(e) => Err(e),
            };
            match result {
                Err(error) if !store_down => {
                    store_down = true;
                    tracing::error!(%error, "the task store is unavailable; tasks wait until it is back");
                }
                Ok(()) if store_down => {
                    store_down = false;
                    tracing::info!("the task store is back");
                }
                _ => {}
            }
        }
    }
}

/// One attempt of `task` (see the module docs for what each outcome means).
pub async fn attempt(state: &Arc<RouterState>, client: &NodeClient, task: &TaskRecord) -> Finish {
    let now = now_ms();
    let defer = |d: Duration| Finish::Defer {
        due_at: now + d.as_millis() as u64,
    };
    if let Some(name) = task.pipeline() {
        return pipeline_attempt(state, task, name).await;
    }
    let qualifier = Qualifier::Version(task.version);
    let version = match state
        .catalog
        .resolve(&task.tenant, &task.function, &qualifier)
        .await
    {
        Ok(version) => version,
        Err(err) if err.code == ErrorCode::NotFound => {
            return Finish::Dead(TaskError::new(
                ErrorCode::NotFound,
                format!(
                    "function {} version {} no longer resolves: {}",
                    task.function, task.version, err.message
                ),
            ))
        }
        Err(_) => return defer(DEFER),
    };
    let principal = Principal {
        client_id: task.client_id.clone(),
        tenant: task.tenant.clone(),
        scopes: Vec::new(),
        plan: task.plan.clone(),
    };
    let mut pass = match state
        .guards
        .admit_task_attempt(&principal, &version, task.cost)
        .await
    {
        Ok(pass) => pass,
        Err(err) => {
            // A rate limit says to the millisecond when the task's turn comes.
            let precise = err
                .details
                .as_ref()
                .and_then(|d| d["retry_after_ms"].as_u64())
                .map(Duration::from_millis);
            let wait = precise.unwrap_or(Duration::from_secs(err.retry_after_s.unwrap_or(1)));
            return defer(wait.max(Duration::from_millis(5)));
        }
    };
    let Some((node, permit)) = state.choose_node(&version, &[]) else {
        state.guards.release(&version, &mut pass, None);
        return defer(DEFER);
    };
    let in_flight = node.begin();
    let started = Instant::now();
    let answer = match serde_json::to_vec(&task.input) {
        Ok(body) => {
            let call = NodeCall {
                invocation_id: &task.task_id,
                tenant: &task.tenant,
                priority: task.priority.as_str(),
                cost: task.cost,
                deadline: Duration::from_millis(version.definition.timeout_ms),
                answer_cap: task::MAX_RESULT_BYTES,
            };
            let key = &state.cluster_key;
            node_call::invoke(client, key, node.info.addr, &version, &call, body.into()).await
        }
        Err(e) => NodeAnswer::Failed(format!("input could not be encoded: {e}")),
    };
    drop(in_flight);
    let reached = matches!(answer, NodeAnswer::Answered(..));
    let node_outcome = if reached {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    state
        .guards
        .record_node(node.info.addr, permit, node_outcome);
    let error = match answer {
        NodeAnswer::Answered(200, _, body) => {
            state
                .guards
                .release(&version, &mut pass, Some(Outcome::Success));
            state
                .guards
                .record_call(&version, false, started.elapsed().as_secs_f64());
            return stored_result(&body);
        }
        NodeAnswer::Answered(status, _, body) => {
            ApiError::from_body(status, &body).unwrap_or_else(|| {
                ApiError::new(
                    ErrorCode::FunctionFailed,
                    format!("the node answered {status}"),
                )
            })
        }
        NodeAnswer::Failed(reason) => {
            if reason.contains("connect") {
                state.nodes.eject(&node.info.id);
            }
            ApiError::new(
                ErrorCode::Unavailable,
                format!("the runtime node failed: {reason}"),
            )
        }
    };
    if error.code == ErrorCode::Overloaded {
        state.guards.release(&version, &mut pass, None);
        return defer(OVERLOADED_DEFER);
    }
    let client_fault = error.code.is_client_fault();
    let outcome = if client_fault {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    state.guards.release(&version, &mut pass, Some(outcome));
    state
        .guards
        .record_call(&version, !client_fault, started.elapsed().as_secs_f64());
    if client_fault || task.attempts >= task.max_attempts {
        return Finish::Dead(TaskError::from(&error));
    }
    let delay = retry_policy(&version).map_or(Duration::ZERO, |rules| {
        rules
            .backoff
            .delay(task.attempts.saturating_sub(1), rand::random::<f64>())
    });
    Finish::Retry {
        error: TaskError::from(&error),
        due_at: now_ms() + delay.as_millis() as u64,
    }
}

/// One run of a pipeline's task. A rate-limited step defers the task to its
/// turn (the run starts over then); a passing failure (the deadline, no node,
/// an open breaker, as the run's error or a step's) is tried again, 1 s then
/// 2 s later, up to the task's attempts; anything else (a refusal, invalid
/// input, a step whose function failed, a pipeline that no longer resolves)
/// ends it `dead` with the error.
async fn pipeline_attempt(state: &Arc<RouterState>, task: &TaskRecord, name: &str) -> Finish {
    let error = match pipelines::task::run(state, task, name).await {
        Ok(output) => {
            return match serde_json::to_vec(&output) {
                Ok(body) => stored_result(&body),
                Err(e) => Finish::Dead(TaskError::new(ErrorCode::Internal, e.to_string())),
            }
        }
        Err(error) => error,
    };
    let inner = error
        .details
        .as_ref()
        .and_then(|d| d["error"]["code"].as_str())
        .and_then(ErrorCode::from_wire);
    let passing = |code: ErrorCode| {
        matches!(
            code,
            ErrorCode::Timeout
                | ErrorCode::Unavailable
                | ErrorCode::CircuitOpen
                | ErrorCode::Overloaded
        )
    };
    if error.code == ErrorCode::RateLimited {
        let wait =
            Duration::from_secs(error.retry_after_s.unwrap_or(1)).max(Duration::from_millis(5));
        return Finish::Defer {
            due_at: now_ms() + wait.as_millis() as u64,
        };
    }
    let transient =
        passing(error.code) || (error.code == ErrorCode::StepFailed && inner.is_some_and(passing));
    if transient && task.attempts < task.max_attempts {
        let delay = Duration::from_secs(1 << task.attempts.saturating_sub(1).min(4));
        return Finish::Retry {
            error: TaskError::from(&error),
            due_at: now_ms() + delay.as_millis() as u64,
        };
    }
    Finish::Dead(TaskError::from(&error))
}

/// A node's 200 as the stored result: JSON within the cap, else `dead`.
fn stored_result(body: &[u8]) -> Finish {
    if body.len() > task::MAX_RESULT_BYTES {
        return Finish::Dead(TaskError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the result is over the {} bytes a task may store",
                task::MAX_RESULT_BYTES
            ),
        ));
    }
    match serde_json::from_slice(body) {
        Ok(result) => Finish::Succeeded(result),
        Err(e) => Finish::Dead(TaskError::new(
            ErrorCode::InvalidOutput,
            format!("the node's answer is not JSON: {e}"),
        )),
    }
}
