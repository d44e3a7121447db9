//! Parsing untrusted JSON bodies with an explicit nesting limit.

use crate::error::{ApiError, ErrorCode};
use serde_json::Value;

/// Maximum nesting depth of `bytes`, found with one linear scan that skips strings.
///
/// Stops early as soon as `limit` is exceeded, so a hostile body of a million
/// `[` costs microseconds.
pub fn nesting_depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses an invocation body: depth-checked first, then parsed by serde_json.
///
/// Numbers are parsed as `f64`/`i64`/`u64` only (no arbitrary precision), so a
/// huge literal such as `1e999999` is refused as malformed rather than parsed
/// into a big number.
pub fn parse_body(bytes: &[u8], max_depth: usize) -> Result<Value, ApiError> {
    if nesting_depth_exceeds(bytes, max_depth) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("json nesting deeper than {max_depth} levels"),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorCode::MalformedJson, format!("malformed json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shallow_documents_pass() {
        assert!(!nesting_depth_exceeds(br#"{"a": [[1], [2]]}"#, 3));
        assert!(nesting_depth_exceeds(br#"{"a": [[1], [2]]}"#, 2));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        assert!(!nesting_depth_exceeds(br#"{"a": "[[[[[[\"[[["}"#, 1));
    }

    #[test]
    fn hostile_depth_is_refused_as_bad_request() {
        let body = "[".repeat(100_000);
        let err = parse_body(body.as_bytes(), 32).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }

    #[test]
    fn malformed_and_huge_numbers_are_malformed_json() {
        assert_eq!(
            parse_body(b"{\"a\":", 32).unwrap_err().code,
            ErrorCode::MalformedJson
        );
        assert_eq!(
            parse_body(b"[1e999999]", 32).unwrap_err().code,
            ErrorCode::MalformedJson
        );
        assert_eq!(
            parse_body(b"[1, 2]", 32).unwrap(),
            serde_json::json!([1, 2])
        );
    }
}
