//! Tasks (contract: tasks): asynchronous invocations, served and worked by
//! the router over a `contract::task::TaskStore`.
//!
//! - `api`: the endpoints (submit, read, list, cancel, retry);
//! - `callback`: completion webhooks (URL checks, signatures, delivery);
//! - `worker`: the background service that claims queued tasks and runs
//!   them through the same guards, placement and node calls as a
//!   synchronous call.
//!
//! Layer: names `admission`, `guards`, `local`, `routes` and `state`
//! (`worker` also `api`; `api` also `callback`, which names nothing here).

pub mod api;
pub mod callback;
pub mod worker;
