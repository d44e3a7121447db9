//! Cost weights: what one call weighs, so that a heavy call consumes more of
//! a client's rate limit and quota, of a node's queue estimate and of the
//! task backlog than a light one.
//!
//! A definition may declare `"cost": {"per": <measure>, "unit": N}`; a call
//! then costs `ceil(measure / N)`, at least 1 and at most [`MAX_COST`].
//! Without `cost` every call costs 1. The measure is read at the edge from
//! the validated input, never from anything the client claims:
//!
//! - `input_bytes`: the request body's length in bytes;
//! - `elements`: the values of the input tensors (one per text or image);
//! - `tokens`: an estimate of the text inputs' tokens, one per 4 bytes of
//!   text plus the special tokens, at most the input's `max_length` per text
//!   (the router does not run the tokenizer; the estimate never exceeds
//!   what the model will see);
//! - `pixels`: width × height of each image, read from its PNG or JPEG
//!   header (an image whose header cannot be read counts as the largest the
//!   input accepts: its decoded-bytes cap over 4 bytes per pixel).
//!
//! Independent layer: names only the definition and tensor types.

use serde::{Deserialize, Serialize};

use crate::definition::TaskDefinition;
use crate::protocol::{ImageField, InvokeInput, TensorInputs, TextField};
use crate::tensor::Violation;

/// The most one call can cost.
pub const MAX_COST: u64 = 1_000_000;

/// The largest `unit` a definition may declare.
pub const MAX_UNIT: u64 = 1 << 40;

/// What a call's cost is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostMeasure {
    InputBytes,
    Elements,
    Tokens,
    Pixels,
}

impl CostMeasure {
    pub fn as_str(self) -> &'static str {
        match self {
            CostMeasure::InputBytes => "input_bytes",
            CostMeasure::Elements => "elements",
            CostMeasure::Tokens => "tokens",
            CostMeasure::Pixels => "pixels",
        }
    }
}

/// `"cost": {"per": "tokens", "unit": 128}`: one cost unit per 128 tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostPolicy {
    pub per: CostMeasure,
    pub unit: u64,
}

impl CostPolicy {
    /// The cost of a call that measured `amount`.
    pub fn cost_of(&self, amount: u64) -> u64 {
        amount.div_ceil(self.unit.max(1)).clamp(1, MAX_COST)
    }
}

/// Registration checks: `unit` in 1..=[`MAX_UNIT`]; `tokens` needs a text
/// input and `pixels` an image input (otherwise every call would cost 1,
/// which is never what was meant).
pub fn check(d: &TaskDefinition, pointer: &str) -> Vec<Violation> {
    let mut v = Vec::new();
    let Some(cost) = &d.cost else { return v };
    if !(1..=MAX_UNIT).contains(&cost.unit) {
        v.push(Violation::new(
            format!("{pointer}/unit"),
            format!("must be between 1 and {MAX_UNIT}"),
        ));
    }
    let has = |text: bool| {
        d.inputs.values().any(|spec| {
            if text {
                spec.text.is_some()
            } else {
                spec.image.is_some()
            }
        })
    };
    let missing = match cost.per {
        CostMeasure::Tokens if !has(true) => Some("a text input"),
        CostMeasure::Pixels if !has(false) => Some("an image input"),
        _ => None,
    };
    if let Some(missing) = missing {
        v.push(Violation::new(
            format!("{pointer}/per"),
            format!(
                "\"{}\" needs {missing}; this function has none",
                cost.per.as_str()
            ),
        ));
    }
    v
}

