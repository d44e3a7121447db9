//! A real `redis-server` for tests, on a free loopback port, with AOF on
//! (`appendfsync always`), in its own temporary folder.
//!
//! Self-contained (std only), so other crates' tests can include it:
//!
//! ```ignore
//! #[path = "../../registry/tests/support/redis.rs"]
//! mod redis_support;
//! let redis = redis_support::RedisServer::start();
//! let url = redis.url();
//! ```
//!
//! `redis-server` is the Debian package that `scripts/setup.sh` installs. A
//! machine without it fails these tests loudly; they are never skipped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a starting server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `redis-server`, killed (and its folder removed) on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free loopback port, in a new temporary folder.
    pub fn start() -> RedisServer {
        let binary = redis_binary();
        let dir = temp_dir("redis");
        let mut last_error = String::new();
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            match spawn(&binary, port, &dir) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        dir,
                        child: Some(child),
                    }
                }
                Err(e) => last_error = e,
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's folder (the AOF lives in `appendonlydir/` there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server with SIGKILL (no shutdown, no final fsync) and waits
    /// until it is gone. Calls against it fail until [`RedisServer::restart`].
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and folder (replaying the
    /// AOF), killing it first if it still runs.
    pub fn restart(&mut self) {
        self.kill9();
        // The port was just released by a killed process: retry for a while.
        let deadline = Instant::now() + START_TIMEOUT;
        let binary = redis_binary();
        loop {
            match spawn(&binary, self.port, &self.dir) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("redis-server did not restart on port {}: {e}", self.port),
            }
        }
    }

    /// Stops the server with SIGSTOP: its socket stays open and the kernel
    /// still accepts connections, but nothing answers until [`RedisServer::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Continues a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill -{name}: {e}"));
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// Whether the server answers PING now.
    pub fn is_up(&self) -> bool {
        ping(self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `redis-server` on `port` in `dir` and waits until it answers PING.
fn spawn(binary: &Path, port: u16, dir: &Path) -> Result<Child, String> {
    let log = dir.join("redis.log");
    let stdout = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let stderr = stdout
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let mut child = Command::new(binary)
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1"])
        .args(["--appendonly", "yes"])
        .args(["--appendfsync", "always"])
        .args(["--save", ""])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "it exited with {status} on port {port}; its log:\n{}",
                log_tail(&log)
            ));
        }
        if ping(port) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "it did not answer PING within {START_TIMEOUT:?} on port {port}; its log:\n{}",
                log_tail(&log)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `redis-server` from PATH or /usr/bin; panics with the fix when missing.
fn redis_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("redis-server"));
    for path in candidates {
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "redis-server is not installed; these tests need a real Redis. \
         Run scripts/setup.sh (it installs the Debian package redis-server)."
    );
}

/// Sends `PING` over a raw TCP connection; true when it answers `+PONG`
/// (a server still loading its AOF answers `-LOADING` instead).
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A new, empty folder under the system's temporary folder.
fn temp_dir(what: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "taskmesh-{what}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
