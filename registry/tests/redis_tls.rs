//! `rediss://`: the store speaks TLS to Redis (managed Redis such as
//! ElastiCache requires it). A real `redis-server` with a TLS port and a
//! throwaway self-signed certificate made by `openssl`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use taskmesh_registry::{RedisOptions, RedisStore, Store};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_store_talks_to_redis_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("openssl (Debian package openssl)");
    assert!(made.success());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1", "--save", ""])
            .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(dir.path().join("cert.pem"))
            .arg("--tls-key-file")
            .arg(dir.path().join("key.pem"))
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (run scripts/setup.sh)"),
    );
    // `#insecure`: the certificate is self-signed (a managed Redis presents a
    // certificate the system's roots trust, and the URL has no fragment).
    let url = format!("rediss://127.0.0.1:{port}/#insecure");
    let deadline = Instant::now() + Duration::from_secs(20);
    // Without the opt-in, such a URL is refused outright.
    let err = RedisStore::connect(&url).await.expect_err("refused");
    assert!(
        err.to_string().contains("TASKMESH_REDIS_INSECURE_TLS"),
        "{err}"
    );
    let options = RedisOptions {
        allow_insecure_tls: true,
        ..RedisOptions::default()
    };
    let store = loop {
        match RedisStore::connect_with(&url, options.clone()).await {
            Ok(store) => break store,
            Err(e) => {
                assert!(Instant::now() < deadline, "no TLS connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    store.add_counters(vec![("tls".into(), 3)]).await.unwrap();
    assert_eq!(store.get_counter("tls").await.unwrap(), 3);
    // Plain TCP to the TLS port is refused, so the bytes above did go over TLS.
    assert!(RedisStore::connect(&format!("redis://127.0.0.1:{port}/"))
        .await
        .is_err());
}
