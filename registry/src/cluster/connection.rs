//! The connection of the Redis backend: [`RedisOptions`], and [`RedisStore`]'s
//! bounded, self-healing calls, which the store, membership and the shared
//! limits all go through ([`RedisStore::run`]).
//!
//! # Failures
//!
//! Connecting is bounded by [`RedisOptions::connect_timeout`] and each reply by
//! [`RedisOptions::response_timeout`] (1 s each by default), and every call as
//! a whole by their sum: when Redis is unreachable, every method returns
//! [`StoreError::Backend`] within that time instead of hanging (the registry
//! answers it with 503 `unavailable`). A connection that fails (an I/O error
//! or a timeout) is dropped, and the next call connects again, so the same
//! store works again as soon as Redis is back. A read that fails on a reused
//! connection that turned out to be dead is retried once on a new one. A
//! write is never retried, since it may have been applied before the reply was
//! lost; instead, a write on a reused connection first checks it with a PING,
//! so the first write after an outage does not fail on a connection that died
//! during it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, RedisResult, Script};

use super::scripts::{
    ADD_COUNTERS_SCRIPT, APPEND_SCRIPT, CREATE_ROLLOUT_SCRIPT, LEASE_SCRIPT, UPDATE_ROLLOUT_SCRIPT,
};
use crate::store::StoreError;

/// Why a `rediss://…#insecure` URL is refused without the opt-in.
pub const INSECURE_REFUSED: &str = "the Redis URL ends in #insecure, which turns off TLS certificate checks; set TASKMESH_REDIS_INSECURE_TLS=1 to allow it (a self-signed development server), or use a certificate the system trusts";

/// Whether a Redis URL asks for TLS without certificate checks.
pub fn insecure_tls(url: &str) -> bool {
    url.starts_with("rediss://") && url.ends_with("#insecure")
}

/// Installs aws-lc-rs as the process's rustls crypto provider, once. The
/// dependency graph enables two providers (ring through pingora-rustls,
/// aws-lc-rs through reqwest), and then rustls picks none by itself: a TLS
/// client without an explicit provider (Redis over `rediss://`) would panic.
/// The binary calls this at start; a store connecting calls it too.
pub fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: another provider was installed first, which serves as well.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// Settings of a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Prefix of every key (default `tm:`).
    pub prefix: String,
    /// Bound on establishing a connection (default 1 s).
    pub connect_timeout: Duration,
    /// Bound on waiting for each reply (default 1 s).
    pub response_timeout: Duration,
    /// Whether a `rediss://…#insecure` URL (TLS without certificate checks)
    /// is accepted; off by default, so it is never on by accident.
    pub allow_insecure_tls: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "tm:".into(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            allow_insecure_tls: false,
        }
    }
}

/// The registry's store in Redis. Cheap to clone; clones share one
/// multiplexed connection.
#[derive(Clone)]
pub struct RedisStore {
    pub(super) inner: Arc<Inner>,
}

/// What clones of one store share. The store's own calls (`cluster::store`)
/// read `options` and the scripts.
pub(super) struct Inner {
    client: Client,
    config: AsyncConnectionConfig,
    pub(super) options: RedisOptions,
    /// The current connection; `None` after a failure, until the next call.
    link: tokio::sync::Mutex<Option<Link>>,
    next_link: AtomicU64,
    pub(super) append: Script,
    pub(super) add_counters: Script,
    pub(super) create_rollout: Script,
    pub(super) update_rollout: Script,
    pub(super) lease: Script,
}

#[derive(Clone)]
struct Link {
    id: u64,
    conn: MultiplexedConnection,
}

