//! Element types and typed, flat tensor contents: every datatype of the Open
//! Inference Protocol (BOOL, UINT8-64, INT8-64, FP16, FP32, FP64, BYTES) that
//! ONNX models use, with their JSON and little-endian forms in one place.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

/// One element type: how it is named, read from JSON, and laid out raw.
pub trait Element: Sized + Clone {
    /// Bytes per element in the raw (binary) form; `None` for strings, which
    /// are length-prefixed.
    const SIZE: Option<usize>;
    fn from_json(leaf: &Value) -> Result<Self, String>;
    fn to_json(&self) -> Value;
    /// Reads one element from exactly `SIZE` little-endian bytes.
    fn from_le(bytes: &[u8]) -> Self;
    fn write_le(&self, out: &mut Vec<u8>);
}

macro_rules! integer_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            const SIZE: Option<usize> = Some(std::mem::size_of::<$t>());
            fn from_json(leaf: &Value) -> Result<Self, String> {
                let Value::Number(n) = leaf else {
                    return Err(format!("expected an integer, got {}", kind(leaf)));
                };
                let wide: i128 = if let Some(i) = n.as_i64() {
                    i128::from(i)
                } else if let Some(u) = n.as_u64() {
                    i128::from(u)
                } else {
                    return Err(format!("expected an integer, got {n}"));
                };
                <$t>::try_from(wide)
                    .map_err(|_| format!("{n} is out of range for {}", stringify!($t)))
            }
            fn to_json(&self) -> Value {
                Value::from(*self)
            }
            fn from_le(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("element size"))
            }
            fn write_le(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
integer_element!(u8, u16, u32, u64, i8, i16, i32, i64);

impl Element for bool {
    const SIZE: Option<usize> = Some(1);
    fn from_json(leaf: &Value) -> Result<Self, String> {
        leaf.as_bool()
            .ok_or_else(|| format!("expected a boolean, got {}", kind(leaf)))
    }
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
    fn from_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
    fn write_le(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl Element for f64 {
    const SIZE: Option<usize> = Some(8);
    fn from_json(leaf: &Value) -> Result<Self, String> {
        as_float(leaf)
    }
    fn to_json(&self) -> Value {
        float_json(*self)
    }
    fn from_le(bytes: &[u8]) -> Self {
        f64::from_le_bytes(bytes.try_into().expect("element size"))
    }
    fn write_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Element for f32 {
    const SIZE: Option<usize> = Some(4);
    fn from_json(leaf: &Value) -> Result<Self, String> {
        let x = as_float(leaf)?;
        if x.is_finite() && x.abs() > f64::from(f32::MAX) {
            return Err(format!("{x} is out of range for float32"));
        }
        Ok(x as f32)
    }
    fn to_json(&self) -> Value {
        float_json(f64::from(*self))
    }
    fn from_le(bytes: &[u8]) -> Self {
        f32::from_le_bytes(bytes.try_into().expect("element size"))
    }
    fn write_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// An IEEE 754 half-precision float, kept as its bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct F16(pub u16);

impl F16 {
    /// Rounds to the nearest half-precision value (ties to even).
    pub fn from_f32(x: f32) -> F16 {
        let bits = x.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exp = ((bits >> 23) & 0xff) as i32;
        let mant = bits & 0x007f_ffff;
        if exp == 0xff {
            let nan = if mant != 0 { 0x0200 } else { 0 };
            return F16(sign | 0x7c00 | nan);
        }
        let e = exp - 127 + 15;
        if e >= 0x1f {
            return F16(sign | 0x7c00);
        }
        if e <= 0 {
            if e < -10 {
                return F16(sign);
            }
            let m = mant | 0x0080_0000;
            let shift = (14 - e) as u32;
            let half = 1u32 << (shift - 1);
            let rest = m & ((1 << shift) - 1);
            let mut out = m >> shift;
            if rest > half || (rest == half && out & 1 == 1) {
                out += 1;
            }
            return F16(sign | out as u16);
        }
        let mut out = ((e as u32) << 10) | (mant >> 13);
        let rest = mant & 0x1fff;
        if rest > 0x1000 || (rest == 0x1000 && out & 1 == 1) {
            out += 1;
        }
        F16(sign | out as u16)
    }

    pub fn to_f32(self) -> f32 {
        let sign = u32::from(self.0 & 0x8000) << 16;
        let exp = u32::from((self.0 >> 10) & 0x1f);
        let mant = u32::from(self.0 & 0x03ff);
        let bits = match (exp, mant) {
            (0, 0) => sign,
            (0, m) => {
                // Subnormal: normalise.
                let mut e = 127 - 15 + 1;
                let mut m = m;
                while m & 0x0400 == 0 {
                    m <<= 1;
                    e -= 1;
                }
                sign | ((e as u32) << 23) | ((m & 0x03ff) << 13)
            }
            (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
            (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
        };
        f32::from_bits(bits)
    }
}

impl Element for F16 {
    const SIZE: Option<usize> = Some(2);
    fn from_json(leaf: &Value) -> Result<Self, String> {
        let x = as_float(leaf)?;
        if x.is_finite() && x.abs() > 65504.0 {
            return Err(format!("{x} is out of range for float16"));
        }
        Ok(F16::from_f32(x as f32))
    }
    fn to_json(&self) -> Value {
        float_json(f64::from(self.to_f32()))
    }
    fn from_le(bytes: &[u8]) -> Self {
        F16(u16::from_le_bytes(bytes.try_into().expect("element size")))
    }
    fn write_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.to_le_bytes());
    }
}

impl Element for String {
    const SIZE: Option<usize> = None;
    fn from_json(leaf: &Value) -> Result<Self, String> {
        leaf.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("expected a string, got {}", kind(leaf)))
    }
    fn to_json(&self) -> Value {
        Value::from(self.as_str())
    }
    fn from_le(_: &[u8]) -> Self {
        unreachable!("strings are read length-prefixed")
    }
    /// The binary tensor extension's BYTES element: a 4-byte little-endian
    /// length, then the bytes.
    fn write_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.len() as u32).to_le_bytes());
        out.extend_from_slice(self.as_bytes());
    }
}

macro_rules! tensor_types {
    ($( $variant:ident($t:ty) = $name:literal, $oip:literal; )*) => {
        /// Element types a declared tensor may have.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum DType { $($variant,)* }

        impl DType {
            /// Every element type, in the order of the definition format's docs.
            pub const ALL: &'static [DType] = &[$(DType::$variant,)*];

            /// The definition format's spelling (`float32`, `uint8`, `string`, ...).
            pub fn as_str(self) -> &'static str {
                match self { $(DType::$variant => $name,)* }
            }

            /// The Open Inference Protocol v2 spelling (`FP32`, `UINT8`, `BYTES`, ...).
            pub fn oip_name(self) -> &'static str {
                match self { $(DType::$variant => $oip,)* }
            }

            pub fn from_oip(name: &str) -> Option<Self> {
                match name { $($oip => Some(DType::$variant),)* _ => None }
            }

            /// Bytes per element in the raw form; `None` for strings.
            pub fn size(self) -> Option<usize> {
                match self { $(DType::$variant => <$t as Element>::SIZE,)* }
            }
        }

        /// Typed, flat (row-major) tensor contents.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TensorData { $($variant(Vec<$t>),)* }

        impl TensorData {
            pub(crate) fn with_capacity(dtype: DType, n: usize) -> Self {
                match dtype { $(DType::$variant => TensorData::$variant(Vec::with_capacity(n)),)* }
            }

            pub fn dtype(&self) -> DType {
                match self { $(TensorData::$variant(_) => DType::$variant,)* }
            }

            pub fn len(&self) -> usize {
                match self { $(TensorData::$variant(v) => v.len(),)* }
            }

            /// Element `i` as JSON. Non-finite floats become `null` (JSON has no NaN).
            pub fn element_json(&self, i: usize) -> Value {
                match self { $(TensorData::$variant(v) => Element::to_json(&v[i]),)* }
            }

            /// Appends one JSON leaf, converted to this tensor's element type.
            pub(crate) fn push(&mut self, leaf: &Value) -> Result<(), String> {
                match self { $(TensorData::$variant(v) => v.push(<$t as Element>::from_json(leaf)?),)* }
                Ok(())
            }

            /// Appends the elements of `other` (same type; `false` otherwise).
            pub fn extend(&mut self, other: &TensorData) -> bool {
                match (self, other) {
                    $((TensorData::$variant(a), TensorData::$variant(b)) => a.extend_from_slice(b),)*
                    _ => return false,
                }
                true
            }

            /// Elements `start..end`, as a new tensor's contents.
            pub fn slice(&self, start: usize, end: usize) -> TensorData {
                match self { $(TensorData::$variant(v) => TensorData::$variant(v[start..end].to_vec()),)* }
            }

            /// The raw form of the binary tensor extension: little-endian
            /// elements, or length-prefixed strings.
            pub fn to_le_bytes(&self) -> Vec<u8> {
                let mut out = Vec::new();
                match self {
                    $(TensorData::$variant(v) => {
                        if let Some(size) = <$t as Element>::SIZE {
                            out.reserve(size * v.len());
                        }
                        v.iter().for_each(|x| x.write_le(&mut out));
                    })*
                }
                out
            }

            /// Reads `n` fixed-size elements from exactly `n * size` bytes.
            pub(crate) fn from_fixed_le(dtype: DType, bytes: &[u8]) -> TensorData {
                match dtype {
                    $(DType::$variant => match <$t as Element>::SIZE {
                        Some(size) => TensorData::$variant(bytes.chunks_exact(size).map(<$t as Element>::from_le).collect()),
                        None => TensorData::with_capacity(dtype, 0),
                    },)*
                }
            }
        }
    };
}

