//! Test support: start the real `taskmesh` binary and talk to it over HTTP/2.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Reads a file the set-up script generates; fails loudly when it is missing.
pub fn generated(relative: &str) -> Vec<u8> {
    let path = repo_root().join(relative);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}): run scripts/setup.sh first",
            path.display()
        )
    })
}

pub fn generated_json(relative: &str) -> Value {
    serde_json::from_slice(&generated(relative)).expect("generated file is JSON")
}

pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// An address nothing answers on: a port bound but not listening, so a
/// connection is refused, and held (keep the socket) so that no other test's
/// process can take it meanwhile, as it could a port from [`free_addr`].
pub fn dead_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind a free port");
    let addr = socket.local_addr().expect("local addr");
    (socket, addr)
}

/// A running `taskmesh up`, killed on drop.
pub struct Platform {
    child: Child,
    pub router: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: tempfile::TempDir,
    pub output: mpsc::Receiver<String>,
    /// The operator key `taskmesh up` wrote to `<data-dir>/admin.key`.
    pub admin_key: String,
    /// Where stderr (the logs) went, when captured.
    pub log_file: Option<PathBuf>,
    /// The node's address, once read from stdout.
    node: Option<String>,
}

impl Platform {
    pub fn start(extra: &[&str]) -> Platform {
        Self::start_in(tempfile::tempdir().expect("temp dir"), extra, "warn", false)
    }

    /// Starts on `data_dir` with a log filter; `capture` sends the logs to a file.
    ///
    /// The ports are picked free just before the process starts, so another
    /// process may take one first; `taskmesh up` then exits, saying which
    /// address is taken, and this tries again on fresh ports (3 tries).
    pub fn start_in(
        mut data_dir: tempfile::TempDir,
        extra: &[&str],
        log: &str,
        capture: bool,
    ) -> Platform {
        for attempt in 1..=3 {
            let mut platform = Self::spawn(data_dir, extra, log, capture);
            match platform.wait_for_line_or_exit("taskmesh is up", Duration::from_secs(60)) {
                Ok(_) => {
                    let key_path = platform.data_dir.path().join("admin.key");
                    platform.admin_key = std::fs::read_to_string(&key_path)
                        .expect("admin.key written")
                        .trim()
                        .to_string();
                    return platform;
                }
                Err(why) if attempt < 3 && platform.child.try_wait().ok().flatten().is_some() => {
                    eprintln!("taskmesh up exited early ({why}); retrying on fresh ports");
                    data_dir = platform.stop();
                }
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!("the last attempt panics or returns")
    }

    fn spawn(data_dir: tempfile::TempDir, extra: &[&str], log: &str, capture: bool) -> Platform {
        let router = free_addr();
        let admin = free_addr();
        let log_file = capture.then(|| {
            data_dir
                .path()
                .join(format!("stderr-{}.log", router.port()))
        });
        let stderr = match &log_file {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_taskmesh"))
            .args([
                "up",
                "--listen",
                &router.to_string(),
                "--admin-listen",
                &admin.to_string(),
                "--data-dir",
            ])
            .arg(data_dir.path())
            .args(extra)
            .current_dir(repo_root())
            .env("TASKMESH_LOG", log)
            .env_remove("TASKMESH_ADMIN_KEY")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start taskmesh");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Platform {
            child,
            router,
            admin,
            data_dir,
            output: rx,
            admin_key: String::new(),
            log_file,
            node: None,
        }
    }

    /// An h2c client that sends the operator key.
    pub fn client(&self) -> TestClient {
        TestClient::h2c().with_key(&self.admin_key)
    }

    /// Stops the process and hands back its data directory (for a restart).
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let spare = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.data_dir, spare)
    }

