//! A function's result cache: its policy in the definition, and the key a
//! call's input is cached under.
//!
//! The key is a SHA-256 of the input in canonical form: object keys sorted,
//! no whitespace, numbers and strings as `serde_json` writes them. Two bodies
//! that differ only in key order or spacing share an entry; `1` and `1.0` do
//! not (a miss, never a wrong answer).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::tensor::Violation;

/// Longest a cached result may be kept.
pub const MAX_TTL_S: u64 = 86_400;
/// Most entries one function version may keep.
pub const MAX_ENTRIES: u32 = 100_000;

/// `"cache": {"ttl_s": N, "max_entries": M}`: successful results of the same
/// input to the same version are answered by the router for `ttl_s` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachePolicy {
    pub ttl_s: u64,
    #[serde(default = "default_max_entries")]
    pub max_entries: u32,
}

fn default_max_entries() -> u32 {
    1024
}

/// The violations of `policy`, under `pointer`.
pub fn check(policy: &CachePolicy, pointer: &str) -> Vec<Violation> {
    let mut v = Vec::new();
    if !(1..=MAX_TTL_S).contains(&policy.ttl_s) {
        v.push(Violation::new(
            format!("{pointer}/ttl_s"),
            format!("ttl_s must be 1..={MAX_TTL_S}"),
        ));
    }
    if !(1..=MAX_ENTRIES).contains(&policy.max_entries) {
        v.push(Violation::new(
            format!("{pointer}/max_entries"),
            format!("max_entries must be 1..={MAX_ENTRIES}"),
        ));
    }
    v
}

/// The cache key of an input: SHA-256 of its canonical form.
pub fn key_of(input: &Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    feed(&mut hasher, input);
    hasher.finalize().into()
}

/// Writes `value` canonically into `hasher`, without recursion (inputs are
/// at most `MAX_JSON_DEPTH` deep, but the walk does not rely on it).
fn feed(hasher: &mut Sha256, value: &Value) {
    enum Step<'a> {
        Value(&'a Value),
        Key(&'a str),
        Text(&'static [u8]),
    }
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut stack = vec![Step::Value(value)];
    while let Some(step) = stack.pop() {
        let value = match step {
            Step::Text(text) => {
                hasher.update(text);
                continue;
            }
            Step::Key(key) => {
                hasher.update(quoted(key).as_bytes());
                continue;
            }
            Step::Value(value) => value,
        };
        match value {
            Value::Null => hasher.update(b"null"),
            Value::Bool(true) => hasher.update(b"true"),
            Value::Bool(false) => hasher.update(b"false"),
            Value::Number(n) => hasher.update(n.to_string().as_bytes()),
            Value::String(s) => hasher.update(quoted(s).as_bytes()),
            Value::Array(items) => {
                hasher.update(b"[");
                stack.push(Step::Text(b"]"));
                for (i, item) in items.iter().enumerate().rev() {
                    stack.push(Step::Value(item));
                    if i > 0 {
                        stack.push(Step::Text(b","));
                    }
                }
            }
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                hasher.update(b"{");
                stack.push(Step::Text(b"}"));
                for (i, (key, item)) in entries.into_iter().enumerate().rev() {
                    stack.push(Step::Value(item));
                    stack.push(Step::Text(b":"));
                    stack.push(Step::Key(key));
                    if i > 0 {
                        stack.push(Step::Text(b","));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canonical_bytes(value: &Value) -> [u8; 32] {
        // What the key hashes: the canonical text itself.
        let text = serde_json::to_string(&sorted(value)).unwrap();
        Sha256::digest(text.as_bytes()).into()
    }

    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let sorted: std::collections::BTreeMap<_, _> =
                    map.iter().map(|(k, v)| (k.clone(), sorted(v))).collect();
                serde_json::to_value(sorted).unwrap()
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }

    #[test]
    fn key_order_and_spacing_do_not_matter_and_values_do() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, 2, {"y": "é\"", "x": null}], "a": true}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":true,"b":[1,2,{"x":null,"y":"é\""}]}"#).unwrap();
        assert_eq!(key_of(&a), key_of(&b));
        assert_eq!(key_of(&a), canonical_bytes(&a));
        assert_ne!(key_of(&a), key_of(&json!({"a": true, "b": [2, 1]})));
        assert_ne!(key_of(&json!({"a": "1"})), key_of(&json!({"a": 1})));
        assert_ne!(key_of(&json!([[]])), key_of(&json!([])));
    }

    #[test]
    fn policies_are_bounded() {
        assert!(check(
            &CachePolicy {
                ttl_s: 60,
                max_entries: 10
            },
            "/cache"
        )
        .is_empty());
        let pointers: Vec<_> = check(
            &CachePolicy {
                ttl_s: 0,
                max_entries: 0,
            },
            "/cache",
        )
        .into_iter()
        .map(|v| v.pointer)
        .collect();
        assert_eq!(pointers, ["/cache/ttl_s", "/cache/max_entries"]);
    }
}
