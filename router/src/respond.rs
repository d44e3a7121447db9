//! Writing the router's own JSON answers: the local answers and, in one
//! function ([`write_error`]), every error the router renders, whether it
//! refuses a call before proxying or after proxying failed.
//!
//! Bottom layer: names nothing else in the crate.

use bytes::Bytes;
use contract::limits::DEFAULT_MAX_BODY_BYTES;
use contract::{headers, ApiError, ErrorCode};
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde_json::Value;

/// What the router puts on every answer it writes itself, from the call's state.
pub struct Stamp<'a> {
    /// `x-taskmesh-invocation-id`.
    pub invocation_id: &'a str,
    /// The function version resolved for the call (`x-taskmesh-version`), if any.
    pub version: Option<u32>,
    /// The `RateLimit-Policy` / `RateLimit` headers the guards decided, if any.
    pub rate_headers: &'a [(&'static str, String)],
}

/// How an error answer reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A refusal in `request_filter`, before anything was proxied: written
    /// through the session's response filters; the connection stays open.
    Refusal,
    /// `fail_to_proxy`: written on the downstream session's error path, which
    /// closes the connection and writes nothing when an answer has started.
    ProxyFailure,
}

/// The header of a JSON answer: status, content type and length, the call's
/// stamp, and `retry-after` when the answer gives one.
fn json_header(
    status: u16,
    length: usize,
    stamp: &Stamp<'_>,
    retry_after_s: Option<u64>,
) -> Result<ResponseHeader> {
    let mut header = ResponseHeader::build(status, Some(4 + stamp.rate_headers.len()))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header(headers::INVOCATION_ID, stamp.invocation_id)?;
    if let Some(s) = retry_after_s {
        header.insert_header("retry-after", s.to_string())?;
    }
    if let Some(version) = stamp.version {
        header.insert_header(headers::VERSION, version.to_string())?;
    }
    // The error's own `retry-after` wins over the rate limiter's.
    for (name, value) in stamp
        .rate_headers
        .iter()
        .filter(|(n, _)| *n != "retry-after")
    {
        header.insert_header(*name, value.as_str())?;
    }
    header.set_content_length(length)?;
    Ok(header)
}

/// Writes a local answer (health, readiness, OIP metadata, tasks) as JSON,
/// with `extra` headers (a task's `location`).
pub async fn write_json(
    session: &mut Session,
    status: u16,
    body: &Value,
    extra: &[(&'static str, String)],
    stamp: &Stamp<'_>,
) -> Result<()> {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    let mut header = json_header(status, bytes.len(), stamp, None)?;
    for (name, value) in extra {
        header.insert_header(*name, value.as_str())?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(bytes), true).await
}

/// Writes a result from the cache: the stored JSON body, the call's stamp and
/// `x-taskmesh-cache: hit`.
pub async fn write_cached(session: &mut Session, body: Bytes, stamp: &Stamp<'_>) -> Result<()> {
    let mut header = json_header(200, body.len(), stamp, None)?;
    header.insert_header(headers::CACHE, "hit")?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// Writes one gRPC message the router answers itself: `200`, the framed
/// message, then the trailers `grpc-status: 0`.
pub async fn write_grpc(session: &mut Session, body: Bytes, stamp: &Stamp<'_>) -> Result<()> {
    let mut header = ResponseHeader::build(200, Some(3))?;
    header.insert_header("content-type", "application/grpc")?;
    header.insert_header(headers::INVOCATION_ID, stamp.invocation_id)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), false).await?;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    session.write_response_trailers(trailers).await
}

/// A gRPC call's error: `200` with `content-type: application/grpc`, then
/// trailers with `grpc-status`, `grpc-message`, and the contract's code and
/// `retry-after` as metadata. (Not trailers-only: Pingora ends a stream with
/// an empty DATA frame, which gRPC clients take as a broken stream.)
async fn write_grpc_error(session: &mut Session, err: &ApiError, stamp: &Stamp<'_>) -> Result<()> {
    let mut header = ResponseHeader::build(200, Some(3))?;
    header.insert_header("content-type", "application/grpc")?;
    header.insert_header(headers::INVOCATION_ID, stamp.invocation_id)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    let mut trailers = http::HeaderMap::new();
    let status = contract::grpc::status(err.code).to_string();
    let message = contract::grpc::message_header(&err.message);
    for (name, value) in [
        ("grpc-status", status.as_str()),
        ("grpc-message", message.as_str()),
        (headers::ERROR_CODE, err.code.as_str()),
    ] {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            trailers.insert(name, value);
        }
    }
    if let Some(s) = err.retry_after_s {
        trailers.insert("retry-after", http::HeaderValue::from(s));
    }
    session.write_response_trailers(trailers).await
}

