//! The router's OpenAPI 3.1 document, served at `GET /openapi.json`
//! (`Endpoint::OpenApi`, answered by the router itself, without a key).
//!
//! It covers the `/v1` invoke API, the router's own endpoints and, briefly,
//! the Open Inference Protocol v2 paths (JSON objects as the protocol
//! defines them). A function's input and output are its own JSON, so they
//! are free-form objects here; `GET /v1/functions/{name}` on the admin API
//! shows a version's `effective_input_schema`. The error body and its codes
//! come from `contract::error`. The tests below fail when `routes::endpoint`
//! matches a path or method that is not documented, or the reverse.
//!
//! Layer: names `wire` (the response bodies) only.

use std::sync::OnceLock;

use contract::headers;
use contract::names::NAME_PATTERN;
use contract::openapi::{
    self as doc, finish, finish_with, free_object, json_body, json_response, operation, path_param,
    query_param, response, schema_ref, string_matching, with_header, Route, OPENAPI_PATH,
    OPENMETRICS,
};
use serde_json::{json, Value};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, Parameter};
use utoipa::ToSchema;

use crate::wire::{
    CallbackSecret, InferRequest, ModelReady, OipError, RouterHealth, RouterReady, ServerLive,
    ServerReady, Task, TaskList, TaskSubmitted,
};

/// The document as JSON, built once.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| serde_json::to_value(openapi()).unwrap_or(Value::Null))
}

/// The errors of a call that names a function: a bad key or scope, an
/// unknown function, and the store or every node unavailable.
const FUNCTION: [u16; 6] = [401, 403, 404, 429, 500, 503];

/// The errors of a call that carries a body to a node, on top of [`FUNCTION`].
const CALL: [u16; 6] = [400, 413, 422, 502, 504, 431];

fn name() -> Parameter {
    path_param(
        "name",
        "The function's name.",
        string_matching(NAME_PATTERN),
    )
}

fn version() -> Parameter {
    path_param("version", "A version number.", doc::version_number())
}

fn ok<T: ToSchema>(description: &str) -> utoipa::openapi::Response {
    json_response(description, schema_ref::<T>())
}

fn open(method: HttpMethod, path: &'static str, builder: OperationBuilder) -> Route {
    finish(method, path, builder, false, &[])
}

fn keyed(method: HttpMethod, path: &'static str, builder: OperationBuilder, call: bool) -> Route {
    let errors: Vec<u16> = if call {
        FUNCTION.iter().chain(&CALL).copied().collect()
    } else {
        FUNCTION.to_vec()
    };
    let error = if path.starts_with("/v2") {
        oip_error
    } else {
        doc::error_response
    };
    finish_with(method, path, builder, true, &errors, error)
}

fn oip_error(status: u16) -> utoipa::openapi::Response {
    let response = doc::error_response_with(
        status,
        schema_ref::<OipError>(),
        "`{\"error\": \"<message>\"}` (OIP), the code in `x-taskmesh-error-code`",
    );
    with_header(response, headers::ERROR_CODE, "The contract's error code.")
}

fn invoke() -> OperationBuilder {
    let output = [
        (headers::VERSION, "The version that ran."),
        (
            headers::COLD_START,
            "`true` when the call loaded its version.",
        ),
        (headers::INVOCATION_ID, "This call's id."),
    ]
    .into_iter()
    .fold(
        json_response("The function's JSON output.", free_object()),
        |r, (name, description)| with_header(r, name, description),
    );
    operation("invoke", "functions", "Invoke a function")
        .description(Some(
            "The body is the function's JSON input, checked against its input schema \
             (422 `invalid_input` with JSON pointers). Without `version` or `alias`, the \
             alias `live` is used when set, else the latest version.",
        ))
        .parameter(name())
        .parameter(query_param(
            "version",
            "Run this version.",
            doc::version_number(),
        ))
        .parameter(query_param(
            "alias",
            "Run the version this alias picks (not with `version`).",
            string_matching(NAME_PATTERN),
        ))
        .request_body(Some(json_body(
            free_object(),
            Some(json!({"pixels": vec![0.0; 64]})),
        )))
        .response("200", output)
}

