//! One call of a function on behalf of a pipeline's caller: the same path as
//! a direct call, made by the router itself. The version is resolved in the
//! caller's tenant (an alias splits by the caller's client id), the input is
//! checked against the function's schema and tensors and measured for its
//! cost, the caller's rate limit and quota and the version's breaker admit
//! it, placement picks the node (node breakers, bounded load), and a failure
//! before the function ran is retried on the next node under the function's
//! retry policy, within what is left of the pipeline's deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use contract::{headers, ApiError, ErrorCode, FunctionVersion, Principal, Qualifier};
use policies::breaker::Outcome;
use policies::retry::{FailureKind, RetryDecision};
use serde_json::Value;

use crate::admission;
use crate::node_call::{self, NodeAnswer, NodeCall};
use crate::routes::BodyKind;
use crate::state::RouterState;

/// The largest answer a step reads back from a node.
pub const MAX_STEP_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// What a step call came to.
#[derive(Debug, Clone)]
pub struct Called {
    pub output: Value,
    pub version: u32,
    pub node: String,
    pub cold_start: bool,
    pub attempts: u32,
}

/// Who calls, and until when (shared by a run's step tasks).
pub struct Caller {
    pub state: Arc<RouterState>,
    pub principal: Principal,
    pub deadline: Instant,
    pub priority: String,
}

fn timed_out() -> ApiError {
    ApiError::new(
        ErrorCode::Timeout,
        "the pipeline's deadline passed before the step finished",
    )
}

impl Caller {
    /// Calls `function` (a pinned version, or its default) with `input`.
    pub async fn call(
        &self,
        function: &str,
        pinned: Option<u32>,
        input: &Value,
        invocation_id: &str,
    ) -> Result<Called, ApiError> {
        let (state, principal) = (&*self.state, &self.principal);
        let qualifier = pinned.map_or(Qualifier::Default, Qualifier::Version);
        let (version, _) = state
            .catalog
            .resolve_routed(
                &principal.tenant,
                function,
                &qualifier,
                &principal.client_id,
            )
            .await?;
        let body = serde_json::to_vec(input)
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("encoding failed: {e}")))?;
        let cap = admission::body_cap(&version);
        if body.len() > cap {
            return Err(admission::too_large(cap));
        }
        let cost = admission::validate(&version, BodyKind::Invoke, &body, None)?.cost;
        let body = Bytes::from(body);
        let mut tried = Vec::new();
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            match self
                .attempt(&version, cost, &body, invocation_id, left, &mut tried)
                .await
            {
                Ok(mut called) => {
                    called.attempts = tried.len() as u32;
                    return Ok(called);
                }
                Err((error, Some(kind))) => {
                    let left = self.deadline.saturating_duration_since(Instant::now());
                    let attempts = tried.len() as u32;
                    match state.guards.decide_retry(&version, attempts, kind, left) {
                        RetryDecision::RetryAfter(delay) => {
                            state
                                .metrics
                                .retried(&version.tenant, &version.name, version.version);
                            tokio::time::sleep(delay).await;
                        }
                        RetryDecision::GiveUp(_) => return Err(error),
                    }
                }
                Err((error, None)) => return Err(error),
            }
        }
    }

    /// One attempt on one node; a failure says whether it may be retried.
    async fn attempt(
        &self,
        version: &FunctionVersion,
        cost: u64,
        body: &Bytes,
        invocation_id: &str,
        left: Duration,
        tried: &mut Vec<String>,
    ) -> Result<Called, (ApiError, Option<FailureKind>)> {
        let state = &*self.state;
        let mut pass = state
            .guards
            .admit(&self.principal, version, cost, &mut Vec::new())
            .await
            .map_err(|e| (e, None))?;
        let Some((node, permit)) = state.choose_node(version, tried) else {
            state.guards.release(version, &mut pass, None);
            let e = ApiError::new(ErrorCode::Unavailable, "no runtime node is available")
                .with_retry_after(1);
            return Err((e, None));
        };
        tried.push(node.info.id.clone());
        let deadline = left.min(Duration::from_millis(version.definition.timeout_ms));
        let call = NodeCall {
            invocation_id,
            tenant: &self.principal.tenant,
            priority: &self.priority,
            cost,
            deadline,
            answer_cap: MAX_STEP_OUTPUT_BYTES,
        };
        let started = Instant::now();
        let in_flight = node.begin();
        let answer = node_call::invoke(
            &state.node_client,
            &state.cluster_key,
            node.info.addr,
            version,
            &call,
            body.clone(),
        )
        .await;
        drop(in_flight);
        let seconds = started.elapsed().as_secs_f64();
        let reached = matches!(answer, NodeAnswer::Answered(..));
        let node_outcome = if reached {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        state
            .guards
            .record_node(node.info.addr, permit, node_outcome);
        let (error, kind) = match answer {
            NodeAnswer::Answered(200, headers, body) => {
                state
                    .guards
                    .release(version, &mut pass, Some(Outcome::Success));
                state.guards.record_call(version, false, seconds);
                if body.len() > MAX_STEP_OUTPUT_BYTES {
                    let e = ApiError::new(
                        ErrorCode::InvalidOutput,
                        format!("the output is over the {MAX_STEP_OUTPUT_BYTES} bytes a step may pass on"),
                    );
                    return Err((e, None));
                }
                let output = serde_json::from_slice(&body).map_err(|e| {
                    let e = ApiError::new(
                        ErrorCode::InvalidOutput,
                        format!("the node's answer is not JSON: {e}"),
                    );
                    (e, None)
                })?;
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                return Ok(Called {
                    output,
                    version: version.version,
                    node: header(headers::NODE).unwrap_or_else(|| node.info.id.clone()),
                    cold_start: header(headers::COLD_START).as_deref() == Some("true"),
                    attempts: 0,
                });
            }
            NodeAnswer::Answered(status, _, body) => {
                let error = ApiError::from_body(status, &body).unwrap_or_else(|| {
                    ApiError::new(
                        ErrorCode::FunctionFailed,
                        format!("the node answered {status}"),
                    )
                });
                let kind = match error.code {
                    ErrorCode::Overloaded => FailureKind::Overloaded,
                    ErrorCode::Timeout => FailureKind::Timeout,
                    code if code.is_client_fault() => FailureKind::ClientError,
                    _ => FailureKind::FunctionFailed,
                };
                (error, kind)
            }
            NodeAnswer::Failed(reason) => {
                let refused = reason.contains("onnect");
                if refused {
                    state.nodes.eject(&node.info.id);
                }
                let kind = if refused {
                    FailureKind::ConnectRefused
                } else {
                    FailureKind::Timeout
                };
                let e = ApiError::new(
                    ErrorCode::Unavailable,
                    format!("the runtime node failed: {reason}"),
                );
                (e, kind)
            }
        };
        let client_fault = error.code.is_client_fault();
        let outcome = match kind {
            FailureKind::Overloaded => None,
            _ if client_fault => Some(Outcome::Success),
            _ => Some(Outcome::Failure),
        };
        state.guards.release(version, &mut pass, outcome);
        if outcome.is_some() {
            state.guards.record_call(version, !client_fault, seconds);
        }
        Err((error, Some(kind)))
    }
}
