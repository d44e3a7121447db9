//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`):
//! its messages (prost, from the vendored `proto/grpc_predict_v2.proto`), the
//! gRPC framing of one message per call, status codes from the contract's
//! error codes, `grpc-timeout`, and the mapping of `ModelInfer` onto the same
//! checks as the REST protocol ([`crate::oip`]).
//!
//! A `ModelInferRequest` is read as the REST binary form would carry it:
//! `raw_input_contents[i]` are input i's raw bytes (`binary_data_size`), typed
//! `contents` its JSON `data`, and parameters pass through to be honoured or
//! refused by name. Every output is answered raw, in `raw_output_contents`,
//! as Triton does.

use std::time::Duration;

pub use prost::Message;
use serde_json::{json, Map, Value};

use crate::oip::{self, OipRequest};
use crate::protocol::TensorOutputs;
use crate::version::{FunctionVersion, ModelType};
use crate::{ApiError, ErrorCode};

/// The generated message types of `inference` (grpc_predict_v2.proto).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

/// The path prefix of the service's methods.
pub const SERVICE: &str = "/inference.GRPCInferenceService/";

/// Largest gRPC message the router reads before it knows the function.
pub const MAX_MESSAGE_BYTES: usize = crate::limits::DEFAULT_MAX_BODY_BYTES;

/// One method of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    ServerLive,
    ServerReady,
    ModelReady,
    ServerMetadata,
    ModelMetadata,
    ModelInfer,
}

impl Method {
    /// The method a request path names, if it is one of the service's.
    pub fn from_path(path: &str) -> Option<Method> {
        Some(match path.strip_prefix(SERVICE)? {
            "ServerLive" => Method::ServerLive,
            "ServerReady" => Method::ServerReady,
            "ModelReady" => Method::ModelReady,
            "ServerMetadata" => Method::ServerMetadata,
            "ModelMetadata" => Method::ModelMetadata,
            "ModelInfer" => Method::ModelInfer,
            _ => return None,
        })
    }
}

/// Whether a `content-type` is gRPC's (`application/grpc`, `application/grpc+proto`).
pub fn is_grpc(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| {
        t == "application/grpc"
            || t.starts_with("application/grpc+")
            || t.starts_with("application/grpc;")
    })
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// The one message of a unary call's body: an uncompressed length-prefixed
/// frame (flag byte 0, 4-byte big-endian length) and nothing after it.
pub fn unframe(body: &[u8]) -> Result<&[u8], ApiError> {
    let Some((head, rest)) = body.split_first_chunk::<5>() else {
        return Err(invalid(
            "a gRPC message frame is 5 header bytes and the message",
        ));
    };
    if head[0] != 0 {
        return Err(invalid(
            "compressed gRPC messages are not accepted (send grpc-encoding identity)",
        ));
    }
    let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if rest.len() != length {
        return Err(invalid(format!(
            "the gRPC frame says {length} bytes, the body has {} after the header (one message per call)",
            rest.len()
        )));
    }
    Ok(rest)
}

/// Decodes a unary call's message.
pub fn decode<M: Message + Default>(body: &[u8]) -> Result<M, ApiError> {
    M::decode(unframe(body)?).map_err(|e| invalid(format!("not a valid protobuf message: {e}")))
}

