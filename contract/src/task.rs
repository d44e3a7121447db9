//! Tasks: asynchronous invocations (contract: "tasks").
//!
//! A task is one invocation of a function version that a client submitted and
//! reads later. This module holds what the router and the two task stores
//! (the embedded one of `taskmesh up`, Redis Streams in cluster mode) must
//! agree on: the stored record ([`TaskRecord`]) and its wire view, the
//! statuses, the list filter, and the [`TaskStore`] port.
//!
//! # Lifecycle
//!
//! `queued` → (claimed by a worker) `running` → `succeeded`, or `failed`
//! (queued again after its backoff, a scheduled re-delivery) → … → `dead`
//! after the last attempt. A `queued` or `failed` task may be `cancelled`; a
//! `dead` or `cancelled` one may be queued again (`retry`), with its
//! attempts reset. A worker holds a running task under a claim token with a
//! lease: an outcome is recorded only under the token that holds the task
//! (so a result is written once even if the task ran twice), and a task whose
//! lease ran out (its worker died) is claimed again by another worker.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::headers::Priority;
use crate::{ApiError, ErrorCode, Plan};

/// Request header: a client's key for a submission, deduplicated per client
/// for [`IDEMPOTENCY_TTL_MS`].
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// How long an idempotency key gives back the same task (24 h).
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;
/// The longest idempotency key accepted (bytes, visible ASCII).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// How long a finished task (and its result) is kept, by default (24 h).
pub const DEFAULT_RETENTION_MS: u64 = 24 * 3600 * 1000;
/// The largest result stored (serialized JSON); a larger one ends the task
/// `dead` with `payload_too_large`, rather than being stored.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// The most tasks one list answer holds, and the default.
pub const MAX_LIST_LIMIT: usize = 1000;
pub const DEFAULT_LIST_LIMIT: usize = 50;

/// A pipeline's tasks wait in the queue `pipeline:<name>` (the record's
/// `function`): a function's name has no `:`, so the two never meet.
pub const PIPELINE_QUEUE_PREFIX: &str = "pipeline:";
/// How many times a pipeline task is attempted when a run fails for a
/// passing reason (a node away, the deadline); each step retries its own calls.
pub const PIPELINE_TASK_ATTEMPTS: u32 = 3;

/// The queue (`function` of the record) of pipeline `name`'s tasks.
pub fn pipeline_queue(name: &str) -> String {
    format!("{PIPELINE_QUEUE_PREFIX}{name}")
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    /// The last attempt failed; queued again after its backoff.
    Failed,
    /// Every attempt failed (or the task cannot run): kept with its last error.
    Dead,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Dead,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Dead => "dead",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        TaskStatus::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Whether the task waits in its queue (now or after a backoff).
    pub fn is_waiting(self) -> bool {
        matches!(self, TaskStatus::Queued | TaskStatus::Failed)
    }

    /// Whether nothing more happens to the task unless a client retries it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded | TaskStatus::Dead | TaskStatus::Cancelled
        )
    }
}

/// The error of a task's last failed attempt (the contract's code and message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub code: String,
    pub message: String,
}

impl TaskError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        TaskError {
            code: code.as_str().to_string(),
            message: message.into(),
        }
    }
}

impl From<&ApiError> for TaskError {
    fn from(err: &ApiError) -> Self {
        TaskError::new(err.code, err.message.clone())
    }
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub tenant: String,
    /// The client that submitted it (idempotency keys and rate limits are per client).
    pub client_id: String,
    pub function: String,
    /// The version resolved at submit: the task runs exactly this one.
    pub version: u32,
    pub priority: Priority,
    pub status: TaskStatus,
    /// Attempts started (a claimed task counts its attempt at once).
    pub attempts: u32,
    /// The function's `retry.max_attempts` at submit.
    pub max_attempts: u32,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
    /// When a waiting task may run next (ms since the epoch).
    pub due_at: u64,
    /// The validated input.
    pub input: Value,
    /// What the call weighs (1 without a `cost` in the definition).
    pub cost: u64,
    /// The client's plan at submit (its rate limit paces the task).
    #[serde(default)]
    pub plan: Plan,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<TaskError>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The token of the attempt that holds a running task.
    #[serde(default)]
    pub claim: Option<String>,
    /// Until when that attempt holds it (ms since the epoch).
    #[serde(default)]
    pub lease_until: u64,
    /// Where the finished task is POSTed (completion webhook), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
}

