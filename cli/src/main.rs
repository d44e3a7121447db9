//! `taskmesh`: run the platform and talk to it.

mod client;
mod cluster;
mod config;
mod rollout;
mod task;
mod up;
mod wiring;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use figment::value::{Dict, Value as FigValue};
use http::Method;

use crate::client::H2Client;
use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "taskmesh",
    version,
    about = "Serverless platform for ONNX functions"
)]
struct Cli {
    /// Config file (default: ./taskmesh.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// API key for `fn` and `invoke` (default: TASKMESH_API_KEY, then <data-dir>/admin.key).
    #[arg(long, global = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run router, registry and one runtime node in one process on the embedded store.
    Up(UpArgs),
    /// Register and list functions (talks to the registry admin API).
    Fn {
        #[command(subcommand)]
        command: FnCommand,
    },
    /// Invoke a function through the router over HTTP/2.
    Invoke(InvokeArgs),
    /// Asynchronous invocations: submit, get, list, cancel and retry tasks.
    Task {
        #[command(subcommand)]
        command: task::TaskCommand,
    },
    /// Aliases: named weighted routes to versions (talks to the admin API).
    Alias {
        #[command(subcommand)]
        command: rollout::AliasCommand,
    },
    /// Automated canary rollouts of an alias to a version.
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
    /// Cluster mode: the registry (admin API) on Redis and a model store.
    Registry(ClusterArgs),
    /// Cluster mode: a runtime node that joins the cluster through Redis.
    Node(ClusterArgs),
    /// Cluster mode: a router that follows membership in Redis.
    Router(ClusterArgs),
}

/// Flags of the cluster processes (each also `TASKMESH_<FLAG>` or in taskmesh.toml).
#[derive(Args, Default)]
struct ClusterArgs {
    /// Listener (defaults: router 127.0.0.1:8080, registry 127.0.0.1:8081, node 127.0.0.1:9000).
    #[arg(long)]
    listen: Option<String>,
    /// Redis URL, e.g. redis://127.0.0.1:6379/0.
    #[arg(long)]
    redis: Option<String>,
    /// Model store: file:///shared/folder or s3://bucket/prefix (registry and node).
    #[arg(long)]
    model_store: Option<String>,
    /// Node: the host:port routers reach it at (default: the listener).
    #[arg(long)]
    advertise: Option<String>,
    /// Local data directory (node: model cache; default ./.taskmesh).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Node: memory for loaded instances, in MiB (default 4096).
    #[arg(long)]
    memory_budget_mb: Option<u64>,
    /// Node: run GPU functions with the CUDA execution provider.
    #[arg(long)]
    gpu: bool,
    /// Node: seconds to finish in-flight calls after SIGTERM (default 30).
    #[arg(long)]
    drain_timeout_s: Option<u64>,
    /// Router: ε of bounded-load placement (default 0.25).
    #[arg(long)]
    placement_epsilon: Option<f64>,
    /// Router: take the listening socket over from the running router (which
    /// hands it over on SIGQUIT) instead of binding it.
    #[arg(long)]
    upgrade: bool,
    /// Router: the Unix socket of the upgrade hand-over (default <data-dir>/router-upgrade.sock).
    #[arg(long)]
    upgrade_sock: Option<PathBuf>,
    /// The cluster key, the same on every router, node and registry (else
    /// TASKMESH_CLUSTER_KEY): nodes refuse calls without it.
    #[arg(long)]
    cluster_key_file: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// The router's TLS listener (each also `TASKMESH_TLS_*` or `tls_*` in taskmesh.toml),
/// and its task callbacks.
#[derive(Args, Default)]
struct TlsArgs {
    /// Router: task completion callbacks may reach private addresses
    /// (loopback, private networks, link-local); also TASKMESH_CALLBACKS_ALLOW_PRIVATE.
    #[arg(long)]
    callbacks_allow_private: bool,
    /// Router: also serve TLS here (h2 and HTTP/1.1 by ALPN); needs --tls-cert and --tls-key.
    #[arg(long, value_name = "ADDR")]
    tls_listen: Option<String>,
    /// Router: PEM certificate chain for --tls-listen (reloaded when the file changes).
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// Router: PEM private key for --tls-listen (reloaded when the file changes).
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn flags(&self, dict: &mut Dict) {
        if self.callbacks_allow_private {
            dict.insert("callbacks_allow_private".into(), true.into());
        }
        flag(dict, "tls_listen", self.tls_listen.clone());
        flag(
            dict,
            "tls_cert",
            self.tls_cert.as_ref().map(|p| p.display().to_string()),
        );
        flag(
            dict,
            "tls_key",
            self.tls_key.as_ref().map(|p| p.display().to_string()),
        );
    }
}

#[derive(Args, Default)]
struct UpArgs {
    /// Router listener (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
    /// Registry admin API listener (default 127.0.0.1:8081).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Runtime node listener (default 127.0.0.1:0, a free port).
    #[arg(long)]
    node_listen: Option<String>,
    /// Data directory (default ./.taskmesh).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Folder of example functions to register (default ./examples when present).
    #[arg(long)]
    examples: Option<PathBuf>,
    /// Register no example functions.
    #[arg(long)]
    no_examples: bool,
    /// Memory the node may spend on loaded instances, in MiB (default 4096).
    #[arg(long)]
    memory_budget_mb: Option<u64>,
    /// Also route to a runtime node running elsewhere (repeatable).
    #[arg(long = "extra-node", value_name = "ADDR")]
    extra_nodes: Vec<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Subcommand)]
