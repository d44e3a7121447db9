//! The router's listeners: what a connection must do, and by when, before
//! Pingora's HTTP proxy sees it.
//!
//! Pingora's own connection handling has no cap on open connections, no
//! deadline for a silent socket, and tells h2c from HTTP/1.x by waiting for
//! 24 bytes (an HTTP/1.0 request shorter than the h2 preface was never
//! answered). [`Guarded`] wraps the proxy app and, per connection:
//!
//! 1. takes a place under the listener's caps ([`ConnectionCaps`]: in all and
//!    per peer address), or answers `503 overloaded` on HTTP/1.1 and closes;
//! 2. plain listener: waits at most [`FIRST_BYTE_TIMEOUT`] for a first byte,
//!    then reads only as far as the bytes can still be the h2 preface, so a
//!    short HTTP/1.x request is told apart at once (an h2 client must follow
//!    its preface with a frame within [`HEADER_READ_TIMEOUT`]);
//! 3. HTTP/1.x (plain): reads each request's line and headers itself, within
//!    [`HEADER_READ_TIMEOUT`] from their first byte and [`IDLE_TIMEOUT`]
//!    between requests, capped at [`MAX_REQUEST_HEAD_BYTES`] (431 past it),
//!    and hands them back to the stream for Pingora to parse;
//! 4. h2c, and TLS (ALPN): Pingora's handling, with the HTTP/2 idle timeout
//!    set by the caller (`HttpServerOptions::h2_idle_timeout`).
//!
//! TLS handshakes happen before the app sees a connection, inside Pingora's
//! own 60 s handshake deadline; the caps count a TLS connection from the end
//! of its handshake.
//!
//! Second layer: names `metrics`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use contract::connections::{ConnectionCaps, Connections, Refused};
use contract::limits::{
    FIRST_BYTE_TIMEOUT, HEADER_READ_TIMEOUT, IDLE_TIMEOUT, MAX_REQUEST_HEAD_BYTES,
};
use contract::{ApiError, ErrorCode};
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use crate::metrics::ConnectionMetrics;

/// The HTTP/2 connection preface a client with prior knowledge opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header: a client follows the preface with one (SETTINGS).
const FRAME_HEADER_BYTES: usize = 9;

/// Pingora's HTTP app behind connection caps and deadlines.
pub struct Guarded<A> {
    app: Arc<A>,
    connections: Connections,
    metrics: ConnectionMetrics,
}

impl<A> Guarded<A> {
    pub fn new(app: A, caps: ConnectionCaps, metrics: ConnectionMetrics) -> Self {
        Guarded {
            app: Arc::new(app),
            connections: Connections::new(caps),
            metrics,
        }
    }
}

/// Where the first bytes of a plain connection lead.
enum Opening {
    /// The h2 preface: the bytes read, to be handed back.
    H2(Vec<u8>),
    /// Anything else: HTTP/1.x, with the bytes read so far.
    Http1(Vec<u8>),
}

/// What reading a request's line and headers gave.
enum Head {
    /// All of them (and whatever followed in the same reads).
    Complete(Vec<u8>),
    /// Closed cleanly between requests, or no request within the idle time.
    Gone,
    /// More than [`MAX_REQUEST_HEAD_BYTES`] without an end.
    TooLarge,
    /// Started and not finished within [`HEADER_READ_TIMEOUT`].
    TimedOut,
}

#[async_trait]
impl<A> ServerApp for Guarded<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let _slot = match self.connections.admit(peer) {
            Ok(slot) => slot,
            Err(why) => {
                let reason = match why {
                    Refused::Total => "total",
                    Refused::PerPeer => "per_peer",
                };
                self.metrics.refused(reason);
                let error = ApiError::new(
                    ErrorCode::Overloaded,
                    "the router holds as many connections as it allows (in all or from your address); retry later",
                )
                .with_retry_after(1);
                answer_and_close(stream, &error).await;
                return None;
            }
        };
        self.metrics.open.inc();
        let _open = scopeguard(&self.metrics);
        if stream.get_ssl_digest().is_some() {
            // TLS: ALPN chose the protocol; Pingora serves both.
            return self.app.process_new(stream, shutdown).await;
        }
        match opening(&mut stream).await {
            Ok(Opening::H2(read)) => {
                let stream = rewind(stream, &read)?;
                self.app.process_new(stream, shutdown).await
            }
            Ok(Opening::Http1(read)) => {
                self.http1(stream, read, shutdown).await;
                None
            }
            Err(reason) => {
                if !reason.is_empty() {
                    self.metrics.refused(reason);
                }
                None
            }
        }
    }
}

