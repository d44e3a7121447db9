//! Unknown and invalid function names are cheap: an invalid name is never
//! looked up, an unknown one is remembered as absent for a moment, and a
//! flood of invented names costs a bounded number of store reads a second.

#[path = "support/redis.rs"]
mod redis_support;
#[path = "support/store.rs"]
mod store_support;

use std::sync::Arc;
use std::time::Duration;

use contract::processing::TextSpec;
use contract::{ErrorCode, ModelInspector, ModelSignature, Qualifier};
use store_support::append;
use taskmesh_registry::{EmbeddedStore, ModelStore, Registry, Store};

struct NoInspector;

impl ModelInspector for NoInspector {
    fn inspect(&self, _bytes: &[u8]) -> Result<ModelSignature, String> {
        Err("not used".into())
    }

    fn check_tokenizer(&self, _bytes: &[u8], _text: &TextSpec) -> Result<(), String> {
        Err("not used".into())
    }
}

#[tokio::test]
async fn invented_names_cost_a_bounded_number_of_store_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("db.redb")).unwrap());
    let registry = Registry::new(
        store.clone(),
        ModelStore::open(dir.path().join("models")).unwrap(),
        Arc::new(NoInspector),
    );
    let resolve = |name: String| {
        let registry = &registry;
        async move {
            registry
                .resolve("default", &name, &Qualifier::Default)
                .await
        }
    };
    // Not a name at all: 404 without a lookup (8 KB, upper case, slashes).
    for name in [
        "x".repeat(8192),
        "Digits".into(),
        "a/b".into(),
        String::new(),
    ] {
        let err = resolve(name).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
    }
    // Spend this second's budget on invented names (each costs an alias read
    // and a latest-version read).
    let mut codes = Vec::new();
    for i in 0..400 {
        codes.push(resolve(format!("invented-{i}")).await.unwrap_err().code);
    }
    assert_eq!(codes[0], ErrorCode::NotFound);
    // Past the budget, no read: 503 with retry-after, never a guess.
    assert_eq!(codes[399], ErrorCode::Unavailable);
    // A function registered behind this process's back (another registry on
    // the same store) is not looked up while the budget is spent...
    append(store.as_ref(), "default", "real").await;
    let err = resolve("real".into()).await.unwrap_err();
    assert_eq!(
        (err.code, err.retry_after_s),
        (ErrorCode::Unavailable, Some(1))
    );
    // ...and is found once the second renews.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let found = resolve("real".into()).await.unwrap();
    assert_eq!((found.name.as_str(), found.version), ("real", 1));
}
