//! The runtime node: loads function versions into ONNX Runtime sessions and
//! serves invocations over HTTP/2 for the router.

pub mod batch;
pub mod engine;
pub mod metrics;
pub mod ortenv;
pub mod prepost;
pub mod server;
pub mod session;

pub use engine::Engine;
pub use session::OrtInspector;
