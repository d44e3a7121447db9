//! The cluster backend: the state that every router, node and registry
//! process shares through one Redis (7.0 or later, standalone or a managed
//! primary; not Redis Cluster).
//!
//! - `connection`: [`RedisStore`] and [`RedisOptions`], the bounded,
//!   self-healing connection every call below goes through;
//! - [`scripts`]: the Lua scripts of the store;
//! - `store`: the registry's [`Store`](crate::Store) in Redis (its key layout
//!   and encoding);
//! - [`membership`]: the live set of runtime nodes, behind the [`Membership`]
//!   trait ([`RedisMembership`]);
//! - [`limits`]: rate limits and quotas shared by every router
//!   (`contract::ports::SharedLimits` for [`RedisStore`]);
//! - [`tasks`]: task queues on Redis Streams (`contract::task::TaskStore`).
//!
//! This module only declares and re-exports its children. Among them,
//! `connection` uses [`scripts`], and `store`, [`membership`], [`limits`] and [`tasks`]
//! use `connection`; none imports another.

mod connection;
pub mod limits;
pub mod membership;
mod pipelines;
pub mod scripts;
mod store;
pub mod tasks;

pub use connection::{
    ensure_crypto_provider, insecure_tls, RedisOptions, RedisStore, INSECURE_REFUSED,
};
pub use membership::{redacted, Membership, NodeRecord, RedisMembership, HEARTBEAT, TTL};
pub use tasks::RedisTasks;
