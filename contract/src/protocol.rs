//! How a registered version's JSON requests and responses map to tensors.
//!
//! Shared by the router (to refuse bad input before a node is touched) and by
//! the runtime (to build the tensors it runs), so both always agree. Two wire
//! shapes are supported: the Taskmesh invoke body (`{"pixels": [...]}`, fields as
//! the definition names them) and the Open Inference Protocol v2 infer body
//! (raw tensors by name, shape and datatype).

use std::collections::HashMap;

use crate::tensor::{tensor_from_json, Tensor, Violation};
use crate::{ApiError, ErrorCode};
use serde_json::{json, Value};

use crate::definition::Take;
use crate::names::escape;
use crate::processing::{image, text, ItemLimits};
use crate::version::{FunctionVersion, InputSource};

/// Input tensors by model tensor name, ready to run.
pub type TensorInputs = Vec<(String, Tensor)>;

/// Output tensors by model tensor name.
pub type TensorOutputs = HashMap<String, Tensor>;

pub fn invalid_input(violations: Vec<Violation>) -> ApiError {
    invalid_input_of("the function", violations)
}

/// [`invalid_input`] for input meant for `what` ("the pipeline").
pub fn invalid_input_of(what: &str, violations: Vec<Violation>) -> ApiError {
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
        format!("input does not fit {what}: {summary}"),
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
    pub fn tensors(&self) -> &TensorInputs {
        &self.tensors
    }

    pub fn texts(&self) -> &[TextField] {
        &self.texts
    }

    pub fn images(&self) -> &[ImageField] {
        &self.images
    }

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
