//! Canary rollouts: the parameters, the per-version evidence, the verdict on a
//! step, and the alias routes of each step. No I/O: the driver (in the
//! registry) reads counters, passes them here as [`Stats`] and acts on the
//! [`Verdict`].
//!
//! # How a step is judged
//!
//! Evidence is what the routers counted for a version since the step began:
//! calls, errors (answers with a 5xx status: the function failed, broke its
//! output schema, timed out, or could not be served) and a latency histogram
//! (buckets growing by 25 %, so a p99 is reported as its bucket's upper
//! bound, at most 25 % above the true value).
//!
//! - **Fail fast.** As soon as the new version has `min_calls_per_step` calls
//!   (at least one), an error rate above `max_error_rate` or a p99 above
//!   `max_p99_ms` breaches the step, without waiting for the interval.
//! - **Promote slowly.** A step passes only when both `step_interval_s` has
//!   passed and the new version has `min_calls_per_step` calls; until then it
//!   holds.
//! - **No worse than the old version.** When the old versions (the alias's
//!   previous routes) also served at least `min_calls_per_step` (and one)
//!   calls in the step, the new version breaches if its error rate is above
//!   the old one's plus `error_rate_margin` (default 0.005), or if its p99 is
//!   above the old one's times `p99_ratio` (default 1.5) *and* more than
//!   [`P99_SLACK_MS`] above it (so sub-millisecond noise never fails a step).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::split::Route;

/// Latency histogram buckets: bucket `i < LATENCY_BUCKETS - 1` holds calls of
/// at most `1.25^i` ms (and more than the bucket below); the last holds the rest.
pub const LATENCY_BUCKETS: usize = 48;

/// A p99 within this many milliseconds of the old version's is never a breach.
pub const P99_SLACK_MS: f64 = 25.0;

/// The upper bound of bucket `i` in milliseconds (infinite for the last).
pub fn bucket_upper_ms(i: usize) -> f64 {
    if i + 1 >= LATENCY_BUCKETS {
        f64::INFINITY
    } else {
        1.25f64.powi(i as i32)
    }
}

/// The bucket a latency falls in.
pub fn bucket_of(ms: f64) -> usize {
    (0..LATENCY_BUCKETS)
        .find(|&i| ms <= bucket_upper_ms(i))
        .unwrap_or(LATENCY_BUCKETS - 1)
}

/// Calls, errors and latencies of one version (or several, summed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub calls: u64,
    pub errors: u64,
    /// Calls per latency bucket ([`LATENCY_BUCKETS`] entries, or empty).
    #[serde(default)]
    pub latency: Vec<u64>,
}

impl Stats {
    /// What was counted since `base` (counters only grow; a reset reads as 0).
    pub fn since(&self, base: &Stats) -> Stats {
        let latency = (0..self.latency.len())
            .map(|i| self.latency[i].saturating_sub(base.latency.get(i).copied().unwrap_or(0)))
            .collect();
        Stats {
            calls: self.calls.saturating_sub(base.calls),
            errors: self.errors.saturating_sub(base.errors),
            latency,
        }
    }

    /// Adds another version's stats to these.
    pub fn add(&mut self, other: &Stats) {
        self.calls += other.calls;
        self.errors += other.errors;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (i, n) in other.latency.iter().enumerate() {
            self.latency[i] += n;
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.errors as f64 / self.calls as f64
        }
    }

    /// The 99th percentile latency in ms (a bucket's upper bound), if any
    /// latency was counted; the overflow bucket reads as its lower bound.
    pub fn p99_ms(&self) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (total * 99).div_ceil(100);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = bucket_upper_ms(i);
                return Some(if upper.is_finite() {
                    upper
                } else {
                    bucket_upper_ms(i - 1)
                });
            }
        }
        None
    }
}

/// A rollout's parameters, checked once when the rollout is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// Percent of traffic on the new version at each step, rising, ending at 100.
    pub steps: Vec<u32>,
    pub step_interval_s: u64,
    pub min_calls_per_step: u64,
    pub max_error_rate: f64,
    pub max_p99_ms: Option<f64>,
    pub error_rate_margin: f64,
    pub p99_ratio: f64,
}

/// At most this many steps.
pub const MAX_STEPS: usize = 20;

