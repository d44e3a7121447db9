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
//! The measuring itself is `crate::measure`. Independent layer: names only
//! the tensor types.

use serde::{Deserialize, Serialize};

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

/// Registration checks of a definition's `cost` (at `pointer`): `unit` in
/// 1..=[`MAX_UNIT`]; `tokens` needs a text input and `pixels` an image input
/// (otherwise every call would cost 1, which is never what was meant).
pub fn check(cost: &CostPolicy, has_text: bool, has_image: bool, pointer: &str) -> Vec<Violation> {
    let mut v = Vec::new();
    if !(1..=MAX_UNIT).contains(&cost.unit) {
        v.push(Violation::new(
            format!("{pointer}/unit"),
            format!("must be between 1 and {MAX_UNIT}"),
        ));
    }
    let missing = match cost.per {
        CostMeasure::Tokens if !has_text => Some("a text input"),
        CostMeasure::Pixels if !has_image => Some("an image input"),
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
        // A zero side is no image: unreadable, so it counts as the largest.
        return (w > 0 && h > 0).then_some((w, h));
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
            return (w > 0 && h > 0).then_some((u32::from(w), u32::from(h)));
        }
        at += length;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn png(w: u32, h: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&[8, 2, 0, 0, 0]);
        b
    }

    pub(crate) fn jpeg(w: u16, h: u16) -> Vec<u8> {
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
        assert_eq!(image_size(&png(0, 480)), None);
        assert_eq!(image_size(&jpeg(320, 0)), None);
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
