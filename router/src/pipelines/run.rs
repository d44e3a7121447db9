//! Running a pipeline's graph: a step starts as soon as every step it
//! references is done, so independent steps run in parallel; a `foreach`
//! step calls its function once per element (at most `max_parallel` at a
//! time) and yields the outputs in element order. The first failure, or a
//! guard's refusal, ends the run: the steps still running are aborted (their
//! node calls are reset), and steps not started never start.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use contract::pipeline::{self, PipelineVersion, Scope, Step};
use contract::{ApiError, ErrorCode};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::step::{Called, Caller};

/// What one step did, for `?trace=steps` and the metrics.
#[derive(Debug, Clone, Serialize)]
pub struct StepTrace {
    pub id: String,
    pub function: String,
    /// The version that served (the last element's, for a `foreach`).
    pub version: Option<u32>,
    pub node: Option<String>,
    /// Whether any of its calls started an instance.
    pub cold_start: bool,
    /// Calls made (a `foreach` makes one per element) and attempts in all.
    pub calls: usize,
    pub attempts: u32,
    /// When it started, after the run's start, and how long it took.
    pub started_ms: f64,
    pub ms: f64,
    /// `succeeded`, `failed` or `refused`.
    pub outcome: &'static str,
}

/// The contract's answer for a failed step: 429s pass through as they are
/// (with the step named), the pipeline's deadline is 504, anything else is
/// 502 `step_failed` with the step and its error.
fn step_error(step: &str, error: ApiError, deadline: Instant) -> ApiError {
    if Instant::now() >= deadline {
        return ApiError::new(
            ErrorCode::Timeout,
            format!("the pipeline's deadline passed while step {step:?} ran"),
        )
        .with_details(json!({"step": step}));
    }
    if matches!(
        error.code,
        ErrorCode::RateLimited | ErrorCode::QuotaExceeded
    ) {
        let retry = error.retry_after_s;
        let mut passed = ApiError::new(error.code, format!("step {step:?}: {}", error.message))
            .with_details(json!({"step": step, "error": error.details}));
        passed.retry_after_s = retry;
        return passed;
    }
    let inner = json!({
        "code": error.code.as_str(),
        "message": error.message,
        "details": error.details,
    });
    ApiError::new(
        ErrorCode::StepFailed,
        format!("step {step:?} failed: {}", error.message),
    )
    .with_details(json!({"step": step, "error": inner}))
}

/// A step ready to start: its calls' inputs (one, or one per element).
struct Ready {
    index: usize,
    inputs: Vec<Value>,
    foreach: bool,
}

/// Builds a ready step's inputs from what is done.
fn prepare(
    index: usize,
    step: &Step,
    input: &Value,
    outputs: &HashMap<String, Arc<Value>>,
) -> Result<Ready, ApiError> {
    let scope = Scope {
        input,
        steps: outputs,
        item: None,
    };
    let missing = |m: pipeline::Missing| {
        let error = m.error();
        if m.in_input {
            error.with_details(json!({"step": step.id, "reference": m.reference}))
        } else {
            step_error(&step.id, error, far_future())
        }
    };
    let Some(foreach) = &step.foreach else {
        let one = pipeline::render(&step.input, &scope).map_err(missing)?;
        return Ok(Ready {
            index,
            inputs: vec![one],
            foreach: false,
        });
    };
    let items = pipeline::render(&Value::String(foreach.clone()), &scope).map_err(missing)?;
    let Value::Array(items) = items else {
        let e = ApiError::new(
            ErrorCode::InvalidInput,
            format!("foreach {foreach} is not an array"),
        );
        return Err(e.with_details(json!({"step": step.id, "reference": foreach})));
    };
    if items.len() > pipeline::MAX_FOREACH_ITEMS {
        let e = ApiError::new(
            ErrorCode::InvalidInput,
            format!(
                "foreach {foreach} has {} elements; the limit is {}",
                items.len(),
                pipeline::MAX_FOREACH_ITEMS
            ),
        );
        return Err(e.with_details(json!({"step": step.id, "reference": foreach})));
    }
    let inputs = items
        .iter()
        .map(|item| {
            let scope = Scope {
                input,
                steps: outputs,
                item: Some(item),
            };
            pipeline::render(&step.input, &scope).map_err(missing)
        })
        .collect::<Result<_, _>>()?;
    Ok(Ready {
        index,
        inputs,
        foreach: true,
    })
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400)
}

