//! A small HTTP/2 (h2c, prior knowledge) client for the CLI, the errors it
//! reports, and the exit codes they map to.

use std::fmt;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct H2Client {
    inner: Client<HttpConnector, Full<Bytes>>,
    key: Option<String>,
}

impl H2Client {
    /// A client that sends `key` as `authorization: Bearer <key>`.
    pub fn new(key: Option<String>) -> Self {
        let inner = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(nodelay_connector());
        H2Client { inner, key }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Reply> {
        self.send_with(method, url, content_type, &[], body).await
    }

    /// `send` with extra headers.
    pub async fn send_with(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(key) = &self.key {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        if let Some(ct) = content_type {
            request = request.header(http::header::CONTENT_TYPE, ct);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .context("building request")?;
        let response = self.inner.request(request).await.map_err(|e| Unreachable {
            url: url.to_string(),
            cause: error_chain(&e),
        })?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .context("reading response body")?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// An HTTP connector with Nagle's algorithm off (small requests would otherwise
/// wait for delayed ACKs, about 40 ms each on Linux).
fn nodelay_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// How read commands print.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Lines for people.
    #[default]
    Text,
    /// The server's JSON, as answered (for scripts and `jq`).
    Json,
}

/// The SLA was not met (`taskmesh bench`; exit code [`exit::SLA`]).
#[derive(Debug)]
pub struct SlaBreached(pub Vec<String>);

impl std::fmt::Display for SlaBreached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SLA breached: {}", self.0.join("; "))
    }
}

impl std::error::Error for SlaBreached {}

/// The server could not be reached (refused, reset, DNS, TLS).
#[derive(Debug)]
pub struct Unreachable {
    pub url: String,
    pub cause: String,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot reach {}: {}", self.url, self.cause)
    }
}

impl std::error::Error for Unreachable {}

/// The server answered with an error status.
#[derive(Debug)]
pub struct ServerError {
    pub status: StatusCode,
    /// The contract's error body, when the answer had one.
    pub body: Value,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let error = &self.body["error"];
        match (error["code"].as_str(), error["message"].as_str()) {
            (Some(code), Some(message)) => write!(f, "{} {code}: {message}", self.status),
            _ if self.body.is_null() => write!(f, "{}", self.status),
            _ => write!(f, "{} {}", self.status, self.body),
        }
    }
}

impl std::error::Error for ServerError {}

impl Reply {
    /// The answer's JSON (`null` when empty), or a [`ServerError`] when the
    /// status is not a success.
    pub fn json(&self) -> Result<Value> {
        let value = if self.body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&self.body) {
                Ok(v) => v,
                Err(_) if !self.status.is_success() => {
                    Value::String(String::from_utf8_lossy(&self.body).into_owned())
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("the server answered {} with non-JSON", self.status)
                    })
                }
            }
        };
        if !self.status.is_success() {
            return Err(ServerError {
                status: self.status,
                body: value,
            }
            .into());
        }
        Ok(value)
    }
}

/// The CLI's exit codes (README, "Exit codes"): scripts tell error classes apart.
pub mod exit {
    /// Anything else: bad flags or files, a task or rollout that ended badly.
    pub const FAILED: i32 = 1;
    /// The server could not be reached.
    pub const UNREACHABLE: i32 = 3;
    /// 401 or 403: no key, a wrong key, or a key without the scope.
    pub const DENIED: i32 = 4;
    /// 404: no such function, version, task, client, alias or rollout.
    pub const NOT_FOUND: i32 = 5;
    /// Another 4xx: invalid input or definition (422), conflict (409), too large (413).
    pub const REFUSED: i32 = 6;
    /// 429: a rate limit or quota; retry later.
    pub const LIMITED: i32 = 7;
    /// 5xx: the platform failed or is unavailable; retry later.
    pub const SERVER: i32 = 8;
    /// `taskmesh bench`: an `--sla` bound was breached.
    pub const SLA: i32 = 9;
}

/// The exit code of a status that is not a success.
pub fn exit_code_of_status(status: StatusCode) -> i32 {
    match status.as_u16() {
        401 | 403 => exit::DENIED,
        404 => exit::NOT_FOUND,
        429 => exit::LIMITED,
        400..=499 => exit::REFUSED,
        500..=599 => exit::SERVER,
        _ => exit::FAILED,
    }
}

/// The exit code of an error a command ended with.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<ServerError>() {
            return exit_code_of_status(e.status);
        }
        if cause.downcast_ref::<Unreachable>().is_some() {
            return exit::UNREACHABLE;
        }
        if cause.downcast_ref::<SlaBreached>().is_some() {
            return exit::SLA;
        }
    }
    exit::FAILED
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn every_error_class_has_its_exit_code() {
        let cases = [
            (401, exit::DENIED),
            (403, exit::DENIED),
            (404, exit::NOT_FOUND),
            (409, exit::REFUSED),
            (413, exit::REFUSED),
            (422, exit::REFUSED),
            (429, exit::LIMITED),
            (500, exit::SERVER),
            (503, exit::SERVER),
        ];
        for (status, code) in cases {
            let error = reply(status, r#"{"error":{"code":"x","message":"m"}}"#)
                .json()
                .unwrap_err()
                .context("doing something");
            assert_eq!(exit_code(&error), code, "status {status}");
        }
        let unreachable = anyhow::Error::new(Unreachable {
            url: "http://x".into(),
            cause: "refused".into(),
        });
        assert_eq!(exit_code(&unreachable), exit::UNREACHABLE);
        assert_eq!(exit_code(&anyhow::anyhow!("bad file")), exit::FAILED);
    }

    #[test]
    fn errors_read_as_the_contract_body_says() {
        let e = reply(
            404,
            r#"{"error":{"code":"not_found","message":"no function f"}}"#,
        )
        .json()
        .unwrap_err();
        assert_eq!(e.to_string(), "404 Not Found not_found: no function f");
        let e = reply(502, "bad gateway").json().unwrap_err();
        assert_eq!(e.to_string(), "502 Bad Gateway \"bad gateway\"");
        assert_eq!(reply(204, "").json().unwrap(), Value::Null);
        assert!(reply(200, "not json").json().is_err());
    }
}
