//! The admin API's response bodies, as types: the handlers serialize these,
//! and the OpenAPI document (`openapi`) derives its schemas from them, so
//! the two cannot drift.
//!
//! Layer: names `aliases`, `clients`, `rollouts` and `store` (records only).

use contract::pipeline::{PipelineDefinition, PipelineVersion};
use contract::{FunctionVersion, Scope};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::aliases::AliasRecord;
use crate::clients::ClientRecord;
use crate::rollouts::{Evidence, RolloutRecord, RolloutState};
use crate::store::FunctionSummary;

/// One route of an alias: a version and its weight (`policies::split::Route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct WeightedRoute {
    #[schema(minimum = 1)]
    pub version: u32,
    pub weight: u32,
}

impl From<&policies::split::Route> for WeightedRoute {
    fn from(r: &policies::split::Route) -> Self {
        WeightedRoute {
            version: r.version,
            weight: r.weight,
        }
    }
}

fn routes(routes: &[policies::split::Route]) -> Vec<WeightedRoute> {
    routes.iter().map(WeightedRoute::from).collect()
}

/// `{"status": "ok"}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

/// A stored model or artifact: its content address and size.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Stored {
    /// `sha256:<hex>`.
    #[schema(pattern = "^sha256:[0-9a-f]{64}$")]
    pub digest: String,
    pub size: u64,
}

/// A registered function version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Registered {
    pub name: String,
    #[schema(minimum = 1)]
    pub version: u32,
}

/// A function's name and versions.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FunctionEntry {
    pub name: String,
    pub latest_version: u32,
    pub versions: Vec<u32>,
}

impl From<FunctionSummary> for FunctionEntry {
    fn from(f: FunctionSummary) -> Self {
        FunctionEntry {
            name: f.name,
            latest_version: f.latest_version,
            versions: f.versions,
        }
    }
}

/// `GET /v1/functions`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FunctionList {
    pub functions: Vec<FunctionEntry>,
}

/// A version as the API shows it (the tenant is implied by the caller's key).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VersionView {
    pub name: String,
    pub version: u32,
    pub created_at_ms: u64,
    /// The task definition as registered (README: "Task definitions").
    #[schema(value_type = Object)]
    pub definition: Value,
    /// The model's inputs and outputs, read from the ONNX file.
    #[schema(value_type = Object)]
    pub signature: Value,
    /// How each input field binds to a model tensor.
    #[schema(value_type = Vec<Object>)]
    pub inputs: Value,
    /// How each output field binds to a model tensor.
    #[schema(value_type = Vec<Object>)]
    pub outputs: Value,
    /// The JSON Schema an invoke body is checked against.
    #[schema(value_type = Object)]
    pub effective_input_schema: Value,
}

impl From<&FunctionVersion> for VersionView {
    fn from(v: &FunctionVersion) -> Self {
        let schema = v
            .definition
            .input_schema
            .clone()
            .unwrap_or_else(|| contract::schema::derived_input_schema(&v.inputs));
        let json = |x: Result<Value, serde_json::Error>| x.unwrap_or(Value::Null);
        VersionView {
            name: v.name.clone(),
            version: v.version,
            created_at_ms: v.created_at_ms,
            definition: json(serde_json::to_value(&v.definition)),
            signature: json(serde_json::to_value(&v.signature)),
            inputs: json(serde_json::to_value(&v.inputs)),
            outputs: json(serde_json::to_value(&v.outputs)),
            effective_input_schema: schema,
        }
    }
}

/// `GET /v1/functions/{name}`: the versions and the latest one.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FunctionDetail {
    pub name: String,
    pub latest_version: u32,
    pub versions: Vec<u32>,
    pub latest: VersionView,
}

/// An alias as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AliasView {
    pub function: String,
    pub alias: String,
    pub routes: Vec<WeightedRoute>,
    pub updated_at_ms: u64,
}

impl From<&AliasRecord> for AliasView {
    fn from(a: &AliasRecord) -> Self {
        AliasView {
            function: a.function.clone(),
            alias: a.name.clone(),
            routes: routes(&a.routes),
            updated_at_ms: a.updated_at_ms,
        }
    }
}

/// `GET /v1/functions/{name}/aliases`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AliasList {
    pub aliases: Vec<AliasView>,
}

/// A client and its key, as creation and rotation answer (the key is shown once).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClientWithKey {
    pub client_id: String,
    pub api_key: String,
    pub name: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
}

