//! The admin API's pipeline endpoints (contract: pipelines): register a
//! version (JSON or YAML), list, read.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use contract::definition::Syntax;
use contract::http::read_body;
use contract::limits::MAX_DEFINITION_BYTES;

use super::{admin, reply, ApiResult, State_};
use crate::wire::{FunctionEntry, PipelineDetail, PipelineList, PipelineView, Registered};

pub(super) async fn register(State(state): State_, headers: HeaderMap, body: Body) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let syntax = Syntax::from_content_type(content_type);
            let bytes = read_body(body, MAX_DEFINITION_BYTES).await?;
            let stored = state
                .registry
                .register_pipeline(&principal.tenant, &bytes, syntax)
                .await?;
            Ok(reply(
                StatusCode::CREATED,
                &Registered {
                    name: stored.name.clone(),
                    version: stored.version,
                },
            ))
        }
        .await,
    )
}

pub(super) async fn list(State(state): State_, headers: HeaderMap) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let listed = state.registry.list_pipelines(&principal.tenant).await?;
            let pipelines = listed.into_iter().map(FunctionEntry::from).collect();
            Ok(reply(StatusCode::OK, &PipelineList { pipelines }))
        }
        .await,
    )
}

pub(super) async fn get(
    State(state): State_,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let tenant = &principal.tenant;
            let latest = state.registry.pipeline(tenant, &name, None).await?;
            Ok(reply(
                StatusCode::OK,
                &PipelineDetail {
                    name: latest.name.clone(),
                    latest_version: latest.version,
                    versions: (1..=latest.version).collect(),
                    latest: PipelineView::from(latest.as_ref()),
                },
            ))
        }
        .await,
    )
}

pub(super) async fn get_version(
    State(state): State_,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult {
    ApiResult(
        async {
            let principal = admin(&state, &headers).await?;
            let version: u32 = version.parse().map_err(|_| {
                contract::ApiError::not_found(format!(
                    "pipeline {name:?} has no version {version:?}"
                ))
            })?;
            let found = state
                .registry
                .pipeline(&principal.tenant, &name, Some(version))
                .await?;
            Ok(reply(StatusCode::OK, &PipelineView::from(found.as_ref())))
        }
        .await,
    )
}
