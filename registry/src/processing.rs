//! Declared pre- and post-processing: how a text or an image input becomes
//! tensors, and how an output tensor is reduced before it is returned.
//!
//! This module holds three things, so that registration, router and node
//! always agree:
//! - the definition's spelling of text and image inputs and of output
//!   post-processing (strict, like the rest of the format);
//! - the checks made at registration, with and without the model;
//! - the cheap checks the router makes on each request: strings present,
//!   sizes capped, base64 decodable. It never tokenizes or decodes an image;
//!   the node does that work (`runtime/src/prepost.rs`).

use base64::Engine as _;
use policies::limits::{
    MAX_BATCH_ITEMS, MAX_IMAGE_BYTES, MAX_IMAGE_SIDE, MAX_TEXT_BYTES, MAX_TOKENS,
};
use policies::tensor::{shape_display, DType, Violation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenizers::{PaddingParams, PostProcessor, Tokenizer, TruncationParams};

use crate::definition::{valid_digest, InputSpec, OutputSpec};
use crate::version::{InputBinding, InputSource, ModelSignature, ModelType, TensorInfo};

/// Default names of the tensors a text input feeds.
pub const DEFAULT_IDS: &str = "input_ids";
pub const DEFAULT_ATTENTION_MASK: &str = "attention_mask";
pub const DEFAULT_TYPE_IDS: &str = "token_type_ids";

/// A text input: a tokenizer.json artifact and how to apply it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// `sha256:<hex>` of a tokenizer.json uploaded with `POST /v1/artifacts`.
    pub tokenizer: String,
    /// Tokens per text, special tokens included; longer texts are truncated.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default)]
    pub padding: Padding,
    /// Whether the tokenizer adds its special tokens (`[CLS]`, `[SEP]`, ...).
    #[serde(default = "default_true")]
    pub add_special_tokens: bool,
}

/// How the texts of one call become a rectangle of tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// No padding: a text is as long as its tokens. An array of texts whose
    /// token counts differ is refused (422), as in Hugging Face.
    #[default]
    None,
    /// Pad every text of the call to the longest one.
    Longest,
    /// Pad every text to `max_length` (fixed-shape models).
    MaxLength,
}

/// An image input: a base64 PNG or JPEG, decoded and scaled into one tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    #[serde(default)]
    pub decode: ImageDecode,
    /// `[height, width]` to resize to (bilinear); absent keeps the image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<[u32; 2]>,
    /// One luma channel instead of three RGB channels.
    #[serde(default)]
    pub grayscale: bool,
    /// A pixel (0-255) is divided by `scale`, then `(x - mean[c]) / std[c]`.
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f64>>,
    #[serde(default)]
    pub layout: Layout,
}

impl ImageSpec {
    pub fn channels(&self) -> usize {
        if self.grayscale {
            1
        } else {
            3
        }
    }

    /// `mean[c]` (one value applies to every channel; absent is 0).
    pub fn mean_of(&self, c: usize) -> f64 {
        per_channel(self.mean.as_deref(), c, 0.0)
    }

    /// `std[c]` (one value applies to every channel; absent is 1).
    pub fn std_of(&self, c: usize) -> f64 {
        per_channel(self.std.as_deref(), c, 1.0)
    }
}

fn per_channel(values: Option<&[f64]>, c: usize, default: f64) -> f64 {
    match values {
        None | Some([]) => default,
        Some([one]) => *one,
        Some(many) => many.get(c).copied().unwrap_or(default),
    }
}

/// Which image formats an image input accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageDecode {
    Png,
    Jpeg,
    /// PNG or JPEG, told apart by their first bytes.
    #[default]
    Any,
}

/// How image pixels are laid out in the tensor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[N, C, H, W]`.
    #[default]
    Nchw,
    /// `[N, H, W, C]`.
    Nhwc,
    /// `[N, H*W*C]`: rows of pixels, channels interleaved (scikit-learn style).
    Flat,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
            Layout::Flat => "flat",
        }
    }
}

fn default_max_length() -> usize {
    512
}

fn default_true() -> bool {
    true
}

fn default_scale() -> f64 {
    255.0
}

