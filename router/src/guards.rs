//! The router's guard-rail state: rate limiters, quota counters, in-flight
//! counts, circuit breakers and retry budgets. The decisions themselves are
//! made by `policies`; this module only keys and keeps their state.
//!
//! Second layer: names `leases`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use contract::definition::{QuotaPolicy, RateLimitPolicy};
use contract::ports::{Counters, SharedLimits};

use crate::leases::Leases;
use contract::{ApiError, ErrorCode};
use contract::{FunctionVersion, Principal};
use policies::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Outcome, Permit};
use policies::quota::{self, QuotaDecision, QuotaWindow};
use policies::ratelimit::{rate_limit_headers, KeyedLimiter, RateDecision, RateLimitConfig};
use policies::retry::{Backoff, FailureKind, RetryBudget, RetryDecision, RetryRules};

/// (tenant, function) — limits and quotas apply to a function across its versions.
type FunctionKey = (String, String);
/// (tenant, function, version) — breakers judge one version.
type VersionKey = (String, String, u32);

#[derive(Clone, PartialEq, Eq, Hash)]
struct LimiterKey {
    function: FunctionKey,
    /// `per_second` bits and burst: a client with its own plan gets its own limiter.
    rate_bits: u64,
    burst: u32,
}

/// A store counter kept here (quota windows, per-version call statistics):
/// the calls counted, and how many of them the store has not seen yet.
#[derive(Default)]
struct Tally {
    count: u64,
    unflushed: u64,
}

/// What a call the guards admitted holds until it finishes: its breaker
/// permit and its in-flight slot (see [`Guards::release`]).
#[derive(Default)]
pub struct GuardPass {
    pub permit: Option<Permit>,
    in_flight_key: Option<(String, FunctionKey)>,
}

pub struct Guards {
    /// Durable counters (the store): quotas and per-version statistics.
    durable: Arc<dyn Counters>,
    /// Leases of the cluster-wide limits (cluster mode).
    leases: Option<Leases>,
    /// Set while the shared limits fail, so the fallback is logged once.
    shared_down: std::sync::atomic::AtomicBool,
    limiters: Mutex<HashMap<LimiterKey, Arc<KeyedLimiter<String>>>>,
    counters: Mutex<HashMap<String, Tally>>,
    in_flight: Mutex<HashMap<(String, FunctionKey), u32>>,
    breakers: Mutex<HashMap<VersionKey, CircuitBreaker>>,
    budgets: Mutex<HashMap<FunctionKey, RetryBudget>>,
    /// Node health: a breaker per node, fed by connection failures only.
    nodes: Mutex<HashMap<SocketAddr, CircuitBreaker>>,
}

/// Node breakers: 3 connection failures in 10 s (at half the attempts) eject a
/// node for 2 s, then one trial call decides whether it is back.
fn node_breaker() -> CircuitBreaker {
    let config = BreakerConfig::try_new(0.5, 3, Duration::from_secs(10), Duration::from_secs(2), 1)
        .expect("static node breaker configuration is valid");
    CircuitBreaker::new(config)
}

fn function_key(version: &FunctionVersion) -> FunctionKey {
    (version.tenant.clone(), version.name.clone())
}

fn version_key(version: &FunctionVersion) -> VersionKey {
    (
        version.tenant.clone(),
        version.name.clone(),
        version.version,
    )
}