fn oip(id: &str, summary: &str) -> OperationBuilder {
    operation(id, "oip", summary)
}

fn task_id() -> Parameter {
    path_param("id", "A task's id.", doc::string())
}

/// The task routes: submit, read, list, cancel, retry.
fn task_routes() -> Vec<Route> {
    use HttpMethod::{Delete, Get, Post};
    let located = |r| with_header(r, "location", "`/v1/tasks/{id}`.");
    let submit = operation("submit_task", "tasks", "Queue a task of a function")
        .description(Some(
            "Checked like an invoke (key, version, input, quota) and queued; the rate \
             limit paces it when it runs. `idempotency-key` (per client, 24 h) gives back \
             the earlier task with `idempotent-replayed: true`. A `callback_url` (query, \
             or the `x-taskmesh-callback-url` header) is POSTed the finished task, signed \
             (`GET /v1/callbacks/secret`); private addresses are refused unless the \
             operator allows them.",
        ))
        .parameter(name())
        .parameter(query_param(
            "version",
            "Run this version.",
            doc::version_number(),
        ))
        .parameter(query_param(
            "alias",
            "Run the version this alias picks now.",
            string_matching(NAME_PATTERN),
        ))
        .parameter(query_param(
            "callback_url",
            "POST the finished task here (http or https, a public address).",
            doc::string(),
        ))
        .request_body(Some(json_body(
            free_object(),
            Some(json!({"pixels": vec![0.0; 64]})),
        )))
        .response("202", located(ok::<TaskSubmitted>("Queued.")));
    let list = operation(
        "list_tasks",
        "tasks",
        "The caller's tenant's tasks, newest first",
    )
    .parameter(query_param(
        "function",
        "Only this function's.",
        doc::string(),
    ))
    .parameter(query_param(
        "status",
        "Only tasks in this status.",
        doc::string(),
    ))
    .parameter(query_param(
        "limit",
        "At most this many (1–1000, default 50).",
        doc::string(),
    ))
    .response("200", ok::<TaskList>("The tasks."));
    let get = operation("get_task", "tasks", "A task")
        .parameter(task_id())
        .response("200", ok::<Task>("The task."));
    let cancel = operation("cancel_task", "tasks", "Cancel a queued or failed task")
        .parameter(task_id())
        .response("200", ok::<Task>("Cancelled."));
    let retry = operation(
        "retry_task",
        "tasks",
        "Queue a dead or cancelled task again",
    )
    .parameter(task_id())
    .response(
        "202",
        located(ok::<Task>("Queued again, its attempts reset.")),
    );
    let secret = operation(
        "callback_secret",
        "tasks",
        "The caller's secret for checking its task callbacks",
    )
    .response("200", ok::<CallbackSecret>("The secret."));
    let store: [u16; 5] = [401, 403, 404, 500, 503];
    let with = |extra: &[u16]| -> Vec<u16> { store.iter().chain(extra).copied().collect() };
    vec![
        keyed(Post, "/v1/functions/{name}/tasks", submit, true),
        finish(Get, "/v1/tasks", list, true, &with(&[400])),
        finish(Get, "/v1/tasks/{id}", get, true, &store),
        finish(Delete, "/v1/tasks/{id}", cancel, true, &with(&[409])),
        finish(Post, "/v1/tasks/{id}/retry", retry, true, &with(&[409])),
        finish(
            Get,
            "/v1/callbacks/secret",
            secret,
            true,
            &[401, 403, 500, 503],
        ),
    ]
}

