//! The router's public paths (contract), matched to the [`Endpoint`] a request
//! asks for, and the node paths an upstream-bound call is pinned to.
//!
//! Bottom layer: names nothing else in the crate.

use contract::ApiError;
use contract::ErrorCode;
use contract::{FunctionVersion, Qualifier};
use http::Method;

/// What a request asks the router for. (Not an alias's weighted route,
/// `policies::split::Route`.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Metrics,
    /// `GET /v2/health/live`
    Live,
    /// `GET /v2/health/ready`
    ServerReady,
    /// `GET /v2`: OIP server metadata.
    ServerMetadata,
    /// `GET /openapi.json`: the router's OpenAPI document.
    OpenApi,
    Invoke {
        name: String,
        qualifier: Qualifier,
    },
    Metadata {
        name: String,
        qualifier: Qualifier,
    },
    ModelReady {
        name: String,
        qualifier: Qualifier,
    },
    Infer {
        name: String,
        qualifier: Qualifier,
    },
    /// `POST /v1/functions/{name}/tasks`: queue a task.
    SubmitTask {
        name: String,
        qualifier: Qualifier,
    },
    /// `/v1/tasks…`: read, list, cancel or retry tasks.
    Tasks(TaskRequest),
    /// `POST /v1/pipelines/{name}/invoke` (run a pipeline) or `…/tasks` (queue a run).
    InvokePipeline(PipelineCall),
}

/// What `POST /v1/pipelines/{name}/invoke[?version=N][&trace=steps]` or
/// `POST /v1/pipelines/{name}/tasks[?version=N][&callback_url=U]` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineCall {
    pub name: String,
    pub version: Option<u32>,
    /// `?trace=steps`: the answer carries each step's trace.
    pub trace: bool,
    /// `…/tasks`: queue the run as a task instead of waiting for it.
    pub task: bool,
}

impl PipelineCall {
    /// Reads `?version=N`, and `?trace=steps` (invoke) or `?callback_url=`
    /// (tasks, read by `tasks::api`); anything else is 400.
    fn from_query(name: String, task: bool, query: Option<&str>) -> Result<Self, ApiError> {
        let mut call = PipelineCall {
            name,
            version: None,
            trace: false,
            task,
        };
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("version", v) => {
                    let n = v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "version must be a positive integer, got {v:?}"
                        ))
                    })?;
                    call.version = Some(n);
                }
                ("trace", "steps") if !task => call.trace = true,
                ("callback_url", _) if task => {}
                (key, value) => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter {key}={value:?} (version=N, and trace=steps on invoke or callback_url=U on tasks)"
                    )))
                }
            }
        }
        Ok(call)
    }
}

/// What a `/v1/tasks…` request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskRequest {
    /// `GET /v1/tasks?function=&status=&limit=` (the raw query).
    List(Option<String>),
    /// `GET /v1/tasks/{id}`
    Get(String),
    /// `DELETE /v1/tasks/{id}`
    Cancel(String),
    /// `POST /v1/tasks/{id}/retry`
    Retry(String),
    /// `GET /v1/callbacks/secret`: the caller's completion-webhook secret.
    CallbackSecret,
}

/// The longest task id looked up (ids are UUIDs; anything longer is 404).
const MAX_TASK_ID_BYTES: usize = 64;

fn task_id(id: &str) -> Result<String, ApiError> {
    if id.is_empty() || id.len() > MAX_TASK_ID_BYTES {
        return Err(ApiError::not_found("no such task"));
    }
    Ok(id.to_string())
}

impl Endpoint {
    /// The function an endpoint names, or `None` for the router's own endpoints.
    pub fn function(&self) -> Option<(&str, &Qualifier)> {
        match self {
            Endpoint::Health
            | Endpoint::Ready
            | Endpoint::Metrics
            | Endpoint::Live
            | Endpoint::ServerReady
            | Endpoint::ServerMetadata
            | Endpoint::OpenApi
            | Endpoint::Tasks(_)
            | Endpoint::InvokePipeline(_) => None,
            Endpoint::Invoke { name, qualifier }
            | Endpoint::SubmitTask { name, qualifier }
            | Endpoint::Metadata { name, qualifier }
            | Endpoint::ModelReady { name, qualifier }
            | Endpoint::Infer { name, qualifier } => Some((name, qualifier)),
        }
    }

    /// The body a call to this endpoint carries upstream, or `None` for the
    /// endpoints the router answers itself.
    pub fn body_kind(&self) -> Option<BodyKind> {
        match self {
            Endpoint::Invoke { .. } => Some(BodyKind::Invoke),
            Endpoint::Infer { .. } => Some(BodyKind::Infer),
            _ => None,
        }
    }
}

/// The kind of body an upstream-bound endpoint carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `POST /v1/functions/{name}/invoke`: named fields (`protocol::invoke_inputs`).
    Invoke,
    /// OIP v2 `infer`: raw tensors by name (`oip::parse_infer`).
    Infer,
    /// OIP over gRPC, `ModelInfer` (`grpc::infer_request`): the node answers in gRPC.
    GrpcInfer,
}

