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
//! - **Images**: the header is read first and images over
//!   [`MAX_IMAGE_SIDE`] a side are refused before any pixel is decoded; the
//!   decoder also runs under an allocation limit. Then grayscale or RGB,
//!   bilinear resize, `(pixel / scale - mean) / std`, in the declared layout.
//! - **Outputs**: `mean_pool` → `softmax` → `normalize` → `argmax` → `labels`,
//!   along the last axis, then `take`.
//!
//! A fault in the caller's text or image is 422 `invalid_input` with the
//! field's JSON pointer; an output that cannot be post-processed is 502
//! `invalid_output`.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use contract::definition::{ImageDecode, ImageSpec, Layout, OutputSpec, Padding, TextSpec};
use contract::limits::{MAX_IMAGE_DECODE_BYTES, MAX_IMAGE_SIDE, MAX_TENSOR_ELEMENTS};
use contract::names::escape;
use contract::ports::Blobs;
use contract::protocol::{
    invalid_input, ImageField, InvokeInput, TensorInputs, TensorOutputs, TextField,
};
use contract::tensor::{shape_display, DType, Tensor, TensorData, Violation};
use contract::{ApiError, ErrorCode};
use contract::{FunctionVersion, InputBinding, InputSource, Take};
use image::imageops::FilterType;
use image::{ImageFormat, ImageReader, Limits};
use serde_json::{Map, Value};
use tokenizers::{PaddingDirection, PaddingParams, PostProcessor, Tokenizer, TruncationParams};
use tokio::sync::OnceCell;

/// A tokenizer configured as a text input declares it, with the padding it will use.
pub struct TextTokenizer {
    /// Truncation set to `max_length`; its own padding cleared (padding is per call).
    pub tokenizer: Tokenizer,
    pub pad_id: u32,
    pub pad_type_id: u32,
    pub pad_token: String,
}

/// Loads a tokenizer.json and configures it for `text`. Used at registration
/// (through `OrtInspector::check_tokenizer`; 422 when it fails) and by the
/// node, so both see the same tokenizer.
pub fn configured_tokenizer(bytes: &[u8], text: &TextSpec) -> Result<TextTokenizer, String> {
    let mut tokenizer =
        Tokenizer::from_bytes(bytes).map_err(|e| format!("not a loadable tokenizer.json: {e}"))?;
    let added = tokenizer
        .get_post_processor()
        .map_or(0, |p| p.added_tokens(false));
    let specials = if text.add_special_tokens { added } else { 0 };
    if text.max_length <= specials {
        return Err(format!(
            "max_length {} leaves no room for text after the tokenizer's {specials} special tokens",
            text.max_length
        ));
    }
    let (pad_id, pad_type_id, pad_token) = match tokenizer.get_padding() {
        Some(PaddingParams {
            pad_id,
            pad_type_id,
            pad_token,
            ..
        }) => (*pad_id, *pad_type_id, pad_token.clone()),
        None => ["[PAD]", "<pad>", "<|pad|>"]
            .iter()
            .find_map(|t| tokenizer.token_to_id(t).map(|id| (id, 0, (*t).to_string())))
            .unwrap_or((0, 0, String::new())),
    };
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: text.max_length,
            ..TruncationParams::default()
        }))
        .map_err(|e| format!("cannot truncate to max_length {}: {e}", text.max_length))?;
    // A probe proves the configuration encodes before any caller depends on it.
    tokenizer
        .encode("Taskmesh checks this tokenizer.", text.add_special_tokens)
        .map_err(|e| format!("the tokenizer fails to encode a probe text: {e}"))?;
    Ok(TextTokenizer {
        tokenizer,
        pad_id,
        pad_type_id,
        pad_token,
    })
}

/// Tokenizers kept loaded; beyond this the least recently used is dropped.
const MAX_CACHED_TOKENIZERS: usize = 32;

type TokenizerKey = (String, usize);

struct CachedTokenizer {
    cell: Arc<OnceCell<Arc<TextTokenizer>>>,
    last_used: Instant,
}

