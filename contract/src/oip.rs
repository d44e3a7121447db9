//! The Open Inference Protocol v2 (KServe / Triton REST): infer requests and
//! responses as JSON or with Triton's binary tensor data extension, model and
//! server metadata, and the protocol's error body.
//!
//! Shared by the router (to refuse a bad request before a node is touched)
//! and the node (to build the tensors it runs and the answer), so both read a
//! request the same way.
//!
//! The binary extension: a request whose `inference-header-content-length`
//! header is N has a JSON header of N bytes, then the raw bytes of every input
//! whose `parameters.binary_data_size` is set, in input order. An output is
//! answered raw when it asks for `parameters.binary_data: true`, or when no
//! output is named and the request's `parameters.binary_data_output` is true;
//! the answer is then the JSON header followed by those outputs' bytes, with
//! the header's length in `inference-header-content-length`.

use serde_json::{json, Map, Value};

use crate::limits::MAX_JSON_DEPTH;
use crate::protocol::{invalid_input, TensorInputs, TensorOutputs};
use crate::tensor::{tensor_from_parts, tensor_from_raw, DType, Tensor, Violation};
use crate::version::{FunctionVersion, ModelType};
use crate::{ApiError, ErrorCode};

/// The header giving the length of the JSON part of a binary request or answer.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The protocol extensions this server implements (`GET /v2`).
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];

/// An OIP v2 request after checking: its tensors, the outputs to answer and its id.
#[derive(Debug)]
pub struct OipRequest {
    pub id: Option<String>,
    pub inputs: TensorInputs,
    /// Outputs asked for by name, each raw (binary) or JSON; empty means every
    /// tensor output, raw when [`OipRequest::binary_default`] says so.
    pub outputs: Vec<RequestedOutput>,
    /// `parameters.binary_data_output` of the request.
    pub binary_default: bool,
}

/// One output a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: bool,
}

/// The body of an answer and the value of [`HEADER_LENGTH`] when it is binary.
pub struct OipAnswer {
    pub body: Vec<u8>,
    pub json_length: Option<usize>,
}

/// Splits a body into its JSON header and the raw bytes after it, as the
/// request's [`HEADER_LENGTH`] value says (`None`: all JSON).
pub fn split_body<'a>(
    body: &'a [u8],
    header_length: Option<&str>,
) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    let Some(value) = header_length else {
        return Ok((body, &[]));
    };
    let length: usize = value.trim().parse().map_err(|_| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("{HEADER_LENGTH} must be a byte count, got {value:?}"),
        )
    })?;
    if length > body.len() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "{HEADER_LENGTH} is {length} but the body has {} bytes",
                body.len()
            ),
        ));
    }
    Ok(body.split_at(length))
}

/// Parses and checks an infer body (JSON, or JSON and raw tensors) against
/// the version's input tensors.
pub fn parse_infer(
    version: &FunctionVersion,
    body: &[u8],
    header_length: Option<&str>,
) -> Result<OipRequest, ApiError> {
    let (head, raw) = split_body(body, header_length)?;
    let value = crate::json::parse_body(head, MAX_JSON_DEPTH)?;
    infer_request(version, &value, raw)
}

fn one(pointer: impl Into<String>, message: impl Into<String>) -> ApiError {
    invalid_input(vec![Violation::new(pointer, message)])
}

/// Reads a `parameters` object, refusing any parameter not in `known` (the
/// caller then knows it was honoured, never silently ignored).
fn parameters<'a>(
    item: &'a Map<String, Value>,
    pointer: &str,
    known: &[&str],
    violations: &mut Vec<Violation>,
) -> Option<&'a Map<String, Value>> {
    let params = match item.get("parameters") {
        None | Some(Value::Null) => return None,
        Some(Value::Object(params)) => params,
        Some(_) => {
            violations.push(Violation::new(
                format!("{pointer}/parameters"),
                "must be an object",
            ));
            return None;
        }
    };
    for key in params.keys() {
        if !known.contains(&key.as_str()) {
            let supported = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            violations.push(Violation::new(
                format!("{pointer}/parameters/{}", crate::names::escape(key)),
                format!("parameter {key:?} is not supported here (supported: {supported})"),
            ));
        }
    }
    Some(params)
}

fn flag(
    params: Option<&Map<String, Value>>,
    key: &str,
    pointer: &str,
    violations: &mut Vec<Violation>,
) -> bool {
    match params.and_then(|p| p.get(key)) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            violations.push(Violation::new(
                format!("{pointer}/parameters/{key}"),
                "must be a boolean",
            ));
            false
        }
    }
}

