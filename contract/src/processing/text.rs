//! Text inputs: strings that a tokenizer.json turns into token tensors.
//!
//! The spelling in a definition, its checks at registration (with and
//! without the model), and the router's cheap check of a request's texts
//! (strings present, sizes capped). The node tokenizes
//! (`runtime/src/prepost/text.rs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{find, items, kind, tensor_names, ItemLimits};
use crate::limits::{MAX_TEXT_BYTES, MAX_TOKENS};
use crate::names::{escape, valid_digest};
use crate::signature::{InputBinding, InputSource, ModelSignature, ModelType};
use crate::tensor::{shape_display, DType, Violation};

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

fn default_max_length() -> usize {
    512
}

fn default_true() -> bool {
    true
}

/// The tensor names a text input declares beside its `text` (`ids`,
/// `attention_mask`, `type_ids`); absent names take the defaults above.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextTensors<'a> {
    pub ids: Option<&'a str>,
    pub attention_mask: Option<&'a str>,
    pub type_ids: Option<&'a str>,
}

/// Field checks of a text input that need no model; `p` points at the input.
pub fn check(p: &str, text: &TextSpec, tensors: TextTensors<'_>) -> Vec<Violation> {
    let mut v = Vec::new();
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
        ("ids", tensors.ids),
        ("attention_mask", tensors.attention_mask),
        ("type_ids", tensors.type_ids),
    ] {
        if name == Some("") {
            v.push(Violation::new(
                format!("{p}/{key}"),
                "a tensor name must not be empty",
            ));
        }
    }
    v
}

/// The tensors a text input feeds, with defaults resolved against the model:
/// `ids` defaults to `input_ids`; `attention_mask` and `type_ids` default to
/// `attention_mask` and `token_type_ids` when the model has those inputs.
pub fn tensors(names: TextTensors<'_>, signature: &ModelSignature) -> Vec<(InputSource, String)> {
    let has = |name: &str| signature.inputs.iter().any(|t| t.name == name);
    let mut out = vec![(
        InputSource::TextIds,
        names.ids.unwrap_or(DEFAULT_IDS).to_string(),
    )];
    for (source, declared, default) in [
        (
            InputSource::TextAttentionMask,
            names.attention_mask,
            DEFAULT_ATTENTION_MASK,
        ),
        (InputSource::TextTypeIds, names.type_ids, DEFAULT_TYPE_IDS),
    ] {
        match declared {
            Some(name) => out.push((source, name.to_string())),
            None if has(default) => out.push((source, default.to_string())),
            None => {}
        }
    }
    out
}

/// Binds a text input's tensors: each must be an int64 or int32 `[batch, sequence]` tensor.
pub fn bind(
    field: &str,
    names: TextTensors<'_>,
    text: &TextSpec,
    signature: &ModelSignature,
    violations: &mut Vec<Violation>,
) -> Vec<InputBinding> {
    let p = format!("/inputs/{}", escape(field));
    let mut bindings = Vec::new();
    for (source, tensor) in tensors(names, signature) {
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
                    tensor_names(&signature.inputs)
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

/// The texts of a text field: a string, or an array of 1..=`MAX_BATCH_ITEMS` strings.
pub fn texts(
    value: &Value,
    pointer: &str,
    limits: ItemLimits,
) -> Result<Vec<String>, Vec<Violation>> {
    let items = items(value, pointer, limits, "a string")?;
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
