//! The admin API's OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! Request and response schemas are derived from the types the handlers
//! read and write (`crate::wire`, `NewClient`, `AliasBody`, `StartBody`,
//! `contract::ErrorBody`); the test below fails when a route of
//! `crate::api::routes` (path or method) is missing here, or one here is not
//! served.
//!
//! Layer: names `wire`, `auth`, `aliases` and `rollout_driver` (their types).

use std::sync::OnceLock;

use contract::names::NAME_PATTERN;
use contract::openapi::{
    self as doc, empty_response, finish, json_body, json_response, operation, path_param, response,
    schema_ref, string_matching, Route, OPENMETRICS,
};
use serde_json::{json, Value};
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};

use crate::aliases::AliasBody;
use crate::auth::NewClient;
use crate::rollout_driver::StartBody;
use crate::wire::{
    AliasList, AliasView, ClientList, ClientWithKey, FunctionDetail, FunctionList, Health,
    NodeList, PipelineDetail, PipelineList, PipelineView, Registered, RolloutList, RolloutView,
    Stored, VersionView,
};

/// The document as JSON, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| serde_json::to_value(openapi()).unwrap_or(Value::Null))
}

/// Errors any call with a key can get: a missing or bad key, a key without
/// the admin scope, the store unavailable or failing.
const KEYED: [u16; 4] = [401, 403, 500, 503];

fn secured(method: HttpMethod, path: &'static str, b: OpBuilder, errors: &[u16]) -> Route {
    let all: Vec<u16> = KEYED.iter().chain(errors).copied().collect();
    finish(method, path, b, true, &all)
}

type OpBuilder = utoipa::openapi::path::OperationBuilder;

fn name() -> utoipa::openapi::path::Parameter {
    path_param(
        "name",
        "The function's name.",
        string_matching(NAME_PATTERN),
    )
}

fn pipeline_name() -> utoipa::openapi::path::Parameter {
    path_param(
        "name",
        "The pipeline's name.",
        string_matching(NAME_PATTERN),
    )
}

fn pipeline_example() -> Value {
    json!({"name": "look-and-describe",
        "input_schema": {"type": "object", "required": ["image"]},
        "steps": [
            {"id": "classify", "function": "fashion-mnist", "input": {"image": "$.input.image"}},
            {"id": "describe", "function": "minilm-embed", "input": {"text": "$.steps.classify.label"}}
        ],
        "output": {"label": "$.steps.classify.label", "embedding": "$.steps.describe.embedding"}})
}

fn bytes() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
        .min_length(Some(1))
        .into()
}

fn ok<T: utoipa::ToSchema>(description: &str) -> utoipa::openapi::Response {
    json_response(description, schema_ref::<T>())
}

