//! A circuit breaker with resilience4j's failure-rate semantics, written as an
//! explicit state machine over a caller-supplied clock.
//!
//! # States
//!
//! - **Closed**: every call is permitted. Outcomes are counted in a time-based
//!   sliding window of `window`, aggregated in 1-second buckets. After each
//!   recorded outcome, if the window holds at least `minimum_calls` calls and
//!   `failures / calls >= failure_rate`, the breaker opens and the window is
//!   cleared.
//! - **Open**: every call is rejected with `retry_after` = the exact time left
//!   until `open_for` has elapsed (the router rounds it up for its header).
//!   Once `open_for` has elapsed, the next look at the breaker (any method
//!   taking `now`) moves it to half-open.
//! - **HalfOpen**: exactly `half_open_calls` trial permits are granted. Further
//!   acquires are rejected with [`HALF_OPEN_RETRY_AFTER`] (1 s): the trials are
//!   in flight and their end cannot be predicted, and 1 s is the smallest value
//!   a `retry-after` header can carry. When every trial outcome is recorded, a
//!   trial failure rate `>= failure_rate` opens the breaker again for a fresh
//!   `open_for`; otherwise it closes with an empty window.
//!
//! # Generations
//!
//! Every transition starts a new generation, and a [`Permit`] carries the
//! generation that granted it. An outcome recorded with a permit of an older
//! generation is ignored: a call started while closed that ends after the
//! breaker opened must not count as a half-open trial, nor in a fresh window.
//!
//! # The caller's obligation
//!
//! Every trial permit must be recorded, or the breaker stays half-open with no
//! trials left to grant. A call that is cancelled or abandoned should be
//! recorded as [`Outcome::Failure`].

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::window::SecondWindow;

/// `retry_after` of an acquire refused in half-open state because every trial
/// permit is already out.
pub const HALF_OPEN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Parameters of a [`CircuitBreaker`], checked once by [`BreakerConfig::try_new`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Failure rate in `(0, 1]` at or above which the breaker opens.
    pub failure_rate: f64,
    /// Calls the closed window must hold before the rate is considered.
    pub minimum_calls: u32,
    /// Length of the closed sliding window (1-second buckets, rounded up).
    pub window: Duration,
    /// How long the breaker stays open before it lets trials through.
    pub open_for: Duration,
    /// Trial calls granted in half-open state.
    pub half_open_calls: u32,
}

/// A rejected [`BreakerConfig`] parameter.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
pub enum BreakerConfigError {
    #[error("failure rate must be in (0, 1], got {0}")]
    FailureRate(f64),
    #[error("minimum calls must be at least 1, got {0}")]
    MinimumCalls(u32),
    #[error("window must be at least 1s, got {0:?}")]
    Window(Duration),
    #[error("half-open calls must be at least 1, got {0}")]
    HalfOpenCalls(u32),
}

impl BreakerConfig {
    /// Checks the parameters: `failure_rate` in `(0, 1]`, `minimum_calls >= 1`,
    /// `window >= 1s`, `half_open_calls >= 1`.
    pub fn try_new(
        failure_rate: f64,
        minimum_calls: u32,
        window: Duration,
        open_for: Duration,
        half_open_calls: u32,
    ) -> Result<Self, BreakerConfigError> {
        // Written so that NaN fails too.
        if !(failure_rate > 0.0 && failure_rate <= 1.0) {
            return Err(BreakerConfigError::FailureRate(failure_rate));
        }
        if minimum_calls < 1 {
            return Err(BreakerConfigError::MinimumCalls(minimum_calls));
        }
        if window < Duration::from_secs(1) {
            return Err(BreakerConfigError::Window(window));
        }
        if half_open_calls < 1 {
            return Err(BreakerConfigError::HalfOpenCalls(half_open_calls));
        }
        Ok(BreakerConfig {
            failure_rate,
            minimum_calls,
            window,
            open_for,
            half_open_calls,
        })
    }
}

/// The externally visible state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Leave to make one call; hand it back to [`CircuitBreaker::record`].
#[derive(Debug, Clone, Copy)]
pub struct Permit {
    generation: u64,
    trial: bool,
}

impl Permit {
    /// Whether this permit is one of the half-open trials.
    pub fn is_trial(&self) -> bool {
        self.trial
    }
}