/// Checks a parsed infer request; `raw` holds the binary inputs' bytes.
pub fn infer_request(
    version: &FunctionVersion,
    body: &Value,
    mut raw: &[u8],
) -> Result<OipRequest, ApiError> {
    let Value::Object(request) = body else {
        return Err(one("", "the request must be a JSON object"));
    };
    let id = match request.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(one("/id", "must be a string")),
    };
    let mut violations = Vec::new();
    let params = parameters(request, "", &["binary_data_output"], &mut violations);
    let binary_default = flag(params, "binary_data_output", "", &mut violations);
    let Some(Value::Array(items)) = request.get("inputs") else {
        return Err(one("/inputs", "an array of input tensors is required"));
    };
    let mut inputs: TensorInputs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let pointer = format!("/inputs/{i}");
        match input_tensor(version, item, &pointer, &mut raw) {
            Ok((name, tensor)) => {
                if inputs.iter().any(|(n, _)| n == &name) {
                    violations.push(Violation::new(
                        format!("{pointer}/name"),
                        format!("tensor {name:?} is given twice"),
                    ));
                } else {
                    inputs.push((name, tensor));
                }
            }
            Err(mut found) => violations.append(&mut found),
        }
    }
    if !raw.is_empty() && violations.is_empty() {
        violations.push(Violation::new(
            "/inputs",
            format!(
                "{} bytes of binary data are left after the inputs' binary_data_size",
                raw.len()
            ),
        ));
    }
    for binding in &version.inputs {
        if !items
            .iter()
            .any(|item| item.get("name").and_then(Value::as_str) == Some(&binding.tensor))
        {
            violations.push(Violation::new(
                "/inputs",
                format!("input tensor {:?} is missing", binding.tensor),
            ));
        }
    }
    let outputs = requested_outputs(version, request.get("outputs"), &mut violations);
    if violations.is_empty() {
        Ok(OipRequest {
            id,
            inputs,
            outputs,
            binary_default,
        })
    } else {
        Err(invalid_input(violations))
    }
}

fn requested_outputs(
    version: &FunctionVersion,
    requested: Option<&Value>,
    violations: &mut Vec<Violation>,
) -> Vec<RequestedOutput> {
    let mut outputs = Vec::new();
    let items = match requested {
        None | Some(Value::Null) => return outputs,
        Some(Value::Array(items)) => items,
        Some(_) => {
            violations.push(Violation::new("/outputs", "must be an array"));
            return outputs;
        }
    };
    for (i, item) in items.iter().enumerate() {
        let pointer = format!("/outputs/{i}");
        let Some(object) = item.as_object() else {
            violations.push(Violation::new(pointer, "must be an object"));
            continue;
        };
        let params = parameters(object, &pointer, &["binary_data"], violations);
        let binary = flag(params, "binary_data", &pointer, violations);
        match object.get("name").and_then(Value::as_str) {
            Some(name) if tensor_outputs(version).any(|(n, _)| n == name) => {
                outputs.push(RequestedOutput {
                    name: name.to_string(),
                    binary,
                })
            }
            Some(name) => violations.push(Violation::new(
                format!("{pointer}/name"),
                format!("the model has no tensor output {name:?}"),
            )),
            None => violations.push(Violation::new(
                format!("{pointer}/name"),
                "a string name is required",
            )),
        }
    }
    outputs
}

fn input_tensor(
    version: &FunctionVersion,
    item: &Value,
    pointer: &str,
    raw: &mut &[u8],
) -> Result<(String, Tensor), Vec<Violation>> {
    let here =
        |field: &str, message: String| vec![Violation::new(format!("{pointer}/{field}"), message)];
    let Some(object) = item.as_object() else {
        return Err(vec![Violation::new(pointer, "must be an object")]);
    };
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| here("name", "a string name is required".into()))?;
    let binding = version
        .input_by_tensor(name)
        .ok_or_else(|| here("name", format!("the model has no input tensor {name:?}")))?;
    let datatype = object
        .get("datatype")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if DType::from_oip(datatype) != Some(binding.dtype) {
        return Err(here(
            "datatype",
            format!(
                "tensor {name:?} takes datatype {}, got {datatype:?}",
                binding.dtype.oip_name()
            ),
        ));
    }
    let shape: Vec<i64> = object
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|dims| dims.iter().map(Value::as_i64).collect())
        .ok_or_else(|| here("shape", "an array of integers is required".into()))?;
    let mut violations = Vec::new();
    let params = parameters(object, pointer, &["binary_data_size"], &mut violations);
    if !violations.is_empty() {
        return Err(violations);
    }
    let tensor = match params.and_then(|p| p.get("binary_data_size")) {
        Some(size) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    here("parameters/binary_data_size", "must be a byte count".into())
                })?;
            if object.contains_key("data") {
                return Err(here(
                    "data",
                    "give data or binary_data_size, not both".into(),
                ));
            }
            if size > raw.len() {
                return Err(here(
                    "parameters/binary_data_size",
                    format!(
                        "{size} bytes, but only {} bytes of binary data are left (is {HEADER_LENGTH} set?)",
                        raw.len()
                    ),
                ));
            }
            let (bytes, rest) = raw.split_at(size);
            *raw = rest;
            tensor_from_raw(&shape, bytes, binding.dtype, &binding.shape, pointer)?
        }
        None => {
            let data = object
                .get("data")
                .ok_or_else(|| here("data", "data is required".into()))?;
            tensor_from_parts(&shape, data, binding.dtype, &binding.shape, pointer)?
        }
    };
    Ok((name.to_string(), tensor))
}