/// One message as a unary answer's body.
pub fn frame(message: &impl Message) -> Vec<u8> {
    let length = message.encoded_len();
    let mut out = Vec::with_capacity(5 + length);
    out.push(0);
    out.extend_from_slice(&(length as u32).to_be_bytes());
    message.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// The gRPC status of a contract error code.
pub fn status(code: ErrorCode) -> u32 {
    match code {
        ErrorCode::MalformedJson
        | ErrorCode::BadRequest
        | ErrorCode::InvalidInput
        | ErrorCode::InvalidDefinition
        | ErrorCode::UnsupportedMediaType
        | ErrorCode::Refused => 3, // INVALID_ARGUMENT
        ErrorCode::Timeout => 4,   // DEADLINE_EXCEEDED
        ErrorCode::NotFound => 5,  // NOT_FOUND
        ErrorCode::Conflict => 6,  // ALREADY_EXISTS
        ErrorCode::Forbidden => 7, // PERMISSION_DENIED
        ErrorCode::RateLimited
        | ErrorCode::QuotaExceeded
        | ErrorCode::PayloadTooLarge
        | ErrorCode::HeadersTooLarge => 8, // RESOURCE_EXHAUSTED
        ErrorCode::MethodNotAllowed => 12, // UNIMPLEMENTED
        ErrorCode::FunctionFailed
        | ErrorCode::InvalidOutput
        | ErrorCode::Internal
        | ErrorCode::StepFailed => 13, // INTERNAL
        ErrorCode::Unavailable | ErrorCode::CircuitOpen | ErrorCode::Overloaded => 14, // UNAVAILABLE
        ErrorCode::Unauthenticated => 16, // UNAUTHENTICATED
    }
}

/// `grpc-message`: the message percent-encoded as the gRPC spec asks.
pub fn message_header(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `grpc-timeout` value (`1S`, `250m`, ...), or `None` when malformed.
pub fn timeout(value: &str) -> Option<Duration> {
    if value.is_empty() || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn parameter_json(p: &pb::InferParameter) -> Value {
    use pb::infer_parameter::ParameterChoice;
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => json!(b),
        Some(ParameterChoice::Int64Param(i)) => json!(i),
        Some(ParameterChoice::StringParam(s)) => json!(s),
        None => Value::Null,
    }
}

fn parameters_json(
    params: &std::collections::HashMap<String, pb::InferParameter>,
) -> Map<String, Value> {
    params
        .iter()
        .map(|(k, v)| (k.clone(), parameter_json(v)))
        .collect()
}

/// Typed contents as the REST `data` array (bytes as UTF-8 strings).
fn contents_json(c: &pb::InferTensorContents) -> Result<Value, String> {
    let mut out: Vec<Value> = Vec::new();
    out.extend(c.bool_contents.iter().map(|x| json!(x)));
    out.extend(c.int_contents.iter().map(|x| json!(x)));
    out.extend(c.int64_contents.iter().map(|x| json!(x)));
    out.extend(c.uint_contents.iter().map(|x| json!(x)));
    out.extend(c.uint64_contents.iter().map(|x| json!(x)));
    out.extend(c.fp32_contents.iter().map(|x| json!(x)));
    out.extend(c.fp64_contents.iter().map(|x| json!(x)));
    for b in &c.bytes_contents {
        let s = std::str::from_utf8(b).map_err(|_| "bytes_contents must be UTF-8".to_string())?;
        out.push(json!(s));
    }
    Ok(Value::Array(out))
}

/// Checks a `ModelInferRequest` against the version exactly as the REST
/// protocol checks its binary form; every output is then answered raw.
pub fn infer_request(
    version: &FunctionVersion,
    request: &pb::ModelInferRequest,
) -> Result<OipRequest, ApiError> {
    let raw_inputs = !request.raw_input_contents.is_empty();
    if raw_inputs && request.raw_input_contents.len() != request.inputs.len() {
        return Err(invalid(format!(
            "raw_input_contents has {} entries for {} inputs",
            request.raw_input_contents.len(),
            request.inputs.len()
        )));
    }
    let mut raw = Vec::new();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for (i, input) in request.inputs.iter().enumerate() {
        let mut item =
            json!({"name": input.name, "datatype": input.datatype, "shape": input.shape});
        let mut params = parameters_json(&input.parameters);
        if raw_inputs {
            let bytes = &request.raw_input_contents[i];
            params.insert("binary_data_size".into(), json!(bytes.len()));
            raw.extend_from_slice(bytes);
        } else {
            let contents = input.contents.clone().unwrap_or_default();
            item["data"] = contents_json(&contents)
                .map_err(|m| oip_violation(format!("/inputs/{i}/contents"), m))?;
        }
        if !params.is_empty() {
            item["parameters"] = Value::Object(params);
        }
        inputs.push(item);
    }
    let outputs: Vec<Value> = request
        .outputs
        .iter()
        .map(|o| {
            let mut params = parameters_json(&o.parameters);
            params.insert("binary_data".into(), json!(true));
            json!({"name": o.name, "parameters": params})
        })
        .collect();
    let mut params = parameters_json(&request.parameters);
    params.insert("binary_data_output".into(), json!(true));
    let mut body = json!({"inputs": inputs, "outputs": outputs, "parameters": params});
    if !request.id.is_empty() {
        body["id"] = json!(request.id);
    }
    oip::infer_request(version, &body, &raw)
}

fn oip_violation(pointer: String, message: String) -> ApiError {
    crate::protocol::invalid_input(vec![crate::tensor::Violation::new(pointer, message)])
}

/// The `ModelInferResponse` of a run: every answered output raw.
pub fn infer_response(
    version: &FunctionVersion,
    request: &OipRequest,
    outputs: &TensorOutputs,
) -> pb::ModelInferResponse {
    let mut response = pb::ModelInferResponse {
        model_name: version.name.clone(),
        model_version: version.version.to_string(),
        id: request.id.clone().unwrap_or_default(),
        ..Default::default()
    };
    for wanted in oip::answered_outputs(version, request) {
        let Some(tensor) = outputs.get(&wanted.name) else {
            continue;
        };
        response
            .outputs
            .push(pb::model_infer_response::InferOutputTensor {
                name: wanted.name.clone(),
                datatype: tensor.data.dtype().oip_name().to_string(),
                shape: tensor.shape.iter().map(|d| *d as i64).collect(),
                ..Default::default()
            });
        response.raw_output_contents.push(tensor.data.to_le_bytes());
    }
    response
}

fn tensor_metadata(
    name: &str,
    datatype: String,
    shape: &[i64],
) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: name.to_string(),
        datatype,
        shape: shape.to_vec(),
    }
}

