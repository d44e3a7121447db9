//! Retries: *what* may be retried, kept apart from *how* to retry.
//!
//! - [`is_retryable`] answers "what": only failures where the function surely
//!   did not run (or refused the call before running it) are retried, so a
//!   retry can never run a function twice.
//! - [`Backoff`] answers "how long to wait": capped exponential backoff with
//!   full jitter (the delay is uniform in `[0, ceiling)`), so retries from many
//!   callers spread out instead of arriving in waves.
//! - [`RetryBudget`] answers "how many": retries are capped at a share of the
//!   recent requests (Finagle and Linkerd's retry budget), so when everything
//!   fails retries add a bounded amount of load instead of multiplying it.
//! - [`RetryRules::decide`] combines them into one [`RetryDecision`].

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::window::SecondWindow;

/// Why an attempt failed, as far as the retry logic cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The node refused the connection: nothing was sent.
    ConnectRefused,
    /// The connection was reset before any response byte (an h2 `REFUSED_STREAM`
    /// or a reset before the request reached the node): nothing ran.
    ResetBeforeResponse,
    /// The chosen node left the cluster before the call was sent.
    NodeGone,
    /// The node refused the call because it is at capacity, before running it.
    Overloaded,
    /// The call timed out: the function may have run, so it is not retried.
    Timeout,
    /// The function ran and failed: running it again would fail the same way.
    FunctionFailed,
    /// The request itself is wrong: retrying cannot fix it.
    ClientError,
}

/// Whether a failure of `kind` may be retried: only when the function did not run.
pub fn is_retryable(kind: FailureKind) -> bool {
    match kind {
        FailureKind::ConnectRefused
        | FailureKind::ResetBeforeResponse
        | FailureKind::NodeGone
        | FailureKind::Overloaded => true,
        FailureKind::Timeout | FailureKind::FunctionFailed | FailureKind::ClientError => false,
    }
}

/// A rejected retry parameter.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum RetryConfigError {
    #[error("backoff multiplier must be a finite number >= 1, got {0}")]
    Multiplier(f64),
    #[error("initial backoff {initial:?} must not exceed the maximum backoff {max:?}")]
    InitialAboveMax { initial: Duration, max: Duration },
    #[error("maximum backoff must be positive, got {0:?}")]
    ZeroMax(Duration),
}

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
}

impl Backoff {
    /// Checks `multiplier >= 1` (finite), `initial <= max` and `max > 0`.
    pub fn try_new(
        initial: Duration,
        max: Duration,
        multiplier: f64,
    ) -> Result<Self, RetryConfigError> {
        // Written so that NaN fails too.
        if !(multiplier >= 1.0 && multiplier.is_finite()) {
            return Err(RetryConfigError::Multiplier(multiplier));
        }
        if max.is_zero() {
            return Err(RetryConfigError::ZeroMax(max));
        }
        if initial > max {
            return Err(RetryConfigError::InitialAboveMax { initial, max });
        }
        Ok(Backoff {
            initial,
            max,
            multiplier,
        })
    }

    /// The largest delay before retry number `retry` (0 for the first retry):
    /// `min(max, initial * multiplier^retry)`. Saturates at `max` for any
    /// `retry`, however large.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        let nanos = self.initial.as_nanos() as f64 * self.multiplier.powi(exponent);
        if !nanos.is_finite() || nanos >= self.max.as_nanos() as f64 {
            return self.max;
        }
        // Below `max`, so it fits a `Duration`; exact for integral multipliers.
        let exact = if nanos < u64::MAX as f64 {
            Duration::from_nanos(nanos.round() as u64)
        } else {
            Duration::from_secs_f64(nanos / 1e9)
        };
        exact.min(self.max)
    }

    /// The jittered delay before retry number `retry`: `ceiling(retry) * unit_random`,
    /// with `unit_random` (a uniform random number) clamped into `[0, 1)`; NaN counts as 0.
    pub fn delay(&self, retry: u32, unit_random: f64) -> Duration {
        const BELOW_ONE: f64 = 1.0 - f64::EPSILON / 2.0;
        let u = if unit_random.is_nan() {
            0.0
        } else {
            unit_random.clamp(0.0, BELOW_ONE)
        };
        self.ceiling(retry).mul_f64(u)
    }
}

/// A Finagle/Linkerd-style retry budget over a sliding window.
///
/// A retry is allowed while `retries < floor + ratio * requests`, both counted
/// over the last `window` (1-second buckets, so memory is bounded by the window
/// length in seconds). The floor keeps a trickle of retries possible for
/// low-traffic functions; the ratio caps the extra load retries add when
/// everything fails. Only first attempts are recorded as requests.
///
/// [`RetryBudget::default_budget`]: ratio 0.18 ("about 20 %": with max 3
/// attempts and total failure, attempts stay under 1.2 × requests), floor 10
/// retries per 10 s window.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    floor: u32,
    counts: SecondWindow<2>,
}

