//! The router's own response bodies, as types for its OpenAPI document
//! (`openapi`): what the router writes itself, named once.
//!
//! Bottom layer: names nothing else in the crate.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// `/healthz`: `{"status": "ok"}`.
#[derive(Serialize, ToSchema)]
pub struct RouterHealth {
    pub status: String,
}

/// `/readyz`: `ready` with the live nodes, or (503) `draining`.
#[derive(Serialize, ToSchema)]
pub struct RouterReady {
    /// `ready` or `draining`.
    pub status: String,
    /// How many runtime nodes this router sees.
    pub nodes: u64,
}

/// OIP `GET /v2/health/live`.
#[derive(Serialize, ToSchema)]
pub struct ServerLive {
    pub live: bool,
}

/// OIP `GET /v2/health/ready`.
#[derive(Serialize, ToSchema)]
pub struct ServerReady {
    pub ready: bool,
}

/// OIP model readiness.
#[derive(Serialize, ToSchema)]
pub struct ModelReady {
    pub name: String,
    /// The resolved version, as a string (as OIP spells versions).
    pub version: String,
    pub ready: bool,
}

/// The error body on the OIP paths (`/v2`), as KServe and Triton clients
/// read it; the contract's code is in `x-taskmesh-error-code`.
#[derive(Serialize, ToSchema)]
pub struct OipError {
    pub error: String,
}

/// An OIP inference request, briefly: its input tensors (`name`, `shape`,
/// `datatype`, `data`, as the protocol defines them); other fields pass.
#[derive(Serialize, ToSchema)]
pub struct InferRequest {
    #[schema(value_type = Vec<Object>)]
    pub inputs: Vec<Value>,
}

/// A task's status and where it is (`POST …/tasks`).
#[derive(Serialize, ToSchema)]
pub struct TaskSubmitted {
    pub task_id: String,
    /// `queued` for a new task; a replayed idempotency key gives the earlier
    /// task's current status.
    pub status: String,
}

/// An error as a task keeps it.
#[derive(Serialize, ToSchema)]
pub struct TaskErrorView {
    pub code: String,
    pub message: String,
}

/// A task (`GET /v1/tasks/{id}`).
#[derive(Serialize, ToSchema)]
pub struct Task {
    pub task_id: String,
    /// The function it calls (`null` for a pipeline's task).
    pub function: Option<String>,
    /// The pipeline it runs (only on a pipeline's task).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    pub version: u32,
    /// `queued`, `running`, `succeeded`, `failed` (will be retried), `dead` or `cancelled`.
    pub status: String,
    /// `high`, `normal` or `low`.
    pub priority: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub cost: u64,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub updated_at: String,
    /// The function's output, once it succeeded.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<TaskErrorView>,
    /// Where the finished task is POSTed, if anywhere.
    pub callback_url: Option<String>,
}

/// `GET /v1/callbacks/secret`: what the caller checks its callbacks with.
#[derive(Serialize, ToSchema)]
pub struct CallbackSecret {
    /// `whsec_` and 64 hex digits; the HMAC-SHA256 key of the signatures.
    pub secret: String,
    /// `hmac-sha256`.
    pub algorithm: String,
    /// `x-taskmesh-signature`.
    pub header: String,
    /// How the header is formed.
    pub signed: String,
}

/// `GET /v1/tasks`: newest first.
#[derive(Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
}
