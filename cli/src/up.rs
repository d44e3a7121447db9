//! `taskmesh up`: router, registry and one runtime node in one process.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use contract::definition::Syntax;
use registry::{Auth, EmbeddedStore, ModelStore, Registry, DEFAULT_TENANT};
use runtime::engine::EngineConfig;
use runtime::session::SessionOptions;
use runtime::{Engine, OrtInspector};
use tokio::net::TcpListener;

use crate::config::Config;

/// The router's listener unless configured.
pub const DEFAULT_ROUTER_LISTEN: &str = "127.0.0.1:8080";

pub async fn run(config: Config) -> Result<()> {
    // Refuse at once, before anything is written, when an address is taken
    // or the TLS certificate does not load.
    let tls = config.checked_tls()?;
    for (what, addr) in [
        ("router", config.listen_or(DEFAULT_ROUTER_LISTEN)),
        ("admin API", config.admin_listen),
    ]
    .into_iter()
    .chain(tls.as_ref().map(|t| ("router (TLS)", t.listen)))
    {
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("the {what} cannot listen on {addr}"))?;
    }
    runtime::ortenv::environment().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let store: Arc<dyn registry::Store> = Arc::new(
        EmbeddedStore::open(&config.data_dir.join("registry.redb"))
            .context("opening the embedded store")?,
    );
    let tasks = registry::EmbeddedTasks::open(
        &config.data_dir.join("tasks.redb"),
        Some(config.task_retention_s.saturating_mul(1000)),
    )
    .context("opening the task store")?;
    let models =
        ModelStore::open(config.data_dir.join("models")).context("opening the model store")?;
    let registry = Arc::new(
        Registry::new(store.clone(), models, Arc::new(OrtInspector))
            .with_scaling_bounds(config.scaling_bounds),
    );
    let operator = crate::config::Config::operator_key(&crate::config::process_env())
        .map_err(anyhow::Error::msg)?;
    let auth = Arc::new(Auth::new(store.clone(), operator.as_deref()));
    let new_operator_key = auth
        .ensure_operator()
        .await
        .map_err(|e| anyhow::anyhow!("creating the operator key: {e}"))?;
    if let Some(key) = &new_operator_key {
        write_admin_key(&config.data_dir.join("admin.key"), key)?;
    }
    let cluster_key = load_or_create_cluster_key(&config)?;

    let engine = Engine::new(
        crate::wiring::node_sources(&registry),
        EngineConfig {
            session: SessionOptions {
                intra_threads: config.session_threads,
                gpu: false,
            },
            memory_budget_bytes: config.memory_budget_mb.saturating_mul(1 << 20),
            ..EngineConfig::default()
        },
    );
    // New versions with min_instances are warmed at registration.
    let warm = Arc::downgrade(&engine);
    registry.on_register(Box::new(move |version| {
        if let Some(engine) = warm.upgrade() {
            engine.ensure_min_instances(version);
        }
    }));
    let node_listener = TcpListener::bind(config.node_listen)
        .await
        .with_context(|| format!("binding node listener {}", config.node_listen))?;
    let node_addr = node_listener.local_addr()?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding admin listener {}", config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let node_app = runtime::server::router(
        engine.clone(),
        format!("node-{}", node_addr.port()),
        cluster_key.clone(),
    );
    let node_task = tokio::spawn(runtime::server::serve(
        node_listener,
        node_app,
        stopped(stop_rx.clone()),
    ));
    let cuda = runtime::session::cuda_available();
    if cuda {
        tracing::info!("CUDA execution provider available: GPU functions run on the GPU");
    } else {
        tracing::info!(
            "no CUDA execution provider: this node refuses GPU functions (resources.gpu)"
        );
    }
    let directory: Arc<dyn registry::api::NodeDirectory> = Arc::new(LocalNode {
        gpus: u32::from(cuda),
        engine: engine.clone(),
        id: format!("node-{}", node_addr.port()),
        address: node_addr.to_string(),
    });
    // Rollouts are driven here; `up` is one process per data dir, so its lease holder is fixed.
    let rollouts = Arc::new(registry::rollout_driver::Rollouts::new(
        registry.clone(),
        Some(Arc::new(crate::rollout::EngineWarmer(engine.clone()))),
        "taskmesh-up".into(),
    ));
    rollouts.clone().spawn();
    let admin_app = registry::api::router_with_rollouts(
        registry.clone(),
        auth.clone(),
        Some(directory),
        Some(rollouts.clone()),
    );
    let admin_task = tokio::spawn(runtime::server::serve(
        admin_listener,
        admin_app,
        stopped(stop_rx.clone()),
    ));

    if let Some(dir) = &config.examples {
        register_examples(&registry, dir).await?;
    }
    warm_stored_versions(&registry, &engine).await;

    let listen = config.listen_or(DEFAULT_ROUTER_LISTEN);
    let router_threads = config.router_threads(true);
    let extra_nodes = config.extra_nodes.clone();
    let node_metrics = engine.clone();
    let deps = router::RouterDeps {
        extra_metrics: Some(Arc::new(move || {
            let mut text = node_metrics.metrics_text();
            text = text.trim_end().trim_end_matches("# EOF").to_string();
            text.push('\n');
            text.push_str(&rollouts.metrics_text());
            text.push('\n');
            text
        })),
        tasks: Some(Arc::new(tasks)),
        ..crate::wiring::router_deps(
            registry,
            auth,
            store,
            Arc::new(fixed_nodes(node_addr, cuda, &extra_nodes, config.bounds())),
            cluster_key,
        )
    };
    let tls_listen = tls.as_ref().map(|t| t.listen);
    let options = router::RouterOptions {
        tls,
        callbacks_allow_private: config.callbacks_allow_private,
        ..router::RouterOptions::new(listen, router_threads)
    };
    let router = tokio::task::spawn_blocking(move || router::start(options, deps)).await??;

    println!("taskmesh is up");
    println!("  router   http://{listen}  (HTTP/1.1 and h2c)");
    if let Some(tls_listen) = tls_listen {
        println!("  router   https://{tls_listen}  (TLS: h2 and HTTP/1.1 by ALPN)");
    }
    println!("  admin    http://{admin_addr}");
    println!("  node     http://{node_addr}");
    println!("  data     {}", config.data_dir.display());
    match &new_operator_key {
        Some(key) => println!(
            "  operator key (shown once, also in {}): {key}",
            config.data_dir.join("admin.key").display()
        ),
        None => println!(
            "  operator key: in {}",
            config.data_dir.join("admin.key").display()
        ),
    }
    wait_for_signal(&router).await;
    tracing::info!("shutting down");
    tokio::task::spawn_blocking(move || router.shutdown()).await?;
    let _ = stop_tx.send(true);
    let _ = node_task.await;
    let _ = admin_task.await;
    Ok(())
}