/// The node's preprocessing state: loaded tokenizers by digest.
pub struct Prepost {
    artifacts: Arc<dyn Blobs>,
    tokenizers: Mutex<HashMap<TokenizerKey, CachedTokenizer>>,
}

/// Input tensors ready to run, and the attention masks the outputs pool over.
pub struct Prepared {
    pub inputs: TensorInputs,
    /// Copies of the mask tensors named by an output's `mean_pool`.
    pub masks: HashMap<String, Tensor>,
}

impl Prepost {
    pub fn new(artifacts: Arc<dyn Blobs>) -> Self {
        Prepost {
            artifacts,
            tokenizers: Mutex::new(HashMap::new()),
        }
    }

    /// Turns a checked invoke body into the model's input tensors.
    pub async fn prepare(
        &self,
        version: &Arc<FunctionVersion>,
        input: InvokeInput,
    ) -> Result<Prepared, ApiError> {
        let (mut inputs, texts, images) = input.into_parts();
        if !texts.is_empty() || !images.is_empty() {
            let mut tokenizers = Vec::with_capacity(texts.len());
            for field in &texts {
                let spec = text_spec(version, &field.field)?;
                tokenizers.push(self.tokenizer(spec).await?);
            }
            let version = version.clone();
            let produced = tokio::task::spawn_blocking(move || {
                preprocess(&version, &texts, &tokenizers, &images)
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

fn internal(message: String) -> ApiError {
    tracing::error!(%message, "preprocessing internal error");
    ApiError::new(ErrorCode::Internal, "internal runtime error")
}

/// The CPU part of [`Prepost::prepare`], run on a blocking thread.
fn preprocess(
    version: &FunctionVersion,
    texts: &[TextField],
    tokenizers: &[Arc<TextTokenizer>],
    images: &[ImageField],
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
        let tensor = image_tensor(spec, binding, &field.images, &pointer)?;
        out.push((binding.tensor.clone(), tensor));
    }
    Ok(out)
}

fn refuse(pointer: &str, message: impl Into<String>) -> ApiError {
    invalid_input(vec![Violation::new(pointer, message)])
}

/// Tokenizes the texts of one field into its tensors (ids, attention mask,
/// type ids, as bound), each `[texts, tokens]`.
pub fn tokenize(
    tokenizer: &TextTokenizer,
    spec: &TextSpec,
    texts: &[String],
    bindings: &[&InputBinding],
    pointer: &str,
) -> Result<TensorInputs, ApiError> {
    let item = |i: usize| {
        if texts.len() == 1 {
            pointer.to_string()
        } else {
            format!("{pointer}/{i}")
        }
    };
    let mut encodings = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let encoding = tokenizer
            .tokenizer
            .encode(text.as_str(), spec.add_special_tokens)
            .map_err(|e| refuse(&item(i), format!("the text could not be tokenized: {e}")))?;
        if encoding.is_empty() {
            return Err(refuse(&item(i), "the text gives no tokens"));
        }
        encodings.push(encoding);
    }
    let longest = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
    let length = match spec.padding {
        Padding::None => {
            if let Some(other) = encodings.iter().find(|e| e.len() != longest) {
                return Err(refuse(
                    pointer,
                    format!(
                        "this function does not pad (\"padding\": \"none\"), so the texts of one call must give the same number of tokens; these give {} and {longest}",
                        other.len()
                    ),
                ));
            }
            longest
        }
        Padding::Longest => longest,
        Padding::MaxLength => spec.max_length,
    };
    for encoding in &mut encodings {
        if encoding.len() < length {
            encoding.pad(
                length,
                tokenizer.pad_id,
                tokenizer.pad_type_id,
                &tokenizer.pad_token,
                PaddingDirection::Right,
            );
        }
    }
    let shape = vec![encodings.len(), length];
    let mut out = Vec::with_capacity(bindings.len());
    for binding in bindings {
        let values: Vec<u32> = encodings
            .iter()
            .flat_map(|e| match binding.source {
                InputSource::TextAttentionMask => e.get_attention_mask(),
                InputSource::TextTypeIds => e.get_type_ids(),
                _ => e.get_ids(),
            })
            .copied()
            .collect();
        let data = match binding.dtype {
            DType::Int64 => TensorData::Int64(values.into_iter().map(i64::from).collect()),
            DType::Int32 => TensorData::Int32(
                values
                    .into_iter()
                    .map(|v| i32::try_from(v).unwrap_or(i32::MAX))
                    .collect(),
            ),
            other => {
                return Err(internal(format!(
                    "text tensor {:?} has type {other}",
                    binding.tensor
                )))
            }
        };
        out.push((
            binding.tensor.clone(),
            Tensor {
                shape: shape.clone(),
                data,
            },
        ));
    }
    Ok(out)
}

fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else {
        None
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    if format == ImageFormat::Png {
        "PNG"
    } else {
        "JPEG"
    }
}

/// Decodes the images of one field into its tensor, as the spec declares.
pub fn image_tensor(
    spec: &ImageSpec,
    binding: &InputBinding,
    images: &[Vec<u8>],
    pointer: &str,
) -> Result<Tensor, ApiError> {
    let item = |i: usize| {
        if images.len() == 1 {
            pointer.to_string()
        } else {
            format!("{pointer}/{i}")
        }
    };
    let channels = spec.channels();
    let mut size: Option<(u32, u32)> = spec.resize.map(|[h, w]| (h, w));
    let mut pixels: Vec<Vec<u8>> = Vec::with_capacity(images.len());
    for (i, bytes) in images.iter().enumerate() {
        let at = item(i);
        let format = match (spec.decode, sniff(bytes)) {
            (ImageDecode::Png, Some(ImageFormat::Png)) => ImageFormat::Png,
            (ImageDecode::Jpeg, Some(ImageFormat::Jpeg)) => ImageFormat::Jpeg,
            (ImageDecode::Any, Some(found)) => found,
            (ImageDecode::Png, _) => return Err(refuse(&at, "not a PNG image")),
            (ImageDecode::Jpeg, _) => return Err(refuse(&at, "not a JPEG image")),
            (ImageDecode::Any, None) => return Err(refuse(&at, "not a PNG or JPEG image")),
        };
        let name = format_name(format);
        let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
            .into_dimensions()
            .map_err(|e| refuse(&at, format!("not a valid {name} image: {e}")))?;
        if w == 0 || h == 0 || w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE {
            return Err(refuse(
                &at,
                format!("the image is {w}x{h}; each side must be in 1..={MAX_IMAGE_SIDE}"),
            ));
        }
        let (th, tw) = match size {
            Some(fixed) if spec.resize.is_some() => fixed,
            Some((sh, sw)) if (sh, sw) != (h, w) => {
                return Err(refuse(
                    &at,
                    format!("the images of one call must have the same size; this one is {w}x{h}, the first {sw}x{sh}"),
                ))
            }
            _ => (h, w),
        };
        size = Some((th, tw));
        let elements = (pixels.len() + 1) * channels * th as usize * tw as usize;
        if elements > MAX_TENSOR_ELEMENTS {
            return Err(refuse(
                &at,
                format!("the images give {elements} values; the limit is {MAX_TENSOR_ELEMENTS}"),
            ));
        }
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        let mut limits = Limits::default();
        limits.max_image_width = Some(MAX_IMAGE_SIDE);
        limits.max_image_height = Some(MAX_IMAGE_SIDE);
        limits.max_alloc = Some(MAX_IMAGE_DECODE_BYTES);
        reader.limits(limits);
        let decoded = reader
            .decode()
            .map_err(|e| refuse(&at, format!("not a valid {name} image: {e}")))?;
        let raw = if spec.grayscale {
            let luma = decoded.into_luma8();
            if (luma.height(), luma.width()) == (th, tw) {
                luma.into_raw()
            } else {
                image::imageops::resize(&luma, tw, th, FilterType::Triangle).into_raw()
            }
        } else {
            let rgb = decoded.into_rgb8();
            if (rgb.height(), rgb.width()) == (th, tw) {
                rgb.into_raw()
            } else {
                image::imageops::resize(&rgb, tw, th, FilterType::Triangle).into_raw()
            }
        };
        pixels.push(raw);
    }
    let (h, w) = size.map_or((0, 0), |(h, w)| (h as usize, w as usize));
    let n = pixels.len();
    let shape = match spec.layout {
        Layout::Nchw => vec![n, channels, h, w],
        Layout::Nhwc => vec![n, h, w, channels],
        Layout::Flat => vec![n, h * w * channels],
    };
    let fits = shape.len() == binding.shape.len()
        && shape
            .iter()
            .zip(&binding.shape)
            .all(|(s, m)| *m < 0 || *s as i64 == *m);
    if !fits {
        return Err(refuse(
            pointer,
            format!(
                "the image gives a {} tensor, but {:?} is {}; send images of the size the model takes",
                shape_display(&shape.iter().map(|d| *d as i64).collect::<Vec<_>>()),
                binding.tensor,
                shape_display(&binding.shape)
            ),
        ));
    }
    let scale: Vec<(f64, f64)> = (0..channels)
        .map(|c| (spec.mean_of(c), spec.std_of(c)))
        .collect();
    let value = |px: u8, c: usize| (f64::from(px) / spec.scale - scale[c].0) / scale[c].1;
    let mut values: Vec<f64> = Vec::with_capacity(n * channels * h * w);
    for raw in &pixels {
        match spec.layout {
            Layout::Nchw => {
                for c in 0..channels {
                    values.extend(raw.iter().skip(c).step_by(channels).map(|px| value(*px, c)));
                }
            }
            Layout::Nhwc | Layout::Flat => {
                values.extend(
                    raw.iter()
                        .enumerate()
                        .map(|(i, px)| value(*px, i % channels)),
                );
            }
        }
    }
    let data = match binding.dtype {
        DType::Float64 => TensorData::Float64(values),
        _ => TensorData::Float32(values.into_iter().map(|v| v as f32).collect()),
    };
    Ok(Tensor { shape, data })
}

// ---- post-processing ----

/// Softmax of each row of `width` values, in place (stable: the row's maximum is subtracted).
pub fn softmax(values: &mut [f64], width: usize) {
    if width == 0 {
        return;
    }
    for row in values.chunks_mut(width) {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        if sum > 0.0 {
            for x in row.iter_mut() {
                *x /= sum;
            }
        }
    }
}

/// L2-normalises each row of `width` values, in place (`x / max(‖x‖, 1e-12)`, as PyTorch).
pub fn l2_normalize(values: &mut [f64], width: usize) {
    if width == 0 {
        return;
    }
    for row in values.chunks_mut(width) {
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        for x in row.iter_mut() {
            *x /= norm;
        }
    }
}

/// Index of the largest value of each row of `width` values (the first on ties).
pub fn argmax(values: &[f64], width: usize) -> Vec<usize> {
    if width == 0 {
        return Vec::new();
    }
    values
        .chunks(width)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |(best, max), (i, x)| {
                    if *x > max {
                        (i, *x)
                    } else {
                        (best, max)
                    }
                })
                .0
        })
        .collect()
}

