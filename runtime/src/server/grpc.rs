//! `ModelInfer` over gRPC on the node, as the router forwards it
//! (`POST /grpc/models/{name}/versions/{version}/infer`, the version pinned by
//! the router): the same checks and run as REST's infer, answered in gRPC (a
//! framed `ModelInferResponse` and `grpc-status: 0` trailers; an error is a
//! trailers-only answer with the status and the contract's code).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use contract::grpc::{self, pb};
use contract::{headers, ApiError};
use http_body_util::{BodyExt, Full};

use super::{budget, invocation_id, ticket};
use super::{with_headers, Node};

pub(super) async fn infer(
    State(node): State<Arc<Node>>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let id = invocation_id(&headers);
    let name = params.get("name").cloned().unwrap_or_default();
    let result: Result<Response, ApiError> = async {
        let (version, bytes) = super::admitted_body(&node, &headers, &name, &params, body).await?;
        let message: pb::ModelInferRequest = grpc::decode(&bytes)?;
        let mut request = grpc::infer_request(&version, &message)?;
        let inputs = std::mem::take(&mut request.inputs);
        let outcome = node
            .engine
            .run(&version, inputs, budget(&headers), ticket(&headers)?)
            .await?;
        let answer = grpc::infer_response(&version, &request, &outcome.outputs);
        Ok(with_headers(
            message_response(grpc::frame(&answer)),
            &node,
            &version,
            Some(outcome.cold_start),
            &id,
        ))
    }
    .await;
    result.unwrap_or_else(|err| {
        if !err.code.is_client_fault() {
            tracing::warn!(function = %name, invocation_id = %id, code = err.code.as_str(), message = %err.message, "invocation failed");
        }
        error_response(&err, &id)
    })
}

/// One message, then the trailers `grpc-status: 0`.
fn message_response(message: Vec<u8>) -> Response {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from(message)).with_trailers(async move { Some(Ok(trailers)) });
    let mut response = Response::new(Body::new(body));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// An error: `200` with the contract's code (which the router's retries
/// read) in the headers, then trailers with the gRPC status and message.
/// (Not trailers-only: passed through the router, that would end in an empty
/// DATA frame without trailers, which gRPC clients take as a broken stream.)
fn error_response(err: &ApiError, id: &str) -> Response {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(grpc::status(err.code)));
    if let Ok(v) = HeaderValue::from_str(&grpc::message_header(&err.message)) {
        trailers.insert("grpc-message", v);
    }
    let body = Full::new(Bytes::new()).with_trailers(async move { Some(Ok(trailers)) });
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        headers::ERROR_CODE,
        HeaderValue::from_static(err.code.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(headers::INVOCATION_ID, v);
    }
    if let Some(s) = err.retry_after_s {
        h.insert("retry-after", HeaderValue::from(s));
    }
    response
}