enum FnCommand {
    /// Register a definition file (JSON or YAML). A `model` or a text input's
    /// `tokenizer` that is a path (e.g. `./model.onnx`, relative to the file)
    /// is uploaded first.
    Register {
        file: PathBuf,
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// List registered functions.
    List {
        #[arg(long)]
        admin_url: Option<String>,
    },
}

#[derive(Args)]
struct InvokeArgs {
    /// Function name.
    name: String,
    /// JSON input.
    #[arg(long)]
    data: String,
    /// Version to call (default: latest).
    #[arg(long)]
    version: Option<u32>,
    #[arg(long)]
    router_url: Option<String>,
}

fn flag(dict: &mut Dict, key: &str, value: Option<impl Into<FigValue>>) {
    if let Some(v) = value {
        dict.insert(key.into(), v.into());
    }
}

/// Crates whose trace output prints request headers (and so API keys); they
/// are capped at `debug` whatever `TASKMESH_LOG` asks for.
const HEADER_DUMPING_TARGETS: [&str; 4] = ["pingora_proxy", "pingora_core", "h2", "hyper"];

/// The log filter: `TASKMESH_LOG` (tracing's syntax) or a quiet default, with
/// header-dumping crates capped so that keys never reach a log line.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let spec = std::env::var("TASKMESH_LOG")
        .unwrap_or_else(|_| "info,ort=warn,pingora_core=warn,pingora_proxy=off".into());
    tracing_subscriber::EnvFilter::try_new(cap_header_dumping(&spec))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Rewrites a filter so that no header-dumping crate logs at `trace`.
fn cap_header_dumping(spec: &str) -> String {
    let mut directives: Vec<String> = spec
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    let global_trace = directives.iter().any(|d| d == "trace");
    for target in HEADER_DUMPING_TARGETS {
        let asked = directives
            .iter()
            .position(|d| d.split('=').next() == Some(target));
        let traced = match asked {
            Some(i) => directives[i].ends_with("=trace") || !directives[i].contains('='),
            None => global_trace,
        };
        if traced {
            if let Some(i) = asked {
                directives.remove(i);
            }
            directives.push(format!("{target}=debug"));
        }
    }
    directives.join(",")
}

/// mimalloc instead of glibc's malloc: per-thread heaps, no arena locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    // One rustls crypto provider for every TLS user in the process (the
    // router's listener, Redis, S3), before any of them starts.
    registry::cluster::ensure_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .init();
    let env = config::process_env();
    let mut flags = Dict::new();
    flag(&mut flags, "api_key", cli.api_key.clone());
    match &cli.command {
        Command::Up(a) => {
            flag(&mut flags, "listen", a.listen.clone());
            flag(&mut flags, "admin_listen", a.admin_listen.clone());
            flag(&mut flags, "node_listen", a.node_listen.clone());
            flag(
                &mut flags,
                "data_dir",
                a.data_dir.as_ref().map(|p| p.display().to_string()),
            );
            flag(&mut flags, "memory_budget_mb", a.memory_budget_mb);
            if !a.extra_nodes.is_empty() {
                flags.insert("extra_nodes".into(), a.extra_nodes.clone().into());
            }
            flag(
                &mut flags,
                "examples",
                a.examples.as_ref().map(|p| p.display().to_string()),
            );
            a.tls.flags(&mut flags);
        }
        Command::Fn {
            command: FnCommand::Register { admin_url, .. } | FnCommand::List { admin_url },
        } => {
            flag(&mut flags, "admin_url", admin_url.clone());
        }
        Command::Invoke(a) => flag(&mut flags, "router_url", a.router_url.clone()),
        Command::Task { command } => flag(&mut flags, "router_url", command.router_url()),
        Command::Alias { command } => flag(&mut flags, "admin_url", command.admin_url()),
        Command::Rollout { command } => flag(&mut flags, "admin_url", command.admin_url()),
        Command::Registry(a) | Command::Node(a) | Command::Router(a) => {
            flag(&mut flags, "listen", a.listen.clone());
            flag(&mut flags, "redis", a.redis.clone());
            flag(&mut flags, "model_store", a.model_store.clone());
            flag(&mut flags, "advertise", a.advertise.clone());
            flag(
                &mut flags,
                "data_dir",
                a.data_dir.as_ref().map(|p| p.display().to_string()),
            );
            flag(&mut flags, "memory_budget_mb", a.memory_budget_mb);
            flag(&mut flags, "drain_timeout_s", a.drain_timeout_s);
            flag(&mut flags, "placement_epsilon", a.placement_epsilon);
            flag(
                &mut flags,
                "upgrade_sock",
                a.upgrade_sock.as_ref().map(|p| p.display().to_string()),
            );
            flag(
                &mut flags,
                "cluster_key_file",
                a.cluster_key_file.as_ref().map(|p| p.display().to_string()),
            );
            if a.gpu {
                flags.insert("gpu".into(), true.into());
            }
            a.tls.flags(&mut flags);
        }
    }
    let mut config =
        Config::load(cli.config.as_deref(), &env, flags).context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Up(args) => {
            if args.no_examples {
                config.examples = None;
            } else if config.examples.is_none() && Path::new("examples").is_dir() {
                config.examples = Some(PathBuf::from("examples"));
            }
            runtime.block_on(up::run(config))
        }
        Command::Fn {
            command: FnCommand::Register { file, .. },
        } => runtime.block_on(register(&config, &file)),
        Command::Fn {
            command: FnCommand::List { .. },
        } => runtime.block_on(list(&config)),
        Command::Invoke(args) => runtime.block_on(invoke(&config, &args)),
        Command::Task { command } => runtime.block_on(task::run(&config, command)),
        Command::Alias { command } => runtime.block_on(rollout::alias(&config, command)),
        Command::Rollout { command } => runtime.block_on(rollout::rollout(&config, command)),
        Command::Registry(_) => runtime.block_on(cluster::registry(config)),
        Command::Node(_) => runtime.block_on(cluster::node(config)),
        Command::Router(args) => runtime.block_on(cluster::router(config, args.upgrade)),
    }
}

