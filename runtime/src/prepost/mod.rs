//! Pre- and post-processing on the node: texts become token tensors, images
//! become pixel tensors, and output tensors are pooled, normalised, soft-maxed
//! or turned into labels before the answer is built.
//!
//! The router has already checked the request cheaply (strings present, sizes
//! capped, base64 decodable: `contract::processing`); the work that costs CPU
//! happens here, on a blocking thread:
//! - **Text**: the Hugging Face `tokenizers` crate with the function's
//!   tokenizer.json artifact, cached per digest and `max_length`. Truncation to
//!   `max_length`; padding `none`, `longest` or `max_length`.
//! - **Images**: the header is read first, and before any pixel is decoded an
//!   image is refused when it is over
//!   [`MAX_IMAGE_SIDE`](contract::limits::MAX_IMAGE_SIDE) a side or when it
//!   would decode to more bytes than its input's cap
//!   ([`ImageSpec::decoded_bytes_cap`](contract::definition::ImageSpec::decoded_bytes_cap));
//!   the decoder also runs under an allocation limit. Then grayscale or RGB,
//!   bilinear resize, `(pixel / scale - mean) / std`, in the declared layout.
//! - **Budget**: that work runs within the node's [`PreprocessBudget`]: a
//!   bounded number of calls at once, and each image's decoded bytes counted
//!   against a memory budget while it is decoded, all within the call's
//!   deadline (see `budget.rs`).
//! - **Outputs**: `mean_pool` → `softmax` → `normalize` → `argmax` → `labels`,
//!   along the last axis, then `take`.
//!
//! A fault in the caller's text or image is 422 `invalid_input` with the
//! field's JSON pointer; an output that cannot be post-processed is 502
//! `invalid_output`.
//!
//! The module's files, in layers: each uses only those above it in this list,
//! never one below, so there is no import cycle.
//! 1. `common.rs`: the errors (`refuse`, `internal`, `bad_output`).
//! 2. One module per kind, independent of one another: `text.rs`
//!    ([`configured_tokenizer`], [`tokenize`]), `image.rs` ([`image_tensor`]),
//!    `post.rs` ([`mean_pool`], [`softmax`], [`l2_normalize`], [`argmax`],
//!    labels); and `budget.rs` ([`PreprocessBudget`]: places and memory).
//! 3. `mod.rs` (this file): [`Prepost`] (the tokenizer cache, `prepare` and the
//!    dispatch of each field to its kind) and [`invoke_outputs`].
//!
//! A new input kind is one module here, one in `contract/src/processing/`, and
//! one variant of `contract::definition::InputKind`.

mod budget;
mod common;
mod image;
mod post;
mod text;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use contract::definition::TextSpec;
use contract::names::escape;
use contract::ports::Blobs;
use contract::protocol::{
    invalid_input, ImageField, InvokeInput, TensorInputs, TensorOutputs, TextField,
};
use contract::tensor::{Tensor, Violation};
use contract::{ApiError, ErrorCode};
use contract::{FunctionVersion, InputBinding, InputSource, Take};
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use self::common::{bad_output, internal};
use self::post::{nest_labels, postprocess, Processed};

pub use self::budget::{MemoryHeld, Place, PreprocessBudget, PreprocessLimits};
pub use self::image::{image_tensor, image_tensor_within, working_bytes};
pub use self::post::{argmax, l2_normalize, mean_pool, softmax};
pub use self::text::{configured_tokenizer, tokenize, TextTokenizer};

/// Tokenizers kept loaded; beyond this the least recently used is dropped.
const MAX_CACHED_TOKENIZERS: usize = 32;

type TokenizerKey = (String, usize);

struct CachedTokenizer {
    cell: Arc<OnceCell<Arc<TextTokenizer>>>,
    last_used: Instant,
}

/// The node's preprocessing state: loaded tokenizers by digest, and the
/// budget the work runs within.
pub struct Prepost {
    artifacts: Arc<dyn Blobs>,
    tokenizers: Mutex<HashMap<TokenizerKey, CachedTokenizer>>,
    budget: Arc<PreprocessBudget>,
}

/// Input tensors ready to run, and the attention masks the outputs pool over.
pub struct Prepared {
    pub inputs: TensorInputs,
    /// Copies of the mask tensors named by an output's `mean_pool`.
    pub masks: HashMap<String, Tensor>,
}

impl Prepost {
    pub fn new(artifacts: Arc<dyn Blobs>, budget: PreprocessBudget) -> Self {
        Prepost {
            artifacts,
            tokenizers: Mutex::new(HashMap::new()),
            budget: Arc::new(budget),
        }
    }

    pub fn budget(&self) -> &PreprocessBudget {
        &self.budget
    }

