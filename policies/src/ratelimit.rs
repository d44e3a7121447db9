//! Per client × function rate limiting: GCRA through `governor`, plus the
//! IETF `RateLimit` headers that describe a decision.
//!
//! A [`RateLimitConfig`] of `per_second` and `burst` is a token bucket that
//! holds `burst` calls and refills one call every `1 / per_second` seconds
//! (GCRA computes exactly that without a timer). Each key (e.g. a
//! `(client, function)` pair) has its own bucket in one [`KeyedLimiter`].
//! Keys whose bucket has refilled are indistinguishable from new ones, so
//! [`KeyedLimiter::retire_idle`] drops them to bound memory; call it
//! periodically.
//!
//! Limits: `per_second` in `(0, 1e6]`, and a full burst must refill within
//! [`MAX_REFILL`] (one day). Slower allowances are quotas (`quota.rs`), not
//! rate limits; the bound also keeps GCRA's nanosecond arithmetic far from
//! overflow.

use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use thiserror::Error;

use crate::window::ceil_secs;

/// Highest accepted rate, in calls per second.
pub const MAX_PER_SECOND: f64 = 1e6;

/// Longest time a full burst may take to refill (`burst / per_second`).
pub const MAX_REFILL: Duration = Duration::from_secs(86_400);

/// A checked rate limit: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    pub per_second: f64,
    pub burst: u32,
}

/// A rejected rate limit parameter.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum RateLimitConfigError {
    #[error("rate must be a finite number in (0, 1000000] per second, got {0}")]
    Rate(f64),
    #[error("burst must be at least 1, got {0}")]
    ZeroBurst(u32),
    #[error("a burst of {burst} at {per_second}/s takes longer than a day to refill")]
    RefillTooSlow { per_second: f64, burst: u32 },
}

impl RateLimitConfig {
    /// Checks the parameters. `burst` defaults to `max(1, ceil(per_second))`:
    /// one second's worth of calls.
    pub fn try_new(per_second: f64, burst: Option<u32>) -> Result<Self, RateLimitConfigError> {
        // Written so that NaN fails too.
        if !(per_second > 0.0 && per_second <= MAX_PER_SECOND) {
            return Err(RateLimitConfigError::Rate(per_second));
        }
        // per_second <= 1e6, so the ceiling fits a u32.
        let burst = burst.unwrap_or_else(|| (per_second.ceil() as u32).max(1));
        if burst == 0 {
            return Err(RateLimitConfigError::ZeroBurst(burst));
        }
        if f64::from(burst) / per_second > MAX_REFILL.as_secs_f64() {
            return Err(RateLimitConfigError::RefillTooSlow { per_second, burst });
        }
        Ok(RateLimitConfig { per_second, burst })
    }

    /// The time one call takes to refill, rounded to the nanosecond (at least 1 ns).
    pub fn period(&self) -> Duration {
        let per_second = if self.per_second > 0.0 {
            self.per_second.min(MAX_PER_SECOND)
        } else {
            // A hand-built config with a nonsensical rate: the slowest allowed.
            1.0 / MAX_REFILL.as_secs_f64()
        };
        let nanos = (1e9 / per_second)
            .round()
            .clamp(1.0, MAX_REFILL.as_nanos() as f64);
        Duration::from_nanos(nanos as u64)
    }

    /// The time an empty bucket takes to refill completely (`burst × period`).
    pub fn refill(&self) -> Duration {
        self.period().saturating_mul(self.burst.max(1))
    }

