//! The Open Inference Protocol over gRPC on the router's own listeners:
//! `POST /inference.GRPCInferenceService/<Method>` with `content-type:
//! application/grpc` (h2c and TLS; HTTP/2 only, as gRPC is).
//!
//! `ModelInfer` takes the same steps as REST's infer: the key (`authorization`
//! metadata), the version in the caller's tenant, the same checks of the
//! input (`contract::grpc::infer_request`, which reads the message as the
//! REST binary form), the guards, then placement, breakers and retries on
//! its way to a node, which answers in gRPC itself (message and trailers pass
//! through). The other methods are answered here. Errors are gRPC statuses
//! (a trailers-only answer, `respond::write_error`).
//!
//! Limit: a message must fit the router's replay buffer (64 KiB; REST
//! carries larger bodies), because the function's name is inside it and the
//! body must be read before a node is chosen.
//!
//! Layer: names `admission`, `local`, `placement`, `routes`, `call`, `proxy`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use contract::grpc::{self, pb, Method};
use contract::{ApiError, ErrorCode};
use pingora_proxy::Session;

use crate::admission::{self, REPLAY_BUFFER_BYTES};
use crate::call::Ctx;
use crate::placement::placement_key;
use crate::proxy::{Decision, TaskmeshProxy};
use crate::routes::BodyKind;

impl TaskmeshProxy {
    /// Decides a gRPC call: answered here, or proxied (`ModelInfer`).
    pub(crate) async fn decide_grpc(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        method: Method,
    ) -> Result<Decision, ApiError> {
        if session.req_header().method != http::Method::POST {
            return Err(ApiError::new(
                ErrorCode::MethodNotAllowed,
                "gRPC calls are POST",
            ));
        }
        // The key before the body: an unknown caller costs no read or decode.
        let principal = match method {
            Method::ModelReady | Method::ModelMetadata | Method::ModelInfer => {
                Some(self.authenticate(session).await?)
            }
            _ => None,
        };
        let wait = Instant::now() + Duration::from_secs(10);
        let body = admission::read_buffered(session, REPLAY_BUFFER_BYTES, wait).await?;
        let principal = || {
            principal
                .clone()
                .ok_or_else(|| ApiError::new(ErrorCode::Internal, "no caller for a model's method"))
        };
        match method {
            Method::ServerLive => Ok(answer(&pb::ServerLiveResponse { live: true })),
            Method::ServerReady => {
                let draining = self.state.draining.load(Ordering::Relaxed);
                let ready = !draining && !self.state.nodes.is_empty();
                Ok(answer(&pb::ServerReadyResponse { ready }))
            }
            Method::ServerMetadata => Ok(answer(&grpc::server_metadata())),
            Method::ModelReady => {
                let request: pb::ModelReadyRequest = grpc::decode(&body)?;
                let principal = principal()?;
                let qualifier = grpc::qualifier(&request.version)?;
                let version = self
                    .resolve(session, ctx, &principal, &request.name, &qualifier)
                    .await?;
                let gpu = version.definition.resources.gpu;
                let ready = self
                    .state
                    .nodes
                    .owner(&placement_key(&version), gpu)
                    .is_some();
                Ok(answer(&pb::ModelReadyResponse { ready }))
            }
            Method::ModelMetadata => {
                let request: pb::ModelMetadataRequest = grpc::decode(&body)?;
                let principal = principal()?;
                let qualifier = grpc::qualifier(&request.version)?;
                let version = self
                    .resolve(session, ctx, &principal, &request.name, &qualifier)
                    .await?;
                let versions = self
                    .state
                    .catalog
                    .versions(&principal.tenant, &request.name)
                    .await?;
                Ok(answer(&grpc::model_metadata(&version, &versions)))
            }
            Method::ModelInfer => {
                let request: pb::ModelInferRequest = grpc::decode(&body)?;
                let principal = principal()?;
                let qualifier = grpc::qualifier(&request.model_version)?;
                let version = self
                    .resolve(session, ctx, &principal, &request.model_name, &qualifier)
                    .await?;
                self.prepare_upstream(session, ctx, BodyKind::GrpcInfer, &version)?;
                if let Some(limit) = grpc_timeout(session) {
                    let wanted = ctx.started + limit;
                    ctx.deadline = Some(ctx.deadline.map_or(wanted, |d| d.min(wanted)));
                }
                let inputs = grpc::infer_request(&version, &request)?.inputs;
                ctx.cost = contract::measure::call_cost(
                    &version.definition,
                    body.len(),
                    contract::measure::Measured::Tensors(&inputs),
                );
                self.apply_guards(ctx, principal, &version).await?;
                Ok(Decision::Proxy)
            }
        }
    }
}

/// `grpc-timeout`, the caller's deadline for the call.
fn grpc_timeout(session: &Session) -> Option<Duration> {
    session
        .req_header()
        .headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc::timeout)
}

/// A unary answer of the router's own.
fn answer(message: &impl grpc::Message) -> Decision {
    Decision::Grpc(Bytes::from(grpc::frame(message)))
}
