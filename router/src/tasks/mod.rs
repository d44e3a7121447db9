//! Tasks (contract: tasks): asynchronous invocations, served and worked by
//! the router over a `contract::task::TaskStore`.
//!
//! - `api`: the endpoints (submit, read, list, cancel, retry);
//! - `worker`: the background service that claims queued tasks and runs
//!   them through the same guards, placement and node calls as a
//!   synchronous call.
//!
//! Layer: names `admission`, `guards`, `local`, `routes` and `state`
//! (`worker` also `api`).

pub mod api;
pub mod worker;
