//! The cluster key: the proof that a call to a node comes from a router (or
//! the registry) of its cluster. Only routers reach nodes; a node refuses any
//! call that does not carry the key in `x-taskmesh-cluster-key` (401).
//!
//! `taskmesh up` generates one (`<data-dir>/cluster.key`, mode 0600); in
//! cluster mode every router, node and registry is given the same one
//! (`--cluster-key-file` or `TASKMESH_CLUSTER_KEY`). The key never appears in
//! logs, errors or `Debug` output.

use serde::Deserialize;

/// Fewest characters a cluster key may have (e.g. `openssl rand -hex 32` gives 64).
pub const MIN_LEN: usize = 32;
/// Most characters a cluster key may have (it travels in a header).
pub const MAX_LEN: usize = 256;

/// A validated cluster key.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ClusterKey(String);

impl ClusterKey {
    /// Reads a key as given in a file or the environment: surrounding
    /// whitespace (a file's trailing newline) is trimmed; what is left must be
    /// [`MIN_LEN`]..=[`MAX_LEN`] visible ASCII characters.
    pub fn parse(raw: &str) -> Result<Self, String> {
        parse_shared_secret(raw, "a cluster key").map(ClusterKey)
    }

    /// The key, for the header a router sends.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this key, in time that does not depend on where
    /// they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        if presented.len() != expected.len() {
            return false;
        }
        presented
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

/// Reads a shared secret (the cluster key, an operator key) as given in a
/// file or the environment: surrounding whitespace (a file's trailing newline,
/// as `openssl rand -hex 32 > key` and `kubectl create secret --from-file`
/// keep it) is trimmed; what is left must be [`MIN_LEN`]..=[`MAX_LEN`]
/// visible ASCII characters. `what` names the secret in the error, which
/// never contains the secret itself.
pub fn parse_shared_secret(raw: &str, what: &str) -> Result<String, String> {
    let key = raw.trim();
    if key.len() < MIN_LEN || key.len() > MAX_LEN {
        return Err(format!(
            "{what} has {MIN_LEN} to {MAX_LEN} characters (this one has {}); make one with `openssl rand -hex 32`",
            key.len()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{what} is visible ASCII characters only (no spaces inside)"
        ));
    }
    Ok(key.to_string())
}

impl TryFrom<String> for ClusterKey {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        ClusterKey::parse(&raw)
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_trimmed_and_checked() {
        let hex = "ab".repeat(32);
        let key = ClusterKey::parse(&format!("{hex}\n")).unwrap();
        assert_eq!(key.expose(), hex);
        assert!(ClusterKey::parse("short").is_err());
        assert!(ClusterKey::parse(&format!("{} {}", "a".repeat(20), "b".repeat(20))).is_err());
        assert!(ClusterKey::parse(&"a".repeat(MAX_LEN + 1)).is_err());
        assert!(ClusterKey::parse(&"é".repeat(20)).is_err());
    }

    #[test]
    fn only_the_same_key_matches_and_debug_never_shows_it() {
        let key = ClusterKey::parse(&"k".repeat(40)).unwrap();
        assert!(key.matches("k".repeat(40).as_bytes()));
        assert!(!key.matches("k".repeat(39).as_bytes()));
        assert!(!key.matches(format!("{}j", "k".repeat(39)).as_bytes()));
        assert!(!key.matches(b""));
        assert!(!format!("{key:?}").contains("kkkk"));
    }
}
