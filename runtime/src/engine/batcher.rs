//! Dynamic batching: one batcher task per batched version gathers calls into
//! a `PendingBatch` while it waits for an instance (`collect_batches`), then
//! runs it (`run_batch`: concatenated inputs, one run, outputs split back per
//! call with `crate::batch`).
//!
//! Uses `engine::types`, `engine::pool` and `engine::instances` (`acquire`,
//! `execute`); only `engine/mod.rs` uses it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use contract::headers::Priority;
use contract::protocol::TensorInputs;
use contract::FunctionVersion;
use contract::{ApiError, ErrorCode};
use tokio::sync::{mpsc, oneshot};

use super::pool::{Engine, Grant};
use super::types::{key_of, overloaded, BatchItem, RunOutcome, Ticket};
use crate::batch;

impl Engine {
    /// Sends a call to its version's batcher and waits for its share of a run.
    pub(super) async fn run_batched(
        self: &Arc<Self>,
        version: &Arc<FunctionVersion>,
        inputs: TensorInputs,
        deadline: Instant,
        ticket: Ticket,
    ) -> Result<RunOutcome, ApiError> {
        let rows = batch::rows(&inputs)?;
        let (tx, rx) = oneshot::channel();
        let item = BatchItem {
            shape: batch::shape_key(&inputs),
            inputs,
            rows,
            arrived: Instant::now(),
            deadline,
            ticket,
            tx,
        };
        let sender = self.batcher(version);
        sender.try_send(item).map_err(|_| {
            overloaded(
                format!("the batch queue of function {} is full", version.name),
                Duration::from_secs(1),
            )
        })?;
        rx.await
            .unwrap_or_else(|_| Err(ApiError::new(ErrorCode::Internal, "the batcher went away")))
    }

    /// The version's batcher, started on first use.
    fn batcher(self: &Arc<Self>, version: &Arc<FunctionVersion>) -> mpsc::Sender<BatchItem> {
        let mut batchers = self.batchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = batchers.get(&key_of(version)).filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let capacity = version.definition.scaling.max_instances.max(1) as usize
            * version.definition.scaling.concurrency.max(1) as usize
            * version
                .definition
                .batching
                .as_ref()
                .map_or(1, |b| b.max_batch_size as usize);
        let (tx, rx) = mpsc::channel(capacity.max(1));
        batchers.insert(key_of(version), tx.clone());
        tokio::spawn(collect_batches(Arc::downgrade(self), version.clone(), rx));
        tx
    }

    /// Busy instances of `version` (for the batcher: is this version under load?).
    fn busy_instances(&self, version: &FunctionVersion) -> usize {
        self.lock()
            .pools
            .get(&key_of(version))
            .map_or(0, |p| p.slots.iter().filter(|s| s.busy).count())
    }

