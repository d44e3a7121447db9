//! The answers the router gives itself, without a node: `/metrics`,
//! `/healthz`, `/readyz`, OIP server liveness and readiness, and OIP model
//! metadata and readiness (from the registry).
//!
//! Layer: names `routes`, `metrics`, `guards`, `placement` and `openapi`.

use bytes::Bytes;
use contract::ports::Catalog;
use contract::{ApiError, ErrorCode, FunctionVersion};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde_json::{json, Value};

use crate::guards::Guards;
use crate::metrics::{Metrics, MetricsSource};
use crate::placement::NodeSet;
use crate::routes::Endpoint;

/// `/metrics` is answered before routing (GET and HEAD; another method is
/// routed, and gets the contract's 405).
pub const METRICS_PATH: &str = "/metrics";

/// Whether a request asks for the metrics (`GET` or `HEAD /metrics`).
pub fn is_metrics_request(request: &pingora_http::RequestHeader) -> bool {
    request.uri.path() == METRICS_PATH
        && matches!(request.method, http::Method::GET | http::Method::HEAD)
}

/// A JSON answer the router gives itself.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalAnswer {
    pub status: u16,
    pub body: Value,
    /// More headers than every answer has (a task's `location`).
    pub headers: Vec<(&'static str, String)>,
}

impl LocalAnswer {
    pub fn ok(body: Value) -> Self {
        LocalAnswer::new(200, body)
    }

    pub fn new(status: u16, body: Value) -> Self {
        LocalAnswer {
            status,
            body,
            headers: Vec::new(),
        }
    }
}

/// The router's metrics, the breakers' current states, and `extra` (the
/// in-process node's), as one OpenMetrics text.
pub fn metrics_text(metrics: &Metrics, guards: &Guards, extra: Option<&MetricsSource>) -> String {
    metrics.observe_breakers(&guards.breaker_states());
    let mut text = metrics.encode();
    if let Some(extra) = extra {
        // Both are OpenMetrics text: keep one `# EOF` at the very end, and no
        // blank line (OpenMetrics has none; Prometheus refuses the scrape).
        let extra = extra();
        let mut joined = String::with_capacity(text.len() + extra.len());
        for line in text.lines().chain(extra.lines()) {
            if !line.is_empty() && line != "# EOF" {
                joined.push_str(line);
                joined.push('\n');
            }
        }
        joined.push_str("# EOF\n");
        text = joined;
    }
    text
}

/// Writes the `/metrics` answer.
pub async fn write_metrics(session: &mut Session, text: String) -> Result<()> {
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
        .await
}

/// The answer to one of the router's own endpoints (those that name no
/// function): health, readiness (503 while draining), OIP liveness and
/// readiness.
pub fn router_answer(
    endpoint: &Endpoint,
    nodes: &NodeSet,
    draining: bool,
) -> Result<LocalAnswer, ApiError> {
    Ok(match endpoint {
        Endpoint::Health => LocalAnswer::ok(json!({"status": "ok"})),
        Endpoint::Ready => {
            let nodes = nodes.len();
            if draining {
                LocalAnswer::new(503, json!({"status": "draining", "nodes": nodes}))
            } else {
                LocalAnswer::ok(json!({"status": "ready", "nodes": nodes}))
            }
        }
        Endpoint::Live => LocalAnswer::ok(json!({"live": true})),
        // Ready when calls can be served: not draining, and a node is live.
        // Not ready is 503 (as `/readyz`, and KServe's servers, answer it).
        Endpoint::ServerReady => {
            let ready = !draining && !nodes.is_empty();
            LocalAnswer::new(if ready { 200 } else { 503 }, json!({"ready": ready}))
        }
        Endpoint::ServerMetadata => LocalAnswer::ok(contract::oip::server_metadata()),
        Endpoint::OpenApi => LocalAnswer::ok(crate::openapi::document().clone()),
        Endpoint::Metrics => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "metrics are answered before routing",
            ))
        }
        Endpoint::Invoke { .. }
        | Endpoint::InvokePipeline(_)
        | Endpoint::SubmitTask { .. }
        | Endpoint::Tasks { .. }
        | Endpoint::Metadata { .. }
        | Endpoint::ModelReady { .. }
        | Endpoint::Infer { .. } => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "a function's endpoint is not the router's own",
            ))
        }
    })
}

