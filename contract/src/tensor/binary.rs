//! Tensors from the raw bytes of the binary tensor data extension (Triton's,
//! which the KServe clients share): fixed-size elements little-endian and
//! row-major; BYTES elements each a 4-byte little-endian length and the bytes.

use super::data::{DType, TensorData};
use super::{checked_shape, Tensor, Violation};
use crate::limits::MAX_TENSOR_ELEMENTS;

/// Builds a tensor of `dtype` from its raw bytes and explicit shape, checked
/// against the declared shape: the byte count must be exactly what the shape
/// needs, and strings must be UTF-8 (ONNX string tensors are).
pub fn tensor_from_raw(
    shape: &[i64],
    raw: &[u8],
    dtype: DType,
    declared: &[i64],
    pointer: &str,
) -> Result<Tensor, Vec<Violation>> {
    let shape = checked_shape(shape, declared, pointer)?;
    let here = |message: String| {
        vec![Violation::new(
            format!("{pointer}/parameters/binary_data_size"),
            message,
        )]
    };
    let count = shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .filter(|n| *n <= MAX_TENSOR_ELEMENTS)
        .ok_or_else(|| here(format!("more than {MAX_TENSOR_ELEMENTS} elements")))?;
    let data = match dtype.size() {
        Some(size) => {
            if raw.len() != count * size {
                return Err(here(format!(
                    "shape {shape:?} of {} needs {} bytes, got {}",
                    dtype.oip_name(),
                    count * size,
                    raw.len()
                )));
            }
            TensorData::from_fixed_le(dtype, raw)
        }
        None => TensorData::String(strings(raw, count).map_err(here)?),
    };
    Ok(Tensor { shape, data })
}

/// Exactly `count` length-prefixed UTF-8 strings filling `raw`.
fn strings(mut raw: &[u8], count: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(count.min(raw.len() / 4));
    while !raw.is_empty() {
        if out.len() == count {
            return Err(format!("more than the {count} strings the shape holds"));
        }
        let Some((len, rest)) = raw.split_first_chunk::<4>() else {
            return Err("a string's 4-byte length is cut off".into());
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(format!("a string of {len} bytes is cut off"));
        }
        let (bytes, rest) = rest.split_at(len);
        let text =
            std::str::from_utf8(bytes).map_err(|_| format!("string {} is not UTF-8", out.len()))?;
        out.push(text.to_string());
        raw = rest;
    }
    if out.len() != count {
        return Err(format!(
            "the shape holds {count} strings, got {}",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_size_elements_need_exactly_their_bytes() {
        let raw: Vec<u8> = [1.0f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let t = tensor_from_raw(&[1, 2], &raw, DType::Float32, &[-1, 2], "/inputs/0").unwrap();
        assert_eq!(t.data, TensorData::Float32(vec![1.0, -2.0]));
        let err =
            tensor_from_raw(&[1, 2], &raw[..7], DType::Float32, &[-1, 2], "/inputs/0").unwrap_err();
        assert_eq!(err[0].pointer, "/inputs/0/parameters/binary_data_size");
        assert!(err[0].message.contains("needs 8 bytes, got 7"), "{err:?}");
        let err = tensor_from_raw(&[2, 2], &raw, DType::Float32, &[1, 2], "/inputs/0").unwrap_err();
        assert_eq!(err[0].pointer, "/inputs/0/shape");
    }

    #[test]
    fn strings_are_counted_and_checked() {
        let mut raw = Vec::new();
        for s in ["ab", ""] {
            raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
        let t = tensor_from_raw(&[2], &raw, DType::String, &[-1], "/i").unwrap();
        assert_eq!(t.data, TensorData::String(vec!["ab".into(), String::new()]));
        assert!(tensor_from_raw(&[3], &raw, DType::String, &[-1], "/i").is_err());
        assert!(tensor_from_raw(&[1], &raw, DType::String, &[-1], "/i").is_err());
        assert!(tensor_from_raw(&[1], &[9, 0, 0, 0, b'x'], DType::String, &[-1], "/i").is_err());
        assert!(tensor_from_raw(&[1], &[1, 0, 0, 0, 0xff], DType::String, &[-1], "/i").is_err());
        assert!(tensor_from_raw(&[1], &[1, 0], DType::String, &[-1], "/i").is_err());
    }
}