/// A client as `GET /v1/clients` lists it (no key, no hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClientView {
    pub client_id: String,
    pub name: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    /// Its own rate limit and quota, if it has a plan.
    #[schema(value_type = Object)]
    pub plan: contract::principal::Plan,
    pub created_at_ms: u64,
}

impl From<&ClientRecord> for ClientView {
    fn from(r: &ClientRecord) -> Self {
        ClientView {
            client_id: r.client_id.clone(),
            name: r.name.clone(),
            tenant: r.tenant.clone(),
            scopes: r.scopes.clone(),
            plan: r.plan.clone(),
            created_at_ms: r.created_at_ms,
        }
    }
}

/// `GET /v1/clients`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ClientList {
    pub clients: Vec<ClientView>,
}

impl ClientWithKey {
    pub fn new(record: &ClientRecord, key: &str) -> Self {
        ClientWithKey {
            client_id: record.client_id.clone(),
            api_key: key.to_string(),
            name: record.name.clone(),
            tenant: record.tenant.clone(),
            scopes: record.scopes.clone(),
        }
    }
}

/// `GET /v1/nodes`: one object per live runtime node (address, load, warm
/// instances).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodeList {
    #[schema(value_type = Vec<Object>)]
    pub nodes: Vec<Value>,
}

/// One step of a rollout, with its evidence (counter baselines left out).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StepView {
    pub percent: u32,
    pub routes: Vec<WeightedRoute>,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    /// `passed`, `breached` or `aborted`; null while the step holds.
    pub verdict: Option<String>,
    pub new: Evidence,
    pub old: Evidence,
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RolloutView {
    pub id: String,
    pub function: String,
    pub alias: String,
    pub to_version: u32,
    pub state: RolloutState,
    /// The final state once it ended; null while active.
    pub outcome: Option<RolloutState>,
    pub step: u64,
    pub percent: u32,
    pub steps_planned: Vec<u32>,
    pub step_interval_s: u64,
    pub min_calls_per_step: u64,
    pub max_error_rate: f64,
    pub max_p99_ms: Option<f64>,
    pub error_rate_margin: f64,
    pub p99_ratio: f64,
    pub previous_routes: Vec<WeightedRoute>,
    pub steps: Vec<StepView>,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub finished_at_ms: Option<u64>,
}

impl From<&RolloutRecord> for RolloutView {
    fn from(r: &RolloutRecord) -> Self {
        let steps = r
            .steps
            .iter()
            .map(|s| StepView {
                percent: s.percent,
                routes: routes(&s.routes),
                started_at_ms: s.started_at_ms,
                ended_at_ms: s.ended_at_ms,
                verdict: s.verdict.clone(),
                new: s.new.clone(),
                old: s.old.clone(),
            })
            .collect();
        RolloutView {
            id: r.id.clone(),
            function: r.function.clone(),
            alias: r.alias.clone(),
            to_version: r.to_version,
            state: r.state,
            outcome: (!r.is_active()).then_some(r.state),
            step: r.step as u64,
            percent: r.percent(),
            steps_planned: r.spec.steps.clone(),
            step_interval_s: r.spec.step_interval_s,
            min_calls_per_step: r.spec.min_calls_per_step,
            max_error_rate: r.spec.max_error_rate,
            max_p99_ms: r.spec.max_p99_ms,
            error_rate_margin: r.spec.error_rate_margin,
            p99_ratio: r.spec.p99_ratio,
            previous_routes: routes(&r.previous_routes),
            steps,
            status: r.status.clone(),
            reason: r.reason.clone(),
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
            finished_at_ms: r.finished_at_ms,
        }
    }
}

/// `GET /v1/functions/{name}/rollouts`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RolloutList {
    pub rollouts: Vec<RolloutView>,
}

/// One version of a pipeline, as read back.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PipelineView {
    pub name: String,
    pub version: u32,
    pub created_at_ms: u64,
    pub definition: PipelineDefinition,
}

impl From<&PipelineVersion> for PipelineView {
    fn from(p: &PipelineVersion) -> Self {
        PipelineView {
            name: p.name.clone(),
            version: p.version,
            created_at_ms: p.created_at_ms,
            definition: p.definition.clone(),
        }
    }
}

/// `GET /v1/pipelines/{name}`: the versions and the latest one whole.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PipelineDetail {
    pub name: String,
    pub latest_version: u32,
    pub versions: Vec<u32>,
    pub latest: PipelineView,
}

/// `GET /v1/pipelines`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PipelineList {
    pub pipelines: Vec<FunctionEntry>,
}
