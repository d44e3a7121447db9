//! A model's signature as ONNX Runtime reports it, and the bindings of JSON
//! input fields to its input tensors.

use serde::{Deserialize, Serialize};

use crate::tensor::DType;

/// Element type as the model declares it: a supported [`DType`] or the raw name of another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelType {
    Supported(DType),
    Other(String),
}

impl std::fmt::Display for ModelType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelType::Supported(d) => write!(f, "{d}"),
            ModelType::Other(s) => f.write_str(s),
        }
    }
}

/// One input or output of a model as ONNX Runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: ModelType,
    /// `-1` for a dynamic dimension; empty for a scalar; `None` when not a tensor.
    pub shape: Option<Vec<i64>>,
}

/// The inputs and outputs of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSignature {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

/// A JSON input field bound to a model input tensor, with its resolved type and shape.
///
/// A text input binds up to three tensors (ids, attention mask, type ids), each
/// its own binding with the same `field`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputBinding {
    pub field: String,
    pub tensor: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
    /// How the field becomes this tensor (JSON numbers unless preprocessed).
    #[serde(default, skip_serializing_if = "InputSource::is_json")]
    pub source: InputSource,
}

/// Where an input tensor's values come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputSource {
    /// JSON numbers mapped onto the tensor.
    #[default]
    Json,
    /// Token ids of a text input.
    TextIds,
    /// Attention mask of a text input.
    TextAttentionMask,
    /// Token type ids of a text input.
    TextTypeIds,
    /// Pixels of a decoded image.
    Image,
}

impl InputSource {
    pub fn is_json(&self) -> bool {
        *self == InputSource::Json
    }
}
