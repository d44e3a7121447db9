//! Pure decision logic shared by the router, the registry and the runtime:
//! breakers, retries, rate limits, quotas, placement, alias splits and
//! rollout judgement. (The function contract, errors and limits are in
//! `taskmesh-contract`.)
//!
//! Nothing in this crate performs I/O or knows about an HTTP framework: every
//! function takes plain values and returns a decision, so it is tested with
//! plain values. The other crates turn these decisions into responses.

pub mod breaker;
pub mod quota;
pub mod ratelimit;
pub mod retry;
pub mod ring;
pub mod rollout;
pub mod split;

mod window;

#[cfg(test)]
mod testing;