/// What an input declaration is, read from which key it has.
#[derive(Debug, Clone, Copy)]
pub enum InputKind<'a> {
    /// `{"tensor", "dtype"?, "shape"?}`: JSON numbers into one tensor.
    Tensor,
    /// `{"text": {...}, "ids"?, "attention_mask"?, "type_ids"?}`.
    Text(&'a TextSpec),
    /// `{"image": {...}, "tensor"}`.
    Image(&'a ImageSpec),
}

impl InputSpec {
    /// The kind of this input: `text` or `image` when that key is present, else a tensor.
    pub fn kind(&self) -> InputKind<'_> {
        match (&self.text, &self.image) {
            (Some(text), _) => InputKind::Text(text),
            (None, Some(image)) => InputKind::Image(image),
            (None, None) => InputKind::Tensor,
        }
    }
}

impl OutputSpec {
    /// Whether any post-processing is declared.
    pub fn has_post(&self) -> bool {
        self.mean_pool.is_some()
            || self.softmax
            || self.normalize
            || self.argmax
            || self.labels.is_some()
    }
}

/// Field checks of one input that need no model.
pub fn check_input(field: &str, spec: &InputSpec) -> Vec<Violation> {
    let p = format!("/inputs/{}", escape(field));
    let mut v = Vec::new();
    let not_here = |v: &mut Vec<Violation>, key: &str, present: bool, why: &str| {
        if present {
            v.push(Violation::new(format!("{p}/{key}"), why.to_string()));
        }
    };
    let text_keys = [
        ("ids", spec.ids.is_some()),
        ("attention_mask", spec.attention_mask.is_some()),
        ("type_ids", spec.type_ids.is_some()),
    ];
    match (&spec.text, &spec.image) {
        (Some(_), Some(_)) => v.push(Violation::new(
            p.clone(),
            "an input is a tensor, a text or an image: give \"text\" or \"image\", not both",
        )),
        (Some(text), None) => {
            let why = "a text input names its tensors with ids, attention_mask and type_ids";
            not_here(&mut v, "tensor", spec.tensor.is_some(), why);
            not_here(&mut v, "dtype", spec.dtype.is_some(), why);
            not_here(&mut v, "shape", spec.shape.is_some(), why);
            if !valid_digest(&text.tokenizer) {
                v.push(Violation::new(
                    format!("{p}/text/tokenizer"),
                    format!(
                        "invalid tokenizer digest {:?}: expected sha256:<64 lowercase hex digits> of an artifact (POST /v1/artifacts)",
                        text.tokenizer
                    ),
                ));
            }
            if text.max_length == 0 || text.max_length > MAX_TOKENS {
                v.push(Violation::new(
                    format!("{p}/text/max_length"),
                    format!("{} is out of range 1..={MAX_TOKENS}", text.max_length),
                ));
            }
            for (key, name) in [
                ("ids", &spec.ids),
                ("attention_mask", &spec.attention_mask),
                ("type_ids", &spec.type_ids),
            ] {
                if name.as_deref() == Some("") {
                    v.push(Violation::new(
                        format!("{p}/{key}"),
                        "a tensor name must not be empty",
                    ));
                }
            }
        }
        (None, Some(image)) => {
            for (key, present) in text_keys {
                not_here(&mut v, key, present, "only a text input has this field");
            }
            let why = "an image input takes its tensor's type and shape from the model";
            not_here(&mut v, "dtype", spec.dtype.is_some(), why);
            not_here(&mut v, "shape", spec.shape.is_some(), why);
            if spec.tensor.is_none() {
                v.push(Violation::new(
                    format!("{p}/tensor"),
                    "an image input needs the name of the tensor it fills",
                ));
            }
            v.extend(check_image(&format!("{p}/image"), image));
        }
        (None, None) => {
            for (key, present) in text_keys {
                not_here(&mut v, key, present, "only a text input has this field");
            }
            if spec.tensor.is_none() {
                v.push(Violation::new(
                    format!("{p}/tensor"),
                    "required: the model input tensor this field fills (or declare \"text\" or \"image\")",
                ));
            }
        }
    }
    v
}

fn check_image(p: &str, image: &ImageSpec) -> Vec<Violation> {
    let mut v = Vec::new();
    if let Some([h, w]) = image.resize {
        if !(1..=MAX_IMAGE_SIDE).contains(&h) || !(1..=MAX_IMAGE_SIDE).contains(&w) {
            v.push(Violation::new(
                format!("{p}/resize"),
                format!("[{h}, {w}]: each side must be in 1..={MAX_IMAGE_SIDE}"),
            ));
        }
    }
    if !(image.scale.is_finite() && image.scale > 0.0) {
        v.push(Violation::new(
            format!("{p}/scale"),
            format!("{} must be a positive number", image.scale),
        ));
    }
    let channels = image.channels();
    for (key, values) in [("mean", &image.mean), ("std", &image.std)] {
        let Some(values) = values else { continue };
        if values.len() != 1 && values.len() != channels {
            v.push(Violation::new(
                format!("{p}/{key}"),
                format!(
                    "{} values given; give 1 (every channel) or {channels} (one per channel)",
                    values.len()
                ),
            ));
        } else if values.iter().any(|x| !x.is_finite()) || (key == "std" && values.contains(&0.0)) {
            v.push(Violation::new(
                format!("{p}/{key}"),
                if key == "std" {
                    "values must be finite and non-zero"
                } else {
                    "values must be finite"
                },
            ));
        }
    }
    v
}

