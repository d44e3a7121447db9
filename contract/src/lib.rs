//! The function contract: what a function is and how it is called.
//!
//! Everything the router, the node and the registry must agree on lives here,
//! and nothing else: the definition format and its checks, versions bound to a
//! model's signature, input and output schemas, the JSON and Open Inference
//! Protocol mappings, the cheap per-request checks of text and image fields,
//! the error type with its one status table, the header names and the limits.
//!
//! The crate does no I/O. Where the router and the node need data that the
//! registry keeps (versions, keys, counters, model bytes), they ask through the
//! traits in [`ports`], which the registry's stores implement; so the data
//! plane never links a storage engine.
//!
//! Layering (each module uses only those above it):
//! `error`, `limits`, `names`, `onnx`, `cluster_key` → `openapi`, `tensor`, `json`,
//! `headers` → `signature` → `processing` (one module per input or output
//! kind) → `definition` → `schema` → `version` → `protocol` → `principal`,
//! `qualifier` → `pipeline` (multi-step graphs) → `task` (asynchronous invocations and their store port) →
//! `ports` → `http` (feature `axum`).

pub mod cache;
pub mod cluster_key;
pub mod connections;
pub mod cost;
pub mod definition;
pub mod error;
pub mod grpc;
pub mod headers;
#[cfg(feature = "axum")]
pub mod http;
pub mod json;
pub mod limits;
pub mod measure;
pub mod names;
pub mod oip;
pub mod onnx;
pub mod openapi;
pub mod pipeline;
pub mod ports;
pub mod principal;
pub mod processing;
pub mod protocol;
pub mod qualifier;
pub mod scaling;
pub mod schema;
pub mod signature;
pub mod task;
pub mod tensor;
pub mod version;

pub use cluster_key::ClusterKey;
pub use definition::{Take, TaskDefinition};
pub use error::{ApiError, ErrorCode};
pub use ports::ModelInspector;
pub use principal::{Plan, Principal, Scope};
pub use qualifier::{Qualifier, DEFAULT_TENANT};
pub use signature::{InputBinding, InputSource, ModelSignature, ModelType, TensorInfo};
pub use version::{FunctionVersion, OutputBinding};
