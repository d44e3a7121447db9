//! Mapping between JSON values and typed tensors, as a task definition declares them.
//!
//! The router uses this to refuse input that cannot fill the declared tensors
//! (422 before any node is touched); the runtime uses the same code to build the
//! tensors it hands to ONNX Runtime, so both always agree.

use serde::Serialize;
use serde_json::Value;

use crate::limits::MAX_TENSOR_ELEMENTS;

mod binary;
mod data;

pub use binary::tensor_from_raw;
use data::kind;
pub use data::{DType, Element, TensorData, F16};

/// A tensor: its shape and its flat, typed contents.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// Nested JSON arrays following the shape (a scalar for rank 0).
    pub fn to_json(&self) -> Value {
        nest(&self.shape, &self.data, &mut 0)
    }

    /// The sub-tensor at index 0 of the first dimension, as JSON (`"take": "first"`).
    pub fn first_json(&self) -> Option<Value> {
        match self.shape.split_first() {
            None => Some(self.to_json()),
            Some((0, _)) => None,
            Some((_, rest)) => Some(nest(rest, &self.data, &mut 0)),
        }
    }
}

fn nest(shape: &[usize], data: &TensorData, next: &mut usize) -> Value {
    match shape.split_first() {
        None => {
            let v = data.element_json(*next);
            *next += 1;
            v
        }
        Some((&n, rest)) => Value::Array((0..n).map(|_| nest(rest, data, next)).collect()),
    }
}

/// One reason a value does not fit, located by a JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub pointer: String,
    pub message: String,
}

impl Violation {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// At most this many violations are reported for one tensor.
const MAX_VIOLATIONS: usize = 16;

/// Renders a declared shape such as `[-1, 64]` as `[N, 64]` for messages.
pub fn shape_display(declared: &[i64]) -> String {
    let dims: Vec<String> = declared
        .iter()
        .map(|d| {
            if *d < 0 {
                "N".to_string()
            } else {
                d.to_string()
            }
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

/// Whether a concrete shape fits a declared one (`-1` is a dynamic dimension).
pub fn shape_fits(declared: &[i64], actual: &[usize]) -> bool {
    declared.len() == actual.len()
        && declared
            .iter()
            .zip(actual)
            .all(|(d, a)| *d < 0 || *d as usize == *a)
}

/// Builds a tensor of `dtype` and `declared` shape from a JSON value.
///
/// The value may be nested arrays of the declared rank, one flat array that
/// fills the declared shape in row-major order (at most one dynamic dimension,
/// inferred from the length), or a single scalar when the shape holds one element.
pub fn tensor_from_json(
    value: &Value,
    dtype: DType,
    declared: &[i64],
    pointer: &str,
) -> Result<Tensor, Vec<Violation>> {
    let nested = nested_shape(value);
    let data = collect_leaves(value, dtype, &nested, pointer)?;
    let shape = if nested.len() == declared.len() {
        if !shape_fits(declared, &nested) {
            return Err(vec![Violation::new(
                pointer,
                format!(
                    "shape {:?} does not fit the declared shape {}",
                    nested,
                    shape_display(declared)
                ),
            )]);
        }
        nested
    } else if nested.len() <= 1 {
        fill_shape(declared, data.len()).map_err(|m| vec![Violation::new(pointer, m)])?
    } else {
        return Err(vec![Violation::new(
            pointer,
            format!(
                "nested arrays of rank {} do not fit the declared shape {}",
                nested.len(),
                shape_display(declared)
            ),
        )]);
    };
    Ok(Tensor { shape, data })
}

/// An OIP request's explicit shape, checked against the declared one.
pub(crate) fn checked_shape(
    shape: &[i64],
    declared: &[i64],
    pointer: &str,
) -> Result<Vec<usize>, Vec<Violation>> {
    let Some(shape) = shape
        .iter()
        .map(|d| usize::try_from(*d).ok())
        .collect::<Option<Vec<usize>>>()
    else {
        return Err(vec![Violation::new(
            format!("{pointer}/shape"),
            "dimensions must be non-negative",
        )]);
    };
    if !shape_fits(declared, &shape) {
        return Err(vec![Violation::new(
            format!("{pointer}/shape"),
            format!(
                "shape {:?} does not fit the model's shape {}",
                shape,
                shape_display(declared)
            ),
        )]);
    }
    Ok(shape)
}

/// Builds a tensor from an explicit shape and flat (or nested) data, as the OIP v2
/// infer request sends it, checked against the declared shape.
pub fn tensor_from_parts(
    shape: &[i64],
    data: &Value,
    dtype: DType,
    declared: &[i64],
    pointer: &str,
) -> Result<Tensor, Vec<Violation>> {
    let shape = checked_shape(shape, declared, pointer)?;
    let nested = nested_shape(data);
    let data = collect_leaves(data, dtype, &nested, &format!("{pointer}/data"))?;
    let expected = shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d));
    if expected != Some(data.len()) {
        let expected = expected.map_or_else(|| "too many".to_string(), |e| e.to_string());
        return Err(vec![Violation::new(
            format!("{pointer}/data"),
            format!(
                "shape {:?} needs {expected} elements, got {}",
                shape,
                data.len()
            ),
        )]);
    }
    Ok(Tensor { shape, data })
}

fn fill_shape(declared: &[i64], n: usize) -> Result<Vec<usize>, String> {
    let fixed: usize = declared
        .iter()
        .filter(|d| **d >= 0)
        .map(|d| *d as usize)
        .product();
    let dynamic = declared.iter().filter(|d| **d < 0).count();
    let fits = match dynamic {
        0 => n == fixed,
        1 => fixed > 0 && n.is_multiple_of(fixed) && n > 0,
        _ => {
            return Err(format!(
                "a flat array cannot fill shape {} with more than one dynamic dimension; send nested arrays",
                shape_display(declared)
            ))
        }
    };
    if !fits {
        let what = if dynamic == 0 {
            format!("exactly {fixed}")
        } else {
            format!("a positive multiple of {fixed}")
        };
        return Err(format!(
            "expected {what} elements to fill shape {}, got {n}",
            shape_display(declared)
        ));
    }
    Ok(declared
        .iter()
        .map(|d| {
            if *d < 0 {
                n / fixed.max(1)
            } else {
                *d as usize
            }
        })
        .collect())
}

/// The shape implied by nesting, following the first element at each level.
fn nested_shape(value: &Value) -> Vec<usize> {
    let mut shape = Vec::new();
    let mut current = value;
    while let Value::Array(items) = current {
        shape.push(items.len());
        match items.first() {
            Some(first) => current = first,
            None => break,
        }
    }
    shape
}

fn collect_leaves(
    value: &Value,
    dtype: DType,
    shape: &[usize],
    pointer: &str,
) -> Result<TensorData, Vec<Violation>> {
    let total = shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d));
    let total = match total {
        Some(t) if t <= MAX_TENSOR_ELEMENTS => t,
        _ => {
            return Err(vec![Violation::new(
                pointer,
                format!("more than {MAX_TENSOR_ELEMENTS} elements"),
            )])
        }
    };
    let mut data = TensorData::with_capacity(dtype, total);
    let mut violations = Vec::new();
    let mut at = Position {
        base: pointer,
        indices: Vec::with_capacity(shape.len()),
    };
    walk(value, shape, &mut data, &mut at, &mut violations);
    if violations.is_empty() {
        Ok(data)
    } else {
        Err(violations)
    }
}

