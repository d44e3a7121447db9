//! Body admission: the body cap, reading a body into Pingora's replay buffer,
//! and validating it (JSON depth guard, the version's input schema, mapping
//! onto the declared tensors) before a node is chosen.
//!
//! Bodies that fit the replay buffer are read and validated in
//! `request_filter` ([`admit_body`]). Larger ones, up to the cap, must declare
//! their length; they are validated as they stream ([`StreamedBody`], fed by
//! `request_body_filter`) and held back from the node until they pass.
//!
//! Layer: names only `routes`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use contract::cost;
use contract::limits::{DEFAULT_MAX_BODY_BYTES, MAX_JSON_DEPTH};
use contract::measure::{self, Measured};
use contract::{protocol, ApiError, ErrorCode, FunctionVersion};
use pingora_proxy::Session;

use crate::routes::BodyKind;

/// Pingora keeps at most this much of a request body for replay; bodies up to
/// it are validated before a node is chosen, larger ones while they stream.
pub const REPLAY_BUFFER_BYTES: usize = 64 * 1024;

/// The longest a client may take to send a whole body (one deadline for the
/// whole body, not per chunk; the call's own deadline bounds it too).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The contract's 413 for a body over `cap`.
pub fn too_large(cap: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("body is larger than the limit of {cap} bytes"),
    )
}

/// The largest body a version accepts.
pub(crate) fn body_cap(version: &FunctionVersion) -> usize {
    version
        .definition
        .max_body_bytes
        .unwrap_or(DEFAULT_MAX_BODY_BYTES)
}

/// A body that passed: the parsed invoke body (`Null` for OIP and gRPC
/// bodies) and what the call costs (`contract::cost`).
#[derive(Debug)]
pub struct Validated {
    pub body: serde_json::Value,
    pub cost: u64,
}

/// Parses and checks a body against the function version's input schema and
/// tensors, and measures its cost. An OIP infer body may be JSON followed by
/// raw tensors: `oip_header_length` is its `inference-header-content-length`.
pub fn validate(
    version: &FunctionVersion,
    kind: BodyKind,
    body: &[u8],
    oip_header_length: Option<&str>,
) -> Result<Validated, ApiError> {
    let d = &version.definition;
    match kind {
        BodyKind::Invoke => {
            let value = contract::json::parse_body(body, MAX_JSON_DEPTH)?;
            if let Some(validator) = version.input_validator()? {
                let violations = contract::schema::violations(&validator, &value);
                if !violations.is_empty() {
                    return Err(protocol::invalid_input(violations));
                }
            }
            let input = protocol::invoke_inputs(version, &value)?;
            let cost = measure::call_cost(d, body.len(), Measured::Invoke(&input));
            Ok(Validated { body: value, cost })
        }
        BodyKind::Infer => {
            let request = contract::oip::parse_infer(version, body, oip_header_length)?;
            let cost = measure::call_cost(d, body.len(), Measured::Tensors(&request.inputs));
            Ok(Validated {
                body: serde_json::Value::Null,
                cost,
            })
        }
        BodyKind::GrpcInfer => {
            let request = contract::grpc::decode(body)?;
            let request = contract::grpc::infer_request(version, &request)?;
            let cost = measure::call_cost(d, body.len(), Measured::Tensors(&request.inputs));
            Ok(Validated {
                body: serde_json::Value::Null,
                cost,
            })
        }
    }
}

/// What a streamed body is charged before it has arrived: its exact cost
/// when that is counted in bytes (its declared length), else 1; the rest is
/// charged when it has streamed ([`StreamedBody::cost`]).
pub fn streamed_estimate(version: &FunctionVersion, declared: usize) -> u64 {
    match &version.definition.cost {
        Some(policy) if policy.per == cost::CostMeasure::InputBytes => {
            policy.cost_of(declared as u64)
        }
        _ => 1,
    }
}

/// The request's `inference-header-content-length` (binary OIP bodies).
fn oip_header_length(session: &Session) -> Option<String> {
    session
        .req_header()
        .headers
        .get(contract::oip::HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("?").to_string())
}

/// A body the router let through: read and validated, or left to stream.
pub enum Admitted {
    /// Read whole (it fits the replay buffer) and valid.
    Read(Validated),
    /// Larger: validated as it streams.
    Streamed(StreamedBody),
}

/// Enforces the body cap and validates the body before anything is proxied.
///
/// A declared `content-length` over the cap is refused before a byte is read.
/// A body that fits the replay buffer is read (buffered for Pingora to forward
/// afterwards) and validated here: `Admitted::Read`. A larger declared one is
/// left to stream: `Admitted::Streamed`, the state that validates it on its way.
pub async fn admit_body(
    session: &mut Session,
    version: &Arc<FunctionVersion>,
    kind: BodyKind,
    call_deadline: Instant,
) -> Result<Admitted, ApiError> {
    let cap = body_cap(version);
    let declared = declared_length(session);
    if let Some(length) = declared {
        if length > cap {
            return Err(too_large(cap));
        }
        if length > REPLAY_BUFFER_BYTES {
            return Ok(Admitted::Streamed(StreamedBody {
                version: version.clone(),
                kind,
                cap,
                buffer: Vec::with_capacity(length),
                oip_header_length: oip_header_length(session),
                charged: streamed_estimate(version, length),
                cost: None,
            }));
        }
    }
    let deadline = call_deadline.min(Instant::now() + BODY_READ_TIMEOUT);
    let body = read_buffered(session, cap, deadline).await?;
    let header_length = oip_header_length(session);
    validate(version, kind, &body, header_length.as_deref()).map(Admitted::Read)
}