/// A refused acquire: the breaker is open, or half-open with no trial left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Exact time until the breaker may grant a permit again.
    pub retry_after: Duration,
}

/// How a permitted call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open {
        since: Instant,
    },
    HalfOpen {
        granted: u32,
        successes: u32,
        failures: u32,
    },
}

/// Indices of the closed window's counters.
const CALLS: usize = 0;
const FAILURES: usize = 1;

/// A circuit breaker for one protected target (e.g. one function version).
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    phase: Phase,
    generation: u64,
    /// Calls and failures while closed; empty in the other states.
    window: SecondWindow<2>,
}

impl CircuitBreaker {
    /// A closed breaker with an empty window.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            phase: Phase::Closed,
            generation: 0,
            window: SecondWindow::new(config.window),
        }
    }

    /// The parameters the breaker was built with.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Asks leave to make one call at `now`.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, Rejected> {
        self.advance(now);
        match &mut self.phase {
            Phase::Closed => Ok(Permit {
                generation: self.generation,
                trial: false,
            }),
            Phase::Open { since } => Err(Rejected {
                retry_after: self
                    .config
                    .open_for
                    .saturating_sub(now.saturating_duration_since(*since)),
            }),
            Phase::HalfOpen { granted, .. } => {
                if *granted < self.config.half_open_calls {
                    *granted += 1;
                    Ok(Permit {
                        generation: self.generation,
                        trial: true,
                    })
                } else {
                    Err(Rejected {
                        retry_after: HALF_OPEN_RETRY_AFTER,
                    })
                }
            }
        }
    }

    /// Gives back a permit whose call says nothing about the target: the
    /// caller cancelled it before an answer. Nothing is recorded; a half-open
    /// trial slot is freed for the next call.
    pub fn abandon(&mut self, permit: Permit, now: Instant) {
        self.advance(now);
        if permit.generation != self.generation || !permit.trial {
            return;
        }
        if let Phase::HalfOpen { granted, .. } = &mut self.phase {
            *granted = granted.saturating_sub(1);
        }
    }

    /// Records how the call of `permit` ended; permits of an older generation
    /// are ignored.
    pub fn record(&mut self, permit: Permit, outcome: Outcome, now: Instant) {
        self.advance(now);
        if permit.generation != self.generation {
            return;
        }
        let failed = outcome == Outcome::Failure;
        match &mut self.phase {
            Phase::Closed => {
                self.window.add(now, CALLS);
                if failed {
                    self.window.add(now, FAILURES);
                }
                let [calls, failures] = self.window.totals(now);
                if calls >= u64::from(self.config.minimum_calls)
                    && rate(failures, calls) >= self.config.failure_rate
                {
                    self.open(now);
                }
            }
            // No permit is granted while open, so none can match its generation.
            Phase::Open { .. } => {}
            Phase::HalfOpen {
                successes,
                failures,
                ..
            } => {
                if !permit.trial {
                    return;
                }
                if failed {
                    *failures += 1;
                } else {
                    *successes += 1;
                }
                let (done, failures) = (*successes + *failures, *failures);
                if done >= self.config.half_open_calls {
                    if rate(u64::from(failures), u64::from(done)) >= self.config.failure_rate {
                        self.open(now);
                    } else {
                        self.transition(Phase::Closed);
                    }
                }
            }
        }
    }

    /// The state at `now`: an open breaker whose `open_for` has elapsed is half-open.
    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.advance(now);
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Moves an open breaker to half-open once `open_for` has elapsed.
    fn advance(&mut self, now: Instant) {
        if let Phase::Open { since } = self.phase {
            if now.saturating_duration_since(since) >= self.config.open_for {
                self.transition(Phase::HalfOpen {
                    granted: 0,
                    successes: 0,
                    failures: 0,
                });
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.transition(Phase::Open { since: now });
    }

    /// Enters `phase` as a new generation with an empty window.
    fn transition(&mut self, phase: Phase) {
        self.phase = phase;
        self.generation = self.generation.wrapping_add(1);
        self.window.clear();
    }
}

fn rate(failures: u64, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        failures as f64 / calls as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_calls_count_for_nothing_and_free_their_trial_slot() {
        let config =
            BreakerConfig::try_new(0.5, 2, Duration::from_secs(10), Duration::from_secs(1), 1)
                .unwrap();
        let mut b = CircuitBreaker::new(config);
        let t0 = Instant::now();
        // Closed: any number of abandoned calls never opens it.
        for _ in 0..50 {
            let p = b.try_acquire(t0).unwrap();
            b.abandon(p, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        // Open it with real failures, then reach half-open.
        for _ in 0..2 {
            let p = b.try_acquire(t0).unwrap();
            b.record(p, Outcome::Failure, t0);
        }
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        // The only trial is abandoned: the slot comes back for the next caller.
        let trial = b.try_acquire(t1).unwrap();
        assert!(b.try_acquire(t1).is_err());
        b.abandon(trial, t1);
        let trial = b.try_acquire(t1).unwrap();
        b.record(trial, Outcome::Success, t1);
        assert_eq!(b.state(t1), BreakerState::Closed);
    }
    use crate::testing::SplitMix64;
    use std::collections::HashMap;

    const SEC: Duration = Duration::from_secs(1);

    fn config() -> BreakerConfig {
        BreakerConfig::try_new(0.5, 20, 10 * SEC, 30 * SEC, 3).unwrap()
    }

    fn fail(b: &mut CircuitBreaker, now: Instant, n: u32) {
        for _ in 0..n {
            let p = b.try_acquire(now).unwrap();
            b.record(p, Outcome::Failure, now);
        }
    }

    fn succeed(b: &mut CircuitBreaker, now: Instant, n: u32) {
        for _ in 0..n {
            let p = b.try_acquire(now).unwrap();
            b.record(p, Outcome::Success, now);
        }
    }

    /// A breaker opened at `t0` (20 failures).
    fn opened() -> (CircuitBreaker, Instant) {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        fail(&mut b, t0, 20);
        assert_eq!(b.state(t0), BreakerState::Open);
        (b, t0)
    }

    #[test]
    fn config_rejects_out_of_range_values() {
        let ok = |r, m, w, h| BreakerConfig::try_new(r, m, w, 30 * SEC, h);
        assert!(ok(1.0, 1, SEC, 1).is_ok());
        for r in [0.0, -0.1, 1.01, f64::NAN] {
            assert!(matches!(
                ok(r, 20, SEC, 1),
                Err(BreakerConfigError::FailureRate(_))
            ));
        }
        let err = ok(1.5, 20, SEC, 1).unwrap_err();
        assert_eq!(err.to_string(), "failure rate must be in (0, 1], got 1.5");
        let err = ok(0.5, 0, SEC, 1).unwrap_err();
        assert_eq!(err.to_string(), "minimum calls must be at least 1, got 0");
        let err = ok(0.5, 1, Duration::from_millis(500), 1).unwrap_err();
        assert_eq!(err.to_string(), "window must be at least 1s, got 500ms");
        let err = ok(0.5, 1, SEC, 0).unwrap_err();
        assert_eq!(err.to_string(), "half-open calls must be at least 1, got 0");
    }

    #[test]
    fn opens_only_once_minimum_calls_are_in_the_window() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        fail(&mut b, t0, 19);
        assert_eq!(b.state(t0), BreakerState::Closed);
        fail(&mut b, t0, 1);
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn a_failure_rate_below_the_threshold_stays_closed() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        succeed(&mut b, t0, 11);
        fail(&mut b, t0, 9);
        assert_eq!(b.state(t0), BreakerState::Closed);
        fail(&mut b, t0, 1); // 10 of 21
        assert_eq!(b.state(t0), BreakerState::Closed);
        fail(&mut b, t0, 1); // 11 of 22: 0.5
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn open_rejects_with_the_time_left() {
        let (mut b, t0) = opened();
        assert_eq!(
            b.try_acquire(t0).unwrap_err(),
            Rejected {
                retry_after: 30 * SEC
            }
        );
        let at = t0 + Duration::from_millis(12_250);
        assert_eq!(
            b.try_acquire(at).unwrap_err().retry_after,
            Duration::from_millis(17_750)
        );
        let just_before = t0 + 30 * SEC - Duration::from_nanos(1);
        assert_eq!(b.state(just_before), BreakerState::Open);
        assert_eq!(
            b.try_acquire(just_before).unwrap_err().retry_after,
            Duration::from_nanos(1)
        );
    }

    #[test]
    fn half_open_grants_exactly_the_trial_calls() {
        let (mut b, t0) = opened();
        let t1 = t0 + 30 * SEC;
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        for _ in 0..3 {
            assert!(b.try_acquire(t1).unwrap().is_trial());
        }
        assert_eq!(
            b.try_acquire(t1).unwrap_err(),
            Rejected {
                retry_after: HALF_OPEN_RETRY_AFTER
            }
        );
        assert_eq!(b.state(t1 + 100 * SEC), BreakerState::HalfOpen);
    }

    #[test]
    fn successful_trials_close_with_an_empty_window() {
        let (mut b, t0) = opened();
        let t1 = t0 + 30 * SEC;
        let trials: Vec<Permit> = (0..3).map(|_| b.try_acquire(t1).unwrap()).collect();
        for (i, p) in trials.into_iter().enumerate() {
            assert_eq!(b.state(t1), BreakerState::HalfOpen, "after {i} outcomes");
            b.record(p, Outcome::Success, t1);
        }
        assert_eq!(b.state(t1), BreakerState::Closed);
        let p = b.try_acquire(t1).unwrap();
        assert!(!p.is_trial());
        // The window starts empty: 19 failures do not reach minimum_calls.
        fail(&mut b, t1, 19);
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn failed_trials_reopen_for_a_fresh_open_for() {
        let (mut b, t0) = opened();
        let t1 = t0 + 30 * SEC;
        let trials: Vec<Permit> = (0..3).map(|_| b.try_acquire(t1).unwrap()).collect();
        b.record(trials[0], Outcome::Failure, t1);
        b.record(trials[1], Outcome::Success, t1);
        let t2 = t1 + 2 * SEC;
        b.record(trials[2], Outcome::Failure, t2); // 2 of 3 failed
        assert_eq!(b.state(t2), BreakerState::Open);
        assert_eq!(b.try_acquire(t2).unwrap_err().retry_after, 30 * SEC);
        assert_eq!(b.state(t2 + 30 * SEC), BreakerState::HalfOpen);

        // One failed trial of three (0.33 < 0.5) closes it.
        let t3 = t2 + 30 * SEC;
        let trials: Vec<Permit> = (0..3).map(|_| b.try_acquire(t3).unwrap()).collect();
        b.record(trials[0], Outcome::Failure, t3);
        b.record(trials[1], Outcome::Success, t3);
        b.record(trials[2], Outcome::Success, t3);
        assert_eq!(b.state(t3), BreakerState::Closed);
    }

    #[test]
    fn failures_older_than_the_window_expire() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        fail(&mut b, t0, 15);
        // 9.9 s later the 15 failures still count: 5 more open the breaker.
        let mut early = b.clone();
        fail(&mut early, t0 + Duration::from_millis(9_900), 5);
        assert_eq!(
            early.state(t0 + Duration::from_millis(9_900)),
            BreakerState::Open
        );
        // 10 s later they have left the window.
        let t1 = t0 + 10 * SEC;
        fail(&mut b, t1, 19);
        assert_eq!(b.state(t1), BreakerState::Closed);
        fail(&mut b, t1, 1);
        assert_eq!(b.state(t1), BreakerState::Open);
    }

    #[test]
    fn stale_permits_are_ignored() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config());
        let slow_closed = b.try_acquire(t0).unwrap();
        fail(&mut b, t0, 20);
        assert_eq!(b.state(t0), BreakerState::Open);
        // A call started while closed ends while open: nothing changes.
        b.record(slow_closed, Outcome::Success, t0 + SEC);
        assert_eq!(b.try_acquire(t0 + SEC).unwrap_err().retry_after, 29 * SEC);

        // ... or while half-open: it is not a trial.
        let t1 = t0 + 30 * SEC;
        let trials: Vec<Permit> = (0..3).map(|_| b.try_acquire(t1).unwrap()).collect();
        b.record(slow_closed, Outcome::Success, t1);
        b.record(slow_closed, Outcome::Success, t1);
        b.record(slow_closed, Outcome::Success, t1);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        b.record(trials[0], Outcome::Failure, t1);
        b.record(trials[1], Outcome::Failure, t1);
        b.record(trials[2], Outcome::Failure, t1);
        assert_eq!(b.state(t1), BreakerState::Open);

        // A trial of the previous half-open round is stale once it reopened.
        let t2 = t1 + 30 * SEC;
        let trials2: Vec<Permit> = (0..3).map(|_| b.try_acquire(t2).unwrap()).collect();
        b.record(trials[0], Outcome::Success, t2);
        assert_eq!(b.state(t2), BreakerState::HalfOpen);
        for p in trials2 {
            b.record(p, Outcome::Success, t2);
        }
        assert_eq!(b.state(t2), BreakerState::Closed);
        // A half-open trial recorded after closing does not count in the window.
        for p in &trials {
            b.record(*p, Outcome::Failure, t2);
        }
        fail(&mut b, t2, 19);
        assert_eq!(b.state(t2), BreakerState::Closed);
    }

    /// Random acquires, outcomes and clock steps: the breaker never grants more
    /// than `half_open_calls` trials per half-open round, and never opens from
    /// closed with fewer than `minimum_calls` calls in its window.
    #[test]
    fn property_trials_are_bounded_and_opening_needs_minimum_calls() {
        let (mut opened_from_closed, mut trial_rounds) = (0u32, 0usize);
        for seed in 0..64u64 {
            let mut rng = SplitMix64::new(seed);
            let minimum_calls = 1 + rng.below(15) as u32;
            let half_open_calls = 1 + rng.below(5) as u32;
            let failure_rate = 0.1 + 0.9 * rng.unit();
            let window = SEC * (1 + rng.below(8) as u32);
            let open_for = Duration::from_millis(500 + rng.below(5_000));
            let cfg = BreakerConfig::try_new(
                failure_rate,
                minimum_calls,
                window,
                open_for,
                half_open_calls,
            )
            .unwrap();
            let mut b = CircuitBreaker::new(cfg);
            let t0 = Instant::now();
            let mut now = t0;
            let mut outstanding: Vec<Permit> = Vec::new();
            let mut trials_by_generation: HashMap<u64, u32> = HashMap::new();
            // Our own model of the closed window: the second of each outcome
            // recorded in the current closed generation.
            let mut closed_calls: Vec<u64> = Vec::new();
            // The window counts seconds from the first outcome it sees.
            let mut epoch: Option<Instant> = None;
            let span = window.as_secs();
            let mut failure_bias = rng.unit();
            for step in 0..4_000 {
                if step % 500 == 0 {
                    failure_bias = rng.unit();
                }
                match rng.below(10) {
                    0..=3 => {
                        if let Ok(p) = b.try_acquire(now) {
                            if p.trial {
                                let n = trials_by_generation.entry(p.generation).or_default();
                                *n += 1;
                                assert!(*n <= half_open_calls, "seed {seed}: {n} trials");
                            }
                            outstanding.push(p);
                        }
                    }
                    4..=7 if !outstanding.is_empty() => {
                        let i = rng.below(outstanding.len() as u64) as usize;
                        let p = outstanding.swap_remove(i);
                        let outcome = if rng.unit() < failure_bias {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        };
                        let before = b.state(now);
                        let generation = b.generation;
                        let counted = before == BreakerState::Closed && p.generation == generation;
                        b.record(p, outcome, now);
                        if counted {
                            let second = now.duration_since(*epoch.get_or_insert(now)).as_secs();
                            closed_calls.push(second);
                            if b.state(now) == BreakerState::Open {
                                let in_window =
                                    closed_calls.iter().filter(|s| **s + span > second).count();
                                assert!(
                                    in_window >= minimum_calls as usize,
                                    "seed {seed}: opened with {in_window} calls"
                                );
                                opened_from_closed += 1;
                            }
                        }
                        if b.generation != generation {
                            closed_calls.clear();
                        }
                    }
                    _ => {
                        now += Duration::from_millis(rng.below(700));
                        let generation = b.generation;
                        b.state(now);
                        if b.generation != generation {
                            closed_calls.clear();
                        }
                    }
                }
            }
            trial_rounds += trials_by_generation.len();
        }
        // The loop really exercises both transitions.
        assert!(opened_from_closed > 100, "{opened_from_closed}");
        assert!(trial_rounds > 100, "{trial_rounds}");
    }
}
