//! The router's one `ProxyHttp` implementation: thin phase hooks over the
//! modules below it (the crate doc gives their layers).
//!
//! - `request_filter` answers `/metrics` (`local`), then `decide`s the call:
//!   match the endpoint (`routes`); hand tasks and pipelines to `tasks` and
//!   `pipelines`; `authenticate`; `resolve` the version in the caller's tenant;
//!   answer OIP metadata and readiness (`local`); `prepare_upstream`; admit
//!   the body (`admission`); `apply_guards` (rate limit, quota, concurrency,
//!   breaker). Every refusal is answered here before any node is touched.
//! - `request_body_filter` validates a body over the replay buffer as it
//!   streams, holding it back until it passes.
//! - `upstream_peer` picks the runtime node (h2c, multiplexed streams) and
//!   waits out the backoff of a retry.
//! - `upstream_request_filter` pins the resolved version in the upstream path
//!   and passes the invocation id, tenant and remaining deadline to the node.
//! - `upstream_response_filter` turns a node's 503 `overloaded` into a retry.
//! - `response_filter` adds the invocation id, version and `RateLimit` headers.
//! - `fail_to_connect` / `error_while_proxy` decide retries with `policies::retry`.
//! - `fail_to_proxy` renders every failure as the contract's JSON error (all
//!   of the router's errors go through `respond::write_error`).
//! - `logging` reports the outcome to the breaker and records metrics.
//!
//! Layer: the top one; names every other module.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use contract::limits::UPSTREAM_MAX_H2_STREAMS;
use contract::{ApiError, ErrorCode, FunctionVersion, Principal, Qualifier, Scope};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use policies::breaker;
use policies::retry::{FailureKind, RetryDecision};

use crate::admission::{self, Admitted};
use crate::cache::CacheUse;
use crate::call::{self, Ctx};
use crate::local::{self, LocalAnswer};
use crate::respond::{self, Delivery};
use crate::routes::{self, BodyKind, Endpoint};
use crate::{pipelines, tasks};

pub use crate::metrics::MetricsSource;
pub use crate::placement::placement_key;
pub use crate::state::RouterState;
pub use contract::headers;

/// Extra time the router gives a node beyond the deadline, so that the node's
/// own 504 (which frees its slot) arrives before the router gives up.
const NODE_ANSWER_GRACE: Duration = Duration::from_millis(250);

/// What `decide` made of a request.
pub(crate) enum Decision {
    /// Proxy it to a node.
    Proxy,
    /// Answer it here with one gRPC message (a framed body, then `grpc-status: 0`).
    Grpc(Bytes),
    /// Answer it here (health, metadata).
    Answer(LocalAnswer),
    /// Answer it from the result cache.
    Cached(Bytes),
}

pub struct TaskmeshProxy {
    pub state: Arc<RouterState>,
}

