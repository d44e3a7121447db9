//! The node's HTTP/2 (and HTTP/1.1) server: the same invoke paths as the router,
//! for the routers of its cluster only (they prove it with the cluster key).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use contract::connections::{ConnectionCaps, Connections};
use contract::http::{error_response, json_response, read_body};
use contract::limits::{self, DEFAULT_MAX_BODY_BYTES, MAX_JSON_DEPTH};
use contract::{oip, protocol};
use contract::{ApiError, ClusterKey, ErrorCode};
use contract::{FunctionVersion, Qualifier, DEFAULT_TENANT};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::engine::{Engine, Priority, Ticket};

mod grpc;
use crate::prepost::{self, Prepost, PreprocessBudget};

/// Header that orders a call in its function's queue: `high`, `normal` or `low`.
pub const PRIORITY_HEADER: &str = contract::headers::PRIORITY;

pub use contract::headers;

/// How long open connections get to finish after `shutdown` resolves (they
/// are sent GOAWAY, or `connection: close` on HTTP/1.1, first).
pub const CONNECTION_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

pub use contract::limits::{
    FIRST_BYTE_TIMEOUT, HEADER_READ_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER,
};
/// HTTP/2: a PING after this much silence, and the connection is closed when
/// its answer takes longer than [`H2_KEEPALIVE_TIMEOUT`].
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` with explicit limits until `shutdown`
/// resolves, then closes open connections gracefully (within [`CONNECTION_DRAIN`]).
///
/// Connections speak HTTP/1.1 or h2c with prior knowledge (detected from the
/// preface). Limits: [`MAX_CONNECTIONS`] and [`MAX_CONNECTIONS_PER_PEER`]
/// (further connections are closed at once), [`FIRST_BYTE_TIMEOUT`],
/// [`HEADER_READ_TIMEOUT`] (HTTP/1.1), HTTP/2 keep-alive pings, and the
/// HTTP/2 stream, header and window limits of `contract::limits`.
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(limits::H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(limits::H2_MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(limits::H2_INITIAL_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(limits::H2_INITIAL_CONNECTION_WINDOW_BYTES);
    let builder = Arc::new(builder);
    let connections = Connections::new(ConnectionCaps::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = connections.admit(peer.ip()) else {
            tracing::debug!(%peer, "connection limit reached; closing the new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let mut first = [0u8; 1];
            match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(CONNECTION_DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain time; closing them");
    }
}

struct Node {
    engine: Arc<Engine>,
    prepost: Prepost,
    node_id: String,
}

/// Refuses (401) a call that does not carry the cluster key: only routers
/// (and the registry's warmer) of this cluster reach a node, and a scraper
/// that holds the key reaches its `/metrics`.
async fn require_cluster_key(
    State(key): State<Arc<ClusterKey>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = request.headers().get(headers::CLUSTER_KEY);
    if presented.is_some_and(|v| key.matches(v.as_bytes())) {
        return next.run(request).await;
    }
    // `/metrics` also takes the key as `authorization: Bearer <cluster key>`,
    // which a Prometheus scrape config can send (it cannot send other headers).
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if request.uri().path() == "/metrics" && bearer.is_some_and(|b| key.matches(b)) {
        return next.run(request).await;
    }
    error_response(&ApiError::new(
        ErrorCode::Unauthenticated,
        format!(
            "this node serves the routers of its cluster only ({} is missing or wrong)",
            headers::CLUSTER_KEY
        ),
    ))
}

/// The node's routes. Every route but the health probes (which carry no
/// tenant data) needs the cluster key.
pub fn router(engine: Arc<Engine>, node_id: String, cluster_key: ClusterKey) -> Router {
    let node = Arc::new(Node {
        prepost: Prepost::new(
            engine.sources().artifacts.clone(),
            PreprocessBudget::from_limits(
                engine.config().preprocess,
                engine.config().memory_budget_bytes,
            ),
        ),
        engine,
        node_id,
    });
    Router::new()
        .route("/v1/functions/{name}/invoke", post(invoke))
        .route("/v2/models/{name}", get(metadata))
        .route("/v2/models/{name}/versions/{version}", get(metadata))
        .route("/v2/models/{name}/ready", get(ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route(
            "/grpc/models/{name}/versions/{version}/infer",
            post(grpc::infer),
        )
        .route("/v1/functions/{name}/versions/{version}/warm", post(warm))
        .route(
            "/metrics",
            get(|State(node): State<Arc<Node>>| async move {
                // One OpenMetrics document, as the router's and the registry's.
                let mut text = node.engine.metrics_text();
                text.push_str("# EOF\n");
                let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                ([(header::CONTENT_TYPE, kind)], text)
            }),
        )
        .fallback(|method: Method, uri: Uri| async move {
            error_response(&ApiError::not_found(format!(
                "no route for {method} {}",
                uri.path()
            )))
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(cluster_key),
            require_cluster_key,
        ))
        // Added after the layer, so not behind it: probes carry no tenant data.
        .route(
            "/healthz",
            get(|| async { json_response(StatusCode::OK, &json!({"status": "ok"})) }),
        )
        .route(
            "/v2/health/live",
            get(|| async { json_response(StatusCode::OK, &json!({"live": true})) }),
        )
        .route(
            "/v2/health/ready",
            get(|| async { json_response(StatusCode::OK, &json!({"ready": true})) }),
        )
        .layer(axum::middleware::from_fn(oip_error_bodies))
        .with_state(node)
}

fn tenant_of(headers: &HeaderMap) -> String {
    headers
        .get(headers::TENANT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_TENANT)
        .to_string()
}

/// The call's place in its function's queue (`x-taskmesh-priority`).
fn priority(headers: &HeaderMap) -> Result<Priority, ApiError> {
    Priority::from_header(headers.get(PRIORITY_HEADER).and_then(|v| v.to_str().ok()))
}

/// The call's place in its version's queue: its priority and its cost.
fn ticket(headers: &HeaderMap) -> Result<Ticket, ApiError> {
    Ok(Ticket {
        priority: priority(headers)?,
        cost: headers::cost(headers.get(headers::COST).and_then(|v| v.to_str().ok())),
    })
}

/// The time budget the router passed along, if any.
fn budget(headers: &HeaderMap) -> Option<std::time::Duration> {
    headers
        .get(headers::DEADLINE_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(std::time::Duration::from_millis)
}

fn invocation_id(headers: &HeaderMap) -> String {
    headers
        .get(headers::INVOCATION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string)
}

async fn resolve(
    node: &Node,
    headers: &HeaderMap,
    name: &str,
    qualifier: &Qualifier,
) -> Result<Arc<FunctionVersion>, ApiError> {
    node.engine
        .sources()
        .catalog
        .resolve(&tenant_of(headers), name, qualifier)
        .await
}

/// Reads and parses a JSON body within the version's cap.
async fn json_body(version: &FunctionVersion, body: Body) -> Result<Value, ApiError> {
    let cap = version
        .definition
        .max_body_bytes
        .unwrap_or(DEFAULT_MAX_BODY_BYTES);
    let bytes = read_body(body, cap).await?;
    contract::json::parse_body(&bytes, MAX_JSON_DEPTH)
}

fn with_headers(
    mut response: Response,
    node: &Node,
    version: &FunctionVersion,
    cold_start: Option<bool>,
    id: &str,
) -> Response {
    let h = response.headers_mut();
    h.insert(headers::VERSION, HeaderValue::from(version.version));
    h.insert(
        headers::NODE,
        HeaderValue::from_str(&node.node_id).unwrap_or(HeaderValue::from_static("node")),
    );
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(headers::INVOCATION_ID, v);
    }
    if let Some(cold) = cold_start {
        h.insert(
            headers::COLD_START,
            HeaderValue::from_static(if cold { "true" } else { "false" }),
        );
    }
    response
}

async fn invoke(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let id = invocation_id(&headers);
    let result: Result<Response, ApiError> = async {
        let early = async {
            let version = resolve(
                &node,
                &headers,
                &name,
                &Qualifier::from_query(query.as_deref())?,
            )
            .await?;
            node.engine
                .precheck(&version, ticket(&headers)?, budget(&headers))?;
            Ok(version)
        };
        let (version, body) = refuse_early(early.await, body).await?;
        // Preprocessing counts against the same deadline as the run.
        let limit = Duration::from_millis(version.definition.timeout_ms);
        let deadline = Instant::now() + budget(&headers).map_or(limit, |b| b.min(limit));
        let input = json_body(&version, body).await?;
        let checked = protocol::invoke_inputs(&version, &input)?;
        let left = || deadline.saturating_duration_since(Instant::now());
        let prepared =
            tokio::time::timeout(left(), node.prepost.prepare(&version, checked, deadline))
                .await
                .map_err(|_| deadline_passed(&version, limit))??;
        if left().is_zero() {
            return Err(deadline_passed(&version, limit));
        }
        let outcome = node
            .engine
            .run(&version, prepared.inputs, Some(left()), ticket(&headers)?)
            .await?;
        let output = prepost::invoke_outputs(&version, &outcome.outputs, &prepared.masks)?;
        if let Some(validator) = version.output_validator()? {
            let violations = contract::schema::violations(&validator, &output);
            if !violations.is_empty() {
                return Err(ApiError::new(
                    contract::ErrorCode::InvalidOutput,
                    "the function's output does not match its output_schema",
                )
                .with_details(json!(violations)));
            }
        }
        let response = json_response(StatusCode::OK, &output);
        Ok(with_headers(
            response,
            &node,
            &version,
            Some(outcome.cold_start),
            &id,
        ))
    }
    .await;
    finish(result, &name, &id)
}

/// Bodies up to this size are read to their end before an early refusal.
const EARLY_DRAIN_BYTES: usize = 64 * 1024;
/// How long an early refusal waits for such a body.
const EARLY_DRAIN_WAIT: Duration = Duration::from_millis(50);

/// Passes the body on when the checks before it passed; otherwise refuses
/// without running anything.
///
/// A refusal sent while the request body is still arriving ends the HTTP/2
/// stream with `RST_STREAM(NO_ERROR)`, and a proxy still writing that body may
/// report a failed stream instead of this answer. A small body (the router's
/// replayable ones) is therefore read to its end first, within a short wait;
/// a large one is not, since not reading it is the point of refusing early.
async fn refuse_early<T>(checked: Result<T, ApiError>, body: Body) -> Result<(T, Body), ApiError> {
    match checked {
        Ok(value) => Ok((value, body)),
        Err(err) => {
            let _ =
                tokio::time::timeout(EARLY_DRAIN_WAIT, read_body(body, EARLY_DRAIN_BYTES)).await;
            Err(err)
        }
    }
}

/// The answer when an invocation's time runs out before its run starts.
fn deadline_passed(version: &FunctionVersion, limit: Duration) -> ApiError {
    ApiError::new(
        contract::ErrorCode::Timeout,
        format!(
            "function {} version {} did not finish within its deadline (timeout_ms {})",
            version.name,
            version.version,
            limit.as_millis()
        ),
    )
}

async fn infer(
    State(node): State<Arc<Node>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let id = invocation_id(&headers);
    let name = params.get("name").cloned().unwrap_or_default();
    let result: Result<Response, ApiError> = async {
        let (version, bytes) = admitted_body(&node, &headers, &name, &params, body).await?;
        let header_length = headers
            .get(oip::HEADER_LENGTH)
            .map(|v| v.to_str().unwrap_or("?"));
        let mut request = oip::parse_infer(&version, &bytes, header_length)?;
        let inputs = std::mem::take(&mut request.inputs);
        let outcome = node
            .engine
            .run(&version, inputs, budget(&headers), ticket(&headers)?)
            .await?;
        let answer = oip::infer_answer(&version, &request, &outcome.outputs);
        Ok(with_headers(
            oip_response(answer),
            &node,
            &version,
            Some(outcome.cold_start),
            &id,
        ))
    }
    .await;
    finish(result, &name, &id)
}

/// An infer call's first steps (REST and gRPC alike): the pinned version,
/// the engine's precheck (refused before the body is read), then the body
/// within the version's cap.
async fn admitted_body(
    node: &Node,
    headers: &HeaderMap,
    name: &str,
    params: &HashMap<String, String>,
    body: Body,
) -> Result<(Arc<FunctionVersion>, bytes::Bytes), ApiError> {
    let early = async {
        let version = resolve(node, headers, name, &path_qualifier(params)?).await?;
        node.engine
            .precheck(&version, ticket(headers)?, budget(headers))?;
        Ok(version)
    };
    let (version, body) = refuse_early(early.await, body).await?;
    let cap = version
        .definition
        .max_body_bytes
        .unwrap_or(DEFAULT_MAX_BODY_BYTES);
    let bytes = read_body(body, cap).await?;
    Ok((version, bytes))
}

async fn metadata(
    State(node): State<Arc<Node>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let name = params.get("name").cloned().unwrap_or_default();
    let result = async {
        let version = resolve(&node, &headers, &name, &path_qualifier(&params)?).await?;
        let versions = node
            .engine
            .sources()
            .catalog
            .versions(&tenant_of(&headers), &name)
            .await?;
        Ok(json_response(
            StatusCode::OK,
            &oip::model_metadata(&version, &versions),
        ))
    }
    .await;
    result.unwrap_or_else(|e: ApiError| error_response(&e))
}

/// Loads an instance of a version (and starts its `min_instances`) before
/// traffic needs it: the registry calls it on the owner node at registration
/// and before a rollout's first step. Answers once one instance is warm.
async fn warm(
    State(node): State<Arc<Node>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let name = params.get("name").cloned().unwrap_or_default();
    let result = async {
        let version = resolve(&node, &headers, &name, &path_qualifier(&params)?).await?;
        node.engine.ensure_min_instances(&version);
        node.engine.warm(&version).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({"name": version.name, "version": version.version, "warm": true}),
        ))
    }
    .await;
    result.unwrap_or_else(|e: ApiError| error_response(&e))
}

async fn ready(
    State(node): State<Arc<Node>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let name = params.get("name").cloned().unwrap_or_default();
    let result = async {
        let version = resolve(&node, &headers, &name, &path_qualifier(&params)?).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({"name": version.name, "version": version.version.to_string(), "ready": true, "warm": node.engine.is_warm(&version)}),
        ))
    }
    .await;
    result.unwrap_or_else(|e: ApiError| error_response(&e))
}

/// An infer answer: JSON, or JSON and raw outputs with the header's length.
fn oip_response(answer: oip::OipAnswer) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    let h = response.headers_mut();
    match answer.json_length {
        Some(length) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(oip::HEADER_LENGTH, HeaderValue::from(length));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    response
}

/// On the protocol's paths (`/v2/...`), errors carry the protocol's body,
/// `{"error": "<message>"}`, which KServe and Triton clients read; the code
/// stays in `x-taskmesh-error-code`.
async fn oip_error_bodies(request: axum::extract::Request, next: Next) -> Response {
    let oip = oip::is_oip_path(request.uri().path());
    let response = next.run(request).await;
    if !oip || !(response.status().is_client_error() || response.status().is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let Some(err) = ApiError::from_body(parts.status.as_u16(), &bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let body = oip::error_body(&err);
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Ok(code) = HeaderValue::from_str(err.code.as_str()) {
        parts.headers.entry(headers::ERROR_CODE).or_insert(code);
    }
    Response::from_parts(parts, Body::from(body))
}

fn finish(result: Result<Response, ApiError>, name: &str, id: &str) -> Response {
    match result {
        Ok(response) => response,
        Err(err) => {
            if err.code.is_client_fault() {
                tracing::debug!(
                    function = name,
                    invocation_id = id,
                    code = err.code.as_str(),
                    "invocation refused"
                );
            } else {
                tracing::warn!(function = name, invocation_id = id, code = err.code.as_str(), message = %err.message, "invocation failed");
            }
            let mut response = error_response(&err);
            let h = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(id) {
                h.insert(headers::INVOCATION_ID, v);
            }
            h.insert(
                headers::ERROR_CODE,
                HeaderValue::from_static(err.code.as_str()),
            );
            response
        }
    }
}

fn path_qualifier(params: &HashMap<String, String>) -> Result<Qualifier, ApiError> {
    params
        .get("version")
        .map_or(Ok(Qualifier::Default), |v| Qualifier::from_path(v))
}