impl BodyKind {
    /// The node path of a call, pinned to the resolved version so router and
    /// node always agree on it.
    pub fn upstream_path(self, version: &FunctionVersion) -> String {
        match self {
            BodyKind::Invoke => format!(
                "/v1/functions/{}/invoke?version={}",
                version.name, version.version
            ),
            BodyKind::Infer => format!(
                "/v2/models/{}/versions/{}/infer",
                version.name, version.version
            ),
            BodyKind::GrpcInfer => format!(
                "/grpc/models/{}/versions/{}/infer",
                version.name, version.version
            ),
        }
    }
}

/// The OIP gRPC method a request calls (`content-type: application/grpc` on
/// `/inference.GRPCInferenceService/<Method>`), if it is one.
pub fn grpc_method(request: &pingora_http::RequestHeader) -> Option<contract::grpc::Method> {
    let content_type = request
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !contract::grpc::is_grpc(content_type) {
        return None;
    }
    contract::grpc::Method::from_path(request.uri.path())
}

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {path}"),
    )
}

fn expect(
    method: &Method,
    wanted: Method,
    path: &str,
    endpoint: Endpoint,
) -> Result<Endpoint, ApiError> {
    let ok = *method == wanted || (wanted == Method::GET && *method == Method::HEAD);
    if ok {
        Ok(endpoint)
    } else {
        Err(method_not_allowed(method, path))
    }
}

