//! `taskmesh`: run the platform and talk to it.

mod api;
mod bench;
mod clients;
mod cluster;
mod config;
mod functions;
mod pipelines;
mod rollout;
mod task;
mod up;
mod wiring;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use figment::value::{Dict, Value as FigValue};

use crate::api::Output;
use crate::config::Config;
use crate::functions::{FnCommand, InvokeArgs};

#[derive(Parser)]
#[command(
    name = "taskmesh",
    version,
    about = "Serverless platform for ONNX functions",
    after_help = "Examples:\n  \
        taskmesh up                                   # router, registry and a node, with the examples\n  \
        taskmesh fn list\n  \
        taskmesh invoke digits --data @examples/digits/sample.json\n  \
        taskmesh task submit digits --data @examples/digits/sample.json --wait\n  \
        KEY=$(taskmesh client create web-app --scope invoke)\n\n\
        Exit codes: 0 ok, 1 failed, 2 usage, 3 unreachable, 4 unauthenticated or forbidden,\n\
        5 not found, 6 refused (invalid, conflict, too large), 7 rate limit or quota, 8 server error."
)]
struct Cli {
    /// Config file (default: ./taskmesh.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// API key for `fn` and `invoke` (default: TASKMESH_API_KEY, then <data-dir>/admin.key).
    #[arg(long, global = true)]
    api_key: Option<String>,
    /// How read commands print (also TASKMESH_OUTPUT): text, or the server's JSON.
    #[arg(long, global = true, value_enum)]
    output: Option<Output>,
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
    /// SLA load check: call a function at a fixed rate, report latency and
    /// errors, exit 9 when an --sla bound is breached.
    Bench(bench::BenchArgs),
    /// Pipelines: register, list and read them (admin API); run one (router).
    Pipeline {
        #[command(subcommand)]
        command: pipelines::PipelineCommand,
    },
    /// API keys: create, list, revoke and rotate clients (talks to the admin API).
    Client {
        #[command(subcommand)]
        command: clients::ClientCommand,
    },
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

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error:#}");
        std::process::exit(api::exit_code(&error));
    }
}

fn run() -> Result<()> {
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
    if let Some(output) = cli.output {
        let text = if output == Output::Json {
            "json"
        } else {
            "text"
        };
        flags.insert("output".into(), text.into());
    }
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
        Command::Fn { command } => flag(&mut flags, "admin_url", command.admin_url()),
        Command::Client { command } => flag(&mut flags, "admin_url", command.admin_url()),
        Command::Pipeline { command } => {
            flag(&mut flags, "admin_url", command.admin_url());
            flag(&mut flags, "router_url", command.router_url());
        }
        Command::Invoke(a) => flag(&mut flags, "router_url", a.router_url.clone()),
        Command::Bench(a) => flag(&mut flags, "router_url", a.router_url.clone()),
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
        Command::Fn { command } => runtime.block_on(functions::run(&config, command)),
        Command::Client { command } => runtime.block_on(clients::run(&config, command)),
        Command::Pipeline { command } => runtime.block_on(pipelines::run(&config, command)),
        Command::Invoke(args) => runtime.block_on(functions::invoke(&config, &args)),
        Command::Bench(args) => runtime.block_on(bench::run(&config, args)),
        Command::Task { command } => runtime.block_on(task::run(&config, command)),
        Command::Alias { command } => runtime.block_on(rollout::alias(&config, command)),
        Command::Rollout { command } => runtime.block_on(rollout::rollout(&config, command)),
        Command::Registry(_) => runtime.block_on(cluster::registry(config)),
        Command::Node(_) => runtime.block_on(cluster::node(config)),
        Command::Router(args) => runtime.block_on(cluster::router(config, args.upgrade)),
    }
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
