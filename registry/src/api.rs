//! The registry's admin HTTP API (contract paths under `/v1`; pipelines:
//! [`pipelines`]).

pub mod pipelines;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::Router;
use contract::http::{error_response, json_response, read_body};
use contract::limits::{MAX_ARTIFACT_BYTES, MAX_DEFINITION_BYTES, MAX_MODEL_BYTES};
use contract::{ApiError, ErrorCode};
use serde_json::Value;

use crate::auth::{Auth, NewClient, Principal, Scope};
use crate::rollout_driver::{Action, Rollouts};
use crate::service::Registry;
use crate::wire::{
    AliasList, AliasView, ClientList, ClientView, ClientWithKey, FunctionDetail, FunctionEntry,
    FunctionList, Health, NodeList, Registered, RolloutList, RolloutView, Stored, VersionView,
};
use contract::definition::Syntax;
use contract::openapi::OPENAPI_PATH;

/// What the admin handlers share.
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub auth: Arc<Auth>,
    pub nodes: Option<Arc<dyn NodeDirectory>>,
    pub rollouts: Option<Arc<Rollouts>>,
}

/// The live runtime nodes, as `GET /v1/nodes` shows them.
#[async_trait::async_trait]
pub trait NodeDirectory: Send + Sync {
    /// One JSON object per node; `tenant` limits the functions shown (None: all).
    async fn nodes(&self, tenant: Option<&str>) -> Result<Vec<Value>, ApiError>;
}

type State_ = State<Arc<AdminState>>;

/// The caller, who must hold the admin scope.
async fn admin(state: &AdminState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = state.auth.authenticate(authorization).await?;
    principal.require(Scope::Admin)?;
    Ok(principal)
}

struct ApiResult(Result<Response, ApiError>);

impl IntoResponse for ApiResult {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(response) => response,
            Err(err) => error_response(&err),
        }
    }
}

/// The admin API router.
pub fn router(
    registry: Arc<Registry>,
    auth: Arc<Auth>,
    nodes: Option<Arc<dyn NodeDirectory>>,
) -> Router {
    router_with_rollouts(registry, auth, nodes, None)
}

/// Every route of the admin API: the router is built from this list, and
/// the OpenAPI document's test (`crate::openapi`) checks each against it.
pub(crate) fn routes() -> Vec<(&'static str, MethodRouter<Arc<AdminState>>)> {
    vec![
        ("/v1/models", post(upload_model)),
        ("/v1/artifacts", post(upload_artifact)),
        ("/v1/clients", post(create_client).get(list_clients)),
        ("/v1/clients/{id}", axum::routing::delete(revoke_client)),
        ("/v1/clients/{id}/rotate", post(rotate_client)),
        ("/v1/nodes", get(list_nodes)),
        ("/v1/functions", post(register_function).get(list_functions)),
        ("/v1/functions/{name}", get(get_function)),
        ("/v1/functions/{name}/versions/{version}", get(get_version)),
        (
            "/v1/pipelines",
            post(pipelines::register).get(pipelines::list),
        ),
        ("/v1/pipelines/{name}", get(pipelines::get)),
        (
            "/v1/pipelines/{name}/versions/{version}",
            get(pipelines::get_version),
        ),
        ("/v1/functions/{name}/aliases", get(list_aliases)),
        (
            "/v1/functions/{name}/aliases/{alias}",
            put(put_alias).get(get_alias).delete(delete_alias),
        ),
        (
            "/v1/functions/{name}/rollouts",
            post(start_rollout).get(list_rollouts),
        ),
        ("/v1/functions/{name}/rollouts/{id}", get(get_rollout)),
        (
            "/v1/functions/{name}/rollouts/{id}/{action}",
            post(control_rollout),
        ),
        ("/metrics", get(rollout_metrics)),
        (
            "/healthz",
            get(|| async {
                reply(
                    StatusCode::OK,
                    &Health {
                        status: "ok".into(),
                    },
                )
            }),
        ),
        (
            OPENAPI_PATH,
            get(|| async { json_response(StatusCode::OK, crate::openapi::document()) }),
        ),
    ]
}

/// A JSON response from one of the API's response types (`crate::wire`).
fn reply<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    json_response(status, &serde_json::to_value(body).unwrap_or(Value::Null))
}