    /// Turns a checked invoke body into the model's input tensors.
    ///
    /// Texts and images are processed on a blocking thread once the call has a
    /// place in the budget; each image holds its working set from the memory
    /// budget while it is decoded. A wait for memory ends at `deadline` (504
    /// `timeout`); the caller bounds the whole call, the wait for a place
    /// included, with the same deadline.
    pub async fn prepare(
        &self,
        version: &Arc<FunctionVersion>,
        input: InvokeInput,
        deadline: Instant,
    ) -> Result<Prepared, ApiError> {
        let (mut inputs, texts, images) = input.into_parts();
        if !texts.is_empty() || !images.is_empty() {
            let mut tokenizers = Vec::with_capacity(texts.len());
            for field in &texts {
                let spec = text_spec(version, &field.field)?;
                tokenizers.push(self.tokenizer(spec).await?);
            }
            let place = self.budget.enter().await?;
            let version = version.clone();
            let budget = self.budget.clone();
            let runtime = tokio::runtime::Handle::current();
            let produced = tokio::task::spawn_blocking(move || {
                // Held until the work ends, even if the caller gave up.
                let _place = place;
                let mut admit = |bytes: u64| {
                    if Instant::now() >= deadline {
                        return Err(ApiError::new(
                            ErrorCode::Timeout,
                            "the deadline passed before the image was decoded",
                        ));
                    }
                    budget.hold_blocking(&runtime, bytes, deadline)
                };
                preprocess(&version, &texts, &tokenizers, &images, &mut admit)
            })
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "preprocessing task failed");
                invalid_input(vec![Violation::new(
                    "",
                    "the input could not be preprocessed",
                )])
            })??;
            inputs.extend(produced);
        }
        let mut masks = HashMap::new();
        for spec in version.definition.outputs.values() {
            if let Some(mask) = &spec.mean_pool {
                if let Some((_, tensor)) = inputs.iter().find(|(name, _)| name == mask) {
                    masks.insert(mask.clone(), tensor.clone());
                }
            }
        }
        Ok(Prepared { inputs, masks })
    }

    /// The configured tokenizer of a text input, loaded once per digest and
    /// `max_length` (concurrent first calls share the load).
    async fn tokenizer(&self, spec: &TextSpec) -> Result<Arc<TextTokenizer>, ApiError> {
        let hex = spec.tokenizer.trim_start_matches("sha256:").to_string();
        let cell = {
            let mut cache = self.tokenizers.lock().unwrap_or_else(|p| p.into_inner());
            let key = (hex.clone(), spec.max_length);
            if !cache.contains_key(&key) && cache.len() >= MAX_CACHED_TOKENIZERS {
                let oldest = cache
                    .iter()
                    .min_by_key(|(_, c)| c.last_used)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    cache.remove(&oldest);
                }
            }
            let entry = cache.entry(key).or_insert_with(|| CachedTokenizer {
                cell: Arc::new(OnceCell::new()),
                last_used: Instant::now(),
            });
            entry.last_used = Instant::now();
            entry.cell.clone()
        };
        cell.get_or_try_init(|| async {
            let failed = |reason: String| {
                tracing::error!(tokenizer = %spec.tokenizer, %reason, "tokenizer failed to load");
                ApiError::new(
                    ErrorCode::FunctionFailed,
                    format!("tokenizer {} could not be loaded", spec.tokenizer),
                )
            };
            let bytes = self
                .artifacts
                .get(&hex)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let spec = spec.clone();
            let loaded = tokio::task::spawn_blocking(move || configured_tokenizer(&bytes, &spec))
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(failed)?;
            Ok(Arc::new(loaded))
        })
        .await
        .cloned()
    }
}

fn text_spec<'a>(version: &'a FunctionVersion, field: &str) -> Result<&'a TextSpec, ApiError> {
    version
        .input_spec(field)
        .and_then(|s| s.text.as_ref())
        .ok_or_else(|| internal(format!("field {field:?} is not a text input")))
}

