//! The stored form of a client (an API key's owner).

use contract::principal::{Plan, Scope};
use serde::{Deserialize, Serialize};

/// A stored client. Holds the key's hash, never the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub client_id: String,
    pub name: String,
    pub tenant: String,
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 of the whole key.
    pub key_sha256: String,
    #[serde(default)]
    pub plan: Plan,
    pub created_at_ms: u64,
}
