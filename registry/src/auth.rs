//! API keys, clients and tenants.
//!
//! A key is `tm_<client id>_<secret>`: the client id (16 hex digits) finds the
//! record, and the SHA-256 of the whole key is compared in constant time with
//! the stored hash. Keys are 256-bit random secrets, so a fast hash is enough
//! (a slow password hash protects low-entropy secrets, which these are not).
//! The key itself is shown once, at creation, and is never stored, logged or
//! put in an error.

use std::sync::Arc;
use std::time::Duration;

use contract::{ApiError, ErrorCode};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::cache::{MissBudget, ReadCache};
pub use crate::clients::ClientRecord;
use crate::store::{store_error, Store};
pub use contract::principal::{Plan, Principal, Scope};

/// A client creation request (`POST /v1/clients`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    pub name: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[schema(min_items = 1)]
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

/// A client id's shape: 16 hex digits.
fn client_id_shape(id: &str) -> Option<&str> {
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Splits a key into its client id, checking only its shape.
fn client_id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("tm_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some(id)
}

/// How long a process trusts a client record it read: a revoked or rotated
/// key stops working on every router within this time (plus one store read).
/// While the store is unreachable, a known client's last record keeps serving.
pub const CLIENT_TTL: Duration = Duration::from_secs(1);

/// Client ids (known or not) kept in the cache at most; past it, entries older
/// than [`CLIENT_TTL`] are dropped, then everything.
const MAX_CACHED_CLIENTS: usize = 65_536;

/// Store reads per second for client ids this process has no record of. A
/// flood of well-formed keys with invented ids costs at most this many reads a
/// second; past it they get 503 `unavailable` (`retry-after: 1`) without a read.
const MAX_UNKNOWN_READS_PER_S: u32 = 200;

/// Authenticates keys and manages clients; records are cached in memory.
pub struct Auth {
    store: Arc<dyn Store>,
    /// Client records (or their absence) by id, re-read after [`CLIENT_TTL`].
    cache: ReadCache<String, Option<Arc<ClientRecord>>>,
    unknown_reads: MissBudget,
    /// Hash of an operator key given through the environment (cluster mode).
    env_operator: Option<String>,
}

impl Auth {
    pub fn new(store: Arc<dyn Store>, env_operator_key: Option<&str>) -> Self {
        Auth {
            store,
            cache: ReadCache::new(CLIENT_TTL, MAX_CACHED_CLIENTS),
            unknown_reads: MissBudget::new(MAX_UNKNOWN_READS_PER_S),
            // Trimmed like a presented key: a key file read into the
            // environment keeps its trailing newline.
            env_operator: env_operator_key
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| sha256_hex(k.as_bytes())),
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
        let known = match self.cache.get(&id.to_string()) {
            Some((record, true)) => return Ok(record),
            Some((record, false)) => record,
            None => None,
        };
        if known.is_none() && !self.unknown_reads.try_take() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "too many keys this process has not seen; try again shortly",
            )
            .with_retry_after(1));
        }
        let record = match self.store.get_client(id).await {
            Ok(record) => record.map(Arc::new),
            // The last record read keeps serving while the store is away.
            Err(e) if known.is_some() => {
                tracing::debug!(error = %e, "client store unreachable; using the cached record");
                return Ok(known);
            }
            Err(e) => return Err(store_error(e)),
        };
        self.cache.insert(id.to_string(), record.clone());
        Ok(record)
    }

    /// Drops a client from this process's cache (after a revoke or rotate here;
    /// other processes notice within [`CLIENT_TTL`]).
    fn forget(&self, id: &str) {
        self.cache.remove(&id.to_string());
    }

    /// The client `id` as `by` may manage it: an admin manages its own
    /// tenant's clients, the operator every client; any other is 404.
    async fn managed_client(&self, by: &Principal, id: &str) -> Result<ClientRecord, ApiError> {
        by.require(Scope::Admin)?;
        let not_found = || ApiError::not_found(format!("client {id:?} not found"));
        if client_id_shape(id).is_none() {
            return Err(not_found());
        }
        let record = self
            .store
            .get_client(id)
            .await
            .map_err(store_error)?
            .filter(|r| r.tenant == by.tenant || by.has(Scope::Operator))
            .ok_or_else(not_found)?;
        if record.client_id == OPERATOR_CLIENT_ID {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the operator key is managed by the platform (`taskmesh up` or TASKMESH_ADMIN_KEY), not through the API",
            ));
        }
        Ok(record)
    }

    /// The clients an admin manages: its tenant's (every tenant's for the
    /// operator). Never their keys (only hashes are kept, and not shown).
    pub async fn list_clients(&self, by: &Principal) -> Result<Vec<ClientRecord>, ApiError> {
        by.require(Scope::Admin)?;
        let tenant = (!by.has(Scope::Operator)).then_some(by.tenant.as_str());
        self.store.list_clients(tenant).await.map_err(store_error)
    }

    /// Revokes a client: its key stops working on every router within [`CLIENT_TTL`].
    pub async fn revoke_client(&self, by: &Principal, id: &str) -> Result<(), ApiError> {
        let record = self.managed_client(by, id).await?;
        self.store
            .delete_client(&record.client_id)
            .await
            .map_err(store_error)?;
        self.forget(id);
        tracing::info!(client_id = %id, tenant = %record.tenant, "client revoked");
        Ok(())
    }

    /// Gives a client a new key (shown once); the old one stops working on
    /// every router within [`CLIENT_TTL`].
    pub async fn rotate_client(
        &self,
        by: &Principal,
        id: &str,
    ) -> Result<(ClientRecord, String), ApiError> {
        let mut record = self.managed_client(by, id).await?;
        let key = format!("tm_{}_{}", record.client_id, random_hex(32));
        record.key_sha256 = sha256_hex(key.as_bytes());
        self.store.put_client(&record).await.map_err(store_error)?;
        self.forget(id);
        tracing::info!(client_id = %id, tenant = %record.tenant, "client key rotated");
        Ok((record, key))
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
                "scopes are some of \"invoke\", \"admin\" and (granted by the operator only) \"metrics\"",
            ));
        }
        if request.scopes.contains(&Scope::Metrics) && !by.has(Scope::Operator) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "only the operator can grant the metrics scope (metrics cover every tenant)",
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

    fn bearer(key: &str) -> String {
        format!("Bearer {key}")
    }

    async fn fixture() -> (tempfile::TempDir, Arc<dyn Store>, Auth, Principal) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::EmbeddedStore::open(&dir.path().join("db.redb")).unwrap());
        let auth = Auth::new(store.clone(), None);
        let operator_key = auth.ensure_operator().await.unwrap().unwrap();
        let operator = auth
            .authenticate(Some(&bearer(&operator_key)))
            .await
            .unwrap();
        (dir, store, auth, operator)
    }

    fn new_client(tenant: &str, scopes: Vec<Scope>) -> NewClient {
        NewClient {
            name: "c".into(),
            tenant: Some(tenant.into()),
            scopes,
            plan: Plan::default(),
        }
    }

    #[tokio::test]
    async fn a_revoked_key_stops_at_once_here_and_within_the_ttl_elsewhere() {
        let (_dir, store, auth, operator) = fixture().await;
        let (record, key) = auth
            .create_client(&operator, new_client("acme", vec![Scope::Invoke]))
            .await
            .unwrap();
        // Another router over the same store has the client cached.
        let other = Auth::new(store, None);
        assert!(other.authenticate(Some(&bearer(&key))).await.is_ok());
        assert!(auth.authenticate(Some(&bearer(&key))).await.is_ok());

        auth.revoke_client(&operator, &record.client_id)
            .await
            .unwrap();
        let err = auth.authenticate(Some(&bearer(&key))).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthenticated);
        std::thread::sleep(CLIENT_TTL + Duration::from_millis(50));
        let err = other.authenticate(Some(&bearer(&key))).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Unauthenticated);
        // Gone means gone: a second revoke finds nothing.
        let err = auth
            .revoke_client(&operator, &record.client_id)
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
    }

    #[tokio::test]
    async fn a_rotated_client_has_a_new_key_and_the_old_one_stops() {
        let (_dir, _store, auth, operator) = fixture().await;
        let (record, old) = auth
            .create_client(&operator, new_client("acme", vec![Scope::Invoke]))
            .await
            .unwrap();
        let (rotated, new) = auth
            .rotate_client(&operator, &record.client_id)
            .await
            .unwrap();
        assert_eq!(rotated.client_id, record.client_id);
        assert_ne!(old, new);
        assert!(auth.authenticate(Some(&bearer(&old))).await.is_err());
        let p = auth.authenticate(Some(&bearer(&new))).await.unwrap();
        assert_eq!((p.tenant.as_str(), p.scopes), ("acme", vec![Scope::Invoke]));
    }

    #[tokio::test]
    async fn admins_manage_only_their_tenant_and_never_the_operator() {
        let (_dir, _store, auth, operator) = fixture().await;
        let (acme_client, _) = auth
            .create_client(&operator, new_client("acme", vec![Scope::Invoke]))
            .await
            .unwrap();
        let (_, other_admin_key) = auth
            .create_client(
                &operator,
                new_client("other", vec![Scope::Admin, Scope::Invoke]),
            )
            .await
            .unwrap();
        let other_admin = auth
            .authenticate(Some(&bearer(&other_admin_key)))
            .await
            .unwrap();
        for result in [
            auth.revoke_client(&other_admin, &acme_client.client_id)
                .await,
            auth.rotate_client(&other_admin, &acme_client.client_id)
                .await
                .map(drop),
            auth.revoke_client(&other_admin, "not-an-id").await,
        ] {
            assert_eq!(result.unwrap_err().code, ErrorCode::NotFound);
        }
        let err = auth
            .revoke_client(&operator, OPERATOR_CLIENT_ID)
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        let (_, invoker_key) = auth
            .create_client(&operator, new_client("acme", vec![Scope::Invoke]))
            .await
            .unwrap();
        let invoker = auth
            .authenticate(Some(&bearer(&invoker_key)))
            .await
            .unwrap();
        let err = auth
            .revoke_client(&invoker, &acme_client.client_id)
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
    }

    #[tokio::test]
    async fn invented_client_ids_cost_a_bounded_number_of_store_reads() {
        let (_dir, _store, auth, operator) = fixture().await;
        let invented = |i: u32| format!("tm_{i:016x}_{}", "a".repeat(64));
        // Spend this second's budget of reads for unknown ids.
        for i in 0..MAX_UNKNOWN_READS_PER_S {
            assert!(auth
                .authenticate(Some(&bearer(&invented(i))))
                .await
                .is_err());
        }
        // An id seen this second is answered from the cache (no read needed),
        // and a real client created now is refused until the budget renews:
        // nothing past the budget reached the store.
        let (_, key) = auth
            .create_client(&operator, new_client("acme", vec![Scope::Invoke]))
            .await
            .unwrap();
        let err = auth.authenticate(Some(&bearer(&key))).await.unwrap_err();
        assert_eq!(
            (err.code, err.retry_after_s),
            (ErrorCode::Unavailable, Some(1))
        );
        std::thread::sleep(Duration::from_millis(1050));
        assert!(auth.authenticate(Some(&bearer(&key))).await.is_ok());
    }
}
