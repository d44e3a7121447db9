//! A registered, immutable function version: the definition resolved against its model.

use serde::{Deserialize, Serialize};

use crate::definition::{InputKind, InputSpec, OutputSpec, Take, TaskDefinition};
use crate::processing::{image, post, text};
pub use crate::signature::{InputBinding, InputSource, ModelSignature, ModelType, TensorInfo};
use crate::tensor::{DType, Violation};

/// A model output tensor bound to a JSON output field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputBinding {
    pub field: String,
    pub tensor: String,
    pub dtype: DType,
    pub take: Take,
}

/// What the store keeps per version. Never changed once written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionVersion {
    pub tenant: String,
    pub name: String,
    pub version: u32,
    pub created_at_ms: u64,
    pub definition: TaskDefinition,
    pub signature: ModelSignature,
    pub inputs: Vec<InputBinding>,
    pub outputs: Vec<OutputBinding>,
    /// Size in bytes of the model, recorded at registration, so that a node
    /// can budget an instance's memory before the model is in its local cache
    /// (cluster mode). 0 in versions stored before the size was recorded.
    #[serde(default)]
    pub model_size_bytes: u64,
    /// Compiled schemas, built on first use in this process.
    #[serde(skip)]
    pub schemas: crate::schema::CompiledSchemas,
}

impl FunctionVersion {
    /// The compiled `input_schema`, if the definition has one.
    pub fn input_validator(
        &self,
    ) -> Result<Option<std::sync::Arc<jsonschema::Validator>>, crate::ApiError> {
        self.schemas.input(self.definition.input_schema.as_ref())
    }

    /// The compiled `output_schema`, if the definition has one.
    pub fn output_validator(
        &self,
    ) -> Result<Option<std::sync::Arc<jsonschema::Validator>>, crate::ApiError> {
        self.schemas.output(self.definition.output_schema.as_ref())
    }

    /// The model digest without its `sha256:` prefix.
    pub fn model_hex(&self) -> &str {
        self.definition.model.trim_start_matches("sha256:")
    }

    /// The binding of a model input tensor by name.
    pub fn input_by_tensor(&self, tensor: &str) -> Option<&InputBinding> {
        self.inputs.iter().find(|b| b.tensor == tensor)
    }

    /// The definition of an input field.
    pub fn input_spec(&self, field: &str) -> Option<&InputSpec> {
        self.definition.inputs.get(field)
    }

    /// The definition of an output field.
    pub fn output_spec(&self, field: &str) -> Option<&OutputSpec> {
        self.definition.outputs.get(field)
    }
}

/// Resolves the definition's declared tensors against the model's signature.
///
/// Every model input must be fed by exactly one declared input; every declared
/// tensor must exist with the same element type and a compatible shape.
pub fn bind(
    definition: &TaskDefinition,
    signature: &ModelSignature,
) -> Result<(Vec<InputBinding>, Vec<OutputBinding>), Vec<Violation>> {
    let mut violations = Vec::new();
    let mut inputs = Vec::new();
    // Model input tensors each declared input feeds, for the exactly-once check.
    let mut fed: Vec<String> = Vec::new();
    for (field, spec) in &definition.inputs {
        let pointer = format!("/inputs/{field}");
        let tensor_name = match spec.kind() {
            InputKind::Text(text) => {
                fed.extend(
                    text::tensors(spec.text_tensors(), signature)
                        .into_iter()
                        .map(|(_, t)| t),
                );
                inputs.extend(text::bind(
                    field,
                    spec.text_tensors(),
                    text,
                    signature,
                    &mut violations,
                ));
                continue;
            }
            InputKind::Image(image) => {
                let tensor = spec.tensor.clone().unwrap_or_default();
                fed.push(tensor.clone());
                inputs.extend(image::bind(
                    field,
                    &tensor,
                    image,
                    signature,
                    &mut violations,
                ));
                continue;
            }
            InputKind::Tensor => spec.tensor.clone().unwrap_or_default(),
        };
        fed.push(tensor_name.clone());
        let Some(info) = signature.inputs.iter().find(|t| t.name == tensor_name) else {
            violations.push(Violation::new(
                format!("{pointer}/tensor"),
                format!(
                    "the model has no input tensor {:?} (it has {})",
                    tensor_name,
                    names(&signature.inputs)
                ),
            ));
            continue;
        };
        let Some(dtype) = resolve_dtype(info, spec.dtype, &pointer, &mut violations) else {
            continue;
        };
        let model_shape = info.shape.clone().unwrap_or_default();
        let shape = match &spec.shape {
            None => model_shape,
            Some(declared) => {
                if !shapes_compatible(declared, &model_shape) {
                    violations.push(Violation::new(
                        format!("{pointer}/shape"),
                        format!(
                            "declared shape {} is incompatible with the model's {} for tensor {:?}",
                            crate::tensor::shape_display(declared),
                            crate::tensor::shape_display(&model_shape),
                            tensor_name
                        ),
                    ));
                    continue;
                }
                declared.clone()
            }
        };
        inputs.push(InputBinding {
            field: field.clone(),
            tensor: tensor_name,
            dtype,
            shape,
            source: Default::default(),
        });
    }
    for info in &signature.inputs {
        let fed = fed.iter().filter(|t| **t == info.name).count();
        if fed == 0 {
            violations.push(Violation::new(
                "/inputs",
                format!("model input tensor {:?} is not declared", info.name),
            ));
        } else if fed > 1 {
            violations.push(Violation::new(
                "/inputs",
                format!("model input tensor {:?} is declared {fed} times", info.name),
            ));
        }
    }
    let masks: Vec<String> = inputs
        .iter()
        .filter(|b| b.source == InputSource::TextAttentionMask)
        .map(|b| b.tensor.clone())
        .collect();
    let mut outputs = Vec::new();
    for (field, spec) in &definition.outputs {
        let pointer = format!("/outputs/{field}");
        let Some(info) = signature.outputs.iter().find(|t| t.name == spec.tensor) else {
            violations.push(Violation::new(
                format!("{pointer}/tensor"),
                format!(
                    "the model has no output tensor {:?} (it has {})",
                    spec.tensor,
                    names(&signature.outputs)
                ),
            ));
            continue;
        };
        let Some(dtype) = resolve_dtype(info, spec.dtype, &pointer, &mut violations) else {
            continue;
        };
        post::check_against(field, spec.post(), info, dtype, &masks, &mut violations);
        outputs.push(OutputBinding {
            field: field.clone(),
            tensor: spec.tensor.clone(),
            dtype,
            take: spec.take.unwrap_or(Take::All),
        });
    }
    if violations.is_empty() {
        Ok((inputs, outputs))
    } else {
        Err(violations)
    }
}