/// Model metadata: the same as REST's ([`oip::model_metadata`]).
pub fn model_metadata(version: &FunctionVersion, versions: &[u32]) -> pb::ModelMetadataResponse {
    let datatype = |t: &ModelType| match t {
        ModelType::Supported(d) => d.oip_name().to_string(),
        ModelType::Other(other) => other.to_uppercase(),
    };
    pb::ModelMetadataResponse {
        name: version.name.clone(),
        versions: versions.iter().map(|v| v.to_string()).collect(),
        platform: "onnxruntime_onnx".into(),
        inputs: version
            .signature
            .inputs
            .iter()
            .filter_map(|t| version.input_by_tensor(&t.name))
            .map(|b| tensor_metadata(&b.tensor, b.dtype.oip_name().to_string(), &b.shape))
            .collect(),
        outputs: version
            .signature
            .outputs
            .iter()
            .map(|t| {
                tensor_metadata(
                    &t.name,
                    datatype(&t.dtype),
                    t.shape.as_deref().unwrap_or(&[]),
                )
            })
            .collect(),
    }
}

/// Server metadata: the same as REST's `GET /v2`.
pub fn server_metadata() -> pb::ServerMetadataResponse {
    pb::ServerMetadataResponse {
        name: "taskmesh".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: oip::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
    }
}

/// The model a `ModelReady`/`ModelMetadata`/`ModelInfer` call names, and
/// its version (`""`: the default).
pub fn qualifier(version: &str) -> Result<crate::Qualifier, ApiError> {
    if version.is_empty() {
        Ok(crate::Qualifier::Default)
    } else {
        crate::Qualifier::from_path(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_refused() {
        let message = pb::ServerLiveResponse { live: true };
        let body = frame(&message);
        assert_eq!(&body[..5], &[0, 0, 0, 0, 2]);
        assert_eq!(decode::<pb::ServerLiveResponse>(&body).unwrap(), message);
        assert!(unframe(&body[..4]).is_err());
        let mut compressed = body.clone();
        compressed[0] = 1;
        assert!(unframe(&compressed)
            .unwrap_err()
            .message
            .contains("compressed"));
        let mut two = body.clone();
        two.extend_from_slice(&body);
        assert!(unframe(&two).is_err());
    }

    #[test]
    fn timeouts_and_messages_follow_the_grpc_spec() {
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("12345678901S"), None);
        assert_eq!(timeout("5x"), None);
        assert_eq!(timeout(""), None);
        assert_eq!(
            message_header("shape 100% wrong\né"),
            "shape 100%25 wrong%0A%C3%A9"
        );
        assert_eq!(status(ErrorCode::RateLimited), 8);
        assert_eq!(status(ErrorCode::Unauthenticated), 16);
        assert_eq!(status(ErrorCode::InvalidInput), 3);
        assert_eq!(
            Method::from_path("/inference.GRPCInferenceService/ModelInfer"),
            Some(Method::ModelInfer)
        );
        assert_eq!(
            Method::from_path("/inference.GRPCInferenceService/Nope"),
            None
        );
        assert!(is_grpc(Some("application/grpc")));
        assert!(is_grpc(Some("application/grpc+proto")));
        assert!(!is_grpc(Some("application/json")));
    }
}