tensor_types! {
    Bool(bool) = "bool", "BOOL";
    UInt8(u8) = "uint8", "UINT8";
    UInt16(u16) = "uint16", "UINT16";
    UInt32(u32) = "uint32", "UINT32";
    UInt64(u64) = "uint64", "UINT64";
    Int8(i8) = "int8", "INT8";
    Int16(i16) = "int16", "INT16";
    Int32(i32) = "int32", "INT32";
    Int64(i64) = "int64", "INT64";
    Float16(F16) = "float16", "FP16";
    Float32(f32) = "float32", "FP32";
    Float64(f64) = "float64", "FP64";
    String(String) = "string", "BYTES";
}

impl TensorData {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All elements as one flat JSON array (the OIP v2 `data` field).
    pub fn to_flat_json(&self) -> Value {
        Value::Array((0..self.len()).map(|i| self.element_json(i)).collect())
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn float_json(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn as_float(leaf: &Value) -> Result<f64, String> {
    leaf.as_f64()
        .ok_or_else(|| format!("expected a number, got {}", kind(leaf)))
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_type_round_trips_through_json_and_raw_bytes() {
        for (dtype, leaves) in [
            (DType::Bool, json!([true, false])),
            (DType::UInt8, json!([0, 255])),
            (DType::UInt16, json!([0, 65535])),
            (DType::UInt32, json!([0, 4294967295u64])),
            (DType::UInt64, json!([0, u64::MAX])),
            (DType::Int8, json!([-128, 127])),
            (DType::Int16, json!([-32768, 32767])),
            (DType::Int32, json!([i32::MIN, i32::MAX])),
            (DType::Int64, json!([i64::MIN, i64::MAX])),
            (DType::Float16, json!([0.5, -65504.0])),
            (DType::Float32, json!([0.25, -1.5])),
            (DType::Float64, json!([1e-300, -2.5])),
        ] {
            let mut data = TensorData::with_capacity(dtype, 2);
            for leaf in leaves.as_array().unwrap() {
                data.push(leaf).unwrap();
            }
            assert_eq!(data.to_flat_json(), leaves, "{dtype}");
            let raw = data.to_le_bytes();
            assert_eq!(raw.len(), 2 * dtype.size().unwrap(), "{dtype}");
            assert_eq!(TensorData::from_fixed_le(dtype, &raw), data, "{dtype}");
            assert_eq!(DType::from_oip(dtype.oip_name()), Some(dtype));
        }
    }

    #[test]
    fn integers_are_range_checked_per_type() {
        let mut u8s = TensorData::with_capacity(DType::UInt8, 1);
        assert!(u8s.push(&json!(256)).unwrap_err().contains("out of range"));
        assert!(u8s.push(&json!(-1)).is_err());
        assert!(u8s.push(&json!(1.5)).is_err());
        let mut i8s = TensorData::with_capacity(DType::Int8, 1);
        assert!(i8s.push(&json!(-129)).is_err());
        let mut halves = TensorData::with_capacity(DType::Float16, 1);
        assert!(halves.push(&json!(70000.0)).is_err());
    }

    #[test]
    fn half_precision_rounds_like_ieee() {
        for (x, bits) in [
            (1.0f32, 0x3c00u16),
            (-2.0, 0xc000),
            (65504.0, 0x7bff),
            (0.0, 0),
            (5.960_464_5e-8, 0x0001),
            (f32::INFINITY, 0x7c00),
            (1.000_488_3, 0x3c00),
        ] {
            assert_eq!(F16::from_f32(x).0, bits, "{x}");
        }
        assert_eq!(F16(0x3555).to_f32(), 0.333_251_95);
        assert_eq!(F16(0x0001).to_f32(), 5.960_464_5e-8);
        assert!(F16(0x7e00).to_f32().is_nan());
    }

    #[test]
    fn strings_are_length_prefixed() {
        let data = TensorData::String(vec!["hé".into(), String::new()]);
        assert_eq!(
            data.to_le_bytes(),
            [3, 0, 0, 0, b'h', 0xc3, 0xa9, 0, 0, 0, 0].to_vec()
        );
    }
}
