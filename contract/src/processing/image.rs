//! Image inputs: base64 PNG or JPEG, decoded and scaled into one tensor.
//!
//! The spelling in a definition, its checks at registration (with and
//! without the model), and the router's cheap check of a request's images
//! (base64 decodable, bytes capped). The node decodes
//! (`runtime/src/prepost/image.rs`).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{find, items, kind, tensor_names, ItemLimits};
use crate::limits::{
    DEFAULT_IMAGE_DECODED_BYTES, IMAGE_DECODED_PER_RESIZED, MAX_IMAGE_BYTES,
    MAX_IMAGE_DECODE_BYTES, MAX_IMAGE_SIDE,
};
use crate::names::escape;
use crate::signature::{InputBinding, InputSource, ModelSignature, ModelType};
use crate::tensor::{shape_display, DType, Violation};

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
    /// Most bytes one image may decode to (width × height × channels × bytes
    /// per sample, from its header), 1..=[`MAX_IMAGE_DECODE_BYTES`]; absent is
    /// derived from `resize` (see [`ImageSpec::decoded_bytes_cap`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_decoded_bytes: Option<u64>,
}

impl ImageSpec {
    pub fn channels(&self) -> usize {
        if self.grayscale {
            1
        } else {
            3
        }
    }

    /// The most bytes one image of this input may decode to, checked on the
    /// node against the image's header before any pixel is decoded:
    /// `max_decoded_bytes` when declared; else, with `resize: [h, w]`,
    /// [`IMAGE_DECODED_PER_RESIZED`] × `h × w × 4` (the resized image in RGBA
    /// 8-bit) within [`DEFAULT_IMAGE_DECODED_BYTES`]..=[`MAX_IMAGE_DECODE_BYTES`];
    /// else [`DEFAULT_IMAGE_DECODED_BYTES`].
    pub fn decoded_bytes_cap(&self) -> u64 {
        match (self.max_decoded_bytes, self.resize) {
            (Some(cap), _) => cap.min(MAX_IMAGE_DECODE_BYTES),
            (None, Some([h, w])) => (u64::from(h) * u64::from(w) * 4)
                .saturating_mul(IMAGE_DECODED_PER_RESIZED)
                .clamp(DEFAULT_IMAGE_DECODED_BYTES, MAX_IMAGE_DECODE_BYTES),
            (None, None) => DEFAULT_IMAGE_DECODED_BYTES,
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

fn default_scale() -> f64 {
    255.0
}

/// Field checks of an image input that need no model; `p` points at its `image`.
pub fn check(p: &str, image: &ImageSpec) -> Vec<Violation> {
    let mut v = Vec::new();
    if let Some([h, w]) = image.resize {
        if !(1..=MAX_IMAGE_SIDE).contains(&h) || !(1..=MAX_IMAGE_SIDE).contains(&w) {
            v.push(Violation::new(
                format!("{p}/resize"),
                format!("[{h}, {w}]: each side must be in 1..={MAX_IMAGE_SIDE}"),
            ));
        }
    }
    if let Some(cap) = image.max_decoded_bytes {
        if !(1..=MAX_IMAGE_DECODE_BYTES).contains(&cap) {
            v.push(Violation::new(
                format!("{p}/max_decoded_bytes"),
                format!("{cap}: must be in 1..={MAX_IMAGE_DECODE_BYTES}"),
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

/// Binds an image input's tensor: float32 or float64, of the rank its layout implies,
/// with fixed dimensions matching the channels and the resize.
pub fn bind(
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
                tensor_names(&signature.inputs)
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

/// The images of an image field, base64-decoded: a string, or an array of them.
///
/// Standard base64, padding optional, whitespace ignored, and an optional
/// `data:image/...;base64,` prefix. The bytes are not decoded as an image here.
pub fn images(
    value: &Value,
    pointer: &str,
    limits: ItemLimits,
) -> Result<Vec<Vec<u8>>, Vec<Violation>> {
    let items = items(value, pointer, limits, "a base64 string")?;
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