impl<A> Guarded<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Serves HTTP/1.x requests on a plain connection, one after the other,
    /// reading each request's head under the deadlines before Pingora parses it.
    async fn http1(self: &Arc<Self>, mut stream: Stream, read: Vec<u8>, shutdown: &ShutdownWatch) {
        let mut started = Some(read);
        let mut persisted: Option<HttpPersistentSettings> = None;
        loop {
            let head = read_head(&mut stream, started.take().unwrap_or_default()).await;
            let read = match head {
                Head::Complete(read) => read,
                Head::Gone => return,
                Head::TooLarge => {
                    self.metrics.refused("headers_too_large");
                    let error = ApiError::new(
                        ErrorCode::HeadersTooLarge,
                        format!(
                            "the request line and headers exceed {MAX_REQUEST_HEAD_BYTES} bytes"
                        ),
                    );
                    answer_and_close(stream, &error).await;
                    return;
                }
                Head::TimedOut => {
                    self.metrics.refused("header_timeout");
                    return;
                }
            };
            let Some(rewound) = rewind(stream, &read) else {
                return;
            };
            let mut session = ServerSession::new_http1(rewound);
            match persisted.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None if *shutdown.borrow() => session.set_keepalive(None),
                None => session.set_keepalive(Some(IDLE_TIMEOUT.as_secs())),
            }
            let Some(reused) = self.app.process_new_http(session, shutdown).await else {
                return;
            };
            if *shutdown.borrow() {
                return;
            }
            (stream, persisted) = reused.consume();
        }
    }
}

/// Counts a connection out of `connections_open` when it ends.
struct OpenGuard(ConnectionMetrics);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

fn scopeguard(metrics: &ConnectionMetrics) -> OpenGuard {
    OpenGuard(metrics.clone())
}

/// Reads a plain connection's first bytes: a first byte within
/// [`FIRST_BYTE_TIMEOUT`], then only while they can still be the h2 preface,
/// and for h2 the frame header of the client's first SETTINGS too (a bare
/// preface is not a client), all within [`HEADER_READ_TIMEOUT`]. Err: why
/// the connection ends (a `connections_refused` reason), or "" when it closed.
async fn opening(stream: &mut Stream) -> Result<Opening, &'static str> {
    let mut read = Vec::with_capacity(1024);
    match timeout(FIRST_BYTE_TIMEOUT, stream.read_buf(&mut read)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return Err(""),
        Err(_) => return Err("first_byte_timeout"),
    }
    let deadline = Instant::now() + HEADER_READ_TIMEOUT;
    loop {
        let seen = read.len().min(H2_PREFACE.len());
        if read[..seen] != H2_PREFACE[..seen] {
            return Ok(Opening::Http1(read));
        }
        if read.len() >= H2_PREFACE.len() + FRAME_HEADER_BYTES {
            return Ok(Opening::H2(read));
        }
        match timeout_at(deadline, stream.read_buf(&mut read)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(""),
            Err(_) => return Err("header_timeout"),
        }
    }
}

/// Reads until the request's head is complete (an empty line), starting with
/// the bytes already `read`. Waits [`IDLE_TIMEOUT`] for a first byte when
/// nothing was read yet, then [`HEADER_READ_TIMEOUT`] for the rest.
async fn read_head(stream: &mut Stream, mut read: Vec<u8>) -> Head {
    if read.is_empty() {
        read.reserve(1024);
        match timeout(IDLE_TIMEOUT, stream.read_buf(&mut read)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Head::Gone,
        }
    }
    let deadline = Instant::now() + HEADER_READ_TIMEOUT;
    let mut scanned = 0;
    loop {
        if head_end(&read, scanned) {
            return Head::Complete(read);
        }
        if read.len() > MAX_REQUEST_HEAD_BYTES {
            return Head::TooLarge;
        }
        // An empty line may straddle two reads: look back 3 bytes next time.
        scanned = read.len().saturating_sub(3);
        read.reserve(1024);
        match timeout_at(deadline, stream.read_buf(&mut read)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Head::Gone,
            Err(_) => return Head::TimedOut,
        }
    }
}

/// Whether `read` holds an empty line (CRLF or bare LF, as Pingora's parser
/// accepts) at or after `from`.
fn head_end(read: &[u8], from: usize) -> bool {
    read[from..]
        .windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && read.get(from + i + 2) == Some(&b'\n')))
}

/// Hands `read` back to a plain stream for Pingora to read again.
fn rewind(stream: Stream, read: &[u8]) -> Option<Stream> {
    match stream.into_any().downcast::<L4Stream>() {
        Ok(mut l4) => {
            l4.rewind(read);
            Some(l4)
        }
        Err(_) => {
            tracing::error!("a plain connection was not a TCP stream; closing it");
            None
        }
    }
}

/// Writes `error` as an HTTP/1.1 answer that closes the connection (within
/// a second), then closes it.
async fn answer_and_close(mut stream: Stream, error: &ApiError) {
    let body = error.body_bytes();
    let status = error.status();
    let mut answer = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    if let Some(seconds) = error.retry_after_s {
        answer.push_str(&format!("retry-after: {seconds}\r\n"));
    }
    answer.push_str("\r\n");
    let mut bytes = answer.into_bytes();
    bytes.extend_from_slice(&body);
    let write = async {
        stream.write_all(&bytes).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(&mut stream).await
    };
    let _ = timeout(Duration::from_secs(1), write).await;
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_line_ends_the_head_with_crlf_or_bare_lf() {
        assert!(head_end(b"GET / HTTP/1.0\r\n\r\n", 0));
        assert!(head_end(b"GET / HTTP/1.0\n\n", 0));
        assert!(head_end(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nbody", 0));
        assert!(!head_end(b"GET / HTTP/1.1\r\nhost: a\r\n", 0));
        assert!(!head_end(b"GET / HTTP/1.1\r\n\r", 0));
        // Found from a look-back start too.
        let read = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        assert!(head_end(read, read.len() - 4));
    }
}
