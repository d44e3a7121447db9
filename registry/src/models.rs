//! Content-addressed file stores: each model or artifact is a file named by its sha256.
//!
//! # Remote (cluster mode)
//!
//! A store opened with [`ModelStore::open_with_remote`] keeps every file in a
//! shared remote as well, and its local folder becomes a cache:
//! - `s3://bucket/prefix`: S3 or an S3-compatible server, through
//!   [`object_store`]. Credentials, region and endpoint come from the usual
//!   `AWS_*` environment variables ([`AmazonS3Builder::from_env`]), then from
//!   [`ModelRemote::from_url_with`]'s overrides. `AWS_ENDPOINT_URL` points at a
//!   non-AWS server (plain `http://` is allowed when the endpoint says so), and
//!   the region defaults to `us-east-1`.
//! - `file:///path`: a folder shared between processes (NFS, a volume).
//!
//! Objects are `<prefix>/models/sha256-<hex>.onnx` and
//! `<prefix>/artifacts/sha256-<hex>`. [`ModelStore::put`] writes the local
//! file and the object (unless the object is already there). [`ModelStore::get`]
//! reads the local copy, or fetches the object, checks that its bytes hash to
//! the digest, and only then caches it (a temporary file renamed into place).
//! An object that does not match its digest is an `InvalidData` error and is
//! never cached; a cached copy that no longer matches is fetched again.
//! [`ModelStore::stat`] says whether a digest is stored, locally or remotely.
//! The synchronous [`ModelStore::size_of`] and [`ModelStore::contains`] look at
//! the local cache only.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};

/// A folder of `sha256-<hex>.onnx` files (models), or of `sha256-<hex>` files
/// (artifacts such as tokenizer.json, in the sibling folder `artifacts/`).
/// Writes go to a temporary file in the same folder and are renamed into
/// place, so a reader never sees half a file. With a remote, the folder is a
/// cache of the remote (see the module documentation).
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
    suffix: &'static str,
    remote: Option<Remote>,
}

/// Where a [`ModelStore`] keeps its files besides its local folder.
#[derive(Debug, Clone)]
pub struct ModelRemote {
    store: Arc<dyn ObjectStore>,
    /// The prefix inside the bucket or folder (may be empty).
    prefix: ObjectPath,
    /// The URL it was opened from, for messages (these URLs hold no secrets).
    url: String,
}

