//! The engine's shared vocabulary (the bottom layer: it names no other module
//! of the engine): its settings and sources, what a run returns, what the node
//! reports, the loaded [`Instance`], and the [`BatchItem`] a batched call
//! becomes. Every other module of the engine may use these; they use none of
//! them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contract::headers::Priority;
use contract::ports::{Blobs, Catalog};
use contract::protocol::{TensorInputs, TensorOutputs};
use contract::FunctionVersion;
use contract::{ApiError, ErrorCode};
use ort::session::Session;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::prepost::PreprocessLimits;
use crate::session::SessionOptions;

/// A function version on this node: tenant, name, version number.
pub(super) type VersionKey = (String, String, u32);

pub(super) fn key_of(version: &FunctionVersion) -> VersionKey {
    (
        version.tenant.clone(),
        version.name.clone(),
        version.version,
    )
}

pub(super) fn overloaded(message: impl Into<String>, retry_after: Duration) -> ApiError {
    let seconds = retry_after.as_millis().div_ceil(1000).max(1) as u64;
    ApiError::new(ErrorCode::Overloaded, message).with_retry_after(seconds)
}

/// Node-wide settings of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub session: SessionOptions,
    /// Memory the node may spend on loaded instances (estimated).
    pub memory_budget_bytes: u64,
    /// How often idle instances are looked for.
    pub reap_interval: Duration,
    /// Pre-processing (tokenizing, image decoding) on this node: calls at
    /// once and bytes of decoded images in flight; `0` fields take their
    /// defaults (the cores, and `memory_budget_bytes / 4`, at least
    /// `MAX_IMAGE_DECODE_BYTES`: see `prepost/budget.rs`).
    pub preprocess: PreprocessLimits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            session: SessionOptions::default(),
            memory_budget_bytes: 4 << 30,
            reap_interval: Duration::from_millis(250),
            preprocess: PreprocessLimits::default(),
        }
    }
}

/// Where a node gets what it runs: versions from the catalog, model bytes and
/// artifacts (tokenizers) by digest. The registry implements all three.
#[derive(Clone)]
pub struct Sources {
    pub catalog: Arc<dyn Catalog>,
    pub models: Arc<dyn Blobs>,
    pub artifacts: Arc<dyn Blobs>,
}

/// The result of one run.
pub struct RunOutcome {
    pub outputs: TensorOutputs,
    /// Whether this call waited for an instance to be loaded.
    pub cold_start: bool,
}

/// What the node reports about one version (for `GET /v1/nodes`).
#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    pub function: String,
    pub version: u32,
    pub tenant: String,
    pub instances: usize,
    pub busy: usize,
    pub loading: usize,
    pub queued: usize,
}

/// What the node reports about itself.
#[derive(Debug, Clone, Serialize)]
pub struct EngineSnapshot {
    pub memory_budget_bytes: u64,
    pub memory_used_bytes: u64,
    pub in_flight: usize,
    pub functions: Vec<PoolSnapshot>,
}

/// How a cold start was spent, reported after the instance's first run.
#[derive(Debug, Clone, Copy)]
pub(super) struct ColdParts {
    pub(super) fetch: Duration,
    pub(super) load: Duration,
}

/// A loaded session of one function version.
pub struct Instance {
    pub(super) id: u64,
    pub(super) session: Mutex<Session>,
    pub(super) memory: u64,
    pub(super) cold: Mutex<Option<ColdParts>>,
}

/// What a call asks of its version's queue: its priority, and its cost (the
/// router's `x-taskmesh-cost`, 1 without one): the queue's wait estimate
/// counts cost units, not calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub priority: Priority,
    pub cost: u64,
}

impl Ticket {
    /// A call of `priority` that costs 1.
    pub fn of(priority: Priority) -> Self {
        Ticket { priority, cost: 1 }
    }
}

/// One call waiting to be batched.
pub(super) struct BatchItem {
    pub(super) inputs: TensorInputs,
    /// What calls must share to run together ([`crate::batch::shape_key`]).
    pub(super) shape: Vec<(String, contract::tensor::DType, Vec<usize>)>,
    pub(super) rows: usize,
    pub(super) arrived: Instant,
    pub(super) deadline: Instant,
    pub(super) ticket: Ticket,
    pub(super) tx: oneshot::Sender<Result<RunOutcome, ApiError>>,
}