/// The model's outputs that are tensors of a supported type, with their types.
fn tensor_outputs(version: &FunctionVersion) -> impl Iterator<Item = (&str, DType)> {
    version
        .signature
        .outputs
        .iter()
        .filter_map(|t| match (&t.dtype, &t.shape) {
            (ModelType::Supported(d), Some(_)) => Some((t.name.as_str(), *d)),
            _ => None,
        })
}

/// The outputs a run must produce for a request, each raw or JSON.
pub fn answered_outputs(version: &FunctionVersion, request: &OipRequest) -> Vec<RequestedOutput> {
    if request.outputs.is_empty() {
        tensor_outputs(version)
            .map(|(n, _)| RequestedOutput {
                name: n.to_string(),
                binary: request.binary_default,
            })
            .collect()
    } else {
        request.outputs.clone()
    }
}

/// The infer answer: JSON, or (when any output is raw) the JSON header and
/// the raw outputs after it.
pub fn infer_answer(
    version: &FunctionVersion,
    request: &OipRequest,
    outputs: &TensorOutputs,
) -> OipAnswer {
    let mut raw = Vec::new();
    let items: Vec<Value> = answered_outputs(version, request)
        .iter()
        .filter_map(|o| outputs.get(&o.name).map(|t| (o, t)))
        .map(|(o, t)| {
            let mut item =
                json!({"name": o.name, "datatype": t.data.dtype().oip_name(), "shape": t.shape});
            if o.binary {
                let bytes = t.data.to_le_bytes();
                item["parameters"] = json!({"binary_data_size": bytes.len()});
                raw.extend_from_slice(&bytes);
            } else {
                item["data"] = t.data.to_flat_json();
            }
            item
        })
        .collect();
    let mut head = json!({
        "model_name": version.name,
        "model_version": version.version.to_string(),
        "outputs": items,
    });
    if let Some(id) = &request.id {
        head["id"] = json!(id);
    }
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    let json_length = (!raw.is_empty()).then_some(body.len());
    body.extend_from_slice(&raw);
    OipAnswer { body, json_length }
}

/// Model metadata: the inputs as infer accepts them (the definition's shapes,
/// `-1` where a dimension is free), the outputs as the model declares them.
pub fn model_metadata(version: &FunctionVersion, versions: &[u32]) -> Value {
    let datatype = |t: &ModelType| match t {
        ModelType::Supported(d) => d.oip_name().to_string(),
        ModelType::Other(other) => other.to_uppercase(),
    };
    // In the model's order, as the definition binds them.
    let inputs: Vec<Value> = version
        .signature
        .inputs
        .iter()
        .filter_map(|t| version.input_by_tensor(&t.name))
        .map(|b| json!({"name": b.tensor, "datatype": b.dtype.oip_name(), "shape": b.shape}))
        .collect();
    let outputs: Vec<Value> = version
        .signature
        .outputs
        .iter()
        .map(|t| json!({"name": t.name, "datatype": datatype(&t.dtype), "shape": t.shape.clone().unwrap_or_default()}))
        .collect();
    json!({
        "name": version.name,
        "versions": versions.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": outputs,
    })
}

/// Server metadata (`GET /v2`).
pub fn server_metadata() -> Value {
    json!({
        "name": "taskmesh",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    })
}

/// The protocol's error body, `{"error": "<message>"}`: what KServe and Triton
/// clients read on `/v2` paths (the `/v1` contract keeps its own; the code
/// travels in `x-taskmesh-error-code`).
pub fn error_body(err: &ApiError) -> Vec<u8> {
    serde_json::to_vec(&json!({"error": err.message})).unwrap_or_default()
}

/// Whether a request path is one of the protocol's (`/v2` and below).
pub fn is_oip_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}
