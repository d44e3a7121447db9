//! Output post-processing: how an output tensor is reduced before it is
//! returned (`mean_pool`, `softmax`, `normalize`, `argmax`, `labels`), and
//! its checks at registration. The node applies it (`runtime/src/prepost/post.rs`).

use super::common::quoted;
use crate::names::escape;
use crate::signature::TensorInfo;
use crate::tensor::{shape_display, DType, Violation};

/// An output's declared post-processing, as the definition spells it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Post<'a> {
    /// The attention mask tensor to mean-pool over (axis 1).
    pub mean_pool: Option<&'a str>,
    pub softmax: bool,
    pub normalize: bool,
    pub argmax: bool,
    pub labels: Option<&'a [String]>,
}

impl Post<'_> {
    /// Whether any post-processing is declared.
    pub fn any(&self) -> bool {
        self.mean_pool.is_some()
            || self.softmax
            || self.normalize
            || self.argmax
            || self.labels.is_some()
    }
}

/// Field checks of one output that need no model.
pub fn check(field: &str, spec: Post<'_>) -> Vec<Violation> {
    let p = format!("/outputs/{}", escape(field));
    let mut v = Vec::new();
    if let Some(labels) = spec.labels {
        if labels.is_empty() {
            v.push(Violation::new(
                format!("{p}/labels"),
                "at least one label is required",
            ));
        }
    }
    if spec.mean_pool == Some("") {
        v.push(Violation::new(
            format!("{p}/mean_pool"),
            "name the attention_mask tensor of a text input",
        ));
    }
    v
}

/// Checks an output's post-processing against its tensor and the text inputs.
///
/// Order: `mean_pool` (over axis 1, weighted by the mask) → `softmax` →
/// `normalize` (L2) → `argmax` → `labels`, each along the last axis; then `take`.
pub fn check_against(
    field: &str,
    spec: Post<'_>,
    info: &TensorInfo,
    dtype: DType,
    masks: &[String],
    violations: &mut Vec<Violation>,
) {
    let p = format!("/outputs/{}", escape(field));
    let float = matches!(dtype, DType::Float16 | DType::Float32 | DType::Float64);
    let mut shape = info.shape.clone().unwrap_or_default();
    if let Some(mask) = spec.mean_pool {
        if !masks.iter().any(|m| m == mask) {
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
    if spec.argmax && (matches!(dtype, DType::Bool | DType::String) || shape.is_empty()) {
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
    if let Some(labels) = spec.labels {
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