/// Every operation of the admin API.
fn routes() -> Vec<Route> {
    use HttpMethod::{Delete, Get, Post, Put};
    let upload = |id, what: &str| {
        operation(id, "models", &format!("Upload {what} (content-addressed)"))
            .request_body(Some(doc::body("application/octet-stream", bytes(), None)))
            .response("201", ok::<Stored>("Stored: its digest and size."))
    };
    let definition = json!({"name": "digits", "model": format!("sha256:{}", "0".repeat(64)),
        "inputs": {"pixels": {"tensor": "float_input", "dtype": "float32", "shape": [1, 64]}},
        "outputs": {"label": {"tensor": "label", "take": "first"}}});
    vec![
        secured(Post, "/v1/models", upload("upload_model", "an ONNX model"), &[413, 422]),
        secured(
            Post,
            "/v1/artifacts",
            upload("upload_artifact", "an artifact (a tokenizer.json)"),
            &[413, 422],
        ),
        secured(
            Post,
            "/v1/functions",
            operation("register_function", "functions", "Register the next version of a function")
                .description(Some("The body is a task definition (README: \"Task definitions\"); YAML is accepted with `content-type: application/yaml`."))
                .request_body(Some(json_body(doc::free_object(), Some(definition))))
                .response("201", ok::<Registered>("The new version.")),
            &[400, 413, 422],
        ),
        secured(
            Get,
            "/v1/functions",
            operation("list_functions", "functions", "List the caller's functions")
                .response("200", ok::<FunctionList>("The functions and their versions.")),
            &[],
        ),
        secured(
            Get,
            "/v1/functions/{name}",
            operation("get_function", "functions", "A function: its versions and the latest")
                .parameter(name())
                .response("200", ok::<FunctionDetail>("The function.")),
            &[404],
        ),
        secured(
            Post,
            "/v1/pipelines",
            operation("register_pipeline", "pipelines", "Register the next version of a pipeline")
                .description(Some("A graph of steps over the tenant's functions (README: \"Pipelines\"); YAML is accepted with `content-type: application/yaml`. Unknown functions or steps, cycles and a `foreach` that is not a reference are 422 with JSON pointers."))
                .request_body(Some(json_body(doc::free_object(), Some(pipeline_example()))))
                .response("201", ok::<Registered>("The new version.")),
            &[400, 413, 422],
        ),
        secured(
            Get,
            "/v1/pipelines",
            operation("list_pipelines", "pipelines", "List the caller's pipelines")
                .response("200", ok::<PipelineList>("The pipelines and their versions.")),
            &[],
        ),
        secured(
            Get,
            "/v1/pipelines/{name}",
            operation("get_pipeline", "pipelines", "A pipeline: its versions and the latest")
                .parameter(pipeline_name())
                .response("200", ok::<PipelineDetail>("The pipeline.")),
            &[404],
        ),
        secured(
            Get,
            "/v1/pipelines/{name}/versions/{version}",
            operation("get_pipeline_version", "pipelines", "One immutable version of a pipeline")
                .parameter(pipeline_name())
                .parameter(path_param("version", "The version number.", doc::version_number()))
                .response("200", ok::<PipelineView>("The version.")),
            &[404],
        ),
        secured(
            Get,
            "/v1/functions/{name}/versions/{version}",
            operation("get_version", "functions", "One immutable version")
                .parameter(name())
                .parameter(path_param("version", "The version number.", doc::version_number()))
                .response("200", ok::<VersionView>("The version.")),
            &[404],
        ),
        secured(
            Get,
            "/v1/functions/{name}/aliases",
            operation("list_aliases", "aliases", "List a function's aliases")
                .parameter(name())
                .response("200", ok::<AliasList>("The aliases.")),
            &[404],
        ),
        secured(
            Put,
            "/v1/functions/{name}/aliases/{alias}",
            operation("put_alias", "aliases", "Set an alias to weighted versions")
                .parameter(name())
                .parameter(alias())
                .request_body(Some(json_body(
                    schema_ref::<AliasBody>(),
                    Some(json!({"routes": [{"version": 1, "weight": 100}]})),
                )))
                .response("200", ok::<AliasView>("The alias as stored.")),
            &[404, 409, 413, 422],
        ),
        secured(
            Get,
            "/v1/functions/{name}/aliases/{alias}",
            operation("get_alias", "aliases", "Read an alias")
                .parameter(name())
                .parameter(alias())
                .response("200", ok::<AliasView>("The alias.")),
            &[404],
        ),
        secured(
            Delete,
            "/v1/functions/{name}/aliases/{alias}",
            operation("delete_alias", "aliases", "Delete an alias")
                .parameter(name())
                .parameter(alias())
                .response("204", empty_response("Deleted.")),
            &[404, 409],
        ),
        secured(
            Post,
            "/v1/functions/{name}/rollouts",
            operation("start_rollout", "rollouts", "Start an automated canary rollout")
                .parameter(name())
                .request_body(Some(json_body(
                    schema_ref::<StartBody>(),
                    Some(json!({"alias": "live", "to_version": 2})),
                )))
                .response("201", ok::<RolloutView>("The rollout.")),
            &[404, 409, 413, 422],
        ),
        secured(
            Get,
            "/v1/functions/{name}/rollouts",
            operation("list_rollouts", "rollouts", "List a function's rollouts")
                .parameter(name())
                .response("200", ok::<RolloutList>("The rollouts.")),
            &[404],
        ),
        secured(
            Get,
            "/v1/functions/{name}/rollouts/{id}",
            operation("get_rollout", "rollouts", "Read a rollout")
                .parameter(name())
                .parameter(rollout_id())
                .response("200", ok::<RolloutView>("The rollout.")),
            &[404],
        ),
        secured(
            Post,
            "/v1/functions/{name}/rollouts/{id}/{action}",
            operation("control_rollout", "rollouts", "Pause, resume or abort a rollout")
                .parameter(name())
                .parameter(rollout_id())
                .parameter(path_param(
                    "action",
                    "What to do.",
                    ObjectBuilder::new()
                        .schema_type(SchemaType::Type(Type::String))
                        .enum_values(Some(["pause", "resume", "abort"]))
                        .into(),
                ))
                .response("200", ok::<RolloutView>("The rollout after the action.")),
            &[404, 409],
        ),
        secured(
            Post,
            "/v1/clients",
            operation("create_client", "clients", "Create a client and its API key")
                .description(Some("The key is shown once. An operator may name any tenant; an admin only its own."))
                .request_body(Some(json_body(
                    schema_ref::<NewClient>(),
                    Some(json!({"name": "web-app", "scopes": ["invoke"]})),
                )))
                .response("201", ok::<ClientWithKey>("The client and its key.")),
            &[404, 409, 413, 422],
        ),
        secured(
            Get,
            "/v1/clients",
            operation("list_clients", "clients", "List clients (never their keys)")
                .description(Some("An operator sees every tenant's clients; an admin only its own tenant's."))
                .response("200", ok::<ClientList>("The clients.")),
            &[],
        ),
        secured(
            Delete,
            "/v1/clients/{id}",
            operation("revoke_client", "clients", "Revoke a client's key")
                .parameter(client_id())
                .response("204", empty_response("Revoked.")),
            &[404],
        ),
        secured(
            Post,
            "/v1/clients/{id}/rotate",
            operation("rotate_client", "clients", "Give a client a new key (the old one stops)")
                .parameter(client_id())
                .response("200", ok::<ClientWithKey>("The client and its new key.")),
            &[404],
        ),
        secured(
            Get,
            "/v1/nodes",
            operation("list_nodes", "nodes", "The live runtime nodes, their load and warm instances")
                .response("200", ok::<NodeList>("The nodes.")),
            &[],
        ),
        secured(
            Get,
            "/metrics",
            operation("metrics", "operations", "Rollout metrics (the operator's key or the metrics scope)")
                .response("200", response("OpenMetrics text.", OPENMETRICS, doc::string())),
            &[],
        ),
        finish(
            Get,
            "/healthz",
            operation("health", "operations", "Liveness")
                .response("200", ok::<Health>("Alive.")),
            false,
            &[],
        ),
        finish(
            Get,
            contract::openapi::OPENAPI_PATH,
            operation("openapi", "operations", "This document")
                .response("200", json_response("The OpenAPI document.", doc::free_object())),
            false,
            &[],
        ),
    ]
}

