//! The router's one `ProxyHttp` implementation: thin phase hooks over shared logic.
//!
//! - `request_filter` answers local routes, resolves the function version,
//!   enforces the body cap, parses and validates the input, and refuses early
//!   (`Ok(true)`) before any node is touched.
//! - `upstream_peer` picks the runtime node (h2c, multiplexed streams).
//! - `upstream_request_filter` pins the resolved version in the upstream path
//!   and passes the invocation id and tenant to the node.
//! - `fail_to_proxy` renders every failure as the contract's JSON error.
//! - `logging` records metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use policies::limits::{DEFAULT_MAX_BODY_BYTES, MAX_JSON_DEPTH, UPSTREAM_MAX_H2_STREAMS};
use policies::{ApiError, ErrorCode};
use registry::{protocol, FunctionVersion, Qualifier, Registry, DEFAULT_TENANT};
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::routes::{self, Route};

/// Header names of the invocation contract.
pub mod headers {
    pub const VERSION: &str = "x-taskmesh-version";
    pub const INVOCATION_ID: &str = "x-taskmesh-invocation-id";
    pub const NODE: &str = "x-taskmesh-node";
    pub const TENANT: &str = "x-taskmesh-tenant";
}

/// Pingora keeps at most this much of a request body for replay; bodies up to
/// it are validated before a node is chosen, larger ones while they stream.
const REPLAY_BUFFER_BYTES: usize = 64 * 1024;

/// How long the router waits for a slow client to send its body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of the router.
pub struct RouterState {
    pub registry: Arc<Registry>,
    pub nodes: Vec<SocketAddr>,
    pub metrics: Metrics,
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
    invocation_id: String,
    function: Option<Arc<FunctionVersion>>,
    body_kind: Option<BodyKind>,
    upstream_path: Option<String>,
    /// Body validated while streaming (bodies above the replay buffer).
    streamed: Option<Vec<u8>>,
    /// A refusal decided after proxying began, rendered by `fail_to_proxy`.
    refusal: Option<ApiError>,
}

pub struct TaskmeshProxy {
    pub state: Arc<RouterState>,
}

fn new_invocation_id() -> String {
    uuid::Uuid::now_v7().to_string()
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

    async fn respond_error(&self, session: &mut Session, ctx: &Ctx, err: &ApiError) -> Result<()> {
        let mut extra = Vec::new();
        if let Some(s) = err.retry_after_s {
            extra.push(("retry-after", s.to_string()));
        }
        self.respond_json(session, ctx, err.status(), &err.body(), &extra)
            .await
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
        match route {
            Route::Health => Ok(Some((200, json!({"status": "ok"})))),
            Route::Ready => Ok(Some((200, json!({"status": "ready"})))),
            Route::Live => Ok(Some((200, json!({"live": true})))),
            Route::ServerReady => Ok(Some((200, json!({"ready": true})))),
            Route::Metrics => Err(ApiError::new(
                ErrorCode::Internal,
                "metrics are answered before routing",
            )),
            Route::Metadata { name, qualifier } => {
                let version = self.resolve(&name, &qualifier).await?;
                let versions = self
                    .state
                    .registry
                    .list(DEFAULT_TENANT)
                    .await?
                    .into_iter()
                    .find(|f| f.name == name)
                    .map(|f| f.versions)
                    .unwrap_or_default();
                ctx.function = Some(version.clone());
                Ok(Some((200, protocol::oip_metadata(&version, &versions))))
            }
            Route::ModelReady { name, qualifier } => {
                let version = self.resolve(&name, &qualifier).await?;
                ctx.function = Some(version.clone());
                Ok(Some((
                    200,
                    json!({"name": version.name, "version": version.version.to_string(), "ready": true}),
                )))
            }
            Route::Invoke { name, qualifier } => {
                let version = self.resolve(&name, &qualifier).await?;
                ctx.upstream_path = Some(format!(
                    "/v1/functions/{}/invoke?version={}",
                    version.name, version.version
                ));
                ctx.function = Some(version);
                ctx.body_kind = Some(BodyKind::Invoke);
                self.admit_body(session, ctx).await?;
                Ok(None)
            }
            Route::Infer { name, qualifier } => {
                let version = self.resolve(&name, &qualifier).await?;
                ctx.upstream_path = Some(format!(
                    "/v2/models/{}/versions/{}/infer",
                    version.name, version.version
                ));
                ctx.function = Some(version);
                ctx.body_kind = Some(BodyKind::Infer);
                self.admit_body(session, ctx).await?;
                Ok(None)
            }
        }
    }

    async fn resolve(
        &self,
        name: &str,
        qualifier: &Qualifier,
    ) -> std::result::Result<Arc<FunctionVersion>, ApiError> {
        self.state
            .registry
            .resolve(DEFAULT_TENANT, name, qualifier)
            .await
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
}

fn too_large(cap: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("body is larger than the limit of {cap} bytes"),
    )
}

/// Parses and checks a body against the function version's declared inputs.
fn validate(
    version: &FunctionVersion,
    kind: BodyKind,
    body: &[u8],
) -> std::result::Result<(), ApiError> {
    let value = policies::json::parse_body(body, MAX_JSON_DEPTH)?;
    match kind {
        BodyKind::Invoke => protocol::invoke_inputs(version, &value).map(drop),
        BodyKind::Infer => protocol::oip_inputs(version, &value).map(drop),
    }
}

#[async_trait]
impl ProxyHttp for TaskmeshProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            invocation_id: new_invocation_id(),
            function: None,
            body_kind: None,
            upstream_path: None,
            streamed: None,
            refusal: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if session.req_header().uri.path() == "/metrics" {
            let text = self.state.metrics.encode();
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
        match self.decide(session, ctx).await {
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
        let version = ctx
            .function
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no function resolved"))?;
        let node =
            pick_node(&self.state.nodes, &version.name, version.version).ok_or_else(|| {
                Error::explain(ErrorType::ConnectNoRoute, "no runtime node is available")
            })?;
        let mut peer = HttpPeer::new(node, false, String::new());
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = UPSTREAM_MAX_H2_STREAMS;
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.read_timeout =
            Some(Duration::from_millis(version.definition.timeout_ms + 5_000));
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
        request.insert_header(headers::TENANT, DEFAULT_TENANT)?;
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

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        response.insert_header(headers::INVOCATION_ID, ctx.invocation_id.as_str())?;
        Ok(())
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

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let (function, version) = match &ctx.function {
            Some(v) => (v.name.as_str(), Some(v.version)),
            None => ("-", None),
        };
        self.state.metrics.record(
            function,
            version,
            status,
            ctx.started.elapsed().as_secs_f64(),
        );
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
            "the runtime node did not answer in time",
        ),
        ErrorType::HTTPStatus(413) => too_large(DEFAULT_MAX_BODY_BYTES),
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

/// Chooses the node for a function version (placement grows into a consistent-hash ring).
fn pick_node(nodes: &[SocketAddr], name: &str, version: u32) -> Option<SocketAddr> {
    use std::hash::{Hash, Hasher};
    if nodes.is_empty() {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (name, version).hash(&mut hasher);
    Some(nodes[(hasher.finish() % nodes.len() as u64) as usize])
}
