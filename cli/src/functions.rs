//! `taskmesh fn …`, `taskmesh nodes` and `taskmesh invoke`: functions on the
//! admin API, calls through the router.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use http::Method;
use serde_json::Value;

use crate::api::{exit_code_of_status, H2Client, Output};
use crate::config::Config;

#[derive(Subcommand)]
pub enum FnCommand {
    /// Register a definition file (JSON or YAML). A `model` or a text input's
    /// `tokenizer` that is a path (e.g. `./model.onnx`, relative to the file)
    /// is uploaded first.
    #[command(after_help = "Examples:\n  \
        taskmesh fn register examples/digits/function.yaml\n  \
        taskmesh fn register my-fn.json --admin-url http://registry:8081")]
    Register {
        file: PathBuf,
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// List registered functions.
    #[command(after_help = "Examples:\n  \
        taskmesh fn list\n  \
        taskmesh fn list --output json | jq -r '.functions[].name'")]
    List {
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// Show a function's versions, or one version's definition.
    #[command(after_help = "Examples:\n  \
        taskmesh fn get digits\n  \
        taskmesh fn get digits --version 2")]
    Get {
        name: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long)]
        admin_url: Option<String>,
    },
}

impl FnCommand {
    pub fn admin_url(&self) -> Option<String> {
        match self {
            FnCommand::Register { admin_url, .. }
            | FnCommand::List { admin_url }
            | FnCommand::Get { admin_url, .. } => admin_url.clone(),
        }
    }
}

#[derive(Args)]
#[command(after_help = "Examples:\n  \
    taskmesh invoke digits --data '{\"pixels\": [0.0, 0.5, 1.0]}'\n  \
    taskmesh invoke digits --version 1 --data @input.json\n\n\
    The answer's body goes to stdout, its status and version to stderr; the exit\n\
    code follows the status (README, \"Exit codes\").")]
pub struct InvokeArgs {
    /// Function name.
    pub name: String,
    /// JSON input, or @FILE to read it from a file (@- for stdin).
    #[arg(long)]
    pub data: String,
    /// Version to call (default: latest).
    #[arg(long)]
    pub version: Option<u32>,
    #[arg(long)]
    pub router_url: Option<String>,
}

/// `--data`: the text itself, or `@FILE`, or `@-` for stdin.
pub fn read_data(data: &str) -> Result<Vec<u8>> {
    match data.strip_prefix('@') {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
            Ok(buf)
        }
        Some(path) => std::fs::read(path).with_context(|| format!("reading {path}")),
        None => Ok(data.as_bytes().to_vec()),
    }
}

/// Prints a value as pretty JSON.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// The text inputs' `tokenizer`s given as paths (not `sha256:` digests): their
/// JSON pointers in the definition and the paths, relative to the definition file.
pub fn tokenizer_paths(doc: &Value) -> Vec<(String, String)> {
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
    let uploaded = client
        .send(Method::POST, url, Some("application/octet-stream"), bytes)
        .await?
        .json()
        .with_context(|| format!("uploading {}", path.display()))?;
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
    let mut doc: Value = if yaml {
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
        doc["model"] = Value::String(digest);
    }
    for (pointer, path) in tokenizer_paths(&doc) {
        let url = format!("{admin_url}/v1/artifacts");
        let digest = upload_file(client, &url, &base.join(path), "tokenizer").await?;
        if let Some(slot) = doc.pointer_mut(&pointer) {
            *slot = Value::String(digest);
        }
    }
    Ok((serde_json::to_vec(&doc)?, "application/json"))
}

pub async fn run(config: &Config, command: FnCommand) -> Result<()> {
    let client = H2Client::new(config.key());
    let admin = config.admin_url.trim_end_matches('/');
    match command {
        FnCommand::Register { file, .. } => {
            let (body, content_type) = prepare_definition(&client, admin, &file).await?;
            let registered = client
                .send(
                    Method::POST,
                    &format!("{admin}/v1/functions"),
                    Some(content_type),
                    body,
                )
                .await?
                .json()
                .with_context(|| format!("registering {}", file.display()))?;
            print_json(&registered);
        }
        FnCommand::List { .. } => {
            let body = client
                .send(
                    Method::GET,
                    &format!("{admin}/v1/functions"),
                    None,
                    Vec::new(),
                )
                .await?
                .json()
                .context("listing functions")?;
            if config.output == Output::Json {
                print_json(&body);
                return Ok(());
            }
            for f in body["functions"].as_array().into_iter().flatten() {
                println!(
                    "{}\tlatest {}\tversions {}",
                    f["name"].as_str().unwrap_or("?"),
                    f["latest_version"],
                    f["versions"]
                );
            }
        }
        FnCommand::Get { name, version, .. } => {
            let path = match version {
                Some(v) => format!("{admin}/v1/functions/{name}/versions/{v}"),
                None => format!("{admin}/v1/functions/{name}"),
            };
            let body = client
                .send(Method::GET, &path, None, Vec::new())
                .await?
                .json()
                .with_context(|| format!("reading function {name}"))?;
            // One shape either way: the registry's JSON is already the
            // readable form of a definition.
            print_json(&body);
        }
    }
    Ok(())
}

/// Invokes a function: the body to stdout whatever the status (a script reads
/// the error too), and the exit code of the status class.
pub async fn invoke(config: &Config, args: &InvokeArgs) -> Result<()> {
    let mut url = format!(
        "{}/v1/functions/{}/invoke",
        config.router_url.trim_end_matches('/'),
        args.name
    );
    if let Some(v) = args.version {
        url.push_str(&format!("?version={v}"));
    }
    let reply = H2Client::new(config.key())
        .send(
            Method::POST,
            &url,
            Some("application/json"),
            read_data(&args.data)?,
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
        std::process::exit(exit_code_of_status(reply.status));
    }
    Ok(())
}