/// Mean of `[batch, sequence, hidden]` over the sequence, weighted by a
/// `[batch, sequence]` mask: `Σ mask·x / max(Σ mask, 1e-9)` (sentence-transformers).
pub fn mean_pool(values: &[f64], shape: [usize; 3], mask: &[f64]) -> Vec<f64> {
    let [batch, seq, hidden] = shape;
    let mut out = vec![0.0; batch * hidden];
    for b in 0..batch {
        let pooled = &mut out[b * hidden..(b + 1) * hidden];
        let mut weight = 0.0;
        for s in 0..seq {
            let m = mask[b * seq + s];
            if m == 0.0 {
                continue;
            }
            weight += m;
            let row = &values[(b * seq + s) * hidden..(b * seq + s + 1) * hidden];
            for (p, x) in pooled.iter_mut().zip(row) {
                *p += m * x;
            }
        }
        let weight = f64::max(weight, 1e-9);
        for p in pooled.iter_mut() {
            *p /= weight;
        }
    }
    out
}

fn to_f64(data: &TensorData) -> Vec<f64> {
    match data {
        TensorData::Float32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Float64(v) => v.clone(),
        TensorData::Int32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Int64(v) => v.iter().map(|x| *x as f64).collect(),
        TensorData::Bool(v) => v.iter().map(|x| f64::from(u8::from(*x))).collect(),
    }
}

