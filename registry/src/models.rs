//! Content-addressed file stores: each model or artifact is a file named by its sha256.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A folder of `sha256-<hex>.onnx` files (models), or of `sha256-<hex>` files
/// (artifacts such as tokenizer.json, in the sibling folder `artifacts/`).
/// Writes go to a temporary file in the same folder and are renamed into
/// place, so a reader never sees half a file.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
    suffix: &'static str,
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ModelStore {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(ModelStore {
            dir,
            suffix: ".onnx",
        })
    }

    /// The artifact store beside this model store: `<models>/../artifacts`,
    /// created on the first upload.
    pub fn artifacts(&self) -> ModelStore {
        let dir = match self.dir.parent() {
            Some(parent) => parent.join("artifacts"),
            None => self.dir.join("artifacts"),
        };
        ModelStore { dir, suffix: "" }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the model with this hex digest (whether or not it exists).
    pub fn path_of(&self, hex: &str) -> PathBuf {
        self.dir.join(format!("sha256-{hex}{}", self.suffix))
    }

    /// Size in bytes of a stored model, if present.
    pub fn size_of(&self, hex: &str) -> Option<u64> {
        if !is_hex_digest(hex) {
            return None;
        }
        std::fs::metadata(self.path_of(hex)).ok().map(|m| m.len())
    }

    pub fn contains(&self, hex: &str) -> bool {
        is_hex_digest(hex) && self.path_of(hex).is_file()
    }

    /// Stores `bytes` and returns their hex digest; storing the same bytes again is a no-op.
    pub async fn put(&self, bytes: &[u8]) -> std::io::Result<String> {
        let hex = sha256_hex(bytes);
        let path = self.path_of(&hex);
        if tokio::fs::try_exists(&path).await? {
            return Ok(hex);
        }
        tokio::fs::create_dir_all(&self.dir).await?;
        let tmp = self
            .dir
            .join(format!(".upload-{hex}-{}", std::process::id()));
        tokio::fs::write(&tmp, bytes).await?;
        let file = tokio::fs::File::open(&tmp).await?;
        file.sync_all().await?;
        tokio::fs::rename(&tmp, &path).await?;
        Ok(hex)
    }

    /// Reads the model with this hex digest, verifying the bytes still hash to it.
    pub async fn get(&self, hex: &str) -> std::io::Result<Vec<u8>> {
        if !is_hex_digest(hex) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid digest {hex:?}"),
            ));
        }
        let bytes = tokio::fs::read(self.path_of(hex)).await?;
        if sha256_hex(&bytes) != hex {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("sha256:{hex} is corrupt on disk"),
            ));
        }
        Ok(bytes)
    }
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
