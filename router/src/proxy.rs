//! The router's one `ProxyHttp` implementation: thin phase hooks over shared logic.
//!
//! - `request_filter` answers local routes, authenticates the key, resolves the
//!   function version in the caller's tenant, enforces the body cap, validates
//!   the input, and applies rate limit, quota, concurrency and circuit breaker.
//!   Every refusal is answered here (`Ok(true)`) before any node is touched.
//! - `upstream_peer` picks the runtime node (h2c, multiplexed streams) and
//!   waits out the backoff of a retry.
//! - `upstream_request_filter` pins the resolved version in the upstream path
//!   and passes the invocation id, tenant and remaining deadline to the node.
//! - `fail_to_connect` / `error_while_proxy` decide retries with `policies::retry`.
//! - `fail_to_proxy` renders every failure as the contract's JSON error.
//! - `logging` reports the outcome to the breaker and records metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use contract::limits::{DEFAULT_MAX_BODY_BYTES, MAX_JSON_DEPTH, UPSTREAM_MAX_H2_STREAMS};
use contract::ports::{Authenticator, Catalog, Counters, SharedLimits};
use contract::{protocol, FunctionVersion, Principal, Scope};
use contract::{ApiError, ErrorCode};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use policies::breaker::Outcome;
use policies::retry::{FailureKind, RetryDecision};
use serde_json::{json, Value};

use crate::guards::{Admission, Guards};
use crate::metrics::Metrics;
use crate::placement::{InFlight, NodeSet};
use crate::routes::{self, Route};

pub use contract::headers;

/// Pingora keeps at most this much of a request body for replay; bodies up to
/// it are validated before a node is chosen, larger ones while they stream.
const REPLAY_BUFFER_BYTES: usize = 64 * 1024;

/// How long the router waits for a slow client to send its body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra time the router gives a node beyond the deadline, so that the node's
/// own 504 (which frees its slot) arrives before the router gives up.
const NODE_ANSWER_GRACE: Duration = Duration::from_millis(250);

/// Shared state of the router.
/// A source of more Prometheus text for `/metrics`.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

pub struct RouterState {
    pub extra_metrics: Option<MetricsSource>,
    pub catalog: Arc<dyn Catalog>,
    pub auth: Arc<dyn Authenticator>,
    pub guards: Guards,
    pub nodes: Arc<NodeSet>,
    pub metrics: Metrics,
    /// Set when a graceful stop begins: `/readyz` turns 503 so balancers move on.
    pub draining: std::sync::atomic::AtomicBool,
}