fn bad_output(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidOutput, message)
}

/// An output after post-processing: a tensor, or labels in the tensor's shape.
enum Processed {
    Tensor(Tensor),
    Labels {
        shape: Vec<usize>,
        labels: Vec<String>,
    },
}

/// Applies an output's declared post-processing to its tensor.
fn postprocess(
    spec: &OutputSpec,
    tensor: &Tensor,
    masks: &HashMap<String, Tensor>,
) -> Result<Processed, ApiError> {
    let name = &spec.tensor;
    let mut shape = tensor.shape.clone();
    let mut x = to_f64(&tensor.data);
    if let Some(mask_name) = &spec.mean_pool {
        let mask = masks.get(mask_name).ok_or_else(|| {
            bad_output(format!(
                "no attention mask {mask_name:?} to pool {name:?} with"
            ))
        })?;
        let (&[b, s, h], &[mb, ms]) = (shape.as_slice(), mask.shape.as_slice()) else {
            return Err(bad_output(format!(
                "mean_pool needs {name:?} as [batch, sequence, hidden] and its mask as [batch, sequence]; got {:?} and {:?}",
                shape, mask.shape
            )));
        };
        if (b, s) != (mb, ms) {
            return Err(bad_output(format!(
                "tensor {name:?} is {shape:?} but mask {mask_name:?} is {:?}",
                mask.shape
            )));
        }
        x = mean_pool(&x, [b, s, h], &to_f64(&mask.data));
        shape = vec![b, h];
    }
    let width = shape.last().copied().unwrap_or(1);
    if spec.softmax {
        softmax(&mut x, width);
    }
    if spec.normalize {
        l2_normalize(&mut x, width);
    }
    let classes: Option<Vec<i64>> = if spec.argmax {
        if width == 0 {
            return Err(bad_output(format!(
                "tensor {name:?} has no classes to take argmax of"
            )));
        }
        shape.pop();
        Some(argmax(&x, width).into_iter().map(|i| i as i64).collect())
    } else if spec.labels.is_some() {
        match &tensor.data {
            TensorData::Int64(v) => Some(v.clone()),
            TensorData::Int32(v) => Some(v.iter().map(|i| i64::from(*i)).collect()),
            _ => {
                return Err(bad_output(format!(
                    "tensor {name:?} holds no class indices"
                )))
            }
        }
    } else {
        None
    };
    if let Some(classes) = classes {
        return Ok(match &spec.labels {
            None => Processed::Tensor(Tensor {
                shape,
                data: TensorData::Int64(classes),
            }),
            Some(labels) => {
                let named = classes
                    .iter()
                    .map(|c| {
                        usize::try_from(*c)
                            .ok()
                            .and_then(|i| labels.get(i))
                            .cloned()
                            .ok_or_else(|| {
                                bad_output(format!(
                                    "class {c} of {name:?} has no label ({} labels)",
                                    labels.len()
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Processed::Labels {
                    shape,
                    labels: named,
                }
            }
        });
    }
    let data = match tensor.data.dtype() {
        DType::Float32 => TensorData::Float32(x.into_iter().map(|v| v as f32).collect()),
        _ => TensorData::Float64(x),
    };
    Ok(Processed::Tensor(Tensor { shape, data }))
}

fn nest_labels(shape: &[usize], labels: &[String], at: &mut usize) -> Value {
    match shape.split_first() {
        None => {
            let value = labels.get(*at).cloned().map_or(Value::Null, Value::String);
            *at += 1;
            value
        }
        Some((n, rest)) => Value::Array((0..*n).map(|_| nest_labels(rest, labels, at)).collect()),
    }
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
    use super::*;
    use contract::definition::{parse, Syntax};
    use contract::version::bind;
    use contract::{ModelSignature, ModelType, TensorInfo};
    use serde_json::json;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_survive_large_values() {
        let mut x = vec![1.0, 2.0, 3.0, 1000.0, 1001.0, 1002.0];
        softmax(&mut x, 3);
        let expected = [
            0.090_030_573_170_380_46,
            0.244_728_471_054_797_6,
            0.665_240_955_774_821_8,
        ];
        close(&x[..3], &expected);
        close(&x[3..], &expected);
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 5.0, 0.0, -1.0], 3), vec![1, 0]);
        assert_eq!(argmax(&[-2.0, -1.0], 2), vec![1]);
        assert!(argmax(&[], 0).is_empty());
    }

    #[test]
    fn l2_normalize_gives_unit_rows_and_keeps_zero_rows() {
        let mut x = vec![3.0, 4.0, 0.0, 0.0];
        l2_normalize(&mut x, 2);
        close(&x, &[0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn mean_pool_averages_the_masked_tokens_only() {
        // batch 2, sequence 3, hidden 2
        let x = [
            1.0, 10.0, 3.0, 30.0, 100.0, 1000.0, 2.0, 4.0, 6.0, 8.0, 0.0, 0.0,
        ];
        let mask = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0];
        close(&mean_pool(&x, [2, 3, 2], &mask), &[2.0, 20.0, 2.0, 4.0]);
        // An all-zero mask gives zeros, not NaN.
        close(&mean_pool(&x[..6], [1, 3, 2], &[0.0; 3]), &[0.0, 0.0]);
    }

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

    // ---- tokenizer ----

    fn minilm_tokenizer(spec: &TextSpec) -> TextTokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/minilm-embed/tokenizer.json"
        );
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("{path} is missing ({e}): run scripts/setup.sh first"));
        configured_tokenizer(&bytes, spec).unwrap()
    }

    fn minilm_reference() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/minilm-embed/reference.json"
        );
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("{path} is missing ({e}): run scripts/setup.sh first"));
        serde_json::from_slice(&bytes).unwrap()
    }

    fn text_spec(padding: &str, max_length: usize) -> TextSpec {
        serde_json::from_value(json!({
            "tokenizer": format!("sha256:{}", "1".repeat(64)),
            "max_length": max_length, "padding": padding,
        }))
        .unwrap()
    }

    fn bert_bindings() -> Vec<InputBinding> {
        [
            ("input_ids", InputSource::TextIds),
            ("attention_mask", InputSource::TextAttentionMask),
            ("token_type_ids", InputSource::TextTypeIds),
        ]
        .into_iter()
        .map(|(tensor, source)| InputBinding {
            field: "text".into(),
            tensor: tensor.into(),
            dtype: DType::Int64,
            shape: vec![-1, -1],
            source,
        })
        .collect()
    }

    fn run_tokenize(spec: &TextSpec, texts: &[&str]) -> Result<HashMap<String, Tensor>, ApiError> {
        let tokenizer = minilm_tokenizer(spec);
        let bindings = bert_bindings();
        let refs: Vec<&InputBinding> = bindings.iter().collect();
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        tokenize(&tokenizer, spec, &texts, &refs, "/text").map(|v| v.into_iter().collect())
    }

    fn ints(t: &Tensor) -> Vec<i64> {
        match &t.data {
            TensorData::Int64(v) => v.clone(),
            other => panic!("not int64: {other:?}"),
        }
    }

    #[test]
    fn the_tokenizer_gives_the_python_reference_ids() {
        let spec = text_spec("none", 128);
        let out = run_tokenize(&spec, &["set a timer for ten minutes"]).unwrap();
        assert_eq!(
            ints(&out["input_ids"]),
            vec![101, 2275, 1037, 25309, 2005, 2702, 2781, 102]
        );
        assert_eq!(out["input_ids"].shape, vec![1, 8]);
        assert_eq!(ints(&out["attention_mask"]), vec![1; 8]);
        assert_eq!(ints(&out["token_type_ids"]), vec![0; 8]);
        for case in minilm_reference()["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let out = run_tokenize(&spec, &[text]).unwrap();
            let expect =
                |key: &str| -> Vec<i64> { serde_json::from_value(case[key].clone()).unwrap() };
            assert_eq!(ints(&out["input_ids"]), expect("input_ids"), "{text}");
            assert_eq!(
                ints(&out["attention_mask"]),
                expect("attention_mask"),
                "{text}"
            );
            assert_eq!(
                ints(&out["token_type_ids"]),
                expect("token_type_ids"),
                "{text}"
            );
        }
    }

    #[test]
    fn padding_and_truncation_follow_the_spec() {
        let texts = ["A man is eating food.", "A man is eating a piece of bread."];
        // none: texts of different lengths cannot share a tensor.
        let err = run_tokenize(&text_spec("none", 128), &texts).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert_eq!(err.details.unwrap()[0]["pointer"], "/text");
        // longest: padded with [PAD] (0) and a zero mask.
        let out = run_tokenize(&text_spec("longest", 128), &texts).unwrap();
        assert_eq!(out["input_ids"].shape, vec![2, 11]);
        let mask = ints(&out["attention_mask"]);
        assert_eq!(&mask[..11], &[1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
        assert_eq!(&ints(&out["input_ids"])[8..11], &[0, 0, 0]);
        // max_length: every text padded to max_length.
        let out = run_tokenize(&text_spec("max_length", 16), &texts).unwrap();
        assert_eq!(out["input_ids"].shape, vec![2, 16]);
        // Truncation keeps the special tokens.
        let long = "word ".repeat(500);
        let out = run_tokenize(&text_spec("none", 12), &[long.as_str()]).unwrap();
        let ids = ints(&out["input_ids"]);
        assert_eq!(ids.len(), 12);
        assert_eq!((ids[0], ids[11]), (101, 102));
    }

    #[test]
    fn a_max_length_without_room_for_text_is_refused() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/minilm-embed/tokenizer.json"
        );
        let bytes = std::fs::read(path).unwrap();
        let err = configured_tokenizer(&bytes, &text_spec("none", 2))
            .err()
            .unwrap();
        assert!(err.contains("no room"), "{err}");
        let err = configured_tokenizer(b"{\"not\": \"a tokenizer\"}", &text_spec("none", 8))
            .err()
            .unwrap();
        assert!(err.contains("not a loadable tokenizer.json"), "{err}");
    }

    // ---- images ----

    fn png(img: image::DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn gray(w: u32, h: u32) -> image::DynamicImage {
        image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([((x + y * w) % 256) as u8])
        }))
    }

    fn image_spec(spec: Value) -> ImageSpec {
        serde_json::from_value(spec).unwrap()
    }

    fn image_binding(shape: &[i64]) -> InputBinding {
        InputBinding {
            field: "image".into(),
            tensor: "x".into(),
            dtype: DType::Float32,
            shape: shape.to_vec(),
            source: InputSource::Image,
        }
    }

    fn floats(t: &Tensor) -> Vec<f32> {
        match &t.data {
            TensorData::Float32(v) => v.clone(),
            other => panic!("not float32: {other:?}"),
        }
    }

    fn pointer_and_message(err: &ApiError) -> (String, String) {
        let d = &err.details.as_ref().unwrap()[0];
        (
            d["pointer"].as_str().unwrap().to_string(),
            d["message"].as_str().unwrap().to_string(),
        )
    }

    #[test]
    fn a_grayscale_png_becomes_flat_scaled_pixels() {
        let spec = image_spec(
            json!({"decode": "png", "resize": [28, 28], "grayscale": true, "layout": "flat"}),
        );
        let t = image_tensor(
            &spec,
            &image_binding(&[-1, 784]),
            &[png(gray(28, 28))],
            "/image",
        )
        .unwrap();
        assert_eq!(t.shape, vec![1, 784]);
        let v = floats(&t);
        assert_eq!(v[0], 0.0);
        assert!((v[29] - 29.0 / 255.0).abs() < 1e-7);
        assert!((v[300] - (300 % 256) as f32 / 255.0).abs() < 1e-7);
        // A larger image is resized to fit.
        let t = image_tensor(
            &spec,
            &image_binding(&[-1, 784]),
            &[png(gray(56, 40))],
            "/image",
        )
        .unwrap();
        assert_eq!(t.shape, vec![1, 784]);
    }

    #[test]
    fn rgb_layouts_and_normalisation() {
        let rgb = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                image::Rgb([255, 0, 51])
            } else {
                image::Rgb([0, 255, 102])
            }
        }));
        let bytes = png(rgb);
        let nchw = image_spec(json!({"mean": [0.5], "std": [0.5, 0.5, 0.2]}));
        let t = image_tensor(
            &nchw,
            &image_binding(&[-1, 3, -1, -1]),
            std::slice::from_ref(&bytes),
            "/image",
        )
        .unwrap();
        assert_eq!(t.shape, vec![1, 3, 1, 2]);
        // channel-major: R of both pixels, then G, then B
        let v = floats(&t);
        let expect = [1.0, -1.0, -1.0, 1.0, (0.2 - 0.5) / 0.2, (0.4 - 0.5) / 0.2];
        for (a, b) in v.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        let nhwc = image_spec(json!({"layout": "nhwc", "scale": 1.0}));
        let t = image_tensor(&nhwc, &image_binding(&[-1, -1, -1, 3]), &[bytes], "/image").unwrap();
        assert_eq!(t.shape, vec![1, 1, 2, 3]);
        assert_eq!(floats(&t), vec![255.0, 0.0, 51.0, 0.0, 255.0, 102.0]);
    }

    #[test]
    fn hostile_or_wrong_images_are_refused_with_their_pointer() {
        let flat = image_spec(json!({"decode": "png", "grayscale": true, "layout": "flat"}));
        let binding = image_binding(&[-1, 784]);
        // Not a PNG at all.
        let err = image_tensor(&flat, &binding, &[b"hello world".to_vec()], "/image").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert_eq!(
            pointer_and_message(&err),
            ("/image".into(), "not a PNG image".into())
        );
        // A PNG signature with garbage after it.
        let mut broken = png(gray(28, 28));
        broken.truncate(40);
        let err = image_tensor(&flat, &binding, &[broken], "/image").unwrap_err();
        assert!(
            pointer_and_message(&err)
                .1
                .starts_with("not a valid PNG image"),
            "{err:?}"
        );
        // Over the side limit: refused from the header, before decoding.
        let huge = png(image::DynamicImage::ImageLuma8(image::GrayImage::new(
            5000, 8,
        )));
        let err = image_tensor(&flat, &binding, &[huge], "/image").unwrap_err();
        assert!(pointer_and_message(&err).1.contains("5000x8"), "{err:?}");
        // Without resize, the image must have the size the model takes.
        let err = image_tensor(&flat, &binding, &[png(gray(30, 30))], "/image").unwrap_err();
        assert!(pointer_and_message(&err).1.contains("[N, 784]"), "{err:?}");
        // In an array, the pointer names the item.
        let two = [png(gray(28, 28)), b"junk".to_vec()];
        let err = image_tensor(&flat, &binding, &two, "/image").unwrap_err();
        assert_eq!(pointer_and_message(&err).0, "/image/1");
        // A JPEG where only PNG is declared; accepted by "any".
        let mut jpeg = Cursor::new(Vec::new());
        gray(28, 28).write_to(&mut jpeg, ImageFormat::Jpeg).unwrap();
        let jpeg = jpeg.into_inner();
        let err = image_tensor(&flat, &binding, std::slice::from_ref(&jpeg), "/image").unwrap_err();
        assert_eq!(pointer_and_message(&err).1, "not a PNG image");
        let any = image_spec(json!({"grayscale": true, "layout": "flat"}));
        let t = image_tensor(&any, &binding, &[jpeg], "/image").unwrap();
        assert_eq!(t.shape, vec![1, 784]);
    }
}
