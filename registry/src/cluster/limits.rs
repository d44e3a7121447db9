//! Rate limits and quotas shared by every router, as atomic Redis scripts.
//!
//! Rate limits are GCRA (the same algorithm as the routers' local limiters):
//! one key per (tenant, function, client, plan) holds the theoretical arrival
//! time in microseconds of Redis's own clock (`TIME`), so routers on different
//! hosts need no synchronised clocks. Quotas are the registry's counters
//! (`add_counters`/`get_counter` read the same keys), checked and incremented
//! in one script so concurrent routers never admit past the limit.

use std::time::Duration;

use contract::ports::SharedLimits;
use policies::ratelimit::{RateDecision, RateLimitConfig};

use super::connection::RedisStore;
use crate::store::StoreError;

/// GCRA step. KEYS[1]: the key; ARGV: emission interval (µs), burst.
/// Returns {allowed (1/0), remaining, µs until full (allowed) or until the next call may pass}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, 0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, math.floor((now - allow_at) / interval), new_tat - now}
"#;

/// Quota admission. KEYS: counters; ARGV: the limits, then the TTLs (s).
/// Returns 0 when counted in every window, else the 1-based window used up.
const QUOTA: &str = r#"
local n = #KEYS
for i = 1, n do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used >= tonumber(ARGV[i]) then return i end
end
for i = 1, n do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[n + i])
end
return 0
"#;

/// The answer of one shared GCRA step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraStep {
    pub allowed: bool,
    pub remaining: u32,
    /// Allowed: µs until the bucket is full again; refused: µs until a call may pass.
    pub wait_us: u64,
}

impl RedisStore {
    /// One GCRA step for `key` at `per_second` with `burst`.
    pub async fn gcra(
        &self,
        key: &str,
        per_second: f64,
        burst: u32,
    ) -> Result<GcraStep, StoreError> {
        let key = format!("{}rl:{key}", self.options().prefix);
        let interval = (1e6 / per_second).max(1.0).round() as u64;
        let script = redis::Script::new(GCRA);
        let (allowed, remaining, wait): (i64, i64, i64) = self
            .run(false, |mut conn| {
                let mut invocation = script.prepare_invoke();
                invocation.key(&key).arg(interval).arg(burst.max(1));
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(GcraStep {
            allowed: allowed == 1,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            wait_us: wait.max(0) as u64,
        })
    }

    /// Counts one call in every `(counter key, limit, ttl_s)` window unless one
    /// is used up; returns the index of that window.
    pub async fn admit_quota(
        &self,
        windows: &[(String, u64, u64)],
    ) -> Result<Option<usize>, StoreError> {
        if windows.is_empty() {
            return Ok(None);
        }
        let keys: Vec<String> = windows
            .iter()
            .map(|(k, _, _)| self.counter_key_of(k))
            .collect();
        let script = redis::Script::new(QUOTA);
        let used_up: i64 = self
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
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok((used_up > 0).then(|| used_up as usize - 1))
    }
}

/// The cluster backend of the routers' shared limits.
#[async_trait::async_trait]
impl SharedLimits for RedisStore {
    async fn rate(&self, key: &str, config: &RateLimitConfig) -> Result<RateDecision, String> {
        let step = self
            .gcra(key, config.per_second, config.burst)
            .await
            .map_err(|e| e.to_string())?;
        let wait = Duration::from_micros(step.wait_us);
        Ok(if step.allowed {
            RateDecision::Allowed {
                limit: config.burst,
                remaining: step.remaining,
                reset_after: wait,
            }
        } else {
            RateDecision::Limited {
                limit: config.burst,
                retry_after: wait,
            }
        })
    }

    async fn admit_quota(&self, windows: &[(String, u64, u64)]) -> Result<Option<usize>, String> {
        RedisStore::admit_quota(self, windows)
            .await
            .map_err(|e| e.to_string())
    }
}