impl RouterState {
    pub fn new(
        catalog: Arc<dyn Catalog>,
        auth: Arc<dyn Authenticator>,
        counters: Arc<dyn Counters>,
        nodes: Arc<NodeSet>,
        shared: Option<Arc<dyn SharedLimits>>,
    ) -> Self {
        RouterState {
            extra_metrics: None,
            catalog,
            auth,
            guards: Guards::new(counters, shared),
            nodes,
            metrics: Metrics::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The kind of body an upstream-bound route carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Invoke,
    Infer,
}

/// Per-request state.
pub struct Ctx {
    started: Instant,
    deadline: Option<Instant>,
    invocation_id: String,
    principal: Option<Principal>,
    function: Option<Arc<FunctionVersion>>,
    body_kind: Option<BodyKind>,
    upstream_path: Option<String>,
    admission: Option<Admission>,
    /// Body validated while streaming (bodies above the replay buffer).
    streamed: Option<Vec<u8>>,
    /// A refusal decided after proxying began, rendered by `fail_to_proxy`.
    refusal: Option<ApiError>,
    /// The error code this request was answered with, for metrics.
    error_code: Option<ErrorCode>,
    attempts: u32,
    retry_delay: Option<Duration>,
    response_started: bool,
    /// `RateLimit-Policy` / `RateLimit` headers for the answer.
    rate_headers: Vec<(&'static str, String)>,
    /// The node's error code of a failed call (`x-taskmesh-error-code`).
    upstream_error: Option<ErrorCode>,
    /// The node of the attempt in progress and its node-breaker permit.
    node_permit: Option<(SocketAddr, policies::breaker::Permit)>,
    /// The attempt in progress, counted in its node's load until dropped.
    in_flight: Option<InFlight>,
    /// Nodes earlier attempts of this call went to.
    tried: Vec<String>,
}

pub struct TaskmeshProxy {
    pub state: Arc<RouterState>,
}

fn new_invocation_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn too_large(cap: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("body is larger than the limit of {cap} bytes"),
    )
}

/// Parses and checks a body against the function version's input schema and tensors.
fn validate(
    version: &FunctionVersion,
    kind: BodyKind,
    body: &[u8],
) -> std::result::Result<(), ApiError> {
    let value = contract::json::parse_body(body, MAX_JSON_DEPTH)?;
    match kind {
        BodyKind::Invoke => {
            if let Some(validator) = version.input_validator() {
                let violations = contract::schema::violations(&validator, &value);
                if !violations.is_empty() {
                    return Err(protocol::invalid_input(violations));
                }
            }
            protocol::invoke_inputs(version, &value).map(drop)
        }
        BodyKind::Infer => protocol::oip_inputs(version, &value).map(drop),
    }
}

impl TaskmeshProxy {
    async fn respond_json(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        status: u16,
        body: &Value,
        extra: &[(&str, String)],
    ) -> Result<()> {
        let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let mut header = ResponseHeader::build(status, Some(4 + extra.len()))?;
        header.insert_header("content-type", "application/json")?;
        header.insert_header(headers::INVOCATION_ID, ctx.invocation_id.as_str())?;
        for (name, value) in extra {
            header.insert_header(name.to_string(), value.as_str())?;
        }
        header.set_content_length(bytes.len())?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(bytes), true).await
    }

    async fn respond_error(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        err: &ApiError,
    ) -> Result<()> {
        ctx.error_code = Some(err.code);
        let mut extra: Vec<(&str, String)> = Vec::new();
        if let Some(s) = err.retry_after_s {
            extra.push(("retry-after", s.to_string()));
        }
        if let Some(version) = &ctx.function {
            extra.push((headers::VERSION, version.version.to_string()));
        }
        extra.extend(
            ctx.rate_headers
                .iter()
                .filter(|(n, _)| *n != "retry-after")
                .map(|(n, v)| (*n, v.clone())),
        );
        self.respond_json(session, ctx, err.status(), &err.body(), &extra)
            .await
    }

    async fn authenticate(
        &self,
        session: &Session,
        scope: Scope,
    ) -> std::result::Result<Principal, ApiError> {
        let authorization = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let principal = self.state.auth.authenticate(authorization).await?;
        principal.require(scope)?;
        Ok(principal)
    }

    /// Decides the request: `Ok(None)` to proxy it, `Ok(Some(..))` to answer here.
    async fn decide(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> std::result::Result<Option<(u16, Value)>, ApiError> {
        let method = session.req_header().method.clone();
        let uri = session.req_header().uri.clone();
        let route = routes::route(&method, uri.path(), uri.query())?;
        let (name, qualifier) = match &route {
            Route::Health => return Ok(Some((200, json!({"status": "ok"})))),
            Route::Ready => {
                let nodes = self.state.nodes.len();
                return Ok(Some(
                    if self
                        .state
                        .draining
                        .load(std::sync::atomic::Ordering::Relaxed)
                    {
                        (503, json!({"status": "draining", "nodes": nodes}))
                    } else {
                        (200, json!({"status": "ready", "nodes": nodes}))
                    },
                ));
            }
            Route::Live => return Ok(Some((200, json!({"live": true})))),
            Route::ServerReady => return Ok(Some((200, json!({"ready": true})))),
            Route::Metrics => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "metrics are answered before routing",
                ))
            }
            Route::Metadata { name, qualifier }
            | Route::ModelReady { name, qualifier }
            | Route::Invoke { name, qualifier }
            | Route::Infer { name, qualifier } => (name.clone(), qualifier.clone()),
        };
        let principal = self.authenticate(session, Scope::Invoke).await?;
        // An alias splits by routing key: the caller's own, else its client id,
        // else this invocation's id (so one caller sticks to one version).
        let routing_key = session
            .req_header()
            .headers
            .get(headers::ROUTING_KEY)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .unwrap_or(if principal.client_id.is_empty() {
                ctx.invocation_id.as_str()
            } else {
                principal.client_id.as_str()
            })
            .to_string();
        // Another tenant's function is simply not there (404, never 403).
        let (version, _alias) = self
            .state
            .catalog
            .resolve_routed(&principal.tenant, &name, &qualifier, &routing_key)
            .await?;
        ctx.function = Some(version.clone());
        match route {
            Route::Metadata { .. } => {
                let versions = self
                    .state
                    .catalog
                    .versions(&principal.tenant, &name)
                    .await?;
                Ok(Some((200, protocol::oip_metadata(&version, &versions))))
            }
            Route::ModelReady { .. } => Ok(Some((
                200,
                json!({"name": version.name, "version": version.version.to_string(), "ready": true}),
            ))),
            Route::Invoke { .. } | Route::Infer { .. } => {
                let (kind, path) = if matches!(route, Route::Invoke { .. }) {
                    (
                        BodyKind::Invoke,
                        format!(
                            "/v1/functions/{}/invoke?version={}",
                            version.name, version.version
                        ),
                    )
                } else {
                    (
                        BodyKind::Infer,
                        format!(
                            "/v2/models/{}/versions/{}/infer",
                            version.name, version.version
                        ),
                    )
                };
                // Checked at the edge so a bad header never costs a node a stream.
                headers::Priority::from_header(
                    session
                        .req_header()
                        .headers
                        .get(headers::PRIORITY)
                        .and_then(|v| v.to_str().ok()),
                )?;
                ctx.upstream_path = Some(path);
                ctx.body_kind = Some(kind);
                ctx.deadline =
                    Some(ctx.started + Duration::from_millis(version.definition.timeout_ms));
                self.admit_body(session, ctx).await?;
                let admission = self
                    .state
                    .guards
                    .admit(&principal, &version, &mut ctx.rate_headers)
                    .await;
                ctx.principal = Some(principal);
                ctx.admission = Some(admission?);
                Ok(None)
            }
            _ => unreachable!("local routes returned above"),
        }
    }

    /// Enforces the body cap and validates the body before anything is proxied.
    ///
    /// Bodies that fit the replay buffer are read and validated here. Larger ones
    /// (which must declare their length) are validated as they stream, in
    /// `request_body_filter`, and held back from the node until they pass.
    async fn admit_body(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> std::result::Result<(), ApiError> {
        let version = ctx.function.clone().expect("resolved before the body");
        let cap = version
            .definition
            .max_body_bytes
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(length) = declared {
            if length > cap {
                return Err(too_large(cap));
            }
            if length > REPLAY_BUFFER_BYTES {
                ctx.streamed = Some(Vec::with_capacity(length));
                return Ok(());
            }
        }
        session.enable_retry_buffering();
        let mut body = Vec::new();
        loop {
            let chunk = tokio::time::timeout(BODY_READ_TIMEOUT, session.read_request_body())
                .await
                .map_err(|_| ApiError::bad_request("timed out reading the request body"))?
                .map_err(|e| {
                    ApiError::bad_request(format!("reading the request body failed: {e}"))
                })?;
            match chunk {
                None => break,
                Some(chunk) => {
                    if body.len() + chunk.len() > cap {
                        return Err(too_large(cap));
                    }
                    if body.len() + chunk.len() > REPLAY_BUFFER_BYTES {
                        return Err(ApiError::new(
                            ErrorCode::PayloadTooLarge,
                            format!("bodies over {REPLAY_BUFFER_BYTES} bytes must declare content-length"),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
            }
        }
        validate(&version, ctx.body_kind.expect("set with the route"), &body)
    }

    fn deadline_left(ctx: &Ctx) -> Duration {
        ctx.deadline.map_or(Duration::from_secs(30), |d| {
            d.saturating_duration_since(Instant::now())
        })
    }

    /// Reports the pending node attempt's outcome to its node breaker.
    fn settle_node(&self, ctx: &mut Ctx, outcome: Outcome) {
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
            .decide_retry(&version, ctx.attempts, kind, Self::deadline_left(ctx))
        {
            RetryDecision::RetryAfter(delay) => {
                ctx.retry_delay = Some(delay);
                self.state.metrics.retried(&version.name, version.version);
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
        Ctx {
            started: Instant::now(),
            deadline: None,
            invocation_id: new_invocation_id(),
            principal: None,
            function: None,
            body_kind: None,
            upstream_path: None,
            admission: None,
            streamed: None,
            refusal: None,
            error_code: None,
            attempts: 0,
            retry_delay: None,
            response_started: false,
            rate_headers: Vec::new(),
            node_permit: None,
            upstream_error: None,
            in_flight: None,
            tried: Vec::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if session.req_header().uri.path() == "/metrics" {
            self.state
                .metrics
                .observe_breakers(&self.state.guards.breaker_states());
            let mut text = self.state.metrics.encode();
            if let Some(extra) = &self.state.extra_metrics {
                // Both are OpenMetrics text; keep one `# EOF` at the very end.
                text = text.trim_end().trim_end_matches("# EOF").to_string();
                text.push('\n');
                text.push_str(&extra());
                text.push_str("# EOF\n");
            }
            let mut header = ResponseHeader::build(200, Some(2))?;
            header.insert_header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )?;
            header.set_content_length(text.len())?;
            session
                .write_response_header(Box::new(header), false)
                .await?;
            session
                .write_response_body(Some(Bytes::from(text)), true)
                .await?;
            return Ok(true);
        }
        let decided = self.decide(session, ctx).await;
        // The key has done its work: it never travels further or reaches a log line.
        session.req_header_mut().remove_header("authorization");
        match decided {
            Ok(None) => Ok(false),
            Ok(Some((status, body))) => {
                let extra: Vec<(&str, String)> = ctx
                    .function
                    .as_ref()
                    .map(|v| vec![(headers::VERSION, v.version.to_string())])
                    .unwrap_or_default();
                self.respond_json(session, ctx, status, &body, &extra)
                    .await?;
                Ok(true)
            }
            Err(err) => {
                self.respond_error(session, ctx, &err).await?;
                Ok(true)
            }
        }
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
        let left = Self::deadline_left(ctx);
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
        // Placement: ring order under bounded load. A retry goes to the first
        // candidate not tried yet (all tried: start over); a node whose breaker
        // is open is passed over.
        let key = placement_key(version);
        let gpu = version.definition.resources.gpu;
        let mut permit = None;
        let guards = &self.state.guards;
        let mut take = |node: &Arc<crate::placement::Node>, untried_only: bool| {
            if untried_only && ctx.tried.contains(&node.info.id) {
                return false;
            }
            permit = guards.acquire_node(node.info.addr);
            permit.is_some()
        };
        let chosen = self
            .state
            .nodes
            .pick(&key, gpu, |n| take(n, true))
            .or_else(|| self.state.nodes.pick(&key, gpu, |n| take(n, false)))
            .zip(permit);
        let Some((node, permit)) = chosen else {
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
        request.insert_header("host", "taskmesh-node")?;
        request.insert_header(headers::INVOCATION_ID, ctx.invocation_id.as_str())?;
        let tenant = ctx
            .principal
            .as_ref()
            .map_or(contract::DEFAULT_TENANT, |p| p.tenant.as_str());
        request.insert_header(headers::TENANT, tenant)?;
        request.insert_header(
            headers::DEADLINE_MS,
            Self::deadline_left(ctx).as_millis().to_string(),
        )?;
        request.remove_header("authorization");
        if let Some(buffer) = &mut ctx.streamed {
            buffer.clear();
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
        let Some(buffer) = ctx.streamed.as_mut() else {
            return Ok(());
        };
        if let Some(chunk) = body.take() {
            buffer.extend_from_slice(&chunk);
        }
        let version = ctx.function.clone().expect("resolved before proxying");
        let cap = version
            .definition
            .max_body_bytes
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if buffer.len() > cap {
            ctx.refusal = Some(too_large(cap));
            return Err(
                Error::explain(ErrorType::HTTPStatus(413), "body over the cap").into_down(),
            );
        }
        if !end_of_stream {
            *body = Some(Bytes::new());
            return Ok(());
        }
        let whole = std::mem::take(buffer);
        if let Err(err) = validate(&version, ctx.body_kind.expect("set with the route"), &whole) {
            let status = err.status();
            ctx.refusal = Some(err);
            return Err(Error::explain(ErrorType::HTTPStatus(status), "input refused").into_down());
        }
        *body = Some(Bytes::from(whole));
        Ok(())
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
        self.settle_node(ctx, Outcome::Success);
        response.insert_header(headers::INVOCATION_ID, ctx.invocation_id.as_str())?;
        // The version the router resolved and pinned, on errors from the node too.
        if let Some(version) = &ctx.function {
            response.insert_header(headers::VERSION, version.version.to_string())?;
        }
        for (name, value) in &ctx.rate_headers {
            response.insert_header(*name, value.as_str())?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.settle_node(ctx, Outcome::Failure);
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
        let err = ctx.refusal.take().unwrap_or_else(|| classify(e));
        let code = match (e.esource(), e.etype()) {
            (
                ErrorSource::Downstream,
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
            ) => 0,
            _ => err.status(),
        };
        if code > 0 {
            ctx.error_code = Some(err.code);
            if err.code.is_client_fault() {
                tracing::debug!(invocation_id = %ctx.invocation_id, code = err.code.as_str(), "request refused");
            } else {
                tracing::warn!(invocation_id = %ctx.invocation_id, code = err.code.as_str(), error = %e, "proxying failed");
            }
            let body = Bytes::from(err.body_bytes());
            if let Ok(mut header) = ResponseHeader::build(code, Some(4)) {
                let _ = header.insert_header("content-type", "application/json");
                let _ = header.insert_header(headers::INVOCATION_ID, ctx.invocation_id.as_str());
                if let Some(s) = err.retry_after_s {
                    let _ = header.insert_header("retry-after", s.to_string());
                }
                if let Some(version) = &ctx.function {
                    let _ = header.insert_header(headers::VERSION, version.version.to_string());
                }
                let _ = header.set_content_length(body.len());
                let _ = session
                    .as_downstream_mut()
                    .write_error_response(header, body)
                    .await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        // Only refused connections count against a node (see `fail_to_connect`);
        // an answered or reset stream means the node was reachable.
        let _ = e;
        self.settle_node(ctx, Outcome::Success);
        if let (Some(version), Some(mut admission)) = (ctx.function.clone(), ctx.admission.take()) {
            // Server faults count against the breaker; client faults (4xx) do not.
            let not_the_functions_fault = ctx.upstream_error == Some(ErrorCode::Overloaded)
                || ctx.error_code == Some(ErrorCode::Overloaded);
            let outcome = if (status >= 500 || status == 0) && !not_the_functions_fault {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            self.state
                .guards
                .release(&version, &mut admission, Some(outcome));
        }
        let (function, version) = match &ctx.function {
            Some(v) => (v.name.as_str(), Some(v.version)),
            None => ("-", None),
        };
        let seconds = ctx.started.elapsed().as_secs_f64();
        self.state
            .metrics
            .record(function, version, status, seconds);
        // Per-version evidence for rollouts: calls that reached a node or
        // failed on the server side (a 4xx is the caller's, not the version's).
        if let (Some(served), Some(_)) = (&ctx.function, ctx.body_kind) {
            if status >= 500 || (ctx.principal.is_some() && status > 0 && status < 400) {
                let failed = status >= 500;
                self.state.guards.record_call(served, failed, seconds);
                let kind = failed.then(|| {
                    ctx.error_code
                        .or(ctx.upstream_error)
                        .map_or("function_failed", |c| c.as_str())
                });
                self.state
                    .metrics
                    .record_version(&served.name, served.version, kind, seconds);
            }
        }
        if let Some(code) = ctx.error_code.or(ctx.upstream_error) {
            self.state.metrics.refused(function, version, code.as_str());
        }
    }
}

/// Maps a proxying failure that no hook classified to the contract's error.
fn classify(e: &Error) -> ApiError {
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError => {
            ApiError::new(ErrorCode::Unavailable, "no runtime node could be reached")
                .with_retry_after(1)
        }
        ErrorType::ReadTimedout => ApiError::new(
            ErrorCode::Timeout,
            "the runtime node did not answer within the deadline",
        ),
        ErrorType::HTTPStatus(413) => too_large(DEFAULT_MAX_BODY_BYTES),
        ErrorType::HTTPStatus(504) => {
            ApiError::new(ErrorCode::Timeout, "the invocation's deadline passed")
        }
        _ if e.esource() == &ErrorSource::Upstream => ApiError::new(
            ErrorCode::FunctionFailed,
            "the runtime node failed while answering",
        ),
        _ if e.esource() == &ErrorSource::Downstream => {
            ApiError::bad_request("the request could not be read")
        }
        _ => ApiError::new(ErrorCode::Internal, "internal router error"),
    }
}

/// What a function version is placed by on the ring: `tenant/name@version`.
pub fn placement_key(version: &FunctionVersion) -> String {
    format!("{}/{}@{}", version.tenant, version.name, version.version)
}