impl TaskRecord {
    /// The pipeline this task runs, if it is a pipeline's task.
    pub fn pipeline(&self) -> Option<&str> {
        self.function.strip_prefix(PIPELINE_QUEUE_PREFIX)
    }

    /// The contract's view of a task (`GET /v1/tasks/{id}`): a pipeline's
    /// task names its `pipeline` where a function's names its `function`.
    pub fn view(&self) -> Value {
        let mut view = json!({
            "task_id": self.task_id,
            "function": self.function,
            "version": self.version,
            "status": self.status.as_str(),
            "priority": self.priority.as_str(),
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "cost": self.cost,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "result": self.result,
            "error": self.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
            "callback_url": self.callback_url,
        });
        if let Some(pipeline) = self.pipeline() {
            view["function"] = Value::Null;
            view["pipeline"] = json!(pipeline);
        }
        view
    }

    /// The queue the task waits in.
    pub fn queue(&self) -> QueueId {
        QueueId {
            tenant: self.tenant.clone(),
            function: self.function.clone(),
        }
    }

    /// Starts an attempt under `token`, held until `lease_until`.
    pub fn start_attempt(&mut self, token: &str, now: u64, lease_until: u64) {
        self.status = TaskStatus::Running;
        self.attempts += 1;
        self.claim = Some(token.to_string());
        self.lease_until = lease_until;
        self.updated_at = now;
    }

    /// Applies an attempt's outcome.
    pub fn apply(&mut self, finish: &Finish, now: u64) {
        self.claim = None;
        self.lease_until = 0;
        self.updated_at = now;
        match finish {
            Finish::Succeeded(result) => {
                self.status = TaskStatus::Succeeded;
                self.result = Some(result.clone());
                self.error = None;
            }
            Finish::Retry { error, due_at } => {
                self.status = TaskStatus::Failed;
                self.error = Some(error.clone());
                self.due_at = *due_at;
            }
            Finish::Dead(error) => {
                self.status = TaskStatus::Dead;
                self.error = Some(error.clone());
            }
            Finish::Defer { due_at } => {
                self.status = TaskStatus::Queued;
                self.attempts = self.attempts.saturating_sub(1);
                self.due_at = *due_at;
            }
        }
    }

    /// Makes a dead or cancelled task new again (`retry`): queued now, no attempts.
    pub fn requeue(&mut self, now: u64) {
        self.status = TaskStatus::Queued;
        self.attempts = 0;
        self.error = None;
        self.result = None;
        self.due_at = now;
        self.updated_at = now;
    }

    /// The outcome of a claimed task whose lease ran out (its worker died):
    /// dead when that was its last attempt, else queued again.
    pub fn lost_attempt(&self, now: u64) -> Finish {
        if self.attempts >= self.max_attempts {
            Finish::Dead(TaskError::new(
                ErrorCode::Unavailable,
                format!(
                    "the last of {} attempts was lost: its worker stopped before it finished",
                    self.max_attempts
                ),
            ))
        } else {
            Finish::Retry {
                error: TaskError::new(
                    ErrorCode::Unavailable,
                    "the attempt was lost: its worker stopped before it finished",
                ),
                due_at: now,
            }
        }
    }
}

/// A function's queue (one per function of a tenant; priorities order it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId {
    pub tenant: String,
    pub function: String,
}

/// A task a worker took, with the token it holds it by.
#[derive(Debug, Clone)]
pub struct Claim {
    pub task: TaskRecord,
    pub token: String,
    /// What the backend needs to acknowledge it (a stream entry id).
    pub receipt: String,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Succeeded(Value),
    /// Failed; queued again at `due_at` (status `failed` until then).
    Retry {
        error: TaskError,
        due_at: u64,
    },
    /// No attempt left, or one that can never succeed.
    Dead(TaskError),
    /// Not run (rate limited, no node): queued again at `due_at`, the attempt not counted.
    Defer {
        due_at: u64,
    },
}

