//! The router's result cache: successful answers of a function version that
//! declares `cache`, by the canonical hash of their input
//! (`contract::cache::key_of`), answered without touching a node.
//!
//! Per router (in cluster mode each router keeps its own). Bounded three
//! ways: a version's `max_entries` (the oldest entry goes first), a result of
//! at most [`MAX_RESULT_BYTES`], and [`MAX_CACHE_BYTES`] for all versions
//! together (past it nothing more is stored until entries expire or go).
//! Entries expire `ttl_s` after they were stored.
//!
//! Independent layer: names nothing else in the crate.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use contract::cache::CachePolicy;
use contract::FunctionVersion;

/// Largest result stored.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// All stored results together.
pub const MAX_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// (tenant, function, version).
pub type VersionKey = (String, String, u32);
pub type InputKey = [u8; 32];

struct Entry {
    body: Bytes,
    stored: Instant,
    expires: Instant,
}

#[derive(Default)]
struct VersionEntries {
    entries: HashMap<InputKey, Entry>,
    /// Keys in the order they were stored (a key stored again moves nothing:
    /// its old place is skipped when it comes up).
    order: VecDeque<(InputKey, Instant)>,
}

#[derive(Default)]
struct Inner {
    versions: HashMap<VersionKey, VersionEntries>,
    bytes: usize,
}

/// The cached results of every version that declares `cache`.
#[derive(Default)]
pub struct ResultCache {
    inner: Mutex<Inner>,
}

/// The cache's key of `version`.
pub fn version_key(version: &FunctionVersion) -> VersionKey {
    (
        version.tenant.clone(),
        version.name.clone(),
        version.version,
    )
}

/// What the result cache does for a call.
pub enum CacheUse {
    /// Answered from the cache; no node was asked.
    Hit,
    /// Asked a node; a 200 answer's body is gathered here to be stored.
    Fill {
        input: InputKey,
        body: Vec<u8>,
        /// Set once the answer is not a 200, is too large to keep, or is stored.
        skip: bool,
    },
    /// The caller asked not to store (`cache-control: no-store`).
    Bypass,
}

impl CacheUse {
    /// The answer's status is known: only a 200 is stored. Returns the
    /// `x-taskmesh-cache` value to send, if any.
    pub fn answered(&mut self, status: u16) -> Option<&'static str> {
        match self {
            CacheUse::Fill { skip, .. } => {
                *skip = status != 200;
                Some("miss")
            }
            CacheUse::Hit => Some("hit"),
            CacheUse::Bypass => None,
        }
    }

    /// Gathers a chunk of the node's answer; at its end, the input and the
    /// whole answer to store.
    pub fn gather(&mut self, chunk: Option<&Bytes>, end: bool) -> Option<(InputKey, Bytes)> {
        let CacheUse::Fill { input, body, skip } = self else {
            return None;
        };
        if *skip {
            return None;
        }
        if let Some(chunk) = chunk {
            if body.len() + chunk.len() > MAX_RESULT_BYTES {
                *skip = true;
                *body = Vec::new();
                return None;
            }
            body.extend_from_slice(chunk);
        }
        if !end {
            return None;
        }
        *skip = true;
        Some((*input, Bytes::from(std::mem::take(body))))
    }
}

/// The request's `cache-control` directives that matter here: (no-cache, no-store).
fn directives(headers: &http::HeaderMap) -> (bool, bool) {
    let mut found = (false, false);
    for directive in headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let directive = directive.trim();
        found.0 |= directive.eq_ignore_ascii_case("no-cache");
        found.1 |= directive.eq_ignore_ascii_case("no-store");
    }
    found
}

impl ResultCache {
    /// A call of `version` (which declares `cache`) with `input`: what the
    /// cache does for it, and the stored answer on a hit.
    /// `cache-control: no-cache` skips the look-up, `no-store` both.
    pub fn look_up(
        &self,
        version: &FunctionVersion,
        headers: &http::HeaderMap,
        input: &serde_json::Value,
        now: Instant,
    ) -> (CacheUse, Option<Bytes>) {
        let (no_cache, no_store) = directives(headers);
        if no_store {
            return (CacheUse::Bypass, None);
        }
        let key = contract::cache::key_of(input);
        if !no_cache {
            if let Some(hit) = self.get(&version_key(version), &key, now) {
                return (CacheUse::Hit, Some(hit));
            }
        }
        let fill = CacheUse::Fill {
            input: key,
            body: Vec::new(),
            skip: false,
        };
        (fill, None)
    }

