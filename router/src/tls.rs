//! The router's TLS listener: rustls through Pingora (`pingora-core`'s
//! `rustls` feature), with ALPN offering `h2` and `http/1.1`, and a
//! certificate that is reloaded from its files without a restart.
//!
//! Reload: Pingora builds the listener's rustls `ServerConfig` once, but it
//! takes a custom [`ResolvesServerCert`] (`TlsSettings::set_cert_resolver`).
//! [`ReloadingCert`] is that resolver: every handshake reads the current
//! certified key from a lock, and [`ReloadingCert::reload_if_changed`] swaps
//! it when the files' bytes change. The router calls it every
//! [`RELOAD_INTERVAL`] (a Pingora background service) and on demand
//! (`RouterHandle::reload_tls`, which the CLI runs on SIGHUP). A change that
//! does not load (a key that does not match the certificate, a half-written
//! file) is logged once and the current certificate stays; it is tried again
//! as soon as the bytes change again. Connections already open keep the
//! certificate they were made with.
//!
//! Independent: names no other module of this crate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often the certificate and key files are looked at for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// A TLS listener of the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// Where it listens (beside the plain listener, which stays).
    pub listen: SocketAddr,
    /// PEM file of the certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM file of the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// What one look at the files did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files hold what was last looked at.
    Unchanged,
    /// A new certificate is in use for new connections.
    Reloaded,
    /// The files changed but do not load; the current certificate stays.
    Failed(String),
}

/// The bytes of the two files, as read together.
#[derive(PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// The router's certificate resolver: the current certified key, swapped
/// when its files change.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The bytes last looked at (loaded or refused), so that a change is
    /// acted on, and a refusal logged, once.
    seen: Mutex<Files>,
    /// The last reason a change was refused, logged once.
    failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the certificate chain and key; an error says which file and why.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let files = read_files(cert, key)?;
        let certified = certified_key(&files, cert, key)?;
        Ok(ReloadingCert {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new(files),
            failure: Mutex::new(None),
        })
    }

    /// Reads the files and, when their bytes differ from the last look,
    /// loads them and swaps the certificate in.
    pub fn reload_if_changed(&self) -> Reload {
        let files = match read_files(&self.cert_path, &self.key_path) {
            Ok(files) => files,
            // A file being replaced may be missing for a moment: look again later.
            Err(e) => return Reload::Failed(e),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == files {
            return Reload::Unchanged;
        }
        let outcome = certified_key(&files, &self.cert_path, &self.key_path);
        *seen = files;
        match outcome {
            Ok(certified) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e),
        }
    }

    /// The DER of the certificate new connections get.
    pub fn current_cert(&self) -> Vec<u8> {
        self.certified()
            .cert
            .first()
            .map_or_else(Vec::new, |c| c.to_vec())
    }

    fn certified(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// [`ReloadingCert::reload_if_changed`], logged: a reload, and each new
    /// reason for keeping the current certificate (once, not on every look).
    pub fn reload_now(&self) -> Reload {
        let outcome = self.reload_if_changed();
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        match &outcome {
            Reload::Unchanged => {}
            Reload::Reloaded => {
                *failure = None;
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
            }
            Reload::Failed(e) if failure.as_deref() != Some(e.as_str()) => {
                *failure = Some(e.clone());
                tracing::warn!(error = %e, "TLS certificate not reloaded; the current one stays");
            }
            Reload::Failed(_) => {}
        }
        outcome
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified())
    }
}

fn read_files(cert: &Path, key: &Path) -> Result<Files, String> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("reading the TLS {what} {}: {e}", path.display()))
    };
    Ok(Files {
        cert: read(cert, "certificate")?,
        key: read(key, "key")?,
    })
}

fn certified_key(files: &Files, cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "the TLS certificate {} holds no PEM certificate",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| {
        format!(
            "the TLS key {} holds no usable PEM private key: {e}",
            key.display()
        )
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        format!(
            "the TLS key {} does not go with the certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

/// The process's rustls crypto provider (Pingora installs ring's).
fn provider() -> Arc<CryptoProvider> {
    pingora_core::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .expect("a rustls crypto provider is installed")
}

/// Looks at the certificate files every [`RELOAD_INTERVAL`].
pub(crate) struct Reloader {
    pub(crate) cert: Arc<ReloadingCert>,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
            }
            let cert = self.cert.clone();
            let _ = tokio::task::spawn_blocking(move || cert.reload_now()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed certificate and key for `cn`, made with the openssl CLI.
    fn self_signed(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{cn}.crt"));
        let key = dir.join(format!("{cn}.key"));
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", &format!("/CN={cn}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl CLI");
        assert!(status.status.success(), "{status:?}");
        (cert, key)
    }

    #[test]
    fn loads_and_reloads_only_what_loads() {
        let dir = std::env::temp_dir().join(format!("taskmesh-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a_cert, a_key) = self_signed(&dir, "a");
        let (b_cert, b_key) = self_signed(&dir, "b");
        let cert = dir.join("live.crt");
        let key = dir.join("live.key");
        std::fs::copy(&a_cert, &cert).unwrap();
        std::fs::copy(&a_key, &key).unwrap();

        // Mismatched pairs and non-PEM files are refused, naming the file.
        let err = ReloadingCert::load(&a_cert, &b_key).unwrap_err();
        assert!(err.contains("does not go with"), "{err}");
        let err = ReloadingCert::load(&a_key, &a_key).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let err = ReloadingCert::load(&a_cert, &a_cert).unwrap_err();
        assert!(err.contains("no usable PEM private key"), "{err}");
        let err = ReloadingCert::load(&dir.join("missing"), &a_key).unwrap_err();
        assert!(err.contains("missing"), "{err}");

        let live = ReloadingCert::load(&cert, &key).unwrap();
        let first = live.current_cert();
        assert_eq!(live.reload_if_changed(), Reload::Unchanged);

        // Half a change (new certificate, old key): refused once, then quiet.
        std::fs::copy(&b_cert, &cert).unwrap();
        assert!(matches!(live.reload_if_changed(), Reload::Failed(_)));
        assert_eq!(live.reload_if_changed(), Reload::Unchanged);
        assert_eq!(live.current_cert(), first, "the current one stays");

        // The whole change: swapped.
        std::fs::copy(&b_key, &key).unwrap();
        assert_eq!(live.reload_if_changed(), Reload::Reloaded);
        let second = live.current_cert();
        assert_ne!(second, first);
        assert_eq!(
            second,
            CertificateDer::from_pem_file(&b_cert).unwrap().to_vec()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
