//! The router: Pingora's HTTP proxy as the data-plane front door.
//!
//! One plain listener speaks HTTP/1.1 and h2c with prior knowledge; an
//! optional TLS listener (`tls`) beside it offers `h2` and `http/1.1` by ALPN.
//! Requests are checked and refused in `request_filter`, then proxied over h2c
//! to a runtime node. See `proxy.rs` for the phase hooks and ARCHITECTURE.md
//! for the path.
//!
//! # Modules, in layers
//!
//! A module names only modules in the layers below it (no import cycles;
//! `scripts/check-layers.py` checks it). This file only declares, re-exports
//! and starts them.
//!
//! 1. Independent, naming no other module:
//!    - `routes`: the public paths matched to an `Endpoint`, and the node
//!      path an upstream-bound call is pinned to;
//!    - `metrics`: the router's Prometheus metrics;
//!    - `respond`: writing the router's own JSON answers, with every error
//!      through one function, `respond::write_error`;
//!    - `cache`: the result cache of versions that declare `cache`;
//!    - `leases`: this router's leases of the cluster-wide rate limits and
//!      quotas;
//!    - `placement`: the live nodes, their ring and this router's load on them;
//!    - `tls`: the TLS listener's certificate, reloaded from its files;
//!    - `openapi`: the router's OpenAPI document (`GET /openapi.json`).
//! 2. `guards` (the guard rails' per-key state: limiters, quotas, in-flight
//!    counts, breakers, retry budgets; names `leases`), `listener`
//!    (connection caps and deadlines before Pingora's HTTP handling; names
//!    `metrics`), `admission` (body cap, read and validation; names `routes`)
//!    and `local` (the answers the router gives itself; names `routes`,
//!    `metrics`, `guards`, `placement`, `openapi`).
//! 3. `call` (the per-call state, Pingora's `CTX`; names `admission`,
//!    `cache`, `guards`, `placement`, `respond`, `routes`) and `state`
//!    (`RouterState`, shared by every call; names `cache`, `guards`,
//!    `metrics`, `placement`).
//! 4. `tasks` (the task endpoints and the worker that runs queued tasks;
//!    names `admission`, `guards`, `local`, `routes`, `state`).
//! 5. `proxy`: the `ProxyHttp` phase hooks; names all of the above.

mod admission;
mod cache;
mod call;
mod grpc;
pub mod guards;
mod leases;
mod listener;
mod local;
pub mod metrics;
mod node_call;
pub mod openapi;
pub mod pipelines;
pub mod placement;
pub mod proxy;
mod respond;
pub mod routes;
mod state;
pub mod tasks;
pub mod tls;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use contract::connections::ConnectionCaps;
use contract::limits;
use contract::ports::{Authenticator, Catalog, Counters, SharedLimits};
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::http::v2::server::default_h2_options;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;

pub use proxy::{RouterState, TaskmeshProxy};

/// What the router needs to start.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    pub listen: SocketAddr,
    pub threads: usize,
    /// Take the listening socket over from a running router (Pingora's
    /// graceful upgrade) through `upgrade_sock` instead of binding it.
    pub upgrade: bool,
    /// Unix socket the listening sockets are handed over through.
    pub upgrade_sock: Option<std::path::PathBuf>,
    /// How long a graceful stop lets open connections finish (after GOAWAY).
    pub grace: Duration,
    /// A TLS listener beside the plain one (`h2` and `http/1.1` by ALPN).
    pub tls: Option<tls::TlsOptions>,
    /// Task callbacks may reach private addresses (`tasks::callback`).
    pub callbacks_allow_private: bool,
}

impl RouterOptions {
    /// A router on `listen` that stops at once (single-process mode).
    pub fn new(listen: SocketAddr, threads: usize) -> Self {
        RouterOptions {
            listen,
            threads,
            upgrade: false,
            upgrade_sock: None,
            grace: Duration::ZERO,
            tls: None,
            callbacks_allow_private: false,
        }
    }
}

/// How a router stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Close everything now.
    Fast,
    /// Stop accepting, send GOAWAY, let open streams finish within the grace period.
    Graceful,
    /// Hand the listening socket to the new process waiting on the upgrade
    /// socket, then stop gracefully.
    Upgrade,
}