/// Field checks of one output that need no model.
pub fn check_output(field: &str, spec: &OutputSpec) -> Vec<Violation> {
    let p = format!("/outputs/{}", escape(field));
    let mut v = Vec::new();
    if let Some(labels) = &spec.labels {
        if labels.is_empty() {
            v.push(Violation::new(
                format!("{p}/labels"),
                "at least one label is required",
            ));
        }
    }
    if spec.mean_pool.as_deref() == Some("") {
        v.push(Violation::new(
            format!("{p}/mean_pool"),
            "name the attention_mask tensor of a text input",
        ));
    }
    v
}

/// The tensors a text input feeds, with defaults resolved against the model:
/// `ids` defaults to `input_ids`; `attention_mask` and `type_ids` default to
/// `attention_mask` and `token_type_ids` when the model has those inputs.
pub fn text_tensors(spec: &InputSpec, signature: &ModelSignature) -> Vec<(InputSource, String)> {
    let has = |name: &str| signature.inputs.iter().any(|t| t.name == name);
    let mut out = vec![(
        InputSource::TextIds,
        spec.ids.clone().unwrap_or_else(|| DEFAULT_IDS.to_string()),
    )];
    for (source, declared, default) in [
        (
            InputSource::TextAttentionMask,
            &spec.attention_mask,
            DEFAULT_ATTENTION_MASK,
        ),
        (InputSource::TextTypeIds, &spec.type_ids, DEFAULT_TYPE_IDS),
    ] {
        match declared {
            Some(name) => out.push((source, name.clone())),
            None if has(default) => out.push((source, default.to_string())),
            None => {}
        }
    }
    out
}

/// Binds a text input's tensors: each must be an int64 or int32 `[batch, sequence]` tensor.
pub fn bind_text(
    field: &str,
    spec: &InputSpec,
    text: &TextSpec,
    signature: &ModelSignature,
    violations: &mut Vec<Violation>,
) -> Vec<InputBinding> {
    let p = format!("/inputs/{}", escape(field));
    let mut bindings = Vec::new();
    for (source, tensor) in text_tensors(spec, signature) {
        let key = match source {
            InputSource::TextIds => "ids",
            InputSource::TextAttentionMask => "attention_mask",
            _ => "type_ids",
        };
        let Some(info) = find(&signature.inputs, &tensor) else {
            violations.push(Violation::new(
                format!("{p}/{key}"),
                format!(
                    "the model has no input tensor {tensor:?} (it has {})",
                    names(&signature.inputs)
                ),
            ));
            continue;
        };
        let shape = info.shape.clone().unwrap_or_default();
        let dtype = match &info.dtype {
            ModelType::Supported(d @ (DType::Int64 | DType::Int32)) if shape.len() == 2 => *d,
            other => {
                violations.push(Violation::new(
                    format!("{p}/{key}"),
                    format!(
                        "tensor {tensor:?} is {other} {}; a text input feeds int64 or int32 [batch, sequence] tensors",
                        shape_display(&shape)
                    ),
                ));
                continue;
            }
        };
        if let Some(&seq) = shape.get(1).filter(|d| **d >= 0) {
            if text.padding != Padding::MaxLength || text.max_length as i64 != seq {
                violations.push(Violation::new(
                    format!("{p}/text"),
                    format!(
                        "tensor {tensor:?} takes exactly {seq} tokens: set \"padding\": \"max_length\" and \"max_length\": {seq}"
                    ),
                ));
            }
        }
        bindings.push(InputBinding {
            field: field.to_string(),
            tensor,
            dtype,
            shape,
            source,
        });
    }
    bindings
}