/// `config` shared by `routers` routers: each enforces 1/`routers` of the
/// rate and of the burst (at least one call).
fn share_of(config: &RateLimitConfig, routers: u32) -> RateLimitConfig {
    if routers <= 1 {
        return *config;
    }
    let n = f64::from(routers);
    RateLimitConfig::try_new(config.per_second / n, Some((config.burst / routers).max(1)))
        .unwrap_or(*config)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// The breaker configuration of a version (checked at registration).
pub fn breaker_config(version: &FunctionVersion) -> Option<BreakerConfig> {
    let cb = &version.definition.circuit_breaker;
    BreakerConfig::try_new(
        cb.failure_rate,
        cb.minimum_calls,
        Duration::from_secs(cb.window_s),
        Duration::from_secs(cb.open_s),
        cb.half_open_calls,
    )
    .ok()
}

/// The retry policy of a version (checked at registration).
pub fn retry_policy(version: &FunctionVersion) -> Option<RetryRules> {
    let r = &version.definition.retry;
    let backoff = Backoff::try_new(
        Duration::from_millis(r.initial_backoff_ms),
        Duration::from_millis(r.max_backoff_ms),
        r.multiplier,
    )
    .ok()?;
    Some(RetryRules {
        max_attempts: r.max_attempts,
        backoff,
    })
}

/// The counter of one client's calls of one function in one quota window.
fn quota_key(
    principal: &Principal,
    version: &FunctionVersion,
    window: QuotaWindow,
    now: u64,
) -> String {
    format!(
        "{}/{}/{}/{}",
        version.tenant,
        version.name,
        principal.client_id,
        quota::window_label(window, now)
    )
}

fn quota_exhausted(window: QuotaWindow, limit: u64, now: u64) -> ApiError {
    let retry_after_s = match quota::decide(window, limit, limit, now) {
        QuotaDecision::Exhausted { retry_after_s } => retry_after_s,
        _ => 1,
    };
    let period = match window {
        QuotaWindow::Day => "daily",
        QuotaWindow::Month => "monthly",
    };
    ApiError::new(
        ErrorCode::QuotaExceeded,
        format!("{period} quota of {limit} calls is used up"),
    )
    .with_retry_after(retry_after_s)
}

impl Guards {
    pub fn new(durable: Arc<dyn Counters>, shared: Option<Arc<dyn SharedLimits>>) -> Self {
        Guards {
            durable,
            leases: shared.map(Leases::new),
            shared_down: std::sync::atomic::AtomicBool::new(false),
            limiters: Mutex::default(),
            counters: Mutex::default(),
            in_flight: Mutex::default(),
            breakers: Mutex::default(),
            budgets: Mutex::default(),
            nodes: Mutex::default(),
        }
    }

    /// Rate limit, quota, concurrency and breaker, in that order; the first refusal wins.
    /// A call of `cost` (`contract::cost`) takes that many rate-limit tokens
    /// (at most the burst) and quota calls.
    /// `rate_headers` receives the IETF `RateLimit` headers, admitted or not.
    pub async fn admit(
        &self,
        principal: &Principal,
        version: &FunctionVersion,
        cost: u64,
        rate_headers: &mut Vec<(&'static str, String)>,
    ) -> Result<GuardPass, ApiError> {
        let mut pass = GuardPass::default();
        let rate = principal
            .plan
            .rate_limit
            .as_ref()
            .or(version.definition.rate_limit.as_ref());
        if let Some(rate) = rate {
            self.rate_limit(principal, version, rate, cost, rate_headers)
                .await?;
        }
        let quota = principal
            .plan
            .quota
            .as_ref()
            .or(version.definition.quota.as_ref());
        if let Some(quota) = quota {
            self.quota(principal, version, quota, cost).await?;
            if let Some(max) = quota.max_in_flight {
                let key = (principal.client_id.clone(), function_key(version));
                let mut in_flight = self.in_flight.lock().expect("in-flight lock");
                let n = in_flight.entry(key.clone()).or_default();
                if *n >= max {
                    return Err(ApiError::new(ErrorCode::QuotaExceeded, format!("at most {max} invocations of this function may be in flight per client"))
                        .with_retry_after(1));
                }
                *n += 1;
                pass.in_flight_key = Some(key);
            }
        }
        match self.breaker_permit(version) {
            Ok(permit) => pass.permit = permit,
            Err(err) => {
                self.release(version, &mut pass, None);
                return Err(err);
            }
        }
        self.budgets
            .lock()
            .expect("budgets lock")
            .entry(function_key(version))
            .or_default()
            .record_request(Instant::now());
        Ok(pass)
    }

    /// A permit of the version's circuit breaker (none without a breaker);
    /// 503 `circuit_open` while it is open.
    fn breaker_permit(&self, version: &FunctionVersion) -> Result<Option<Permit>, ApiError> {
        let Some(config) = breaker_config(version) else {
            return Ok(None);
        };
        let now = Instant::now();
        let mut breakers = self.breakers.lock().expect("breakers lock");
        let breaker = breakers
            .entry(version_key(version))
            .or_insert_with(|| CircuitBreaker::new(config));
        match breaker.try_acquire(now) {
            Ok(permit) => Ok(Some(permit)),
            Err(rejected) => Err(ApiError::new(
                ErrorCode::CircuitOpen,
                format!(
                    "function {} version {} is failing; its circuit is open",
                    version.name, version.version
                ),
            )
            .with_retry_after(ceil_secs(rejected.retry_after))),
        }
    }

    /// A task's submission: counted against the quotas only (its rate limit
    /// paces it when it runs, [`Guards::admit_task_attempt`]).
    pub async fn admit_task_submit(
        &self,
        principal: &Principal,
        version: &FunctionVersion,
        cost: u64,
    ) -> Result<(), ApiError> {
        let quota = principal
            .plan
            .quota
            .as_ref()
            .or(version.definition.quota.as_ref());
        match quota {
            Some(quota) => self.quota(principal, version, quota, cost).await,
            None => Ok(()),
        }
    }

    /// The rest of a streamed call's cost, known once its body has streamed
    /// and validated (it was admitted on an estimate): more rate-limit
    /// tokens and quota calls, or the refusal that stops it before a node
    /// sees the body.
    /// `charged` is what it was admitted on, `cost` its whole cost; the rate
    /// limit takes at most a burst for the two together.
    pub async fn charge_more(
        &self,
        principal: &Principal,
        version: &FunctionVersion,
        charged: u64,
        cost: u64,
    ) -> Result<(), ApiError> {
        if cost <= charged {
            return Ok(());
        }
        let rate = principal
            .plan
            .rate_limit
            .as_ref()
            .or(version.definition.rate_limit.as_ref());
        if let Some(rate) = rate {
            let burst = RateLimitConfig::try_new(rate.per_second, rate.burst)
                .map_or(u64::MAX, |c| u64::from(c.burst));
            let tokens = cost.min(burst).saturating_sub(charged.min(burst));
            if tokens > 0 {
                self.rate_limit(principal, version, rate, tokens, &mut Vec::new())
                    .await?;
            }
        }
        self.admit_task_submit(principal, version, cost - charged)
            .await
    }

    /// One attempt of a task: the breaker, then the rate limit (a refusal
    /// says how long the task waits for its turn; an open breaker takes no
    /// token from the client's limit); the quota was counted at submit.
    pub async fn admit_task_attempt(
        &self,
        principal: &Principal,
        version: &FunctionVersion,
        cost: u64,
    ) -> Result<GuardPass, ApiError> {
        let mut pass = GuardPass {
            permit: self.breaker_permit(version)?,
            in_flight_key: None,
        };
        let rate = principal
            .plan
            .rate_limit
            .as_ref()
            .or(version.definition.rate_limit.as_ref());
        if let Some(rate) = rate {
            let limited = self
                .rate_limit(principal, version, rate, cost, &mut Vec::new())
                .await;
            if let Err(err) = limited {
                self.release(version, &mut pass, None);
                return Err(err);
            }
        }
        Ok(pass)
    }

    async fn rate_limit(
        &self,
        principal: &Principal,
        version: &FunctionVersion,
        rate: &RateLimitPolicy,
        cost: u64,
        rate_headers: &mut Vec<(&'static str, String)>,
    ) -> Result<(), ApiError> {
        let Ok(config) = RateLimitConfig::try_new(rate.per_second, rate.burst) else {
            return Ok(());
        };
        // A call never takes more than a full bucket (it could never pass).
        let tokens = u32::try_from(cost)
            .unwrap_or(u32::MAX)
            .clamp(1, config.burst.max(1));
        let key = LimiterKey {
            function: function_key(version),
            rate_bits: config.per_second.to_bits(),
            burst: config.burst,
        };
        let shared = match &self.leases {
            Some(leases) => {
                let shared_key = format!(
                    "{}/{}/{}/{:x}/{}",
                    version.tenant, version.name, principal.client_id, key.rate_bits, key.burst
                );
                self.shared_result(leases.rate(&shared_key, &config, tokens).await)
            }
            None => None,
        };
        let decision = match shared {
            Some(decision) => decision,
            None => {
                // Alone (no cluster, or the shared store away): this router's
                // share of the limit, 1/routers of it.
                let routers = self.leases.as_ref().map_or(1, Leases::routers);
                let local = share_of(&config, routers);
                let limiter = self
                    .limiters
                    .lock()
                    .expect("limiters lock")
                    .entry(key)
                    .or_insert_with(|| Arc::new(KeyedLimiter::new(&local)))
                    .clone();
                // This router's share may hold fewer tokens than the call.
                limiter.check_n(&principal.client_id, tokens.min(local.burst.max(1)))
            }
        };
        *rate_headers = rate_limit_headers(&version.name, &decision, &config);
        match decision {
            RateDecision::Allowed { .. } => Ok(()),
            RateDecision::Limited { retry_after, .. } => {
                let mut err = ApiError::new(
                    ErrorCode::RateLimited,
                    if tokens > 1 {
                        format!(
                            "rate limit of {} calls per second exceeded (this call costs {tokens})",
                            config.per_second
                        )
                    } else {
                        format!(
                            "rate limit of {} calls per second exceeded",
                            config.per_second
                        )
                    },
                )
                .with_retry_after(ceil_secs(retry_after));
                err.details = Some(serde_json::json!({
                    "limit_per_second": config.per_second,
                    "burst": config.burst,
                    "retry_after_ms": retry_after.as_millis() as u64,
                    "cost": tokens,
                }));
                Err(err)
            }
        }
    }

    async fn quota(
        &self,
        principal: &Principal,
        version: &FunctionVersion,
        quota: &QuotaPolicy,
        cost: u64,
    ) -> Result<(), ApiError> {
        let cost = cost.max(1);
        let now = unix_now();
        let windows = [
            (QuotaWindow::Day, quota.per_day),
            (QuotaWindow::Month, quota.per_month),
        ];
        if let Some(leases) = &self.leases {
            let counted: Vec<_> = windows
                .iter()
                .filter_map(|(window, limit)| Some((*window, (*limit)?)))
                .collect();
            let keys: Vec<(String, u64, u64)> = counted
                .iter()
                .map(|(window, limit)| {
                    let ttl = match window {
                        QuotaWindow::Day => 2 * 86_400,
                        QuotaWindow::Month => 32 * 86_400,
                    };
                    (quota_key(principal, version, *window, now), *limit, ttl)
                })
                .collect();
            let lease_key = keys
                .iter()
                .map(|(key, limit, _)| format!("{key}={limit}"))
                .collect::<Vec<_>>()
                .join(" ");
            if let Some(outcome) = self.shared_result(leases.quota(&lease_key, &keys, cost).await) {
                return match outcome {
                    None => Ok(()),
                    Some(i) => {
                        let (window, limit) = counted[i.min(counted.len() - 1)];
                        Err(quota_exhausted(window, limit, now))
                    }
                };
            }
        }
        let mut keys = Vec::new();
        for (window, limit) in windows {
            let Some(limit) = limit else { continue };
            let key = quota_key(principal, version, window, now);
            let known = self
                .counters
                .lock()
                .expect("counters lock")
                .contains_key(&key);
            if !known {
                let stored = match self.durable.get_counter(&key).await {
                    Ok(stored) => stored,
                    // Cluster mode with Redis away: count from zero here and add
                    // the calls to the shared counter when it is back (the
                    // documented per-router fallback), rather than refuse.
                    Err(e) if self.leases.is_some() => {
                        tracing::debug!(error = %e, "quota counter unreadable; counting locally");
                        0
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading a quota counter failed");
                        return Err(ApiError::new(
                            ErrorCode::Unavailable,
                            "quota state is unavailable",
                        )
                        .with_retry_after(1));
                    }
                };
                self.counters
                    .lock()
                    .expect("counters lock")
                    .entry(key.clone())
                    .or_insert(Tally {
                        count: stored,
                        unflushed: 0,
                    });
            }
            keys.push((window, limit, key));
        }
        // Check every window first, then count in all of them, under one lock.
        let mut counters = self.counters.lock().expect("counters lock");
        for (window, limit, key) in &keys {
            // Room for the whole cost: the call is refused when `used +
            // cost` would pass the limit.
            let used = counters.get(key).map_or(0, |c| c.count) + (cost - 1);
            if let QuotaDecision::Exhausted { .. } = quota::decide(*window, used, *limit, now) {
                return Err(quota_exhausted(*window, *limit, now));
            }
        }
        for (_, _, key) in &keys {
            let counter = counters.entry(key.clone()).or_default();
            counter.count += cost;
            counter.unflushed += cost;
        }
        Ok(())
    }

    /// Gives back idle quota reservations (all of them with `all`) and
    /// forgets old token leases (cluster mode).
    pub async fn upkeep_leases(&self, all: bool) {
        if let Some(leases) = &self.leases {
            leases.upkeep(Instant::now(), all).await;
        }
    }

    /// The shared limits' answer, or `None` (use the local ones) when they failed.
    fn shared_result<T>(&self, result: Result<T, String>) -> Option<T> {
        use std::sync::atomic::Ordering;
        match result {
            Ok(value) => {
                if self.shared_down.swap(false, Ordering::Relaxed) {
                    tracing::info!("shared limits reachable again");
                }
                Some(value)
            }
            Err(e) => {
                if !self.shared_down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "shared limits unreachable; enforcing limits per router");
                }
                None
            }
        }
    }

    /// Ends a call the guards let pass: frees its in-flight slot and reports
    /// the outcome to the breaker.
    pub fn release(
        &self,
        version: &FunctionVersion,
        pass: &mut GuardPass,
        outcome: Option<Outcome>,
    ) {
        if let Some(key) = pass.in_flight_key.take() {
            let mut in_flight = self.in_flight.lock().expect("in-flight lock");
            if let Some(n) = in_flight.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    in_flight.remove(&key);
                }
            }
        }
        if let Some(permit) = pass.permit.take() {
            let mut breakers = self.breakers.lock().expect("breakers lock");
            if let Some(breaker) = breakers.get_mut(&version_key(version)) {
                match outcome {
                    Some(outcome) => breaker.record(permit, outcome, Instant::now()),
                    None => breaker.abandon(permit, Instant::now()),
                }
            }
        }
    }

    /// Decides whether a failed attempt is retried, within the function's retry budget.
    pub fn decide_retry(
        &self,
        version: &FunctionVersion,
        attempts_made: u32,
        kind: FailureKind,
        deadline_left: Duration,
    ) -> RetryDecision {
        let Some(policy) = retry_policy(version) else {
            return RetryDecision::GiveUp(policies::retry::GiveUpReason::NotRetryable);
        };
        let mut budgets = self.budgets.lock().expect("budgets lock");
        let budget = budgets.entry(function_key(version)).or_default();
        policy.decide(
            attempts_made,
            kind,
            deadline_left,
            budget,
            Instant::now(),
            rand::random::<f64>(),
        )
    }

    /// A permit to send to `node`, unless its breaker has ejected it.
    pub fn acquire_node(&self, node: SocketAddr) -> Option<Permit> {
        let mut nodes = self.nodes.lock().expect("nodes lock");
        nodes
            .entry(node)
            .or_insert_with(node_breaker)
            .try_acquire(Instant::now())
            .ok()
    }

    /// Reports whether `node` could be reached.
    pub fn record_node(&self, node: SocketAddr, permit: Permit, outcome: Outcome) {
        if let Some(breaker) = self.nodes.lock().expect("nodes lock").get_mut(&node) {
            breaker.record(permit, outcome, Instant::now());
        }
    }

    /// Breaker states for metrics, as (tenant, function, version, state):
    /// 0 closed, 1 open, 2 half-open.
    pub fn breaker_states(&self) -> Vec<(String, String, u32, i64)> {
        let now = Instant::now();
        let mut breakers = self.breakers.lock().expect("breakers lock");
        breakers
            .iter_mut()
            .map(|((tenant, name, version), b)| {
                let state = match b.state(now) {
                    BreakerState::Closed => 0,
                    BreakerState::Open => 1,
                    BreakerState::HalfOpen => 2,
                };
                (tenant.clone(), name.clone(), *version, state)
            })
            .collect()
    }

    /// Counts a call of a version for rollouts: its calls, errors and latency
    /// bucket are added to the store with the quota counters' next flush
    /// (keys from `policies::rollout::call_deltas`), so a rollout driver in
    /// any process reads what every router served.
    pub fn record_call(&self, version: &FunctionVersion, failed: bool, seconds: f64) {
        let keys = policies::rollout::call_deltas(
            &version.tenant,
            &version.name,
            version.version,
            failed,
            seconds * 1000.0,
        );
        let mut counters = self.counters.lock().expect("counters lock");
        for key in keys {
            let counter = counters.entry(key).or_default();
            counter.count += 1;
            counter.unflushed += 1;
        }
    }

    /// Writes counted quota calls to the store. A crash loses at most the calls
    /// counted since the last flush (one flush interval).
    pub async fn flush_counters(&self) {
        let deltas: Vec<(String, u64)> = {
            let mut counters = self.counters.lock().expect("counters lock");
            counters
                .iter_mut()
                .filter(|(_, c)| c.unflushed > 0)
                .map(|(k, c)| (k.clone(), std::mem::take(&mut c.unflushed)))
                .collect()
        };
        if deltas.is_empty() {
            return;
        }
        if let Err(e) = self.durable.add_counters(deltas.clone()).await {
            tracing::error!(error = %e, "flushing quota counters failed; will retry");
            let mut counters = self.counters.lock().expect("counters lock");
            for (key, delta) in deltas {
                counters.entry(key).or_default().unflushed += delta;
            }
        }
    }

    /// Drops idle rate-limit keys, limiters with no keys, and counters of past windows.
    pub fn retire_idle(&self) {
        let mut limiters = self.limiters.lock().expect("limiters lock");
        for limiter in limiters.values() {
            limiter.retire_idle();
        }
        limiters.retain(|_, l| !l.is_empty());
        drop(limiters);
        let now = unix_now();
        let current = [
            quota::window_label(QuotaWindow::Day, now),
            quota::window_label(QuotaWindow::Month, now),
        ];
        self.counters
            .lock()
            .expect("counters lock")
            .retain(|key, c| c.unflushed > 0 || current.iter().any(|w| key.ends_with(w.as_str())));
    }
}
