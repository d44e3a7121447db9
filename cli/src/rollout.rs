//! `taskmesh alias …` and `taskmesh rollout …`, and the engine warmer that
//! `taskmesh up` gives the rollout driver.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use http::Method;
use runtime::engine::Engine;
use serde_json::{json, Value};

use crate::api::{H2Client, Output};
use crate::config::Config;

/// Warms a rollout's target on the in-process node (`taskmesh up`).
pub struct EngineWarmer(pub Arc<Engine>);

#[async_trait::async_trait]
impl registry::rollout_driver::Warmer for EngineWarmer {
    async fn warm(&self, version: &Arc<contract::FunctionVersion>) -> Result<(), String> {
        self.0.warm(version).await.map_err(|e| e.message)
    }
}

#[derive(Subcommand)]
pub enum AliasCommand {
    /// Point an alias at versions by weight: `taskmesh alias set digits live 3=90 4=10`.
    Set {
        name: String,
        alias: String,
        /// VERSION=WEIGHT pairs, in order (a rollout's target is listed last).
        #[arg(required = true, value_name = "VERSION=WEIGHT")]
        routes: Vec<String>,
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// Show one alias, or all of a function's.
    Get {
        name: String,
        alias: Option<String>,
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// Remove an alias.
    Delete {
        name: String,
        alias: String,
        #[arg(long)]
        admin_url: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Start an automated canary of ALIAS (default live) to a version.
    Start {
        name: String,
        /// The version to roll out.
        #[arg(long)]
        to_version: u32,
        #[arg(long, default_value = "live")]
        alias: String,
        /// Percent on the new version at each step, ending at 100.
        #[arg(long, value_delimiter = ',', default_value = "5,25,50,100")]
        steps: Vec<u32>,
        #[arg(long, default_value_t = 60)]
        step_interval_s: u64,
        #[arg(long, default_value_t = 50)]
        min_calls_per_step: u64,
        #[arg(long, default_value_t = 0.01)]
        max_error_rate: f64,
        #[arg(long)]
        max_p99_ms: Option<f64>,
        /// Follow the rollout until it ends.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// Show a rollout (default: the function's latest), or follow it with --watch.
    Status {
        name: String,
        id: Option<String>,
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// Hold a rollout at its current step.
    Pause {
        name: String,
        id: String,
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// Continue a paused rollout (its current step starts over).
    Resume {
        name: String,
        id: String,
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// Stop a rollout and put the alias back on its previous routes.
    Abort {
        name: String,
        id: String,
        #[arg(long)]
        admin_url: Option<String>,
    },
}

impl AliasCommand {
    pub fn admin_url(&self) -> Option<String> {
        match self {
            AliasCommand::Set { admin_url, .. }
            | AliasCommand::Get { admin_url, .. }
            | AliasCommand::Delete { admin_url, .. } => admin_url.clone(),
        }
    }
}

impl RolloutCommand {
    pub fn admin_url(&self) -> Option<String> {
        match self {
            RolloutCommand::Start { admin_url, .. }
            | RolloutCommand::Status { admin_url, .. }
            | RolloutCommand::Pause { admin_url, .. }
            | RolloutCommand::Resume { admin_url, .. }
            | RolloutCommand::Abort { admin_url, .. } => admin_url.clone(),
        }
    }
}

async fn call(config: &Config, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let url = format!("{}{path}", config.admin_url);
    let (ct, bytes) = match body {
        Some(b) => (Some("application/json"), serde_json::to_vec(&b)?),
        None => (None, Vec::new()),
    };
    H2Client::new(config.key())
        .send(method, &url, ct, bytes)
        .await?
        .json()
}

/// Parses `VERSION=WEIGHT`.
pub fn parse_route(text: &str) -> Result<Value> {
    let (v, w) = text
        .split_once('=')
        .with_context(|| format!("expected VERSION=WEIGHT, got {text:?}"))?;
    let version: u64 = v
        .trim()
        .parse()
        .with_context(|| format!("bad version in {text:?}"))?;
    let weight: u64 = w
        .trim()
        .parse()
        .with_context(|| format!("bad weight in {text:?}"))?;
    Ok(json!({"version": version, "weight": weight}))
}

pub async fn alias(config: &Config, command: AliasCommand) -> Result<()> {
    match command {
        AliasCommand::Set {
            name,
            alias,
            routes,
            ..
        } => {
            let routes: Vec<Value> = routes
                .iter()
                .map(|r| parse_route(r))
                .collect::<Result<_>>()?;
            let out = call(
                config,
                Method::PUT,
                &format!("/v1/functions/{name}/aliases/{alias}"),
                Some(json!({ "routes": routes })),
            )
            .await?;
            println!("{out}");
        }
        AliasCommand::Get { name, alias, .. } => {
            let path = match alias {
                Some(a) => format!("/v1/functions/{name}/aliases/{a}"),
                None => format!("/v1/functions/{name}/aliases"),
            };
            let found = call(config, Method::GET, &path, None).await?;
            if config.output == Output::Json {
                crate::functions::print_json(&found);
            } else if found["aliases"].is_array() {
                for a in found["aliases"].as_array().into_iter().flatten() {
                    println!("{}", alias_line(a));
                }
            } else {
                println!("{}", alias_line(&found));
            }
        }
        AliasCommand::Delete { name, alias, .. } => {
            call(
                config,
                Method::DELETE,
                &format!("/v1/functions/{name}/aliases/{alias}"),
                None,
            )
            .await?;
            println!("deleted alias {alias} of {name}");
        }
    }
    Ok(())
}

/// `live\t1=90 2=10`: an alias and its routes.
fn alias_line(alias: &Value) -> String {
    let routes: Vec<String> = alias["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| format!("{}={}", r["version"], r["weight"]))
        .collect();
    format!(
        "{}\t{}",
        alias["alias"].as_str().unwrap_or("?"),
        routes.join(" ")
    )
}

/// One line per step: the live progress view.
pub fn render(r: &Value) -> String {
    let mut out = format!(
        "rollout {} of {} alias {} → version {}: {} at {} % ({})\n",
        r["id"].as_str().unwrap_or("?"),
        r["function"].as_str().unwrap_or("?"),
        r["alias"].as_str().unwrap_or("?"),
        r["to_version"],
        r["state"].as_str().unwrap_or("?"),
        r["percent"],
        r["status"].as_str().unwrap_or("")
    );
    for (i, s) in r["steps"].as_array().into_iter().flatten().enumerate() {
        let p99 = |e: &Value| {
            e["p99_ms"]
                .as_f64()
                .map_or("-".to_string(), |v| format!("{v:.1} ms"))
        };
        out.push_str(&format!(
            "  step {i} {:>3} %  {:<9} new {} calls {} errors p99 {} | old {} calls {} errors p99 {}\n",
            s["percent"],
            s["verdict"].as_str().unwrap_or("holding"),
            s["new"]["calls"],
            s["new"]["errors"],
            p99(&s["new"]),
            s["old"]["calls"],
            s["old"]["errors"],
            p99(&s["old"]),
        ));
    }
    if let Some(reason) = r["reason"].as_str() {
        out.push_str(&format!("  reason: {reason}\n"));
    }
    out
}

async fn watch(config: &Config, name: &str, id: &str) -> Result<Value> {
    let mut last = String::new();
    loop {
        let r = call(
            config,
            Method::GET,
            &format!("/v1/functions/{name}/rollouts/{id}"),
            None,
        )
        .await?;
        let text = render(&r);
        if text != last {
            print!("{text}");
            last = text;
        }
        if r["outcome"].is_string() {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn rollout(config: &Config, command: RolloutCommand) -> Result<()> {
    match command {
        RolloutCommand::Start {
            name,
            to_version,
            alias,
            steps,
            step_interval_s,
            min_calls_per_step,
            max_error_rate,
            max_p99_ms,
            watch: follow,
            ..
        } => {
            let mut body = json!({
                "alias": alias,
                "to_version": to_version,
                "steps": steps,
                "step_interval_s": step_interval_s,
                "min_calls_per_step": min_calls_per_step,
                "max_error_rate": max_error_rate,
            });
            if let Some(p99) = max_p99_ms {
                body["max_p99_ms"] = json!(p99);
            }
            let r = call(
                config,
                Method::POST,
                &format!("/v1/functions/{name}/rollouts"),
                Some(body),
            )
            .await?;
            let id = r["id"].as_str().unwrap_or_default().to_string();
            println!("started rollout {id}");
            if follow {
                finish(watch(config, &name, &id).await?)?;
            }
        }
        RolloutCommand::Status {
            name,
            id,
            watch: follow,
            ..
        } => {
            let id = match id {
                Some(id) => id,
                None => {
                    let list = call(
                        config,
                        Method::GET,
                        &format!("/v1/functions/{name}/rollouts"),
                        None,
                    )
                    .await?;
                    list["rollouts"]
                        .as_array()
                        .and_then(|l| l.last())
                        .and_then(|r| r["id"].as_str())
                        .map(str::to_string)
                        .with_context(|| format!("function {name} has no rollouts"))?
                }
            };
            if follow {
                finish(watch(config, &name, &id).await?)?;
            } else {
                let r = call(
                    config,
                    Method::GET,
                    &format!("/v1/functions/{name}/rollouts/{id}"),
                    None,
                )
                .await?;
                if config.output == Output::Json {
                    crate::functions::print_json(&r);
                } else {
                    print!("{}", render(&r));
                }
            }
        }
        RolloutCommand::Pause { name, id, .. } => control(config, &name, &id, "pause").await?,
        RolloutCommand::Resume { name, id, .. } => control(config, &name, &id, "resume").await?,
        RolloutCommand::Abort { name, id, .. } => control(config, &name, &id, "abort").await?,
    }
    Ok(())
}

fn finish(r: Value) -> Result<()> {
    if r["outcome"] != "promoted" {
        bail!("rollout ended {}", r["outcome"]);
    }
    Ok(())
}

async fn control(config: &Config, name: &str, id: &str, action: &str) -> Result<()> {
    let r = call(
        config,
        Method::POST,
        &format!("/v1/functions/{name}/rollouts/{id}/{action}"),
        None,
    )
    .await?;
    print!("{}", render(&r));
    Ok(())
}
