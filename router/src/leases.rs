//! Leases of the cluster-wide rate limits and quotas, so that a call rarely
//! waits for the shared store.
//!
//! A router takes a rate limit's tokens from the shared GCRA bucket a few at
//! a time ([`token_lease_size`]: about 20 ms of the limit, at most its burst)
//! and spends them locally; when half are spent it takes the next few in the
//! background, so a steady caller's calls never wait for Redis. A quota's
//! calls are reserved the same way ([`quota_lease_size`]: 1/200 of the
//! smallest window's limit, at most 50), counted in the shared counters when
//! reserved, and reserved calls left unused for [`QUOTA_IDLE_RETURN`] are
//! given back.
//!
//! What this trades: nothing is ever admitted that the shared bucket or
//! counter did not grant, so a limit is never exceeded by more than a router's
//! unspent tokens of the last second (at most one lease each), and a quota
//! never. Unspent tokens are dropped after [`TOKEN_LEASE_TTL`] (a caller on
//! another router may be refused while this one holds them), and a quota's
//! usage reads up to a lease high per router until the unused part is given
//! back.
//!
//! Independent layer: names nothing else in the crate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::ports::{QuotaGrant, SharedLimits, TokenGrant};
use policies::ratelimit::{RateDecision, RateLimitConfig};

/// Tokens not spent within this after they were taken are dropped.
pub const TOKEN_LEASE_TTL: Duration = Duration::from_secs(1);
/// Reserved quota calls unused for this long are given back.
pub const QUOTA_IDLE_RETURN: Duration = Duration::from_secs(2);
/// A used-up quota is not asked about again for this long.
const EXHAUSTED_RECHECK: Duration = Duration::from_millis(250);

/// Tokens taken at once for `config`: about 20 ms of the limit, at least 1
/// and at most the burst.
pub fn token_lease_size(config: &RateLimitConfig) -> u32 {
    let per_20ms = (config.per_second * 0.02).ceil();
    (per_20ms.min(f64::from(u32::MAX)) as u32).clamp(1, config.burst.max(1))
}

/// Calls reserved at once against windows whose smallest limit is `limit`.
pub fn quota_lease_size(limit: u64) -> u64 {
    (limit / 200).clamp(1, 50)
}

#[derive(Default)]
struct TokenLease {
    tokens: u32,
    expires: Option<Instant>,
    fetching: bool,
    refused_until: Option<Instant>,
    /// The last grant's view of the bucket, for the `RateLimit` headers.
    remaining: u32,
    reset_after: Duration,
}

struct QuotaLease {
    units: u64,
    keys: Vec<String>,
    fetching: bool,
    exhausted: Option<(Instant, usize)>,
    last_used: Instant,
}

/// This router's leases of the shared limits.
pub struct Leases {
    shared: Arc<dyn SharedLimits>,
    tokens: Arc<Mutex<HashMap<String, TokenLease>>>,
    quotas: Arc<Mutex<HashMap<String, QuotaLease>>>,
    routers: Arc<AtomicU32>,
}

impl Leases {
    pub fn new(shared: Arc<dyn SharedLimits>) -> Self {
        Leases {
            shared,
            tokens: Arc::default(),
            quotas: Arc::default(),
            routers: Arc::new(AtomicU32::new(1)),
        }
    }

    /// Routers that took tokens recently, as last seen (at least 1): this
    /// router's share of a limit is 1/this when the shared store is away.
    pub fn routers(&self) -> u32 {
        self.routers.load(Ordering::Relaxed).max(1)
    }