/// A store's remote and its folder in it (`models` or `artifacts`).
#[derive(Debug, Clone)]
struct Remote {
    remote: ModelRemote,
    folder: ObjectPath,
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ModelRemote {
    /// Opens `file:///path` or `s3://bucket/prefix`, with S3 settings from the
    /// environment.
    pub fn from_url(url: &str) -> std::io::Result<Self> {
        Self::from_url_with(url, std::iter::empty::<(String, String)>())
    }

    /// Like [`ModelRemote::from_url`], with S3 settings in `overrides` taking
    /// precedence over the environment. They use the environment's names
    /// (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, …); a name that is not an S3 setting is an error.
    pub fn from_url_with<K, V>(
        url: &str,
        overrides: impl IntoIterator<Item = (K, V)>,
    ) -> std::io::Result<Self>
    where
        K: AsRef<str>,
        V: Into<String>,
    {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid_url(url, "a file URL needs an absolute path"));
            }
            std::fs::create_dir_all(path)?;
            let store = LocalFileSystem::new_with_prefix(path).map_err(|e| remote_error(url, e))?;
            return Ok(ModelRemote {
                store: Arc::new(store),
                prefix: ObjectPath::default(),
                url: url.to_string(),
            });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(invalid_url(
                url,
                "expected file:///path or s3://bucket/prefix",
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid_url(url, "the bucket is missing"));
        }
        let mut builder = AmazonS3Builder::from_env();
        for (key, value) in overrides {
            let name = key.as_ref();
            let config: AmazonS3ConfigKey = name.to_ascii_lowercase().parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{name} is not an S3 setting"),
                )
            })?;
            builder = builder.with_config(config, value);
        }
        builder = builder.with_bucket_name(bucket);
        if builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        if builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .is_some_and(|e| e.starts_with("http://"))
        {
            builder = builder.with_allow_http(true);
        }
        // A node waiting for a model gives up after 15 s, not after minutes.
        builder = builder.with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(15),
            ..RetryConfig::default()
        });
        let store = builder.build().map_err(|e| remote_error(url, e))?;
        Ok(ModelRemote {
            store: Arc::new(store),
            prefix: ObjectPath::from(prefix),
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Names temporary files uniquely within the process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ModelStore {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(ModelStore {
            dir,
            suffix: ".onnx",
            remote: None,
        })
    }

    /// A model store whose folder `dir` caches `remote` (cluster mode). Its
    /// [`ModelStore::artifacts`] use the same remote.
    pub fn open_with_remote(dir: impl Into<PathBuf>, remote: ModelRemote) -> std::io::Result<Self> {
        let mut store = Self::open(dir)?;
        store.remote = Some(Remote {
            folder: remote.prefix.clone().join("models"),
            remote,
        });
        Ok(store)
    }

    /// The artifact store beside this model store: `<models>/../artifacts`,
    /// created on the first upload (and `<prefix>/artifacts` in the remote).
    pub fn artifacts(&self) -> ModelStore {
        let dir = match self.dir.parent() {
            Some(parent) => parent.join("artifacts"),
            None => self.dir.join("artifacts"),
        };
        ModelStore {
            dir,
            suffix: "",
            remote: self.remote.as_ref().map(|r| Remote {
                folder: r.remote.prefix.clone().join("artifacts"),
                remote: r.remote.clone(),
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The remote's URL, when there is one.
    pub fn remote_url(&self) -> Option<&str> {
        self.remote.as_ref().map(|r| r.remote.url.as_str())
    }

    fn file_name(&self, hex: &str) -> String {
        format!("sha256-{hex}{}", self.suffix)
    }

    /// Path of the model with this hex digest (whether or not it exists).
    pub fn path_of(&self, hex: &str) -> PathBuf {
        self.dir.join(self.file_name(hex))
    }

    /// Size in bytes of a model in the local folder, if there.
    pub fn size_of(&self, hex: &str) -> Option<u64> {
        if !is_hex_digest(hex) {
            return None;
        }
        std::fs::metadata(self.path_of(hex)).ok().map(|m| m.len())
    }

    /// Whether the local folder holds this digest.
    pub fn contains(&self, hex: &str) -> bool {
        is_hex_digest(hex) && self.path_of(hex).is_file()
    }

    /// The size of a stored digest, from the local folder or else the remote;
    /// `None` when it is stored in neither.
    pub async fn stat(&self, hex: &str) -> std::io::Result<Option<u64>> {
        if !is_hex_digest(hex) {
            return Ok(None);
        }
        match tokio::fs::metadata(self.path_of(hex)).await {
            Ok(meta) => return Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        match remote.remote.store.head(&remote.object(self, hex)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_error(&remote.remote.url, e)),
        }
    }

    /// Stores `bytes` and returns their hex digest; storing the same bytes
    /// again is a no-op. With a remote, the bytes are uploaded unless the
    /// remote already has them.
    pub async fn put(&self, bytes: &[u8]) -> std::io::Result<String> {
        let hex = sha256_hex(bytes);
        let path = self.path_of(&hex);
        if !tokio::fs::try_exists(&path).await? {
            self.write_local(&hex, bytes).await?;
        }
        if let Some(remote) = &self.remote {
            let object = remote.object(self, &hex);
            let store = &remote.remote.store;
            match store.head(&object).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => {
                    store
                        .put(&object, PutPayload::from(bytes.to_vec()))
                        .await
                        .map_err(|e| remote_error(&remote.remote.url, e))?;
                }
                Err(e) => return Err(remote_error(&remote.remote.url, e)),
            }
        }
        Ok(hex)
    }

    /// Writes `bytes` as the local file of `hex`: a temporary file, synced,
    /// then renamed into place (replacing any file there).
    async fn write_local(&self, hex: &str, bytes: &[u8]) -> std::io::Result<()> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let tmp = self.dir.join(format!(
            ".upload-{hex}-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = async {
            tokio::fs::write(&tmp, bytes).await?;
            let file = tokio::fs::File::open(&tmp).await?;
            file.sync_all().await?;
            tokio::fs::rename(&tmp, self.path_of(hex)).await
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        written
    }

    /// Reads the model with this hex digest, verifying the bytes still hash to
    /// it. With a remote, a digest missing from the local folder (or corrupt
    /// there) is fetched, checked and cached.
    pub async fn get(&self, hex: &str) -> std::io::Result<Vec<u8>> {
        check_digest(hex)?;
        match tokio::fs::read(self.path_of(hex)).await {
            Ok(bytes) if sha256_hex(&bytes) == hex => return Ok(bytes),
            Ok(_) if self.remote.is_some() => {
                tracing::warn!(digest = %hex, dir = %self.dir.display(), "cached copy is corrupt; fetching it again");
            }
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("sha256:{hex} is corrupt on disk"),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.remote.is_some() => {}
            Err(e) => return Err(e),
        }
        let remote = self.remote.as_ref().expect("checked above");
        let url = &remote.remote.url;
        let object = remote.object(self, hex);
        let bytes = match remote.remote.store.get(&object).await {
            Ok(result) => result.bytes().await.map_err(|e| remote_error(url, e))?,
            Err(e) => return Err(remote_error(url, e)),
        };
        let got = sha256_hex(&bytes);
        if got != hex {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("sha256:{hex} in {url} is corrupt: its bytes hash to sha256:{got}"),
            ));
        }
        self.write_local(hex, &bytes).await?;
        Ok(bytes.to_vec())
    }
}

#[async_trait::async_trait]
impl contract::ports::Blobs for ModelStore {
    async fn get(&self, hex: &str) -> std::io::Result<Vec<u8>> {
        ModelStore::get(self, hex).await
    }

    fn size_of(&self, hex: &str) -> Option<u64> {
        ModelStore::size_of(self, hex)
    }
}

impl Remote {
    fn object(&self, store: &ModelStore, hex: &str) -> ObjectPath {
        self.folder.clone().join(store.file_name(hex))
    }
}

fn check_digest(hex: &str) -> std::io::Result<()> {
    if is_hex_digest(hex) {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid digest {hex:?}"),
        ))
    }
}

fn invalid_url(url: &str, why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("invalid model store URL {url:?}: {why}"),
    )
}

