//! How pre- and post-processing fail (the bottom layer: it names no other
//! module of `prepost`): the caller's text or image (422 `invalid_input` with
//! the field's JSON pointer), our own fault (500, logged), or an output that
//! cannot be post-processed (502 `invalid_output`).

use contract::protocol::invalid_input;
use contract::tensor::Violation;
use contract::{ApiError, ErrorCode};

pub(super) fn refuse(pointer: &str, message: impl Into<String>) -> ApiError {
    invalid_input(vec![Violation::new(pointer, message)])
}

pub(super) fn internal(message: String) -> ApiError {
    tracing::error!(%message, "preprocessing internal error");
    ApiError::new(ErrorCode::Internal, "internal runtime error")
}

pub(super) fn bad_output(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidOutput, message)
}