/// Refuses (431) a request whose headers are over the HTTP/2 header-list
/// limit (`contract::limits::H2_MAX_HEADER_LIST_BYTES`, counted as HTTP/2
/// does: name + value + 32 per field), so HTTP/1.1 gets the same limit as h2.
pub fn check_header_size(request: &pingora_http::RequestHeader) -> Result<(), ApiError> {
    let limit = contract::limits::H2_MAX_HEADER_LIST_BYTES as usize;
    let size: usize = request
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum::<usize>()
        + request.uri.to_string().len();
    if size > limit {
        return Err(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!("the request's headers are {size} bytes; the limit is {limit}"),
        ));
    }
    Ok(())
}

/// Most of a refused request's body the router reads (and drops) before it
/// answers, and how long it waits for it. HTTP/2 clients such as curl 7.88
/// and httpx drop or fail on an answer that arrives before they finished
/// sending (the stream is then reset): reading a small body first lets them
/// see the answer. A body declared larger than this is not waited for.
pub const DISCARD_BODY_BYTES: usize = 1024 * 1024;
const DISCARD_BODY_TIMEOUT: Duration = Duration::from_secs(2);

/// The body length the request declares (`content-length`), if any.
fn declared_length(session: &Session) -> Option<usize> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// Reads and drops what is left of a refused request's body, within
/// [`DISCARD_BODY_BYTES`] and 2 s; an error or a larger body ends it early.
pub async fn discard_body(session: &mut Session) {
    let declared = declared_length(session);
    if declared.is_some_and(|n| n > DISCARD_BODY_BYTES) || session.is_body_done() {
        return;
    }
    let deadline = tokio::time::Instant::now() + DISCARD_BODY_TIMEOUT;
    let mut read = 0usize;
    while read <= DISCARD_BODY_BYTES {
        match tokio::time::timeout_at(deadline, session.read_request_body()).await {
            Ok(Ok(Some(chunk))) => read += chunk.len(),
            _ => return,
        }
    }
}

/// Reads the whole body through Pingora's replay buffer (enabled first, so
/// Pingora can still forward it), within the cap and the replay buffer.
pub(crate) async fn read_buffered(
    session: &mut Session,
    cap: usize,
    deadline: Instant,
) -> Result<Vec<u8>, ApiError> {
    session.enable_retry_buffering();
    read_body(session, cap, deadline, REPLAY_BUFFER_BYTES).await
}

/// Reads and validates a task's input: the whole body, up to the version's
/// cap (it is stored, never forwarded, so the replay buffer does not bound it).
pub async fn read_task_input(
    session: &mut Session,
    version: &FunctionVersion,
) -> Result<Validated, ApiError> {
    let cap = body_cap(version);
    if declared_length(session).is_some_and(|length| length > cap) {
        return Err(too_large(cap));
    }
    let deadline = Instant::now() + BODY_READ_TIMEOUT;
    let body = read_body(session, cap, deadline, cap).await?;
    validate(version, BodyKind::Invoke, &body, None)
}

/// Reads a whole body the router answers itself (a pipeline's input), up to
/// `cap` and within the body-read timeout.
pub async fn read_whole_body(session: &mut Session, cap: usize) -> Result<Vec<u8>, ApiError> {
    if declared_length(session).is_some_and(|length| length > cap) {
        return Err(too_large(cap));
    }
    let deadline = Instant::now() + BODY_READ_TIMEOUT;
    read_body(session, cap, deadline, cap).await
}

