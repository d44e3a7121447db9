//! `taskmesh task …`: submit, read, list, cancel and retry tasks through the
//! router (contract: tasks).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use http::Method;
use serde_json::Value;

use crate::api::{H2Client, Output, Reply};
use crate::config::Config;

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Queue a task of a function (or, with --pipeline, of a pipeline); prints
    /// its id (with --wait, its outcome).
    #[command(after_help = "Examples:\n  \
        taskmesh task submit digits --data @examples/digits/sample.json --wait\n  \
        taskmesh task submit embed-captions --pipeline --data '{\"captions\": [\"a hat\"]}'")]
    Submit {
        /// Function name (a pipeline's with --pipeline).
        name: String,
        /// NAME is a pipeline: queue a run of it.
        #[arg(long)]
        pipeline: bool,
        /// JSON input, or @FILE (@- for stdin).
        #[arg(long)]
        data: String,
        /// Version to run (default: the alias `live`, else the latest).
        #[arg(long)]
        version: Option<u32>,
        /// high, normal or low.
        #[arg(long)]
        priority: Option<String>,
        /// The same key (per client, 24 h) gives back the same task.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait for the outcome, with a progress line on stderr.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        wait_timeout_s: u64,
        #[arg(long)]
        router_url: Option<String>,
    },
    /// Show a task.
    Get {
        id: String,
        #[arg(long)]
        router_url: Option<String>,
    },
    /// List tasks, newest first.
    List {
        #[arg(long)]
        function: Option<String>,
        /// Only this pipeline's tasks.
        #[arg(long)]
        pipeline: Option<String>,
        /// queued, running, succeeded, failed, dead or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        router_url: Option<String>,
    },
    /// Cancel a queued task.
    Cancel {
        id: String,
        #[arg(long)]
        router_url: Option<String>,
    },
    /// Queue a dead or cancelled task again.
    Retry {
        id: String,
        #[arg(long)]
        router_url: Option<String>,
    },
}

impl TaskCommand {
    pub fn router_url(&self) -> Option<String> {
        match self {
            TaskCommand::Submit { router_url, .. }
            | TaskCommand::Get { router_url, .. }
            | TaskCommand::List { router_url, .. }
            | TaskCommand::Cancel { router_url, .. }
            | TaskCommand::Retry { router_url, .. } => router_url.clone(),
        }
    }
}

/// The answer's JSON, or an error that carries the router's.
fn json_of(reply: &Reply, what: &str) -> Result<Value> {
    reply.json().with_context(|| format!("{what} failed"))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

pub async fn run(config: &Config, command: TaskCommand) -> Result<()> {
    let client = H2Client::new(config.key());
    let base = config.router_url.trim_end_matches('/');
    match command {
        TaskCommand::Submit {
            name,
            pipeline,
            data,
            version,
            priority,
            idempotency_key,
            wait,
            wait_timeout_s,
            ..
        } => {
            let kind = if pipeline { "pipelines" } else { "functions" };
            let mut url = format!("{base}/v1/{kind}/{name}/tasks");
            if let Some(v) = version {
                url.push_str(&format!("?version={v}"));
            }
            let mut headers = Vec::new();
            if let Some(p) = &priority {
                headers.push(("x-taskmesh-priority", p.as_str()));
            }
            if let Some(k) = &idempotency_key {
                headers.push(("idempotency-key", k.as_str()));
            }
            let reply = client
                .send_with(
                    Method::POST,
                    &url,
                    Some("application/json"),
                    &headers,
                    crate::functions::read_data(&data)?,
                )
                .await?;
            let body = json_of(&reply, "submitting")?;
            let id = body["task_id"]
                .as_str()
                .context("no task_id in the answer")?
                .to_string();
            if !wait {
                println!("{id}");
                return Ok(());
            }
            let task = wait_for(&client, base, &id, Duration::from_secs(wait_timeout_s)).await?;
            println!("{}", pretty(&task));
            if task["status"] != "succeeded" {
                std::process::exit(1);
            }
            Ok(())
        }
        TaskCommand::Get { id, .. } => {
            let reply = client
                .send(
                    Method::GET,
                    &format!("{base}/v1/tasks/{id}"),
                    None,
                    Vec::new(),
                )
                .await?;
            println!("{}", pretty(&json_of(&reply, "reading the task")?));
            Ok(())
        }
        TaskCommand::List {
            function,
            pipeline,
            status,
            limit,
            ..
        } => {
            let mut query = Vec::new();
            if let Some(f) = function {
                query.push(format!("function={f}"));
            }
            if let Some(p) = pipeline {
                query.push(format!("pipeline={p}"));
            }
            if let Some(s) = status {
                query.push(format!("status={s}"));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            let url = format!("{base}/v1/tasks?{}", query.join("&"));
            let reply = client.send(Method::GET, &url, None, Vec::new()).await?;
            let body = json_of(&reply, "listing tasks")?;
            if config.output == Output::Json {
                println!("{}", pretty(&body));
                return Ok(());
            }
            for t in body["tasks"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}@{}\t{}\tattempts {}\t{}",
                    t["task_id"].as_str().unwrap_or("?"),
                    t["function"].as_str().unwrap_or("?"),
                    t["version"],
                    t["status"].as_str().unwrap_or("?"),
                    t["attempts"],
                    t["created_at"].as_str().unwrap_or("?"),
                );
            }
            Ok(())
        }
        TaskCommand::Cancel { id, .. } => {
            let reply = client
                .send(
                    Method::DELETE,
                    &format!("{base}/v1/tasks/{id}"),
                    None,
                    Vec::new(),
                )
                .await?;
            println!("{}", pretty(&json_of(&reply, "cancelling")?));
            Ok(())
        }
        TaskCommand::Retry { id, .. } => {
            let url = format!("{base}/v1/tasks/{id}/retry");
            let reply = client.send(Method::POST, &url, None, Vec::new()).await?;
            println!("{}", pretty(&json_of(&reply, "retrying")?));
            Ok(())
        }
    }
}

/// Polls a task until it is final, with a progress line on stderr.
async fn wait_for(client: &H2Client, base: &str, id: &str, limit: Duration) -> Result<Value> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    let url = format!("{base}/v1/tasks/{id}");
    loop {
        let reply = client.send(Method::GET, &url, None, Vec::new()).await?;
        let task = json_of(&reply, "reading the task")?;
        let status = task["status"].as_str().unwrap_or("?").to_string();
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r{id} {status:<9} attempts {} {:>6.1}s",
            task["attempts"],
            started.elapsed().as_secs_f64()
        );
        let _ = err.flush();
        if matches!(status.as_str(), "succeeded" | "dead" | "cancelled") {
            let _ = writeln!(err);
            return Ok(task);
        }
        if started.elapsed() > limit {
            let _ = writeln!(err);
            bail!("task {id} is still {status} after {} s", limit.as_secs());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}