fn alias() -> utoipa::openapi::path::Parameter {
    path_param("alias", "The alias's name.", string_matching(NAME_PATTERN))
}

fn rollout_id() -> utoipa::openapi::path::Parameter {
    path_param(
        "id",
        "The rollout's id (`r` and hex digits).",
        string_matching("^r[0-9a-f]+$"),
    )
}

fn client_id() -> utoipa::openapi::path::Parameter {
    path_param(
        "id",
        "The client's id (16 hex digits).",
        string_matching("^[0-9a-fA-F]{16}$"),
    )
}

/// The admin API's document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut schemas = Vec::new();
    doc::schemas_of::<Stored>(&mut schemas);
    doc::schemas_of::<Registered>(&mut schemas);
    doc::schemas_of::<FunctionList>(&mut schemas);
    doc::schemas_of::<FunctionDetail>(&mut schemas);
    doc::schemas_of::<VersionView>(&mut schemas);
    doc::schemas_of::<AliasBody>(&mut schemas);
    doc::schemas_of::<AliasView>(&mut schemas);
    doc::schemas_of::<AliasList>(&mut schemas);
    doc::schemas_of::<StartBody>(&mut schemas);
    doc::schemas_of::<RolloutView>(&mut schemas);
    doc::schemas_of::<RolloutList>(&mut schemas);
    doc::schemas_of::<NewClient>(&mut schemas);
    doc::schemas_of::<ClientWithKey>(&mut schemas);
    doc::schemas_of::<ClientList>(&mut schemas);
    doc::schemas_of::<NodeList>(&mut schemas);
    doc::schemas_of::<PipelineList>(&mut schemas);
    doc::schemas_of::<PipelineDetail>(&mut schemas);
    doc::schemas_of::<PipelineView>(&mut schemas);
    doc::schemas_of::<Health>(&mut schemas);
    doc::document(
        "Taskmesh registry admin API",
        "Functions, pipelines, versions, aliases, rollouts, clients and keys, and the model store. \
         Every error is `{\"error\": {\"code\", \"message\", \"details\"}}`.",
        routes(),
        doc::components(schemas),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use tower::ServiceExt;

    struct NoInspector;

    impl contract::ModelInspector for NoInspector {
        fn inspect(&self, _bytes: &[u8]) -> Result<contract::ModelSignature, String> {
            Err("not a model".into())
        }
        fn check_tokenizer(
            &self,
            _bytes: &[u8],
            _text: &contract::definition::TextSpec,
        ) -> Result<(), String> {
            Err("not a tokenizer".into())
        }
    }

    fn app(dir: &std::path::Path) -> axum::Router {
        let store: Arc<dyn crate::Store> =
            Arc::new(crate::EmbeddedStore::open(&dir.join("db.redb")).unwrap());
        let models = crate::ModelStore::open(dir.join("models")).unwrap();
        let registry = Arc::new(crate::Registry::new(
            store.clone(),
            models,
            Arc::new(NoInspector),
        ));
        let auth = Arc::new(crate::Auth::new(store, None));
        crate::api::router(registry, auth, None)
    }

    /// A concrete path for a template (`{name}` → `x`).
    fn concrete(template: &str) -> String {
        template
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Whether the router serves `method` on `path` (neither its 404
    /// fallback nor a 405).
    async fn served(app: &axum::Router, method: &Method, path: &str) -> bool {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        !(status == StatusCode::METHOD_NOT_ALLOWED
            || (status == StatusCode::NOT_FOUND && text.contains("no route for")))
    }

    #[tokio::test]
    async fn every_route_is_documented_and_every_operation_served() {
        let served_paths: BTreeSet<&str> = crate::api::routes().iter().map(|r| r.0).collect();
        let doc = document();
        let documented: BTreeSet<(String, String)> = doc::operations(doc).into_iter().collect();
        let documented_paths: BTreeSet<&str> = documented.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(served_paths, documented_paths);

        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        for path in &served_paths {
            for method in [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::PATCH,
            ] {
                let is_served = served(&app, &method, &concrete(path)).await;
                let is_documented = documented.contains(&(method.to_string(), path.to_string()));
                assert_eq!(
                    is_served, is_documented,
                    "{method} {path}: served {is_served}, documented {is_documented}"
                );
            }
        }
    }

    #[tokio::test]
    async fn the_document_is_served_without_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let response = app(dir.path())
            .oneshot(
                Request::builder()
                    .uri(contract::openapi::OPENAPI_PATH)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 22)
            .await
            .unwrap();
        let served: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(&served, document());
        assert_eq!(served["openapi"], "3.1.0");
        assert_eq!(
            served["paths"]["/v1/functions"]["post"]["security"][0]["bearer"],
            json!([])
        );
        let refs = serde_json::to_string(&served).unwrap();
        for name in refs.split("#/components/schemas/").skip(1) {
            let name = name.split('"').next().unwrap();
            assert!(
                served["components"]["schemas"][name].is_object(),
                "{name} is referenced but not defined"
            );
        }
    }
}
