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

/// Connections one listener (the router's plain or TLS one, a node's, the
/// admin API's) keeps open at once, and from one peer address; past these a
/// new connection is refused at once (the router answers it 503 `overloaded`
/// first, on HTTP/1.1).
pub const MAX_CONNECTIONS: usize = 4096;
pub const MAX_CONNECTIONS_PER_PEER: usize = 256;

/// A connection that sends no byte within this is closed (silent sockets).
pub const FIRST_BYTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// HTTP/1.1: a request's line and headers must arrive within this, counted
/// from their first byte (slow headers).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// HTTP/1.1: the most bytes of request line and headers; past this the
/// router answers 431 `headers_too_large` (the header list cap plus room for
/// a long request line).
pub const MAX_REQUEST_HEAD_BYTES: usize = H2_MAX_HEADER_LIST_BYTES as usize + 8 * 1024;

/// An idle connection (HTTP/1.1 between requests, HTTP/2 with no stream
/// open) is closed after this.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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

/// Memory the image decoder may allocate for one image (the `image` crate's
/// allocation limit, a second line of defence), and the highest
/// `max_decoded_bytes` an image input may declare.
pub const MAX_IMAGE_DECODE_BYTES: u64 = 256 * 1024 * 1024;

/// Cap on one image's decoded size (width × height × channels × bytes per
/// sample, read from its header before any pixel is decoded) for an image
/// input that declares no `resize` and no `max_decoded_bytes`; also the floor
/// of the cap derived from `resize`. It admits a 12-megapixel 8-bit RGB photo
/// (36 MiB) and refuses a 4096×4096 16-bit RGBA one (128 MiB).
pub const DEFAULT_IMAGE_DECODED_BYTES: u64 = 48 * 1024 * 1024;

/// With `resize: [h, w]` (and no `max_decoded_bytes`), an image may decode to
/// this many times the resized image's RGBA 8-bit bytes (`h × w × 4`), but
/// never less than [`DEFAULT_IMAGE_DECODED_BYTES`] nor more than
/// [`MAX_IMAGE_DECODE_BYTES`].
pub const IMAGE_DECODED_PER_RESIZED: u64 = 16;

/// The node's memory budget for decoded images in flight, when not set: this
/// fraction (1/N) of the instance memory budget (`--memory-budget-mb`), and
/// never less than [`MAX_IMAGE_DECODE_BYTES`].
pub const PREPROCESS_MEMORY_DIVISOR: u64 = 4;

/// Calls waiting on one node for a place to be pre-processed (tokenized,
/// images decoded); past this a call gets 503 `overloaded`.
pub const MAX_PREPROCESS_WAITING: usize = 1024;

/// Largest `max_length` a text input may declare, in tokens.
pub const MAX_TOKENS: usize = 8192;
