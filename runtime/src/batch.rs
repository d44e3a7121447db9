//! Concatenating calls into one batch along the first dimension, and splitting
//! the outputs back. Pure functions over [`contract::tensor::Tensor`].

use std::collections::HashMap;

use contract::protocol::{TensorInputs, TensorOutputs};
use contract::tensor::{DType, Tensor, TensorData};
use contract::{ApiError, ErrorCode};

/// Rows (first-dimension size) of a call; every input must agree on it.
pub fn rows(inputs: &TensorInputs) -> Result<usize, ApiError> {
    let mut rows = None;
    for (name, tensor) in inputs {
        let Some(&n) = tensor.shape.first() else {
            return Err(not_batchable(format!("input {name:?} is a scalar")));
        };
        match rows {
            None => rows = Some(n),
            Some(r) if r == n => {}
            Some(r) => {
                return Err(not_batchable(format!(
                    "input {name:?} has {n} rows, another has {r}"
                )))
            }
        }
    }
    rows.ok_or_else(|| not_batchable("a call without inputs"))
}

fn not_batchable(message: impl Into<String>) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidInput,
        format!("cannot batch this call: {}", message.into()),
    )
}

/// What calls must share to be batched: input names, types and all dimensions but the first.
pub fn shape_key(inputs: &TensorInputs) -> Vec<(String, DType, Vec<usize>)> {
    let mut key: Vec<_> = inputs
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                t.data.dtype(),
                t.shape.iter().skip(1).copied().collect(),
            )
        })
        .collect();
    key.sort_by(|a, b| a.0.cmp(&b.0));
    key
}

fn extend(into: &mut TensorData, from: &TensorData) -> Result<(), ApiError> {
    if into.extend(from) {
        Ok(())
    } else {
        Err(not_batchable("element types differ"))
    }
}

fn slice(data: &TensorData, start: usize, end: usize) -> TensorData {
    data.slice(start, end)
}

/// Concatenates calls (same [`shape_key`]) along the first dimension, in order.
pub fn concat(calls: Vec<TensorInputs>) -> Result<TensorInputs, ApiError> {
    let mut calls = calls.into_iter();
    let Some(first) = calls.next() else {
        return Ok(Vec::new());
    };
    let mut merged: Vec<(String, Tensor)> = first;
    for call in calls {
        let mut by_name: HashMap<String, Tensor> = call.into_iter().collect();
        for (name, tensor) in merged.iter_mut() {
            let next = by_name
                .remove(name)
                .ok_or_else(|| not_batchable(format!("input {name:?} is missing")))?;
            if next.shape.get(1..) != tensor.shape.get(1..) {
                return Err(not_batchable(format!(
                    "input {name:?} differs beyond the first dimension"
                )));
            }
            extend(&mut tensor.data, &next.data)?;
            tensor.shape[0] += next.shape[0];
        }
    }
    Ok(merged)
}

/// Splits every output along the first dimension into parts of `rows` each.
pub fn split(outputs: &TensorOutputs, rows: &[usize]) -> Result<Vec<TensorOutputs>, ApiError> {
    let total: usize = rows.iter().sum();
    let mut parts: Vec<TensorOutputs> = rows.iter().map(|_| HashMap::new()).collect();
    for (name, tensor) in outputs {
        if tensor.shape.first() != Some(&total) {
            return Err(ApiError::new(
                ErrorCode::FunctionFailed,
                format!("output {name:?} has shape {:?}, not batched along the first dimension ({total} rows)", tensor.shape),
            ));
        }
        let per_row: usize = tensor.shape[1..].iter().product();
        let mut start = 0;
        for (part, n) in parts.iter_mut().zip(rows) {
            let end = start + n * per_row;
            let mut shape = tensor.shape.clone();
            shape[0] = *n;
            part.insert(
                name.clone(),
                Tensor {
                    shape,
                    data: slice(&tensor.data, start, end),
                },
            );
            start = end;
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor {
            shape,
            data: TensorData::Float32(v),
        }
    }

    #[test]
    fn concat_then_split_is_the_identity() {
        let a = vec![("x".to_string(), t(vec![1, 2], vec![1.0, 2.0]))];
        let b = vec![("x".to_string(), t(vec![2, 2], vec![3.0, 4.0, 5.0, 6.0]))];
        assert_eq!(rows(&a).unwrap(), 1);
        assert_eq!(shape_key(&a), shape_key(&b));
        let merged = concat(vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(merged[0].1.shape, vec![3, 2]);
        let outputs: TensorOutputs = [("y".to_string(), merged[0].1.clone())]
            .into_iter()
            .collect();
        let parts = split(&outputs, &[1, 2]).unwrap();
        assert_eq!(parts[0]["y"], a[0].1);
        assert_eq!(parts[1]["y"], b[0].1);
    }

    #[test]
    fn unbatchable_shapes_are_refused() {
        let a = vec![("x".to_string(), t(vec![1, 2], vec![1.0, 2.0]))];
        let c = vec![("x".to_string(), t(vec![1, 3], vec![1.0, 2.0, 3.0]))];
        assert_ne!(shape_key(&a), shape_key(&c));
        assert!(concat(vec![a.clone(), c]).is_err());
        let scalar = vec![("x".to_string(), t(vec![], vec![1.0]))];
        assert!(rows(&scalar).is_err());
        let outputs: TensorOutputs = [("y".to_string(), t(vec![2], vec![1.0, 2.0]))]
            .into_iter()
            .collect();
        assert!(split(&outputs, &[1, 2]).is_err());
    }
}
