//! The fixture of the store contract tests (`store_contract*.rs`,
//! `store_redis.rs`): a store under test on either backend, the records they
//! write, and `contract!`, which runs each contract test against both.
//!
//! A test file includes it after the Redis server it needs:
//!
//! ```ignore
//! #[path = "support/redis.rs"]
//! mod redis_support;
//! #[macro_use]
//! #[path = "support/store.rs"]
//! mod store_support;
//! use store_support::Fixture;
//! ```
#![allow(dead_code, unused_macros)]

use std::path::PathBuf;
use std::sync::Arc;

use contract::definition::{parse, Syntax};
use contract::{FunctionVersion, ModelSignature, ModelType, TensorInfo};
use serde_json::json;
use taskmesh_registry::auth::{ClientRecord, Plan, Scope};
use taskmesh_registry::{EmbeddedStore, RedisStore, Store};

use crate::redis_support::RedisServer;

/// A store under test, and what it needs to be crashed and reopened.
pub struct Fixture {
    store: Option<Arc<dyn Store>>,
    backend: Backend,
}

pub enum Backend {
    Embedded {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Redis {
        server: RedisServer,
    },
}

impl Fixture {
    pub async fn embedded() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        Fixture {
            store: Some(Arc::new(store)),
            backend: Backend::Embedded { _dir: dir, path },
        }
    }

    pub async fn redis() -> Fixture {
        let server = RedisServer::start();
        let store = RedisStore::connect(&server.url()).await.unwrap();
        Fixture {
            store: Some(Arc::new(store)),
            backend: Backend::Redis { server },
        }
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_deref().expect("store is open")
    }

    pub fn shared(&self) -> Arc<dyn Store> {
        self.store.clone().expect("store is open")
    }

    /// Ends the storage abruptly and opens it again: the embedded file is
    /// closed and reopened; the Redis server is killed with SIGKILL and
    /// restarted on the same folder (it replays its AOF).
    pub async fn crash_and_reopen(&mut self) {
        let store = self.store.take().expect("store is open");
        assert_eq!(Arc::strong_count(&store), 1, "a task still holds the store");
        match &mut self.backend {
            Backend::Embedded { path, .. } => {
                drop(store);
                self.store = Some(Arc::new(EmbeddedStore::open(path).unwrap()));
            }
            Backend::Redis { server } => {
                server.kill9();
                drop(store);
                server.restart();
                let store = RedisStore::connect(&server.url()).await.unwrap();
                self.store = Some(Arc::new(store));
            }
        }
    }
}

/// A version of function `name` in `tenant`, with floats and non-ASCII text
/// in its definition, so that a round trip through the store is exact.
pub fn record(tenant: &str, name: &str) -> FunctionVersion {
    let body = json!({
        "name": "f",
        "model": format!("sha256:{}", "0".repeat(64)),
        "description": "ünïcödé ✓ \"quoted\" \\ slash",
        "inputs": {"x": {"tensor": "x"}},
        "outputs": {"y": {"tensor": "y"}},
        "retry": {"multiplier": 1.1},
        "circuit_breaker": {"failure_rate": 0.3},
        "rate_limit": {"per_second": 0.1},
    });
    FunctionVersion {
        tenant: tenant.into(),
        name: name.into(),
        version: 0,
        created_at_ms: 1_700_000_000_123,
        definition: parse(&serde_json::to_vec(&body).unwrap(), Syntax::Json).unwrap(),
        signature: ModelSignature {
            inputs: vec![TensorInfo {
                name: "x".into(),
                dtype: ModelType::Other("bfloat16".into()),
                shape: Some(vec![-1, 4]),
            }],
            outputs: vec![],
        },
        inputs: vec![],
        outputs: vec![],
        model_size_bytes: 123_456,
        schemas: Default::default(),
    }
}

pub fn client(id: &str, tenant: &str) -> ClientRecord {
    ClientRecord {
        client_id: id.into(),
        name: format!("client {id}"),
        tenant: tenant.into(),
        scopes: vec![Scope::Admin, Scope::Invoke],
        key_sha256: "ab".repeat(32),
        plan: Plan::default(),
        created_at_ms: 42,
    }
}

pub async fn append(store: &dyn Store, tenant: &str, name: &str) -> u32 {
    store
        .append_version(record(tenant, name))
        .await
        .unwrap()
        .version
}

/// Runs each contract test (an `async fn(&mut Fixture)` in the including
/// file, next to an imported `Fixture`) against both backends, as
/// `embedded_store::<test>` and `redis_store::<test>`.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let mut fx = super::Fixture::embedded().await;
                    super::$test(&mut fx).await;
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let mut fx = super::Fixture::redis().await;
                    super::$test(&mut fx).await;
                }
            )*
        }
    };
}
