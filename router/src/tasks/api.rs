//! The task endpoints (contract: tasks): submit, read, list, cancel, retry.
//!
//! A submission is checked like a call, up to the node: key (`invoke`
//! scope), version resolved in the caller's tenant, priority header, body
//! (read whole, up to the version's cap) against the input schema and
//! tensors, and the quotas (counted at submit). Then it is stored and queued
//! in one step of the task store; nothing is queued that was refused, and a
//! store that fails answers 503 with nothing half written. The rate limit
//! does not refuse a task: it paces it when it runs (`worker`).

use std::sync::Arc;

use contract::headers::{self, Priority};
use contract::task::{self, TaskFilter, TaskRecord, TaskStatus};
use contract::{ApiError, ErrorCode, FunctionVersion, Principal};
use pingora_proxy::Session;
use serde_json::json;

use crate::admission;
use crate::local::LocalAnswer;
use crate::routes::TaskRequest;
use crate::state::{RouterState, Tasks};
use crate::tasks::callback;

/// The contract's 503 when the task store fails (the store's words are logged, not shown).
fn unavailable(err: String) -> ApiError {
    tracing::error!(error = %err, "task store unavailable");
    ApiError::new(ErrorCode::Unavailable, "the task store is unavailable").with_retry_after(1)
}

fn tasks(state: &RouterState) -> Result<&Tasks, ApiError> {
    state.tasks.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "this router serves no tasks (it was started without a task store)",
        )
    })
}

fn not_found() -> ApiError {
    ApiError::not_found("no such task")
}

fn header<'s>(session: &'s Session, name: &str) -> Option<&'s [u8]> {
    session.req_header().headers.get(name).map(|v| v.as_bytes())
}

/// The submission's callback URL: `?callback_url=` (percent-encoded) or the
/// `x-taskmesh-callback-url` header, checked (`callback::check_url`).
fn callback_url(session: &Session, tasks: &Tasks) -> Result<Option<String>, ApiError> {
    let query = session.req_header().uri.query().unwrap_or_default();
    let from_query = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "callback_url")
        .map(|(_, v)| v.into_owned());
    let from_header = header(session, callback::URL_HEADER)
        .map(|v| {
            std::str::from_utf8(v)
                .map(str::to_string)
                .map_err(|_| ApiError::bad_request("invalid callback URL: not UTF-8"))
        })
        .transpose()?;
    let raw = match (from_query, from_header) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give the callback URL in the query or in the header, not both",
            ))
        }
        (Some(url), None) | (None, Some(url)) => url,
        (None, None) => return Ok(None),
    };
    callback::check_url(&raw, tasks.callbacks.allow_private).map(Some)
}

/// Sends a finished task's view to its callback URL, if it has one.
pub(crate) fn notify(state: &Arc<RouterState>, task: &TaskRecord) {
    let (Some(url), Some(tasks)) = (&task.callback_url, &state.tasks) else {
        return;
    };
    let body = serde_json::to_vec(&task.view()).unwrap_or_default();
    let metrics = state.clone();
    let (tenant, function) = (task.tenant.clone(), task.function.clone());
    tasks.callbacks.deliver(
        url,
        &task.task_id,
        (&task.tenant, &task.client_id),
        body,
        move |outcome| {
            metrics
                .metrics
                .tasks
                .outcome(&tenant, &function, outcome.label());
        },
    );
}

/// What a submission says besides its body (400 when one of them is bad):
/// read before the body, so nothing is counted for a refused submission.
pub(crate) struct Submission {
    pub priority: Priority,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
}

impl Submission {
    pub(crate) fn read(state: &RouterState, session: &Session) -> Result<Self, ApiError> {
        let tasks = tasks(state)?;
        Ok(Submission {
            priority: Priority::from_header(
                header(session, headers::PRIORITY).and_then(|v| std::str::from_utf8(v).ok()),
            )?,
            idempotency_key: task::idempotency_key(header(session, task::IDEMPOTENCY_KEY))?,
            callback_url: callback_url(session, tasks)?,
        })
    }

    /// A new task of `queue` (a function, or `task::pipeline_queue`).
    pub(crate) fn task(
        self,
        task_id: &str,
        principal: &Principal,
        (queue, version, max_attempts): (String, u32, u32),
        input: serde_json::Value,
        cost: u64,
    ) -> TaskRecord {
        let now = now_ms();
        TaskRecord {
            task_id: task_id.to_string(),
            tenant: principal.tenant.clone(),
            client_id: principal.client_id.clone(),
            function: queue,
            version,
            priority: self.priority,
            status: TaskStatus::Queued,
            attempts: 0,
            max_attempts,
            created_at: now,
            updated_at: now,
            due_at: now,
            cost,
            input,
            plan: principal.plan.clone(),
            result: None,
            error: None,
            idempotency_key: self.idempotency_key,
            claim: None,
            lease_until: 0,
            callback_url: self.callback_url,
        }
    }
}