/// `POST /v1/pipelines/{name}/invoke` and `…/tasks`.
fn pipeline_routes() -> Vec<Route> {
    let run = operation("invoke_pipeline", "pipelines", "Run a pipeline")
        .description(Some(
            "Runs the pipeline's steps, each a call of a function of the caller's tenant \
             under the caller's key and limits. A failed step is 502 `step_failed` with \
             `details.step`; a guard step's refusal is 422 `refused`; the pipeline's \
             `timeout_ms` is 504. The header `x-taskmesh-pipeline-version` names the \
             version that ran.",
        ))
        .parameter(path_param(
            "name",
            "The pipeline's name.",
            string_matching(NAME_PATTERN),
        ))
        .parameter(query_param(
            "version",
            "Run this version (default: the latest).",
            doc::version_number(),
        ))
        .parameter(query_param(
            "trace",
            "`steps`: answer `{\"output\", \"steps\"}` with each step's version, node, cold start and time.",
            doc::string(),
        ))
        .request_body(Some(json_body(free_object(), None)))
        .response("200", json_response("The pipeline's output.", free_object()));
    let submit = operation(
        "submit_pipeline_task",
        "pipelines",
        "Queue a run of a pipeline",
    )
    .description(Some(
        "The input is checked against the pipeline's `input_schema` and queued as a \
             task (read it with `GET /v1/tasks/{id}`); its steps are admitted (limits, \
             quotas) when it runs. `idempotency-key`, `x-taskmesh-priority` and \
             `callback_url` as for a function's task.",
    ))
    .parameter(path_param(
        "name",
        "The pipeline's name.",
        string_matching(NAME_PATTERN),
    ))
    .parameter(query_param(
        "version",
        "Run this version (default: the latest).",
        doc::version_number(),
    ))
    .parameter(query_param(
        "callback_url",
        "POST the finished task here (http or https, a public address).",
        doc::string(),
    ))
    .request_body(Some(json_body(free_object(), None)))
    .response(
        "202",
        with_header(
            ok::<TaskSubmitted>("Queued."),
            "location",
            "`/v1/tasks/{id}`.",
        ),
    );
    vec![
        keyed(HttpMethod::Post, "/v1/pipelines/{name}/invoke", run, true),
        keyed(HttpMethod::Post, "/v1/pipelines/{name}/tasks", submit, true),
    ]
}

/// Every operation the router serves.
fn routes() -> Vec<Route> {
    use HttpMethod::{Get, Post};
    let metadata = || {
        oip("model_metadata", "OIP model metadata").response(
            "200",
            json_response("The model's metadata (OIP).", free_object()),
        )
    };
    let ready = || {
        oip(
            "model_ready",
            "OIP model readiness: 503 while no live node can serve it",
        )
        .response("200", ok::<ModelReady>("Ready."))
        .response("503", ok::<ModelReady>("Not ready."))
    };
    let infer = || {
        oip("model_infer", "OIP inference: raw tensors by name")
            .request_body(Some(json_body(
                schema_ref::<InferRequest>(),
                Some(json!({"inputs": [{"name": "float_input", "shape": [1, 64],
                    "datatype": "FP32", "data": vec![0.0; 64]}]})),
            )))
            .response(
                "200",
                json_response("The output tensors (OIP).", free_object()),
            )
    };
    let with_version = |b: OperationBuilder, id: &str| {
        b.operation_id(Some(id))
            .parameter(name())
            .parameter(version())
    };
    vec![
        keyed(Post, "/v1/functions/{name}/invoke", invoke(), true),
        open(
            Get,
            "/healthz",
            operation("health", "operations", "Liveness")
                .response("200", ok::<RouterHealth>("Alive.")),
        ),
        open(
            Get,
            "/readyz",
            operation("ready", "operations", "Readiness: 503 while draining")
                .response("200", ok::<RouterReady>("Ready."))
                .response("503", ok::<RouterReady>("Draining.")),
        ),
        finish(
            Get,
            "/metrics",
            operation(
                "metrics",
                "operations",
                "Metrics (the operator's key or the metrics scope)",
            )
            .response(
                "200",
                response("OpenMetrics text.", OPENMETRICS, doc::string()),
            ),
            true,
            &[401, 403, 500],
        ),
        open(
            Get,
            OPENAPI_PATH,
            operation("openapi", "operations", "This document")
                .response("200", json_response("The OpenAPI document.", free_object())),
        ),
        open(
            Get,
            "/v2/health/live",
            oip("server_live", "OIP server liveness").response("200", ok::<ServerLive>("Live.")),
        ),
        open(
            Get,
            "/v2/health/ready",
            oip(
                "server_ready",
                "OIP server readiness: 503 while draining or without nodes",
            )
            .response("200", ok::<ServerReady>("Ready."))
            .response("503", ok::<ServerReady>("Not ready.")),
        ),
        open(
            Get,
            "/v2",
            oip("server_metadata", "OIP server metadata").response(
                "200",
                json_response("Name, version and extensions (OIP).", free_object()),
            ),
        ),
        keyed(
            Get,
            "/v2/models/{name}",
            metadata().parameter(name()),
            false,
        ),
        keyed(
            Get,
            "/v2/models/{name}/versions/{version}",
            with_version(metadata(), "model_version_metadata"),
            false,
        ),
        keyed(
            Get,
            "/v2/models/{name}/ready",
            ready().parameter(name()),
            false,
        ),
        keyed(
            Get,
            "/v2/models/{name}/versions/{version}/ready",
            with_version(ready(), "model_version_ready"),
            false,
        ),
        keyed(
            Post,
            "/v2/models/{name}/infer",
            infer().parameter(name()),
            true,
        ),
        keyed(
            Post,
            "/v2/models/{name}/versions/{version}/infer",
            with_version(infer(), "model_version_infer"),
            true,
        ),
    ]
    .into_iter()
    .chain(task_routes())
    .chain(pipeline_routes())
    .collect()
}

