//! Cluster test harness: one registry, runtime nodes and routers as separate
//! `taskmesh` processes over loopback, with a real `redis-server` and a shared
//! model folder. Included by test crates with
//! `#[path = "support/cluster.rs"] mod cluster_support;` next to `mod support;`
//! and `#[path = "../../registry/tests/support/redis.rs"] mod redis_support;`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use policies::ring::{Member, Ring, DEFAULT_VNODES};
use serde_json::Value;

use crate::redis_support::RedisServer;
pub use crate::support::sample;
use crate::support::{
    digits_definition, free_addr, generated, register_at, repo_root, upload_bytes, TestClient,
};

/// The cluster key every process of a test cluster shares.
pub const CLUSTER_KEY: &str = "test-cluster-key-0123456789abcdef0123456789abcdef";

pub const OPERATOR_KEY: &str =
    "tm_c1c2c3c4c5c6c7c8_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// One `taskmesh` process of the cluster, killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Proc {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: i32) {
        extern "C" {
            fn kill(pid: i32, sig: i32) -> i32;
        }
        // SAFETY: signalling our own child process.
        #[allow(unsafe_code)]
        unsafe {
            kill(self.child.id() as i32, sig)
        };
    }

    /// SIGTERM, then waits for the exit (at most `within`).
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.signal(15);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    pub redis: RedisServer,
    pub dir: tempfile::TempDir,
    pub registry: Proc,
    pub nodes: Vec<Proc>,
    pub routers: Vec<Proc>,
    pub spawned: usize,
    /// Extra flags for nodes and routers started by this cluster.
    pub node_args: Vec<String>,
    pub router_args: Vec<String>,
}

impl Cluster {
    pub fn start(nodes: usize, routers: usize) -> Cluster {
        Self::start_with(nodes, routers, &[], &[])
    }

