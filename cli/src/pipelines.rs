//! `taskmesh pipeline …`: register, list and read pipelines on the admin
//! API; run one through the router.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use http::Method;

use crate::api::{exit_code_of_status, H2Client, Output};
use crate::config::Config;
use crate::functions::{print_json, read_data};

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Register a pipeline file (JSON or YAML) as its next version.
    #[command(
        after_help = "Example:\n  taskmesh pipeline register examples/pipelines/look-and-describe.json"
    )]
    Register {
        file: PathBuf,
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// List pipelines.
    List {
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// Show a pipeline (its latest version whole), or one version.
    Get {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// Run a pipeline; its output on stdout, status and version on stderr.
    #[command(after_help = "Examples:\n  \
        taskmesh pipeline invoke embed-captions --data '{\"captions\": [\"a red dress\", \"boots\"]}'\n  \
        taskmesh pipeline invoke look-and-describe --data @input.json --trace")]
    Invoke {
        name: String,
        /// JSON input, or @FILE (@- for stdin).
        #[arg(long)]
        data: String,
        #[arg(long)]
        version: Option<u32>,
        /// Answer with each step's version, node, cold start and time too.
        #[arg(long)]
        trace: bool,
        #[arg(long)]
        router_url: Option<String>,
    },
}

impl PipelineCommand {
    pub fn admin_url(&self) -> Option<String> {
        match self {
            PipelineCommand::Register { admin_url, .. }
            | PipelineCommand::List { admin_url }
            | PipelineCommand::Get { admin_url, .. } => admin_url.clone(),
            PipelineCommand::Invoke { .. } => None,
        }
    }

    pub fn router_url(&self) -> Option<String> {
        match self {
            PipelineCommand::Invoke { router_url, .. } => router_url.clone(),
            _ => None,
        }
    }
}

pub async fn run(config: &Config, command: PipelineCommand) -> Result<()> {
    let client = H2Client::new(config.key());
    let admin = config.admin_url.trim_end_matches('/');
    match command {
        PipelineCommand::Register { file, .. } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let yaml = matches!(
                file.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            );
            let ct = if yaml {
                "application/yaml"
            } else {
                "application/json"
            };
            let url = format!("{admin}/v1/pipelines");
            let registered = client
                .send(Method::POST, &url, Some(ct), bytes)
                .await?
                .json()
                .with_context(|| format!("registering {}", file.display()))?;
            print_json(&registered);
        }
        PipelineCommand::List { .. } => {
            let url = format!("{admin}/v1/pipelines");
            let body = client
                .send(Method::GET, &url, None, Vec::new())
                .await?
                .json()
                .context("listing pipelines")?;
            if config.output == Output::Json {
                print_json(&body);
                return Ok(());
            }
            for p in body["pipelines"].as_array().into_iter().flatten() {
                println!(
                    "{}\tlatest {}\tversions {}",
                    p["name"].as_str().unwrap_or("?"),
                    p["latest_version"],
                    p["versions"]
                );
            }
        }
        PipelineCommand::Get { name, version, .. } => {
            let url = match version {
                Some(v) => format!("{admin}/v1/pipelines/{name}/versions/{v}"),
                None => format!("{admin}/v1/pipelines/{name}"),
            };
            let body = client
                .send(Method::GET, &url, None, Vec::new())
                .await?
                .json()
                .with_context(|| format!("reading pipeline {name}"))?;
            print_json(&body);
        }
        PipelineCommand::Invoke {
            name,
            data,
            version,
            trace,
            ..
        } => {
            let mut query = Vec::new();
            if let Some(v) = version {
                query.push(format!("version={v}"));
            }
            if trace {
                query.push("trace=steps".to_string());
            }
            let url = format!(
                "{}/v1/pipelines/{name}/invoke?{}",
                config.router_url.trim_end_matches('/'),
                query.join("&")
            );
            let reply = client
                .send(
                    Method::POST,
                    &url,
                    Some("application/json"),
                    read_data(&data)?,
                )
                .await?;
            let version = reply
                .headers
                .get("x-taskmesh-pipeline-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            eprintln!("status {} pipeline version {version}", reply.status);
            println!("{}", String::from_utf8_lossy(&reply.body));
            if !reply.status.is_success() {
                std::process::exit(exit_code_of_status(reply.status));
            }
        }
    }
    Ok(())
}
