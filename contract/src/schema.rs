//! JSON Schema checks of inputs (router) and outputs (runtime).
//!
//! Schemas are compiled once per version: at registration, to refuse a schema
//! that does not compile (422), and again on first use in each process, then
//! cached with the version. Hostile schemas are harmless:
//! - `pattern` uses the `regex` crate (linear time; look-around does not
//!   compile and is refused at registration);
//! - no remote `$ref` is ever fetched (the crate is built without resolvers);
//! - a schema document is at most [`MAX_SCHEMA_BYTES`].

use std::sync::{Arc, OnceLock};

use crate::tensor::{DType, Violation};
use crate::{ApiError, ErrorCode};
use jsonschema::{PatternOptions, Validator};
use serde_json::{json, Value};

use crate::signature::{InputBinding, InputSource};

/// Largest schema accepted, serialized.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// Most violations reported for one document.
const MAX_REPORTED: usize = 16;

/// Compiles a schema with the platform's safe options.
pub fn compile(schema: &Value, pointer: &str) -> Result<Validator, Violation> {
    let size = serde_json::to_vec(schema).map_or(usize::MAX, |b| b.len());
    if size > MAX_SCHEMA_BYTES {
        return Err(Violation::new(
            pointer,
            format!("schema is {size} bytes; the limit is {MAX_SCHEMA_BYTES}"),
        ));
    }
    jsonschema::options()
        .with_pattern_options(
            PatternOptions::regex()
                .size_limit(1 << 20)
                .dfa_size_limit(1 << 20),
        )
        .build(schema)
        .map_err(|e| Violation::new(pointer, format!("schema does not compile: {e}")))
}

/// Every violation of `instance`, with the instance's JSON pointer.
pub fn violations(validator: &Validator, instance: &Value) -> Vec<Violation> {
    validator
        .iter_errors(instance)
        .take(MAX_REPORTED)
        .map(|e| {
            let mut pointer = e.instance_path().to_string();
            // A missing property is located at the property, not at its parent.
            if let jsonschema::error::ValidationErrorKind::Required {
                property: Value::String(name),
            } = e.kind()
            {
                pointer.push('/');
                pointer.push_str(&crate::names::escape(name));
            }
            Violation::new(pointer, capped(e.to_string()))
        })
        .collect()
}

/// Most characters of one violation's message: the validator quotes the
/// offending value, which may be a caller's megabyte-long string.
pub const MAX_MESSAGE_CHARS: usize = 256;

fn capped(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!(
            "{}… (cut at {MAX_MESSAGE_CHARS} characters)",
            &message[..cut]
        ),
        None => message,
    }
}

/// A JSON Schema equivalent to the declared input tensors (used for documentation
/// when a definition has no `input_schema`; the router enforces the same rules
/// through the tensor mapping itself).
pub fn derived_input_schema(inputs: &[InputBinding]) -> Value {
    let mut properties = serde_json::Map::new();
    for b in inputs {
        let schema = match b.source {
            InputSource::Json => tensor_schema(b.dtype, &b.shape),
            InputSource::TextIds | InputSource::TextAttentionMask | InputSource::TextTypeIds => {
                items_schema(json!({"type": "string", "maxLength": crate::limits::MAX_TEXT_BYTES}))
            }
            InputSource::Image => {
                items_schema(json!({"type": "string", "contentEncoding": "base64"}))
            }
        };
        properties.insert(b.field.clone(), schema);
    }
    let mut required: Vec<&str> = inputs.iter().map(|b| b.field.as_str()).collect();
    required.dedup();
    json!({"type": "object", "required": required, "properties": properties, "additionalProperties": false})
}

/// One item, or an array of 1..=`MAX_BATCH_ITEMS` of them (text and image fields).
fn items_schema(item: Value) -> Value {
    json!({"anyOf": [item.clone(), {"type": "array", "items": item, "minItems": 1, "maxItems": crate::limits::MAX_BATCH_ITEMS}]})
}