    pub fn start_with(
        nodes: usize,
        routers: usize,
        node_args: &[&str],
        router_args: &[&str],
    ) -> Cluster {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("shared")).unwrap();
        let mut cluster = Cluster {
            registry: spawn(&redis, dir.path(), "registry", 0, &[]),
            redis,
            dir,
            nodes: Vec::new(),
            routers: Vec::new(),
            spawned: 1,
            node_args: node_args.iter().map(|a| a.to_string()).collect(),
            router_args: router_args.iter().map(|a| a.to_string()).collect(),
        };
        for _ in 0..nodes {
            cluster.add_node();
        }
        for _ in 0..routers {
            let router = cluster.spawn_router(None, &[]);
            cluster.routers.push(router);
        }
        for p in std::iter::once(&cluster.registry)
            .chain(&cluster.nodes)
            .chain(&cluster.routers)
        {
            wait_healthy(p);
        }
        cluster
    }

    /// Starts a router (on `addr` when given, e.g. to take over with `--upgrade`).
    pub fn spawn_router(&mut self, addr: Option<SocketAddr>, extra: &[&str]) -> Proc {
        self.spawned += 1;
        let mut args: Vec<&str> = self.router_args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        spawn_at(
            &self.redis,
            self.dir.path(),
            "router",
            self.spawned,
            addr.unwrap_or_else(free_addr),
            &args,
        )
    }

    pub fn add_node(&mut self) -> usize {
        self.spawned += 1;
        let args: Vec<&str> = self.node_args.iter().map(String::as_str).collect();
        let node = spawn(&self.redis, self.dir.path(), "node", self.spawned, &args);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    pub fn client(&self) -> TestClient {
        TestClient::h2c().with_key(OPERATOR_KEY)
    }

    /// Live nodes as `GET /v1/nodes` lists them.
    pub async fn listed_nodes(&self) -> Vec<String> {
        let reply = self.client().get(&self.registry.url("/v1/nodes")).await;
        assert_eq!(reply.status, 200, "{}", reply.json());
        let mut ids: Vec<String> = reply.json()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Waits until `GET /v1/nodes` lists `n` nodes and every router routes to
    /// them; returns how long it took.
    pub async fn wait_for_nodes(&self, n: usize, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let listed = self.listed_nodes().await;
            if listed.len() == n {
                let mut routed = true;
                for router in &self.routers {
                    let ready = self.client().get(&router.url("/readyz")).await.json();
                    routed &= ready["nodes"] == n;
                }
                if routed {
                    return start.elapsed();
                }
            }
            assert!(
                start.elapsed() < within,
                "expected {n} nodes, listed {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn upload_digits(&self) -> String {
        let model = generated("examples/digits/model.onnx");
        upload_bytes(&self.client(), &self.registry.url("/v1/models"), model).await
    }

    pub async fn register(&self, doc: &Value) -> u64 {
        register_at(&self.client(), &self.registry.url("/v1/functions"), doc).await
    }

    /// Registers the digits model as function `name`.
    pub async fn digits(&self, digest: &str, name: &str, extra: Value) {
        self.register(&digits_definition(digest, name, &extra))
            .await;
    }
}

pub fn spawn(
    redis: &RedisServer,
    dir: &std::path::Path,
    role: &str,
    n: usize,
    extra: &[&str],
) -> Proc {
    spawn_at(redis, dir, role, n, free_addr(), extra)
}

pub fn spawn_at(
    redis: &RedisServer,
    dir: &std::path::Path,
    role: &str,
    n: usize,
    addr: SocketAddr,
    extra: &[&str],
) -> Proc {
    spawn_env(redis, dir, role, n, addr, extra, &[])
}

/// [`spawn_at`] with environment variables set (or, with `None`, removed)
/// over the harness's own.
pub fn spawn_env(
    redis: &RedisServer,
    dir: &std::path::Path,
    role: &str,
    n: usize,
    addr: SocketAddr,
    extra: &[&str],
    env: &[(&str, Option<&str>)],
) -> Proc {
    let data = dir.join(format!("{role}-{n}"));
    std::fs::create_dir_all(&data).unwrap();
    let log = dir.join(format!("{role}-{n}.log"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_taskmesh"));
    command
        .arg(role)
        .args(["--listen", &addr.to_string(), "--redis", &redis.url()])
        .args(["--data-dir"])
        .arg(&data)
        .args(if role == "router" {
            Vec::new()
        } else {
            vec![
                "--model-store".to_string(),
                format!("file://{}", dir.join("shared").display()),
            ]
        })
        .args(extra)
        .current_dir(repo_root())
        .env("TASKMESH_ADMIN_KEY", OPERATOR_KEY)
        .env("TASKMESH_CLUSTER_KEY", CLUSTER_KEY)
        .env(
            "TASKMESH_LOG",
            "info,ort=warn,pingora_core=warn,pingora_proxy=warn",
        )
        .envs(env.iter().filter_map(|(k, v)| v.map(|v| (k, v))))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    for (k, v) in env {
        if v.is_none() {
            command.env_remove(k);
        }
    }
    let child = command.spawn().expect("start taskmesh");
    Proc { child, addr, log }
}

pub fn wait_healthy(p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(p.addr) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never became healthy: {}",
            p.log.display(),
            std::fs::read_to_string(&p.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn node_id(p: &Proc) -> String {
    format!("node-{}", p.addr)
}

/// The owner the ring assigns `name`@1 among `nodes`.
pub fn owner_of(nodes: &[&Proc], name: &str) -> String {
    let ring = Ring::new(
        nodes.iter().map(|p| Member {
            id: node_id(p),
            gpu: false,
        }),
        DEFAULT_VNODES,
    );
    ring.owner(&format!("default/{name}@1"), false)
        .unwrap()
        .to_string()
}

/// Invokes `name` through `router` until it answers 200 (new functions reach
/// routers through Redis); returns the node that served it.
pub async fn served_by(client: &TestClient, router: &Proc, name: &str) -> String {
    let url = router.url(&format!("/v1/functions/{name}/invoke"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.post_json(&url, &sample()).await;
        if reply.status == 200 {
            return reply.header("x-taskmesh-node").unwrap().to_string();
        }
        eprintln!("{name} not served yet: {} {}", reply.status, reply.json());
        assert!(
            Instant::now() < deadline,
            "{name}: {} {}",
            reply.status,
            reply.json()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Steady HTTP/2 load on `url` from h2load: 4 connections × 8 streams for
/// `seconds`, sending the digits sample.
pub fn start_h2load(cluster: &Cluster, url: &str, seconds: u32) -> Child {
    let body = cluster.dir.path().join("sample.json");
    std::fs::write(&body, serde_json::to_vec(&sample()).unwrap()).unwrap();
    Command::new("h2load")
        .args(["-D", &seconds.to_string(), "-c", "4", "-m", "8", "-t", "1"])
        .arg("-d")
        .arg(&body)
        .args(["-H", &format!("authorization: Bearer {OPERATOR_KEY}")])
        .args(["-H", "content-type: application/json"])
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("h2load (nghttp2-client, installed by scripts/setup.sh)")
}

impl Cluster {
    /// Starts [`start_h2load`] on the first router's invoke path of `function`
    /// and returns it once the load has run 1.5 s (steady state).
    pub async fn under_load(&self, function: &str, seconds: u32) -> Child {
        let url = self.routers[0].url(&format!("/v1/functions/{function}/invoke"));
        let load = start_h2load(self, &url, seconds);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        load
    }

    /// The index in `self.nodes` of the node with membership id `id`.
    pub fn node_index(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|p| node_id(p) == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }
}

/// Waits for an h2load run and asserts that every request succeeded with a
/// 2xx and that there were enough of them to mean something.
pub async fn expect_no_failed_call(load: Child) {
    let output = tokio::task::spawn_blocking(move || load.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).to_string();
    eprintln!("{report}");
    let (succeeded, failed, errored, statuses) = h2load_counts(&report);
    assert!(
        succeeded > 100,
        "too little load to mean anything: {report}"
    );
    assert_eq!((failed, errored), (0, 0), "{report}");
    // h2load counts a status when the response headers arrive, and a request
    // when its stream ends: a call still in flight when the run stops may
    // count in the first and not in the second.
    assert!(statuses[0] >= succeeded, "every success a 2xx: {report}");
    assert_eq!(statuses[1..], [0, 0, 0], "every answer a 2xx: {report}");
}

/// (succeeded, failed, errored, [2xx, 3xx, 4xx, 5xx]) from an h2load report.
pub fn h2load_counts(report: &str) -> (u64, u64, u64, [u64; 4]) {
    let numbers = |line: &str| -> Vec<u64> {
        line.split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    let requests = report
        .lines()
        .find(|l| l.starts_with("requests:"))
        .map(numbers)
        .unwrap_or_default();
    let statuses = report
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .map(numbers)
        .unwrap_or_default();
    // requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
    let at = |v: &Vec<u64>, i: usize| v.get(i).copied().unwrap_or(u64::MAX);
    (
        at(&requests, 3),
        at(&requests, 4),
        at(&requests, 5),
        [
            at(&statuses, 0),
            at(&statuses, 2),
            at(&statuses, 4),
            at(&statuses, 6),
        ],
    )
}