/// The admin API router, with the rollout routes served by `rollouts`
/// (without it they answer 503 `unavailable`).
pub fn router_with_rollouts(
    registry: Arc<Registry>,
    auth: Arc<Auth>,
    nodes: Option<Arc<dyn NodeDirectory>>,
    rollouts: Option<Arc<Rollouts>>,
) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, route)| {
            router.route(path, route)
        })
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Arc::new(AdminState {
            registry,
            auth,
            nodes,
            rollouts,
        }))
}

async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    error_response(&ApiError::not_found(format!(
        "no route for {method} {}",
        uri.path()
    )))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    error_response(&ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    ))
}

async fn upload_model(State(state): State_, headers: HeaderMap, body: Body) -> ApiResult {
    ApiResult(
        async {
            admin(&state, &headers).await?;
            let bytes = read_body(body, MAX_MODEL_BYTES).await?;
            let digest = state.registry.upload_model(&bytes).await?;
            Ok(reply(
                StatusCode::CREATED,
                &Stored {
                    digest,
                    size: bytes.len() as u64,
                },
            ))
        }
        .await,
    )
}

async fn upload_artifact(State(state): State_, headers: HeaderMap, body: Body) -> ApiResult {
    ApiResult(
        async {
            admin(&state, &headers).await?;
            let bytes = read_body(body, MAX_ARTIFACT_BYTES).await?;
            let digest = state.registry.upload_artifact(&bytes).await?;
            Ok(reply(
                StatusCode::CREATED,
                &Stored {
                    digest,
                    size: bytes.len() as u64,
                },
            ))
        }
        .await,
    )
}

async fn register_function(State(state): State_, headers: HeaderMap, body: Body) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let syntax = Syntax::from_content_type(content_type);
            let bytes = read_body(body, MAX_DEFINITION_BYTES).await?;
            let version = state
                .registry
                .register(&principal.tenant, &bytes, syntax)
                .await?;
            Ok(reply(
                StatusCode::CREATED,
                &Registered {
                    name: version.name.clone(),
                    version: version.version,
                },
            ))
        }
        .await,
    )
}

async fn list_functions(State(state): State_, headers: HeaderMap) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let functions = state.registry.list(&principal.tenant).await?;
            let functions = functions.into_iter().map(FunctionEntry::from).collect();
            Ok(reply(StatusCode::OK, &FunctionList { functions }))
        }
        .await,
    )
}

async fn get_function(
    State(state): State_,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let summary = state
                .registry
                .list(&principal.tenant)
                .await?
                .into_iter()
                .find(|f| f.name == name)
                .ok_or_else(|| ApiError::not_found(format!("function {name:?} not found")))?;
            let latest = state
                .registry
                .resolve(
                    &principal.tenant,
                    &name,
                    &crate::Qualifier::Version(summary.latest_version),
                )
                .await?;
            Ok(reply(
                StatusCode::OK,
                &FunctionDetail {
                    name: summary.name,
                    latest_version: summary.latest_version,
                    versions: summary.versions,
                    latest: VersionView::from(latest.as_ref()),
                },
            ))
        }
        .await,
    )
}

async fn get_version(
    State(state): State_,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let number: u32 = version.parse().map_err(|_| {
                ApiError::not_found(format!("function {name:?} has no version {version:?}"))
            })?;
            let found = state
                .registry
                .resolve(&principal.tenant, &name, &crate::Qualifier::Version(number))
                .await?;
            Ok(reply(StatusCode::OK, &VersionView::from(found.as_ref())))
        }
        .await,
    )
}

async fn list_aliases(
    State(state): State_,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let aliases = state
                .registry
                .list_aliases(&principal.tenant, &name)
                .await?;
            let aliases = aliases.iter().map(AliasView::from).collect();
            Ok(reply(StatusCode::OK, &AliasList { aliases }))
        }
        .await,
    )
}

async fn put_alias(
    State(state): State_,
    headers: HeaderMap,
    Path((name, alias)): Path<(String, String)>,
    body: Body,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            crate::aliases::check_name(&alias)?;
            let bytes = read_body(body, 64 * 1024).await?;
            let routes = crate::aliases::parse_body(&bytes)?;
            let record = state
                .registry
                .put_alias(&principal.tenant, &name, &alias, routes)
                .await?;
            Ok(reply(StatusCode::OK, &AliasView::from(&record)))
        }
        .await,
    )
}

