//! The node's budget for pre-processing (uses only `prepost::common`):
//! tokenizing and image decoding run on tokio's blocking pool, which has
//! hundreds of threads, so without a budget N concurrent calls would decode N
//! images at once, outside the engine's instance and queue limits.
//!
//! - **Places**: at most `concurrency` calls are pre-processed at once
//!   (default: the cores the process may use). A call waits for a place in
//!   arrival order, within its deadline (504 `timeout` when it passes); when
//!   [`MAX_PREPROCESS_WAITING`] calls wait already, it gets 503 `overloaded`.
//! - **Memory**: each image holds its estimated working set (decoded bytes plus
//!   the converted copy, see `image.rs`) from the budget while it is decoded
//!   and resized, and gives it back before the next. The budget defaults to a
//!   quarter ([`PREPROCESS_MEMORY_DIVISOR`]) of the instance memory budget and
//!   is never less than [`MAX_IMAGE_DECODE_BYTES`], so any image that passes
//!   its cap fits alone. An image waits in arrival order within the call's
//!   deadline (504 `timeout` when it passes).
//!
//! Both are held by the blocking task itself, so a call whose caller gave up
//! keeps counting until its work has really stopped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use contract::limits::{MAX_IMAGE_DECODE_BYTES, MAX_PREPROCESS_WAITING, PREPROCESS_MEMORY_DIVISOR};
use contract::{ApiError, ErrorCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is counted in units of this many bytes (a semaphore's permits).
const UNIT: u64 = 1024;

/// How many calls may be pre-processed at once, and how many bytes of decoded
/// images may be in flight; `0` means the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreprocessLimits {
    /// Calls pre-processed at once; `0`: the cores the process may use.
    pub concurrency: usize,
    /// Estimated bytes of images being decoded at once; `0`: the instance
    /// memory budget / [`PREPROCESS_MEMORY_DIVISOR`].
    pub memory_bytes: u64,
}

impl PreprocessLimits {
    /// The limits in force: defaults filled in from the instance memory budget,
    /// the memory never below [`MAX_IMAGE_DECODE_BYTES`].
    pub fn resolve(self, instance_memory_bytes: u64) -> (usize, u64) {
        let concurrency = match self.concurrency {
            0 => std::thread::available_parallelism().map_or(4, |n| n.get()),
            n => n,
        };
        let memory = match self.memory_bytes {
            0 => instance_memory_bytes / PREPROCESS_MEMORY_DIVISOR,
            n => n,
        };
        (concurrency, memory.max(MAX_IMAGE_DECODE_BYTES))
    }
}

/// Places and memory for pre-processing on one node (see the module doc).
pub struct PreprocessBudget {
    places: Arc<Semaphore>,
    memory: Arc<Semaphore>,
    memory_units: u64,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A call's place; pre-processing holds it until its blocking work ends.
pub struct Place {
    _permit: OwnedSemaphorePermit,
}

/// Bytes of the memory budget held by one image while it is decoded.
pub struct MemoryHeld {
    _permit: OwnedSemaphorePermit,
}

/// Counts a call among the waiting ones while it waits (however the wait ends).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PreprocessBudget {
    /// `concurrency` places (at least 1) and `memory_bytes` of memory (at least
    /// one unit).
    pub fn new(concurrency: usize, memory_bytes: u64) -> Self {
        let memory_units = (memory_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS as u64);
        PreprocessBudget {
            places: Arc::new(Semaphore::new(concurrency.max(1))),
            memory: Arc::new(Semaphore::new(memory_units as usize)),
            memory_units,
            waiting: AtomicUsize::new(0),
            max_waiting: MAX_PREPROCESS_WAITING,
        }
    }

    /// The budget of a node whose instances may use `instance_memory_bytes`.
    pub fn from_limits(limits: PreprocessLimits, instance_memory_bytes: u64) -> Self {
        let (concurrency, memory) = limits.resolve(instance_memory_bytes);
        Self::new(concurrency, memory)
    }

    #[cfg(test)]
    pub(super) fn with_max_waiting(mut self, max_waiting: usize) -> Self {
        self.max_waiting = max_waiting;
        self
    }

    /// Waits for a place to pre-process one call, in arrival order. The caller
    /// bounds the wait with its deadline; 503 `overloaded` at once when too
    /// many calls wait already.
    pub async fn enter(&self) -> Result<Place, ApiError> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Ok(Place { _permit: permit });
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::new(
                ErrorCode::Overloaded,
                "too many calls are waiting to be pre-processed on this node",
            )
            .with_retry_after(1));
        }
        let _waiting = Waiting(&self.waiting);
        let permit = self
            .places
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        Ok(Place { _permit: permit })
    }

    /// On a blocking thread: holds `bytes` of the memory budget (all of it at
    /// most) until the result is dropped, waiting in arrival order until
    /// `deadline` (then 504 `timeout`).
    pub fn hold_blocking(
        &self,
        runtime: &tokio::runtime::Handle,
        bytes: u64,
        deadline: Instant,
    ) -> Result<MemoryHeld, ApiError> {
        let units = bytes.div_ceil(UNIT).clamp(1, self.memory_units);
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        if let Ok(permit) = self.memory.clone().try_acquire_many_owned(units) {
            return Ok(MemoryHeld { _permit: permit });
        }
        let wait = self.memory.clone().acquire_many_owned(units);
        let deadline = tokio::time::Instant::from_std(deadline);
        match runtime.block_on(async { tokio::time::timeout_at(deadline, wait).await }) {
            Ok(Ok(permit)) => Ok(MemoryHeld { _permit: permit }),
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(ApiError::new(
                ErrorCode::Timeout,
                "the deadline passed while the image waited for memory to be decoded in",
            )),
        }
    }

    /// Places free now (for tests and reports).
    pub fn free_places(&self) -> usize {
        self.places.available_permits()
    }

    /// Bytes of the memory budget free now (in whole units).
    pub fn free_memory_bytes(&self) -> u64 {
        self.memory.available_permits() as u64 * UNIT
    }
}