/// A submission's answer: the task, and whether this call created it (false:
/// the idempotency key named an earlier one).
#[derive(Debug, Clone)]
pub struct Submitted {
    pub task: TaskRecord,
    pub created: bool,
}

/// `GET /v1/tasks?function=&status=&limit=` (or `pipeline=` for a pipeline's tasks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFilter {
    pub function: Option<String>,
    pub status: Option<TaskStatus>,
    pub limit: usize,
}

impl TaskFilter {
    /// Reads the list query (400 for an unknown status or key, or a bad limit).
    pub fn from_query(query: Option<&str>) -> Result<Self, ApiError> {
        let mut filter = TaskFilter {
            function: None,
            status: None,
            limit: DEFAULT_LIST_LIMIT,
        };
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "function" if !value.is_empty() => filter.function = Some(value.to_string()),
                "pipeline" if !value.is_empty() => filter.function = Some(pipeline_queue(value)),
                "status" => {
                    filter.status = Some(TaskStatus::parse(value).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "status must be one of queued, running, succeeded, failed, dead, cancelled; got {value:?}"
                        ))
                    })?)
                }
                "limit" => {
                    filter.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "limit must be a number from 1 to {MAX_LIST_LIMIT}"
                            ))
                        })?
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter {key:?} (function, pipeline, status and limit are known)"
                    )))
                }
            }
        }
        Ok(filter)
    }

    pub fn matches(&self, task: &TaskRecord) -> bool {
        self.function.as_ref().is_none_or(|f| *f == task.function)
            && self.status.is_none_or(|s| s == task.status)
    }
}

/// A queue's numbers, for metrics and autoscaling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub tenant: String,
    pub function: String,
    /// Waiting tasks (queued, or failed and waiting for their backoff).
    pub queued: u64,
    pub running: u64,
    /// The summed cost of waiting and running tasks.
    pub backlog_cost: u64,
    /// When the oldest waiting task was created (ms since the epoch), if any.
    pub oldest_created_at: Option<u64>,
    pub dead: u64,
}

