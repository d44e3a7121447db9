//! The registry: the control plane's state. Versioned function records and
//! their stores (embedded redb, or Redis in cluster mode), the
//! content-addressed model store, clients and keys, aliases and rollouts, and
//! the admin HTTP API. It implements the data plane's ports
//! (`contract::ports`): `Catalog` (`Registry`), `Authenticator` (`Auth`),
//! `Counters` (`StoreCounters`), `Blobs` (`ModelStore`) and, in cluster mode,
//! `SharedLimits` (`RedisStore`).
//!
//! # Module dependencies
//!
//! Each module imports only from modules above it (no cycles; checked by
//! `scripts/check-layers.py`). This root only declares and re-exports (the
//! `crate::DEFAULT_TENANT` and `crate::Qualifier` that modules name are
//! `contract`'s).
//!
//! 1. `clients`, `aliases`, `rollouts`, `models`: records and the model store,
//!    and `cache` (bounded read caches, a budget for unknown keys; no
//!    `crate::` imports);
//! 2. `store`: the `Store` trait, `StoreError`, `StoreCounters` (the records
//!    of `aliases`, `clients`, `rollouts`);
//! 3. `store::embedded`: the redb backend (`store`);
//! 4. `cluster::scripts`; `cluster::connection` (`scripts`, `store`); then
//!    `cluster::store`, `cluster::membership` and `cluster::limits`
//!    (`connection`, `store`; `cluster::store` also the records);
//!    `cluster` re-exports them;
//! 5. `auth` (`cache`, `clients`, `store`) and `service` (`aliases`, `cache`,
//!    `models`, `store`);
//! 6. `rollout_driver::metrics` (`rollouts`); `rollout_driver` (`metrics`,
//!    `service`, `store`, `rollouts`); `rollout_driver::operations` and
//!    `::driver` (`rollout_driver`, `store`, `rollouts`, `aliases`);
//! 7. `wire` (the API's response types: `aliases`, `clients`, `rollouts`,
//!    `store`); `openapi` (the API's document: `wire`, `auth`, `aliases`,
//!    `rollout_driver`);
//! 8. `api` (`auth`, `service`, `rollout_driver`, `store`, `aliases`, `wire`,
//!    `openapi`).

pub mod aliases;
pub mod api;
pub mod auth;
pub mod cache;
pub mod clients;
pub mod cluster;
pub mod models;
pub mod openapi;
pub mod rollout_driver;
pub mod rollouts;
pub mod service;
pub mod store;
pub mod wire;

pub use auth::Auth;
pub use cluster::{RedisOptions, RedisStore};
pub use contract::{Principal, Qualifier, Scope, DEFAULT_TENANT};
pub use models::{ModelRemote, ModelStore};
pub use service::Registry;
pub use store::embedded::EmbeddedStore;
pub use store::tasks::EmbeddedTasks;
pub use store::{FunctionSummary, Store, StoreCounters, StoreError};