fn tensor_schema(dtype: DType, shape: &[i64]) -> Value {
    let leaf = match dtype {
        DType::Float32 | DType::Float64 => json!({"type": "number"}),
        DType::Float16 => json!({"type": "number", "minimum": -65504.0, "maximum": 65504.0}),
        DType::UInt8 => json!({"type": "integer", "minimum": 0, "maximum": u8::MAX}),
        DType::UInt16 => json!({"type": "integer", "minimum": 0, "maximum": u16::MAX}),
        DType::UInt32 => json!({"type": "integer", "minimum": 0, "maximum": u32::MAX}),
        DType::UInt64 => json!({"type": "integer", "minimum": 0}),
        DType::Int8 => json!({"type": "integer", "minimum": i8::MIN, "maximum": i8::MAX}),
        DType::Int16 => json!({"type": "integer", "minimum": i16::MIN, "maximum": i16::MAX}),
        DType::Int32 => json!({"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX}),
        DType::Int64 => json!({"type": "integer"}),
        DType::Bool => json!({"type": "boolean"}),
        DType::String => json!({"type": "string"}),
    };
    let fixed: Option<i64> =
        shape.iter().try_fold(
            1i64,
            |acc, d| if *d < 0 { None } else { acc.checked_mul(*d) },
        );
    let mut flat = json!({"type": "array", "items": leaf.clone()});
    if let Some(n) = fixed {
        flat["minItems"] = json!(n);
        flat["maxItems"] = json!(n);
    }
    let mut nested = leaf.clone();
    for d in shape.iter().rev() {
        let mut level = json!({"type": "array", "items": nested});
        if *d >= 0 {
            level["minItems"] = json!(d);
            level["maxItems"] = json!(d);
        }
        nested = level;
    }
    if fixed == Some(1) {
        json!({"anyOf": [leaf, flat, nested]})
    } else {
        json!({"anyOf": [flat, nested]})
    }
}

/// A compiled schema, or why it did not compile.
type Compiled = Result<Arc<Validator>, String>;

/// Compiled schemas of one version, built on first use and kept with it.
///
/// A schema that does not compile here (it did at registration, so this means
/// a store written by another build) fails closed: every call of the version
/// is refused with 500 rather than skipping the check.
#[derive(Default)]
pub struct CompiledSchemas {
    input: OnceLock<Option<Compiled>>,
    output: OnceLock<Option<Compiled>>,
}

impl CompiledSchemas {
    fn get(
        cell: &OnceLock<Option<Compiled>>,
        schema: Option<&Value>,
        which: &str,
    ) -> Result<Option<Arc<Validator>>, ApiError> {
        let compiled = cell.get_or_init(|| {
            schema.map(|s| {
                compile(s, which)
                    .map(Arc::new)
                    .map_err(|v| format!("{}: {}", v.pointer, v.message))
            })
        });
        match compiled {
            None => Ok(None),
            Some(Ok(validator)) => Ok(Some(validator.clone())),
            Some(Err(reason)) => Err(ApiError::new(
                ErrorCode::Internal,
                format!(
                    "the function's {} does not compile ({reason}); its calls are refused until a new version is registered",
                    &which[1..]
                ),
            )),
        }
    }

    pub fn input(&self, schema: Option<&Value>) -> Result<Option<Arc<Validator>>, ApiError> {
        Self::get(&self.input, schema, "/input_schema")
    }

    pub fn output(&self, schema: Option<&Value>) -> Result<Option<Arc<Validator>>, ApiError> {
        Self::get(&self.output, schema, "/output_schema")
    }
}

impl Clone for CompiledSchemas {
    fn clone(&self) -> Self {
        CompiledSchemas::default()
    }
}

impl PartialEq for CompiledSchemas {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for CompiledSchemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledSchemas")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_echo_a_whole_hostile_value() {
        let v = compile(
            &json!({"type": "object", "properties": {"a": {"type": "number"}}}),
            "",
        )
        .unwrap();
        let huge = "é".repeat(100_000);
        let found = violations(&v, &json!({ "a": huge }));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].message.chars().count() < MAX_MESSAGE_CHARS + 40,
            "{}",
            found[0].message.len()
        );
        assert!(found[0].message.ends_with("characters)"));
        // Short messages are kept whole.
        let found = violations(&v, &json!({"a": "x"}));
        assert!(!found[0].message.contains("cut at"), "{}", found[0].message);
    }

    #[test]
    fn a_schema_that_does_not_compile_fails_closed() {
        let schemas = CompiledSchemas::default();
        let bad = json!({"type": "string", "pattern": "(?<=look-behind)"});
        let err = schemas.input(Some(&bad)).unwrap_err();
        assert_eq!(err.code, ErrorCode::Internal);
        assert!(err.message.contains("input_schema"), "{}", err.message);
        // Asked again: still refused, never skipped.
        assert!(schemas.input(Some(&bad)).is_err());
        assert!(schemas.output(None).unwrap().is_none());
    }

    #[test]
    fn violations_carry_pointers() {
        let v = compile(&json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "number"}}}}), "/input_schema").unwrap();
        let found = violations(&v, &json!({"a": [1, "x", 3]}));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pointer, "/a/1");
    }

    #[test]
    fn look_around_and_oversized_schemas_are_refused() {
        let err = compile(
            &json!({"type": "string", "pattern": "(?=a)b"}),
            "/input_schema",
        )
        .unwrap_err();
        assert!(err.message.contains("does not compile"), "{err:?}");
        let big = json!({"enum": vec!["x".repeat(100); 1000]});
        assert!(compile(&big, "/input_schema")
            .unwrap_err()
            .message
            .contains("limit"));
    }

    #[test]
    fn linear_regex_stays_fast_on_a_classic_redos_input() {
        let v = compile(&json!({"type": "string", "pattern": "^(a+)+$"}), "").unwrap();
        let input = json!(format!("{}!", "a".repeat(50_000)));
        // A backtracking engine would not finish this input at all (2^50000
        // paths); the regex crate is linear and takes milliseconds. The check
        // runs on its own thread so that a regression fails here after a
        // generous bound instead of hanging the suite.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(violations(&v, &input).is_empty());
        });
        let empty = finished
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the pattern check did not finish: is `pattern` backtracking?");
        assert!(!empty, "\"aaa…!\" must not match ^(a+)+$");
    }

    #[test]
    fn derived_schema_matches_the_tensor_rules() {
        let inputs = vec![InputBinding {
            field: "pixels".into(),
            tensor: "x".into(),
            dtype: DType::Float32,
            shape: vec![1, 4],
            source: Default::default(),
        }];
        let v = compile(&derived_input_schema(&inputs), "").unwrap();
        assert!(violations(&v, &json!({"pixels": [1, 2, 3, 4]})).is_empty());
        assert!(violations(&v, &json!({"pixels": [[1, 2, 3, 4]]})).is_empty());
        assert!(!violations(&v, &json!({"pixels": [1, 2, 3]})).is_empty());
        assert!(!violations(&v, &json!({"pixels": [1, 2, 3, "4"]})).is_empty());
        assert!(!violations(&v, &json!({"pixels": [1, 2, 3, 4], "extra": 1})).is_empty());
    }
}
