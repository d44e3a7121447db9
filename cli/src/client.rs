//! A small HTTP/2 (h2c, prior knowledge) client for the CLI.

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

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
        let response = self
            .inner
            .request(request)
            .await
            .with_context(|| format!("request to {url} failed"))?;
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
