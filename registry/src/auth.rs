//! API keys, clients and tenants.
//!
//! A key is `tm_<client id>_<secret>`: the client id (16 hex digits) finds the
//! record, and the SHA-256 of the whole key is compared in constant time with
//! the stored hash. Keys are 256-bit random secrets, so a fast hash is enough
//! (a slow password hash protects low-entropy secrets, which these are not).
//! The key itself is shown once, at creation, and is never stored, logged or
//! put in an error.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use contract::{ApiError, ErrorCode};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use crate::clients::ClientRecord;
use crate::store::{store_error, Store};
pub use contract::principal::{Plan, Principal, Scope};

/// A client creation request (`POST /v1/clients`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    pub name: String,
    #[serde(default)]
    pub tenant: Option<String>,
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub plan: Plan,
}

/// The operator's fixed client id.
pub const OPERATOR_CLIENT_ID: &str = "0000000000000000";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

fn unauthenticated() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthenticated,
        "a valid API key is required (authorization: Bearer <key>)",
    )
}

/// Splits a key into its client id, checking only its shape.
fn client_id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("tm_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some(id)
}

/// Authenticates keys and manages clients; records are cached in memory.
pub struct Auth {
    store: Arc<dyn Store>,
    cache: RwLock<HashMap<String, Arc<ClientRecord>>>,
    /// Hash of an operator key given through the environment (cluster mode).
    env_operator: Option<String>,
}

impl Auth {
    pub fn new(store: Arc<dyn Store>, env_operator_key: Option<&str>) -> Self {
        Auth {
            store,
            cache: RwLock::new(HashMap::new()),
            env_operator: env_operator_key.map(|k| sha256_hex(k.as_bytes())),
        }
    }

    /// Creates the operator client when the store has none; returns its key (shown once).
    pub async fn ensure_operator(&self) -> Result<Option<String>, ApiError> {
        if self
            .store
            .get_client(OPERATOR_CLIENT_ID)
            .await
            .map_err(store_error)?
            .is_some()
        {
            return Ok(None);
        }
        let key = format!("tm_{OPERATOR_CLIENT_ID}_{}", random_hex(32));
        let record = ClientRecord {
            client_id: OPERATOR_CLIENT_ID.into(),
            name: "operator".into(),
            tenant: crate::DEFAULT_TENANT.into(),
            scopes: vec![Scope::Operator, Scope::Admin, Scope::Invoke],
            key_sha256: sha256_hex(key.as_bytes()),
            plan: Plan::default(),
            created_at_ms: crate::store::now_ms(),
        };
        self.store.put_client(&record).await.map_err(store_error)?;
        Ok(Some(key))
    }

    /// The caller behind an `authorization` header value, or 401.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let key = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(unauthenticated)?;
        let hash = sha256_hex(key.as_bytes());
        if let Some(expected) = &self.env_operator {
            if bool::from(hash.as_bytes().ct_eq(expected.as_bytes())) {
                return Ok(Principal {
                    client_id: OPERATOR_CLIENT_ID.into(),
                    tenant: crate::DEFAULT_TENANT.into(),
                    scopes: vec![Scope::Operator, Scope::Admin, Scope::Invoke],
                    plan: Plan::default(),
                });
            }
        }
        let id = client_id_of(key).ok_or_else(unauthenticated)?;
        let record = self.client(id).await?.ok_or_else(unauthenticated)?;
        if !bool::from(hash.as_bytes().ct_eq(record.key_sha256.as_bytes())) {
            return Err(unauthenticated());
        }
        Ok(Principal {
            client_id: record.client_id.clone(),
            tenant: record.tenant.clone(),
            scopes: record.scopes.clone(),
            plan: record.plan.clone(),
        })
    }

    async fn client(&self, id: &str) -> Result<Option<Arc<ClientRecord>>, ApiError> {
        if let Some(hit) = self.cache.read().expect("auth cache").get(id) {
            return Ok(Some(hit.clone()));
        }
        let Some(record) = self.store.get_client(id).await.map_err(store_error)? else {
            return Ok(None);
        };
        let record = Arc::new(record);
        self.cache
            .write()
            .expect("auth cache")
            .insert(id.to_string(), record.clone());
        Ok(Some(record))
    }

    /// Creates a client for `by`; returns the record and its key (shown once).
    pub async fn create_client(
        &self,
        by: &Principal,
        request: NewClient,
    ) -> Result<(ClientRecord, String), ApiError> {
        by.require(Scope::Admin)?;
        let tenant = request.tenant.clone().unwrap_or_else(|| by.tenant.clone());
        if tenant != by.tenant && !by.has(Scope::Operator) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("only the operator can create clients in tenant {tenant:?}"),
            ));
        }
        let mut violations = Vec::new();
        if !contract::names::valid_name(&tenant) {
            violations.push(contract::tensor::Violation::new(
                "/tenant",
                format!("invalid tenant {tenant:?}"),
            ));
        }
        if request.name.trim().is_empty() || request.name.len() > 128 {
            violations.push(contract::tensor::Violation::new(
                "/name",
                "a name of 1-128 characters is required",
            ));
        }
        if request.scopes.is_empty() || request.scopes.contains(&Scope::Operator) {
            violations.push(contract::tensor::Violation::new(
                "/scopes",
                "scopes must be [\"invoke\"] or [\"admin\", \"invoke\"]",
            ));
        }
        if let Some(rl) = &request.plan.rate_limit {
            violations.extend(contract::definition::check_rate_limit(
                rl,
                "/plan/rate_limit",
            ));
        }
        if let Some(q) = &request.plan.quota {
            violations.extend(contract::definition::check_quota(q, "/plan/quota"));
        }
        if !violations.is_empty() {
            return Err(ApiError::new(ErrorCode::InvalidInput, "invalid client")
                .with_details(serde_json::json!(violations)));
        }
        let client_id = random_hex(8);
        let key = format!("tm_{client_id}_{}", random_hex(32));
        let mut scopes = request.scopes.clone();
        scopes.sort_by_key(|s| *s as u8);
        scopes.dedup();
        let record = ClientRecord {
            client_id,
            name: request.name,
            tenant,
            scopes,
            key_sha256: sha256_hex(key.as_bytes()),
            plan: request.plan,
            created_at_ms: crate::store::now_ms(),
        };
        self.store.put_client(&record).await.map_err(store_error)?;
        tracing::info!(client_id = %record.client_id, tenant = %record.tenant, "client created");
        Ok((record, key))
    }
}

#[async_trait::async_trait]
impl contract::ports::Authenticator for Auth {
    async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        Auth::authenticate(self, authorization).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shape_is_checked_before_any_lookup() {
        let id = "0123456789abcdef";
        let key = format!("tm_{id}_{}", "a".repeat(64));
        assert_eq!(client_id_of(&key), Some(id));
        assert_eq!(client_id_of("tm_short_abc"), None);
        assert_eq!(client_id_of(&format!("xx_{id}_{}", "a".repeat(64))), None);
        assert_eq!(client_id_of(""), None);
    }

    #[test]
    fn operator_has_every_scope() {
        let p = Principal {
            client_id: "x".into(),
            tenant: "t".into(),
            scopes: vec![Scope::Operator],
            plan: Plan::default(),
        };
        assert!(p.require(Scope::Admin).is_ok());
        let p = Principal {
            scopes: vec![Scope::Invoke],
            ..p
        };
        assert_eq!(
            p.require(Scope::Admin).unwrap_err().code,
            ErrorCode::Forbidden
        );
    }
}
