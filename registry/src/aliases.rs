//! Aliases: a named, mutable pointer from a function to weighted versions
//! (`live` → 90 % v3, 10 % v4). The split itself is `policies::split`.
//!
//! An alias lives in the store ([`crate::Store::put_alias`]); the registry
//! caches what it read for [`ALIAS_TTL`], so a change made through another
//! process is followed everywhere within that time (the process that makes
//! it follows at once).

use contract::tensor::Violation;
use contract::{ApiError, ErrorCode};
use policies::split::{self, Route};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The alias an invocation without `?version=` or `?alias=` uses, when set.
pub const LIVE: &str = "live";

/// How long a process trusts an alias (or its absence) that it read.
pub const ALIAS_TTL: std::time::Duration = std::time::Duration::from_millis(500);

/// A stored alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub tenant: String,
    pub function: String,
    pub name: String,
    pub routes: Vec<Route>,
    pub updated_at_ms: u64,
}

/// The body of `PUT /v1/functions/{name}/aliases/{alias}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasBody {
    #[schema(min_items = 1)]
    pub routes: Vec<RouteBody>,
}

/// One route as a client sends it; weights are read as any JSON number so a
/// negative or fractional weight gets a precise 422 rather than a parse error.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    /// An existing version of the function.
    #[schema(value_type = u32, minimum = 1)]
    pub version: serde_json::Value,
    /// Its share of calls, relative to the other routes' weights.
    #[schema(value_type = u32, maximum = 1_000_000)]
    pub weight: serde_json::Value,
}

/// An alias name: 1–64 characters, a lowercase letter, then `a-z 0-9 - _`
/// (the spelling of function names).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'))
}

pub fn check_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidInput,
            format!("alias name must be 1-64 characters, a lowercase letter then a-z 0-9 - _, got {name:?}"),
        )
        .with_details(json!([{"pointer": "", "message": "invalid alias name"}])))
    }
}

fn invalid(violations: Vec<Violation>) -> ApiError {
    let summary = violations
        .iter()
        .map(|v| format!("{}: {}", v.pointer, v.message))
        .collect::<Vec<_>>()
        .join("; ");
    ApiError::new(ErrorCode::InvalidInput, format!("invalid alias: {summary}"))
        .with_details(json!(violations))
}

/// Parses and checks an alias body's shape (not yet whether the versions
/// exist): 422 `invalid_input` with JSON pointers otherwise.
pub fn parse_body(bytes: &[u8]) -> Result<Vec<Route>, ApiError> {
    let body: AliasBody = serde_json::from_slice(bytes).map_err(|e| {
        invalid(vec![Violation::new(
            "",
            format!("expected {{\"routes\": [{{\"version\", \"weight\"}}, ...]}}: {e}"),
        )])
    })?;
    let mut routes = Vec::with_capacity(body.routes.len());
    let mut violations = Vec::new();
    for (i, route) in body.routes.iter().enumerate() {
        let version = route
            .version
            .as_u64()
            .filter(|v| *v > 0 && *v <= u64::from(u32::MAX));
        let weight = route.weight.as_u64().filter(|w| *w <= split::MAX_WEIGHT);
        if version.is_none() {
            violations.push(Violation::new(
                format!("/routes/{i}/version"),
                format!("version must be a positive integer, got {}", route.version),
            ));
        }
        if weight.is_none() {
            violations.push(Violation::new(
                format!("/routes/{i}/weight"),
                format!(
                    "weight must be an integer from 0 to {}, got {}",
                    split::MAX_WEIGHT,
                    route.weight
                ),
            ));
        }
        if let (Some(version), Some(weight)) = (version, weight) {
            routes.push(Route {
                version: version as u32,
                weight: weight as u32,
            });
        }
    }
    if !violations.is_empty() {
        return Err(invalid(violations));
    }
    check_routes(&routes)?;
    Ok(routes)
}

/// Checks routes with `policies::split::validate`, as a 422 with a pointer.
pub fn check_routes(routes: &[Route]) -> Result<(), ApiError> {
    split::validate(routes).map_err(|e| {
        let pointer = match (e.index(), &e) {
            (Some(i), split::SplitError::WeightTooLarge { .. }) => format!("/routes/{i}/weight"),
            (Some(i), _) => format!("/routes/{i}/version"),
            (None, _) => "/routes".to_string(),
        };
        invalid(vec![Violation::new(pointer, e.to_string())])
    })
}

/// 422 for routes naming versions that do not exist (`missing` holds indexes).
pub fn missing_versions(routes: &[Route], missing: &[usize]) -> ApiError {
    invalid(
        missing
            .iter()
            .map(|&i| {
                Violation::new(
                    format!("/routes/{i}/version"),
                    format!("version {} does not exist", routes[i].version),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_with_pointers() {
        let ok = parse_body(
            br#"{"routes": [{"version": 3, "weight": 90}, {"version": 4, "weight": 10}]}"#,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        for (body, pointer) in [
            (
                r#"{"routes": [{"version": 3, "weight": -1}]}"#,
                "/routes/0/weight",
            ),
            (
                r#"{"routes": [{"version": 3, "weight": 1.5}]}"#,
                "/routes/0/weight",
            ),
            (
                r#"{"routes": [{"version": 0, "weight": 1}]}"#,
                "/routes/0/version",
            ),
            (r#"{"routes": [{"version": 1, "weight": 0}]}"#, "/routes"),
            (r#"{"routes": []}"#, "/routes"),
            (
                r#"{"routes": [{"version": 1, "weight": 1}, {"version": 1, "weight": 1}]}"#,
                "/routes/1/version",
            ),
            (r#"{"routez": []}"#, ""),
        ] {
            let err = parse_body(body.as_bytes()).unwrap_err();
            assert_eq!(err.status(), 422, "{body}");
            assert_eq!(
                err.details.as_ref().unwrap()[0]["pointer"],
                pointer,
                "{body}"
            );
        }
    }

    #[test]
    fn names_follow_function_name_rules() {
        assert!(valid_name("live"));
        assert!(valid_name("canary-2"));
        assert!(!valid_name("Live"));
        assert!(!valid_name(""));
        assert!(!valid_name("2x"));
        assert!(!valid_name(&"a".repeat(65)));
    }
}
