//! The registry: the control plane's state. Versioned function records and
//! their stores (embedded redb, or Redis in cluster mode), the
//! content-addressed model store, clients and keys, aliases and rollouts, and
//! the admin HTTP API. It implements the data plane's ports
//! (`contract::ports`): `Catalog` (`Registry`), `Authenticator` (`Auth`),
//! `Counters` (`StoreCounters`), `Blobs` (`ModelStore`) and, in cluster mode,
//! `SharedLimits` (`RedisStore`).

pub mod aliases;
pub mod api;
pub mod auth;
pub mod clients;
pub mod membership;
pub mod models;
pub mod redis_limits;
pub mod redis_store;
pub mod rollout_driver;
pub mod rollouts;
pub mod service;
pub mod store;

pub use auth::Auth;
pub use contract::{Principal, Qualifier, Scope, DEFAULT_TENANT};
pub use models::{ModelRemote, ModelStore};
pub use redis_store::{RedisOptions, RedisStore};
pub use service::Registry;
pub use store::{EmbeddedStore, FunctionSummary, Store, StoreCounters, StoreError};