/// The routing key an alias splits by: the caller's own
/// (`x-taskmesh-routing-key`), else its client id, else this invocation's id
/// (so one caller sticks to one version).
fn routing_key(session: &Session, principal: &Principal, invocation_id: &str) -> String {
    session
        .req_header()
        .headers
        .get(headers::ROUTING_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or(if principal.client_id.is_empty() {
            invocation_id
        } else {
            principal.client_id.as_str()
        })
        .to_string()
}

impl TaskmeshProxy {
    /// Decides the request: proxy it, answer it here, or answer from the cache.
    async fn decide(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> std::result::Result<Decision, ApiError> {
        if let Some(method) = routes::grpc_method(session.req_header()) {
            return self.decide_grpc(session, ctx, method).await;
        }
        let endpoint = {
            let request = session.req_header();
            routes::endpoint(&request.method, request.uri.path(), request.uri.query())?
        };
        if let Endpoint::Tasks(request) = &endpoint {
            let principal = self.authenticate(session).await?;
            let answer = tasks::api::answer(&self.state, &principal, request).await?;
            return Ok(Decision::Answer(answer));
        }
        if let Endpoint::InvokePipeline(call) = &endpoint {
            let principal = self.authenticate(session).await?;
            let answer = pipelines::invoke(&self.state, session, ctx, principal, call).await;
            return answer.map(Decision::Answer);
        }
        let Some((name, qualifier)) = endpoint.function() else {
            let draining = self.state.draining.load(Ordering::Relaxed);
            return local::router_answer(&endpoint, &self.state.nodes, draining)
                .map(Decision::Answer);
        };
        let principal = self.authenticate(session).await?;
        let version = self
            .resolve(session, ctx, &principal, name, qualifier)
            .await?;
        if let Endpoint::SubmitTask { .. } = endpoint {
            let id = ctx.invocation_id.clone();
            let answer =
                tasks::api::submit(&self.state, session, &id, &principal, &version).await?;
            ctx.principal = Some(principal);
            return Ok(Decision::Answer(answer));
        }
        let Some(kind) = endpoint.body_kind() else {
            let catalog = self.state.catalog.as_ref();
            let nodes = &self.state.nodes;
            return local::function_answer(&endpoint, catalog, &principal.tenant, &version, nodes)
                .await
                .map(Decision::Answer);
        };
        self.prepare_upstream(session, ctx, kind, &version)?;
        let deadline = ctx
            .deadline
            .unwrap_or_else(|| ctx.started + Duration::from_secs(60));
        let admitted = admission::admit_body(session, &version, kind, deadline).await?;
        ctx.cost = match &admitted {
            Admitted::Read(validated) => validated.cost,
            Admitted::Streamed(streamed) => streamed.charged,
        };
        self.apply_guards(ctx, principal, &version).await?;
        match admitted {
            Admitted::Streamed(streamed) => ctx.streamed = Some(streamed),
            Admitted::Read(validated) => {
                let input = &validated.body;
                if let Some(hit) = self.look_up_cache(session, ctx, &version, kind, input) {
                    return Ok(Decision::Cached(hit));
                }
            }
        }
        Ok(Decision::Proxy)
    }

    /// Step: the result cache, for a version that declares one (after the
    /// guards: a hit counts against rate limits and quotas). A hit ends the
    /// call here and gives back its breaker permit.
    fn look_up_cache(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        version: &Arc<FunctionVersion>,
        kind: BodyKind,
        input: &serde_json::Value,
    ) -> Option<Bytes> {
        if version.definition.cache.is_none() || kind != BodyKind::Invoke {
            return None;
        }
        let headers = &session.req_header().headers;
        let (usage, hit) = self
            .state
            .cache
            .look_up(version, headers, input, Instant::now());
        ctx.cache = Some(usage);
        if hit.is_some() {
            if let Some(mut pass) = ctx.guard_pass.take() {
                self.state.guards.release(version, &mut pass, None);
            }
        }
        hit
    }

    /// Step: the caller's key, which must carry the `invoke` scope (401, 403).
    pub(crate) async fn authenticate(
        &self,
        session: &Session,
    ) -> std::result::Result<Principal, ApiError> {
        let principal = self.caller(session).await?;
        principal.require(Scope::Invoke)?;
        Ok(principal)
    }

    /// The owner of the request's key, whatever its scopes (401 without one).
    async fn caller(&self, session: &Session) -> std::result::Result<Principal, ApiError> {
        let authorization = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.state.auth.authenticate(authorization).await
    }

    /// Step: the immutable version the call is for, in the caller's tenant; an
    /// alias picks by the [`routing_key`]. Another tenant's function is simply
    /// not there (404, never 403).
    pub(crate) async fn resolve(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        principal: &Principal,
        name: &str,
        qualifier: &Qualifier,
    ) -> std::result::Result<Arc<FunctionVersion>, ApiError> {
        let routing_key = routing_key(session, principal, &ctx.invocation_id);
        let (version, _alias) = self
            .state
            .catalog
            .resolve_routed(&principal.tenant, name, qualifier, &routing_key)
            .await?;
        ctx.function = Some(version.clone());
        Ok(version)
    }

    /// Step: where an upstream-bound call goes and by when. The priority
    /// header is checked at the edge so a bad one never costs a node a stream.
    pub(crate) fn prepare_upstream(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        kind: BodyKind,
        version: &FunctionVersion,
    ) -> std::result::Result<(), ApiError> {
        headers::Priority::from_header(
            session
                .req_header()
                .headers
                .get(headers::PRIORITY)
                .and_then(|v| v.to_str().ok()),
        )?;
        ctx.upstream_path = Some(kind.upstream_path(version));
        ctx.body_kind = Some(kind);
        ctx.deadline = Some(ctx.started + Duration::from_millis(version.definition.timeout_ms));
        Ok(())
    }

    /// Step: the guard rails (`Guards::admit`: rate limit, quota, concurrency,
    /// circuit breaker). The `RateLimit` headers are kept for the answer,
    /// admitted or not.
    pub(crate) async fn apply_guards(
        &self,
        ctx: &mut Ctx,
        principal: Principal,
        version: &FunctionVersion,
    ) -> std::result::Result<(), ApiError> {
        let pass = self
            .state
            .guards
            .admit(&principal, version, ctx.cost, &mut ctx.rate_headers)
            .await;
        ctx.principal = Some(principal);
        ctx.guard_pass = Some(pass?);
        Ok(())
    }

    /// Reports the pending node attempt's outcome to its node breaker.
    fn settle_node(&self, ctx: &mut Ctx, outcome: breaker::Outcome) {
        if let Some((node, permit)) = ctx.node_permit.take() {
            self.state.guards.record_node(node, permit, outcome);
        }
    }

    /// Records a retry decision for `kind`; returns whether to retry.
    fn plan_retry(&self, ctx: &mut Ctx, kind: FailureKind) -> bool {
        let Some(version) = ctx.function.clone() else {
            return false;
        };
        if ctx.streamed.is_some() || ctx.response_started {
            return false;
        }
        match self
            .state
            .guards
            .decide_retry(&version, ctx.attempts, kind, ctx.deadline_left())
        {
            RetryDecision::RetryAfter(delay) => {
                ctx.retry_delay = Some(delay);
                self.state
                    .metrics
                    .retried(&version.tenant, &version.name, version.version);
                tracing::info!(invocation_id = %ctx.invocation_id, attempt = ctx.attempts + 1, delay_ms = delay.as_millis() as u64, "retrying on the next node");
                true
            }
            RetryDecision::GiveUp(reason) => {
                tracing::debug!(invocation_id = %ctx.invocation_id, ?reason, "not retrying");
                false
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for TaskmeshProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // The same header limit on HTTP/1.1 as HTTP/2's SETTINGS (431), before
        // anything else looks at them.
        if let Err(err) = admission::check_header_size(session.req_header()) {
            ctx.error_code = Some(err.code);
            respond::write_error(session, &err, &ctx.stamp(), Delivery::Refusal).await?;
            return Ok(true);
        }
        if local::is_metrics_request(session.req_header()) {
            // Metrics name every tenant's functions: the operator's key or one
            // with the `metrics` scope (401 without a key, 403 with another).
            let allowed = match self.caller(session).await {
                Ok(principal) => principal.require(Scope::Metrics),
                Err(err) => Err(err),
            };
            session.req_header_mut().remove_header("authorization");
            if let Err(err) = allowed {
                admission::discard_body(session).await;
                respond::write_error(session, &err, &ctx.stamp(), Delivery::Refusal).await?;
                return Ok(true);
            }
            let state = &self.state;
            let text =
                local::metrics_text(&state.metrics, &state.guards, state.extra_metrics.as_ref());
            local::write_metrics(session, text).await?;
            return Ok(true);
        }
        let decided = self.decide(session, ctx).await;
        // The key has done its work: it never travels further or reaches a log line.
        session.req_header_mut().remove_header("authorization");
        match decided {
            Ok(Decision::Proxy) => return Ok(false),
            Ok(Decision::Answer(answer)) => {
                let (status, body, extra) = (answer.status, &answer.body, &answer.headers);
                respond::write_json(session, status, body, extra, &ctx.stamp()).await?;
            }
            Ok(Decision::Cached(body)) => {
                respond::write_cached(session, body, &ctx.stamp()).await?;
            }
            Ok(Decision::Grpc(body)) => respond::write_grpc(session, body, &ctx.stamp()).await?,
            Err(err) => {
                ctx.error_code = Some(err.code);
                if err.code != ErrorCode::PayloadTooLarge {
                    admission::discard_body(session).await;
                }
                respond::write_error(session, &err, &ctx.stamp(), Delivery::Refusal).await?;
            }
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if let Some(delay) = ctx.retry_delay.take() {
            tokio::time::sleep(delay).await;
        }
        // A new attempt: forget what the previous node answered.
        ctx.upstream_error = None;
        if ctx
            .refusal
            .as_ref()
            .is_some_and(|e| e.code == ErrorCode::Overloaded)
        {
            ctx.refusal = None;
        }
        let left = ctx.deadline_left();
        if left.is_zero() {
            ctx.refusal = Some(ApiError::new(
                ErrorCode::Timeout,
                "the invocation's deadline passed before a node could take it",
            ));
            return Err(Error::explain(
                ErrorType::HTTPStatus(504),
                "deadline passed",
            ));
        }
        let version = ctx
            .function
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no function resolved"))?;
        let Some((node, permit)) = self.state.choose_node(version, &ctx.tried) else {
            let reason = if version.definition.resources.gpu {
                "no runtime node with a GPU is available: CPU-only nodes cannot serve GPU functions (resources.gpu)"
            } else {
                "no runtime node is available"
            };
            ctx.refusal = Some(ApiError::new(ErrorCode::Unavailable, reason).with_retry_after(1));
            return Err(Error::explain(ErrorType::ConnectNoRoute, reason));
        };
        ctx.node_permit = Some((node.info.addr, permit));
        ctx.tried.push(node.info.id.clone());
        ctx.in_flight = Some(node.begin());
        ctx.attempts += 1;
        let mut peer = HttpPeer::new(node.info.addr, false, String::new());
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = UPSTREAM_MAX_H2_STREAMS;
        peer.options.connection_timeout = Some(Duration::from_secs(2).min(left));
        peer.options.read_timeout = Some(left + NODE_ANSWER_GRACE);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        peer.options.h2_ping_interval = Some(Duration::from_secs(30));
        // One upstream connection per worker thread (no-steal runtime only).
        if self.state.per_thread_upstreams {
            peer.group_key = crate::placement::thread_slot();
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(path) = &ctx.upstream_path {
            request.set_uri(
                path.parse::<http::Uri>().map_err(|e| {
                    Error::because(ErrorType::InternalError, "bad upstream path", e)
                })?,
            );
        }
        // A node sees only the headers it needs (and the router's own below):
        // a caller's other headers, however large, never reach the shared
        // connection to the node.
        let unneeded: Vec<http::HeaderName> = request
            .headers
            .keys()
            .filter(|name| !headers::FORWARDED_TO_NODE.contains(&name.as_str()))
            .cloned()
            .collect();
        for name in unneeded {
            request.remove_header(&name);
        }
        request.insert_header("host", "taskmesh-node")?;
        request.insert_header(headers::INVOCATION_ID, ctx.invocation_id.as_str())?;
        let tenant = ctx
            .principal
            .as_ref()
            .map_or(contract::DEFAULT_TENANT, |p| p.tenant.as_str());
        request.insert_header(headers::TENANT, tenant)?;
        request.insert_header(
            headers::DEADLINE_MS,
            ctx.deadline_left().as_millis().to_string(),
        )?;
        request.remove_header("authorization");
        // Overwrites whatever a client sent under that name.
        request.insert_header(headers::CLUSTER_KEY, self.state.cluster_key.expose())?;
        request.insert_header(headers::COST, ctx.cost.to_string())?;
        if let Some(streamed) = &mut ctx.streamed {
            streamed.clear();
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.streamed.is_none() {
            return Ok(());
        }
        let Some(taken) = ctx
            .take_streamed(&self.state.guards, body.take(), end_of_stream)
            .await
        else {
            return Ok(());
        };
        match taken {
            Ok(forward) => {
                *body = Some(forward);
                Ok(())
            }
            Err(err) => {
                let status = err.status();
                ctx.refusal = Some(err);
                Err(Error::explain(ErrorType::HTTPStatus(status), "input refused").into_down())
            }
        }
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let code = response
            .headers
            .get(headers::ERROR_CODE)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorCode::from_wire);
        ctx.upstream_error = code;
        if code == Some(ErrorCode::Overloaded) {
            // The node had no room: another node (or this one, later) may.
            let retry_after = response
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            ctx.refusal = Some(
                ApiError::new(
                    ErrorCode::Overloaded,
                    "every runtime node tried was overloaded",
                )
                .with_retry_after(retry_after),
            );
            return Err(Error::explain(
                ErrorType::Custom("node overloaded"),
                "node answered 503 overloaded",
            )
            .into_up());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.response_started = true;
        self.settle_node(ctx, breaker::Outcome::Success);
        response.insert_header(headers::INVOCATION_ID, ctx.invocation_id.as_str())?;
        // The version the router resolved and pinned, on errors from the node too.
        if let Some(version) = &ctx.function {
            response.insert_header(headers::VERSION, version.version.to_string())?;
        }
        for (name, value) in &ctx.rate_headers {
            response.insert_header(*name, value.as_str())?;
        }
        if let Some(said) = ctx
            .cache
            .as_mut()
            .and_then(|c| c.answered(response.status.as_u16()))
        {
            response.insert_header(headers::CACHE, said)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let (Some(usage), Some(version)) = (&mut ctx.cache, &ctx.function) {
            if let Some((input, result)) = usage.gather(body.as_ref(), end_of_stream) {
                self.state.cache.put(version, input, result, Instant::now());
            }
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.settle_node(ctx, breaker::Outcome::Failure);
        // A refused connection takes the node out of the ring at once (its
        // heartbeat expiring is the backstop); a timeout may be our deadline.
        if let Some(attempt) = ctx.in_flight.take() {
            if matches!(
                e.etype(),
                ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError
            ) {
                self.state.nodes.eject(&attempt.node().info.id);
            }
        }
        if self.plan_retry(ctx, FailureKind::ConnectRefused) {
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        _session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        if ctx.upstream_error == Some(ErrorCode::Overloaded) {
            let retry = self.plan_retry(ctx, FailureKind::Overloaded);
            e.set_retry(retry);
            return e;
        }
        // Only a failure before the node answered anything is safe to retry.
        let retry = e.esource() == &ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed
                    | ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::H2Error
            )
            && self.plan_retry(ctx, FailureKind::ResetBeforeResponse);
        e.set_retry(retry);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let err = ctx.refusal.take().unwrap_or_else(|| respond::classify(e));
        // A client that went away gets no answer.
        let client_gone = e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            );
        if client_gone {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        ctx.error_code = Some(err.code);
        if err.code.is_client_fault() {
            tracing::debug!(invocation_id = %ctx.invocation_id, code = err.code.as_str(), "request refused");
        } else {
            tracing::warn!(invocation_id = %ctx.invocation_id, code = err.code.as_str(), error = %e, "proxying failed");
        }
        let _ = respond::write_error(session, &err, &ctx.stamp(), Delivery::ProxyFailure).await;
        FailToProxy {
            error_code: err.status(),
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = ctx.effective_status(session.response_written().map(|r| r.status.as_u16()));
        // Only refused connections count against a node (see `fail_to_connect`);
        // an answered or reset stream means the node was reachable.
        let _ = e;
        self.settle_node(ctx, breaker::Outcome::Success);
        if let (Some(version), Some(mut pass)) = (ctx.function.clone(), ctx.guard_pass.take()) {
            self.state
                .guards
                .release(&version, &mut pass, call::breaker_outcome(status, e, ctx));
        }
        // A call with no resolved function (unknown, unauthenticated) is `-`, `-`.
        let (tenant, function, version) = match &ctx.function {
            Some(v) => (v.tenant.as_str(), v.name.as_str(), Some(v.version)),
            None => ("-", "-", None),
        };
        let seconds = ctx.started.elapsed().as_secs_f64();
        self.state
            .metrics
            .record(tenant, function, version, status, seconds);
        // Per-version evidence for rollouts: calls that reached a node or
        // failed on the server side (a 4xx is the caller's, not the version's).
        // A cache hit asked no node: it is no evidence about the version.
        let from_cache = matches!(ctx.cache, Some(CacheUse::Hit));
        if let (Some(served), Some(_), false) = (&ctx.function, ctx.body_kind, from_cache) {
            if status >= 500 || (ctx.principal.is_some() && status > 0 && status < 400) {
                let failed = status >= 500;
                self.state.guards.record_call(served, failed, seconds);
                let kind = failed.then(|| {
                    ctx.error_code
                        .or(ctx.upstream_error)
                        .map_or("function_failed", |c| c.as_str())
                });
                self.state.metrics.record_version(
                    &served.tenant,
                    &served.name,
                    served.version,
                    kind,
                    seconds,
                );
            }
        }
        if let Some(code) = ctx.error_code.or(ctx.upstream_error) {
            self.state
                .metrics
                .refused(tenant, function, version, code.as_str());
        }
    }
}