/// The in-process node (with a GPU when CUDA is available) and any extra
/// nodes given on the command line (taken as CPU nodes).
fn fixed_nodes(
    local: std::net::SocketAddr,
    cuda: bool,
    extra: &[std::net::SocketAddr],
    bounds: policies::ring::Bounds,
) -> router::placement::NodeSet {
    let set = router::placement::NodeSet::new(bounds);
    let node = |addr: std::net::SocketAddr, gpu| router::placement::NodeInfo {
        id: format!("node-{}", addr.port()),
        addr,
        gpu,
    };
    set.update(
        std::iter::once(node(local, cuda))
            .chain(extra.iter().map(|a| node(*a, false)))
            .collect(),
    );
    set
}

/// Waits for SIGTERM or Ctrl-C; SIGHUP meanwhile reloads the TLS certificate.
async fn wait_for_signal(router: &router::RouterHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hangup.recv() => {
                router.reload_tls();
            }
        }
    }
}

/// Registers each `examples/*/function.{json,yaml}` whose model is built,
/// skipping those whose latest version already has the same definition.
async fn register_examples(registry: &Registry, dir: &Path) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for folder in entries.into_iter().filter(|p| p.is_dir()) {
        let Some(file) = ["function.json", "function.yaml"]
            .iter()
            .map(|f| folder.join(f))
            .find(|p| p.is_file())
        else {
            continue;
        };
        let model = folder.join("model.onnx");
        if !model.is_file() {
            tracing::warn!(example = %folder.display(), "model.onnx missing (run scripts/setup.sh); example skipped");
            continue;
        }
        let digest = registry
            .upload_model(&std::fs::read(&model)?)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", model.display()))?;
        let text = std::fs::read_to_string(&file)?;
        let mut doc: serde_json::Value = if file.extension().is_some_and(|e| e == "yaml") {
            serde_yaml::from_str(&text)?
        } else {
            serde_json::from_str(&text)?
        };
        doc["model"] = serde_json::Value::String(digest);
        for (pointer, path) in crate::functions::tokenizer_paths(&doc) {
            let path = folder.join(path);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let digest = registry
                .upload_artifact(&bytes)
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if let Some(slot) = doc.pointer_mut(&pointer) {
                *slot = serde_json::Value::String(digest);
            }
        }
        let bytes = serde_json::to_vec(&doc)?;
        let definition = contract::definition::parse(&bytes, Syntax::Json)
            .map_err(|e| anyhow::anyhow!("{}: {:?}", file.display(), e.violations))?;
        let name = definition.name.clone();
        let latest = registry
            .resolve(DEFAULT_TENANT, &name, &registry::Qualifier::Default)
            .await
            .ok();
        if latest.as_ref().is_some_and(|v| v.definition == definition) {
            println!(
                "example {name}: version {} (unchanged)",
                latest.map_or(0, |v| v.version)
            );
            continue;
        }
        let stored = registry
            .register(DEFAULT_TENANT, &bytes, Syntax::Json)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        println!("example {name}: registered version {}", stored.version);
    }
    register_example_pipelines(registry, &dir.join("pipelines")).await
}

