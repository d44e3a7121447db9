//! The authenticated caller of a request: its tenant, scopes and plan.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::definition::{QuotaPolicy, RateLimitPolicy};
use crate::{ApiError, ErrorCode};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The platform operator: creates clients in any tenant.
    Operator,
    /// Registers functions and creates clients in its own tenant.
    Admin,
    /// Invokes functions of its tenant.
    Invoke,
    /// Reads the router's `/metrics` (every tenant's traffic: only the
    /// operator grants it).
    Metrics,
}

/// A client's plan: limits that replace the function's for this client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaPolicy>,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub client_id: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    pub plan: Plan,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Operator)
    }

    /// Refuses (403) unless the caller has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            let what = match scope {
                Scope::Invoke => "invoke",
                Scope::Metrics => "metrics",
                Scope::Admin | Scope::Operator => "admin",
            };
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this key lacks the {what} scope"),
            ))
        }
    }
}