/// `POST /v1/functions/{name}/tasks`: → 202 `{"task_id", "status"}` with
/// `location`. A repeated idempotency key answers with the earlier task
/// (and `idempotent-replayed: true`).
pub async fn submit(
    state: &RouterState,
    session: &mut Session,
    task_id: &str,
    principal: &Principal,
    version: &Arc<FunctionVersion>,
) -> Result<LocalAnswer, ApiError> {
    let submission = Submission::read(state, session)?;
    let input = admission::read_task_input(session, version).await?;
    state
        .guards
        .admit_task_submit(principal, version, input.cost)
        .await?;
    let attempts = version.definition.retry.max_attempts.max(1);
    let queue = (version.name.clone(), version.version, attempts);
    let record = submission.task(task_id, principal, queue, input.body, input.cost);
    queue_task(state, record).await
}

/// Stores and queues `record` in one step of the task store → 202 (or the
/// earlier task of the same idempotency key).
pub(crate) async fn queue_task(
    state: &RouterState,
    record: TaskRecord,
) -> Result<LocalAnswer, ApiError> {
    let tasks = tasks(state)?;
    let submitted = tasks.store.submit(record).await.map_err(unavailable)?;
    let task = &submitted.task;
    if submitted.created {
        tasks.wake.notify_one();
        state
            .metrics
            .tasks
            .outcome(&task.tenant, &task.function, "submitted");
    }
    let mut answer = LocalAnswer::new(
        202,
        json!({"task_id": task.task_id, "status": task.status.as_str()}),
    );
    answer
        .headers
        .push(("location", format!("/v1/tasks/{}", task.task_id)));
    if !submitted.created {
        answer
            .headers
            .push(("idempotent-replayed", "true".to_string()));
    }
    Ok(answer)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `GET /v1/tasks[/{id}]`, `DELETE /v1/tasks/{id}`, `POST /v1/tasks/{id}/retry`,
/// within the caller's tenant (another tenant's task is 404).
pub async fn answer(
    state: &Arc<RouterState>,
    principal: &Principal,
    request: &TaskRequest,
) -> Result<LocalAnswer, ApiError> {
    let store = &tasks(state)?.store;
    let tenant = principal.tenant.as_str();
    match request {
        TaskRequest::List(query) => {
            let filter = TaskFilter::from_query(query.as_deref())?;
            let found = store.list(tenant, &filter).await.map_err(unavailable)?;
            let views: Vec<_> = found.iter().map(TaskRecord::view).collect();
            Ok(LocalAnswer::ok(json!({ "tasks": views })))
        }
        TaskRequest::Get(id) => {
            let task = store.get(tenant, id).await.map_err(unavailable)?;
            Ok(LocalAnswer::ok(task.ok_or_else(not_found)?.view()))
        }
        TaskRequest::Cancel(id) => {
            let task = store
                .cancel(tenant, id)
                .await
                .map_err(unavailable)?
                .ok_or_else(not_found)?;
            if task.status != TaskStatus::Cancelled {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "only a queued or failed task can be cancelled; this one is {}",
                        task.status.as_str()
                    ),
                ));
            }
            notify(state, &task);
            Ok(LocalAnswer::ok(task.view()))
        }
        TaskRequest::CallbackSecret => {
            let signer = &tasks(state)?.callbacks.signer;
            Ok(LocalAnswer::ok(json!({
                "secret": signer.secret(tenant, &principal.client_id),
                "algorithm": "hmac-sha256",
                "header": callback::SIGNATURE_HEADER,
                "signed": "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<body>\" under the secret>",
            })))
        }
        TaskRequest::Retry(id) => {
            let before = store.get(tenant, id).await.map_err(unavailable)?;
            let before = before.ok_or_else(not_found)?;
            if !matches!(before.status, TaskStatus::Dead | TaskStatus::Cancelled) {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "only a dead or cancelled task can be retried; this one is {}",
                        before.status.as_str()
                    ),
                ));
            }
            let task = store
                .requeue(tenant, id)
                .await
                .map_err(unavailable)?
                .ok_or_else(not_found)?;
            tasks(state)?.wake.notify_one();
            let mut answer = LocalAnswer::new(202, task.view());
            answer
                .headers
                .push(("location", format!("/v1/tasks/{}", task.task_id)));
            Ok(answer)
        }
    }
}
