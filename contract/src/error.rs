//! The contract's error codes and the one place that maps them to HTTP status.

use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

/// Stable error codes of the HTTP contract (`{"error": {"code": ...}}`).
/// Serialized as their wire spelling ([`ErrorCode::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    BadRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    HeadersTooLarge,
    UnsupportedMediaType,
    InvalidInput,
    InvalidDefinition,
    RateLimited,
    QuotaExceeded,
    FunctionFailed,
    InvalidOutput,
    Unavailable,
    CircuitOpen,
    Overloaded,
    Timeout,
    Internal,
    /// A pipeline's step failed (`details.step`, `details.error`).
    StepFailed,
    /// A pipeline's guard step refused the input (`details.step`, `field`, `value`).
    Refused,
}

impl ErrorCode {
    /// The wire spelling of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::InvalidDefinition => "invalid_definition",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::FunctionFailed => "function_failed",
            ErrorCode::InvalidOutput => "invalid_output",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::CircuitOpen => "circuit_open",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::StepFailed => "step_failed",
            ErrorCode::Refused => "refused",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::MalformedJson | ErrorCode::BadRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::HeadersTooLarge => 431,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidInput | ErrorCode::InvalidDefinition | ErrorCode::Refused => 422,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded => 429,
            ErrorCode::Internal => 500,
            ErrorCode::FunctionFailed | ErrorCode::InvalidOutput | ErrorCode::StepFailed => 502,
            ErrorCode::Unavailable | ErrorCode::CircuitOpen | ErrorCode::Overloaded => 503,
            ErrorCode::Timeout => 504,
        }
    }

    /// Whether the fault lies with the caller (details are safe to show).
    pub fn is_client_fault(self) -> bool {
        self.status() < 500
    }
}

/// An error as the contract renders it: a code, a message and optional details.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds for a `retry-after` header, where the code calls for one.
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: None,
            retry_after_s: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The JSON body: `{"error": {"code", "message", "details"?}}` ([`ErrorBody`]).
    pub fn body(&self) -> Value {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                details: self.details.clone(),
            },
        };
        serde_json::to_value(body).unwrap_or_else(|_| json!({}))
    }

    pub fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body()).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// Reads an error body produced by [`ApiError::body`] back (for clients and proxies).
    pub fn from_body(status: u16, body: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let error = value.get("error")?;
        let code = ErrorCode::from_wire(error.get("code")?.as_str()?)?;
        let message = error.get("message")?.as_str()?.to_string();
        let mut parsed = ApiError::new(code, message);
        parsed.details = error.get("details").cloned();
        let _ = status;
        Some(parsed)
    }
}

/// The body of every error answer (the OpenAPI documents' `Error`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code, a message for people, and details for
/// client faults (for `invalid_input`, a list of `{pointer, message}`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// Any JSON; absent when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value, required = false)]
    pub details: Option<Value>,
}

impl ErrorCode {
    pub fn from_wire(code: &str) -> Option<Self> {
        ALL_CODES.iter().copied().find(|c| c.as_str() == code)
    }

    /// Every code, in the order of the contract's table.
    pub fn all() -> &'static [ErrorCode] {
        &ALL_CODES
    }
}

const ALL_CODES: [ErrorCode; 23] = [
    ErrorCode::MalformedJson,
    ErrorCode::BadRequest,
    ErrorCode::Unauthenticated,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
    ErrorCode::MethodNotAllowed,
    ErrorCode::Conflict,
    ErrorCode::PayloadTooLarge,
    ErrorCode::HeadersTooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::InvalidInput,
    ErrorCode::InvalidDefinition,
    ErrorCode::RateLimited,
    ErrorCode::QuotaExceeded,
    ErrorCode::FunctionFailed,
    ErrorCode::InvalidOutput,
    ErrorCode::Unavailable,
    ErrorCode::CircuitOpen,
    ErrorCode::Overloaded,
    ErrorCode::Timeout,
    ErrorCode::Internal,
    ErrorCode::StepFailed,
    ErrorCode::Refused,
];

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_wire_name() {
        for code in ALL_CODES {
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(ErrorCode::MalformedJson.status(), 400);
        assert_eq!(ErrorCode::NotFound.status(), 404);
        assert_eq!(ErrorCode::PayloadTooLarge.status(), 413);
        assert_eq!(ErrorCode::InvalidInput.status(), 422);
        assert_eq!(ErrorCode::FunctionFailed.status(), 502);
        assert_eq!(ErrorCode::Overloaded.status(), 503);
        assert_eq!(ErrorCode::Timeout.status(), 504);
    }

    #[test]
    fn body_has_code_message_and_details() {
        let err = ApiError::new(ErrorCode::InvalidInput, "bad pixels")
            .with_details(json!([{"pointer": "/pixels"}]));
        let body = err.body();
        assert_eq!(body["error"]["code"], "invalid_input");
        assert_eq!(body["error"]["message"], "bad pixels");
        assert_eq!(body["error"]["details"][0]["pointer"], "/pixels");
        let back = ApiError::from_body(422, &err.body_bytes()).unwrap();
        assert_eq!(back.code, ErrorCode::InvalidInput);
    }
}
