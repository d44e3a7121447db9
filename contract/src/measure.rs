//! Measuring a validated call for its cost (`crate::cost`): the body's
//! bytes, the input tensors' values, an estimate of the text inputs' tokens,
//! the images' pixels from their headers.
//!
//! Layer: names `cost`, `definition` and `protocol`.

use crate::cost::{image_size, CostMeasure};
use crate::definition::TaskDefinition;
use crate::protocol::{ImageField, InvokeInput, TensorInputs, TextField};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::tests::{jpeg, png};

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
        assert!(crate::definition::parse(
            serde_json::to_vec(&d).unwrap().as_slice(),
            crate::definition::Syntax::Json
        )
        .is_ok());
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
}
