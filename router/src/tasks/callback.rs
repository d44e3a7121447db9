//! Completion webhooks: a task submitted with a `callback_url` (query) or an
//! `x-taskmesh-callback-url` header is POSTed, once it is `succeeded`, `dead`
//! or `cancelled`, to that URL as its `GET /v1/tasks/{id}` view, signed.
//!
//! - **Signature**: `x-taskmesh-signature: t=<unix seconds>,v1=<hex>`, the
//!   HMAC-SHA256 of `<t>.<body>` under the submitting client's callback
//!   secret. A client reads its secret at `GET /v1/callbacks/secret` with its
//!   own key; it is derived from the cluster key and the client's tenant and
//!   id (so every router of a cluster signs alike, and nothing is stored).
//!   Receivers check the signature and refuse old timestamps.
//! - **Who may be called** (the router makes requests on a client's behalf,
//!   so it must not become a way into the private network): http or https
//!   only, no credentials in the URL, at most [`MAX_URL_BYTES`]; the host's
//!   addresses are resolved at delivery and connected to only when public
//!   (not loopback, private, link-local/cloud metadata, shared, multicast,
//!   documentation or reserved ranges, in IPv4 or IPv6, mapped forms
//!   included). Redirects are not followed and no proxy is used. An operator
//!   allows private targets with `--callbacks-allow-private` (tests, on-prem).
//! - **Delivery**: [`ATTEMPTS`] attempts, 1 s apart then doubling, each within
//!   [`ATTEMPT_TIMEOUT`]; a 2xx answer is delivered. At most
//!   [`MAX_PENDING`] deliveries wait per router (more are dropped and
//!   counted). Delivery lives in the router that recorded the outcome: a
//!   router that stops meanwhile loses the remaining attempts; the task
//!   itself (`GET /v1/tasks/{id}`) is the record.
//!
//! Independent layer: names nothing else in the crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use contract::{ApiError, ClusterKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header a submission may name its callback URL in.
pub const URL_HEADER: &str = "x-taskmesh-callback-url";
/// The signature header of a delivery.
pub const SIGNATURE_HEADER: &str = "x-taskmesh-signature";
/// The longest callback URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// Attempts of one delivery.
pub const ATTEMPTS: u32 = 5;
/// The time one attempt may take, connecting included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries that may wait at once on one router.
pub const MAX_PENDING: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a callback may connect to `ip` without the operator's leave.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address too.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))
        }
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: cloud metadata
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

/// Checks a callback URL given at submit: 400 when it cannot be one. A host
/// that is an address must be public (unless allowed); a name is checked
/// when it is resolved, at delivery.
pub fn check_url(raw: &str, allow_private: bool) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("invalid callback URL: {why}"));
    if raw.len() > MAX_URL_BYTES {
        return Err(bad(&format!("longer than {MAX_URL_BYTES} bytes")));
    }
    let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the URL are not accepted"));
    }
    let ip = match url.host() {
        None => return Err(bad("it has no host")),
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
    };
    if let Some(ip) = ip.filter(|ip| !allow_private && !is_public(*ip)) {
        return Err(bad(&format!(
            "{ip} is not a public address (an operator may allow private targets)"
        )));
    }
    Ok(url.to_string())
}

/// Signs webhooks: one secret per client, derived from the cluster key.
pub struct Signer {
    root: [u8; 32],
}

impl Signer {
    pub fn new(cluster_key: &ClusterKey) -> Self {
        let mut mac = HmacSha256::new_from_slice(cluster_key.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"taskmesh callback secrets v1");
        Signer {
            root: mac.finalize().into_bytes().into(),
        }
    }

    /// The callback secret of a client (`whsec_` and 64 hex digits).
    pub fn secret(&self, tenant: &str, client_id: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.root).expect("any key length");
        mac.update(tenant.as_bytes());
        mac.update(b"\0");
        mac.update(client_id.as_bytes());
        format!("whsec_{}", hex(&mac.finalize().into_bytes()))
    }

    /// `t=<timestamp>,v1=<HMAC-SHA256 of "<timestamp>.<body>" under secret>`.
    pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("t={timestamp},v1={}", hex(&mac.finalize().into_bytes()))
    }
}

/// A host whose addresses a callback may not reach.
#[derive(Debug)]
struct NotPublic(String);

impl std::fmt::Display for NotPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} has no public address a callback may reach", self.0)
    }
}

impl std::error::Error for NotPublic {}

/// Whether `error` (or what caused it) is a [`NotPublic`] refusal.
fn not_public(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<NotPublic>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Resolves a callback's host to its public addresses only.
struct PublicResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if usable.is_empty() {
                return Err(Box::new(NotPublic(host)) as _);
            }
            let addrs: reqwest::dns::Addrs = Box::new(usable.into_iter());
            Ok(addrs)
        })
    }
}