/// Indices of the budget's counters.
const REQUESTS: usize = 0;
const RETRIES: usize = 1;

/// Default retry ratio: about 20 % extra load at most.
pub const DEFAULT_RETRY_RATIO: f64 = 0.18;
/// Default retries always allowed per window, whatever the traffic.
pub const DEFAULT_MIN_RETRIES_PER_WINDOW: u32 = 10;
/// Default budget window.
pub const DEFAULT_BUDGET_WINDOW: Duration = Duration::from_secs(10);

impl RetryBudget {
    /// A budget of `ratio` retries per request plus `min_retries_per_window`,
    /// over `window`. A negative or NaN `ratio` counts as 0 and `window` is
    /// rounded up to whole seconds (at least 1 s).
    pub fn new(ratio: f64, min_retries_per_window: u32, window: Duration) -> Self {
        let ratio = if ratio.is_nan() { 0.0 } else { ratio.max(0.0) };
        RetryBudget {
            ratio,
            floor: min_retries_per_window,
            counts: SecondWindow::new(window),
        }
    }

    /// Ratio 0.18, floor 10 retries per 10 s window.
    pub fn default_budget() -> Self {
        RetryBudget::new(
            DEFAULT_RETRY_RATIO,
            DEFAULT_MIN_RETRIES_PER_WINDOW,
            DEFAULT_BUDGET_WINDOW,
        )
    }

    /// Counts one request (a first attempt) at `now`.
    pub fn record_request(&mut self, now: Instant) {
        self.counts.add(now, REQUESTS);
    }

    /// Whether a retry is allowed at `now`; counts it when it is.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let allowed = self.allows(now);
        if allowed {
            self.counts.add(now, RETRIES);
        }
        allowed
    }

    /// Whether a retry would be allowed at `now`, without counting it.
    fn allows(&mut self, now: Instant) -> bool {
        let [requests, retries] = self.counts.totals(now);
        (retries as f64) < f64::from(self.floor) + self.ratio * requests as f64
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::default_budget()
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryDecision {
    /// Retry after this delay.
    RetryAfter(Duration),
    /// Answer the failure to the client.
    GiveUp(GiveUpReason),
}

/// Why no retry is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    NotRetryable,
    AttemptsExhausted,
    DeadlineTooClose,
    BudgetExhausted,
}

/// How many times and how patiently a call is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryRules {
    /// Attempts in all, the first included (1 disables retries).
    pub max_attempts: u32,
    pub backoff: Backoff,
}

impl RetryRules {
    /// Decides whether to retry after attempt number `attempts_made` failed
    /// with `kind`.
    ///
    /// `attempts_made >= 1` (attempts already made, including the first; 0
    /// counts as 1). Checks in order: retryable, `attempts_made < max_attempts`,
    /// budget, then `delay < deadline_left` (a retry that could not even start
    /// before the deadline is pointless). The budget is withdrawn from only
    /// when every check passes, so a refused retry costs nothing.
    /// `unit_random` is a uniform random number in `[0, 1)` for the jitter.
    pub fn decide(
        &self,
        attempts_made: u32,
        kind: FailureKind,
        deadline_left: Duration,
        budget: &mut RetryBudget,
        now: Instant,
        unit_random: f64,
    ) -> RetryDecision {
        if !is_retryable(kind) {
            return RetryDecision::GiveUp(GiveUpReason::NotRetryable);
        }
        let attempts_made = attempts_made.max(1);
        if attempts_made >= self.max_attempts {
            return RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted);
        }
        if !budget.allows(now) {
            return RetryDecision::GiveUp(GiveUpReason::BudgetExhausted);
        }
        let delay = self.backoff.delay(attempts_made - 1, unit_random);
        if delay >= deadline_left {
            return RetryDecision::GiveUp(GiveUpReason::DeadlineTooClose);
        }
        if !budget.try_withdraw(now) {
            return RetryDecision::GiveUp(GiveUpReason::BudgetExhausted);
        }
        RetryDecision::RetryAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SplitMix64;

    const MS: Duration = Duration::from_millis(1);

    fn backoff() -> Backoff {
        Backoff::try_new(100 * MS, Duration::from_secs(5), 2.0).unwrap()
    }

    fn policy() -> RetryRules {
        RetryRules {
            max_attempts: 3,
            backoff: backoff(),
        }
    }