    /// Runs one batch on a granted instance: concatenated inputs, one run,
    /// outputs split back per call.
    async fn run_batch(
        self: Arc<Self>,
        version: Arc<FunctionVersion>,
        grant: Grant,
        batch: PendingBatch,
    ) {
        // Calls whose callers gave up (their deadline passed while the batch
        // waited for an instance) are not run.
        let items: Vec<BatchItem> = batch
            .items
            .into_iter()
            .filter(|i| !i.tx.is_closed())
            .collect();
        if items.is_empty() {
            return;
        }
        let deadline = items
            .iter()
            .map(|i| i.deadline)
            .max()
            .unwrap_or_else(Instant::now);
        let calls = items.len();
        let cold = grant.cold;
        let (mut inputs, mut rows, mut replies) = (Vec::new(), Vec::new(), Vec::new());
        for item in items {
            inputs.push(item.inputs);
            rows.push(item.rows);
            replies.push(item.tx);
        }
        let work = async {
            let merged = batch::concat(inputs)?;
            let outputs = self.execute(&version, grant, merged).await?;
            batch::split(&outputs, &rows)
        };
        // Nobody waits past the latest caller's deadline: stop (and terminate) then.
        let result = match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::new(
                ErrorCode::Timeout,
                "the batch did not finish before its deadline",
            )),
        };
        self.metrics.batch(&version.tenant, &version.name, calls);
        match result {
            Ok(parts) => {
                for (reply, outputs) in replies.into_iter().zip(parts) {
                    let _ = reply.send(Ok(RunOutcome {
                        outputs,
                        cold_start: cold,
                    }));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Calls gathered for one run: same shapes but the first dimension, at most
/// `max_rows` rows, in arrival order.
struct PendingBatch {
    items: Vec<BatchItem>,
    rows: usize,
    max_rows: usize,
}

impl PendingBatch {
    fn new(first: BatchItem, max_rows: usize) -> Self {
        PendingBatch {
            rows: first.rows,
            items: vec![first],
            max_rows,
        }
    }

    fn is_full(&self) -> bool {
        self.rows >= self.max_rows
    }

    /// Takes `item` if it fits; otherwise hands it back (it opens the next
    /// batch, and this one takes nothing more, so calls keep their order).
    fn offer(&mut self, item: BatchItem) -> Option<BatchItem> {
        if item.shape != self.items[0].shape || self.rows + item.rows > self.max_rows {
            return Some(item);
        }
        self.rows += item.rows;
        self.items.push(item);
        None
    }

    fn first_arrival(&self) -> Instant {
        self.items[0].arrived
    }

    /// The earliest and the latest deadline of the batch's calls.
    fn deadlines(&self) -> (Instant, Instant) {
        let first = self.items[0].deadline;
        self.items.iter().fold((first, first), |(lo, hi), i| {
            (lo.min(i.deadline), hi.max(i.deadline))
        })
    }

    /// The batch's ticket: its best priority and its summed cost.
    fn ticket(&self) -> Ticket {
        Ticket {
            priority: self
                .items
                .iter()
                .map(|i| i.ticket.priority)
                .max()
                .unwrap_or(Priority::Normal),
            cost: self.items.iter().map(|i| i.ticket.cost).sum::<u64>().max(1),
        }
    }

    fn fail(self, error: ApiError) {
        for item in self.items {
            let _ = item.tx.send(Err(error.clone()));
        }
    }
}

/// A batch being gathered, and the call that did not fit in it.
struct Gather<'a> {
    rx: &'a mut mpsc::Receiver<BatchItem>,
    batch: PendingBatch,
    next: Option<BatchItem>,
}

impl Gather<'_> {
    /// Whether the batch still takes calls.
    fn open(&self) -> bool {
        self.next.is_none() && !self.batch.is_full()
    }

    fn take(&mut self, item: BatchItem) {
        self.next = self.batch.offer(item);
    }

    /// Takes the calls already waiting, without waiting for more.
    fn take_ready(&mut self) {
        while self.open() {
            match self.rx.try_recv() {
                Ok(item) => self.take(item),
                Err(_) => return,
            }
        }
    }

    /// Takes calls as they arrive until `until`, or the batch closes.
    async fn take_until(&mut self, until: Instant) {
        while self.open() {
            match tokio::time::timeout_at(until.into(), self.rx.recv()).await {
                Ok(Some(item)) => self.take(item),
                Ok(None) | Err(_) => return,
            }
        }
    }
}

/// Gathers a version's calls into batches and runs them ("gather while busy").
///
/// - A batch opens with the first waiting call and takes every call already
///   waiting whose tensors differ only in the first dimension, up to
///   `max_batch_size` rows.
/// - It then asks the pool for an instance, and keeps taking calls while it
///   waits (during a cold start, or while every instance runs another batch).
/// - Holding an instance, it runs at once when it is full or when no other
///   instance of the version is busy: an idle function runs a lone call with no
///   delay, and a single busy instance runs everything that arrived during its
///   last run. Only when other instances are busy (calls arrive faster than one
///   instance serves them) does it wait for more, until `max_delay_us` after its
///   first call arrived.
async fn collect_batches(
    engine: std::sync::Weak<Engine>,
    version: Arc<FunctionVersion>,
    mut rx: mpsc::Receiver<BatchItem>,
) {
    let Some(policy) = version.definition.batching.clone() else {
        return;
    };
    let max_rows = policy.max_batch_size as usize;
    let delay = Duration::from_micros(policy.max_delay_us);
    let mut next: Option<BatchItem> = None;
    loop {
        let first = match next.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let mut gather = Gather {
            rx: &mut rx,
            batch: PendingBatch::new(first, max_rows),
            next: None,
        };
        gather.take_ready();
        let (deadline, ticket) = (gather.batch.deadlines().0, gather.batch.ticket());
        let grant = {
            let acquire = engine.acquire(&version, deadline, ticket);
            tokio::pin!(acquire);
            loop {
                let open = gather.open();
                // Nobody waits for an instance past the latest caller's deadline.
                let latest = gather.batch.deadlines().1;
                tokio::select! {
                    biased;
                    grant = &mut acquire => break grant,
                    item = gather.rx.recv(), if open => match item {
                        Some(item) => gather.take(item),
                        None => break (&mut acquire).await,
                    },
                    _ = tokio::time::sleep_until(latest.into()) => {
                        break Err(ApiError::new(
                            ErrorCode::Timeout,
                            format!(
                                "no instance of function {} was free before the batch's deadline",
                                version.name
                            ),
                        ))
                    }
                }
            }
        };
        match grant {
            Err(e) => {
                next = gather.next.take();
                gather.batch.fail(e);
            }
            Ok(grant) => {
                gather.take_ready();
                if gather.open() && engine.busy_instances(&version) > 1 {
                    gather
                        .take_until(gather.batch.first_arrival() + delay)
                        .await;
                }
                next = gather.next.take();
                tokio::spawn(engine.run_batch(version.clone(), grant, gather.batch));
            }
        }
    }
}