/// Reads the whole body within `cap` and `deadline`; a body without a
/// declared length may be at most `undeclared_cap`.
async fn read_body(
    session: &mut Session,
    cap: usize,
    deadline: Instant,
    undeclared_cap: usize,
) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), session.read_request_body())
            .await
            .map_err(|_| {
                ApiError::bad_request(format!(
                    "the request body did not arrive in time (at most {} s, and within the function's timeout_ms)",
                    BODY_READ_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| ApiError::bad_request(format!("reading the request body failed: {e}")))?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() + chunk.len() > cap {
            return Err(too_large(cap));
        }
        if body.len() + chunk.len() > undeclared_cap {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("bodies over {undeclared_cap} bytes must declare content-length"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
}

/// A body over the replay buffer, validated as it streams: chunks are held
/// back, and the whole body is released upstream only once it validates.
pub struct StreamedBody {
    version: Arc<FunctionVersion>,
    kind: BodyKind,
    cap: usize,
    buffer: Vec<u8>,
    oip_header_length: Option<String>,
    /// What the call was charged at admission ([`streamed_estimate`]).
    pub charged: u64,
    /// Its cost, once the whole body validated.
    pub cost: Option<u64>,
}

impl StreamedBody {
    /// Takes the next chunk. Returns what to forward now: nothing before the
    /// end of the stream, then the whole body once it validates; or the
    /// refusal (over the cap, or invalid).
    pub fn take(&mut self, chunk: Option<Bytes>, end_of_stream: bool) -> Result<Bytes, ApiError> {
        if let Some(chunk) = chunk {
            self.buffer.extend_from_slice(&chunk);
        }
        if self.buffer.len() > self.cap {
            return Err(too_large(self.cap));
        }
        if !end_of_stream {
            return Ok(Bytes::new());
        }
        let whole = std::mem::take(&mut self.buffer);
        let validated = validate(
            &self.version,
            self.kind,
            &whole,
            self.oip_header_length.as_deref(),
        )?;
        self.cost = Some(validated.cost);
        Ok(Bytes::from(whole))
    }

    /// The cost still to charge once the body validated: what it costs
    /// beyond what it was charged at admission (0 before that).
    pub fn uncharged(&self) -> u64 {
        self.cost.map_or(0, |c| c.saturating_sub(self.charged))
    }

    /// Forgets what was held back (a new upstream request starts).
    pub fn clear(&mut self) {
        self.buffer.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::definition::{parse, Syntax};
    use contract::version::ModelSignature;

    /// A version with no declared tensors (so `{"inputs": []}` is a valid
    /// OIP body) and a body cap of `cap` bytes.
    fn version(cap: usize) -> Arc<FunctionVersion> {
        let body = format!(
            r#"{{"name": "f", "model": "sha256:{}", "inputs": {{"x": {{"tensor": "x"}}}}, "outputs": {{"y": {{"tensor": "y"}}}}}}"#,
            "0".repeat(64)
        );
        let mut definition = parse(body.as_bytes(), Syntax::Json).unwrap();
        definition.max_body_bytes = Some(cap);
        Arc::new(FunctionVersion {
            tenant: "t".into(),
            name: "f".into(),
            version: 1,
            created_at_ms: 1,
            definition,
            signature: ModelSignature {
                inputs: vec![],
                outputs: vec![],
            },
            inputs: vec![],
            outputs: vec![],
            model_size_bytes: 0,
            schemas: Default::default(),
        })
    }

    fn streamed(cap: usize) -> StreamedBody {
        let version = version(cap);
        StreamedBody {
            cap: body_cap(&version),
            version,
            kind: BodyKind::Infer,
            buffer: Vec::new(),
            oip_header_length: None,
            charged: 1,
            cost: None,
        }
    }

    #[test]
    fn a_streamed_body_owes_the_rest_of_its_cost_once_it_validated() {
        let mut body = streamed(1024);
        let mut version = (*body.version).clone();
        version.definition.cost = Some(contract::cost::CostPolicy {
            per: contract::cost::CostMeasure::InputBytes,
            unit: 4,
        });
        assert_eq!(streamed_estimate(&version, 14), 4);
        body.version = Arc::new(version);
        body.take(Some(Bytes::from_static(b"{\"inputs\"")), false)
            .unwrap();
        assert_eq!(body.uncharged(), 0, "nothing is owed before the end");
        body.take(Some(Bytes::from_static(b": []}")), true).unwrap();
        // 14 bytes at 4 a unit cost 4; 1 was charged at admission.
        assert_eq!(body.cost, Some(4));
        assert_eq!(body.uncharged(), 3);
    }

    #[test]
    fn a_streamed_body_is_held_back_until_it_validates() {
        let mut body = streamed(1024);
        let held = body.take(Some(Bytes::from_static(b"{\"inputs\"")), false);
        assert_eq!(held.unwrap(), Bytes::new(), "nothing is forwarded early");
        let whole = body.take(Some(Bytes::from_static(b": []}")), true).unwrap();
        assert_eq!(whole, Bytes::from_static(b"{\"inputs\": []}"));

        let mut body = streamed(1024);
        body.take(Some(Bytes::from_static(b"{\"inputs\": [")), false)
            .unwrap();
        let err = body.take(None, true).unwrap_err();
        assert_eq!(err.code, ErrorCode::MalformedJson, "{err:?}");
    }

    #[test]
    fn a_streamed_body_over_the_cap_is_refused_before_its_end() {
        let mut body = streamed(8);
        body.take(Some(Bytes::from_static(b"{\"in")), false)
            .unwrap();
        let err = body
            .take(Some(Bytes::from_static(b"puts\": []}")), false)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::PayloadTooLarge);
        assert_eq!(err.message, too_large(8).message);
    }

    #[test]
    fn validation_maps_the_body_by_its_kind() {
        let version = version(1024);
        assert!(validate(&version, BodyKind::Infer, b"{\"inputs\": []}", None).is_ok());
        let err = validate(&version, BodyKind::Infer, b"{}", None).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput, "{err:?}");
        let deep = "[".repeat(MAX_JSON_DEPTH + 1);
        let err = validate(&version, BodyKind::Invoke, deep.as_bytes(), None).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest, "the depth guard: {err:?}");
    }
}
