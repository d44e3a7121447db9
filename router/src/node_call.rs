//! Calls of a node's invoke endpoint made by the router itself (task
//! attempts, pipeline steps), as the proxy makes them for a direct call:
//! pinned to the resolved version, with the cluster key, tenant, invocation
//! id, deadline, priority and cost.
//!
//! Bottom layer: names nothing else in the crate.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use contract::{headers, FunctionVersion};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Extra time a node is given beyond the deadline (as the proxy does).
pub const NODE_ANSWER_GRACE: Duration = Duration::from_millis(250);

/// An h2c client for nodes.
pub type NodeClient = Client<HttpConnector, Full<Bytes>>;

/// A client with Nagle off and a 2 s connect timeout.
pub fn node_client() -> NodeClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector)
}

/// What calling a node came to.
pub enum NodeAnswer {
    /// Status, the node's headers, and the body cut at the cap + 1 bytes.
    Answered(u16, http::HeaderMap, Bytes),
    /// The node could not be reached or did not answer in time.
    Failed(String),
}

/// One call: what the node needs to know besides the body.
pub struct NodeCall<'a> {
    pub invocation_id: &'a str,
    pub tenant: &'a str,
    pub priority: &'a str,
    pub cost: u64,
    /// How long the node has (also sent as `x-taskmesh-deadline-ms`).
    pub deadline: Duration,
    /// The longest body read back; a longer one comes back as cap + 1 bytes.
    pub answer_cap: usize,
}

/// POSTs `body` to `addr`'s invoke endpoint of `version`.
pub async fn invoke(
    client: &NodeClient,
    cluster_key: &contract::ClusterKey,
    addr: SocketAddr,
    version: &FunctionVersion,
    call: &NodeCall<'_>,
    body: Bytes,
) -> NodeAnswer {
    let uri = format!(
        "http://{addr}/v1/functions/{}/invoke?version={}",
        version.name, version.version
    );
    let request = http::Request::post(uri)
        .header("content-type", "application/json")
        .header(headers::INVOCATION_ID, call.invocation_id)
        .header(headers::TENANT, call.tenant)
        .header(headers::DEADLINE_MS, call.deadline.as_millis().to_string())
        .header(headers::PRIORITY, call.priority)
        .header(headers::COST, call.cost.to_string())
        .header(headers::CLUSTER_KEY, cluster_key.expose())
        .body(Full::new(body));
    let request = match request {
        Ok(request) => request,
        Err(e) => return NodeAnswer::Failed(format!("request could not be built: {e}")),
    };
    let cap = call.answer_cap;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let limited = Limited::new(body, cap + 1);
        let body = match limited.collect().await {
            Ok(collected) => collected.to_bytes(),
            // Over the cap: a body the caller refuses by its length.
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Bytes::from(vec![b' '; cap + 1])
            }
            Err(e) => return Err(format!("reading the answer failed: {e}")),
        };
        Ok::<_, String>((parts.status.as_u16(), parts.headers, body))
    };
    match tokio::time::timeout(call.deadline + NODE_ANSWER_GRACE, exchange).await {
        Ok(Ok((status, headers, body))) => NodeAnswer::Answered(status, headers, body),
        Ok(Err(reason)) => NodeAnswer::Failed(reason),
        Err(_) => NodeAnswer::Failed(format!(
            "no answer within the deadline of {} ms",
            call.deadline.as_millis()
        )),
    }
}
