//! The state of one call through the router (Pingora's per-request `CTX`),
//! filled in by the phase hooks in `proxy`.
//!
//! Layer: names `guards`, `placement`, `admission`, `routes`, `respond` and
//! `cache`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use contract::{ApiError, ErrorCode, FunctionVersion, Principal};
use pingora_error::{Error, ErrorSource};
use policies::breaker::{Outcome, Permit};

use crate::admission::StreamedBody;
use crate::cache::CacheUse;
use crate::guards::{GuardPass, Guards};
use crate::placement::InFlight;
use crate::respond::Stamp;
use crate::routes::BodyKind;

/// How long a call without a deadline (nothing resolved yet) may take upstream.
const NO_DEADLINE: Duration = Duration::from_secs(30);

/// Per-request state.
pub struct Ctx {
    pub(crate) started: Instant,
    pub(crate) deadline: Option<Instant>,
    pub(crate) invocation_id: String,
    pub(crate) principal: Option<Principal>,
    pub(crate) function: Option<Arc<FunctionVersion>>,
    pub(crate) body_kind: Option<BodyKind>,
    pub(crate) upstream_path: Option<String>,
    /// What the guards' admission holds until the call ends.
    pub(crate) guard_pass: Option<GuardPass>,
    /// A body over the replay buffer, validated while it streams.
    pub(crate) streamed: Option<StreamedBody>,
    /// A refusal decided after proxying began, rendered by `fail_to_proxy`.
    pub(crate) refusal: Option<ApiError>,
    /// The error code this request was answered with, for metrics.
    pub(crate) error_code: Option<ErrorCode>,
    pub(crate) attempts: u32,
    pub(crate) retry_delay: Option<Duration>,
    pub(crate) response_started: bool,
    /// `RateLimit-Policy` / `RateLimit` headers for the answer.
    pub(crate) rate_headers: Vec<(&'static str, String)>,
    /// The node's error code of a failed call (`x-taskmesh-error-code`).
    pub(crate) upstream_error: Option<ErrorCode>,
    /// The node of the attempt in progress and its node-breaker permit.
    pub(crate) node_permit: Option<(SocketAddr, Permit)>,
    /// The attempt in progress, counted in its node's load until dropped.
    pub(crate) in_flight: Option<InFlight>,
    /// Nodes earlier attempts of this call went to.
    pub(crate) tried: Vec<String>,
    /// The result cache's part in this call (a version with `cache` only).
    pub(crate) cache: Option<CacheUse>,
    /// What the call weighs (`contract::cost`; 1 until measured), sent to
    /// the node for its queue estimate.
    pub(crate) cost: u64,
}

impl Ctx {
    /// The status a call is counted by: the answer's, or for a gRPC error (a
    /// `200` with `grpc-status`) the status of its contract code; 0 when
    /// nothing was answered.
    pub(crate) fn effective_status(&self, written: Option<u16>) -> u16 {
        let status = written.unwrap_or(0);
        let code = self.error_code.or(self.upstream_error);
        code.filter(|_| status == 200)
            .map_or(status, |c| c.status())
    }

    /// A new call, with a fresh invocation id (UUID v7).
    pub fn new() -> Self {
        Ctx {
            started: Instant::now(),
            deadline: None,
            invocation_id: uuid::Uuid::now_v7().to_string(),
            principal: None,
            function: None,
            body_kind: None,
            upstream_path: None,
            guard_pass: None,
            streamed: None,
            refusal: None,
            error_code: None,
            attempts: 0,
            retry_delay: None,
            response_started: false,
            rate_headers: Vec::new(),
            upstream_error: None,
            node_permit: None,
            in_flight: None,
            tried: Vec::new(),
            cache: None,
            cost: 1,
        }
    }

    /// Feeds a chunk of a streamed body (`None`: the body is not streamed).
    /// Once the whole body validated, the rest of its cost is charged
    /// before the node sees it (the estimate stays what the node was told).
    pub(crate) async fn take_streamed(
        &mut self,
        guards: &Guards,
        chunk: Option<Bytes>,
        end_of_stream: bool,
    ) -> Option<Result<Bytes, ApiError>> {
        let streamed = self.streamed.as_mut()?;
        let taken = streamed.take(chunk, end_of_stream);
        let extra = streamed.uncharged();
        if taken.is_err() || extra == 0 {
            return Some(taken);
        }
        let charged = streamed.charged;
        streamed.charged += extra;
        if let (Some(principal), Some(version)) = (&self.principal, &self.function) {
            let cost = charged + extra;
            if let Err(err) = guards.charge_more(principal, version, charged, cost).await {
                return Some(Err(err));
            }
        }
        Some(taken)
    }

    /// The time left before the call's deadline.
    pub fn deadline_left(&self) -> Duration {
        self.deadline
            .map_or(NO_DEADLINE, |d| d.saturating_duration_since(Instant::now()))
    }

    /// What every answer the router writes for this call carries.
    pub fn stamp(&self) -> Stamp<'_> {
        Stamp {
            invocation_id: &self.invocation_id,
            version: self.function.as_ref().map(|v| v.version),
            rate_headers: &self.rate_headers,
        }
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}

/// What a call tells its version's breaker: server faults are failures;
/// client faults (4xx) and a node's `overloaded` are not the function's; a
/// call the client cancelled before any answer tells nothing (`None`), so
/// cancelled calls can never open the breaker for everyone.
pub fn breaker_outcome(status: u16, e: Option<&Error>, ctx: &Ctx) -> Option<Outcome> {
    let client_gave_up =
        status == 0 && e.is_some_and(|e| matches!(e.esource(), ErrorSource::Downstream));
    if client_gave_up {
        return None;
    }
    let not_the_functions_fault = ctx.upstream_error == Some(ErrorCode::Overloaded)
        || ctx.error_code == Some(ErrorCode::Overloaded);
    Some(
        if (status >= 500 || status == 0) && !not_the_functions_fault {
            Outcome::Failure
        } else {
            Outcome::Success
        },
    )
}