    #[test]
    fn backoff_config_is_checked() {
        let err = Backoff::try_new(MS, MS, 0.5).unwrap_err();
        assert_eq!(
            err.to_string(),
            "backoff multiplier must be a finite number >= 1, got 0.5"
        );
        assert!(matches!(
            Backoff::try_new(MS, MS, f64::NAN),
            Err(RetryConfigError::Multiplier(_))
        ));
        assert!(Backoff::try_new(MS, MS, f64::INFINITY).is_err());
        let err = Backoff::try_new(2 * MS, MS, 2.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "initial backoff 2ms must not exceed the maximum backoff 1ms"
        );
        let err = Backoff::try_new(Duration::ZERO, Duration::ZERO, 2.0).unwrap_err();
        assert_eq!(err.to_string(), "maximum backoff must be positive, got 0ns");
        assert!(Backoff::try_new(Duration::ZERO, MS, 1.0).is_ok());
    }

    #[test]
    fn ceiling_doubles_until_the_cap() {
        let b = backoff();
        let expected = [100, 200, 400, 800, 1600, 3200, 5000, 5000];
        for (retry, ms) in expected.into_iter().enumerate() {
            assert_eq!(b.ceiling(retry as u32), ms * MS, "retry {retry}");
        }
        for retry in [64, 1_000, 1 << 31, u32::MAX] {
            assert_eq!(b.ceiling(retry), Duration::from_secs(5));
        }
        let huge = Backoff::try_new(Duration::from_secs(1), Duration::MAX, 10.0).unwrap();
        assert_eq!(huge.ceiling(u32::MAX), Duration::MAX);
        assert_eq!(huge.ceiling(3), Duration::from_secs(1_000));
        let flat = Backoff::try_new(50 * MS, Duration::from_secs(1), 1.0).unwrap();
        assert_eq!(flat.ceiling(u32::MAX), 50 * MS);
    }

    #[test]
    fn delays_are_full_jitter_within_the_ceiling() {
        let b = backoff();
        let mut rng = SplitMix64::new(7);
        for retry in 0..200u32 {
            let cap = b.ceiling(retry);
            assert!(b.ceiling(retry + 1) >= cap);
            assert!(cap <= Duration::from_secs(5));
            assert_eq!(b.delay(retry, 0.0), Duration::ZERO);
            let near_top = b.delay(retry, 0.999_999);
            assert!(
                near_top <= cap && cap - near_top <= cap / 100_000 + MS,
                "{retry}"
            );
            for _ in 0..200 {
                let d = b.delay(retry, rng.unit());
                assert!(d <= cap, "retry {retry}: {d:?} > {cap:?}");
            }
        }
        // Out-of-range randoms are clamped.
        assert_eq!(b.delay(0, -3.0), Duration::ZERO);
        assert_eq!(b.delay(0, f64::NAN), Duration::ZERO);
        assert!(b.delay(0, 7.0) <= 100 * MS);
        assert!(b.delay(0, 1.0) >= 99 * MS);
        // Jitter spreads: the mean of many delays is about half the ceiling.
        let n = 10_000;
        let total: Duration = (0..n).map(|_| b.delay(2, rng.unit())).sum();
        let mean = total / n;
        assert!(mean > 180 * MS && mean < 220 * MS, "{mean:?}");
    }

    #[test]
    fn only_failures_before_the_function_ran_are_retryable() {
        let table = [
            (FailureKind::ConnectRefused, true),
            (FailureKind::ResetBeforeResponse, true),
            (FailureKind::NodeGone, true),
            (FailureKind::Overloaded, true),
            (FailureKind::Timeout, false),
            (FailureKind::FunctionFailed, false),
            (FailureKind::ClientError, false),
        ];
        for (kind, retryable) in table {
            assert_eq!(is_retryable(kind), retryable, "{kind:?}");
        }
    }