/// Registers each `examples/pipelines/*.{json,yaml}` whose functions are
/// registered, skipping those whose latest version is the same document.
async fn register_example_pipelines(registry: &Registry, dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    for file in files {
        let syntax = match file.extension().and_then(|e| e.to_str()) {
            Some("json") => Syntax::Json,
            Some("yaml" | "yml") => Syntax::Yaml,
            _ => continue,
        };
        let bytes = std::fs::read(&file)?;
        let definition = contract::pipeline::parse(&bytes, syntax)
            .map_err(|e| anyhow::anyhow!("{}: {:?}", file.display(), e.violations))?;
        let name = definition.name.clone();
        let latest = registry.pipeline(DEFAULT_TENANT, &name, None).await.ok();
        if latest.as_ref().is_some_and(|p| p.definition == definition) {
            println!(
                "example pipeline {name}: version {} (unchanged)",
                latest.map_or(0, |p| p.version)
            );
            continue;
        }
        match registry
            .register_pipeline(DEFAULT_TENANT, &bytes, syntax)
            .await
        {
            Ok(stored) => println!(
                "example pipeline {name}: registered version {}",
                stored.version
            ),
            // A pipeline over an example whose model is not built is skipped.
            Err(e) => {
                tracing::warn!(pipeline = %file.display(), error = %e, "example pipeline skipped")
            }
        }
    }
    Ok(())
}

/// The cluster key of this `taskmesh up`: configured (`TASKMESH_CLUSTER_KEY`),
/// else `<data-dir>/cluster.key`, created (mode 0600) on the first start so
/// that nodes started elsewhere (`--extra-node`) can be given the same one.
fn load_or_create_cluster_key(config: &Config) -> Result<contract::ClusterKey> {
    if let Some(key) = config
        .cluster_key(&crate::config::process_env())
        .map_err(|e| anyhow::anyhow!(e))?
    {
        return Ok(key);
    }
    let path = config.data_dir.join("cluster.key");
    if let Ok(raw) = std::fs::read_to_string(&path) {
        return contract::ClusterKey::parse(&raw)
            .map_err(|e| anyhow::anyhow!("the cluster key in {}: {e}", path.display()));
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_admin_key(&path, &hex)?;
    contract::ClusterKey::parse(&hex).map_err(|e| anyhow::anyhow!(e))
}

/// Writes a secret (the operator key, the cluster key) readable by its owner only (mode 0600).
fn write_admin_key(path: &Path, key: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{key}")?;
    Ok(())
}

/// Starts `min_instances` of the latest version of every stored function.
async fn warm_stored_versions(registry: &Registry, engine: &Arc<Engine>) {
    let Ok(functions) = registry.list(DEFAULT_TENANT).await else {
        return;
    };
    for function in functions {
        let latest = registry::Qualifier::Version(function.latest_version);
        if let Ok(version) = registry
            .resolve(DEFAULT_TENANT, &function.name, &latest)
            .await
        {
            engine.ensure_min_instances(&version);
        }
    }
}

/// The in-process node, as `GET /v1/nodes` shows it.
struct LocalNode {
    gpus: u32,
    engine: Arc<Engine>,
    id: String,
    address: String,
}

#[async_trait::async_trait]
impl registry::api::NodeDirectory for LocalNode {
    async fn nodes(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<serde_json::Value>, contract::ApiError> {
        let mut snapshot = self.engine.snapshot();
        if let Some(tenant) = tenant {
            snapshot.functions.retain(|f| f.tenant == tenant);
        }
        Ok(vec![serde_json::json!({
            "id": self.id,
            "address": self.address,
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "gpus": self.gpus,
            "memory_budget_bytes": snapshot.memory_budget_bytes,
            "memory_used_bytes": snapshot.memory_used_bytes,
            "in_flight": snapshot.in_flight,
            "warm": snapshot.functions,
        })])
    }
}