/// Where `walk` is: the tensor's pointer and the indices below it. The JSON
/// pointer is only written out for a violation, so a valid tensor costs no
/// string work per element.
struct Position<'a> {
    base: &'a str,
    indices: Vec<usize>,
}

impl Position<'_> {
    fn pointer(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(self.base.len() + 4 * self.indices.len());
        out.push_str(self.base);
        for i in &self.indices {
            let _ = write!(out, "/{i}");
        }
        out
    }
}

fn walk(
    value: &Value,
    shape: &[usize],
    data: &mut TensorData,
    at: &mut Position<'_>,
    violations: &mut Vec<Violation>,
) {
    if violations.len() >= MAX_VIOLATIONS {
        return;
    }
    match (shape.split_first(), value) {
        (None, leaf) => {
            if let Err(message) = data.push(leaf) {
                violations.push(Violation::new(at.pointer(), message));
            }
        }
        (Some((&n, rest)), Value::Array(items)) => {
            if items.len() != n {
                violations.push(Violation::new(
                    at.pointer(),
                    format!("ragged array: expected {n} items, got {}", items.len()),
                ));
                return;
            }
            for (i, item) in items.iter().enumerate() {
                at.indices.push(i);
                walk(item, rest, data, at, violations);
                at.indices.pop();
            }
        }
        (Some(_), other) => violations.push(Violation::new(
            at.pointer(),
            format!("ragged array: expected an array, got {}", kind(other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flat_array_fills_a_fixed_shape() {
        let t = tensor_from_json(&json!([1, 2, 3, 4]), DType::Float32, &[1, 4], "/x").unwrap();
        assert_eq!(t.shape, vec![1, 4]);
        assert_eq!(t.data, TensorData::Float32(vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(t.to_json(), json!([[1.0, 2.0, 3.0, 4.0]]));
    }

    #[test]
    fn flat_array_infers_one_dynamic_dimension() {
        let t = tensor_from_json(&json!([1, 2, 3, 4, 5, 6]), DType::Int64, &[-1, 3], "/x").unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        let err = tensor_from_json(&json!([1, 2, 3, 4]), DType::Int64, &[-1, 3], "/x").unwrap_err();
        assert!(err[0].message.contains("multiple of 3"), "{err:?}");
    }

    #[test]
    fn nested_arrays_must_fit_the_declared_shape() {
        let t =
            tensor_from_json(&json!([[1.5, 2], [3, 4]]), DType::Float64, &[-1, 2], "/x").unwrap();
        assert_eq!(t.shape, vec![2, 2]);
        let err =
            tensor_from_json(&json!([[1, 2, 3]]), DType::Float64, &[-1, 2], "/x").unwrap_err();
        assert!(err[0].message.contains("does not fit"));
        let err =
            tensor_from_json(&json!([[1, 2], [3]]), DType::Float64, &[-1, 2], "/x").unwrap_err();
        assert_eq!(err[0].pointer, "/x/1");
        let err = tensor_from_json(
            &json!([[1, 2], [3, "y"], [true, 6]]),
            DType::Float64,
            &[-1, 2],
            "/x",
        )
        .unwrap_err();
        let pointers: Vec<&str> = err.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(pointers, ["/x/1/1", "/x/2/0"], "{err:?}");
    }

    #[test]
    fn wrong_length_and_wrong_type_are_located() {
        let err =
            tensor_from_json(&json!([1, 2, 3]), DType::Float32, &[1, 4], "/pixels").unwrap_err();
        assert_eq!(err[0].pointer, "/pixels");
        assert!(err[0].message.contains("exactly 4"));
        let err = tensor_from_json(&json!([1, "x", 3, 4]), DType::Float32, &[1, 4], "/pixels")
            .unwrap_err();
        assert_eq!(err[0].pointer, "/pixels/1");
        assert!(err[0].message.contains("a string"));
    }

    #[test]
    fn integer_and_bool_types_are_strict() {
        assert!(tensor_from_json(&json!([1.5]), DType::Int64, &[1], "/x").is_err());
        assert!(tensor_from_json(&json!([3_000_000_000i64]), DType::Int32, &[1], "/x").is_err());
        assert!(tensor_from_json(&json!([1]), DType::Bool, &[1], "/x").is_err());
        let t = tensor_from_json(&json!([true, false]), DType::Bool, &[2], "/x").unwrap();
        assert_eq!(t.data, TensorData::Bool(vec![true, false]));
        assert!(tensor_from_json(&json!([1e300]), DType::Float32, &[1], "/x").is_err());
    }

    #[test]
    fn scalar_fills_a_single_element_shape() {
        let t = tensor_from_json(&json!(7), DType::Int32, &[1, 1], "/x").unwrap();
        assert_eq!(t.shape, vec![1, 1]);
        let t = tensor_from_json(&json!(7), DType::Int32, &[], "/x").unwrap();
        assert_eq!(t.shape, Vec::<usize>::new());
        assert_eq!(t.to_json(), json!(7));
    }

    #[test]
    fn first_takes_index_zero_of_the_first_dimension() {
        let t = Tensor {
            shape: vec![1, 3],
            data: TensorData::Float32(vec![0.5, 0.25, 0.25]),
        };
        assert_eq!(t.first_json().unwrap(), json!([0.5, 0.25, 0.25]));
        let t = Tensor {
            shape: vec![2],
            data: TensorData::Int64(vec![4, 9]),
        };
        assert_eq!(t.first_json().unwrap(), json!(4));
        let t = Tensor {
            shape: vec![0],
            data: TensorData::Int64(vec![]),
        };
        assert_eq!(t.first_json(), None);
    }

    #[test]
    fn parts_must_agree_with_the_declared_shape_and_length() {
        let t = tensor_from_parts(
            &[1, 2],
            &json!([1, 2]),
            DType::Float32,
            &[-1, 2],
            "/inputs/0",
        )
        .unwrap();
        assert_eq!(t.shape, vec![1, 2]);
        let err = tensor_from_parts(
            &[1, 3],
            &json!([1, 2, 3]),
            DType::Float32,
            &[-1, 2],
            "/inputs/0",
        )
        .unwrap_err();
        assert_eq!(err[0].pointer, "/inputs/0/shape");
        let err = tensor_from_parts(&[1, 2], &json!([1]), DType::Float32, &[-1, 2], "/inputs/0")
            .unwrap_err();
        assert_eq!(err[0].pointer, "/inputs/0/data");
    }

    #[test]
    fn oversized_tensors_are_refused_before_allocation() {
        let err = tensor_from_parts(
            &[1 << 20, 1 << 20],
            &json!([]),
            DType::Float32,
            &[-1, -1],
            "/t",
        )
        .unwrap_err();
        assert!(err[0].message.contains("elements") || err[0].message.contains("needs"));
    }
}