/// The CPU part of [`Prepost::prepare`], run on a blocking thread; `admit`
/// holds each image's working set from the memory budget.
fn preprocess(
    version: &FunctionVersion,
    texts: &[TextField],
    tokenizers: &[Arc<TextTokenizer>],
    images: &[ImageField],
    admit: &mut dyn FnMut(u64) -> Result<MemoryHeld, ApiError>,
) -> Result<TensorInputs, ApiError> {
    let mut out = Vec::new();
    for (field, tokenizer) in texts.iter().zip(tokenizers) {
        let spec = text_spec(version, &field.field)?;
        let bindings: Vec<&InputBinding> = version
            .inputs
            .iter()
            .filter(|b| b.field == field.field)
            .collect();
        let pointer = format!("/{}", escape(&field.field));
        out.extend(tokenize(
            tokenizer,
            spec,
            &field.texts,
            &bindings,
            &pointer,
        )?);
    }
    for field in images {
        let spec = version
            .input_spec(&field.field)
            .and_then(|s| s.image.as_ref())
            .ok_or_else(|| internal(format!("field {:?} is not an image input", field.field)))?;
        let binding = version
            .inputs
            .iter()
            .find(|b| b.field == field.field && b.source == InputSource::Image)
            .ok_or_else(|| internal(format!("field {:?} has no image binding", field.field)))?;
        let pointer = format!("/{}", escape(&field.field));
        let tensor = image_tensor_within(spec, binding, &field.images, &pointer, &mut *admit)?;
        out.push((binding.tensor.clone(), tensor));
    }
    Ok(out)
}

/// Maps output tensors to the invoke response object, post-processing each
/// field as the definition declares, then applying its `take`.
pub fn invoke_outputs(
    version: &FunctionVersion,
    outputs: &TensorOutputs,
    masks: &HashMap<String, Tensor>,
) -> Result<Value, ApiError> {
    let mut body = Map::new();
    for binding in &version.outputs {
        let tensor = outputs.get(&binding.tensor).ok_or_else(|| {
            bad_output(format!("the model produced no tensor {:?}", binding.tensor))
        })?;
        let empty = || {
            bad_output(format!(
                "tensor {:?} is empty; \"take\": \"first\" has nothing to take",
                binding.tensor
            ))
        };
        let take = |t: &Tensor| match binding.take {
            Take::All => Ok(t.to_json()),
            Take::First => t.first_json().ok_or_else(empty),
        };
        let value = match version.output_spec(&binding.field).filter(|s| s.has_post()) {
            None => take(tensor)?,
            Some(spec) => match postprocess(spec, tensor, masks)? {
                Processed::Tensor(t) => take(&t)?,
                Processed::Labels { shape, labels } => match (binding.take, shape.split_first()) {
                    (Take::All, _) | (Take::First, None) => nest_labels(&shape, &labels, &mut 0),
                    (Take::First, Some((0, _))) => return Err(empty()),
                    (Take::First, Some((_, rest))) => nest_labels(rest, &labels, &mut 0),
                },
            },
        };
        body.insert(binding.field.clone(), value);
    }
    Ok(Value::Object(body))
}

#[cfg(test)]
mod tests {
    use contract::definition::{parse, Syntax};
    use contract::tensor::{DType, TensorData};
    use contract::version::bind;
    use contract::{ModelSignature, ModelType, TensorInfo};
    use serde_json::json;

    use super::*;