    /// Stores the answer to `input` of `version` (which declares `cache`).
    pub fn put(&self, version: &FunctionVersion, input: InputKey, body: Bytes, now: Instant) {
        if let Some(policy) = &version.definition.cache {
            self.store(&version_key(version), policy, input, body, now);
        }
    }

    /// The stored result of `input` for `version`, if fresh.
    pub fn get(&self, version: &VersionKey, input: &InputKey, now: Instant) -> Option<Bytes> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entries = inner.versions.get_mut(version)?;
        let entry = entries.entries.get(input)?;
        if entry.expires > now {
            return Some(entry.body.clone());
        }
        let gone = entries.entries.remove(input).map_or(0, |e| e.body.len());
        inner.bytes -= gone;
        None
    }

    /// Stores `body` as the result of `input` for `version` under `policy`.
    pub fn store(
        &self,
        version: &VersionKey,
        policy: &CachePolicy,
        input: InputKey,
        body: Bytes,
        now: Instant,
    ) {
        if body.len() > MAX_RESULT_BYTES {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { versions, bytes } = &mut *inner;
        let entries = match versions.get_mut(version) {
            Some(entries) => entries,
            None => versions.entry(version.clone()).or_default(),
        };
        let max = policy.max_entries.max(1) as usize;
        // Room: expired entries first, then the oldest, down to max - 1.
        while let Some((key, stored)) = entries.order.front().copied() {
            let expired = stored + Duration::from_secs(policy.ttl_s) <= now;
            if !expired && entries.entries.len() < max {
                break;
            }
            entries.order.pop_front();
            // A key stored again later keeps its newer entry.
            if entries
                .entries
                .get(&key)
                .is_some_and(|e| e.stored == stored)
            {
                if let Some(entry) = entries.entries.remove(&key) {
                    *bytes -= entry.body.len();
                }
            }
        }
        if *bytes + body.len() > MAX_CACHE_BYTES {
            return;
        }
        *bytes += body.len();
        let expires = now + Duration::from_secs(policy.ttl_s);
        let entry = Entry {
            body,
            stored: now,
            expires,
        };
        if let Some(old) = entries.entries.insert(input, entry) {
            *bytes -= old.body.len();
        }
        entries.order.push_back((input, now));
    }

    /// Results stored now, in all.
    pub fn len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.versions.values().map(|v| v.entries.len()).sum()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(tenant: &str, number: u32) -> VersionKey {
        (tenant.to_string(), "f".to_string(), number)
    }

    #[test]
    fn entries_expire_are_bounded_and_stay_per_version_and_tenant() {
        let cache = ResultCache::default();
        let policy = CachePolicy {
            ttl_s: 10,
            max_entries: 2,
        };
        let t0 = Instant::now();
        let v1 = version("acme", 1);
        cache.store(&v1, &policy, [1; 32], Bytes::from_static(b"one"), t0);
        assert_eq!(cache.get(&v1, &[1; 32], t0).as_deref(), Some(&b"one"[..]));
        // Another version, another tenant: not there.
        assert_eq!(cache.get(&version("acme", 2), &[1; 32], t0), None);
        assert_eq!(cache.get(&version("other", 1), &[1; 32], t0), None);
        // Expiry.
        assert_eq!(cache.get(&v1, &[1; 32], t0 + Duration::from_secs(10)), None);
        // At most max_entries: the oldest goes.
        cache.store(&v1, &policy, [2; 32], Bytes::from_static(b"two"), t0);
        cache.store(&v1, &policy, [3; 32], Bytes::from_static(b"three"), t0);
        cache.store(&v1, &policy, [4; 32], Bytes::from_static(b"four"), t0);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&v1, &[2; 32], t0), None);
        assert!(cache.get(&v1, &[4; 32], t0).is_some());
        // Too large to keep.
        cache.store(
            &v1,
            &policy,
            [5; 32],
            Bytes::from(vec![0; MAX_RESULT_BYTES + 1]),
            t0,
        );
        assert_eq!(cache.get(&v1, &[5; 32], t0), None);
    }
}
