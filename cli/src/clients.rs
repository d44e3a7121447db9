//! `taskmesh client …`: API keys on the admin API (create, list, revoke,
//! rotate). A key is printed once, when it is made; the platform keeps only
//! its hash.

use anyhow::{Context, Result};
use clap::Subcommand;
use http::Method;
use serde_json::{json, Value};

use crate::api::{H2Client, Output};
use crate::config::Config;
use crate::functions::print_json;

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create a client; prints its API key on stdout (the only time it is shown)
    /// and the client's id on stderr.
    #[command(after_help = "Examples:\n  \
        KEY=$(taskmesh client create web-app --scope invoke)\n  \
        taskmesh client create acme-admin --tenant acme --scope admin,invoke\n  \
        taskmesh client create batch --scope invoke --rate-per-second 50 --quota-per-day 100000\n  \
        taskmesh client create ci --scope invoke --output json   # id, tenant, scopes and key")]
    Create {
        /// A name for people (e.g. the application's).
        name: String,
        /// Its tenant (the operator may name any; an admin only its own). Default: yours.
        #[arg(long)]
        tenant: Option<String>,
        /// Scopes: invoke, admin, metrics (comma-separated or repeated).
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Its own rate limit, calls per second (replaces the functions').
        #[arg(long)]
        rate_per_second: Option<f64>,
        /// Burst of its rate limit.
        #[arg(long, requires = "rate_per_second")]
        burst: Option<u32>,
        /// Its own quota per day.
        #[arg(long)]
        quota_per_day: Option<u64>,
        /// Its own quota per month.
        #[arg(long)]
        quota_per_month: Option<u64>,
        /// Calls it may have in flight at once.
        #[arg(long)]
        max_in_flight: Option<u32>,
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// List clients: yours, or every tenant's for the operator (never keys).
    #[command(after_help = "Examples:\n  \
        taskmesh client list\n  \
        taskmesh client list --output json | jq -r '.clients[] | select(.tenant == \"acme\") | .client_id'")]
    List {
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// Revoke a client's key: refused on every router within about a second.
    #[command(after_help = "Example:\n  taskmesh client revoke 3f2a9c0d1e4b5a67")]
    Revoke {
        id: String,
        #[arg(long)]
        admin_url: Option<String>,
    },
    /// Give a client a new key (printed on stdout); the old one stops working.
    #[command(after_help = "Example:\n  NEW_KEY=$(taskmesh client rotate 3f2a9c0d1e4b5a67)")]
    Rotate {
        id: String,
        #[arg(long)]
        admin_url: Option<String>,
    },
}

impl ClientCommand {
    pub fn admin_url(&self) -> Option<String> {
        match self {
            ClientCommand::Create { admin_url, .. }
            | ClientCommand::List { admin_url }
            | ClientCommand::Revoke { admin_url, .. }
            | ClientCommand::Rotate { admin_url, .. } => admin_url.clone(),
        }
    }
}

/// The body of `POST /v1/clients` for `create`'s flags.
fn new_client(command: &ClientCommand) -> Value {
    let ClientCommand::Create {
        name,
        tenant,
        scopes,
        rate_per_second,
        burst,
        quota_per_day,
        quota_per_month,
        max_in_flight,
        ..
    } = command
    else {
        return Value::Null;
    };
    let mut body = json!({"name": name, "scopes": scopes});
    if let Some(t) = tenant {
        body["tenant"] = json!(t);
    }
    if let Some(r) = rate_per_second {
        body["plan"]["rate_limit"] = json!({"per_second": r});
        if let Some(b) = burst {
            body["plan"]["rate_limit"]["burst"] = json!(b);
        }
    }
    for (field, value) in [
        ("per_day", quota_per_day.map(|v| json!(v))),
        ("per_month", quota_per_month.map(|v| json!(v))),
        ("max_in_flight", max_in_flight.map(|v| json!(v))),
    ] {
        if let Some(v) = value {
            body["plan"]["quota"][field] = v;
        }
    }
    body
}

/// Prints a client with its key: the key alone on stdout (so that
/// `KEY=$(…)` works), the rest on stderr; or all of it as JSON.
fn print_with_key(config: &Config, client: &Value) -> Result<()> {
    if config.output == Output::Json {
        print_json(client);
        return Ok(());
    }
    let key = client["api_key"]
        .as_str()
        .context("the registry answered without a key")?;
    eprintln!(
        "client {} ({}) in tenant {}, scopes {}",
        client["client_id"].as_str().unwrap_or("?"),
        client["name"].as_str().unwrap_or("?"),
        client["tenant"].as_str().unwrap_or("?"),
        scopes(client)
    );
    println!("{key}");
    Ok(())
}

fn scopes(client: &Value) -> String {
    client["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn run(config: &Config, command: ClientCommand) -> Result<()> {
    let client = H2Client::new(config.key());
    let base = format!("{}/v1/clients", config.admin_url.trim_end_matches('/'));
    match &command {
        ClientCommand::Create { name, .. } => {
            let body = serde_json::to_vec(&new_client(&command))?;
            let created = client
                .send(Method::POST, &base, Some("application/json"), body)
                .await?
                .json()
                .with_context(|| format!("creating client {name}"))?;
            print_with_key(config, &created)?;
        }
        ClientCommand::List { .. } => {
            let list = client
                .send(Method::GET, &base, None, Vec::new())
                .await?
                .json()
                .context("listing clients")?;
            if config.output == Output::Json {
                print_json(&list);
                return Ok(());
            }
            for c in list["clients"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}",
                    c["client_id"].as_str().unwrap_or("?"),
                    c["tenant"].as_str().unwrap_or("?"),
                    c["name"].as_str().unwrap_or("?"),
                    scopes(c)
                );
            }
        }
        ClientCommand::Revoke { id, .. } => {
            client
                .send(Method::DELETE, &format!("{base}/{id}"), None, Vec::new())
                .await?
                .json()
                .with_context(|| format!("revoking client {id}"))?;
            eprintln!("revoked client {id}");
        }
        ClientCommand::Rotate { id, .. } => {
            let rotated = client
                .send(
                    Method::POST,
                    &format!("{base}/{id}/rotate"),
                    None,
                    Vec::new(),
                )
                .await?
                .json()
                .with_context(|| format!("rotating client {id}"))?;
            print_with_key(config, &rotated)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_flags_make_the_contract_body() {
        let command = ClientCommand::Create {
            name: "batch".into(),
            tenant: Some("acme".into()),
            scopes: vec!["invoke".into(), "metrics".into()],
            rate_per_second: Some(5.0),
            burst: Some(10),
            quota_per_day: Some(1000),
            quota_per_month: None,
            max_in_flight: Some(4),
            admin_url: None,
        };
        assert_eq!(
            new_client(&command),
            json!({"name": "batch", "tenant": "acme", "scopes": ["invoke", "metrics"],
                   "plan": {"rate_limit": {"per_second": 5.0, "burst": 10},
                            "quota": {"per_day": 1000, "max_in_flight": 4}}})
        );
        let plain = ClientCommand::Create {
            name: "web".into(),
            tenant: None,
            scopes: vec!["invoke".into()],
            rate_per_second: None,
            burst: None,
            quota_per_day: None,
            quota_per_month: None,
            max_in_flight: None,
            admin_url: None,
        };
        assert_eq!(
            new_client(&plain),
            json!({"name": "web", "scopes": ["invoke"]})
        );
    }
}