    fn tensor_info(name: &str, dtype: DType, shape: &[i64]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype: ModelType::Supported(dtype),
            shape: Some(shape.to_vec()),
        }
    }

    /// A version of `definition` bound to a BERT-like signature.
    fn version(inputs: Value, outputs: Value) -> FunctionVersion {
        let body = json!({
            "name": "f", "model": format!("sha256:{}", "0".repeat(64)),
            "inputs": inputs, "outputs": outputs,
        });
        let definition = parse(&serde_json::to_vec(&body).unwrap(), Syntax::Json).unwrap();
        let signature = ModelSignature {
            inputs: vec![
                tensor_info("input_ids", DType::Int64, &[-1, -1]),
                tensor_info("attention_mask", DType::Int64, &[-1, -1]),
                tensor_info("pixels", DType::Float32, &[-1, 4]),
            ],
            outputs: vec![
                tensor_info("hidden", DType::Float32, &[-1, -1, 2]),
                tensor_info("scores", DType::Float32, &[-1, 3]),
                tensor_info("label", DType::Int64, &[-1]),
            ],
        };
        let (inputs, outputs) = bind(&definition, &signature).unwrap();
        FunctionVersion {
            tenant: "default".into(),
            name: "f".into(),
            version: 1,
            created_at_ms: 0,
            definition,
            signature,
            inputs,
            outputs,
            model_size_bytes: 0,
            schemas: Default::default(),
        }
    }

    #[test]
    fn outputs_are_pooled_normalised_and_labelled_before_take() {
        let v = version(
            json!({
                "text": {"text": {"tokenizer": format!("sha256:{}", "1".repeat(64))}},
                "pixels": {"tensor": "pixels"}
            }),
            json!({
                "embedding": {"tensor": "hidden", "mean_pool": "attention_mask", "normalize": true, "take": "first"},
                "class": {"tensor": "scores", "softmax": true, "argmax": true, "labels": ["a", "b", "c"]},
                "probabilities": {"tensor": "scores", "softmax": true, "take": "first"},
                "named": {"tensor": "label", "labels": ["zero", "one"]},
                "raw": {"tensor": "label"}
            }),
        );
        let outputs: TensorOutputs = [
            (
                "hidden".to_string(),
                Tensor {
                    shape: vec![1, 3, 2],
                    data: TensorData::Float32(vec![3.0, 0.0, 0.0, 8.0, 100.0, 100.0]),
                },
            ),
            (
                "scores".to_string(),
                Tensor {
                    shape: vec![2, 3],
                    data: TensorData::Float32(vec![0.0, 0.0, 5.0, 9.0, 1.0, 1.0]),
                },
            ),
            (
                "label".to_string(),
                Tensor {
                    shape: vec![2],
                    data: TensorData::Int64(vec![1, 0]),
                },
            ),
        ]
        .into_iter()
        .collect();
        let masks: HashMap<String, Tensor> = [(
            "attention_mask".to_string(),
            Tensor {
                shape: vec![1, 3],
                data: TensorData::Int64(vec![1, 1, 0]),
            },
        )]
        .into_iter()
        .collect();
        let body = invoke_outputs(&v, &outputs, &masks).unwrap();
        // mean of (3, 0) and (0, 8) = (1.5, 4), normalised = (0.351, 0.936)
        let e = body["embedding"].as_array().unwrap();
        assert!((e[0].as_f64().unwrap() - 1.5 / 4.272_001_872_658_765).abs() < 1e-6);
        assert!((e[1].as_f64().unwrap() - 4.0 / 4.272_001_872_658_765).abs() < 1e-6);
        assert_eq!(body["class"], json!(["c", "a"]));
        let p: f64 = body["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert!((p - 1.0).abs() < 1e-6);
        assert_eq!(body["named"], json!(["one", "zero"]));
        assert_eq!(body["raw"], json!([1, 0]));

        // A class index without a label is the function's fault, not the caller's.
        let mut bad = outputs.clone();
        bad.insert(
            "label".into(),
            Tensor {
                shape: vec![1],
                data: TensorData::Int64(vec![7]),
            },
        );
        let err = invoke_outputs(&v, &bad, &masks).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidOutput);
        assert!(err.message.contains("class 7"), "{}", err.message);
    }

    /// An artifact store with nothing in it (the image tests need none).
    struct NoArtifacts;

    impl Blobs for NoArtifacts {
        fn get<'a, 'b, 'c>(
            &'a self,
            _hex: &'b str,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<Vec<u8>>> + Send + 'c>,
        >
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            Box::pin(async { Err(std::io::ErrorKind::NotFound.into()) })
        }

        fn size_of(&self, _hex: &str) -> Option<u64> {
            None
        }
    }

    fn base64(bytes: &[u8]) -> String {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn preparing_waits_for_a_place_within_its_deadline() {
        use std::time::Duration;

        let v = Arc::new(version(
            json!({
                "image": {"image": {"decode": "png", "resize": [2, 2], "grayscale": true, "layout": "flat"}, "tensor": "pixels"},
                "ids": {"tensor": "input_ids"}, "mask": {"tensor": "attention_mask"}
            }),
            json!({"raw": {"tensor": "label"}}),
        ));
        let mut png = std::io::Cursor::new(Vec::new());
        ::image::DynamicImage::ImageLuma8(::image::GrayImage::new(3, 3))
            .write_to(&mut png, ::image::ImageFormat::Png)
            .unwrap();
        let body = json!({"image": base64(&png.into_inner()), "ids": [[1]], "mask": [[1]]});
        let input = || contract::protocol::invoke_inputs(&v, &body).unwrap();
        let prepost = Prepost::new(Arc::new(NoArtifacts), PreprocessBudget::new(1, 1 << 30));

        // The one place is taken: a call waits, and its deadline ends the wait.
        let place = prepost.budget().enter().await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(100);
        let waited =
            tokio::time::timeout_at(deadline.into(), prepost.prepare(&v, input(), deadline)).await;
        assert!(waited.is_err(), "it waited for the place");
        // Once the place is free, the call is prepared.
        drop(place);
        let later = Instant::now() + Duration::from_secs(5);
        let prepared = prepost.prepare(&v, input(), later).await.unwrap();
        let (_, pixels) = prepared.inputs.iter().find(|(n, _)| n == "pixels").unwrap();
        assert_eq!(pixels.shape, vec![1, 4]);
        assert_eq!(prepost.budget().free_places(), 1);
        assert_eq!(prepost.budget().free_memory_bytes(), 1 << 30);
        // An image whose deadline has passed is not decoded (504).
        let err = prepost
            .prepare(&v, input(), Instant::now())
            .await
            .err()
            .expect("too late");
        assert_eq!(err.code, ErrorCode::Timeout);
    }
}