    /// The governor quota. A hand-built config outside the checked range is
    /// clamped into it rather than trusted.
    fn quota(&self) -> Quota {
        let period = self.period();
        let max_burst = (MAX_REFILL.as_nanos() / period.as_nanos().max(1)).max(1);
        let burst = u32::try_from(max_burst)
            .unwrap_or(u32::MAX)
            .min(self.burst)
            .max(1);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        // `period` is at least 1 ns, so `with_period` cannot refuse it.
        Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

/// The answer for one call.
#[derive(Debug, Clone, PartialEq)]
pub enum RateDecision {
    /// The call may run. `remaining` calls could follow at once, and the
    /// bucket is full again after `reset_after` (rounded up to a whole period).
    Allowed {
        limit: u32,
        remaining: u32,
        reset_after: Duration,
    },
    /// The call is refused; one call will be allowed after `retry_after`.
    Limited { limit: u32, retry_after: Duration },
}

type Inner<K, C> = RateLimiter<K, DefaultKeyedStateStore<K>, C, StateInformationMiddleware>;

/// One GCRA bucket per key, all with the same [`RateLimitConfig`].
pub struct KeyedLimiter<K, C = DefaultClock>
where
    K: Hash + Eq + Clone,
    C: Clock,
{
    limiter: Inner<K, C>,
    quota: Quota,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter on the default (monotonic) clock.
    pub fn new(config: &RateLimitConfig) -> Self {
        KeyedLimiter::with_clock(config, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock> KeyedLimiter<K, C> {
    /// A limiter on `clock` (tests pass a `governor::clock::FakeRelativeClock`).
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        let quota = config.quota();
        let limiter: Inner<K, C> =
            RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock);
        KeyedLimiter { limiter, quota }
    }

    /// Takes one call from `key`'s bucket, if there is one.
    pub fn check(&self, key: &K) -> RateDecision {
        self.check_n(key, 1)
    }

    /// Takes `n` tokens (a call of cost `n`, at least 1) from `key`'s bucket,
    /// all or none. More than the burst is never granted: such a call is
    /// limited for good, so callers clamp `n` to the burst.
    pub fn check_n(&self, key: &K, n: u32) -> RateDecision {
        let limit = self.quota.burst_size().get();
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let Ok(checked) = self.limiter.check_key_n(key, n) else {
            return RateDecision::Limited {
                limit,
                retry_after: MAX_REFILL,
            };
        };
        match checked {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(limit);
                RateDecision::Allowed {
                    limit,
                    remaining,
                    reset_after: self
                        .quota
                        .replenish_interval()
                        .saturating_mul(limit - remaining),
                }
            }
            Err(not_until) => RateDecision::Limited {
                limit,
                retry_after: not_until.wait_time_from(self.limiter.clock().now()),
            },
        }
    }

    /// Drops the keys whose bucket is full again (they behave like new keys)
    /// and releases the memory they held.
    pub fn retire_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

impl<K: Hash + Eq + Clone, C: Clock> fmt::Debug for KeyedLimiter<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("quota", &self.quota)
            .field("keys", &self.limiter.len())
            .finish()
    }
}

/// The headers of draft-ietf-httpapi-ratelimit-headers for `decision`, as
/// lowercase `(name, value)` pairs (HTTP/2 requires lowercase names):
///
/// - `ratelimit-policy: "<name>";q=<burst>;w=<seconds for a full burst to refill, ceil, >= 1>`
/// - `ratelimit: "<name>";r=<remaining>;t=<seconds until full (allowed) or until the next call is allowed (limited), ceil>`
/// - `retry-after: <seconds, ceil, >= 1>`, only when limited.
///
/// `policy_name` is written as a structured-field string: `"` and `\` are
/// escaped and characters outside printable ASCII become `_`.
pub fn rate_limit_headers(
    policy_name: &str,
    decision: &RateDecision,
    config: &RateLimitConfig,
) -> Vec<(&'static str, String)> {
    let name = sf_string(policy_name);
    let window = ceil_secs(config.refill()).max(1);
    let policy = format!("{name};q={};w={window}", config.burst);
    match decision {
        RateDecision::Allowed {
            remaining,
            reset_after,
            ..
        } => vec![
            ("ratelimit-policy", policy),
            (
                "ratelimit",
                format!("{name};r={remaining};t={}", ceil_secs(*reset_after)),
            ),
        ],
        RateDecision::Limited { retry_after, .. } => {
            let after = ceil_secs(*retry_after).max(1);
            vec![
                ("ratelimit-policy", policy),
                ("ratelimit", format!("{name};r=0;t={after}")),
                ("retry-after", after.to_string()),
            ]
        }
    }
}

/// `s` as a structured-field string (RFC 8941 §3.3.3).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    const MS: Duration = Duration::from_millis(1);

