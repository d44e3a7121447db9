//! Rate limits and quotas shared by every router, as atomic Redis scripts.
//!
//! Routers take tokens and quota units in small leases (see
//! `router/src/leases.rs`); these scripts grant them atomically.
//!
//! Rate limits are GCRA (the same algorithm as the routers' local limiters):
//! one key per (tenant, function, client, plan) holds the theoretical arrival
//! time in microseconds of Redis's own clock (`TIME`), so routers on different
//! hosts need no synchronised clocks. Quotas are the registry's counters
//! (`add_counters`/`get_counter` read the same keys), checked and incremented
//! in one script so concurrent routers never admit past the limit.

use std::time::Duration;

use contract::ports::{QuotaGrant, SharedLimits, TokenGrant};
use policies::ratelimit::RateLimitConfig;

use super::connection::RedisStore;
use crate::store::StoreError;

/// GCRA, several tokens at once. KEYS[1]: the bucket; KEYS[2]: the routers'
/// liveness set. ARGV: emission interval (µs), burst, tokens wanted, router id.
/// Grants as many tokens as the bucket holds now, up to the number wanted.
/// Returns {granted, remaining, µs until full (granted) or until one token
/// may be taken, routers seen in the last 10 s}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 10000000)
redis.call('PEXPIRE', KEYS[2], 60000)
local routers = redis.call('ZCARD', KEYS[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local room = math.floor((now - (tat - burst * interval)) / interval)
if room < 1 then
  return {0, 0, tat - burst * interval + interval - now, routers}
end
local granted = math.min(room, want)
local new_tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {granted, room - granted, new_tat - now, routers}
"#;

/// Quota reservation. KEYS: counters; ARGV: the limits, then the TTLs (s),
/// then the calls wanted. Returns {granted, 0} with granted ≥ 1 counted in
/// every window, or {0, i} when window i (1-based) is used up.
const QUOTA: &str = r#"
local n = #KEYS
local want = tonumber(ARGV[2 * n + 1])
local granted = want
for i = 1, n do
  local room = tonumber(ARGV[i]) - tonumber(redis.call('GET', KEYS[i]) or '0')
  if room < 1 then return {0, i} end
  if room < granted then granted = room end
end
for i = 1, n do
  redis.call('INCRBY', KEYS[i], granted)
  redis.call('EXPIRE', KEYS[i], ARGV[n + i])
end
return {granted, 0}
"#;

/// Gives back reserved calls. KEYS: counters; ARGV[1]: how many. Never below 0.
const RELEASE: &str = r#"
for i = 1, #KEYS do
  local left = tonumber(redis.call('GET', KEYS[i]) or '0') - tonumber(ARGV[1])
  if left > 0 then
    redis.call('SET', KEYS[i], left, 'KEEPTTL')
  else
    redis.call('DEL', KEYS[i])
  end
end
return 0
"#;

/// This process's id in the routers' liveness set.
fn router_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{}-{:016x}", std::process::id(), rand::random::<u64>()))
}

impl RedisStore {
    /// Takes up to `want` tokens of the GCRA bucket `key` at `per_second`
    /// with `burst`.
    pub async fn gcra(
        &self,
        key: &str,
        per_second: f64,
        burst: u32,
        want: u32,
    ) -> Result<TokenGrant, StoreError> {
        let prefix = &self.options().prefix;
        let key = format!("{prefix}rl:{key}");
        let routers = format!("{prefix}rl-routers");
        let interval = (1e6 / per_second).max(1.0).round() as u64;
        let script = redis::Script::new(GCRA);
        let (granted, remaining, wait, routers): (i64, i64, i64, i64) = self
            .run(false, |mut conn| {
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(&key)
                    .key(&routers)
                    .arg(interval)
                    .arg(burst.max(1))
                    .arg(want.clamp(1, burst.max(1)))
                    .arg(router_id());
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let clamp = |v: i64| v.clamp(0, i64::from(u32::MAX)) as u32;
        Ok(TokenGrant {
            granted: clamp(granted),
            remaining: clamp(remaining),
            wait: Duration::from_micros(wait.max(0) as u64),
            routers: clamp(routers).max(1),
        })
    }

    /// Counts up to `want` calls in every `(counter key, limit, ttl_s)` window,
    /// as many as each still has room for.
    pub async fn reserve_quota(
        &self,
        windows: &[(String, u64, u64)],
        want: u64,
    ) -> Result<QuotaGrant, StoreError> {
        if windows.is_empty() {
            return Ok(QuotaGrant::Granted(want.max(1)));
        }
        let keys: Vec<String> = windows
            .iter()
            .map(|(k, _, _)| self.counter_key_of(k))
            .collect();
        let script = redis::Script::new(QUOTA);
        let (granted, used_up): (i64, i64) = self
            .run(false, |mut conn| {
                let mut invocation = script.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                for (_, limit, _) in windows {
                    invocation.arg(*limit);
                }
                for (_, _, ttl) in windows {
                    invocation.arg(*ttl);
                }
                invocation.arg(want.max(1));
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(if granted > 0 {
            QuotaGrant::Granted(granted as u64)
        } else {
            QuotaGrant::Exhausted((used_up.max(1) - 1) as usize)
        })
    }

    /// Gives back `unused` reserved calls to each counter of `keys`.
    pub async fn release_quota(&self, keys: &[String], unused: u64) -> Result<(), StoreError> {
        if keys.is_empty() || unused == 0 {
            return Ok(());
        }
        let keys: Vec<String> = keys.iter().map(|k| self.counter_key_of(k)).collect();
        let script = redis::Script::new(RELEASE);
        let _: i64 = self
            .run(false, |mut conn| {
                let mut invocation = script.prepare_invoke();
                for key in &keys {
                    invocation.key(key);
                }
                invocation.arg(unused);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(())
    }
}

/// The cluster backend of the routers' shared limits.
#[async_trait::async_trait]
impl SharedLimits for RedisStore {
    async fn take_tokens(
        &self,
        key: &str,
        config: &RateLimitConfig,
        want: u32,
    ) -> Result<TokenGrant, String> {
        self.gcra(key, config.per_second, config.burst, want)
            .await
            .map_err(|e| e.to_string())
    }

    async fn reserve_quota(
        &self,
        windows: &[(String, u64, u64)],
        want: u64,
    ) -> Result<QuotaGrant, String> {
        RedisStore::reserve_quota(self, windows, want)
            .await
            .map_err(|e| e.to_string())
    }

    async fn release_quota(&self, keys: &[String], unused: u64) -> Result<(), String> {
        RedisStore::release_quota(self, keys, unused)
            .await
            .map_err(|e| e.to_string())
    }
}
