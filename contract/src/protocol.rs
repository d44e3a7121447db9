//! How a registered version's JSON requests and responses map to tensors.
//!
//! Shared by the router (to refuse bad input before a node is touched) and by
//! the runtime (to build the tensors it runs), so both always agree. Two wire
//! shapes are supported: the Taskmesh invoke body (`{"pixels": [...]}`, fields as
//! the definition names them) and the Open Inference Protocol v2 infer body
//! (raw tensors by name, shape and datatype).

use std::collections::HashMap;

use crate::tensor::{tensor_from_json, tensor_from_parts, DType, Tensor, Violation};
use crate::{ApiError, ErrorCode};
use serde_json::{json, Value};

use crate::definition::Take;
use crate::names::escape;
use crate::processing::{image, text, ItemLimits};
use crate::version::{FunctionVersion, InputSource, ModelType};

/// Input tensors by model tensor name, ready to run.
pub type TensorInputs = Vec<(String, Tensor)>;

/// Output tensors by model tensor name.
pub type TensorOutputs = HashMap<String, Tensor>;

/// An OIP v2 request after checking: its tensors, the outputs asked for and its id.
#[derive(Debug)]
pub struct OipRequest {
    pub id: Option<String>,
    pub inputs: TensorInputs,
    /// Output tensor names asked for; empty means all tensor outputs.
    pub outputs: Vec<String>,
}

