//! Text inputs: the function's tokenizer configured as the input declares it
//! (truncation to `max_length`, the padding token), and tokenizing a field's
//! texts into its tensors (ids, attention mask, type ids) with padding `none`,
//! `longest` or `max_length`.
//!
//! Uses only `prepost::common`.

use contract::definition::{Padding, TextSpec};
use contract::protocol::TensorInputs;
use contract::tensor::{DType, Tensor, TensorData};
use contract::ApiError;
use contract::{InputBinding, InputSource};
use tokenizers::{PaddingDirection, PaddingParams, PostProcessor, Tokenizer, TruncationParams};

use super::common::{internal, refuse};

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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use contract::ErrorCode;
    use serde_json::{json, Value};

    use super::*;

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
}
