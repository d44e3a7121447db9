//! Cluster-wide limits over Redis (see `registry::redis_limits`).

use std::time::Duration;

use policies::ratelimit::{RateDecision, RateLimitConfig};
use registry::RedisStore;

use crate::guards::SharedLimits;

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
