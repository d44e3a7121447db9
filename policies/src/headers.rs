//! Header names of the invocation contract, shared by router and node.

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
