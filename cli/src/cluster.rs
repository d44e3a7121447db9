//! Cluster mode: `taskmesh registry`, `taskmesh node` and `taskmesh router` as
//! separate processes sharing Redis (definitions, clients, counters,
//! membership) and a model store (a shared folder or S3).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::http::StatusCode;
use axum::routing::get;
use registry::cluster::{Membership, NodeRecord, RedisMembership, HEARTBEAT};
use registry::models::ModelRemote;
use registry::{Auth, ModelStore, RedisStore, Registry};
use runtime::engine::EngineConfig;
use runtime::session::SessionOptions;
use runtime::{Engine, OrtInspector};
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::Config;

/// How often routers read membership.
const MEMBERSHIP_POLL: Duration = Duration::from_millis(250);

/// Connects to Redis, waiting (and saying so) while it is not there yet.
async fn connect_redis(config: &Config) -> Result<RedisStore> {
    let url = config
        .redis
        .as_deref()
        .context("cluster mode needs --redis URL (or TASKMESH_REDIS)")?;
    let allow_insecure_tls = std::env::var("TASKMESH_REDIS_INSECURE_TLS").is_ok_and(|v| v == "1");
    if registry::cluster::insecure_tls(url) && !allow_insecure_tls {
        bail!(registry::cluster::INSECURE_REFUSED);
    }
    let options = registry::RedisOptions {
        allow_insecure_tls,
        ..registry::RedisOptions::default()
    };
    let mut delay = Duration::from_millis(200);
    loop {
        match RedisStore::connect_with(url, options.clone()).await {
            Ok(store) => return Ok(store),
            Err(e @ registry::StoreError::Corrupt(_)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "redis is not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The local model cache in front of the shared model store.
fn model_store(config: &Config) -> Result<ModelStore> {
    let url = config
        .model_store
        .as_deref()
        .context("cluster mode needs --model-store file:///path or s3://bucket/prefix")?;
    let remote = ModelRemote::from_url(url).with_context(|| format!("model store {url}"))?;
    ModelStore::open_with_remote(config.data_dir.join("models"), remote)
        .context("opening the model cache")
}

/// The cluster key every process of the cluster shares (required).
fn cluster_key(config: &Config) -> Result<contract::ClusterKey> {
    config
        .cluster_key(&crate::config::process_env())
        .map_err(|e| anyhow::anyhow!(e))?
        .context("cluster mode needs the cluster key, the same on every router, node and registry: --cluster-key-file PATH or TASKMESH_CLUSTER_KEY (make one with `openssl rand -hex 32`)")
}

/// The operator key (required in cluster mode), trimmed and checked.
fn operator_key() -> Result<String> {
    Config::operator_key(&crate::config::process_env())
        .map_err(|e| anyhow::anyhow!(e))?
        .context("cluster mode takes the operator key from TASKMESH_ADMIN_KEY_FILE or TASKMESH_ADMIN_KEY, and neither is set (make one with `openssl rand -hex 32`)")
}

/// `/readyz` for a process (its app serves `/healthz`); readiness turns false while draining.
fn probes(ready: Arc<AtomicBool>) -> axum::Router {
    axum::Router::new().route(
        "/readyz",
        get(move || {
            let ready = ready.load(Ordering::Relaxed);
            async move {
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                contract::http::json_response(status, &json!({"ready": ready}))
            }
        }),
    )
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// Resolves when SIGTERM or Ctrl-C arrives.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `GET /v1/nodes` from membership.
struct ClusterNodes(Arc<dyn Membership>);

#[async_trait::async_trait]
impl registry::api::NodeDirectory for ClusterNodes {
    async fn nodes(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<serde_json::Value>, contract::ApiError> {
        let live = self.0.live().await.map_err(|e| {
            tracing::error!(error = %e, "reading membership failed");
            contract::ApiError::new(
                contract::ErrorCode::Unavailable,
                "membership is unavailable",
            )
            .with_retry_after(1)
        })?;
        Ok(live.iter().map(|n| n.view(tenant)).collect())
    }
}

/// Only routers serve TLS: refuse the settings elsewhere rather than serve
/// plain HTTP to someone who asked for TLS.
fn router_only_tls(config: &Config, role: &str) -> Result<()> {
    if config.tls_listen.is_some() || config.tls_cert.is_some() || config.tls_key.is_some() {
        bail!(
            "--tls-listen/--tls-cert/--tls-key (TASKMESH_TLS_*) are for `taskmesh router`: \
             the {role} serves plain HTTP inside the cluster"
        );
    }
    Ok(())
}

/// `taskmesh registry`: the admin API over Redis and the model store.
pub async fn registry(config: Config) -> Result<()> {
    router_only_tls(&config, "registry")?;
    runtime::ortenv::environment().map_err(anyhow::Error::msg)?;
    let key = operator_key()?;
    let cluster_key = cluster_key(&config)?;
    let listen = config.listen_or("127.0.0.1:8081");
    let redis = connect_redis(&config).await?;
    let store: Arc<dyn registry::Store> = Arc::new(redis.clone());
    let registry = Arc::new(
        Registry::new(store.clone(), model_store(&config)?, Arc::new(OrtInspector))
            .with_scaling_bounds(config.scaling_bounds),
    );
    let auth = Arc::new(Auth::new(store, Some(&key)));
    let ready = Arc::new(AtomicBool::new(true));
    // Versions are warmed on their owner node: at registration when they
    // keep `min_instances`, and before a rollout's first step.
    let warmer = Arc::new(OwnerWarmer {
        membership: Arc::new(RedisMembership::new(redis.clone())),
        client: crate::api::H2Client::new(None),
        cluster_key,
    });
    {
        let warmer = warmer.clone();
        registry.on_register(Box::new(move |version| {
            if version.definition.scaling.min_instances > 0 {
                let (warmer, version) = (warmer.clone(), version.clone());
                tokio::spawn(async move {
                    use registry::rollout_driver::Warmer;
                    if let Err(e) = warmer.warm(&version).await {
                        tracing::warn!(function = %version.name, version = version.version, error = %e, "warming min_instances failed");
                    }
                });
            }
        }));
    }
    // Every registry process drives rollouts; a lease in Redis gives each to one.
    let rollouts = Arc::new(registry::rollout_driver::Rollouts::new(
        registry.clone(),
        Some(warmer),
        format!(
            "registry-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ),
    ));
    rollouts.clone().spawn();
    let app = registry::api::router_with_rollouts(
        registry,
        auth,
        Some(Arc::new(ClusterNodes(Arc::new(RedisMembership::new(
            redis,
        ))))),
        Some(rollouts),
    )
    .merge(probes(ready.clone()));
    let listener = bind(listen).await?;
    println!(
        "taskmesh registry listening on http://{}",
        listener.local_addr()?
    );
    let drained = async move {
        terminated().await;
        ready.store(false, Ordering::Relaxed);
    };
    runtime::server::serve(listener, app, drained).await;
    Ok(())
}

/// `taskmesh node`: a runtime node that heartbeats into membership.
pub async fn node(config: Config) -> Result<()> {
    router_only_tls(&config, "node")?;
    runtime::ortenv::environment().map_err(anyhow::Error::msg)?;
    let cluster_key = cluster_key(&config)?;
    let listen = config.listen_or("127.0.0.1:9000");
    let redis = connect_redis(&config).await?;
    let store: Arc<dyn registry::Store> = Arc::new(redis.clone());
    let registry = Arc::new(Registry::new(
        store,
        model_store(&config)?,
        Arc::new(OrtInspector),
    ));
    // A GPU node that cannot run CUDA fails at start-up: running CPU-only
    // and Ready would take the GPU pool's place in membership and fail every
    // GPU call (the GPU image on a node without a driver, or no device plugin).
    if config.gpu && !runtime::session::cuda_available() {
        bail!(
            "--gpu was given but ONNX Runtime has no usable CUDA execution provider here \
             (the onnxruntime-gpu library, an NVIDIA driver and a visible GPU are needed); \
             run without --gpu for a CPU node"
        );
    }
    let cuda = config.gpu;
    let engine = Engine::new(
        crate::wiring::node_sources(&registry),
        EngineConfig {
            session: SessionOptions {
                intra_threads: config.session_threads,
                gpu: cuda,
            },
            memory_budget_bytes: config.memory_budget_mb.saturating_mul(1 << 20),
            ..EngineConfig::default()
        },
    );
    let listener = bind(listen).await?;
    let local = listener.local_addr()?;
    let address = match &config.advertise {
        Some(a) => a.clone(),
        None if local.ip().is_unspecified() => {
            bail!("the node listens on {local}: give --advertise HOST:PORT so routers can reach it")
        }
        None => local.to_string(),
    };
    let id = format!("node-{address}");
    let membership: Arc<dyn Membership> = Arc::new(RedisMembership::new(redis));
    // Ready once the node is in membership (its first heartbeat), so a
    // rollout waits for a node that routers can actually find.
    let ready = Arc::new(AtomicBool::new(false));
    let app = runtime::server::router(engine.clone(), id.clone(), cluster_key)
        .merge(probes(ready.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(runtime::server::serve(listener, app, {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }));
    let record = {
        let (engine, id, address) = (engine.clone(), id.clone(), address.clone());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        move |draining: bool| {
            let snapshot = engine.snapshot();
            NodeRecord {
                id: id.clone(),
                address: address.clone(),
                cores,
                gpus: u32::from(cuda),
                memory_budget_bytes: snapshot.memory_budget_bytes,
                memory_used_bytes: snapshot.memory_used_bytes,
                in_flight: snapshot.in_flight as u64,
                draining,
                warm: snapshot
                    .functions
                    .iter()
                    .filter_map(|f| serde_json::to_value(f).ok())
                    .collect(),
            }
        }
    };
    let heartbeat = {
        let (membership, record, ready) = (membership.clone(), record.clone(), ready.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                let beat = membership.heartbeat(&record(false)).await;
                if beat.is_ok() && !*stop.borrow() {
                    ready.store(true, Ordering::Relaxed);
                }
                match beat {
                    Ok(()) if failing => {
                        tracing::info!("membership heartbeat restored");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "membership heartbeat failed; still serving");
                        failing = true;
                    }
                    Err(_) => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    };
    println!("taskmesh node {id} listening on http://{local}");
    terminated().await;
    // Leave membership first so routers stop sending, then finish what is in flight.
    ready.store(false, Ordering::Relaxed);
    heartbeat.abort();
    let _ = membership.heartbeat(&record(true)).await;
    let _ = membership.leave(&id).await;
    let grace = Duration::from_secs(config.drain_timeout_s);
    let deadline = tokio::time::Instant::now() + grace;
    // Calls already routed here may still arrive for a moment.
    tokio::time::sleep(Duration::from_millis(300).min(grace)).await;
    while engine.snapshot().in_flight > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = engine.snapshot().in_flight;
    if left > 0 {
        tracing::warn!(
            in_flight = left,
            "drain timeout passed with calls in flight"
        );
    }
    // Connections get GOAWAY; whatever is still open at the deadline is closed.
    let _ = stop_tx.send(true);
    let last = deadline.max(tokio::time::Instant::now() + Duration::from_millis(200));
    let _ = tokio::time::timeout_at(last, server).await;
    tracing::info!("node stopped");
    Ok(())
}

/// `taskmesh router`: the data plane, following membership in Redis.
///
/// SIGTERM (or Ctrl-C): readiness turns false, listeners close, open
/// connections get GOAWAY and `drain_timeout_s` to finish. SIGQUIT: the
/// listening socket goes to the new router started with `--upgrade` (on the
/// same upgrade socket), then the same graceful stop. SIGHUP: the TLS
/// certificate is reloaded now (its files are also looked at every 2 s).
pub async fn router(config: Config, upgrade: bool) -> Result<()> {
    let cluster_key = cluster_key(&config)?;
    let tls = config.checked_tls()?;
    let listen = config.listen_or(crate::up::DEFAULT_ROUTER_LISTEN);
    let redis = connect_redis(&config).await?;
    let store: Arc<dyn registry::Store> = Arc::new(redis.clone());
    // The router never loads models; the registry wants a model store anyway.
    let registry = Arc::new(Registry::new(
        store.clone(),
        ModelStore::open(config.data_dir.join("router-models"))?,
        Arc::new(OrtInspector),
    ));
    let operator =
        Config::operator_key(&crate::config::process_env()).map_err(anyhow::Error::msg)?;
    let auth = Arc::new(Auth::new(store.clone(), operator.as_deref()));
    let nodes = Arc::new(router::placement::NodeSet::new(config.bounds()));
    let membership: Arc<dyn Membership> = Arc::new(RedisMembership::new(redis.clone()));
    // The first view of membership before taking traffic.
    if let Ok(live) = membership.live().await {
        nodes.update(node_infos(&live));
    }
    let watcher = {
        let nodes = nodes.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(MEMBERSHIP_POLL).await;
                match membership.live().await {
                    Ok(live) => {
                        if failing {
                            tracing::info!("membership readable again");
                            failing = false;
                        }
                        nodes.update(node_infos(&live));
                    }
                    // Keep routing to the last known nodes while Redis is away.
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "membership unreadable; keeping the last known nodes");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        })
    };
    let tasks = registry::cluster::RedisTasks::new(
        redis.clone(),
        Some(config.task_retention_s.saturating_mul(1000)),
    );
    let deps = router::RouterDeps {
        limits: Some(Arc::new(redis)),
        tasks: Some(Arc::new(tasks)),
        ..crate::wiring::router_deps(registry, auth, store, nodes, cluster_key)
    };
    let options = router::RouterOptions {
        listen,
        threads: config.router_threads(false),
        upgrade,
        upgrade_sock: Some(
            config
                .upgrade_sock
                .clone()
                .unwrap_or_else(|| config.data_dir.join("router-upgrade.sock")),
        ),
        grace: Duration::from_secs(config.drain_timeout_s),
        tls,
        callbacks_allow_private: config.callbacks_allow_private,
    };
    std::fs::create_dir_all(&config.data_dir)?;
    let handle = tokio::task::spawn_blocking(move || router::start(options, deps)).await??;
    println!("taskmesh router listening on http://{listen}");
    if let Some(tls) = &config.tls() {
        println!("taskmesh router listening on https://{}", tls.listen);
    }
    let how = {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut quit = signal(SignalKind::quit())?;
        let mut hangup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break router::Stop::Graceful,
                _ = term.recv() => break router::Stop::Graceful,
                _ = quit.recv() => break router::Stop::Upgrade,
                // The certificate files are also looked at every few seconds.
                _ = hangup.recv() => {
                    handle.reload_tls();
                }
            }
        }
    };
    tracing::info!(?how, "router stopping");
    watcher.abort();
    tokio::task::spawn_blocking(move || handle.stop(how)).await?;
    tracing::info!("router stopped");
    Ok(())
}

/// Warms a version on the node that owns it (the first ring candidate among
/// the live nodes, as routers place it).
struct OwnerWarmer {
    membership: Arc<dyn Membership>,
    client: crate::api::H2Client,
    /// The warm endpoint is internal: nodes want the cluster key.
    cluster_key: contract::ClusterKey,
}

#[async_trait::async_trait]
impl registry::rollout_driver::Warmer for OwnerWarmer {
    async fn warm(&self, version: &Arc<contract::FunctionVersion>) -> Result<(), String> {
        let live = self.membership.live().await.map_err(|e| e.to_string())?;
        let nodes = node_infos(&live);
        let ring = policies::ring::Ring::new(
            nodes.iter().map(|n| policies::ring::Member {
                id: n.id.clone(),
                gpu: n.gpu,
            }),
            policies::ring::DEFAULT_VNODES,
        );
        let key = router::proxy::placement_key(version);
        let gpu = version.definition.resources.gpu;
        let owner = ring
            .owner(&key, gpu)
            .and_then(|id| nodes.iter().find(|n| n.id == id))
            .ok_or("no runtime node can take the version")?;
        let url = format!(
            "http://{}/v1/functions/{}/versions/{}/warm",
            owner.addr, version.name, version.version
        );
        let reply = self
            .client
            .send_with(
                http::Method::POST,
                &url,
                None,
                &[
                    (contract::headers::TENANT, version.tenant.as_str()),
                    (contract::headers::CLUSTER_KEY, self.cluster_key.expose()),
                ],
                Vec::new(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !reply.status.is_success() {
            return Err(format!(
                "{} answered {}: {}",
                owner.id,
                reply.status,
                String::from_utf8_lossy(&reply.body)
            ));
        }
        tracing::info!(function = %version.name, version = version.version, node = %owner.id, "warmed on its owner");
        Ok(())
    }
}

/// Routable members: those not draining, with a parseable address.
fn node_infos(live: &[NodeRecord]) -> Vec<router::placement::NodeInfo> {
    live.iter()
        .filter(|n| !n.draining)
        .filter_map(|n| {
            let addr = match n.address.parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    use std::net::ToSocketAddrs;
                    n.address.to_socket_addrs().ok()?.next()?
                }
            };
            Some(router::placement::NodeInfo {
                id: n.id.clone(),
                addr,
                gpu: n.gpus > 0,
            })
        })
        .collect()
}
