//! Matching the router's public paths (contract) to routes.

use contract::ApiError;
use contract::ErrorCode;
use contract::Qualifier;
use http::Method;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Metrics,
    /// `GET /v2/health/live`
    Live,
    /// `GET /v2/health/ready`
    ServerReady,
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
}

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {path}"),
    )
}

fn expect(method: &Method, wanted: Method, path: &str, route: Route) -> Result<Route, ApiError> {
    let ok = *method == wanted || (wanted == Method::GET && *method == Method::HEAD);
    if ok {
        Ok(route)
    } else {
        Err(method_not_allowed(method, path))
    }
}

/// Matches a request to a route, or the contract's 404/405.
pub fn route(method: &Method, path: &str, query: Option<&str>) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let name = |s: &str| s.to_string();
    match segments.as_slice() {
        ["healthz"] => expect(method, Method::GET, path, Route::Health),
        ["readyz"] => expect(method, Method::GET, path, Route::Ready),
        ["metrics"] => expect(method, Method::GET, path, Route::Metrics),
        ["v2", "health", "live"] => expect(method, Method::GET, path, Route::Live),
        ["v2", "health", "ready"] => expect(method, Method::GET, path, Route::ServerReady),
        ["v1", "functions", f, "invoke"] if !f.is_empty() => {
            let qualifier = Qualifier::from_query(query)?;
            expect(
                method,
                Method::POST,
                path,
                Route::Invoke {
                    name: name(f),
                    qualifier,
                },
            )
        }
        ["v2", "models", m] if !m.is_empty() => expect(
            method,
            Method::GET,
            path,
            Route::Metadata {
                name: name(m),
                qualifier: Qualifier::Default,
            },
        ),
        ["v2", "models", m, "versions", v] => expect(
            method,
            Method::GET,
            path,
            Route::Metadata {
                name: name(m),
                qualifier: Qualifier::from_path(v)?,
            },
        ),
        ["v2", "models", m, "ready"] => expect(
            method,
            Method::GET,
            path,
            Route::ModelReady {
                name: name(m),
                qualifier: Qualifier::Default,
            },
        ),
        ["v2", "models", m, "versions", v, "ready"] => expect(
            method,
            Method::GET,
            path,
            Route::ModelReady {
                name: name(m),
                qualifier: Qualifier::from_path(v)?,
            },
        ),
        ["v2", "models", m, "infer"] => expect(
            method,
            Method::POST,
            path,
            Route::Infer {
                name: name(m),
                qualifier: Qualifier::Default,
            },
        ),
        ["v2", "models", m, "versions", v, "infer"] => expect(
            method,
            Method::POST,
            path,
            Route::Infer {
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
            route(&Method::POST, "/v1/functions/digits/invoke", None).unwrap(),
            Route::Invoke {
                name: "digits".into(),
                qualifier: Qualifier::Default
            }
        );
        assert_eq!(
            route(
                &Method::POST,
                "/v1/functions/digits/invoke",
                Some("version=2")
            )
            .unwrap(),
            Route::Invoke {
                name: "digits".into(),
                qualifier: Qualifier::Version(2)
            }
        );
        assert_eq!(
            route(
                &Method::POST,
                "/v1/functions/digits/invoke",
                Some("version=x")
            )
            .unwrap_err()
            .code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            route(&Method::GET, "/v1/functions/digits/invoke", None)
                .unwrap_err()
                .code,
            ErrorCode::MethodNotAllowed
        );
    }

    #[test]
    fn oip_paths() {
        assert_eq!(
            route(&Method::POST, "/v2/models/iris/versions/3/infer", None).unwrap(),
            Route::Infer {
                name: "iris".into(),
                qualifier: Qualifier::Version(3)
            }
        );
        assert_eq!(
            route(&Method::GET, "/v2/models/iris/ready", None).unwrap(),
            Route::ModelReady {
                name: "iris".into(),
                qualifier: Qualifier::Default
            }
        );
        assert_eq!(
            route(&Method::GET, "/v2/models/iris/versions/zero", None)
                .unwrap_err()
                .code,
            ErrorCode::NotFound
        );
        assert_eq!(
            route(&Method::GET, "/v2/health/live", None).unwrap(),
            Route::Live
        );
    }

    #[test]
    fn unknown_paths_are_not_found() {
        assert_eq!(
            route(&Method::GET, "/", None).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            route(&Method::POST, "/v1/functions//invoke", None)
                .unwrap_err()
                .code,
            ErrorCode::NotFound
        );
    }
}