/// What one finished delivery came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A 2xx answer.
    Delivered,
    /// Every attempt failed.
    Failed,
    /// The target may not be called (its address), or the URL is unusable.
    Refused,
    /// Too many deliveries were waiting.
    Dropped,
}

impl Delivery {
    /// The outcome label of `taskmesh_router_tasks_outcomes_total`.
    pub fn label(self) -> &'static str {
        match self {
            Delivery::Delivered => "callback_delivered",
            Delivery::Failed => "callback_failed",
            Delivery::Refused => "callback_refused",
            Delivery::Dropped => "callback_dropped",
        }
    }
}

/// This router's webhook sender.
pub struct Callbacks {
    pub signer: Signer,
    pub allow_private: bool,
    client: reqwest::Client,
    pending: Arc<tokio::sync::Semaphore>,
    /// First retry delay (1 s; shorter in unit tests).
    backoff: Duration,
}

impl Callbacks {
    pub fn new(cluster_key: &ClusterKey, allow_private: bool) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("taskmesh/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(PublicResolver { allow_private }))
            .build()
            .expect("the callback client's settings are valid");
        Callbacks {
            signer: Signer::new(cluster_key),
            allow_private,
            client,
            pending: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING)),
            backoff: Duration::from_secs(1),
        }
    }

    /// Delivers `body` (a task's view) to `url` in the background, signed
    /// with the secret of `(tenant, client_id)`; `done` hears the outcome.
    pub fn deliver(
        self: &Arc<Self>,
        url: &str,
        task_id: &str,
        (tenant, client_id): (&str, &str),
        body: Vec<u8>,
        done: impl FnOnce(Delivery) + Send + 'static,
    ) {
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            tracing::warn!(task_id, "too many callbacks waiting; this one is dropped");
            return done(Delivery::Dropped);
        };
        let this = self.clone();
        let secret = self.signer.secret(tenant, client_id);
        let (url, task_id) = (url.to_string(), task_id.to_string());
        tokio::spawn(async move {
            let outcome = this.send(&url, &task_id, &secret, body).await;
            drop(permit);
            done(outcome);
        });
    }

    async fn send(&self, url: &str, task_id: &str, secret: &str, body: Vec<u8>) -> Delivery {
        // A literal address is not resolved, so it is checked here too.
        if check_url(url, self.allow_private).is_err() {
            tracing::warn!(task_id, "callback URL refused at delivery");
            return Delivery::Refused;
        }
        let mut delay = self.backoff;
        for attempt in 1..=ATTEMPTS {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let signature = Signer::signature(secret, timestamp, &body);
            let sent = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, signature)
                .header("x-taskmesh-task-id", task_id)
                .header("x-taskmesh-delivery-attempt", attempt.to_string())
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(answer) if answer.status().is_success() => return Delivery::Delivered,
                Ok(answer) => {
                    tracing::info!(
                        task_id,
                        attempt,
                        status = answer.status().as_u16(),
                        "callback answered with an error"
                    );
                }
                Err(e) => {
                    tracing::info!(task_id, attempt, error = %e, "callback failed");
                    if not_public(&e) || e.is_builder() {
                        return Delivery::Refused;
                    }
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Delivery::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_metadata_and_mapped_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn callback_urls_are_checked_at_submit() {
        assert!(check_url("https://hooks.example.com/taskmesh?x=1", false).is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://user:pw@example.com/",
            "http://127.0.0.1:8080/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://0x7f000001/",
            "not a url",
        ] {
            let err = check_url(bad, false).unwrap_err();
            assert_eq!(err.status(), 400, "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(check_url(&long, false).is_err());
        // An operator may allow private targets.
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok());
    }

    #[test]
    fn secrets_differ_per_client_and_signatures_follow_the_body() {
        let key = ClusterKey::parse(&"k".repeat(32)).unwrap();
        let signer = Signer::new(&key);
        let a = signer.secret("t", "client-a");
        assert!(a.starts_with("whsec_") && a.len() == 6 + 64);
        assert_ne!(a, signer.secret("t", "client-b"));
        assert_ne!(a, signer.secret("u", "client-a"));
        assert_eq!(a, Signer::new(&key).secret("t", "client-a"));
        let other = Signer::new(&ClusterKey::parse(&"j".repeat(32)).unwrap());
        assert_ne!(a, other.secret("t", "client-a"));
        let sig = Signer::signature(&a, 1_700_000_000, b"{}");
        assert!(sig.starts_with("t=1700000000,v1="));
        assert_ne!(sig, Signer::signature(&a, 1_700_000_000, b"{ }"));
        assert_ne!(sig, Signer::signature(&a, 1_700_000_001, b"{}"));
    }
}