pub fn invalid_input(violations: Vec<Violation>) -> ApiError {
    let summary = violations
        .iter()
        .take(3)
        .map(|v| {
            format!(
                "{}: {}",
                if v.pointer.is_empty() {
                    "/"
                } else {
                    &v.pointer
                },
                v.message
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    ApiError::new(
        ErrorCode::InvalidInput,
        format!("input does not fit the function: {summary}"),
    )
    .with_details(json!(violations))
}

/// The texts of one text input field, checked (strings, sizes) but not tokenized.
#[derive(Debug, Clone, PartialEq)]
pub struct TextField {
    pub field: String,
    pub texts: Vec<String>,
}

/// The images of one image input field, base64-decoded but not yet decoded as images.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageField {
    pub field: String,
    pub images: Vec<Vec<u8>>,
}

/// An invoke body that passed every check the router makes: tensor fields are
/// tensors already; text and image fields are checked strings and bytes that
/// the node turns into tensors (`runtime/src/prepost/`). Only
/// [`invoke_inputs`] builds one.
#[derive(Debug)]
pub struct InvokeInput {
    tensors: TensorInputs,
    texts: Vec<TextField>,
    images: Vec<ImageField>,
}

impl InvokeInput {
    /// Tensors of the tensor fields, then the text and image fields to preprocess.
    pub fn into_parts(self) -> (TensorInputs, Vec<TextField>, Vec<ImageField>) {
        (self.tensors, self.texts, self.images)
    }
}

/// Maps an invoke body (a JSON object keyed by the definition's input fields) to
/// tensors, and checks text and image fields cheaply (see [`InvokeInput`]).
pub fn invoke_inputs(version: &FunctionVersion, body: &Value) -> Result<InvokeInput, ApiError> {
    let Value::Object(fields) = body else {
        return Err(invalid_input(vec![Violation::new(
            "",
            "the input must be a JSON object",
        )]));
    };
    let mut violations = Vec::new();
    let mut inputs = Vec::with_capacity(version.inputs.len());
    let mut texts = Vec::new();
    let mut images = Vec::new();
    let arrays_allowed = version.outputs.iter().all(|o| o.take == Take::All);
    for binding in &version.inputs {
        // A text field feeds several tensors; it is read once, with its ids.
        if matches!(
            binding.source,
            InputSource::TextAttentionMask | InputSource::TextTypeIds
        ) {
            continue;
        }
        let pointer = format!("/{}", escape(&binding.field));
        let Some(value) = fields.get(&binding.field) else {
            violations.push(Violation::new(
                pointer,
                format!("required field {:?} is missing", binding.field),
            ));
            continue;
        };
        let limits = ItemLimits {
            fixed: binding.shape.first().copied().unwrap_or(-1),
            arrays: arrays_allowed,
        };
        match binding.source {
            InputSource::Json => {
                match tensor_from_json(value, binding.dtype, &binding.shape, &pointer) {
                    Ok(tensor) => inputs.push((binding.tensor.clone(), tensor)),
                    Err(mut found) => violations.append(&mut found),
                }
            }
            InputSource::TextIds => match text::texts(value, &pointer, limits) {
                Ok(found) => texts.push(TextField {
                    field: binding.field.clone(),
                    texts: found,
                }),
                Err(mut found) => violations.append(&mut found),
            },
            InputSource::Image => match image::images(value, &pointer, limits) {
                Ok(found) => images.push(ImageField {
                    field: binding.field.clone(),
                    images: found,
                }),
                Err(mut found) => violations.append(&mut found),
            },
            InputSource::TextAttentionMask | InputSource::TextTypeIds => {}
        }
    }
    if version.definition.input_schema.is_none() {
        for field in fields.keys() {
            if !version.inputs.iter().any(|b| &b.field == field) {
                violations.push(Violation::new(
                    format!("/{}", escape(field)),
                    format!("unknown field {field:?}"),
                ));
            }
        }
    }
    if violations.is_empty() {
        Ok(InvokeInput {
            tensors: inputs,
            texts,
            images,
        })
    } else {
        Err(invalid_input(violations))
    }
}

/// Parses and checks an OIP v2 infer body against the model's tensors.
pub fn oip_inputs(version: &FunctionVersion, body: &Value) -> Result<OipRequest, ApiError> {
    let Value::Object(request) = body else {
        return Err(invalid_input(vec![Violation::new(
            "",
            "the request must be a JSON object",
        )]));
    };
    let id = match request.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(invalid_input(vec![Violation::new(
                "/id",
                "must be a string",
            )]))
        }
    };
    let Some(Value::Array(items)) = request.get("inputs") else {
        return Err(invalid_input(vec![Violation::new(
            "/inputs",
            "an array of input tensors is required",
        )]));
    };
    let mut violations = Vec::new();
    let mut inputs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let pointer = format!("/inputs/{i}");
        match oip_tensor(version, item, &pointer) {
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
    let mut outputs = Vec::new();
    if let Some(requested) = request.get("outputs") {
        let Value::Array(requested) = requested else {
            return Err(invalid_input(vec![Violation::new(
                "/outputs",
                "must be an array",
            )]));
        };
        for (i, item) in requested.iter().enumerate() {
            match item.get("name").and_then(Value::as_str) {
                Some(name) if tensor_outputs(version).any(|(n, _)| n == name) => {
                    outputs.push(name.to_string())
                }
                Some(name) => violations.push(Violation::new(
                    format!("/outputs/{i}/name"),
                    format!("the model has no tensor output {name:?}"),
                )),
                None => violations.push(Violation::new(
                    format!("/outputs/{i}/name"),
                    "a string name is required",
                )),
            }
        }
    }
    if violations.is_empty() {
        Ok(OipRequest {
            id,
            inputs,
            outputs,
        })
    } else {
        Err(invalid_input(violations))
    }
}

fn oip_tensor(
    version: &FunctionVersion,
    item: &Value,
    pointer: &str,
) -> Result<(String, Tensor), Vec<Violation>> {
    let name = item.get("name").and_then(Value::as_str).ok_or_else(|| {
        vec![Violation::new(
            format!("{pointer}/name"),
            "a string name is required",
        )]
    })?;
    let binding = version.input_by_tensor(name).ok_or_else(|| {
        vec![Violation::new(
            format!("{pointer}/name"),
            format!("the model has no input tensor {name:?}"),
        )]
    })?;
    let datatype = item
        .get("datatype")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match DType::from_oip(datatype) {
        Some(d) if d == binding.dtype => {}
        _ => {
            return Err(vec![Violation::new(
                format!("{pointer}/datatype"),
                format!(
                    "tensor {name:?} takes datatype {}, got {datatype:?}",
                    binding.dtype.oip_name()
                ),
            )])
        }
    }
    let shape: Vec<i64> = item
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|dims| dims.iter().map(Value::as_i64).collect())
        .ok_or_else(|| {
            vec![Violation::new(
                format!("{pointer}/shape"),
                "an array of integers is required",
            )]
        })?;
    let data = item.get("data").ok_or_else(|| {
        vec![Violation::new(
            format!("{pointer}/data"),
            "data is required",
        )]
    })?;
    let tensor = tensor_from_parts(&shape, data, binding.dtype, &binding.shape, pointer)?;
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

/// Names of the outputs a run must produce for an OIP request.
pub fn oip_output_names(version: &FunctionVersion, request: &OipRequest) -> Vec<String> {
    if request.outputs.is_empty() {
        tensor_outputs(version)
            .map(|(n, _)| n.to_string())
            .collect()
    } else {
        request.outputs.clone()
    }
}

/// The OIP v2 infer response body.
pub fn oip_response(
    version: &FunctionVersion,
    request: &OipRequest,
    outputs: &TensorOutputs,
) -> Value {
    let items: Vec<Value> = oip_output_names(version, request)
        .iter()
        .filter_map(|name| outputs.get(name).map(|t| (name, t)))
        .map(|(name, t)| json!({"name": name, "datatype": t.data.dtype().oip_name(), "shape": t.shape, "data": t.data.to_flat_json()}))
        .collect();
    let mut body = json!({
        "model_name": version.name,
        "model_version": version.version.to_string(),
        "outputs": items,
    });
    if let Some(id) = &request.id {
        body["id"] = json!(id);
    }
    body
}

/// OIP v2 model metadata.
pub fn oip_metadata(version: &FunctionVersion, versions: &[u32]) -> Value {
    let describe = |t: &crate::version::TensorInfo| {
        let datatype = match &t.dtype {
            ModelType::Supported(d) => d.oip_name().to_string(),
            ModelType::Other(other) => other.to_uppercase(),
        };
        json!({"name": t.name, "datatype": datatype, "shape": t.shape.clone().unwrap_or_default()})
    };
    json!({
        "name": version.name,
        "versions": versions.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        "platform": "onnxruntime_onnx",
        "inputs": version.signature.inputs.iter().map(describe).collect::<Vec<_>>(),
        "outputs": version.signature.outputs.iter().map(describe).collect::<Vec<_>>(),
    })
}
