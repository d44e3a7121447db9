//! The model store with a remote: a real S3-compatible server (moto) and a
//! shared folder (`file://`), each behind two local caches that stand for two
//! processes on different machines.

#[path = "support/moto.rs"]
mod moto_support;

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;

use contract::definition::Syntax;
use contract::processing::TextSpec;
use contract::{ModelInspector, ModelSignature};
use moto_support::MotoServer;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::json;
use taskmesh_registry::models::sha256_hex;
use taskmesh_registry::{EmbeddedStore, ModelRemote, ModelStore, Registry};

/// A remote under test, and how to write behind the store's back.
enum Remote {
    S3 {
        server: MotoServer,
        bucket: String,
        prefix: String,
    },
    Folder {
        dir: tempfile::TempDir,
    },
}

impl Remote {
    fn s3() -> Remote {
        let server = MotoServer::start();
        server.create_bucket("models-bucket");
        Remote::S3 {
            server,
            bucket: "models-bucket".into(),
            prefix: "cluster/a".into(),
        }
    }

    fn folder() -> Remote {
        Remote::Folder {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn url(&self) -> String {
        match self {
            Remote::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
            Remote::Folder { dir } => format!("file://{}", dir.path().display()),
        }
    }

    /// A fresh handle on the remote, as another process would open it.
    fn open(&self) -> ModelRemote {
        match self {
            Remote::S3 { server, .. } => ModelRemote::from_url_with(
                &self.url(),
                [
                    ("AWS_ENDPOINT_URL", server.endpoint()),
                    ("AWS_ACCESS_KEY_ID", "test".to_string()),
                    ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
                ],
            )
            .unwrap(),
            Remote::Folder { .. } => ModelRemote::from_url(&self.url()).unwrap(),
        }
    }

    /// A signed S3 client of the bucket, as another program would use.
    fn s3_client(server: &MotoServer, bucket: &str) -> object_store::aws::AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(server.endpoint())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap()
    }

    /// Whether object `key` (relative to the prefix) exists.
    async fn exists(&self, key: &str) -> bool {
        match self {
            Remote::S3 {
                server,
                bucket,
                prefix,
            } => {
                let path = ObjectPath::from(format!("{prefix}/{key}"));
                match Self::s3_client(server, bucket).head(&path).await {
                    Ok(_) => true,
                    Err(object_store::Error::NotFound { .. }) => false,
                    Err(e) => panic!("head {key}: {e}"),
                }
            }
            Remote::Folder { dir } => dir.path().join(key).is_file(),
        }
    }

    /// Writes `bytes` as object `key` (relative to the prefix) directly.
    async fn write_behind(&self, key: &str, bytes: &[u8]) {
        match self {
            Remote::S3 {
                server,
                bucket,
                prefix,
            } => {
                let s3 = Self::s3_client(server, bucket);
                let path = ObjectPath::from(format!("{prefix}/{key}"));
                s3.put(&path, PutPayload::from(bytes.to_vec()))
                    .await
                    .unwrap();
            }
            Remote::Folder { dir } => {
                let path = dir.path().join(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
        }
    }

    /// A model store whose cache is `cache`.
    fn store(&self, cache: &Path) -> ModelStore {
        ModelStore::open_with_remote(cache.join("models"), self.open()).unwrap()
    }
}

/// The files in `dir` (none when it does not exist).
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn uploads_through_one_cache_are_fetched_through_another(remote: Remote) {
    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = remote.store(cache_a.path());
    let b = remote.store(cache_b.path());
    assert_eq!(a.remote_url(), Some(remote.url().as_str()));

    let model = b"pretend this is an onnx model".repeat(1000);
    let hex = a.put(&model).await.unwrap();
    assert_eq!(hex, sha256_hex(&model));
    assert!(a.contains(&hex));
    assert!(remote.exists(&format!("models/sha256-{hex}.onnx")).await);

    // B has nothing locally, yet knows the model and its size.
    assert!(!b.contains(&hex));
    assert_eq!(b.size_of(&hex), None);
    assert_eq!(b.stat(&hex).await.unwrap(), Some(model.len() as u64));
    // Reading it fetches, checks and caches it.
    assert_eq!(b.get(&hex).await.unwrap(), model);
    assert!(b.contains(&hex));
    assert_eq!(b.size_of(&hex), Some(model.len() as u64));
    assert_eq!(std::fs::read(b.path_of(&hex)).unwrap(), model);
    assert_eq!(b.get(&hex).await.unwrap(), model);
    assert_eq!(
        files_in(b.dir()),
        vec![format!("sha256-{hex}.onnx")],
        "only the model, no temporary files"
    );

    // Artifacts travel the same way, in their own folder.
    let tokenizer = br#"{"version": "1.0", "model": {}}"#;
    let tok = a.artifacts().put(tokenizer).await.unwrap();
    assert!(remote.exists(&format!("artifacts/sha256-{tok}")).await);
    assert_eq!(b.artifacts().get(&tok).await.unwrap(), tokenizer);
    assert_eq!(
        b.artifacts().path_of(&tok),
        cache_b
            .path()
            .join("artifacts")
            .join(format!("sha256-{tok}"))
    );
    assert_eq!(
        b.stat(&tok).await.unwrap(),
        None,
        "an artifact is not a model"
    );
    assert_eq!(b.artifacts().stat(&hex).await.unwrap(), None);

    // A digest stored nowhere.
    let missing = sha256_hex(b"never uploaded");
    assert_eq!(b.stat(&missing).await.unwrap(), None);
    assert_eq!(
        b.get(&missing).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(files_in(b.dir()).iter().all(|f| !f.contains(&missing)));
    assert_eq!(
        b.get("../etc").await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

async fn a_corrupt_remote_object_is_an_error_and_never_cached(remote: Remote) {
    let cache = tempfile::tempdir().unwrap();
    let store = remote.store(cache.path());
    let good = b"the real model";
    let hex = sha256_hex(good);
    remote
        .write_behind(&format!("models/sha256-{hex}.onnx"), b"the real modeL")
        .await;

    let err = store.get(&hex).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(!store.contains(&hex));
    assert!(
        files_in(store.dir()).is_empty(),
        "nothing was cached: {:?}",
        files_in(store.dir())
    );

    // Once the right bytes are stored, the same digest reads fine.
    remote
        .write_behind(&format!("models/sha256-{hex}.onnx"), good)
        .await;
    assert_eq!(store.get(&hex).await.unwrap(), good);
    assert!(store.contains(&hex));
}

async fn a_corrupt_cached_copy_is_fetched_again(remote: Remote) {
    let cache = tempfile::tempdir().unwrap();
    let store = remote.store(cache.path());
    let hex = store.put(b"model bytes").await.unwrap();
    std::fs::write(store.path_of(&hex), b"model bytez").unwrap();
    assert_eq!(store.get(&hex).await.unwrap(), b"model bytes");
    assert_eq!(std::fs::read(store.path_of(&hex)).unwrap(), b"model bytes");
}

async fn put_uploads_what_only_the_cache_had(remote: Remote) {
    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Stored while the process ran without a remote.
    let local = ModelStore::open(cache_a.path().join("models")).unwrap();
    let hex = local.put(b"older model").await.unwrap();
    let b = remote.store(cache_b.path());
    assert_eq!(b.stat(&hex).await.unwrap(), None);
    // Storing it again with the remote uploads it.
    let a = remote.store(cache_a.path());
    assert_eq!(a.put(b"older model").await.unwrap(), hex);
    assert_eq!(b.get(&hex).await.unwrap(), b"older model");
}

/// Reads every model as one float32 input `x` [-1, 4] and one output `y` [-1, 1].
struct FakeInspector;

impl ModelInspector for FakeInspector {
    fn inspect(&self, _bytes: &[u8]) -> Result<ModelSignature, String> {
        Ok(serde_json::from_value(json!({
            "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 1]}],
        }))
        .unwrap())
    }

    fn check_tokenizer(&self, _bytes: &[u8], _text: &TextSpec) -> Result<(), String> {
        Err("no text inputs here".into())
    }
}

async fn a_model_uploaded_through_one_registry_registers_through_another(remote: Remote) {
    let (cache_a, cache_b, db) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let store = Arc::new(EmbeddedStore::open(&db.path().join("r.redb")).unwrap());
    let a = Registry::new(
        store.clone(),
        remote.store(cache_a.path()),
        Arc::new(FakeInspector),
    );
    let b = Registry::new(store, remote.store(cache_b.path()), Arc::new(FakeInspector));
    // Well-formed protobuf (the registry refuses anything else before the
    // inspector is asked): field 1 (ir_version) = 8, then a 4 KiB doc_string.
    let mut model = vec![0x08, 0x08, 0x32, 0x80, 0x20];
    model.extend(std::iter::repeat_n(b'x', 4096));
    let digest = a.upload_model(&model).await.unwrap();
    let definition = json!({
        "name": "shared",
        "model": digest,
        "inputs": {"x": {"tensor": "x"}},
        "outputs": {"y": {"tensor": "y"}},
    });
    let version = b
        .register(
            "default",
            &serde_json::to_vec(&definition).unwrap(),
            Syntax::Json,
        )
        .await
        .unwrap();
    assert_eq!(version.version, 1);
    assert_eq!(version.model_size_bytes, model.len() as u64);
    // A digest that no remote has is still refused as not uploaded.
    let unknown = json!({
        "name": "shared",
        "model": format!("sha256:{}", sha256_hex(b"nothing")),
        "inputs": {"x": {"tensor": "x"}},
        "outputs": {"y": {"tensor": "y"}},
    });
    let err = b
        .register(
            "default",
            &serde_json::to_vec(&unknown).unwrap(),
            Syntax::Json,
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("has not been uploaded"), "{err}");
}

/// Runs each test against moto's S3 and against a shared folder.
macro_rules! against_both {
    ($($test:ident),* $(,)?) => {
        mod s3 {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Remote::s3()).await;
                }
            )*
        }
        mod shared_folder {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Remote::folder()).await;
                }
            )*
        }
    };
}

against_both!(
    uploads_through_one_cache_are_fetched_through_another,
    a_corrupt_remote_object_is_an_error_and_never_cached,
    a_corrupt_cached_copy_is_fetched_again,
    put_uploads_what_only_the_cache_had,
    a_model_uploaded_through_one_registry_registers_through_another,
);

#[test]
fn remote_urls_are_checked() {
    for bad in [
        "http://bucket/x",
        "s3://",
        "s3:///prefix",
        "file://relative/path",
        "",
    ] {
        let err = ModelRemote::from_url(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}: {err}");
    }
    let err = ModelRemote::from_url_with("s3://bucket", [("AWS_NOT_A_SETTING", "x")]).unwrap_err();
    assert!(err.to_string().contains("AWS_NOT_A_SETTING"), "{err}");
}