/// Whether a failed call may be sent again on a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// Reads and overwrites: sending twice does no harm.
    Idempotent,
    /// Appends and increments: never sent twice.
    Never,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: show only where it points.
        let addr = self.inner.client.get_connection_info().addr().to_string();
        f.debug_struct("RedisStore")
            .field("addr", &addr)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`) with the default options and
    /// checks that Redis answers.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Connects with `options` and checks that Redis answers (within the
    /// options' timeouts).
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        ensure_crypto_provider();
        if insecure_tls(url) {
            if !options.allow_insecure_tls {
                return Err(StoreError::Backend(INSECURE_REFUSED.into()));
            }
            tracing::warn!("Redis TLS certificate checks are off (#insecure)");
        }
        // The error says what is wrong with the URL without repeating it (it
        // may hold a password).
        let client = Client::open(url)
            .map_err(|e| StoreError::Backend(format!("invalid redis url: {e}")))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout));
        let store = RedisStore {
            inner: Arc::new(Inner {
                client,
                config,
                options,
                link: tokio::sync::Mutex::new(None),
                next_link: AtomicU64::new(0),
                append: Script::new(APPEND_SCRIPT),
                add_counters: Script::new(ADD_COUNTERS_SCRIPT),
                create_rollout: Script::new(CREATE_ROLLOUT_SCRIPT),
                update_rollout: Script::new(UPDATE_ROLLOUT_SCRIPT),
                lease: Script::new(LEASE_SCRIPT),
            }),
        };
        store.ping().await?;
        Ok(store)
    }

    /// Checks that Redis answers (a PING, within the call's bound).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.call(Retry::Idempotent, |mut c| async move {
            redis::cmd("PING").query_async::<()>(&mut c).await
        })
        .await
    }

    pub fn options(&self) -> &RedisOptions {
        &self.inner.options
    }

    /// Runs `op` on this store's connection, for other cluster state kept in
    /// the same Redis (membership, shared limits), with the same bounds and
    /// reconnection as the store's own calls. `idempotent`: whether `op` may
    /// be sent again on a new connection when the reused one turned out to be
    /// dead (a read, an overwrite); otherwise the connection is checked with a
    /// PING first and `op` is sent at most once.
    pub async fn run<T, F, Fut>(&self, idempotent: bool, op: F) -> Result<T, StoreError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let retry = if idempotent {
            Retry::Idempotent
        } else {
            Retry::Never
        };
        self.call(retry, op).await
    }

    /// Runs `op` on a connection, within `connect_timeout + response_timeout`.
    pub(super) async fn call<T, F, Fut>(&self, retry: Retry, op: F) -> Result<T, StoreError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let budget = self.inner.options.connect_timeout + self.inner.options.response_timeout;
        match tokio::time::timeout(budget, self.attempt(retry, op)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Backend(format!(
                "redis did not answer within {} ms",
                budget.as_millis()
            ))),
        }
    }

    async fn attempt<T, F, Fut>(&self, retry: Retry, op: F) -> Result<T, StoreError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        // At most two tries: a reused connection may turn out to be dead; a
        // new one is not tried twice.
        for _ in 0..2 {
            let (link, reused) = self.link().await?;
            if reused && retry == Retry::Never {
                let mut probe = link.conn.clone();
                if let Err(e) = redis::cmd("PING").query_async::<()>(&mut probe).await {
                    if broken(&e) {
                        self.forget(link.id).await;
                        continue;
                    }
                    return Err(redis_error(e));
                }
            }
            match op(link.conn.clone()).await {
                Ok(value) => return Ok(value),
                Err(e) if broken(&e) => {
                    self.forget(link.id).await;
                    if !(reused && retry == Retry::Idempotent) {
                        return Err(redis_error(e));
                    }
                }
                Err(e) => return Err(redis_error(e)),
            }
        }
        Err(StoreError::Backend(
            "redis connection failed twice in a row".into(),
        ))
    }

    /// The current connection (and `true`), or a new one (and `false`).
    async fn link(&self) -> Result<(Link, bool), StoreError> {
        let mut slot = self.inner.link.lock().await;
        if let Some(link) = slot.as_ref() {
            return Ok((link.clone(), true));
        }
        let conn = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&self.inner.config)
            .await
            .map_err(|e| StoreError::Backend(format!("connecting to redis failed: {e}")))?;
        let link = Link {
            id: self.inner.next_link.fetch_add(1, Ordering::Relaxed),
            conn,
        };
        *slot = Some(link.clone());
        Ok((link, false))
    }

    /// Drops connection `id` unless it was already replaced.
    async fn forget(&self, id: u64) {
        let mut slot = self.inner.link.lock().await;
        if slot.as_ref().is_some_and(|l| l.id == id) {
            tracing::warn!("redis connection failed; reconnecting on the next call");
            *slot = None;
        }
    }
}

/// A failure that says the connection itself is unusable.
fn broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_unrecoverable_error() || e.is_timeout()
}

fn redis_error(e: RedisError) -> StoreError {
    if e.code() == Some("TMCORRUPT") || e.code() == Some("WRONGTYPE") {
        StoreError::Corrupt(e.detail().unwrap_or_default().to_string())
    } else {
        StoreError::Backend(format!("redis: {e}"))
    }
}

/// A name as a key segment: `%`, `:`, `{` and `}` percent-encoded.
pub(super) fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}