    /// One call of `cost` tokens (1 ≤ cost ≤ burst) against the rate limit
    /// `key`, all or none. Err: the shared store failed.
    pub async fn rate(
        &self,
        key: &str,
        config: &RateLimitConfig,
        cost: u32,
    ) -> Result<RateDecision, String> {
        let cost = cost.clamp(1, config.burst.max(1));
        // Leases refill at their usual size; a costly call that finds too
        // few asks for what it needs.
        let lease_size = token_lease_size(config);
        let want = lease_size.max(cost);
        let now = Instant::now();
        {
            let mut leases = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(lease) = leases.get_mut(key) {
                if lease.expires.is_some_and(|at| at <= now) {
                    lease.tokens = 0;
                }
                if lease.tokens >= cost {
                    lease.tokens -= cost;
                    let decision = RateDecision::Allowed {
                        limit: config.burst,
                        remaining: lease.remaining.saturating_add(lease.tokens),
                        reset_after: lease.reset_after,
                    };
                    let refill = lease_size > 1
                        && lease.tokens * 2 <= lease_size
                        && !lease.fetching
                        && lease.refused_until.is_none_or(|until| now >= until);
                    if refill {
                        lease.fetching = true;
                    }
                    drop(leases);
                    if refill {
                        self.refill_tokens(key, config, lease_size);
                    }
                    return Ok(decision);
                }
                if let Some(until) = lease.refused_until.filter(|until| now < *until) {
                    return Ok(RateDecision::Limited {
                        limit: config.burst,
                        retry_after: until - now,
                    });
                }
            }
        }
        let grant = self.shared.take_tokens(key, config, want).await?;
        self.routers.store(grant.routers, Ordering::Relaxed);
        let mut leases = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let lease = leases.entry(key.to_string()).or_default();
        // Tokens this router already holds count towards a costly call.
        let held = if lease.expires.is_some_and(|at| at > now) {
            lease.tokens
        } else {
            0
        };
        let have = held + grant.granted;
        if have < cost {
            if grant.granted > 0 {
                store_tokens(lease, &grant, have, now);
            }
            // Until the missing tokens have refilled. Only an empty bucket is
            // remembered as a refusal: a cheaper call may still pass now.
            let short = config.period().saturating_mul(cost - have);
            let wait = if grant.granted > 0 {
                short
            } else {
                lease.refused_until = Some(now + grant.wait);
                grant.wait.max(short)
            };
            return Ok(RateDecision::Limited {
                limit: config.burst,
                retry_after: wait,
            });
        }
        store_tokens(lease, &grant, have - cost, now);
        Ok(RateDecision::Allowed {
            limit: config.burst,
            remaining: grant.remaining.saturating_add(lease.tokens),
            reset_after: grant.wait,
        })
    }

    /// Takes the next tokens of `key` in the background.
    fn refill_tokens(&self, key: &str, config: &RateLimitConfig, want: u32) {
        let shared = self.shared.clone();
        let leases = self.tokens.clone();
        let routers = self.routers.clone();
        let key = key.to_string();
        let config = *config;
        tokio::spawn(async move {
            let grant = shared.take_tokens(&key, &config, want).await;
            let now = Instant::now();
            let mut leases = leases.lock().unwrap_or_else(|e| e.into_inner());
            let lease = leases.entry(key).or_default();
            lease.fetching = false;
            match grant {
                Ok(grant) if grant.granted > 0 => {
                    routers.store(grant.routers, Ordering::Relaxed);
                    let tokens = if lease.expires.is_some_and(|at| at > now) {
                        lease.tokens + grant.granted
                    } else {
                        grant.granted
                    };
                    store_tokens(lease, &grant, tokens, now);
                }
                Ok(grant) => lease.refused_until = Some(now + grant.wait),
                // Tried again at the next refill, or by the call that finds
                // no token.
                Err(e) => tracing::debug!(error = %e, "taking rate limit tokens ahead failed"),
            }
        });
    }