/// An object store error as an I/O error that names the remote.
fn remote_error(url: &str, e: object_store::Error) -> std::io::Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, format!("model store {url}: {e}"))
}

fn is_hex_digest(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_bytes_same_digest_and_readback() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path()).unwrap();
        let a = store.put(b"model bytes").await.unwrap();
        let b = store.put(b"model bytes").await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a, sha256_hex(b"model bytes"));
        assert!(store.contains(&a));
        assert_eq!(store.get(&a).await.unwrap(), b"model bytes");
        assert!(store.get("../../etc/passwd").await.is_err());
    }

    #[tokio::test]
    async fn artifacts_live_in_a_sibling_folder() {
        let dir = tempfile::tempdir().unwrap();
        let models = ModelStore::open(dir.path().join("models")).unwrap();
        let artifacts = models.artifacts();
        let hex = artifacts.put(b"{}").await.unwrap();
        assert!(artifacts.contains(&hex));
        assert!(!models.contains(&hex));
        assert_eq!(
            artifacts.path_of(&hex),
            dir.path().join("artifacts").join(format!("sha256-{hex}"))
        );
        assert_eq!(artifacts.get(&hex).await.unwrap(), b"{}");
    }

    #[tokio::test]
    async fn corrupt_files_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path()).unwrap();
        let hex = store.put(b"abc").await.unwrap();
        std::fs::write(store.path_of(&hex), b"abd").unwrap();
        assert!(store.get(&hex).await.is_err());
    }
}
