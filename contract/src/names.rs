//! The spelling of names and digests, and JSON pointer escaping.

/// [`valid_name`] as a regular expression (for the OpenAPI documents).
pub const NAME_PATTERN: &str = "^[a-z][a-z0-9_-]{0,63}$";

/// Whether a name (function, alias or tenant) is acceptable in a URL path
/// segment and a store key: a lowercase letter, then up to 63 of `a-z 0-9 - _`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Whether `digest` is `sha256:` followed by 64 lowercase hex digits.
pub fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Escapes a field name for a JSON pointer segment (RFC 6901).
pub fn escape(field: &str) -> String {
    field.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_digests_are_checked() {
        assert!(valid_name("digits"));
        assert!(valid_name("a-b_c9"));
        assert!(!valid_name("9a"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("Live"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(valid_name(&"a".repeat(64)));
        let pattern = jsonschema::validator_for(
            &serde_json::json!({"type": "string", "pattern": NAME_PATTERN}),
        )
        .unwrap();
        let long = "a".repeat(64);
        let longer = "a".repeat(65);
        for name in [
            "digits", "a-b_c9", "9a", "", "a/b", "Live", "a\n", &long, &longer,
        ] {
            assert_eq!(
                pattern.is_valid(&serde_json::json!(name)),
                valid_name(name),
                "{name:?}"
            );
        }
        assert!(valid_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!valid_digest("sha256:ABC"));
    }

    #[test]
    fn pointer_segments_are_escaped() {
        assert_eq!(escape("a/b~c"), "a~1b~0c");
    }
}