/// The text inputs' `tokenizer`s given as paths (not `sha256:` digests): their
/// JSON pointers in the definition and the paths, relative to the definition file.
pub fn tokenizer_paths(doc: &serde_json::Value) -> Vec<(String, String)> {
    let Some(inputs) = doc.get("inputs").and_then(|i| i.as_object()) else {
        return Vec::new();
    };
    inputs
        .iter()
        .filter_map(|(field, spec)| {
            let path = spec.pointer("/text/tokenizer")?.as_str()?;
            let field = field.replace('~', "~0").replace('/', "~1");
            (!path.starts_with("sha256:"))
                .then(|| (format!("/inputs/{field}/text/tokenizer"), path.to_string()))
        })
        .collect()
}

/// Uploads a file a definition names by path to `url` (`/v1/models` or
/// `/v1/artifacts`); returns its digest.
async fn upload_file(client: &H2Client, url: &str, path: &Path, what: &str) -> Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let reply = client
        .send(Method::POST, url, Some("application/octet-stream"), bytes)
        .await?;
    if !reply.status.is_success() {
        bail!(
            "uploading {} failed: {} {}",
            path.display(),
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    let uploaded: serde_json::Value = serde_json::from_slice(&reply.body)?;
    uploaded["digest"]
        .as_str()
        .map(str::to_string)
        .context("the registry answered without a digest")
}

/// Reads a definition file, uploading a model or tokenizer given as a path;
/// returns the document to post.
pub async fn prepare_definition(
    client: &H2Client,
    admin_url: &str,
    file: &Path,
) -> Result<(Vec<u8>, &'static str)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let yaml = matches!(
        file.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let mut doc: serde_json::Value = if yaml {
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?
    } else {
        serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?
    };
    let base = file.parent().unwrap_or(Path::new("."));
    if let Some(model) = doc
        .get("model")
        .and_then(|m| m.as_str())
        .filter(|m| !m.starts_with("sha256:"))
    {
        let url = format!("{admin_url}/v1/models");
        let digest = upload_file(client, &url, &base.join(model), "model").await?;
        doc["model"] = serde_json::Value::String(digest);
    }
    for (pointer, path) in tokenizer_paths(&doc) {
        let url = format!("{admin_url}/v1/artifacts");
        let digest = upload_file(client, &url, &base.join(path), "tokenizer").await?;
        if let Some(slot) = doc.pointer_mut(&pointer) {
            *slot = serde_json::Value::String(digest);
        }
    }
    Ok((serde_json::to_vec(&doc)?, "application/json"))
}

async fn register(config: &Config, file: &Path) -> Result<()> {
    let client = H2Client::new(config.key());
    let (body, content_type) = prepare_definition(&client, &config.admin_url, file).await?;
    let reply = client
        .send(
            Method::POST,
            &format!("{}/v1/functions", config.admin_url),
            Some(content_type),
            body,
        )
        .await?;
    println!("{}", String::from_utf8_lossy(&reply.body));
    if !reply.status.is_success() {
        bail!("registration failed: {}", reply.status);
    }
    Ok(())
}

async fn list(config: &Config) -> Result<()> {
    let reply = H2Client::new(config.key())
        .send(
            Method::GET,
            &format!("{}/v1/functions", config.admin_url),
            None,
            Vec::new(),
        )
        .await?;
    let body: serde_json::Value =
        serde_json::from_slice(&reply.body).context("registry answered with non-JSON")?;
    if !reply.status.is_success() {
        bail!("listing failed: {} {body}", reply.status);
    }
    for f in body["functions"].as_array().into_iter().flatten() {
        println!(
            "{}\tlatest {}\tversions {}",
            f["name"].as_str().unwrap_or("?"),
            f["latest_version"],
            f["versions"]
        );
    }
    Ok(())
}

async fn invoke(config: &Config, args: &InvokeArgs) -> Result<()> {
    let mut url = format!("{}/v1/functions/{}/invoke", config.router_url, args.name);
    if let Some(v) = args.version {
        url.push_str(&format!("?version={v}"));
    }
    let reply = H2Client::new(config.key())
        .send(
            Method::POST,
            &url,
            Some("application/json"),
            args.data.clone().into_bytes(),
        )
        .await?;
    let version = reply
        .headers
        .get("x-taskmesh-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    eprintln!("status {} version {version}", reply.status);
    println!("{}", String::from_utf8_lossy(&reply.body));
    if !reply.status.is_success() {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_never_reaches_header_dumping_crates() {
        assert_eq!(cap_header_dumping("info,ort=warn"), "info,ort=warn");
        assert_eq!(
            cap_header_dumping("trace"),
            "trace,pingora_proxy=debug,pingora_core=debug,h2=debug,hyper=debug"
        );
        assert_eq!(
            cap_header_dumping("info,pingora_proxy=trace"),
            "info,pingora_proxy=debug"
        );
        assert_eq!(
            cap_header_dumping("trace,h2=warn").matches("h2=").count(),
            1
        );
    }
}