fn resolve_dtype(
    info: &TensorInfo,
    declared: Option<DType>,
    pointer: &str,
    violations: &mut Vec<Violation>,
) -> Option<DType> {
    if info.shape.is_none() {
        violations.push(Violation::new(
            format!("{pointer}/tensor"),
            format!(
                "model value {:?} is a {}, not a tensor; only tensors are supported",
                info.name, info.dtype
            ),
        ));
        return None;
    }
    match (&info.dtype, declared) {
        (ModelType::Supported(model), Some(d)) if *model != d => {
            violations.push(Violation::new(
                format!("{pointer}/dtype"),
                format!(
                    "declared {d} but the model's tensor {:?} is {model}",
                    info.name
                ),
            ));
            None
        }
        (ModelType::Supported(model), _) => Some(*model),
        (ModelType::Other(other), _) => {
            violations.push(Violation::new(
                format!("{pointer}/tensor"),
                format!("tensor {:?} has element type {other}, which is not supported (float32, float64, int32, int64, bool)", info.name),
            ));
            None
        }
    }
}

fn shapes_compatible(declared: &[i64], model: &[i64]) -> bool {
    declared.len() == model.len() && declared.iter().zip(model).all(|(d, m)| *m < 0 || d == m)
}

fn names(tensors: &[TensorInfo]) -> String {
    let names: Vec<String> = tensors.iter().map(|t| format!("{:?}", t.name)).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{parse, Syntax};

    fn signature() -> ModelSignature {
        ModelSignature {
            inputs: vec![TensorInfo {
                name: "float_input".into(),
                dtype: ModelType::Supported(DType::Float32),
                shape: Some(vec![-1, 64]),
            }],
            outputs: vec![
                TensorInfo {
                    name: "label".into(),
                    dtype: ModelType::Supported(DType::Int64),
                    shape: Some(vec![-1]),
                },
                TensorInfo {
                    name: "zipmap".into(),
                    dtype: ModelType::Other("sequence".into()),
                    shape: None,
                },
            ],
        }
    }

    fn definition(inputs: &str, outputs: &str) -> TaskDefinition {
        let body = format!(
            r#"{{"name": "digits", "model": "sha256:{}", "inputs": {inputs}, "outputs": {outputs}}}"#,
            "0".repeat(64)
        );
        parse(body.as_bytes(), Syntax::Json).unwrap()
    }

    #[test]
    fn binds_and_fills_in_the_models_types() {
        let d = definition(
            r#"{"pixels": {"tensor": "float_input", "shape": [1, 64]}}"#,
            r#"{"label": {"tensor": "label", "take": "first"}}"#,
        );
        let (inputs, outputs) = bind(&d, &signature()).unwrap();
        assert_eq!(inputs[0].dtype, DType::Float32);
        assert_eq!(inputs[0].shape, vec![1, 64]);
        assert_eq!(outputs[0].dtype, DType::Int64);
        assert_eq!(outputs[0].take, Take::First);
    }

    #[test]
    fn names_each_mismatch() {
        let d = definition(
            r#"{"pixels": {"tensor": "float_input", "dtype": "int64", "shape": [1, 64]}, "other": {"tensor": "nope"}}"#,
            r#"{"label": {"tensor": "labels"}, "map": {"tensor": "zipmap"}}"#,
        );
        let err = bind(&d, &signature()).unwrap_err();
        let pointers: Vec<&str> = err.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            vec![
                "/inputs/other/tensor",
                "/inputs/pixels/dtype",
                "/outputs/label/tensor",
                "/outputs/map/tensor"
            ]
        );
        assert!(err[1]
            .message
            .contains("declared int64 but the model's tensor \"float_input\" is float32"));
    }

    #[test]
    fn incompatible_shapes_and_missing_inputs_are_refused() {
        let d = definition(
            r#"{"pixels": {"tensor": "float_input", "shape": [1, 63]}}"#,
            r#"{"label": {"tensor": "label"}}"#,
        );
        let err = bind(&d, &signature()).unwrap_err();
        assert_eq!(err[0].pointer, "/inputs/pixels/shape");
        let d = definition(
            r#"{"pixels": {"tensor": "float_input", "shape": [64]}}"#,
            r#"{"label": {"tensor": "label"}}"#,
        );
        assert!(bind(&d, &signature()).is_err());
    }
}