    /// One call of `cost` units against the quota windows `(counter key,
    /// limit, ttl_s)`, leased under `lease_key`, all or none. Ok(Some(i)):
    /// window i is used up (has no room for the call). Err: the shared store
    /// failed.
    pub async fn quota(
        &self,
        lease_key: &str,
        windows: &[(String, u64, u64)],
        cost: u64,
    ) -> Result<Option<usize>, String> {
        let cost = cost.max(1);
        let (tightest, smallest) = windows
            .iter()
            .enumerate()
            .map(|(i, (_, limit, _))| (i, *limit))
            .min_by_key(|(_, limit)| *limit)
            .unwrap_or((0, 1));
        let lease_size = quota_lease_size(smallest);
        let want = lease_size.max(cost);
        let now = Instant::now();
        {
            let mut leases = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(lease) = leases.get_mut(lease_key) {
                if lease.units >= cost {
                    lease.units -= cost;
                    lease.last_used = now;
                    let refill = lease_size > 1
                        && lease.units * 2 <= lease_size
                        && !lease.fetching
                        && lease.exhausted.is_none_or(|(until, _)| now >= until);
                    if refill {
                        lease.fetching = true;
                    }
                    drop(leases);
                    if refill {
                        self.refill_quota(lease_key, windows, lease_size);
                    }
                    return Ok(None);
                }
                if let Some((until, window)) = lease.exhausted {
                    if now < until {
                        return Ok(Some(window));
                    }
                }
            }
        }
        let grant = self.shared.reserve_quota(windows, want).await?;
        let mut leases = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        let lease = leases
            .entry(lease_key.to_string())
            .or_insert_with(|| QuotaLease {
                units: 0,
                keys: windows.iter().map(|(k, _, _)| k.clone()).collect(),
                fetching: false,
                exhausted: None,
                last_used: now,
            });
        lease.last_used = now;
        match grant {
            QuotaGrant::Granted(n) if lease.units + n >= cost => {
                lease.units = lease.units + n - cost;
                lease.exhausted = None;
                Ok(None)
            }
            // Room for less than the call: what was reserved stays leased
            // (given back when idle) and the call is refused.
            QuotaGrant::Granted(n) => {
                lease.units += n;
                lease.exhausted = Some((now + EXHAUSTED_RECHECK, tightest));
                Ok(Some(tightest))
            }
            QuotaGrant::Exhausted(window) => {
                lease.exhausted = Some((now + EXHAUSTED_RECHECK, window));
                Ok(Some(window))
            }
        }
    }

    /// Reserves the next calls of a quota lease in the background.
    fn refill_quota(&self, lease_key: &str, windows: &[(String, u64, u64)], want: u64) {
        let shared = self.shared.clone();
        let leases = self.quotas.clone();
        let lease_key = lease_key.to_string();
        let windows = windows.to_vec();
        tokio::spawn(async move {
            let grant = shared.reserve_quota(&windows, want).await;
            let orphaned = {
                let mut leases = leases.lock().unwrap_or_else(|e| e.into_inner());
                match leases.get_mut(&lease_key) {
                    Some(lease) => {
                        lease.fetching = false;
                        match grant {
                            Ok(QuotaGrant::Granted(n)) => lease.units += n,
                            Ok(QuotaGrant::Exhausted(window)) => {
                                lease.exhausted =
                                    Some((Instant::now() + EXHAUSTED_RECHECK, window));
                            }
                            Err(e) => tracing::debug!(error = %e, "reserving quota ahead failed"),
                        }
                        0
                    }
                    // Given back meanwhile: give these back too.
                    None => match grant {
                        Ok(QuotaGrant::Granted(n)) => n,
                        _ => 0,
                    },
                }
            };
            if orphaned > 0 {
                let keys: Vec<_> = windows.into_iter().map(|(k, _, _)| k).collect();
                let _ = shared.release_quota(&keys, orphaned).await;
            }
        });
    }

    /// Gives back the reserved calls of quota leases unused for
    /// [`QUOTA_IDLE_RETURN`], and forgets token leases long expired. Run
    /// every second or so.
    /// With `all` (the router stops), every unused reservation is given back.
    pub async fn upkeep(&self, now: Instant, all: bool) {
        let idle: Vec<(Vec<String>, u64)> = {
            let mut leases = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
            let mut idle = Vec::new();
            leases.retain(|_, lease| {
                let keep = !all
                    && (lease.fetching || now.duration_since(lease.last_used) < QUOTA_IDLE_RETURN);
                if !keep && lease.units > 0 {
                    idle.push((std::mem::take(&mut lease.keys), lease.units));
                }
                keep
            });
            idle
        };
        for (keys, unused) in idle {
            if let Err(e) = self.shared.release_quota(&keys, unused).await {
                tracing::debug!(error = %e, "giving back reserved quota failed");
            }
        }
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, lease| {
                lease.fetching
                    || lease.expires.is_some_and(|at| now < at + TOKEN_LEASE_TTL)
                    || lease.refused_until.is_some_and(|until| now < until)
            });
    }
}

