//! A time-based sliding window of per-second counters, shared by the circuit
//! breaker (calls, failures) and the retry budget (requests, retries).
//!
//! Time is cut into 1-second buckets counted from the first instant the window
//! sees. The window at `now` holds the buckets of the last `span` whole seconds,
//! the current one included, so it never keeps more than `span` buckets however
//! many events it counts. Events that arrive with an instant earlier than the
//! newest bucket (concurrent callers reading the clock in a different order
//! than they record) are counted in the newest bucket.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Bucket<const N: usize> {
    second: u64,
    counts: [u64; N],
}

/// `N` counters over the last `span` seconds.
#[derive(Debug, Clone)]
pub(crate) struct SecondWindow<const N: usize> {
    epoch: Option<Instant>,
    span: u64,
    buckets: VecDeque<Bucket<N>>,
    totals: [u64; N],
}

impl<const N: usize> SecondWindow<N> {
    /// A window of `window` rounded up to whole seconds (at least one).
    pub(crate) fn new(window: Duration) -> Self {
        let span = ceil_secs(window).max(1);
        SecondWindow {
            epoch: None,
            span,
            buckets: VecDeque::new(),
            totals: [0; N],
        }
    }

    /// Adds one to counter `counter` in the bucket of `now`.
    pub(crate) fn add(&mut self, now: Instant, counter: usize) {
        let second = self.evict(now);
        let second = match self.buckets.back() {
            Some(newest) => second.max(newest.second),
            None => second,
        };
        if self.buckets.back().is_none_or(|b| b.second != second) {
            self.buckets.push_back(Bucket {
                second,
                counts: [0; N],
            });
        }
        if let (Some(bucket), Some(total)) = (self.buckets.back_mut(), self.totals.get_mut(counter))
        {
            if let Some(count) = bucket.counts.get_mut(counter) {
                *count = count.saturating_add(1);
                *total = total.saturating_add(1);
            }
        }
    }

    /// The counters summed over the window that ends at `now`.
    pub(crate) fn totals(&mut self, now: Instant) -> [u64; N] {
        self.evict(now);
        self.totals
    }

    /// Forgets every counted event.
    pub(crate) fn clear(&mut self) {
        self.buckets.clear();
        self.totals = [0; N];
    }

    /// Drops the buckets that fell out of the window; returns the current second.
    fn evict(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        let second = now.saturating_duration_since(epoch).as_secs();
        while let Some(oldest) = self.buckets.front() {
            if oldest.second.saturating_add(self.span) > second {
                break;
            }
            for (total, count) in self.totals.iter_mut().zip(oldest.counts) {
                *total = total.saturating_sub(count);
            }
            self.buckets.pop_front();
        }
        second
    }
}

/// Whole seconds in `d`, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_expire_after_the_span() {
        let t0 = Instant::now();
        let mut w = SecondWindow::<2>::new(Duration::from_secs(3));
        w.add(t0, 0);
        w.add(t0 + Duration::from_millis(999), 1);
        w.add(t0 + Duration::from_secs(1), 0);
        assert_eq!(w.totals(t0 + Duration::from_millis(2999)), [2, 1]);
        assert_eq!(w.totals(t0 + Duration::from_secs(3)), [1, 0]);
        assert_eq!(w.totals(t0 + Duration::from_secs(4)), [0, 0]);
    }

    #[test]
    fn late_events_count_in_the_newest_bucket_and_span_bounds_memory() {
        let t0 = Instant::now();
        let mut w = SecondWindow::<1>::new(Duration::from_millis(1500));
        assert_eq!(w.span, 2);
        w.add(t0 + Duration::from_secs(1), 0);
        w.add(t0, 0);
        assert_eq!(w.buckets.len(), 1);
        for s in 0..100 {
            w.add(t0 + Duration::from_secs(s), 0);
            assert!(w.buckets.len() <= 2);
        }
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::from_secs(1)), 1);
    }
}