/// Binds an image input's tensor: float32 or float64, of the rank its layout implies,
/// with fixed dimensions matching the channels and the resize.
pub fn bind_image(
    field: &str,
    tensor: &str,
    image: &ImageSpec,
    signature: &ModelSignature,
    violations: &mut Vec<Violation>,
) -> Option<InputBinding> {
    let p = format!("/inputs/{}", escape(field));
    let Some(info) = find(&signature.inputs, tensor) else {
        violations.push(Violation::new(
            format!("{p}/tensor"),
            format!(
                "the model has no input tensor {tensor:?} (it has {})",
                names(&signature.inputs)
            ),
        ));
        return None;
    };
    let shape = info.shape.clone().unwrap_or_default();
    let dtype = match &info.dtype {
        ModelType::Supported(d @ (DType::Float32 | DType::Float64)) => *d,
        other => {
            violations.push(Violation::new(
                format!("{p}/tensor"),
                format!("tensor {tensor:?} is {other}; an image input fills a float32 or float64 tensor"),
            ));
            return None;
        }
    };
    let c = image.channels() as i64;
    let (h, w) = image
        .resize
        .map_or((-1, -1), |[h, w]| (i64::from(h), i64::from(w)));
    let expected: Vec<i64> = match image.layout {
        Layout::Nchw => vec![-1, c, h, w],
        Layout::Nhwc => vec![-1, h, w, c],
        Layout::Flat => vec![-1, if h < 0 { -1 } else { c * h * w }],
    };
    let fits = shape.len() == expected.len()
        && shape
            .iter()
            .zip(&expected)
            .all(|(m, e)| *m < 0 || *e < 0 || m == e);
    if !fits {
        violations.push(Violation::new(
            format!("{p}/image"),
            format!(
                "layout {} with {c} channel(s){} gives {}, which does not fit tensor {tensor:?} {}",
                image.layout.as_str(),
                image
                    .resize
                    .map_or(String::new(), |[h, w]| format!(" resized to {h}x{w}")),
                shape_display(&expected),
                shape_display(&shape)
            ),
        ));
        return None;
    }
    Some(InputBinding {
        field: field.to_string(),
        tensor: tensor.to_string(),
        dtype,
        shape,
        source: InputSource::Image,
    })
}

/// Checks an output's post-processing against its tensor and the text inputs.
///
/// Order: `mean_pool` (over axis 1, weighted by the mask) → `softmax` →
/// `normalize` (L2) → `argmax` → `labels`, each along the last axis; then `take`.
pub fn check_post(
    field: &str,
    spec: &OutputSpec,
    info: &TensorInfo,
    dtype: DType,
    masks: &[String],
    violations: &mut Vec<Violation>,
) {
    let p = format!("/outputs/{}", escape(field));
    let float = matches!(dtype, DType::Float32 | DType::Float64);
    let mut shape = info.shape.clone().unwrap_or_default();
    if let Some(mask) = &spec.mean_pool {
        if !masks.contains(mask) {
            violations.push(Violation::new(
                format!("{p}/mean_pool"),
                if masks.is_empty() {
                    format!("{mask:?} is not an attention mask: mean_pool needs a text input with an attention_mask tensor")
                } else {
                    format!("{mask:?} is not the attention_mask tensor of a text input (those are {})", quoted(masks))
                },
            ));
        }
        if !float || shape.len() != 3 {
            violations.push(Violation::new(
                format!("{p}/mean_pool"),
                format!(
                    "mean_pool takes a float [batch, sequence, hidden] tensor; {:?} is {dtype} {}",
                    info.name,
                    shape_display(&shape)
                ),
            ));
            return;
        }
        shape.remove(1);
    }
    for (key, on) in [("softmax", spec.softmax), ("normalize", spec.normalize)] {
        if on && (!float || shape.is_empty()) {
            violations.push(Violation::new(
                format!("{p}/{key}"),
                format!(
                    "{key} works along the last axis of a float tensor; {:?} is {dtype} {}",
                    info.name,
                    shape_display(&shape)
                ),
            ));
        }
    }
    if spec.argmax && (dtype == DType::Bool || shape.is_empty()) {
        violations.push(Violation::new(
            format!("{p}/argmax"),
            format!(
                "argmax works along the last axis of a numeric tensor; {:?} is {dtype} {}",
                info.name,
                shape_display(&shape)
            ),
        ));
        return;
    }
    if let Some(labels) = &spec.labels {
        if spec.argmax {
            if let Some(&classes) = shape.last().filter(|d| **d >= 0) {
                if classes as usize != labels.len() {
                    violations.push(Violation::new(
                        format!("{p}/labels"),
                        format!(
                            "{} labels given, but tensor {:?} has {classes} classes",
                            labels.len(),
                            info.name
                        ),
                    ));
                }
            }
        } else if !matches!(dtype, DType::Int32 | DType::Int64) || spec.softmax || spec.normalize {
            violations.push(Violation::new(
                format!("{p}/labels"),
                "labels name class indices: set \"argmax\": true, or use them on an integer tensor of class indices",
            ));
        }
    }
}