fn store_tokens(lease: &mut TokenLease, grant: &TokenGrant, tokens: u32, now: Instant) {
    lease.tokens = tokens;
    lease.expires = Some(now + TOKEN_LEASE_TTL);
    lease.refused_until = None;
    lease.remaining = grant.remaining;
    lease.reset_after = grant.wait;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A shared store of plain counters: `tokens` in the bucket (never
    /// refilled), quota counters by key, and the calls it answered.
    #[derive(Default)]
    struct FakeShared {
        tokens: AtomicU64,
        counters: Mutex<HashMap<String, u64>>,
        calls: AtomicU64,
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl SharedLimits for FakeShared {
        async fn take_tokens(
            &self,
            _key: &str,
            _config: &RateLimitConfig,
            want: u32,
        ) -> Result<TokenGrant, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err("down".into());
            }
            let left = self.tokens.load(Ordering::SeqCst);
            let granted = left.min(u64::from(want));
            self.tokens.fetch_sub(granted, Ordering::SeqCst);
            Ok(TokenGrant {
                granted: granted as u32,
                remaining: (left - granted) as u32,
                wait: Duration::from_millis(if granted == 0 { 50 } else { 0 }),
                routers: 2,
            })
        }

        async fn reserve_quota(
            &self,
            windows: &[(String, u64, u64)],
            want: u64,
        ) -> Result<QuotaGrant, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut counters = self.counters.lock().unwrap();
            let mut granted = want;
            for (i, (key, limit, _)) in windows.iter().enumerate() {
                let room = limit.saturating_sub(*counters.get(key).unwrap_or(&0));
                if room == 0 {
                    return Ok(QuotaGrant::Exhausted(i));
                }
                granted = granted.min(room);
            }
            for (key, _, _) in windows {
                *counters.entry(key.clone()).or_default() += granted;
            }
            Ok(QuotaGrant::Granted(granted))
        }

        async fn release_quota(&self, keys: &[String], unused: u64) -> Result<(), String> {
            let mut counters = self.counters.lock().unwrap();
            for key in keys {
                let n = counters.entry(key.clone()).or_default();
                *n = n.saturating_sub(unused);
            }
            Ok(())
        }
    }

    fn config(per_second: f64, burst: u32) -> RateLimitConfig {
        RateLimitConfig::try_new(per_second, Some(burst)).unwrap()
    }

    /// Lets the background refills run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_steady_caller_spends_leased_tokens_and_never_more_than_granted() {
        let shared = Arc::new(FakeShared::default());
        shared.tokens.store(150, Ordering::SeqCst);
        let leases = Leases::new(shared.clone());
        let config = config(1000.0, 100);
        let mut allowed = 0;
        for _ in 0..200 {
            if let RateDecision::Allowed { .. } = leases.rate("k", &config, 1).await.unwrap() {
                allowed += 1;
            }
            settle().await;
        }
        // Every granted token was spent, and no more.
        assert_eq!(allowed, 150);
        assert_eq!(shared.tokens.load(Ordering::SeqCst), 0);
        // Leases of 20: a handful of store calls for 150 calls, and the
        // refusals after the bucket ran dry are remembered for 50 ms.
        let calls = shared.calls.load(Ordering::SeqCst);
        assert!(calls <= 12, "{calls} store calls");
        assert_eq!(leases.routers(), 2);
    }

    #[tokio::test]
    async fn a_refusal_is_remembered_until_a_token_may_be_had() {
        let shared = Arc::new(FakeShared::default());
        let leases = Leases::new(shared.clone());
        let config = config(40.0, 10);
        for _ in 0..5 {
            let decision = leases.rate("k", &config, 1).await.unwrap();
            assert!(matches!(decision, RateDecision::Limited { .. }));
        }
        assert_eq!(shared.calls.load(Ordering::SeqCst), 1);
        shared.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(leases.rate("k", &config, 1).await.is_err());
    }

    #[tokio::test]
    async fn a_quota_is_never_exceeded_and_unused_reservations_go_back() {
        let shared = Arc::new(FakeShared::default());
        let leases = Leases::new(shared.clone());
        // Limit 2000: leases of 10.
        let windows = vec![("day".to_string(), 2000, 86_400)];
        for _ in 0..7 {
            assert_eq!(leases.quota("q", &windows, 1).await.unwrap(), None);
            settle().await;
        }
        let reserved = shared.counters.lock().unwrap()["day"];
        assert!(reserved >= 7, "{reserved}");
        // Idle: the unused part goes back, and the counter reads what was used.
        leases
            .upkeep(Instant::now() + QUOTA_IDLE_RETURN, false)
            .await;
        assert_eq!(shared.counters.lock().unwrap()["day"], 7);

        // A small quota is exact: 3 calls, then refusals.
        let small = vec![("small".to_string(), 3, 86_400)];
        let mut admitted = 0;
        for _ in 0..10 {
            if leases.quota("s", &small, 1).await.unwrap().is_none() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3);
        assert_eq!(shared.counters.lock().unwrap()["small"], 3);
    }

    #[tokio::test]
    async fn a_costly_call_takes_its_cost_from_the_limits_all_or_none() {
        let shared = Arc::new(FakeShared::default());
        shared.tokens.store(25, Ordering::SeqCst);
        let leases = Leases::new(shared.clone());
        let config = config(1000.0, 100);
        // 25 tokens in the bucket: two calls of 10, then one of 10 is refused
        // while the 5 left are held for later, not lost.
        for _ in 0..2 {
            let d = leases.rate("k", &config, 10).await.unwrap();
            assert!(matches!(d, RateDecision::Allowed { .. }), "{d:?}");
        }
        let d = leases.rate("k", &config, 10).await.unwrap();
        assert!(matches!(d, RateDecision::Limited { .. }), "{d:?}");
        assert_eq!(shared.tokens.load(Ordering::SeqCst), 0);
        // The refusal of a costly call does not refuse a cheap one: it
        // spends a held token at once.
        let d = leases.rate("k", &config, 1).await.unwrap();
        assert!(matches!(d, RateDecision::Allowed { .. }), "{d:?}");
        tokio::time::sleep(Duration::from_millis(60)).await;
        for _ in 0..4 {
            let d = leases.rate("k", &config, 1).await.unwrap();
            assert!(matches!(d, RateDecision::Allowed { .. }), "{d:?}");
        }
        assert!(matches!(
            leases.rate("k", &config, 1).await.unwrap(),
            RateDecision::Limited { .. }
        ));

        // A quota of 30: calls of 12 are admitted twice, the third has no
        // room; the counter never reads more than 30, and after the idle
        // return exactly what was admitted.
        let windows = vec![("day".to_string(), 30, 86_400)];
        let mut admitted = 0;
        for _ in 0..3 {
            if leases.quota("q", &windows, 12).await.unwrap().is_none() {
                admitted += 12;
            }
            settle().await;
            assert!(shared.counters.lock().unwrap()["day"] <= 30);
        }
        assert_eq!(admitted, 24);
        assert_eq!(leases.quota("q", &windows, 6).await.unwrap(), None);
        leases
            .upkeep(Instant::now() + QUOTA_IDLE_RETURN, false)
            .await;
        assert_eq!(shared.counters.lock().unwrap()["day"], 30);
    }

    #[test]
    fn leases_are_small_slices_of_the_limit() {
        let config = |per_second, burst| RateLimitConfig::try_new(per_second, Some(burst)).unwrap();
        assert_eq!(token_lease_size(&config(40.0, 10)), 1);
        assert_eq!(token_lease_size(&config(1000.0, 100)), 20);
        assert_eq!(token_lease_size(&config(1e6, 50)), 50);
        assert_eq!(quota_lease_size(25), 1);
        assert_eq!(quota_lease_size(10_000), 50);
        assert_eq!(quota_lease_size(2_000), 10);
    }
}