/// The shared services the router works with.
pub struct RouterDeps {
    /// Resolves function versions (the registry).
    pub catalog: Arc<dyn Catalog>,
    /// Checks API keys (the registry's clients).
    pub auth: Arc<dyn Authenticator>,
    /// Durable counters: quotas and per-version call statistics.
    pub counters: Arc<dyn Counters>,
    /// The runtime nodes; kept current by membership in cluster mode.
    pub nodes: Arc<placement::NodeSet>,
    /// Cluster-wide rate limits and quotas (Redis); None keeps them per router.
    pub limits: Option<Arc<dyn SharedLimits>>,
    /// More Prometheus text for `/metrics` (the in-process node's metrics).
    pub extra_metrics: Option<metrics::MetricsSource>,
    /// The cluster key the nodes require of every call.
    pub cluster_key: contract::ClusterKey,
    /// Where tasks are queued; `None` serves no tasks (their endpoints answer 503).
    pub tasks: Option<Arc<dyn contract::task::TaskStore>>,
}

/// How often quota counters are written to the store (the most a crash can lose).
pub const QUOTA_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Periodic upkeep: flush quota counters, retire idle rate-limit keys, and
/// observe the node membership (`taskmesh_router_nodes`).
struct Upkeep {
    state: Arc<RouterState>,
}

#[async_trait]
impl BackgroundService for Upkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(QUOTA_FLUSH_INTERVAL) => {}
            }
            self.state.guards.flush_counters().await;
            self.state.guards.upkeep_leases(false).await;
            let (members, live) = self.state.nodes.counts();
            let ejected = members.saturating_sub(live);
            self.state.metrics.observe_nodes(live, ejected);
            ticks += 1;
            if ticks.is_multiple_of(60) {
                self.state.guards.retire_idle();
            }
        }
        self.state.guards.flush_counters().await;
        self.state.guards.upkeep_leases(true).await;
    }
}

/// A running router; dropping it does not stop it, `shutdown` does.
pub struct RouterHandle {
    stop: Option<tokio::sync::oneshot::Sender<Stop>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub state: Arc<RouterState>,
    /// The TLS listener's certificate, when there is one.
    pub tls: Option<Arc<tls::ReloadingCert>>,
}

impl RouterHandle {
    /// Reloads the TLS certificate now if its files changed (the router also
    /// looks every [`tls::RELOAD_INTERVAL`]); `None` without a TLS listener.
    pub fn reload_tls(&self) -> Option<tls::Reload> {
        self.tls.as_ref().map(|cert| cert.reload_now())
    }

    /// Stops accepting, closes connections and waits for the server thread.
    pub fn shutdown(self) {
        self.stop(Stop::Fast)
    }

