//! What the per-kind modules share: one value or an array of them, and
//! naming the model's tensors in messages.

use serde_json::Value;

use crate::limits::MAX_BATCH_ITEMS;
use crate::signature::TensorInfo;
use crate::tensor::Violation;

/// How many items a text or image field may carry in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemLimits {
    /// The model's first dimension when fixed (the exact count), else `-1`.
    pub fixed: i64,
    /// Whether an array is accepted: not when an output answers for the first
    /// item only (`"take": "first"`), so that no item is silently dropped.
    pub arrays: bool,
}

/// One value, or an array of 1..=`MAX_BATCH_ITEMS` values, with their pointers.
pub(super) fn items<'a>(
    value: &'a Value,
    pointer: &str,
    limits: ItemLimits,
    expected: &str,
) -> Result<Vec<(String, &'a Value)>, Vec<Violation>> {
    let items: Vec<(String, &Value)> = match value {
        Value::Array(_) if !limits.arrays => {
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
            let or_array = if limits.arrays {
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
    if limits.fixed >= 0 && items.len() as i64 != limits.fixed {
        return Err(vec![Violation::new(
            pointer,
            format!(
                "the model takes exactly {} item(s) per call, got {}",
                limits.fixed,
                items.len()
            ),
        )]);
    }
    Ok(items)
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn find<'a>(tensors: &'a [TensorInfo], name: &str) -> Option<&'a TensorInfo> {
    tensors.iter().find(|t| t.name == name)
}

pub(super) fn tensor_names(tensors: &[TensorInfo]) -> String {
    quoted(&tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>())
}

pub(super) fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