/// Runs one step's calls (bounded for a `foreach`), outputs in order.
async fn run_step(
    caller: Arc<Caller>,
    step: Step,
    ready: Ready,
    invocation_id: String,
    begun: Instant,
) -> (usize, Result<(Value, StepTrace), ApiError>) {
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(step.max_parallel()));
    let mut calls = JoinSet::new();
    for (k, input) in ready.inputs.into_iter().enumerate() {
        let (caller, limit) = (caller.clone(), limit.clone());
        let (function, pinned) = (step.function.clone(), step.version);
        let id = if ready.foreach {
            format!("{invocation_id}.{}.{k}", step.id)
        } else {
            format!("{invocation_id}.{}", step.id)
        };
        calls.spawn(async move {
            let _permit = limit.acquire_owned().await;
            (k, caller.call(&function, pinned, &input, &id).await)
        });
    }
    let total = calls.len();
    let mut done: Vec<Option<Called>> = vec![None; total];
    while let Some(joined) = calls.join_next().await {
        let (k, result) = match joined {
            Ok(r) => r,
            Err(e) => {
                let e = ApiError::new(ErrorCode::Internal, format!("a step call failed: {e}"));
                return (ready.index, Err(e));
            }
        };
        match result {
            Ok(called) => done[k] = Some(called),
            // The other calls are aborted when `calls` is dropped.
            Err(error) => return (ready.index, Err(error)),
        }
    }
    let called: Vec<Called> = done.into_iter().flatten().collect();
    let last = called.last();
    let trace = StepTrace {
        id: step.id.clone(),
        function: step.function.clone(),
        version: last.map(|c| c.version),
        node: last.map(|c| c.node.clone()),
        cold_start: called.iter().any(|c| c.cold_start),
        calls: called.len(),
        attempts: called.iter().map(|c| c.attempts).sum(),
        started_ms: started.duration_since(begun).as_secs_f64() * 1e3,
        ms: started.elapsed().as_secs_f64() * 1e3,
        outcome: "succeeded",
    };
    let output = if ready.foreach {
        Value::Array(called.into_iter().map(|c| c.output).collect())
    } else {
        called.into_iter().next().map_or(Value::Null, |c| c.output)
    };
    (ready.index, Ok((output, trace)))
}

/// Runs `pipeline` on `input` (already checked against its schema): its
/// output, or the contract's error; and the steps' traces either way.
pub async fn run(
    caller: Arc<Caller>,
    pipeline: &PipelineVersion,
    input: &Value,
    invocation_id: &str,
) -> (Result<Value, ApiError>, Vec<StepTrace>) {
    let steps = &pipeline.definition.steps;
    let deps: Vec<BTreeSet<String>> = pipeline::waits(&pipeline.definition);
    let mut outputs: HashMap<String, Arc<Value>> = HashMap::new();
    let mut started = vec![false; steps.len()];
    let mut running = JoinSet::new();
    let mut traces = Vec::new();
    let deadline = caller.deadline;
    let begun = Instant::now();
    let failed = |traces: Vec<StepTrace>, e: ApiError| (Err(e), traces);
    loop {
        for (i, step) in steps.iter().enumerate() {
            if started[i] || !deps[i].iter().all(|d| outputs.contains_key(d)) {
                continue;
            }
            started[i] = true;
            let ready = match prepare(i, step, input, &outputs) {
                Ok(ready) => ready,
                Err(e) => return failed(traces, e),
            };
            let (caller, step) = (caller.clone(), step.clone());
            let id = invocation_id.to_string();
            running.spawn(run_step(caller, step, ready, id, begun));
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (i, result) = match joined {
            Ok(r) => r,
            Err(e) => {
                let e = ApiError::new(ErrorCode::Internal, format!("a step failed: {e}"));
                return failed(traces, e);
            }
        };
        let step = &steps[i];
        match result {
            Ok((output, mut trace)) => {
                if let Some((field, value)) = step.guard.as_ref().and_then(|g| g.refuses(&output)) {
                    trace.outcome = "refused";
                    traces.push(trace);
                    let e = ApiError::new(
                        ErrorCode::Refused,
                        format!("step {:?} refused the input: {field} is {value}", step.id),
                    )
                    .with_details(json!({"step": step.id, "field": field, "value": value}));
                    return failed(traces, e);
                }
                traces.push(trace);
                outputs.insert(step.id.clone(), Arc::new(output));
            }
            Err(error) => {
                traces.push(StepTrace {
                    id: step.id.clone(),
                    function: step.function.clone(),
                    version: None,
                    node: None,
                    cold_start: false,
                    calls: 0,
                    attempts: 0,
                    started_ms: 0.0,
                    ms: begun.elapsed().as_secs_f64() * 1e3,
                    outcome: "failed",
                });
                return failed(traces, step_error(&step.id, error, deadline));
            }
        }
    }
    let scope = Scope {
        input,
        steps: &outputs,
        item: None,
    };
    let output = pipeline::render(&pipeline.definition.output, &scope).map_err(|m| {
        let e = m.error();
        e.with_details(json!({"reference": m.reference}))
    });
    (output, traces)
}

/// [`run`] within the caller's deadline, plus a little grace (the steps see
/// the deadline first and say which ran late): past it, 504 `timeout` and
/// whatever still runs is dropped (aborted).
pub async fn bounded(
    caller: Arc<Caller>,
    pipeline: &PipelineVersion,
    input: &Value,
    invocation_id: &str,
) -> (Result<Value, ApiError>, Vec<StepTrace>) {
    let grace = caller.deadline + std::time::Duration::from_millis(100);
    let running = run(caller, pipeline, input, invocation_id);
    match tokio::time::timeout_at(grace.into(), running).await {
        Ok(done) => done,
        Err(_) => {
            let e = ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "the pipeline did not finish within its timeout_ms of {}",
                    pipeline.definition.timeout_ms
                ),
            );
            (Err(e), Vec::new())
        }
    }
}

/// Counts a finished run and its steps in the router's metrics.
pub fn record(
    caller: &Caller,
    pipeline: &PipelineVersion,
    result: &Result<Value, ApiError>,
    traces: &[StepTrace],
    started: Instant,
) {
    let metrics = &caller.state.metrics.pipelines;
    let tenant = &caller.principal.tenant;
    for t in traces {
        metrics.step(tenant, &pipeline.name, &t.id, t.outcome, t.ms / 1e3);
    }
    let status = result.as_ref().map_or_else(|e| e.status(), |_| 200);
    let seconds = started.elapsed().as_secs_f64();
    metrics.run(tenant, &pipeline.name, status, seconds);
}