    /// Stops as `how` says and waits for the server thread.
    pub fn stop(mut self, how: Stop) {
        if how != Stop::Fast {
            self.state
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(how);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct StopSignal(tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<Stop>>>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let how = match self.0.lock().await.take() {
            Some(rx) => rx.await.unwrap_or(Stop::Fast),
            None => Stop::Fast,
        };
        match how {
            Stop::Fast => ShutdownSignal::FastShutdown,
            Stop::Graceful => ShutdownSignal::GracefulTerminate,
            Stop::Upgrade => ShutdownSignal::GracefulUpgrade,
        }
    }
}

/// Starts the router on its own thread (Pingora runs its own runtimes) and
/// returns once the listener accepts connections.
pub fn start(options: RouterOptions, deps: RouterDeps) -> anyhow::Result<RouterHandle> {
    // Pingora retries a taken address in the background and never says so to
    // its caller: the process would report itself up with no listener. Refuse
    // instead (an upgrade takes the old process's socket, so it is exempt).
    if !options.upgrade {
        std::net::TcpListener::bind(options.listen)
            .map_err(|e| anyhow::anyhow!("the router cannot listen on {}: {e}", options.listen))?;
        if let Some(tls) = &options.tls {
            std::net::TcpListener::bind(tls.listen).map_err(|e| {
                anyhow::anyhow!("the router cannot listen (TLS) on {}: {e}", tls.listen)
            })?;
        }
    }
    if options
        .tls
        .as_ref()
        .is_some_and(|t| t.listen == options.listen)
    {
        anyhow::bail!(
            "the router's TLS listener needs its own address, not {}",
            options.listen
        );
    }
    // A certificate that does not load stops the start (Pingora would panic
    // on its own thread instead).
    let tls = match &options.tls {
        Some(t) => Some((
            t.listen,
            Arc::new(tls::ReloadingCert::load(&t.cert, &t.key).map_err(anyhow::Error::msg)?),
        )),
        None => None,
    };
    let handle_tls = tls.as_ref().map(|(_, cert)| cert.clone());
    let mut state = RouterState::new(
        deps.catalog,
        deps.auth,
        deps.counters,
        deps.nodes,
        deps.limits,
        deps.cluster_key,
    );
    state.extra_metrics = deps.extra_metrics;
    let callbacks =
        tasks::callback::Callbacks::new(&state.cluster_key, options.callbacks_allow_private);
    state.tasks = deps.tasks.map(|store| state::Tasks {
        store,
        wake: tokio::sync::Notify::new(),
        callbacks: Arc::new(callbacks),
    });
    // Experiment (see benchmarks/): Pingora's no-steal runtime, with one
    // upstream connection per worker thread.
    let work_stealing = std::env::var("TASKMESH_ROUTER_WORK_STEALING").map_or(true, |v| v != "0");
    state.per_thread_upstreams = !work_stealing;
    let state = Arc::new(state);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let thread_state = state.clone();
    let upkeep_state = state.clone();
    let thread_state_for_tasks = state.clone();
    let listen = options.listen;
    let threads = options.threads;
    let upgrade = options.upgrade;
    let upgrade_sock = options.upgrade_sock.clone();
    let grace = options.grace.as_secs();
    let thread = std::thread::Builder::new()
        .name("taskmesh-router".into())
        .spawn(move || {
            let mut conf = ServerConf {
                threads,
                grace_period_seconds: Some(grace),
                graceful_shutdown_timeout_seconds: Some(1),
                work_stealing,
                ..ServerConf::default()
            };
            if let Some(sock) = &upgrade_sock {
                conf.upgrade_sock = sock.display().to_string();
            }
            let opt = pingora_core::server::configuration::Opt {
                upgrade,
                ..Default::default()
            };
            let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
            server.bootstrap();
            let connection_metrics = thread_state.metrics.connections.clone();
            let mut app = pingora_proxy::http_proxy(
                &server.configuration,
                TaskmeshProxy {
                    state: thread_state,
                },
            );
            let mut server_options = HttpServerOptions::default();
            server_options.h2c = true;
            server_options.keepalive_request_limit = None;
            server_options.h2_idle_timeout = Some(limits::IDLE_TIMEOUT);
            app.server_options = Some(server_options);
            let mut h2 = default_h2_options();
            h2.max_concurrent_streams(limits::H2_MAX_CONCURRENT_STREAMS)
                .max_header_list_size(limits::H2_MAX_HEADER_LIST_BYTES)
                .initial_window_size(limits::H2_INITIAL_STREAM_WINDOW_BYTES)
                .initial_connection_window_size(limits::H2_INITIAL_CONNECTION_WINDOW_BYTES);
            app.h2_options = Some(h2);
            let mut service = Service::new(
                "taskmesh router".to_string(),
                listener::Guarded::new(app, ConnectionCaps::default(), connection_metrics),
            );
            // Listeners are bound in the order added, all before any accepts:
            // TLS first, so that a plain listener that answers means both are up.
            if let Some((tls_listen, cert)) = &tls {
                // Paths are unused: the resolver hands out the certificate.
                let mut settings = TlsSettings::intermediate("", "").expect("TLS settings");
                settings.set_cert_resolver(cert.clone());
                settings.enable_h2();
                service.add_tls_with_settings(&tls_listen.to_string(), None, settings);
                server.add_service(background_service(
                    "taskmesh-tls-reload",
                    tls::Reloader { cert: cert.clone() },
                ));
            }
            service.add_tcp(&listen.to_string());
            server.add_service(service);
            if thread_state_for_tasks.tasks.is_some() {
                let worker = tasks::worker::TaskWorker::new(thread_state_for_tasks);
                server.add_service(background_service(
                    "taskmesh-tasks",
                    tasks::worker::WorkerService(Arc::new(worker)),
                ));
            }
            server.add_service(background_service(
                "taskmesh-upkeep",
                Upkeep {
                    state: upkeep_state,
                },
            ));
            server.run(RunArgs {
                shutdown_signal: Box::new(StopSignal(tokio::sync::Mutex::new(Some(stop_rx)))),
            });
        })?;
    let handle = RouterHandle {
        stop: Some(stop_tx),
        thread: Some(thread),
        state,
        tls: handle_tls,
    };
    // The TLS listener is bound before the plain one (see above); it is not
    // probed (an empty connection is a failed handshake, and logged).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            handle.shutdown();
            anyhow::bail!("router did not start listening on {listen}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(handle)
}