impl RolloutSpec {
    /// Checks the parameters; errors are `(field, message)`.
    pub fn try_new(spec: RolloutSpec) -> Result<RolloutSpec, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        if spec.steps.is_empty() || spec.steps.len() > MAX_STEPS {
            errors.push((
                "steps",
                format!(
                    "steps must hold 1 to {MAX_STEPS} percentages, got {}",
                    spec.steps.len()
                ),
            ));
        } else if spec.steps.iter().any(|p| *p == 0 || *p > 100) {
            errors.push((
                "steps",
                format!("each step must be 1 to 100 percent, got {:?}", spec.steps),
            ));
        } else if spec.steps.windows(2).any(|w| w[0] >= w[1]) {
            errors.push((
                "steps",
                format!("steps must rise strictly, got {:?}", spec.steps),
            ));
        } else if spec.steps.last() != Some(&100) {
            errors.push((
                "steps",
                format!("the last step must be 100, got {:?}", spec.steps),
            ));
        }
        if spec.step_interval_s > 86_400 {
            errors.push((
                "step_interval_s",
                format!(
                    "step_interval_s must be at most 86400, got {}",
                    spec.step_interval_s
                ),
            ));
        }
        if !(0.0..=1.0).contains(&spec.max_error_rate) {
            errors.push((
                "max_error_rate",
                format!(
                    "max_error_rate must be from 0 to 1, got {}",
                    spec.max_error_rate
                ),
            ));
        }
        if let Some(p99) = spec.max_p99_ms {
            if !(p99 > 0.0 && p99.is_finite()) {
                errors.push((
                    "max_p99_ms",
                    format!("max_p99_ms must be positive, got {p99}"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&spec.error_rate_margin) {
            errors.push((
                "error_rate_margin",
                format!(
                    "error_rate_margin must be from 0 to 1, got {}",
                    spec.error_rate_margin
                ),
            ));
        }
        if !(spec.p99_ratio >= 1.0 && spec.p99_ratio.is_finite()) {
            errors.push((
                "p99_ratio",
                format!("p99_ratio must be at least 1, got {}", spec.p99_ratio),
            ));
        }
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(errors)
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.step_interval_s)
    }
}

/// What to do with a step now.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Keep the step; the reason says what it waits for.
    Hold(String),
    /// The step is good: go to the next one (or finish).
    Pass,
    /// The new version misbehaves: roll back, for this reason.
    Breach(String),
}

/// Judges a step `elapsed` after it began, on what the new version (`new`) and
/// the old versions (`old`) served since then.
pub fn judge(spec: &RolloutSpec, elapsed: Duration, new: &Stats, old: &Stats) -> Verdict {
    let enough = spec.min_calls_per_step.max(1);
    if new.calls >= enough {
        let rate = new.error_rate();
        if rate > spec.max_error_rate {
            return Verdict::Breach(format!(
                "error rate {rate:.4} ({} of {} calls) is above max_error_rate {}",
                new.errors, new.calls, spec.max_error_rate
            ));
        }
        if let (Some(max), Some(p99)) = (spec.max_p99_ms, new.p99_ms()) {
            if p99 > max {
                return Verdict::Breach(format!(
                    "p99 {p99:.1} ms over {} calls is above max_p99_ms {max}",
                    new.calls
                ));
            }
        }
    }
    if elapsed < spec.interval() {
        return Verdict::Hold(format!(
            "holding {:.1} s more",
            (spec.interval() - elapsed).as_secs_f64()
        ));
    }
    if new.calls < spec.min_calls_per_step {
        return Verdict::Hold(format!(
            "waiting for {} more calls to the new version",
            spec.min_calls_per_step - new.calls
        ));
    }
    if old.calls >= enough {
        let (new_rate, old_rate) = (new.error_rate(), old.error_rate());
        if new_rate > old_rate + spec.error_rate_margin {
            return Verdict::Breach(format!(
                "error rate {new_rate:.4} is above the old version's {old_rate:.4} plus the margin {}",
                spec.error_rate_margin
            ));
        }
        if let (Some(new_p99), Some(old_p99)) = (new.p99_ms(), old.p99_ms()) {
            if new_p99 > old_p99 * spec.p99_ratio && new_p99 - old_p99 > P99_SLACK_MS {
                return Verdict::Breach(format!(
                    "p99 {new_p99:.1} ms is above the old version's {old_p99:.1} ms times {}",
                    spec.p99_ratio
                ));
            }
        }
    }
    Verdict::Pass
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The alias routes at a step: the previous routes (without the target) keep
/// their proportions in `100 - percent`, and the target, listed last, takes
/// `percent` (see `split`: callers then only move onto the target).
pub fn routes_for_step(previous: &[Route], target: u32, percent: u32) -> Vec<Route> {
    let old: Vec<Route> = previous
        .iter()
        .copied()
        .filter(|r| r.version != target && r.weight > 0)
        .collect();
    let total: u64 = old.iter().map(|r| u64::from(r.weight)).sum();
    if percent >= 100 || total == 0 {
        return vec![Route {
            version: target,
            weight: 100,
        }];
    }
    let percent = u64::from(percent);
    let mut weights: Vec<(u32, u64)> = old
        .iter()
        .map(|r| (r.version, u64::from(r.weight) * (100 - percent)))
        .collect();
    weights.push((target, percent * total));
    let divisor = weights.iter().fold(0, |g, (_, w)| gcd(g, *w)).max(1);
    weights
        .into_iter()
        .map(|(version, w)| Route {
            version,
            weight: u32::try_from(w / divisor).unwrap_or(u32::MAX),
        })
        .collect()
}

/// The counter keys the routers add per-version stats to (see
/// [`call_deltas`], which the routers use): `stats/<tenant>/<fn>/v<N>/calls`,
/// `.../errors` and `.../lat/<bucket>` (buckets of [`bucket_of`]).
pub fn stats_keys(tenant: &str, function: &str, version: u32) -> Vec<String> {
    let base = format!("stats/{tenant}/{function}/v{version}");
    let mut keys = vec![format!("{base}/calls"), format!("{base}/errors")];
    keys.extend((0..LATENCY_BUCKETS).map(|i| format!("{base}/lat/{i}")));
    keys
}

/// The stats counter keys one call adds to (the registry's rollout driver
/// reads the same keys): calls, errors (when it failed) and its latency bucket.
pub fn call_deltas(
    tenant: &str,
    function: &str,
    version: u32,
    failed: bool,
    ms: f64,
) -> Vec<String> {
    let base = format!("stats/{tenant}/{function}/v{version}");
    let mut keys = vec![
        format!("{base}/calls"),
        format!("{base}/lat/{}", bucket_of(ms)),
    ];
    if failed {
        keys.push(format!("{base}/errors"));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RolloutSpec {
        RolloutSpec {
            steps: vec![5, 25, 50, 100],
            step_interval_s: 60,
            min_calls_per_step: 50,
            max_error_rate: 0.01,
            max_p99_ms: Some(250.0),
            error_rate_margin: 0.005,
            p99_ratio: 1.5,
        }
    }

    fn stats(calls: u64, errors: u64, ms: f64) -> Stats {
        let mut latency = vec![0; LATENCY_BUCKETS];
        latency[bucket_of(ms)] = calls;
        Stats {
            calls,
            errors,
            latency,
        }
    }

    #[test]
    fn spec_checks_name_the_field() {
        assert!(RolloutSpec::try_new(spec()).is_ok());
        for steps in [
            vec![],
            vec![5, 5, 100],
            vec![50, 25, 100],
            vec![5, 50],
            vec![0, 100],
            vec![5, 101],
        ] {
            let err = RolloutSpec::try_new(RolloutSpec { steps, ..spec() }).unwrap_err();
            assert_eq!(err[0].0, "steps");
        }
        let err = RolloutSpec::try_new(RolloutSpec {
            max_error_rate: 2.0,
            p99_ratio: 0.5,
            ..spec()
        })
        .unwrap_err();
        let fields: Vec<_> = err.iter().map(|e| e.0).collect();
        assert_eq!(fields, vec!["max_error_rate", "p99_ratio"]);
    }

    #[test]
    fn a_step_holds_for_time_and_calls_then_passes() {
        let s = spec();
        let healthy = stats(60, 0, 3.0);
        let old = stats(1000, 0, 3.0);
        assert!(matches!(
            judge(&s, Duration::from_secs(10), &healthy, &old),
            Verdict::Hold(_)
        ));
        assert!(matches!(
            judge(&s, Duration::from_secs(61), &stats(10, 0, 3.0), &old),
            Verdict::Hold(r) if r.contains("40 more calls")
        ));
        assert_eq!(
            judge(&s, Duration::from_secs(61), &healthy, &old),
            Verdict::Pass
        );
    }

    #[test]
    fn errors_and_latency_breach_at_once_when_enough_calls_arrived() {
        let s = spec();
        let old = stats(1000, 0, 3.0);
        let failing = stats(50, 50, 3.0);
        assert!(
            matches!(judge(&s, Duration::ZERO, &failing, &old), Verdict::Breach(r) if r.contains("error rate"))
        );
        let slow = stats(50, 0, 400.0);
        assert!(
            matches!(judge(&s, Duration::ZERO, &slow, &old), Verdict::Breach(r) if r.contains("p99"))
        );
        // Too few calls to judge yet.
        assert!(matches!(
            judge(&s, Duration::ZERO, &stats(10, 10, 3.0), &old),
            Verdict::Hold(_)
        ));
    }

    #[test]
    fn the_new_version_must_be_no_worse_than_the_old_by_the_margin() {
        let s = RolloutSpec {
            max_error_rate: 0.5,
            max_p99_ms: None,
            ..spec()
        };
        let after = Duration::from_secs(61);
        // 2 % vs 0 %: above the 0.5 % margin.
        assert!(matches!(
            judge(&s, after, &stats(100, 2, 3.0), &stats(100, 0, 3.0)),
            Verdict::Breach(_)
        ));
        // 2 % vs 2 %: fine.
        assert_eq!(
            judge(&s, after, &stats(100, 2, 3.0), &stats(100, 2, 3.0)),
            Verdict::Pass
        );
        // 3 ms vs 1 ms is 3× but within the slack; 200 ms vs 10 ms is not.
        assert_eq!(
            judge(&s, after, &stats(100, 0, 3.0), &stats(100, 0, 1.0)),
            Verdict::Pass
        );
        assert!(matches!(
            judge(&s, after, &stats(100, 0, 200.0), &stats(100, 0, 10.0)),
            Verdict::Breach(_)
        ));
        // Too little old traffic to compare with: absolute thresholds only.
        assert_eq!(
            judge(&s, after, &stats(100, 2, 3.0), &stats(3, 0, 3.0)),
            Verdict::Pass
        );
    }

    #[test]
    fn p99_reads_the_right_bucket() {
        let mut s = stats(99, 0, 2.0);
        s.latency[bucket_of(500.0)] += 1;
        assert_eq!(s.p99_ms(), Some(bucket_upper_ms(bucket_of(2.0))));
        s.latency[bucket_of(500.0)] += 1;
        assert!(s.p99_ms().unwrap() >= 500.0);
        assert!(bucket_upper_ms(bucket_of(500.0)) < 500.0 * 1.25 + 1e-9);
        assert_eq!(Stats::default().p99_ms(), None);
        let later = stats(150, 5, 2.0);
        let d = later.since(&stats(100, 2, 2.0));
        assert_eq!((d.calls, d.errors), (50, 3));
    }

    #[test]
    fn step_routes_keep_the_old_proportions_and_list_the_target_last() {
        let prev = [Route {
            version: 3,
            weight: 1,
        }];
        assert_eq!(
            routes_for_step(&prev, 4, 5),
            vec![
                Route {
                    version: 3,
                    weight: 19
                },
                Route {
                    version: 4,
                    weight: 1
                }
            ]
        );
        assert_eq!(
            routes_for_step(&prev, 4, 100),
            vec![Route {
                version: 4,
                weight: 100
            }]
        );
        let prev = [
            Route {
                version: 1,
                weight: 30,
            },
            Route {
                version: 2,
                weight: 60,
            },
            Route {
                version: 4,
                weight: 10,
            },
        ];
        let r = routes_for_step(&prev, 4, 50);
        assert_eq!(r.last().unwrap().version, 4);
        let total: u32 = r.iter().map(|r| r.weight).sum();
        assert_eq!(r[2].weight * 2, total);
        assert_eq!(r[1].weight, 2 * r[0].weight);
    }
}