/// The router's document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut schemas = Vec::new();
    doc::schemas_of::<RouterHealth>(&mut schemas);
    doc::schemas_of::<RouterReady>(&mut schemas);
    doc::schemas_of::<ServerLive>(&mut schemas);
    doc::schemas_of::<ServerReady>(&mut schemas);
    doc::schemas_of::<ModelReady>(&mut schemas);
    doc::schemas_of::<OipError>(&mut schemas);
    doc::schemas_of::<InferRequest>(&mut schemas);
    doc::schemas_of::<TaskSubmitted>(&mut schemas);
    doc::schemas_of::<Task>(&mut schemas);
    doc::schemas_of::<TaskList>(&mut schemas);
    doc::document(
        "Taskmesh router",
        "Invoke functions (`/v1`) and the Open Inference Protocol v2 (`/v2`). Every `/v1` \
         error is `{\"error\": {\"code\", \"message\", \"details\"}}`.",
        routes(),
        doc::components(schemas),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{endpoint, Endpoint};
    use contract::ErrorCode;
    use http::Method;
    use std::collections::BTreeSet;

    /// The path patterns `routes::endpoint` matches, read from its source
    /// (`["v2", "models", m, "ready"]` → `/v2/models/{}/ready`).
    fn matched_patterns() -> BTreeSet<String> {
        let source = include_str!("routes.rs");
        let body = source
            .split("pub fn endpoint(")
            .nth(1)
            .expect("routes.rs has fn endpoint");
        let mut patterns = BTreeSet::new();
        for line in body.lines().map(str::trim) {
            // Only the match arms of `endpoint` start with a slice pattern.
            let Some(rest) = line.strip_prefix('[').filter(|_| line.contains("=>")) else {
                continue;
            };
            let Some((inside, _)) = rest.split_once(']') else {
                continue;
            };
            let segments: Vec<String> = inside
                .split(',')
                .map(|s| s.trim())
                .map(|s| match s.strip_prefix('"') {
                    Some(literal) => literal.trim_end_matches('"').to_string(),
                    None => "{}".to_string(),
                })
                .collect();
            patterns.insert(format!("/{}", segments.join("/")));
        }
        assert!(patterns.len() >= 10, "read too few patterns: {patterns:?}");
        patterns
    }

    /// A document path with its parameters unnamed (`/v2/models/{}`).
    fn pattern(path: &str) -> String {
        path.split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn every_matched_path_is_documented() {
        let documented: BTreeSet<String> = doc::operations(document())
            .iter()
            .map(|(_, path)| pattern(path))
            .collect();
        let matched = matched_patterns();
        let undocumented: Vec<&String> = matched.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "routes.rs matches {undocumented:?}, which router/src/openapi.rs does not document"
        );
        let unmatched: Vec<&String> = documented.difference(&matched).collect();
        assert!(
            unmatched.is_empty(),
            "router/src/openapi.rs documents {unmatched:?}, which routes.rs does not match"
        );
    }

    #[test]
    fn every_documented_method_is_the_one_matched() {
        let documented: BTreeSet<(String, String)> =
            doc::operations(document()).into_iter().collect();
        let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
        for path in paths {
            let concrete: String = path
                .split('/')
                .map(|s| if s.starts_with('{') { "1" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            for method in [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::PATCH,
            ] {
                let answer = endpoint(&method, &concrete, None);
                let is_documented = documented.contains(&(method.to_string(), path.clone()));
                match answer {
                    Ok(_) => assert!(is_documented, "{method} {path} is matched, not documented"),
                    Err(err) => {
                        assert_eq!(err.code, ErrorCode::MethodNotAllowed, "{method} {path}");
                        assert!(!is_documented, "{method} {path} is documented, not matched");
                    }
                }
            }
        }
    }

    /// The router's own answers have exactly the documented fields.
    #[test]
    fn local_answers_match_their_schemas() {
        let nodes = crate::placement::NodeSet::new(policies::ring::Bounds::default());
        let schemas = &document()["components"]["schemas"];
        for (endpoint, schema) in [
            (Endpoint::Health, "RouterHealth"),
            (Endpoint::Ready, "RouterReady"),
            (Endpoint::Live, "ServerLive"),
            (Endpoint::ServerReady, "ServerReady"),
        ] {
            for draining in [false, true] {
                let answer = crate::local::router_answer(&endpoint, &nodes, draining).unwrap();
                let mut fields: Vec<&String> = answer.body.as_object().unwrap().keys().collect();
                fields.sort();
                let mut documented: Vec<&String> = schemas[schema]["properties"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .collect();
                documented.sort();
                assert_eq!(fields, documented, "{endpoint:?}");
            }
        }
    }

    #[test]
    fn oip_errors_have_the_documented_shape() {
        let err = contract::ApiError::not_found("function \"f\" not found");
        let body: Value = serde_json::from_slice(&contract::oip::error_body(&err)).unwrap();
        let fields: Vec<&String> = body.as_object().unwrap().keys().collect();
        let schema = &document()["components"]["schemas"]["OipError"];
        let documented: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        assert_eq!(fields, documented);
        let not_found = &document()["paths"]["/v2/models/{name}"]["get"]["responses"]["404"];
        assert_eq!(
            not_found["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/OipError"
        );
    }

    #[test]
    fn the_document_is_an_endpoint_of_its_own() {
        assert_eq!(
            endpoint(&Method::GET, OPENAPI_PATH, None).unwrap(),
            Endpoint::OpenApi
        );
        assert_eq!(Endpoint::OpenApi.function(), None);
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let invoke = &doc["paths"]["/v1/functions/{name}/invoke"]["post"];
        assert_eq!(invoke["security"][0]["bearer"], json!([]));
        assert_eq!(doc["paths"]["/healthz"]["get"]["security"][0], json!({}));
        let statuses: Vec<&String> = invoke["responses"].as_object().unwrap().keys().collect();
        for status in [
            "200", "401", "404", "413", "422", "429", "502", "503", "504",
        ] {
            assert!(
                statuses.iter().any(|s| *s == status),
                "{status}: {statuses:?}"
            );
        }
    }
}