/// Reads an `idempotency-key` header: 1–255 visible ASCII characters (400 otherwise).
pub fn idempotency_key(value: Option<&[u8]>) -> Result<Option<String>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    let ok = !value.is_empty()
        && value.len() <= MAX_IDEMPOTENCY_KEY_BYTES
        && value.iter().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(ApiError::bad_request(format!(
            "{IDEMPOTENCY_KEY} must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
        )));
    }
    Ok(Some(String::from_utf8_lossy(value).into_owned()))
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = policies::quota::civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// Where tasks are kept and queued: the embedded store (`taskmesh up`) or
/// Redis Streams (cluster mode). Errors are a backend's failure, answered 503.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Stores and queues a new task, atomically with its idempotency key: a
    /// key the client used within 24 h gives back that task instead.
    async fn submit(&self, task: TaskRecord) -> Result<Submitted, String>;

    /// A task of `tenant` (another tenant's is `None`).
    async fn get(&self, tenant: &str, task_id: &str) -> Result<Option<TaskRecord>, String>;

    /// The tenant's tasks, newest first.
    async fn list(&self, tenant: &str, filter: &TaskFilter) -> Result<Vec<TaskRecord>, String>;

    /// Cancels a waiting task; returns the task as it is afterwards (not
    /// cancelled when it was not waiting), `None` when there is none.
    async fn cancel(&self, tenant: &str, task_id: &str) -> Result<Option<TaskRecord>, String>;

    /// Queues a dead or cancelled task again with its attempts reset; returns
    /// it as it is afterwards, `None` when there is none.
    async fn requeue(&self, tenant: &str, task_id: &str) -> Result<Option<TaskRecord>, String>;

    /// The queues that may have work (waiting or reclaimable tasks).
    async fn active_queues(&self) -> Result<Vec<QueueId>, String>;

    /// Takes up to `max` tasks of `queue` that are due, highest priority
    /// first, then oldest; each becomes `running` under a new token, held for
    /// `lease_ms`. Tasks whose lease ran out are taken again (or end dead,
    /// [`TaskRecord::lost_attempt`]). Cancelled tasks are dropped.
    async fn claim(
        &self,
        queue: &QueueId,
        worker: &str,
        max: usize,
        lease_ms: u64,
    ) -> Result<Vec<Claim>, String>;

    /// Records an attempt's outcome, once: only while `claim` still holds the
    /// task (false when another claim took it over).
    async fn finish(&self, claim: &Claim, finish: Finish) -> Result<bool, String>;

    /// The numbers of every queue.
    async fn stats(&self) -> Result<Vec<QueueStats>, String>;

    /// Housekeeping: forgets finished tasks older than the retention.
    async fn sweep(&self) -> Result<(), String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn task() -> TaskRecord {
        TaskRecord {
            task_id: "t1".into(),
            tenant: "default".into(),
            client_id: "c1".into(),
            function: "digits".into(),
            version: 2,
            priority: Priority::Normal,
            status: TaskStatus::Queued,
            attempts: 0,
            max_attempts: 2,
            created_at: 1_700_000_000_123,
            updated_at: 1_700_000_000_123,
            due_at: 0,
            input: json!({"x": 1}),
            cost: 1,
            plan: Plan::default(),
            result: None,
            error: None,
            idempotency_key: None,
            claim: None,
            lease_until: 0,
            callback_url: None,
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_view_has_the_contract_fields_and_nothing_private() {
        let view = task().view();
        for field in [
            "task_id",
            "function",
            "version",
            "status",
            "attempts",
            "created_at",
            "updated_at",
            "result",
            "error",
        ] {
            assert!(view.get(field).is_some(), "{field} missing from {view}");
        }
        for private in ["tenant", "client_id", "input", "claim", "plan"] {
            assert!(view.get(private).is_none(), "{private} leaked in {view}");
        }
        assert_eq!(view["status"], "queued");
    }

    #[test]
    fn attempts_count_on_claim_and_a_deferral_gives_its_attempt_back() {
        let mut t = task();
        t.start_attempt("a", 10, 100);
        assert_eq!((t.status, t.attempts), (TaskStatus::Running, 1));
        t.apply(&Finish::Defer { due_at: 50 }, 20);
        assert_eq!(
            (t.status, t.attempts, t.due_at),
            (TaskStatus::Queued, 0, 50)
        );
        t.start_attempt("b", 30, 100);
        let error = TaskError::new(ErrorCode::FunctionFailed, "boom");
        t.apply(&Finish::Retry { error, due_at: 70 }, 40);
        assert_eq!((t.status, t.attempts), (TaskStatus::Failed, 1));
        assert!(t.claim.is_none());
        t.start_attempt("c", 80, 100);
        assert!(matches!(t.lost_attempt(90), Finish::Dead(_)));
        t.apply(
            &Finish::Dead(TaskError::new(ErrorCode::Timeout, "slow")),
            90,
        );
        t.requeue(95);
        assert_eq!(
            (t.status, t.attempts, t.error.clone()),
            (TaskStatus::Queued, 0, None)
        );
    }

    #[test]
    fn the_list_filter_reads_its_query_and_refuses_the_rest() {
        let f = TaskFilter::from_query(Some("function=digits&status=dead&limit=5")).unwrap();
        assert_eq!(f.function.as_deref(), Some("digits"));
        assert_eq!((f.status, f.limit), (Some(TaskStatus::Dead), 5));
        assert_eq!(
            TaskFilter::from_query(None).unwrap().limit,
            DEFAULT_LIST_LIMIT
        );
        for bad in [
            "status=done",
            "limit=0",
            "limit=1001",
            "limit=x",
            "sort=asc",
        ] {
            assert_eq!(
                TaskFilter::from_query(Some(bad)).unwrap_err().status(),
                400,
                "{bad}"
            );
        }
        let mut t = task();
        assert!(f.function.is_some() && !f.matches(&t));
        t.status = TaskStatus::Dead;
        assert!(f.matches(&t));
    }

    #[test]
    fn idempotency_keys_are_short_visible_ascii() {
        assert_eq!(idempotency_key(None).unwrap(), None);
        assert_eq!(
            idempotency_key(Some(b"order-42")).unwrap().as_deref(),
            Some("order-42")
        );
        for bad in [&b""[..], b"has space", &[b'k'; 256], "é".as_bytes()] {
            assert_eq!(idempotency_key(Some(bad)).unwrap_err().status(), 400);
        }
    }
}