/// A tokenizer configured as a text input declares it, with the padding it will use.
pub struct TextTokenizer {
    /// Truncation set to `max_length`; its own padding cleared (padding is per call).
    pub tokenizer: Tokenizer,
    pub pad_id: u32,
    pub pad_type_id: u32,
    pub pad_token: String,
}

/// Loads a tokenizer.json and configures it for `text`. Used at registration
/// (422 when it fails) and by the node, so both see the same tokenizer.
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

/// The texts of a text field: a string, or an array of 1..=`MAX_BATCH_ITEMS` strings.
pub fn text_items(
    value: &Value,
    pointer: &str,
    batch: Batch,
) -> Result<Vec<String>, Vec<Violation>> {
    let items = items(value, pointer, batch, "a string")?;
    let mut texts = Vec::with_capacity(items.len());
    let mut violations = Vec::new();
    for (pointer, item) in items {
        match item {
            Value::String(s) if s.len() > MAX_TEXT_BYTES => violations.push(Violation::new(
                pointer,
                format!("text is {} bytes; the limit is {MAX_TEXT_BYTES}", s.len()),
            )),
            Value::String(s) => texts.push(s.clone()),
            other => violations.push(Violation::new(
                pointer,
                format!("expected a string, got {}", kind(other)),
            )),
        }
    }
    if violations.is_empty() {
        Ok(texts)
    } else {
        Err(violations)
    }
}

