//! Explicit limits of the platform, in one place so they are documented once.
//!
//! Every number here is also listed in the README's "Limits" table.

/// Default cap on an invocation body, checked before any parsing.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Deepest JSON nesting accepted in an invocation body (objects and arrays).
pub const MAX_JSON_DEPTH: usize = 32;

/// Cap on an uploaded ONNX model.
pub const MAX_MODEL_BYTES: usize = 512 * 1024 * 1024;

/// Cap on a task definition document.
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;

/// Most elements a single input tensor may hold.
pub const MAX_TENSOR_ELEMENTS: usize = 4 * 1024 * 1024;

/// HTTP/2: concurrent streams a client may open on one connection.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// HTTP/2: largest header list a client may send (bytes, as HPACK counts them).
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// HTTP/2: initial stream flow-control window.
pub const H2_INITIAL_STREAM_WINDOW_BYTES: u32 = 1024 * 1024;

/// HTTP/2: initial connection flow-control window.
pub const H2_INITIAL_CONNECTION_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

/// Streams the router multiplexes on one upstream h2c connection to a node.
pub const UPSTREAM_MAX_H2_STREAMS: usize = 100;