    /// Waits for a line of stdout containing `needle`; returns the lines seen.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Vec<String> {
        self.wait_for_line_or_exit(needle, timeout)
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// Like [`Platform::wait_for_line`], but says why it never came: the
    /// process exited (its stdout closed) or the time ran out.
    fn wait_for_line_or_exit(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, String> {
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.output.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return Ok(seen);
                    }
                }
                Err(_) => {
                    // A closed stdout means the process is exiting: give it a moment.
                    let mut status = None;
                    for _ in 0..50 {
                        status = self.child.try_wait().ok().flatten();
                        if status.is_some() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    return Err(format!(
                        "taskmesh never printed {needle:?} (exit status {status:?}); saw {seen:?}"
                    ));
                }
            }
        }
    }

    pub fn router_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.router)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The cluster key `taskmesh up` wrote to `<data-dir>/cluster.key`.
    pub fn cluster_key(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("cluster.key"))
            .expect("taskmesh up writes cluster.key")
            .trim()
            .to_string()
    }

    /// A URL on the node's own address, printed by `taskmesh up` after "taskmesh is up".
    pub fn node_url(&mut self, path: &str) -> String {
        if self.node.is_none() {
            let lines = self.wait_for_line("node ", Duration::from_secs(5));
            let line = lines.last().expect("the node's line");
            let address = line.split_whitespace().nth(1).expect("the node's address");
            self.node = Some(address.to_string());
        }
        format!("{}{path}", self.node.as_deref().unwrap_or_default())
    }

    /// The router's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let reply = self.client().get(&self.router_url("/metrics")).await;
        assert_eq!(reply.status, 200, "GET /metrics");
        String::from_utf8_lossy(&reply.body).into_owned()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: sending a signal to our own child process.
        #[allow(unsafe_code)]
        unsafe {
            libc_kill(pid, 15)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "taskmesh did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the contract's error shape and returns the error object.
    /// An error on an Open Inference Protocol path: the protocol's body
    /// `{"error": "<message>"}`, the contract's status, and its code in
    /// `x-taskmesh-error-code`. Returns the message.
    pub fn expect_oip_error(&self, status: u16, code: &str) -> String {
        let body = self.json();
        assert_eq!(self.status.as_u16(), status, "status; body {body}");
        assert_eq!(
            self.header("x-taskmesh-error-code"),
            Some(code),
            "code; body {body}"
        );
        let fields: Vec<&String> = body.as_object().expect("an object").keys().collect();
        assert_eq!(fields, ["error"], "the protocol's error body: {body}");
        body["error"].as_str().expect("a message").to_string()
    }

    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        let body = self.json();
        assert_eq!(self.status.as_u16(), status, "status; body {body}");
        assert_eq!(body["error"]["code"], code, "code; body {body}");
        assert!(body["error"]["message"].is_string(), "message; body {body}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        body["error"].clone()
    }
}

/// The JSON pointers of an error object's `details`, in order.
pub fn pointers(error: &Value) -> Vec<&str> {
    error["details"]
        .as_array()
        .unwrap_or_else(|| panic!("no details: {error}"))
        .iter()
        .map(|d| d["pointer"].as_str().unwrap())
        .collect()
}

/// A real HTTP client: h2c with prior knowledge, or HTTP/1.1.
#[derive(Clone)]
pub struct TestClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    key: Option<String>,
    /// Headers sent with every request (e.g. the cluster key, to call a node).
    extra: Vec<(String, String)>,
}

impl TestClient {
    pub fn h2c() -> Self {
        TestClient {
            inner: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(nodelay_connector()),
            key: None,
            extra: Vec::new(),
        }
    }

    pub fn http1() -> Self {
        TestClient {
            inner: Client::builder(TokioExecutor::new()).build(nodelay_connector()),
            key: None,
            extra: Vec::new(),
        }
    }