async fn get_alias(
    State(state): State_,
    headers: HeaderMap,
    Path((name, alias)): Path<(String, String)>,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            state
                .registry
                .require_function(&principal.tenant, &name)
                .await?;
            let record = state
                .registry
                .store()
                .get_alias(&principal.tenant, &name, &alias)
                .await
                .map_err(crate::store::store_error)?
                .ok_or_else(|| {
                    ApiError::not_found(format!("function {name:?} has no alias {alias:?}"))
                })?;
            Ok(reply(StatusCode::OK, &AliasView::from(&record)))
        }
        .await,
    )
}

async fn delete_alias(
    State(state): State_,
    headers: HeaderMap,
    Path((name, alias)): Path<(String, String)>,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            state
                .registry
                .delete_alias(&principal.tenant, &name, &alias)
                .await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

fn rollouts(state: &AdminState) -> Result<&Arc<Rollouts>, ApiError> {
    state.rollouts.as_ref().ok_or_else(|| {
        ApiError::new(ErrorCode::Unavailable, "rollouts are not served here").with_retry_after(1)
    })
}

async fn start_rollout(
    State(state): State_,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let bytes = read_body(body, 64 * 1024).await?;
            let record = rollouts(&state)?
                .start(&principal.tenant, &name, &bytes)
                .await?;
            Ok(reply(StatusCode::CREATED, &RolloutView::from(&record)))
        }
        .await,
    )
}

async fn list_rollouts(
    State(state): State_,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let list = rollouts(&state)?.list(&principal.tenant, &name).await?;
            let rollouts = list.iter().map(RolloutView::from).collect();
            Ok(reply(StatusCode::OK, &RolloutList { rollouts }))
        }
        .await,
    )
}

async fn get_rollout(
    State(state): State_,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let record = rollouts(&state)?.get(&principal.tenant, &name, &id).await?;
            Ok(reply(StatusCode::OK, &RolloutView::from(&record)))
        }
        .await,
    )
}

async fn control_rollout(
    State(state): State_,
    headers: HeaderMap,
    Path((name, id, action)): Path<(String, String, String)>,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let action = Action::from_path(&action).ok_or_else(|| {
                ApiError::not_found(format!(
                    "no rollout action {action:?} (pause, resume or abort)"
                ))
            })?;
            let record = rollouts(&state)?
                .control(&principal.tenant, &name, &id, action)
                .await?;
            Ok(reply(StatusCode::OK, &RolloutView::from(&record)))
        }
        .await,
    )
}

/// The rollout metrics name every tenant's functions and aliases: the
/// operator's key or one with the `metrics` scope.
async fn rollout_metrics(State(state): State_, headers: HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let allowed = match state.auth.authenticate(authorization).await {
        Ok(principal) => principal.require(Scope::Metrics),
        Err(err) => Err(err),
    };
    if let Err(err) = allowed {
        return error_response(&err);
    }
    let mut text = state
        .rollouts
        .as_ref()
        .map(|r| r.metrics_text())
        .unwrap_or_default();
    text.push_str("\n# EOF\n");
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn create_client(State(state): State_, headers: HeaderMap, body: Body) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let bytes = read_body(body, 64 * 1024).await?;
            let request: NewClient = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidInput,
                    format!("invalid client request: {e}"),
                )
            })?;
            let (record, key) = state.auth.create_client(&principal, request).await?;
            Ok(reply(
                StatusCode::CREATED,
                &ClientWithKey::new(&record, &key),
            ))
        }
        .await,
    )
}

async fn list_clients(State(state): State_, headers: HeaderMap) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let clients = state.auth.list_clients(&principal).await?;
            let clients = clients.iter().map(ClientView::from).collect();
            Ok(reply(StatusCode::OK, &ClientList { clients }))
        }
        .await,
    )
}

async fn revoke_client(
    State(state): State_,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            state.auth.revoke_client(&principal, &id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

async fn rotate_client(
    State(state): State_,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let (record, key) = state.auth.rotate_client(&principal, &id).await?;
            Ok(reply(StatusCode::OK, &ClientWithKey::new(&record, &key)))
        }
        .await,
    )
}

async fn list_nodes(State(state): State_, headers: HeaderMap) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let tenant = (!principal.has(Scope::Operator)).then_some(principal.tenant.as_str());
            let nodes = match &state.nodes {
                Some(directory) => directory.nodes(tenant).await?,
                None => Vec::new(),
            };
            Ok(reply(StatusCode::OK, &NodeList { nodes }))
        }
        .await,
    )
}
