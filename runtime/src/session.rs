//! Building ONNX Runtime sessions, reading signatures and running tensors through them.

use std::collections::HashMap;

use contract::processing::TextSpec;
use contract::tensor::{DType, Tensor, TensorData, F16};
use contract::{ModelInspector, ModelSignature, ModelType, TensorInfo};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use crate::ortenv;

/// How a session is built: threads per session keep instances sharing the node's cores.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    pub intra_threads: usize,
    /// Run on ONNX Runtime's CUDA execution provider (`resources.gpu`).
    pub gpu: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            intra_threads: 1,
            gpu: false,
        }
    }
}

/// Whether the loaded ONNX Runtime library has a usable CUDA execution provider
/// (the `onnxruntime-gpu` wheel's library on a machine with an NVIDIA GPU).
pub fn cuda_available() -> bool {
    use ort::ep::ExecutionProvider;
    ortenv::environment().is_ok() && ort::ep::CUDA::is_available().unwrap_or(false)
}

/// The execution provider a session with these options runs on.
pub fn provider_name(options: SessionOptions) -> &'static str {
    if options.gpu {
        "cuda"
    } else {
        "cpu"
    }
}

/// Builds a session from model bytes, on the CPU or (with `gpu`) on CUDA.
///
/// A GPU session never falls back to the CPU silently: without a usable CUDA
/// provider it fails, saying so.
/// Where ONNX Runtime would look for external data: a folder that does not exist.
const NO_EXTERNAL_DATA_FOLDER: &str = "/nonexistent/taskmesh-models-have-no-external-data";

pub fn build_session(bytes: &[u8], options: SessionOptions) -> Result<Session, String> {
    // Models are untrusted: one that names a file on this host as external
    // data is refused before ONNX Runtime sees it (the registry checked at
    // upload; this is the node's own check).
    contract::onnx::check_self_contained(bytes)?;
    let env = ortenv::environment()?;
    let err = |e: ort::Error<ort::session::builder::SessionBuilder>| e.to_string();
    let mut builder = Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(err)?
        .with_intra_threads(options.intra_threads)
        .map_err(err)?
        .with_inter_threads(1)
        .map_err(err)?
        // And should a model ever get past that check, the folder its external
        // data resolves in does not exist, so no path on the host can be named.
        .with_config_entry(
            "session.model_external_initializers_file_folder_path",
            NO_EXTERNAL_DATA_FOLDER,
        )
        .map_err(err)?;
    if options.gpu {
        if !cuda_available() {
            return Err("this node has no usable CUDA execution provider, so it cannot serve GPU functions (install the onnxruntime-gpu library and run on an NVIDIA GPU)".into());
        }
        builder = builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(err)?;
    }
    builder.commit_from_memory(bytes).map_err(|e| e.to_string())
}

fn dtype_of(ty: TensorElementType) -> ModelType {
    let supported = match ty {
        TensorElementType::Bool => DType::Bool,
        TensorElementType::Uint8 => DType::UInt8,
        TensorElementType::Uint16 => DType::UInt16,
        TensorElementType::Uint32 => DType::UInt32,
        TensorElementType::Uint64 => DType::UInt64,
        TensorElementType::Int8 => DType::Int8,
        TensorElementType::Int16 => DType::Int16,
        TensorElementType::Int32 => DType::Int32,
        TensorElementType::Int64 => DType::Int64,
        TensorElementType::Float16 => DType::Float16,
        TensorElementType::Float32 => DType::Float32,
        TensorElementType::Float64 => DType::Float64,
        TensorElementType::String => DType::String,
        other => return ModelType::Other(format!("{other:?}").to_lowercase()),
    };
    ModelType::Supported(supported)
}

fn info_of(name: &str, ty: &ValueType) -> TensorInfo {
    match ty {
        ValueType::Tensor { ty, shape, .. } => TensorInfo {
            name: name.to_string(),
            dtype: dtype_of(*ty),
            shape: Some(shape.iter().copied().collect()),
        },
        ValueType::Sequence(_) => TensorInfo {
            name: name.to_string(),
            dtype: ModelType::Other("sequence".into()),
            shape: None,
        },
        ValueType::Map { .. } => TensorInfo {
            name: name.to_string(),
            dtype: ModelType::Other("map".into()),
            shape: None,
        },
        ValueType::Optional(_) => TensorInfo {
            name: name.to_string(),
            dtype: ModelType::Other("optional".into()),
            shape: None,
        },
    }
}

/// The signature of a loaded session.
pub fn signature(session: &Session) -> ModelSignature {
    ModelSignature {
        inputs: session
            .inputs()
            .iter()
            .map(|o| info_of(o.name(), o.dtype()))
            .collect(),
        outputs: session
            .outputs()
            .iter()
            .map(|o| info_of(o.name(), o.dtype()))
            .collect(),
    }
}