    fn limiter(
        per_second: f64,
        burst: u32,
    ) -> (
        KeyedLimiter<&'static str, FakeRelativeClock>,
        FakeRelativeClock,
    ) {
        let clock = FakeRelativeClock::default();
        let config = RateLimitConfig::try_new(per_second, Some(burst)).unwrap();
        (KeyedLimiter::with_clock(&config, clock.clone()), clock)
    }

    fn admitted(d: &RateDecision) -> bool {
        matches!(d, RateDecision::Allowed { .. })
    }

    #[test]
    fn config_is_checked_and_burst_defaults_to_one_second() {
        assert_eq!(RateLimitConfig::try_new(100.0, None).unwrap().burst, 100);
        assert_eq!(RateLimitConfig::try_new(2.5, None).unwrap().burst, 3);
        assert_eq!(RateLimitConfig::try_new(0.1, None).unwrap().burst, 1);
        assert_eq!(
            RateLimitConfig::try_new(1e6, None).unwrap().burst,
            1_000_000
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e6 + 1.0] {
            assert!(matches!(
                RateLimitConfig::try_new(bad, None),
                Err(RateLimitConfigError::Rate(_))
            ));
        }
        let err = RateLimitConfig::try_new(0.0, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rate must be a finite number in (0, 1000000] per second, got 0"
        );
        let err = RateLimitConfig::try_new(5.0, Some(0)).unwrap_err();
        assert_eq!(err.to_string(), "burst must be at least 1, got 0");
        let err = RateLimitConfig::try_new(1e-6, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a burst of 1 at 0.000001/s takes longer than a day to refill"
        );
        assert!(RateLimitConfig::try_new(1.0 / 86_400.0, None).is_ok());
    }

    #[test]
    fn a_call_of_cost_n_takes_n_tokens_all_or_none() {
        let (l, clock) = limiter(10.0, 10);
        assert!(admitted(&l.check_n(&"a", 7)));
        // 3 left: a call of 4 is refused whole and takes nothing...
        let RateDecision::Limited { retry_after, .. } = l.check_n(&"a", 4) else {
            panic!("a call of 4 with 3 tokens left was admitted");
        };
        assert_eq!(retry_after, 100 * MS);
        // ...so the 3 are still there for calls of 1.
        for _ in 0..3 {
            assert!(admitted(&l.check(&"a")));
        }
        assert!(!admitted(&l.check(&"a")));
        clock.advance(400 * MS);
        assert!(admitted(&l.check_n(&"a", 4)));
        // More than the burst can never be granted.
        clock.advance(Duration::from_secs(5));
        assert!(!admitted(&l.check_n(&"b", 11)));
        assert!(admitted(&l.check_n(&"b", 10)));
    }

    #[test]
    fn hand_built_configs_are_clamped_not_trusted() {
        for (per_second, burst) in [(0.0, 0), (f64::NAN, 5), (-3.0, u32::MAX), (1e12, 1)] {
            let config = RateLimitConfig { per_second, burst };
            let limiter: KeyedLimiter<u8, _> =
                KeyedLimiter::with_clock(&config, FakeRelativeClock::default());
            assert!(admitted(&limiter.check(&1)));
        }
    }

    #[test]
    fn burst_then_one_per_period() {
        let (l, clock) = limiter(100.0, 20);
        for i in 0..20u32 {
            assert_eq!(
                l.check(&"a"),
                RateDecision::Allowed {
                    limit: 20,
                    remaining: 19 - i,
                    reset_after: 10 * MS * (i + 1),
                }
            );
        }
        assert_eq!(
            l.check(&"a"),
            RateDecision::Limited {
                limit: 20,
                retry_after: 10 * MS
            }
        );
        clock.advance(10 * MS);
        assert!(admitted(&l.check(&"a")));
        assert!(!admitted(&l.check(&"a")));

        // Continuous demand for 1 s in 1 ms steps: 100 more.
        let mut more = 0;
        for _ in 0..1_000 {
            clock.advance(MS);
            while admitted(&l.check(&"a")) {
                more += 1;
            }
        }
        assert!((99..=101).contains(&more), "{more}");
    }

