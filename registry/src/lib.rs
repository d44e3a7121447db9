//! The registry: versioned task definitions, the content-addressed model store,
//! storage backends and the admin HTTP API.

pub mod aliases;
pub mod api;
pub mod auth;
pub mod definition;
pub mod membership;
pub mod models;
pub mod processing;
pub mod protocol;
pub mod redis_limits;
pub mod redis_store;
pub mod rollout_driver;
pub mod rollouts;
pub mod schema;
pub mod service;
pub mod store;
pub mod version;

pub use auth::{Auth, Principal, Scope};
pub use definition::{Take, TaskDefinition};
pub use models::{ModelRemote, ModelStore};
pub use redis_store::{RedisOptions, RedisStore};
pub use service::{Qualifier, Registry, DEFAULT_TENANT};
pub use store::{EmbeddedStore, FunctionSummary, Store, StoreError};
pub use version::{
    FunctionVersion, InputBinding, InputSource, ModelInspector, ModelSignature, ModelType,
    OutputBinding, TensorInfo,
};