    /// The same client, sending `name: value` with every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.extra.push((name.to_string(), value.to_string()));
        self
    }

    /// The same client, sending `authorization: Bearer <key>`.
    pub fn with_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_string());
        self
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(url);
        if let Some(key) = &self.key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        for (k, v) in &self.extra {
            request = request.header(k.as_str(), v.as_str());
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Full::new(body.into())).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(30), self.inner.request(request))
            .await
            .unwrap_or_else(|_| panic!("request to {url} hung"))
            .unwrap_or_else(|e| panic!("request to {url} failed: {e:?}"));
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            version: parts.version,
        }
    }

    /// Like `post_json`, but a failed request (refused, reset, hung for 30 s)
    /// is an `Err` instead of a panic.
    pub async fn try_post_json(&self, url: &str, body: &Value) -> Result<Reply, String> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header("content-type", "application/json");
        if let Some(key) = &self.key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        for (k, v) in &self.extra {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.inner.request(request))
            .await
            .map_err(|_| format!("request to {url} hung"))?
            .map_err(|e| format!("request to {url} failed: {e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body of {url} failed: {e:?}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            version: parts.version,
        })
    }

    /// Like `try_post_json`, with what an HTTP/2 client does with a request
    /// that a GOAWAY refused (see [`refused_by_goaway`]): the server never
    /// processed it, so it is sent again, on a new connection, up to `sends`
    /// times in all. Returns the last outcome and how many times the request
    /// was sent again.
    pub async fn post_json_resending(
        &self,
        url: &str,
        body: &Value,
        sends: u32,
    ) -> (Result<Reply, String>, u32) {
        let mut resent = 0;
        loop {
            let outcome = self.try_post_json(url, body).await;
            match &outcome {
                Err(e) if refused_by_goaway(e) && resent + 1 < sends => resent += 1,
                _ => return (outcome, resent),
            }
        }
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, url: &str, body: &Value) -> Reply {
        self.send(
            Method::POST,
            url,
            &[("content-type", "application/json")],
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    pub async fn put_json(&self, url: &str, body: &Value) -> Reply {
        self.send(
            Method::PUT,
            url,
            &[("content-type", "application/json")],
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }
}

/// Whether a failed request (an error of [`TestClient::try_post_json`]) was
/// refused by a graceful GOAWAY: h2 fails the streams above the GOAWAY's
/// last-stream-id, and those opened after it arrived, with the GOAWAY itself
/// (`GoAway(debug data, NO_ERROR, Remote)`). The server never processed them
/// (RFC 9113 §6.8), so they are safe to send again. A stream the server had
/// accepted and then lost fails otherwise (a reset, a broken pipe).
pub fn refused_by_goaway(error: &str) -> bool {
    error.contains("GoAway(") && error.contains("NO_ERROR, Remote)")
}

/// Asserts two JSON numbers arrays (any nesting) agree within `tol`.
pub fn assert_close(actual: &Value, expected: &Value, tol: f64, what: &str) {
    match (actual, expected) {
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{what}: length");
            for (i, (x, y)) in a.iter().zip(e).enumerate() {
                assert_close(x, y, tol, &format!("{what}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            assert!(
                (a - e).abs() <= tol * e.abs().max(1.0),
                "{what}: {a} vs {e}"
            );
        }
        (a, e) => assert_eq!(a, e, "{what}"),
    }
}

/// An HTTP connector with Nagle's algorithm off (small requests would otherwise
/// wait for delayed ACKs, about 40 ms each on Linux).
fn nodelay_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// Uploads a generated model through the admin API and returns its digest.
pub async fn upload(client: &TestClient, p: &Platform, model: &str) -> String {
    upload_bytes(client, &p.admin_url("/v1/models"), generated(model)).await
}

/// Uploads bytes to an admin upload URL (`…/v1/models`, `…/v1/artifacts`)
/// and returns their digest.
pub async fn upload_bytes(client: &TestClient, url: &str, bytes: Vec<u8>) -> String {
    let size = bytes.len();
    let reply = client
        .send(
            Method::POST,
            url,
            &[("content-type", "application/octet-stream")],
            bytes,
        )
        .await;
    assert_eq!(reply.status, 201, "{:?}", reply.json());
    let body = reply.json();
    assert_eq!(body["size"], size);
    body["digest"].as_str().unwrap().to_string()
}

/// A committed definition file with its model set to `digest`.
pub fn definition_with(file: &str, digest: &str) -> Value {
    let mut doc: Value = serde_json::from_slice(&generated(file)).unwrap();
    doc["model"] = json!(digest);
    doc
}

/// Sets each top-level field of `extra` (an object) on `doc`.
pub fn set_fields(doc: &mut Value, extra: &Value) {
    for (k, v) in extra.as_object().expect("extra fields are an object") {
        doc[k] = v.clone();
    }
}

/// The digits example's definition, named `name`, with its model set to
/// `digest` and the fields of `extra` set.
pub fn digits_definition(digest: &str, name: &str, extra: &Value) -> Value {
    let mut doc = definition_with("examples/digits/function.json", digest);
    doc["name"] = json!(name);
    set_fields(&mut doc, extra);
    doc
}

/// The digits example's invoke body.
pub fn sample() -> Value {
    generated_json("examples/digits/sample.json")
}

/// Uploads the test-only slow model (`tests/models/slow`: x [N, 512] ->
/// y [N, 512], about 0.8 ms of compute a row on one thread) and registers it
/// as `name`, with the fields of `extra` set.
pub async fn register_slow(p: &Platform, name: &str, extra: Value) {
    let client = p.client();
    let digest = upload(&client, p, "tests/models/slow/model.onnx").await;
    let mut doc = json!({
        "name": name, "model": digest, "max_body_bytes": 4_000_000,
        "inputs": {"x": {"tensor": "x", "shape": [-1, 512]}},
        "outputs": {"y": {"tensor": "y"}}
    });
    set_fields(&mut doc, &extra);
    register(&client, p, &doc).await;
}

/// An input of `n` rows for the slow model.
pub fn rows(n: usize) -> Value {
    json!({"x": vec![0; n * 512]})
}

/// Registers a definition and returns its version.
pub async fn register(client: &TestClient, p: &Platform, doc: &Value) -> u64 {
    register_at(client, &p.admin_url("/v1/functions"), doc).await
}

/// Registers a definition at a registry's `…/v1/functions` URL and returns
/// its version.
pub async fn register_at(client: &TestClient, url: &str, doc: &Value) -> u64 {
    let reply = client.post_json(url, doc).await;
    assert_eq!(reply.status, 201, "{}", reply.json());
    reply.json()["version"].as_u64().unwrap()
}

/// Uploads the iris model and registers the iris example from its YAML
/// definition (sent as `application/yaml`).
pub async fn register_iris_yaml(client: &TestClient, p: &Platform) {
    let digest = upload(client, p, "examples/iris/model.onnx").await;
    let yaml = String::from_utf8(generated("examples/iris/function.yaml"))
        .unwrap()
        .replace("./model.onnx", &format!("\"{digest}\""));
    let reply = client
        .send(
            Method::POST,
            &p.admin_url("/v1/functions"),
            &[("content-type", "application/yaml")],
            yaml,
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.json());
}

/// Invokes with the digits sample and `x-taskmesh-routing-key: key`.
pub async fn invoke_keyed(client: &TestClient, url: &str, key: &str) -> Reply {
    client
        .send(
            Method::POST,
            url,
            &[
                ("content-type", "application/json"),
                ("x-taskmesh-routing-key", key),
            ],
            serde_json::to_vec(&sample()).unwrap(),
        )
        .await
}

/// A call made by [`Traffic`]: when it ended, its status, the version that
/// served it (`x-taskmesh-version`, 0 when absent).
pub type Call = (std::time::Instant, u16, u32);

/// Background callers of `url`, each with its own routing keys
/// (`{tag}-{caller}-{i}`), one call every 5 ms or so, until stopped.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<Call>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(client: &TestClient, url: &str, callers: usize, tag: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..callers)
            .map(|c| {
                let (client, url, stop, calls, tag) = (
                    client.clone(),
                    url.to_string(),
                    stop.clone(),
                    calls.clone(),
                    tag.to_string(),
                );
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let reply = invoke_keyed(&client, &url, &format!("{tag}-{c}-{i}")).await;
                        let version = reply
                            .header("x-taskmesh-version")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let call = (std::time::Instant::now(), reply.status.as_u16(), version);
                        calls.lock().unwrap().push(call);
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Traffic { stop, calls, tasks }
    }

    /// Stops the callers and returns their calls.
    pub async fn stop(self) -> Vec<Call> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let calls = self.calls.lock().unwrap().clone();
        calls
    }
}

/// GETs `url` every 200 ms until it answers 200 with a body that `done`
/// accepts, and returns that body; panics on any other status, or once
/// `limit` has passed.
pub async fn poll_json(
    client: &TestClient,
    url: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let reply = client.get(url).await;
        assert_eq!(
            reply.status,
            200,
            "GET {url}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        if done(&body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GET {url} did not get there within {limit:?}: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates an API client through the admin API; returns its id and key.
pub async fn create_client(client: &TestClient, p: &Platform, body: Value) -> (String, String) {
    let reply = client.post_json(&p.admin_url("/v1/clients"), &body).await;
    assert_eq!(reply.status, 201, "{}", reply.json());
    let out = reply.json();
    (
        out["client_id"].as_str().unwrap().to_string(),
        out["api_key"].as_str().unwrap().to_string(),
    )
}

/// Submits `n` tasks to `url` (`…/v1/functions/{name}/tasks`) at once, so a
/// queue builds up faster than it drains; each must be accepted (202).
/// Returns their ids.
pub async fn submit_tasks(
    client: &TestClient,
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<String> {
    let mut all: Vec<(String, String)> = vec![("content-type".into(), "application/json".into())];
    all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let body = serde_json::to_vec(body).unwrap();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, all, body) =
                (client.clone(), url.to_string(), all.clone(), body.clone());
            tokio::spawn(async move {
                let headers: Vec<(&str, &str)> =
                    all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let reply = client.send(Method::POST, &url, &headers, body).await;
                assert_eq!(
                    reply.status,
                    202,
                    "{}",
                    String::from_utf8_lossy(&reply.body)
                );
                reply.json()["task_id"].as_str().unwrap().to_string()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.unwrap());
    }
    ids
}

/// Polls a task (`…/v1/tasks/{id}`) until it is succeeded, dead or
/// cancelled; returns its view.
pub async fn wait_task(client: &TestClient, url: &str, limit: Duration) -> Value {
    poll_json(client, url, limit, |t| {
        matches!(
            t["status"].as_str(),
            Some("succeeded" | "dead" | "cancelled")
        )
    })
    .await
}