fn closed() -> ApiError {
    ApiError::new(ErrorCode::Internal, "the pre-processing budget is closed")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn defaults_come_from_the_cores_and_the_instance_budget() {
        let (places, memory) = PreprocessLimits::default().resolve(4 << 30);
        assert!(places >= 1);
        assert_eq!(memory, 1 << 30);
        // Never below one image at the decoder's limit, so any image fits alone.
        let (_, memory) = PreprocessLimits::default().resolve(1 << 20);
        assert_eq!(memory, MAX_IMAGE_DECODE_BYTES);
        let set = PreprocessLimits {
            concurrency: 3,
            memory_bytes: 2 << 30,
        };
        assert_eq!(set.resolve(4 << 30), (3, 2 << 30));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_beyond_the_places_wait_in_order_and_then_are_refused() {
        let budget = Arc::new(PreprocessBudget::new(2, 1 << 30).with_max_waiting(2));
        let a = budget.enter().await.unwrap();
        let _b = budget.enter().await.unwrap();
        assert_eq!(budget.free_places(), 0);
        // A third waits (within its deadline) ...
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.enter().await.map(drop) }
        });
        let timed_out = tokio::time::timeout(Duration::from_millis(50), budget.enter()).await;
        assert!(timed_out.is_err(), "a call beyond the places waits");
        tokio::time::sleep(Duration::from_millis(20)).await;
        // ... and with two waiting already, the next is refused at once.
        let _other = tokio::spawn({
            let budget = budget.clone();
            async move { budget.enter().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let err = budget.enter().await.err().expect("refused");
        assert_eq!(err.code, ErrorCode::Overloaded);
        // A place given back goes to the first waiter.
        drop(a);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn images_beyond_the_memory_wait_until_their_deadline() {
        let budget = Arc::new(PreprocessBudget::new(8, 300 << 20));
        let runtime = tokio::runtime::Handle::current();
        let soon = || Instant::now() + Duration::from_millis(200);
        let (budget2, runtime2) = (budget.clone(), runtime.clone());
        let first = tokio::task::spawn_blocking(move || {
            budget2.hold_blocking(&runtime2, 200 << 20, soon()).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(budget.free_memory_bytes(), 100 << 20);
        // 200 MiB more does not fit: it waits, and its deadline passes (504).
        let (budget2, runtime2) = (budget.clone(), runtime.clone());
        let started = Instant::now();
        let err = tokio::task::spawn_blocking(move || {
            budget2.hold_blocking(&runtime2, 200 << 20, soon()).err()
        })
        .await
        .unwrap()
        .expect("timed out");
        assert_eq!(err.code, ErrorCode::Timeout);
        assert!(started.elapsed() >= Duration::from_millis(150));
        // It runs once the first image gives its bytes back.
        let (budget2, runtime2) = (budget.clone(), runtime.clone());
        let second = tokio::task::spawn_blocking(move || {
            budget2
                .hold_blocking(
                    &runtime2,
                    200 << 20,
                    Instant::now() + Duration::from_secs(5),
                )
                .map(drop)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "it waits while the memory is held");
        drop(first);
        second.await.unwrap().unwrap();
        assert_eq!(budget.free_memory_bytes(), 300 << 20);
        // More than the whole budget is charged the whole budget, so it still runs.
        let held = tokio::task::spawn_blocking(move || {
            budget.hold_blocking(&runtime, 1 << 40, soon()).map(drop)
        });
        held.await.unwrap().unwrap();
    }
}