/// Writes `err` as the contract's JSON error: its status and body, with
/// `retry-after` when it has one, and the call's stamp (on `/v2` paths the
/// protocol's body; on gRPC calls a gRPC status). The one place the router
/// renders an error.
pub async fn write_error(
    session: &mut Session,
    err: &ApiError,
    stamp: &Stamp<'_>,
    delivery: Delivery,
) -> Result<()> {
    if session
        .req_header()
        .uri
        .path()
        .starts_with(contract::grpc::SERVICE)
    {
        return write_grpc_error(session, err, stamp).await;
    }
    // On the protocol's paths, the protocol's error body (KServe and Triton
    // clients read `{"error": "<message>"}`); the code is in a header.
    let oip = contract::oip::is_oip_path(session.req_header().uri.path());
    let body = Bytes::from(if oip {
        contract::oip::error_body(err)
    } else {
        err.body_bytes()
    });
    let mut header = json_header(err.status(), body.len(), stamp, err.retry_after_s)?;
    header.insert_header(headers::ERROR_CODE, err.code.as_str())?;
    match delivery {
        Delivery::Refusal => {
            session
                .write_response_header(Box::new(header), false)
                .await?;
            session.write_response_body(Some(body), true).await
        }
        Delivery::ProxyFailure => {
            session
                .as_downstream_mut()
                .write_error_response(header, body)
                .await
        }
    }
}

/// Maps a proxying failure that no hook classified to the contract's error.
pub fn classify(e: &Error) -> ApiError {
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
        ErrorType::HTTPStatus(413) => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("body is larger than the limit of {DEFAULT_MAX_BODY_BYTES} bytes"),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use contract::ErrorCode;

    fn header_value<'h>(header: &'h ResponseHeader, name: &str) -> Option<&'h str> {
        header.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn an_error_header_carries_the_stamp_and_one_retry_after() {
        let rate = vec![
            ("ratelimit-policy", "\"digits\";q=5;w=1".to_string()),
            ("ratelimit", "\"digits\";r=0;t=2".to_string()),
            ("retry-after", "2".to_string()),
        ];
        let stamp = Stamp {
            invocation_id: "inv-1",
            version: Some(3),
            rate_headers: &rate,
        };
        let err = ApiError::new(ErrorCode::RateLimited, "slow down").with_retry_after(7);
        let header = json_header(err.status(), 10, &stamp, err.retry_after_s).unwrap();
        assert_eq!(header.status.as_u16(), 429);
        assert_eq!(
            header_value(&header, "content-type"),
            Some("application/json")
        );
        assert_eq!(header_value(&header, headers::INVOCATION_ID), Some("inv-1"));
        assert_eq!(header_value(&header, headers::VERSION), Some("3"));
        assert_eq!(
            header_value(&header, "ratelimit"),
            Some("\"digits\";r=0;t=2")
        );
        assert_eq!(header_value(&header, "content-length"), Some("10"));
        let retry: Vec<_> = header.headers.get_all("retry-after").iter().collect();
        assert_eq!(retry, ["7"], "the error's retry-after, once");
    }

    #[test]
    fn a_bare_stamp_adds_only_the_invocation_id() {
        let stamp = Stamp {
            invocation_id: "inv-2",
            version: None,
            rate_headers: &[],
        };
        let header = json_header(200, 2, &stamp, None).unwrap();
        assert_eq!(header_value(&header, headers::INVOCATION_ID), Some("inv-2"));
        assert!(header_value(&header, headers::VERSION).is_none());
        assert!(header_value(&header, "retry-after").is_none());
    }
}
