//! A real S3-compatible server for tests: moto's server mode, from the pinned
//! Python packages that `scripts/setup.sh` installs into `.deps/python`.
//!
//! Self-contained (std only), so other crates' tests can include it:
//!
//! ```ignore
//! #[path = "../../registry/tests/support/moto.rs"]
//! mod moto_support;
//! let s3 = moto_support::MotoServer::start();
//! s3.create_bucket("models");
//! // Clients use AWS_ENDPOINT_URL = s3.endpoint() and sign with any access
//! // key and secret.
//! ```
//!
//! Python runs with `-S` (no site-packages), so only the project's pinned
//! packages are used, never a moto that happens to be installed system-wide.
//! A checkout without them fails these tests loudly; they are never skipped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// moto imports a lot of Python on start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running moto server, killed on drop. Its state lives in memory only.
pub struct MotoServer {
    port: u16,
    child: Child,
    log: PathBuf,
}

impl MotoServer {
    /// Starts moto on a free loopback port and waits until it answers.
    pub fn start() -> MotoServer {
        let python_path = deps_python();
        let log = temp_file("moto-log");
        let mut last_error = String::new();
        // A port found free can be taken before moto binds it: try a few.
        for _ in 0..3 {
            let port = free_port();
            let out = std::fs::File::create(&log)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
            let err = out.try_clone().expect("log file handle");
            let mut child = Command::new(python())
                .arg("-S")
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .env("PYTHONPATH", &python_path)
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run python3 for moto: {e}"));
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!("moto exited with {status}; its log:\n{}", read(&log));
                    break;
                }
                if http(port, "GET", "/", &[]).is_some_and(|(status, _)| status == 200) {
                    return MotoServer { port, child, log };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!(
                        "moto did not answer within {START_TIMEOUT:?}; its log:\n{}",
                        read(&log)
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("moto server did not start: {last_error}");
    }

    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a bucket with a plain `PUT /<bucket>` (path-style).
    pub fn create_bucket(&self, bucket: &str) {
        let (status, body) = http(self.port, "PUT", &format!("/{bucket}"), &[])
            .unwrap_or_else(|| panic!("moto did not answer PUT /{bucket}"));
        assert_eq!(status, 200, "creating bucket {bucket}: {body}");
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The checkout's `.deps/python`, found from the including crate's folder or
/// the current folder; panics with the fix when moto is not installed there.
fn deps_python() -> PathBuf {
    let mut bases: Vec<PathBuf> = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(Path::to_path_buf)
        .collect();
    if let Ok(cwd) = std::env::current_dir() {
        bases.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    for base in bases {
        let dir = base.join(".deps/python");
        if dir.join("moto").join("__init__.py").is_file() {
            return dir;
        }
    }
    panic!(
        "moto is not installed in .deps/python; these tests need a real S3 server. \
         Run scripts/setup.sh (it installs the pinned moto[server])."
    );
}

/// One HTTP/1.1 request with `Connection: close`; `None` when nothing answers.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    http_bytes(port, method, path, body)
        .map(|(status, body)| (status, String::from_utf8_lossy(&body).into_owned()))
}

fn http_bytes(port: u16, method: &str, path: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).ok()?;
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = reply[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Some((status, body))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn temp_file(what: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!(
        "taskmesh-{what}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

fn read(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
