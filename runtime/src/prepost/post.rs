//! Output post-processing: `mean_pool` → `softmax` → `normalize` → `argmax`
//! → `labels`, along the last axis. The math is plain functions over slices,
//! tested here.
//!
//! Uses only `prepost::common`.

use std::collections::HashMap;

use contract::definition::OutputSpec;
use contract::tensor::{DType, Tensor, TensorData};
use contract::ApiError;
use serde_json::Value;

use super::common::bad_output;

/// Softmax of each row of `width` values, in place (stable: the row's maximum is subtracted).
pub fn softmax(values: &mut [f64], width: usize) {
    if width == 0 {
        return;
    }
    for row in values.chunks_mut(width) {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        if sum > 0.0 {
            for x in row.iter_mut() {
                *x /= sum;
            }
        }
    }
}

/// L2-normalises each row of `width` values, in place (`x / max(‖x‖, 1e-12)`, as PyTorch).
pub fn l2_normalize(values: &mut [f64], width: usize) {
    if width == 0 {
        return;
    }
    for row in values.chunks_mut(width) {
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        for x in row.iter_mut() {
            *x /= norm;
        }
    }
}

/// Index of the largest value of each row of `width` values (the first on ties).
pub fn argmax(values: &[f64], width: usize) -> Vec<usize> {
    if width == 0 {
        return Vec::new();
    }
    values
        .chunks(width)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |(best, max), (i, x)| {
                    if *x > max {
                        (i, *x)
                    } else {
                        (best, max)
                    }
                })
                .0
        })
        .collect()
}

/// Mean of `[batch, sequence, hidden]` over the sequence, weighted by a
/// `[batch, sequence]` mask: `Σ mask·x / max(Σ mask, 1e-9)` (sentence-transformers).
pub fn mean_pool(values: &[f64], shape: [usize; 3], mask: &[f64]) -> Vec<f64> {
    let [batch, seq, hidden] = shape;
    let mut out = vec![0.0; batch * hidden];
    for b in 0..batch {
        let pooled = &mut out[b * hidden..(b + 1) * hidden];
        let mut weight = 0.0;
        for s in 0..seq {
            let m = mask[b * seq + s];
            if m == 0.0 {
                continue;
            }
            weight += m;
            let row = &values[(b * seq + s) * hidden..(b * seq + s + 1) * hidden];
            for (p, x) in pooled.iter_mut().zip(row) {
                *p += m * x;
            }
        }
        let weight = f64::max(weight, 1e-9);
        for p in pooled.iter_mut() {
            *p /= weight;
        }
    }
    out
}

