//! A pipeline's task, run by the task worker: the same run as a synchronous
//! invoke, on behalf of the client that submitted it (its tenant, plan and
//! priority, as recorded at submit), within the pipeline's `timeout_ms`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use contract::task::TaskRecord;
use contract::{ApiError, Principal};
use serde_json::Value;

use super::run;
use super::step::Caller;
use crate::state::RouterState;

/// Runs the pinned version of pipeline `name` on the task's input: its
/// output, or the contract's error (the worker decides what that means for
/// the task).
pub async fn run(
    state: &Arc<RouterState>,
    task: &TaskRecord,
    name: &str,
) -> Result<Value, ApiError> {
    let pipeline = state
        .catalog
        .pipeline(&task.tenant, name, Some(task.version))
        .await?;
    let started = Instant::now();
    let caller = Arc::new(Caller {
        state: state.clone(),
        principal: Principal {
            client_id: task.client_id.clone(),
            tenant: task.tenant.clone(),
            scopes: Vec::new(),
            plan: task.plan.clone(),
        },
        deadline: started + Duration::from_millis(pipeline.definition.timeout_ms),
        priority: task.priority.as_str().to_string(),
    });
    let (result, traces) =
        run::bounded(caller.clone(), &pipeline, &task.input, &task.task_id).await;
    run::record(&caller, &pipeline, &result, &traces, started);
    result
}

/// The longest `timeout_ms` among pipeline `name`'s newest `versions`
/// versions, if it has any (a claim's lease covers the slowest).
pub async fn longest_timeout_ms(
    state: &RouterState,
    tenant: &str,
    name: &str,
    versions: u32,
) -> Option<u64> {
    let latest = state.catalog.pipeline(tenant, name, None).await.ok()?;
    let mut longest = latest.definition.timeout_ms;
    for v in latest.version.saturating_sub(versions - 1).max(1)..latest.version {
        if let Ok(p) = state.catalog.pipeline(tenant, name, Some(v)).await {
            longest = longest.max(p.definition.timeout_ms);
        }
    }
    Some(longest)
}