/// Matches a request to an endpoint, or the contract's 404/405.
pub fn endpoint(method: &Method, path: &str, query: Option<&str>) -> Result<Endpoint, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let name = |s: &str| s.to_string();
    match segments.as_slice() {
        ["healthz"] => expect(method, Method::GET, path, Endpoint::Health),
        ["readyz"] => expect(method, Method::GET, path, Endpoint::Ready),
        ["metrics"] => expect(method, Method::GET, path, Endpoint::Metrics),
        ["v2", "health", "live"] => expect(method, Method::GET, path, Endpoint::Live),
        ["v2", "health", "ready"] => expect(method, Method::GET, path, Endpoint::ServerReady),
        ["v2"] => expect(method, Method::GET, path, Endpoint::ServerMetadata),
        ["openapi.json"] => expect(method, Method::GET, path, Endpoint::OpenApi),
        ["v1", "functions", f, "invoke"] if !f.is_empty() => {
            let qualifier = Qualifier::from_query(query)?;
            expect(
                method,
                Method::POST,
                path,
                Endpoint::Invoke {
                    name: name(f),
                    qualifier,
                },
            )
        }
        ["v1", "functions", f, "tasks"] if !f.is_empty() => {
            let qualifier = Qualifier::from_query(query)?;
            expect(
                method,
                Method::POST,
                path,
                Endpoint::SubmitTask {
                    name: name(f),
                    qualifier,
                },
            )
        }
        ["v1", "pipelines", p, "invoke"] if !p.is_empty() => {
            let call = PipelineCall::from_query(name(p), false, query)?;
            expect(method, Method::POST, path, Endpoint::InvokePipeline(call))
        }
        ["v1", "pipelines", p, "tasks"] if !p.is_empty() => {
            let call = PipelineCall::from_query(name(p), true, query)?;
            expect(method, Method::POST, path, Endpoint::InvokePipeline(call))
        }
        ["v1", "callbacks", "secret"] => expect(
            method,
            Method::GET,
            path,
            Endpoint::Tasks(TaskRequest::CallbackSecret),
        ),
        ["v1", "tasks"] => expect(
            method,
            Method::GET,
            path,
            Endpoint::Tasks(TaskRequest::List(query.map(str::to_string))),
        ),
        ["v1", "tasks", id] => match *method {
            Method::GET | Method::HEAD => Ok(Endpoint::Tasks(TaskRequest::Get(task_id(id)?))),
            Method::DELETE => Ok(Endpoint::Tasks(TaskRequest::Cancel(task_id(id)?))),
            _ => Err(method_not_allowed(method, path)),
        },
        ["v1", "tasks", id, "retry"] => expect(
            method,
            Method::POST,
            path,
            Endpoint::Tasks(TaskRequest::Retry(task_id(id)?)),
        ),
        ["v2", "models", m] if !m.is_empty() => expect(
            method,
            Method::GET,
            path,
            Endpoint::Metadata {
                name: name(m),
                qualifier: Qualifier::Default,
            },
        ),
        ["v2", "models", m, "versions", v] => expect(
            method,
            Method::GET,
            path,
            Endpoint::Metadata {
                name: name(m),
                qualifier: Qualifier::from_path(v)?,
            },
        ),
        ["v2", "models", m, "ready"] => expect(
            method,
            Method::GET,
            path,
            Endpoint::ModelReady {
                name: name(m),
                qualifier: Qualifier::Default,
            },
        ),
        ["v2", "models", m, "versions", v, "ready"] => expect(
            method,
            Method::GET,
            path,
            Endpoint::ModelReady {
                name: name(m),
                qualifier: Qualifier::from_path(v)?,
            },
        ),
        ["v2", "models", m, "infer"] => expect(
            method,
            Method::POST,
            path,
            Endpoint::Infer {
                name: name(m),
                qualifier: Qualifier::Default,
            },
        ),
        ["v2", "models", m, "versions", v, "infer"] => expect(
            method,
            Method::POST,
            path,
            Endpoint::Infer {
                name: name(m),
                qualifier: Qualifier::from_path(v)?,
            },
        ),
        _ => Err(ApiError::not_found(format!("no route for {method} {path}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_with_and_without_version() {
        assert_eq!(
            endpoint(&Method::POST, "/v1/functions/digits/invoke", None).unwrap(),
            Endpoint::Invoke {
                name: "digits".into(),
                qualifier: Qualifier::Default
            }
        );
        assert_eq!(
            endpoint(
                &Method::POST,
                "/v1/functions/digits/invoke",
                Some("version=2")
            )
            .unwrap(),
            Endpoint::Invoke {
                name: "digits".into(),
                qualifier: Qualifier::Version(2)
            }
        );
        assert_eq!(
            endpoint(
                &Method::POST,
                "/v1/functions/digits/invoke",
                Some("version=x")
            )
            .unwrap_err()
            .code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            endpoint(&Method::GET, "/v1/functions/digits/invoke", None)
                .unwrap_err()
                .code,
            ErrorCode::MethodNotAllowed
        );
    }

    #[test]
    fn oip_paths() {
        assert_eq!(
            endpoint(&Method::POST, "/v2/models/iris/versions/3/infer", None).unwrap(),
            Endpoint::Infer {
                name: "iris".into(),
                qualifier: Qualifier::Version(3)
            }
        );
        assert_eq!(
            endpoint(&Method::GET, "/v2/models/iris/ready", None).unwrap(),
            Endpoint::ModelReady {
                name: "iris".into(),
                qualifier: Qualifier::Default
            }
        );
        assert_eq!(
            endpoint(&Method::GET, "/v2/models/iris/versions/zero", None)
                .unwrap_err()
                .code,
            ErrorCode::NotFound
        );
        assert_eq!(
            endpoint(&Method::GET, "/v2/health/live", None).unwrap(),
            Endpoint::Live
        );
    }

    #[test]
    fn task_paths() {
        assert_eq!(
            endpoint(
                &Method::POST,
                "/v1/functions/digits/tasks",
                Some("version=2")
            )
            .unwrap(),
            Endpoint::SubmitTask {
                name: "digits".into(),
                qualifier: Qualifier::Version(2)
            }
        );
        let id = "0192f0c4-1c3e-7e1a-9d3e-000000000000";
        let path = format!("/v1/tasks/{id}");
        assert_eq!(
            endpoint(&Method::DELETE, &path, None).unwrap(),
            Endpoint::Tasks(TaskRequest::Cancel(id.into()))
        );
        assert_eq!(
            endpoint(&Method::POST, &format!("{path}/retry"), None).unwrap(),
            Endpoint::Tasks(TaskRequest::Retry(id.into()))
        );
        assert_eq!(
            endpoint(&Method::GET, "/v1/tasks", Some("status=dead")).unwrap(),
            Endpoint::Tasks(TaskRequest::List(Some("status=dead".into())))
        );
        assert_eq!(
            endpoint(&Method::PUT, &path, None).unwrap_err().code,
            ErrorCode::MethodNotAllowed
        );
        let long = format!("/v1/tasks/{}", "a".repeat(65));
        assert_eq!(
            endpoint(&Method::GET, &long, None).unwrap_err().code,
            ErrorCode::NotFound
        );
        let submit = endpoint(&Method::POST, "/v1/functions/digits/tasks", None).unwrap();
        assert_eq!(submit.function(), Some(("digits", &Qualifier::Default)));
        assert_eq!(submit.body_kind(), None);
    }

    #[test]
    fn unknown_paths_are_not_found() {
        assert_eq!(
            endpoint(&Method::GET, "/", None).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            endpoint(&Method::POST, "/v1/functions//invoke", None)
                .unwrap_err()
                .code,
            ErrorCode::NotFound
        );
    }

    #[test]
    fn endpoints_name_their_function_and_body() {
        let invoke = endpoint(&Method::POST, "/v1/functions/digits/invoke", None).unwrap();
        assert_eq!(invoke.function(), Some(("digits", &Qualifier::Default)));
        assert_eq!(invoke.body_kind(), Some(BodyKind::Invoke));
        let ready = endpoint(&Method::GET, "/v2/models/iris/ready", None).unwrap();
        assert!(ready.function().is_some());
        assert_eq!(ready.body_kind(), None);
        let health = endpoint(&Method::HEAD, "/healthz", None).unwrap();
        assert_eq!((health.function(), health.body_kind()), (None, None));
    }
}