/// The answer to a function's OIP metadata or readiness endpoint, once its
/// version is resolved in the caller's `tenant`.
pub async fn function_answer(
    endpoint: &Endpoint,
    catalog: &dyn Catalog,
    tenant: &str,
    version: &FunctionVersion,
    nodes: &NodeSet,
) -> Result<LocalAnswer, ApiError> {
    match endpoint {
        Endpoint::Metadata { name, .. } => {
            let versions = catalog.versions(tenant, name).await?;
            Ok(LocalAnswer::ok(contract::oip::model_metadata(
                version, &versions,
            )))
        }
        // Ready when a live node can serve the version (a GPU node for a GPU
        // function); nodes load versions on demand, so no warm instance is
        // needed. Not ready is 503.
        Endpoint::ModelReady { .. } => {
            let gpu = version.definition.resources.gpu;
            let ready = nodes
                .owner(&crate::placement::placement_key(version), gpu)
                .is_some();
            let body = json!({"name": version.name, "version": version.version.to_string(), "ready": ready});
            Ok(LocalAnswer::new(if ready { 200 } else { 503 }, body))
        }
        _ => Err(ApiError::new(
            ErrorCode::Internal,
            "this endpoint is not answered by the router",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::definition::{parse, Syntax};
    use contract::ports::Counters;
    use contract::version::ModelSignature;
    use contract::Principal;
    use policies::breaker::Outcome;
    use policies::ring::Bounds;
    use std::sync::Arc;

    struct NoCounters;

    #[async_trait::async_trait]
    impl Counters for NoCounters {
        async fn get_counter(&self, _key: &str) -> Result<u64, String> {
            Ok(0)
        }
        async fn add_counters(&self, _deltas: Vec<(String, u64)>) -> Result<(), String> {
            Ok(())
        }
    }

    /// Version 1 of a function named `f` in `tenant`, with the default breaker.
    fn version(tenant: &str) -> FunctionVersion {
        let body = format!(
            r#"{{"name": "f", "model": "sha256:{}", "inputs": {{"x": {{"tensor": "x"}}}}, "outputs": {{"y": {{"tensor": "y"}}}}}}"#,
            "0".repeat(64)
        );
        FunctionVersion {
            tenant: tenant.into(),
            name: "f".into(),
            version: 1,
            created_at_ms: 1,
            definition: parse(body.as_bytes(), Syntax::Json).unwrap(),
            signature: ModelSignature {
                inputs: vec![],
                outputs: vec![],
            },
            inputs: vec![],
            outputs: vec![],
            model_size_bytes: 0,
            schemas: Default::default(),
        }
    }

    #[tokio::test]
    async fn breaker_states_are_one_series_per_tenant() {
        let guards = Guards::new(Arc::new(NoCounters), None);
        for tenant in ["a", "b"] {
            let principal = Principal {
                client_id: format!("{tenant}-app"),
                tenant: tenant.into(),
                scopes: vec![],
                plan: Default::default(),
            };
            let version = version(tenant);
            let mut pass = guards
                .admit(&principal, &version, 1, &mut Vec::new())
                .await
                .unwrap();
            guards.release(&version, &mut pass, Some(Outcome::Success));
        }
        let text = metrics_text(&Metrics::new(), &guards, None);
        for tenant in ["a", "b"] {
            let series =
                format!("taskmesh_router_breaker_state{{tenant=\"{tenant}\",function=\"f\",version=\"1\"}} 0");
            assert!(text.contains(&series), "{series} missing from {text}");
        }
    }

    #[test]
    fn joined_metrics_are_one_openmetrics_text() {
        let guards = Guards::new(Arc::new(NoCounters), None);
        let extra: MetricsSource =
            Arc::new(|| "# TYPE x gauge\nx 1\n\n# TYPE y gauge\ny 2\n\n".to_string());
        let text = metrics_text(&Metrics::new(), &guards, Some(&extra));
        assert!(!text.lines().any(str::is_empty), "a blank line in {text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("y 2\n# EOF\n"), "{text}");
    }

    #[test]
    fn readiness_turns_503_while_draining() {
        let nodes = NodeSet::new(Bounds::default());
        let ready = router_answer(&Endpoint::Ready, &nodes, false).unwrap();
        assert_eq!(ready.status, 200);
        assert_eq!(ready.body, json!({"status": "ready", "nodes": 0}));
        let draining = router_answer(&Endpoint::Ready, &nodes, true).unwrap();
        assert_eq!(draining.status, 503);
        assert_eq!(draining.body["status"], "draining");
        assert_eq!(
            router_answer(&Endpoint::Live, &nodes, true).unwrap().body,
            json!({"live": true})
        );
        assert_eq!(
            router_answer(&Endpoint::Metrics, &nodes, false)
                .unwrap_err()
                .code,
            ErrorCode::Internal
        );
    }
}