/// Inspects uploads for the registry: models by loading them in ONNX Runtime,
/// tokenizers by configuring them as the node will.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrtInspector;

impl ModelInspector for OrtInspector {
    fn inspect(&self, bytes: &[u8]) -> Result<ModelSignature, String> {
        let session = build_session(bytes, SessionOptions::default())?;
        Ok(signature(&session))
    }

    fn check_tokenizer(&self, bytes: &[u8], text: &TextSpec) -> Result<(), String> {
        crate::prepost::configured_tokenizer(bytes, text).map(drop)
    }
}

fn to_ort(tensor: Tensor) -> Result<DynValue, String> {
    let shape = tensor.shape;
    let value = match tensor.data {
        TensorData::Bool(v) => OrtTensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::UInt8(v) => OrtTensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::UInt16(v) => OrtTensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::UInt32(v) => OrtTensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::UInt64(v) => OrtTensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::Int8(v) => OrtTensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::Int16(v) => OrtTensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::Int32(v) => OrtTensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::Int64(v) => OrtTensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::Float16(v) => {
            let v: Vec<half::f16> = v.iter().map(|x| half::f16::from_bits(x.0)).collect();
            OrtTensor::from_array((shape, v)).map(|t| t.into_dyn())
        }
        TensorData::Float32(v) => OrtTensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::Float64(v) => OrtTensor::from_array((shape, v)).map(|t| t.into_dyn()),
        TensorData::String(v) => {
            OrtTensor::from_string_array((shape, v.as_slice())).map(|t| t.into_dyn())
        }
    };
    value.map_err(|e| e.to_string())
}

fn from_ort(value: &DynValue) -> Result<Option<Tensor>, String> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Ok(None);
    };
    fn dims(shape: &ort::value::Shape) -> Vec<usize> {
        shape.iter().map(|d| (*d).max(0) as usize).collect()
    }
    fn parts<T: ort::value::PrimitiveTensorElementType + Clone>(
        value: &DynValue,
    ) -> Result<(Vec<usize>, Vec<T>), String> {
        let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
        Ok((dims(shape), data.to_vec()))
    }
    macro_rules! take {
        ($t:ty, $variant:ident) => {
            parts::<$t>(value).map(|(shape, d)| Tensor {
                shape,
                data: TensorData::$variant(d),
            })?
        };
    }
    let tensor = match ty {
        TensorElementType::Bool => take!(bool, Bool),
        TensorElementType::Uint8 => take!(u8, UInt8),
        TensorElementType::Uint16 => take!(u16, UInt16),
        TensorElementType::Uint32 => take!(u32, UInt32),
        TensorElementType::Uint64 => take!(u64, UInt64),
        TensorElementType::Int8 => take!(i8, Int8),
        TensorElementType::Int16 => take!(i16, Int16),
        TensorElementType::Int32 => take!(i32, Int32),
        TensorElementType::Int64 => take!(i64, Int64),
        TensorElementType::Float32 => take!(f32, Float32),
        TensorElementType::Float64 => take!(f64, Float64),
        TensorElementType::Float16 => {
            let (shape, d) = parts::<half::f16>(value)?;
            Tensor {
                shape,
                data: TensorData::Float16(d.iter().map(|x| F16(x.to_bits())).collect()),
            }
        }
        TensorElementType::String => {
            let (shape, d) = value.try_extract_strings().map_err(|e| e.to_string())?;
            Tensor {
                shape: dims(shape),
                data: TensorData::String(d),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(tensor))
}

/// Runs `inputs` through `session`; returns every output that is a supported tensor.
pub fn run(
    session: &mut Session,
    inputs: Vec<(String, Tensor)>,
) -> Result<HashMap<String, Tensor>, String> {
    let options = RunOptions::new().map_err(|e| e.to_string())?;
    run_with(session, inputs, &options)
}

/// Like [`run`], with run options another thread may `terminate()` to stop the run.
pub fn run_with(
    session: &mut Session,
    inputs: Vec<(String, Tensor)>,
    options: &RunOptions,
) -> Result<HashMap<String, Tensor>, String> {
    let mut values = Vec::with_capacity(inputs.len());
    for (name, tensor) in inputs {
        values.push((name, to_ort(tensor)?));
    }
    let outputs = session
        .run_with_options(values, options)
        .map_err(|e| e.to_string())?;
    let mut result = HashMap::new();
    for (name, value) in outputs.iter() {
        if let Some(tensor) = from_ort(&value)? {
            result.insert(name.to_string(), tensor);
        }
    }
    Ok(result)
}
