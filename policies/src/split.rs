//! Weighted, sticky traffic splits for aliases.
//!
//! An alias lists routes (a version and an integer weight). A call is placed
//! by hashing its routing key together with the alias name to a fraction
//! `f` in `[0, 1)`; the routes take consecutive ranges of `[0, 1)` in the
//! order they are listed, each as wide as its share of the total weight, and
//! the call goes to the route whose range holds `f`. So:
//! - one routing key always gets the same version while the routes stay the
//!   same (sticky), and a 10 % route is 10 % of routing keys, exactly up to
//!   the hash's uniformity, at any traffic level;
//! - the same key lands at different places for different aliases, so two
//!   canaries do not pick the same unlucky callers;
//! - when only the last route grows (as a rollout does: its target is listed
//!   last), callers only ever move onto it, never off it.
//!
//! The hash is FNV-1a over `alias`, a 0 byte and the key, finished with the
//! SplitMix64 mixer so that similar keys spread evenly. It is fixed here (not
//! `std`'s hasher, which may change between Rust releases), so every router
//! of a cluster, of any build, places a key the same way.

use serde::{Deserialize, Serialize};

/// At most this many routes per alias.
pub const MAX_ROUTES: usize = 16;
/// The largest weight of one route.
pub const MAX_WEIGHT: u64 = 1_000_000;

/// One route of an alias: a version and its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub version: u32,
    pub weight: u32,
}

/// Why a set of routes is refused, with the index of the offending route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("an alias needs at least one route")]
    Empty,
    #[error("an alias has at most {MAX_ROUTES} routes, got {0}")]
    TooMany(usize),
    #[error("version must be a positive integer, got {version}")]
    BadVersion { index: usize, version: u32 },
    #[error("weight must be at most {MAX_WEIGHT}, got {weight}")]
    WeightTooLarge { index: usize, weight: u32 },
    #[error("version {version} is listed twice")]
    Duplicate { index: usize, version: u32 },
    #[error("at least one weight must be positive")]
    AllZero,
}

impl SplitError {
    /// The route the error is about, if one.
    pub fn index(&self) -> Option<usize> {
        match self {
            SplitError::BadVersion { index, .. }
            | SplitError::WeightTooLarge { index, .. }
            | SplitError::Duplicate { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// Checks routes: 1 to [`MAX_ROUTES`] of them, positive distinct versions,
/// weights from 0 to [`MAX_WEIGHT`], not all zero.
pub fn validate(routes: &[Route]) -> Result<(), SplitError> {
    if routes.is_empty() {
        return Err(SplitError::Empty);
    }
    if routes.len() > MAX_ROUTES {
        return Err(SplitError::TooMany(routes.len()));
    }
    for (index, route) in routes.iter().enumerate() {
        if route.version == 0 {
            return Err(SplitError::BadVersion {
                index,
                version: route.version,
            });
        }
        if u64::from(route.weight) > MAX_WEIGHT {
            return Err(SplitError::WeightTooLarge {
                index,
                weight: route.weight,
            });
        }
        if routes[..index].iter().any(|r| r.version == route.version) {
            return Err(SplitError::Duplicate {
                index,
                version: route.version,
            });
        }
    }
    if routes.iter().all(|r| r.weight == 0) {
        return Err(SplitError::AllZero);
    }
    Ok(())
}

/// The 64-bit placement hash of a routing key under an alias.
pub fn hash(alias: &str, key: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for byte in alias.bytes().chain(std::iter::once(0)).chain(key.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(PRIME);
    }
    // SplitMix64's finaliser.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The version a routing key gets under an alias's routes (valid routes, see
/// [`validate`]); `None` only when no route has weight.
pub fn pick(routes: &[Route], alias: &str, key: &str) -> Option<u32> {
    let total: u64 = routes.iter().map(|r| u64::from(r.weight)).sum();
    if total == 0 {
        return None;
    }
    // f·total without bias: the high 64 bits of hash × total.
    let point = ((u128::from(hash(alias, key)) * u128::from(total)) >> 64) as u64;
    let mut end = 0u64;
    for route in routes {
        end += u64::from(route.weight);
        if point < end {
            return Some(route.version);
        }
    }
    routes
        .iter()
        .rev()
        .find(|r| r.weight > 0)
        .map(|r| r.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(list: &[(u32, u32)]) -> Vec<Route> {
        list.iter()
            .map(|&(version, weight)| Route { version, weight })
            .collect()
    }

    #[test]
    fn a_ninety_ten_split_is_ten_percent_of_keys() {
        let r = routes(&[(3, 90), (4, 10)]);
        let n = 100_000;
        let fours = (0..n)
            .filter(|i| pick(&r, "live", &format!("key-{i}")) == Some(4))
            .count();
        let share = fours as f64 / n as f64;
        assert!((share - 0.10).abs() < 0.005, "share {share}");
    }

    #[test]
    fn the_same_key_gets_the_same_version_and_aliases_differ() {
        let r = routes(&[(1, 50), (2, 50)]);
        for i in 0..1000 {
            let key = format!("caller-{i}");
            assert_eq!(pick(&r, "live", &key), pick(&r, "live", &key));
        }
        let differ = (0..1000)
            .filter(|i| {
                let key = format!("caller-{i}");
                pick(&r, "live", &key) != pick(&r, "beta", &key)
            })
            .count();
        assert!(differ > 400 && differ < 600, "{differ}");
    }

    #[test]
    fn growing_the_last_route_only_moves_callers_onto_it() {
        let steps = [5u32, 25, 50, 100];
        let mut on_new = vec![false; 5000];
        for p in steps {
            let r = routes(&[(1, 100 - p), (2, p)]);
            for (i, was) in on_new.iter_mut().enumerate() {
                let now = pick(&r, "live", &format!("k{i}")) == Some(2);
                assert!(now || !*was, "key k{i} left the new version at {p}%");
                *was = now;
            }
        }
        assert!(on_new.iter().all(|x| *x));
    }

    #[test]
    fn zero_weights_are_never_picked_and_validation_names_the_route() {
        let r = routes(&[(1, 0), (2, 7)]);
        assert!((0..1000).all(|i| pick(&r, "a", &i.to_string()) == Some(2)));
        assert_eq!(pick(&routes(&[(1, 0)]), "a", "k"), None);
        assert_eq!(validate(&[]), Err(SplitError::Empty));
        assert_eq!(
            validate(&routes(&[(1, 0), (2, 0)])),
            Err(SplitError::AllZero)
        );
        let dup = validate(&routes(&[(1, 1), (1, 2)])).unwrap_err();
        assert_eq!(dup.index(), Some(1));
        assert!(validate(&routes(&[(0, 1)])).is_err());
        assert!(validate(&routes(&[(1, 2_000_000)])).is_err());
        assert!(validate(&routes(&[(3, 90), (4, 10)])).is_ok());
    }

    #[test]
    fn the_hash_is_fixed() {
        // Routers of different builds must agree: pin one value.
        assert_eq!(hash("live", "abc"), hash("live", "abc"));
        assert_ne!(hash("live", "abc"), hash("liv", "eabc"));
        assert_eq!(hash("", ""), {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            h ^= 0;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            h ^= h >> 30;
            h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            h ^= h >> 27;
            h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
            h ^ (h >> 31)
        });
    }
}