    #[test]
    fn limited_retry_after_shrinks_with_time() {
        let (l, clock) = limiter(10.0, 1);
        assert!(admitted(&l.check(&"a")));
        clock.advance(30 * MS);
        assert_eq!(
            l.check(&"a"),
            RateDecision::Limited {
                limit: 1,
                retry_after: 70 * MS
            }
        );
    }

    #[test]
    fn keys_are_independent() {
        let (l, _clock) = limiter(1.0, 2);
        assert!(admitted(&l.check(&"alice/digits")));
        assert!(admitted(&l.check(&"alice/digits")));
        assert!(!admitted(&l.check(&"alice/digits")));
        assert!(admitted(&l.check(&"bob/digits")));
        assert!(admitted(&l.check(&"alice/other")));
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn retire_idle_drops_keys_that_refilled() {
        let (l, clock) = limiter(100.0, 5);
        assert!(l.is_empty());
        assert!(admitted(&l.check(&"idle")));
        assert!(admitted(&l.check(&"busy")));
        clock.advance(Duration::from_secs(1));
        assert!(admitted(&l.check(&"busy")));
        l.retire_idle();
        assert_eq!(l.len(), 1);
        // The busy key kept its state: its bucket is one call short.
        assert_eq!(
            l.check(&"busy"),
            RateDecision::Allowed {
                limit: 5,
                remaining: 3,
                reset_after: 20 * MS
            }
        );
        clock.advance(Duration::from_secs(1));
        l.retire_idle();
        assert!(l.is_empty());
    }

    #[test]
    fn headers_render_the_draft_fields() {
        let config = RateLimitConfig::try_new(100.0, Some(20)).unwrap();
        let allowed = RateDecision::Allowed {
            limit: 20,
            remaining: 7,
            reset_after: 130 * MS,
        };
        assert_eq!(
            rate_limit_headers("per-client", &allowed, &config),
            vec![
                ("ratelimit-policy", "\"per-client\";q=20;w=1".to_string()),
                ("ratelimit", "\"per-client\";r=7;t=1".to_string()),
            ]
        );
        let limited = RateDecision::Limited {
            limit: 20,
            retry_after: 10 * MS,
        };
        assert_eq!(
            rate_limit_headers("per-client", &limited, &config),
            vec![
                ("ratelimit-policy", "\"per-client\";q=20;w=1".to_string()),
                ("ratelimit", "\"per-client\";r=0;t=1".to_string()),
                ("retry-after", "1".to_string()),
            ]
        );
        // A slow limit: 1 call per 90 s, limited for 2.5 s more.
        let slow = RateLimitConfig::try_new(1.0 / 90.0, None).unwrap();
        let limited = RateDecision::Limited {
            limit: 1,
            retry_after: Duration::from_millis(2_500),
        };
        let headers = rate_limit_headers("a\"b\\c\u{e9}", &limited, &slow);
        assert_eq!(headers[0].1, "\"a\\\"b\\\\c_\";q=1;w=90");
        assert_eq!(headers[2], ("retry-after", "3".to_string()));
        // A zero wait still asks for at least one second.
        let now = RateDecision::Limited {
            limit: 1,
            retry_after: Duration::ZERO,
        };
        assert_eq!(rate_limit_headers("p", &now, &slow)[2].1, "1");
    }

    #[test]
    fn default_clock_limiter_works() {
        let config = RateLimitConfig::try_new(5.0, None).unwrap();
        let l: KeyedLimiter<(u32, u32)> = KeyedLimiter::new(&config);
        let admitted_now = (0..10).filter(|_| admitted(&l.check(&(1, 2)))).count();
        assert!((5..=6).contains(&admitted_now), "{admitted_now}");
    }
}