/// What a validated call is measured on.
pub enum Measured<'a> {
    /// A JSON invoke body, mapped onto the definition's inputs.
    Invoke(&'a InvokeInput),
    /// An Open Inference Protocol request (REST or gRPC): its tensors.
    Tensors(&'a TensorInputs),
}

/// The cost of one validated call of a function defined by `d`, whose body
/// was `body_bytes` long.
pub fn call_cost(d: &TaskDefinition, body_bytes: usize, input: Measured<'_>) -> u64 {
    let Some(policy) = &d.cost else { return 1 };
    let (tensors, texts, images): (&TensorInputs, &[TextField], &[ImageField]) = match input {
        Measured::Invoke(input) => (input.tensors(), input.texts(), input.images()),
        Measured::Tensors(tensors) => (tensors, &[], &[]),
    };
    let amount = match policy.per {
        CostMeasure::InputBytes => body_bytes as u64,
        CostMeasure::Elements => {
            let values: u64 = tensors
                .iter()
                .map(|(_, t)| t.shape.iter().map(|&n| n as u64).product::<u64>())
                .sum();
            let items: usize = texts.iter().map(|f| f.texts.len()).sum::<usize>()
                + images.iter().map(|f| f.images.len()).sum::<usize>();
            values.saturating_add(items as u64)
        }
        CostMeasure::Tokens => texts.iter().map(|f| text_tokens(d, f)).sum(),
        CostMeasure::Pixels => images.iter().map(|f| image_pixels(d, f)).sum(),
    };
    policy.cost_of(amount)
}

/// Estimated tokens of one text field: 4 bytes a token, plus 2 special
/// tokens, at most `max_length` per text.
fn text_tokens(d: &TaskDefinition, field: &TextField) -> u64 {
    let spec = d.inputs.get(&field.field).and_then(|s| s.text.as_ref());
    let max_length = spec.map_or(u64::MAX, |s| s.max_length as u64);
    let special = spec.map_or(0, |s| if s.add_special_tokens { 2 } else { 0 });
    field
        .texts
        .iter()
        .map(|t| {
            (t.len() as u64)
                .div_ceil(4)
                .saturating_add(special)
                .min(max_length)
        })
        .sum()
}

/// Pixels of one image field, from each image's header.
fn image_pixels(d: &TaskDefinition, field: &ImageField) -> u64 {
    let largest = d
        .inputs
        .get(&field.field)
        .and_then(|s| s.image.as_ref())
        .map_or(u64::MAX / 1024, |s| s.decoded_bytes_cap() / 4);
    field
        .images
        .iter()
        .map(|bytes| match image_size(bytes) {
            Some((w, h)) => (u64::from(w) * u64::from(h)).min(largest),
            None => largest,
        })
        .fold(0u64, u64::saturating_add)
}

/// Width and height from a PNG's IHDR chunk or a JPEG's first
/// start-of-frame segment; `None` when neither can be read.
pub fn image_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.starts_with(PNG) {
        // Signature, then the IHDR chunk: length (4), "IHDR", width, height.
        if bytes.get(12..16)? != b"IHDR" {
            return None;
        }
        let w = u32::from_be_bytes(bytes.get(16..20)?.try_into().ok()?);
        let h = u32::from_be_bytes(bytes.get(20..24)?.try_into().ok()?);
        return Some((w, h));
    }
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut at = 2usize;
    loop {
        // Fill bytes (0xFF) may precede a marker.
        while *bytes.get(at)? == 0xFF && *bytes.get(at + 1)? == 0xFF {
            at += 1;
        }
        if *bytes.get(at)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        at += 2;
        match marker {
            // Markers without a length: TEM, RSTn.
            0x01 | 0xD0..=0xD7 => continue,
            // End of image or start of scan before any frame header.
            0xD9 | 0xDA => return None,
            _ => {}
        }
        let length = usize::from(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
        if length < 2 {
            return None;
        }
        // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            // length (2), precision (1), height (2), width (2).
            let h = u16::from_be_bytes(bytes.get(at + 3..at + 5)?.try_into().ok()?);
            let w = u16::from_be_bytes(bytes.get(at + 5..at + 7)?.try_into().ok()?);
            return Some((u32::from(w), u32::from(h)));
        }
        at += length;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&[8, 2, 0, 0, 0]);
        b
    }

    fn jpeg(w: u16, h: u16) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8];
        // An APP0 segment to skip, with fill bytes before the next marker.
        b.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x06, b'J', b'F', b'I', b'F']);
        b.extend_from_slice(&[0xFF, 0xFF, 0xC2, 0x00, 0x11, 8]);
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&[3; 10]);
        b
    }

    #[test]
    fn image_sizes_come_from_png_and_jpeg_headers() {
        assert_eq!(image_size(&png(640, 480)), Some((640, 480)));
        assert_eq!(image_size(&jpeg(320, 200)), Some((320, 200)));
        assert_eq!(image_size(&png(640, 480)[..20]), None);
        assert_eq!(image_size(&jpeg(320, 200)[..14]), None);
        assert_eq!(image_size(b"GIF89a"), None);
        assert_eq!(image_size(&[0xFF, 0xD8, 0xFF, 0xD9]), None);
        // A segment length below 2 would not advance: refused, not looped on.
        assert_eq!(image_size(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]), None);
    }

    #[test]
    fn a_cost_is_the_measure_over_the_unit_rounded_up_and_bounded() {
        let p = CostPolicy {
            per: CostMeasure::InputBytes,
            unit: 1000,
        };
        assert_eq!(p.cost_of(0), 1);
        assert_eq!(p.cost_of(1000), 1);
        assert_eq!(p.cost_of(1001), 2);
        assert_eq!(p.cost_of(u64::MAX), MAX_COST);
    }

    fn definition(inputs: &str, cost: &str) -> TaskDefinition {
        let body = format!(
            r#"{{"name": "f", "model": "sha256:{}", "inputs": {inputs}, "outputs": {{"y": {{"tensor": "y"}}}}, "cost": {cost}}}"#,
            "0".repeat(64)
        );
        crate::definition::parse(body.as_bytes(), crate::definition::Syntax::Json).unwrap()
    }

    #[test]
    fn tokens_are_estimated_per_text_within_max_length() {
        let tokenizer = format!("sha256:{}", "1".repeat(64));
        let d = definition(
            &format!(r#"{{"text": {{"text": {{"tokenizer": "{tokenizer}", "max_length": 16}}}}}}"#),
            r#"{"per": "tokens", "unit": 4}"#,
        );
        let field = TextField {
            field: "text".into(),
            // 8 bytes: 2 tokens + 2 special; 400 bytes: capped at 16.
            texts: vec!["abcdefgh".into(), "x".repeat(400)],
        };
        assert_eq!(text_tokens(&d, &field), 4 + 16);
        assert_eq!(d.cost.as_ref().unwrap().cost_of(20), 5);
    }

    #[test]
    fn pixels_come_from_each_images_header_and_unreadable_ones_count_as_the_largest() {
        let d = definition(
            r#"{"image": {"tensor": "x", "image": {"decode": "png", "resize": [28, 28]}}}"#,
            r#"{"per": "pixels", "unit": 1024}"#,
        );
        let spec = d.inputs["image"].image.clone().unwrap();
        let field = |images| ImageField {
            field: "image".into(),
            images,
        };
        assert_eq!(image_pixels(&d, &field(vec![png(64, 32)])), 2048);
        assert_eq!(
            image_pixels(&d, &field(vec![png(64, 32), jpeg(10, 10)])),
            2148
        );
        assert_eq!(
            image_pixels(&d, &field(vec![b"not an image".to_vec()])),
            spec.decoded_bytes_cap() / 4
        );
    }

    #[test]
    fn registration_needs_what_the_measure_counts() {
        let tensor = r#"{"x": {"tensor": "x"}}"#;
        let d = definition(tensor, r#"{"per": "elements", "unit": 1}"#);
        assert!(check(&d, "/cost").is_empty());
        for (cost, pointer) in [
            (r#"{"per": "tokens", "unit": 1}"#, "/cost/per"),
            (r#"{"per": "pixels", "unit": 1}"#, "/cost/per"),
            (r#"{"per": "input_bytes", "unit": 0}"#, "/cost/unit"),
        ] {
            let body = format!(
                r#"{{"name": "f", "model": "sha256:{}", "inputs": {tensor}, "outputs": {{"y": {{"tensor": "y"}}}}, "cost": {cost}}}"#,
                "0".repeat(64)
            );
            let err = crate::definition::parse(body.as_bytes(), crate::definition::Syntax::Json)
                .unwrap_err();
            assert_eq!(err.violations[0].pointer, pointer, "{cost}");
        }
    }

    proptest::proptest! {
        #[test]
        fn image_size_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut jpeg = vec![0xFF, 0xD8];
            jpeg.extend_from_slice(&bytes);
            let _ = image_size(&jpeg);
            let _ = image_size(&bytes);
        }
    }
}