fn to_f64(data: &TensorData) -> Vec<f64> {
    match data {
        TensorData::Float32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Float64(v) => v.clone(),
        TensorData::Int32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Int64(v) => v.iter().map(|x| *x as f64).collect(),
        TensorData::Bool(v) => v.iter().map(|x| f64::from(u8::from(*x))).collect(),
        TensorData::UInt8(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::UInt16(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::UInt32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::UInt64(v) => v.iter().map(|x| *x as f64).collect(),
        TensorData::Int8(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Int16(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Float16(v) => v.iter().map(|x| f64::from(x.to_f32())).collect(),
        // Registration refuses numeric post-processing of string tensors
        // (contract::processing::post).
        TensorData::String(v) => vec![f64::NAN; v.len()],
    }
}

/// An output after post-processing: a tensor, or labels in the tensor's shape.
pub(super) enum Processed {
    Tensor(Tensor),
    Labels {
        shape: Vec<usize>,
        labels: Vec<String>,
    },
}

/// Applies an output's declared post-processing to its tensor.
pub(super) fn postprocess(
    spec: &OutputSpec,
    tensor: &Tensor,
    masks: &HashMap<String, Tensor>,
) -> Result<Processed, ApiError> {
    let name = &spec.tensor;
    let mut shape = tensor.shape.clone();
    let mut x = to_f64(&tensor.data);
    if let Some(mask_name) = &spec.mean_pool {
        let mask = masks.get(mask_name).ok_or_else(|| {
            bad_output(format!(
                "no attention mask {mask_name:?} to pool {name:?} with"
            ))
        })?;
        let (&[b, s, h], &[mb, ms]) = (shape.as_slice(), mask.shape.as_slice()) else {
            return Err(bad_output(format!(
                "mean_pool needs {name:?} as [batch, sequence, hidden] and its mask as [batch, sequence]; got {:?} and {:?}",
                shape, mask.shape
            )));
        };
        if (b, s) != (mb, ms) {
            return Err(bad_output(format!(
                "tensor {name:?} is {shape:?} but mask {mask_name:?} is {:?}",
                mask.shape
            )));
        }
        x = mean_pool(&x, [b, s, h], &to_f64(&mask.data));
        shape = vec![b, h];
    }
    let width = shape.last().copied().unwrap_or(1);
    if spec.softmax {
        softmax(&mut x, width);
    }
    if spec.normalize {
        l2_normalize(&mut x, width);
    }
    let classes: Option<Vec<i64>> = if spec.argmax {
        if width == 0 {
            return Err(bad_output(format!(
                "tensor {name:?} has no classes to take argmax of"
            )));
        }
        shape.pop();
        Some(argmax(&x, width).into_iter().map(|i| i as i64).collect())
    } else if spec.labels.is_some() {
        match &tensor.data {
            TensorData::Int64(v) => Some(v.clone()),
            TensorData::Int32(v) => Some(v.iter().map(|i| i64::from(*i)).collect()),
            _ => {
                return Err(bad_output(format!(
                    "tensor {name:?} holds no class indices"
                )))
            }
        }
    } else {
        None
    };
    if let Some(classes) = classes {
        return Ok(match &spec.labels {
            None => Processed::Tensor(Tensor {
                shape,
                data: TensorData::Int64(classes),
            }),
            Some(labels) => {
                let named = classes
                    .iter()
                    .map(|c| {
                        usize::try_from(*c)
                            .ok()
                            .and_then(|i| labels.get(i))
                            .cloned()
                            .ok_or_else(|| {
                                bad_output(format!(
                                    "class {c} of {name:?} has no label ({} labels)",
                                    labels.len()
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Processed::Labels {
                    shape,
                    labels: named,
                }
            }
        });
    }
    let data = match tensor.data.dtype() {
        DType::Float32 => TensorData::Float32(x.into_iter().map(|v| v as f32).collect()),
        _ => TensorData::Float64(x),
    };
    Ok(Processed::Tensor(Tensor { shape, data }))
}

pub(super) fn nest_labels(shape: &[usize], labels: &[String], at: &mut usize) -> Value {
    match shape.split_first() {
        None => {
            let value = labels.get(*at).cloned().map_or(Value::Null, Value::String);
            *at += 1;
            value
        }
        Some((n, rest)) => Value::Array((0..*n).map(|_| nest_labels(rest, labels, at)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn softmax_rows_sum_to_one_and_survive_large_values() {
        let mut x = vec![1.0, 2.0, 3.0, 1000.0, 1001.0, 1002.0];
        softmax(&mut x, 3);
        let expected = [
            0.090_030_573_170_380_46,
            0.244_728_471_054_797_6,
            0.665_240_955_774_821_8,
        ];
        close(&x[..3], &expected);
        close(&x[3..], &expected);
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 5.0, 0.0, -1.0], 3), vec![1, 0]);
        assert_eq!(argmax(&[-2.0, -1.0], 2), vec![1]);
        assert!(argmax(&[], 0).is_empty());
    }

    #[test]
    fn l2_normalize_gives_unit_rows_and_keeps_zero_rows() {
        let mut x = vec![3.0, 4.0, 0.0, 0.0];
        l2_normalize(&mut x, 2);
        close(&x, &[0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn mean_pool_averages_the_masked_tokens_only() {
        // batch 2, sequence 3, hidden 2
        let x = [
            1.0, 10.0, 3.0, 30.0, 100.0, 1000.0, 2.0, 4.0, 6.0, 8.0, 0.0, 0.0,
        ];
        let mask = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0];
        close(&mean_pool(&x, [2, 3, 2], &mask), &[2.0, 20.0, 2.0, 4.0]);
        // An all-zero mask gives zeros, not NaN.
        close(&mean_pool(&x[..6], [1, 3, 2], &[0.0; 3]), &[0.0, 0.0]);
    }
}