/// The images of an image field, base64-decoded: a string, or an array of them.
///
/// Standard base64, padding optional, whitespace ignored, and an optional
/// `data:image/...;base64,` prefix. The bytes are not decoded as an image here.
pub fn image_items(
    value: &Value,
    pointer: &str,
    batch: Batch,
) -> Result<Vec<Vec<u8>>, Vec<Violation>> {
    let items = items(value, pointer, batch, "a base64 string")?;
    let mut images = Vec::with_capacity(items.len());
    let mut violations = Vec::new();
    for (pointer, item) in items {
        let Value::String(s) = item else {
            violations.push(Violation::new(
                pointer,
                format!("expected a base64 string, got {}", kind(item)),
            ));
            continue;
        };
        match decode_base64(s) {
            Ok(bytes) if bytes.is_empty() => {
                violations.push(Violation::new(pointer, "the image is empty"))
            }
            Ok(bytes) => images.push(bytes),
            Err(message) => violations.push(Violation::new(pointer, message)),
        }
    }
    if violations.is_empty() {
        Ok(images)
    } else {
        Err(violations)
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    let body = match s.strip_prefix("data:") {
        Some(rest) => match rest.split_once(";base64,") {
            Some((_, data)) => data,
            None => return Err("a data URL must be ;base64, encoded".into()),
        },
        None => s,
    };
    // Decoded bytes are 3/4 of the text; refuse before allocating.
    if body.len() / 4 * 3 > MAX_IMAGE_BYTES + 3 {
        return Err(format!("the image is over {MAX_IMAGE_BYTES} bytes"));
    }
    let compact: Vec<u8> = body.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(&compact)
        .map_err(|e| format!("not valid base64: {e}"))?;
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(format!(
            "the image is {} bytes; the limit is {MAX_IMAGE_BYTES}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// How many items a text or image field may carry in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// The model's first dimension when fixed (the exact count), else `-1`.
    pub fixed: i64,
    /// Whether an array is accepted: not when an output answers for the first
    /// item only (`"take": "first"`), so that no item is silently dropped.
    pub arrays: bool,
}

/// One value, or an array of 1..=`MAX_BATCH_ITEMS` values, with their pointers.
fn items<'a>(
    value: &'a Value,
    pointer: &str,
    batch: Batch,
    expected: &str,
) -> Result<Vec<(String, &'a Value)>, Vec<Violation>> {
    let items: Vec<(String, &Value)> = match value {
        Value::Array(_) if !batch.arrays => {
            return Err(vec![Violation::new(
                pointer,
                format!("expected {expected}: this function answers for one item at a time (its outputs use \"take\": \"first\")"),
            )])
        }
        Value::Array(list) => {
            if list.is_empty() || list.len() > MAX_BATCH_ITEMS {
                return Err(vec![Violation::new(
                    pointer,
                    format!(
                        "an array of {} items; give 1..={MAX_BATCH_ITEMS}",
                        list.len()
                    ),
                )]);
            }
            list.iter()
                .enumerate()
                .map(|(i, item)| (format!("{pointer}/{i}"), item))
                .collect()
        }
        Value::String(_) => vec![(pointer.to_string(), value)],
        other => {
            let or_array = if batch.arrays {
                " (or an array of them)"
            } else {
                ""
            };
            return Err(vec![Violation::new(
                pointer,
                format!("expected {expected}{or_array}, got {}", kind(other)),
            )]);
        }
    };
    if batch.fixed >= 0 && items.len() as i64 != batch.fixed {
        return Err(vec![Violation::new(
            pointer,
            format!(
                "the model takes exactly {} item(s) per call, got {}",
                batch.fixed,
                items.len()
            ),
        )]);
    }
    Ok(items)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn find<'a>(tensors: &'a [TensorInfo], name: &str) -> Option<&'a TensorInfo> {
    tensors.iter().find(|t| t.name == name)
}

fn names(tensors: &[TensorInfo]) -> String {
    quoted(&tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>())
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Escapes a field name for a JSON pointer segment.
pub fn escape(field: &str) -> String {
    field.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{parse, Syntax, TaskDefinition};
    use crate::version::bind;
    use serde_json::json;

    fn hex(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn parse_json(inputs: Value, outputs: Value) -> Result<TaskDefinition, Vec<Violation>> {
        let body = json!({"name": "f", "model": hex('0'), "inputs": inputs, "outputs": outputs});
        parse(&serde_json::to_vec(&body).unwrap(), Syntax::Json).map_err(|e| e.violations)
    }

    fn pointers(violations: &[Violation]) -> Vec<&str> {
        violations.iter().map(|v| v.pointer.as_str()).collect()
    }

    fn info(name: &str, dtype: DType, shape: &[i64]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype: ModelType::Supported(dtype),
            shape: Some(shape.to_vec()),
        }
    }

    /// all-MiniLM-L6-v2 and the fashion-mnist MLP, as ONNX Runtime reports them.
    fn bert() -> ModelSignature {
        ModelSignature {
            inputs: vec![
                info("input_ids", DType::Int64, &[-1, -1]),
                info("attention_mask", DType::Int64, &[-1, -1]),
                info("token_type_ids", DType::Int64, &[-1, -1]),
            ],
            outputs: vec![info("last_hidden_state", DType::Float32, &[-1, -1, 384])],
        }
    }

    fn mlp() -> ModelSignature {
        ModelSignature {
            inputs: vec![info("float_input", DType::Float32, &[-1, 784])],
            outputs: vec![
                info("label", DType::Int64, &[-1]),
                info("probabilities", DType::Float32, &[-1, 10]),
            ],
        }
    }

    fn minilm_inputs() -> Value {
        json!({"text": {"text": {"tokenizer": hex('1'), "max_length": 128}}})
    }

    fn embedding() -> Value {
        json!({"embedding": {"tensor": "last_hidden_state", "mean_pool": "attention_mask", "normalize": true, "take": "first"}})
    }

    fn fashion_image() -> Value {
        json!({"image": {"image": {"decode": "png", "resize": [28, 28], "grayscale": true, "layout": "flat"}, "tensor": "float_input"}})
    }

    #[test]
    fn the_kind_of_an_input_is_read_from_its_keys() {
        let d = parse_json(
            json!({"text": {"text": {"tokenizer": hex('1')}}, "image": {"image": {}, "tensor": "x"}, "n": {"tensor": "y"}}),
            json!({"y": {"tensor": "y"}}),
        )
        .unwrap();
        let InputKind::Text(text) = d.inputs["text"].kind() else {
            panic!("not text")
        };
        assert_eq!(
            (text.max_length, text.padding, text.add_special_tokens),
            (512, Padding::None, true)
        );
        let InputKind::Image(image) = d.inputs["image"].kind() else {
            panic!("not image")
        };
        assert_eq!(
            (image.decode, image.layout, image.scale, image.grayscale),
            (ImageDecode::Any, Layout::Nchw, 255.0, false)
        );
        assert!(matches!(d.inputs["n"].kind(), InputKind::Tensor));
    }

    #[test]
    fn keys_of_another_kind_and_bad_values_are_refused_with_pointers() {
        let err = parse_json(
            json!({
                "a": {"text": {"tokenizer": "./tokenizer.json", "max_length": 0}, "tensor": "x"},
                "b": {"image": {"resize": [0, 28], "std": [0.0], "mean": [1, 2]}, "ids": "x"},
                "c": {"attention_mask": "m"},
                "d": {"text": {"tokenizer": hex('1')}, "image": {}}
            }),
            json!({"y": {"tensor": "y", "labels": []}}),
        )
        .unwrap_err();
        assert_eq!(
            pointers(&err),
            vec![
                "/inputs/a/tensor",
                "/inputs/a/text/tokenizer",
                "/inputs/a/text/max_length",
                "/inputs/b/ids",
                "/inputs/b/tensor",
                "/inputs/b/image/resize",
                "/inputs/b/image/mean",
                "/inputs/b/image/std",
                "/inputs/c/attention_mask",
                "/inputs/c/tensor",
                "/inputs/d",
                "/outputs/y/labels",
            ]
        );
        // Unknown keys inside the blocks are refused too.
        let err = parse_json(
            json!({"t": {"text": {"tokenizer": hex('1'), "maxlength": 8}}}),
            json!({"y": {"tensor": "y"}}),
        )
        .unwrap_err();
        assert_eq!(pointers(&err), vec!["/inputs/t/text/maxlength"]);
        let err = parse_json(
            json!({"t": {"image": {"layout": "chw"}, "tensor": "x"}}),
            json!({"y": {"tensor": "y"}}),
        )
        .unwrap_err();
        assert_eq!(pointers(&err), vec!["/inputs/t/image/layout"]);
    }

    #[test]
    fn text_inputs_bind_their_tensors_with_defaults() {
        let d = parse_json(minilm_inputs(), embedding()).unwrap();
        let (inputs, _) = bind(&d, &bert()).unwrap();
        let bound: Vec<(&str, InputSource)> = inputs
            .iter()
            .map(|b| (b.tensor.as_str(), b.source))
            .collect();
        assert_eq!(
            bound,
            vec![
                ("input_ids", InputSource::TextIds),
                ("attention_mask", InputSource::TextAttentionMask),
                ("token_type_ids", InputSource::TextTypeIds),
            ]
        );
        // A model without token types: the default is skipped, not required.
        let mut no_types = bert();
        no_types.inputs.pop();
        let (inputs, _) = bind(&d, &no_types).unwrap();
        assert_eq!(inputs.len(), 2);
        // Named explicitly, a missing tensor is an error.
        let d = parse_json(
            json!({"text": {"text": {"tokenizer": hex('1')}, "type_ids": "segments"}}),
            embedding(),
        )
        .unwrap();
        let err = bind(&d, &bert()).unwrap_err();
        assert_eq!(
            pointers(&err),
            vec!["/inputs/text/type_ids", "/inputs"],
            "{err:?}"
        );
    }

    #[test]
    fn a_fixed_sequence_length_needs_max_length_padding() {
        let mut fixed = bert();
        for t in &mut fixed.inputs {
            t.shape = Some(vec![1, 128]);
        }
        let d = parse_json(minilm_inputs(), embedding()).unwrap();
        let err = bind(&d, &fixed).unwrap_err();
        assert_eq!(err[0].pointer, "/inputs/text/text");
        assert!(err[0].message.contains("\"max_length\": 128"), "{err:?}");
        let d = parse_json(
            json!({"text": {"text": {"tokenizer": hex('1'), "max_length": 128, "padding": "max_length"}}}),
            embedding(),
        )
        .unwrap();
        assert!(bind(&d, &fixed).is_ok());
    }

    #[test]
    fn image_inputs_must_fit_the_tensor() {
        let labels = json!(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]);
        let outputs = json!({"label": {"tensor": "probabilities", "argmax": true, "labels": labels, "take": "first"}});
        let d = parse_json(fashion_image(), outputs.clone()).unwrap();
        let (inputs, _) = bind(&d, &mlp()).unwrap();
        assert_eq!(inputs[0].source, InputSource::Image);
        assert_eq!(inputs[0].shape, vec![-1, 784]);
        // 3 channels * 28 * 28 is not 784; nchw is rank 4.
        for image in [
            json!({"resize": [28, 28], "layout": "flat"}),
            json!({"resize": [28, 28], "grayscale": true}),
        ] {
            let d = parse_json(
                json!({"image": {"image": image, "tensor": "float_input"}}),
                outputs.clone(),
            )
            .unwrap();
            let err = bind(&d, &mlp()).unwrap_err();
            assert_eq!(pointers(&err), vec!["/inputs/image/image"], "{err:?}");
        }
    }

    #[test]
    fn post_processing_is_checked_against_the_model() {
        // labels must match the class dimension
        let d = parse_json(
            fashion_image(),
            json!({"label": {"tensor": "probabilities", "argmax": true, "labels": ["a", "b"]}}),
        )
        .unwrap();
        let err = bind(&d, &mlp()).unwrap_err();
        assert_eq!(pointers(&err), vec!["/outputs/label/labels"]);
        assert!(err[0].message.contains("2 labels given"), "{err:?}");
        // labels on an integer tensor of class indices need no argmax
        let d = parse_json(
            fashion_image(),
            json!({"label": {"tensor": "label", "labels": ["a"], "take": "first"}}),
        )
        .unwrap();
        assert!(bind(&d, &mlp()).is_ok());
        // but on floats they do; softmax of an int tensor and mean_pool without a text input fail
        let d = parse_json(
            fashion_image(),
            json!({
                "p": {"tensor": "probabilities", "labels": ["a"]},
                "q": {"tensor": "label", "softmax": true},
                "r": {"tensor": "probabilities", "mean_pool": "attention_mask"}
            }),
        )
        .unwrap();
        let err = bind(&d, &mlp()).unwrap_err();
        assert_eq!(
            pointers(&err),
            vec![
                "/outputs/p/labels",
                "/outputs/q/softmax",
                "/outputs/r/mean_pool",
                "/outputs/r/mean_pool"
            ],
            "{err:?}"
        );
        // mean_pool must name a text input's attention mask
        let d = parse_json(
            minilm_inputs(),
            json!({"e": {"tensor": "last_hidden_state", "mean_pool": "input_ids"}}),
        )
        .unwrap();
        let err = bind(&d, &bert()).unwrap_err();
        assert_eq!(pointers(&err), vec!["/outputs/e/mean_pool"]);
        assert!(err[0].message.contains("\"attention_mask\""), "{err:?}");
    }

    const ANY: Batch = Batch {
        fixed: -1,
        arrays: true,
    };

    #[test]
    fn text_fields_are_strings_within_limits() {
        assert_eq!(text_items(&json!("hi"), "/t", ANY).unwrap(), vec!["hi"]);
        assert_eq!(text_items(&json!(["a", "b"]), "/t", ANY).unwrap().len(), 2);
        let err = text_items(&json!(5), "/t", ANY).unwrap_err();
        assert_eq!(
            err[0].message,
            "expected a string (or an array of them), got a number"
        );
        let err = text_items(&json!(["a", 5]), "/t", ANY).unwrap_err();
        assert_eq!(pointers(&err), vec!["/t/1"]);
        let err = text_items(&json!([]), "/t", ANY).unwrap_err();
        assert!(err[0].message.contains("0 items"), "{err:?}");
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        let err = text_items(&json!(long), "/t", ANY).unwrap_err();
        assert!(err[0].message.contains("the limit is 65536"), "{err:?}");
        let one = Batch {
            fixed: -1,
            arrays: false,
        };
        let err = text_items(&json!(["a"]), "/t", one).unwrap_err();
        assert!(err[0].message.contains("one item at a time"), "{err:?}");
        let two = Batch {
            fixed: 2,
            arrays: true,
        };
        assert!(text_items(&json!("a"), "/t", two).is_err());
    }

    #[test]
    fn image_fields_are_base64_in_its_usual_spellings() {
        let decoded = |s: &str| image_items(&json!(s), "/i", ANY).map(|mut v| v.remove(0));
        assert_eq!(decoded("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decoded("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decoded("aGVs\nbG8=\n").unwrap(), b"hello");
        assert_eq!(decoded("data:image/png;base64,aGVsbG8=").unwrap(), b"hello");
        assert!(decoded("data:image/png,hello").is_err());
        let err = decoded("not base64!").unwrap_err();
        assert_eq!(pointers(&err), vec!["/i"]);
        assert!(err[0].message.starts_with("not valid base64"), "{err:?}");
        assert_eq!(decoded("").unwrap_err()[0].message, "the image is empty");
        let huge = "A".repeat((MAX_IMAGE_BYTES / 3 + 8) * 4);
        assert!(decoded(&huge).unwrap_err()[0].message.contains("over"));
    }
}