    #[test]
    fn decide_checks_in_order_and_withdraws_only_on_retry() {
        let p = policy();
        let t0 = Instant::now();
        let long = Duration::from_secs(30);
        let mut budget = RetryBudget::new(0.0, 1, Duration::from_secs(10));
        // Not retryable wins over everything.
        assert_eq!(
            p.decide(
                5,
                FailureKind::Timeout,
                Duration::ZERO,
                &mut budget,
                t0,
                0.5
            ),
            RetryDecision::GiveUp(GiveUpReason::NotRetryable)
        );
        // Then attempts.
        assert_eq!(
            p.decide(
                3,
                FailureKind::NodeGone,
                Duration::ZERO,
                &mut budget,
                t0,
                0.5
            ),
            RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted)
        );
        // Then the deadline; the budget's single retry is not spent.
        assert_eq!(
            p.decide(1, FailureKind::Overloaded, 10 * MS, &mut budget, t0, 0.5),
            RetryDecision::GiveUp(GiveUpReason::DeadlineTooClose)
        );
        assert_eq!(
            p.decide(
                1,
                FailureKind::Overloaded,
                Duration::ZERO,
                &mut budget,
                t0,
                0.0
            ),
            RetryDecision::GiveUp(GiveUpReason::DeadlineTooClose)
        );
        // Now it is spent ...
        assert_eq!(
            p.decide(1, FailureKind::ConnectRefused, long, &mut budget, t0, 0.5),
            RetryDecision::RetryAfter(50 * MS)
        );
        // ... so the budget refuses, and it is checked before the deadline.
        assert_eq!(
            p.decide(2, FailureKind::ConnectRefused, long, &mut budget, t0, 0.5),
            RetryDecision::GiveUp(GiveUpReason::BudgetExhausted)
        );
        assert_eq!(
            p.decide(2, FailureKind::ConnectRefused, MS, &mut budget, t0, 0.5),
            RetryDecision::GiveUp(GiveUpReason::BudgetExhausted)
        );
        // The second retry uses the second ceiling; attempts_made 0 counts as 1.
        let mut budget = RetryBudget::default_budget();
        assert_eq!(
            p.decide(
                2,
                FailureKind::ResetBeforeResponse,
                long,
                &mut budget,
                t0,
                0.5
            ),
            RetryDecision::RetryAfter(100 * MS)
        );
        assert_eq!(
            p.decide(
                0,
                FailureKind::ResetBeforeResponse,
                long,
                &mut budget,
                t0,
                0.5
            ),
            RetryDecision::RetryAfter(50 * MS)
        );
        let once = RetryRules {
            max_attempts: 1,
            backoff: backoff(),
        };
        assert_eq!(
            once.decide(1, FailureKind::NodeGone, long, &mut budget, t0, 0.5),
            RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted)
        );
    }

    #[test]
    fn budget_allows_the_floor_plus_a_ratio_of_requests() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.2, 2, Duration::from_secs(10));
        assert!(budget.try_withdraw(t0));
        assert!(budget.try_withdraw(t0));
        assert!(!budget.try_withdraw(t0));
        for _ in 0..10 {
            budget.record_request(t0);
        }
        // 2 + 0.2 * 10 = 4 retries in the window.
        assert!(budget.try_withdraw(t0));
        assert!(budget.try_withdraw(t0));
        assert!(!budget.try_withdraw(t0));
        // The window slides: 10 s later everything has expired but the floor.
        let t1 = t0 + Duration::from_secs(10);
        assert!(budget.try_withdraw(t1));
        assert!(budget.try_withdraw(t1));
        assert!(!budget.try_withdraw(t1));
        // A nonsensical ratio counts as 0.
        let mut odd = RetryBudget::new(f64::NAN, 0, Duration::ZERO);
        odd.record_request(t0);
        assert!(!odd.try_withdraw(t0));
    }

    /// Everything fails: 100 requests/s for 60 s, 3 attempts each at most, with
    /// the default budget. Retries add less than 20 % load.
    #[test]
    fn simulation_total_failure_keeps_load_under_the_budget() {
        let p = policy();
        let mut budget = RetryBudget::default_budget();
        let mut rng = SplitMix64::new(42);
        let t0 = Instant::now();
        let requests = 100 * 60;
        let mut attempts = 0u64;
        for i in 0..requests {
            let now = t0 + Duration::from_millis(10 * i);
            budget.record_request(now);
            let mut made = 0;
            loop {
                attempts += 1;
                made += 1;
                match p.decide(
                    made,
                    FailureKind::Overloaded,
                    Duration::from_secs(30),
                    &mut budget,
                    now,
                    rng.unit(),
                ) {
                    RetryDecision::RetryAfter(_) => continue,
                    RetryDecision::GiveUp(reason) => {
                        assert!(matches!(
                            reason,
                            GiveUpReason::AttemptsExhausted | GiveUpReason::BudgetExhausted
                        ));
                        break;
                    }
                }
            }
        }
        let ratio = attempts as f64 / requests as f64;
        assert!(ratio < 1.2, "attempts/requests = {ratio}");
        assert!(ratio > 1.0, "attempts/requests = {ratio}");
        assert!(ratio > 1.15, "the budget should be used: {ratio}");
    }

    #[test]
    fn a_close_deadline_gives_up() {
        let p = policy();
        let mut budget = RetryBudget::default_budget();
        let t0 = Instant::now();
        let mut rng = SplitMix64::new(3);
        for _ in 0..1_000 {
            let u = rng.unit();
            let delay = p.backoff.delay(0, u);
            assert_eq!(
                p.decide(1, FailureKind::NodeGone, delay, &mut budget, t0, u),
                RetryDecision::GiveUp(GiveUpReason::DeadlineTooClose)
            );
        }
        // None of those refusals spent the budget: its 10 floor retries remain.
        for _ in 0..10 {
            assert!(budget.try_withdraw(t0));
        }
        assert!(!budget.try_withdraw(t0));
    }
}
