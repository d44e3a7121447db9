//! Header names of the invocation contract, shared by router and node.

use serde::{Deserialize, Serialize};

use crate::ApiError;

/// The function version that served the call.
pub const VERSION: &str = "x-taskmesh-version";
/// `true` when the call waited for an instance to load.
pub const COLD_START: &str = "x-taskmesh-cold-start";
/// One id per invocation, the same across retries.
pub const INVOCATION_ID: &str = "x-taskmesh-invocation-id";
/// The runtime node that served the call.
pub const NODE: &str = "x-taskmesh-node";
/// Router → node: the caller's tenant (internal traffic only).
pub const TENANT: &str = "x-taskmesh-tenant";
/// Node → router: the error code of a failed call (so the router can retry
/// `overloaded` elsewhere and tell the breaker what kind of failure it was).
pub const ERROR_CODE: &str = "x-taskmesh-error-code";
/// Router → node: milliseconds left of the invocation's deadline.
pub const DEADLINE_MS: &str = "x-taskmesh-deadline-ms";
/// Caller → router → node: the call's place in its function's queue.
pub const PRIORITY: &str = "x-taskmesh-priority";
/// Router → node (and registry → node): the cluster key, proof that the call
/// comes from inside the cluster. A node refuses any call without it (401).
pub const CLUSTER_KEY: &str = "x-taskmesh-cluster-key";
/// Request: the key an alias's split hashes (else the client id, else the invocation id).
pub const ROUTING_KEY: &str = "x-taskmesh-routing-key";
/// On a function with `cache`: `hit` (answered by the router from its cache)
/// or `miss` (a node answered).
pub const CACHE: &str = "x-taskmesh-cache";
/// Router → node: what the call weighs (`crate::cost`), for the node's queue
/// estimate; absent or unreadable is 1. Never taken from a caller (not in
/// [`FORWARDED_TO_NODE`]).
pub const COST: &str = "x-taskmesh-cost";

/// The cost a router passed along, within 1..=[`crate::cost::MAX_COST`].
pub fn cost(value: Option<&str>) -> u64 {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(1, |c| c.clamp(1, crate::cost::MAX_COST))
}

/// Order of service in a queue; also who is shed first when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl Priority {
    /// Reads `x-taskmesh-priority` (absent or empty means normal).
    pub fn from_header(value: Option<&str>) -> Result<Self, ApiError> {
        match value.map(str::trim) {
            None | Some("") | Some("normal") => Ok(Priority::Normal),
            Some("high") => Ok(Priority::High),
            Some("low") => Ok(Priority::Low),
            Some(other) => Err(ApiError::bad_request(format!(
                "{PRIORITY} must be high, normal or low, got {other:?}"
            ))),
        }
    }

    /// The wire spelling (`high`, `normal`, `low`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Queue order: 0 for `high`, 1 for `normal`, 2 for `low`.
    pub fn rank(self) -> u8 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

/// The caller's headers a router passes on to a node (with
/// `inference-header-content-length` of binary OIP bodies); every other one
/// is dropped, and the router adds its own (tenant, deadline, invocation id,
/// cluster key).
pub const FORWARDED_TO_NODE: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "te",
    PRIORITY,
    "traceparent",
    "tracestate",
    crate::oip::HEADER_LENGTH,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_accepts_the_three_levels_and_refuses_the_rest() {
        assert_eq!(Priority::from_header(None).unwrap(), Priority::Normal);
        assert_eq!(
            Priority::from_header(Some(" high ")).unwrap(),
            Priority::High
        );
        assert_eq!(Priority::from_header(Some("low")).unwrap(), Priority::Low);
        assert!(Priority::High > Priority::Normal && Priority::Normal > Priority::Low);
        let err = Priority::from_header(Some("urgent")).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.message.contains("urgent"));
    }
}
