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

/// Cap on an uploaded artifact (for example a tokenizer.json).
pub const MAX_ARTIFACT_BYTES: usize = 64 * 1024 * 1024;

/// Longest text in one text input, in UTF-8 bytes (checked before tokenizing).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Most texts or images one input field may carry as an array (a batch).
pub const MAX_BATCH_ITEMS: usize = 64;

/// Largest encoded image in one image input, after base64 decoding.
pub const MAX_IMAGE_BYTES: usize = 16 * 1024 * 1024;

/// Widest and tallest image decoded, read from its header before decoding.
pub const MAX_IMAGE_SIDE: u32 = 4096;

/// Memory the image decoder may allocate for one image.
pub const MAX_IMAGE_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// Largest `max_length` a text input may declare, in tokens.
pub const MAX_TOKENS: usize = 8192;
