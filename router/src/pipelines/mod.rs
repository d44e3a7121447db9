//! Pipelines on the router (contract: pipelines): `POST
//! /v1/pipelines/{name}/invoke` runs a registered graph of steps, each a
//! call of a function on behalf of the caller; `POST
//! /v1/pipelines/{name}/tasks` queues such a run as a task.
//!
//! - `step`: one function call through the same guards, placement, retries
//!   and node path as a direct call;
//! - `run`: the graph: steps in parallel as their references are ready,
//!   `foreach` fan-out, guard steps, cancellation of what no longer matters.
//!
//! - `task`: a pipeline's task (`POST /v1/pipelines/{name}/tasks`) run by the
//!   task worker.
//!
//! Layer: names `admission`, `node_call`, `routes`, `state`, `local`, `call`
//! and `tasks::api` (submissions); `tasks::worker` names `task`.

pub mod run;
pub mod step;
pub mod task;

use std::sync::Arc;
use std::time::{Duration, Instant};

use contract::task::{pipeline_queue, PIPELINE_TASK_ATTEMPTS};
use contract::{headers, ApiError, Principal};
use pingora_proxy::Session;
use serde_json::json;

use crate::admission;
use crate::call::Ctx;
use crate::local::LocalAnswer;
use crate::routes::PipelineCall;
use crate::state::RouterState;
use crate::tasks::api::{queue_task, Submission};

/// The header naming the pipeline version that ran.
pub const PIPELINE_VERSION: &str = "x-taskmesh-pipeline-version";

/// The largest pipeline input (the steps' own caps apply to what they get).
pub const MAX_PIPELINE_INPUT_BYTES: usize = 4 * 1024 * 1024;

/// Runs the pipeline for `principal` (kept in `ctx` for the access log): 200
/// with the output (and the steps' traces when asked), or the contract's error.
pub async fn invoke(
    state: &Arc<RouterState>,
    session: &mut Session,
    ctx: &mut Ctx,
    principal: Principal,
    call: &PipelineCall,
) -> Result<LocalAnswer, ApiError> {
    let invocation_id = ctx.invocation_id.clone();
    let principal = &*ctx.principal.insert(principal);
    let started = Instant::now();
    let pipeline = state
        .catalog
        .pipeline(&principal.tenant, &call.name, call.version)
        .await?;
    let submission = call
        .task
        .then(|| Submission::read(state, session))
        .transpose()?;
    let body = admission::read_whole_body(session, MAX_PIPELINE_INPUT_BYTES).await?;
    let input = contract::json::parse_body(&body, contract::limits::MAX_JSON_DEPTH)?;
    if let Some(validator) = pipeline.input_validator()? {
        let violations = contract::schema::violations(&validator, &input);
        if !violations.is_empty() {
            return Err(contract::protocol::invalid_input_of(
                "the pipeline",
                violations,
            ));
        }
    }
    if let Some(submission) = submission {
        // Queued as a task of the pipeline's own queue; its steps are
        // admitted (limits, quotas) when it runs, as they would be now.
        let queue = (
            pipeline_queue(&pipeline.name),
            pipeline.version,
            PIPELINE_TASK_ATTEMPTS,
        );
        let record = submission.task(&invocation_id, principal, queue, input, 1);
        let mut answer = queue_task(state, record).await?;
        answer
            .headers
            .push((PIPELINE_VERSION, pipeline.version.to_string()));
        return Ok(answer);
    }
    let priority = headers::Priority::from_header(
        session
            .req_header()
            .headers
            .get(headers::PRIORITY)
            .and_then(|v| v.to_str().ok()),
    )?;
    let deadline = started + Duration::from_millis(pipeline.definition.timeout_ms);
    let caller = Arc::new(step::Caller {
        state: state.clone(),
        principal: principal.clone(),
        deadline,
        priority: priority.as_str().to_string(),
    });
    let (result, traces) = run::bounded(caller.clone(), &pipeline, &input, &invocation_id).await;
    run::record(&caller, &pipeline, &result, &traces, started);
    let output = result?;
    let body = if call.trace {
        json!({"output": output, "steps": traces})
    } else {
        output
    };
    let mut answer = LocalAnswer::ok(body);
    answer
        .headers
        .push((PIPELINE_VERSION, pipeline.version.to_string()));
    Ok(answer)
}
