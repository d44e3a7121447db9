//! Function instances: one warm ONNX Runtime session per function version.
//!
//! A version is cold-started on its first call (model bytes from the model
//! store, session built on a blocking thread); concurrent first calls share
//! that one cold start. Runs happen on blocking threads so the async workers
//! that serve HTTP/2 are never held by inference.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ort::session::{RunOptions, Session};
use policies::{ApiError, ErrorCode};
use registry::protocol::{TensorInputs, TensorOutputs};
use registry::{FunctionVersion, Registry};
use tokio::sync::OnceCell;

use crate::session::{self, SessionOptions};

type VersionKey = (String, String, u32);

/// A loaded session of one function version.
pub struct Instance {
    session: Mutex<Session>,
}

/// The result of one run.
pub struct Outcome {
    pub outputs: TensorOutputs,
    /// Whether this call waited for the instance to be loaded.
    pub cold_start: bool,
}

/// The node's instances, keyed by function version.
pub struct Engine {
    registry: Arc<Registry>,
    options: SessionOptions,
    instances: Mutex<HashMap<VersionKey, Arc<OnceCell<Arc<Instance>>>>>,
}

impl Engine {
    pub fn new(registry: Arc<Registry>, options: SessionOptions) -> Self {
        Engine {
            registry,
            options,
            instances: Mutex::new(HashMap::new()),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Whether an instance of this version is loaded.
    pub fn is_warm(&self, version: &FunctionVersion) -> bool {
        let key = key_of(version);
        self.instances
            .lock()
            .expect("instances lock")
            .get(&key)
            .is_some_and(|cell| cell.initialized())
    }

    /// Number of loaded instances.
    pub fn warm_count(&self) -> usize {
        self.instances
            .lock()
            .expect("instances lock")
            .values()
            .filter(|c| c.initialized())
            .count()
    }

    /// Runs one invocation within `budget` (never more than the version's `timeout_ms`).
    ///
    /// On timeout the caller is answered at once; the run itself cannot be
    /// interrupted inside ONNX Runtime and finishes on its blocking thread.
    pub async fn run(
        &self,
        version: &Arc<FunctionVersion>,
        inputs: TensorInputs,
        budget: Option<Duration>,
    ) -> Result<Outcome, ApiError> {
        let limit = Duration::from_millis(version.definition.timeout_ms);
        let timeout = budget.map_or(limit, |b| b.min(limit));
        match tokio::time::timeout(timeout, self.run_inner(version, inputs)).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "function {} version {} did not finish within {} ms",
                    version.name,
                    version.version,
                    timeout.as_millis()
                ),
            )),
        }
    }

    async fn run_inner(
        &self,
        version: &Arc<FunctionVersion>,
        inputs: TensorInputs,
    ) -> Result<Outcome, ApiError> {
        let (instance, cold_start) = self.instance(version).await?;
        let options =
            Arc::new(RunOptions::new().map_err(|e| {
                ApiError::new(ErrorCode::FunctionFailed, format!("run options: {e}"))
            })?);
        // If this call is abandoned (its deadline passed), the run is terminated
        // inside ONNX Runtime, so the instance is free for the next call.
        let _terminate = TerminateOnDrop(options.clone());
        let outputs = tokio::task::spawn_blocking(move || {
            let mut session = instance
                .session
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            session::run_with(&mut session, inputs, &options)
        })
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::FunctionFailed,
                format!("inference task failed: {e}"),
            )
        })?
        .map_err(|reason| {
            ApiError::new(
                ErrorCode::FunctionFailed,
                format!("onnx runtime failed: {reason}"),
            )
        })?;
        Ok(Outcome {
            outputs,
            cold_start,
        })
    }

    async fn instance(
        &self,
        version: &Arc<FunctionVersion>,
    ) -> Result<(Arc<Instance>, bool), ApiError> {
        let cell = self
            .instances
            .lock()
            .expect("instances lock")
            .entry(key_of(version))
            .or_default()
            .clone();
        if let Some(instance) = cell.get() {
            return Ok((instance.clone(), false));
        }
        // The cold start runs in its own task: a caller that gives up (its
        // deadline passed) does not cancel it, so the next caller finds it warm.
        let (registry, options, version) = (self.registry.clone(), self.options, version.clone());
        let loading = tokio::spawn(async move {
            cell.get_or_try_init(|| cold_start(registry, options, version))
                .await
                .cloned()
        });
        let instance = loading.await.map_err(|e| {
            ApiError::new(
                ErrorCode::FunctionFailed,
                format!("cold start task failed: {e}"),
            )
        })??;
        Ok((instance, true))
    }
}

async fn cold_start(
    registry: Arc<Registry>,
    options: SessionOptions,
    version: Arc<FunctionVersion>,
) -> Result<Arc<Instance>, ApiError> {
    let started = Instant::now();
    let bytes = registry.models().get(version.model_hex()).await.map_err(|e| {
            tracing::error!(function = %version.name, version = version.version, error = %e, "model fetch failed");
            ApiError::new(ErrorCode::Unavailable, format!("model {} is not available on this node", version.definition.model))
                .with_retry_after(1)
        })?;
    let fetched = started.elapsed();
    let session = tokio::task::spawn_blocking(move || session::build_session(&bytes, options))
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::FunctionFailed,
                format!("session task failed: {e}"),
            )
        })?
        .map_err(|reason| {
            ApiError::new(
                ErrorCode::FunctionFailed,
                format!("loading the model failed: {reason}"),
            )
        })?;
    tracing::info!(
        function = %version.name,
        version = version.version,
        provider = "cpu",
        fetch_ms = fetched.as_secs_f64() * 1e3,
        load_ms = (started.elapsed() - fetched).as_secs_f64() * 1e3,
        "cold start"
    );
    Ok(Arc::new(Instance {
        session: Mutex::new(session),
    }))
}

/// Terminates a run when the call waiting for it goes away.
struct TerminateOnDrop(Arc<RunOptions>);

impl Drop for TerminateOnDrop {
    fn drop(&mut self) {
        // Terminating a finished run is harmless: these options are used once.
        let _ = self.0.terminate();
    }
}

fn key_of(version: &FunctionVersion) -> VersionKey {
    (
        version.tenant.clone(),
        version.name.clone(),
        version.version,
    )
}
