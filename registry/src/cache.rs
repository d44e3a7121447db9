//! Bounded caches of what was read from the store, and a budget for reads of
//! things no cache knows (invented names and ids cost at most so many store
//! round trips a second, whoever sends them).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Values read from the store (found or absent), each with when it was read.
/// At most `max` entries: a full cache first drops entries older than `ttl`,
/// then, if still full, everything (the next reads fill it again).
pub struct ReadCache<K, V> {
    map: RwLock<HashMap<K, (V, Instant)>>,
    ttl: Duration,
    max: usize,
}

impl<K: Hash + Eq, V: Clone> ReadCache<K, V> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        ReadCache {
            map: RwLock::new(HashMap::new()),
            ttl,
            max,
        }
    }

    /// The cached value and whether it is still fresh (read within the TTL).
    pub fn get(&self, key: &K) -> Option<(V, bool)> {
        let map = self.map.read().expect("read cache lock");
        map.get(key)
            .map(|(value, read_at)| (value.clone(), read_at.elapsed() < self.ttl))
    }

    pub fn insert(&self, key: K, value: V) {
        let mut map = self.map.write().expect("read cache lock");
        if map.len() >= self.max && !map.contains_key(&key) {
            let ttl = self.ttl;
            map.retain(|_, (_, read_at)| read_at.elapsed() < ttl);
            if map.len() >= self.max {
                map.clear();
            }
        }
        map.insert(key, (value, Instant::now()));
    }

    pub fn remove(&self, key: &K) {
        self.map.write().expect("read cache lock").remove(key);
    }

    pub fn len(&self) -> usize {
        self.map.read().expect("read cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Store reads per second for keys no cache knows.
pub struct MissBudget {
    per_second: u32,
    /// (when the current second started, reads taken in it)
    window: Mutex<(Instant, u32)>,
}

impl MissBudget {
    pub fn new(per_second: u32) -> Self {
        MissBudget {
            per_second,
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Takes one read from this second's budget; false when it is spent.
    pub fn try_take(&self) -> bool {
        let mut window = self.window.lock().expect("miss budget lock");
        if window.0.elapsed() >= Duration::from_secs(1) {
            *window = (Instant::now(), 0);
        }
        if window.1 >= self.per_second {
            return false;
        }
        window.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_drops_stale_entries_then_everything() {
        let cache = ReadCache::new(Duration::from_millis(20), 3);
        for i in 0..3 {
            cache.insert(i, Some(i));
        }
        assert_eq!(cache.get(&1), Some((Some(1), true)));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(cache.get(&1), Some((Some(1), false)), "stale, still there");
        cache.insert(3, None);
        assert_eq!(cache.len(), 1, "the stale ones made room");
        for i in 4..10 {
            cache.insert(i, None);
        }
        assert!(cache.len() <= 3, "never more than the bound");
        cache.remove(&9);
        assert_eq!(cache.get(&9), None);
    }

    #[test]
    fn the_budget_renews_every_second() {
        let budget = MissBudget::new(2);
        assert!(budget.try_take());
        assert!(budget.try_take());
        assert!(!budget.try_take());
        std::thread::sleep(Duration::from_millis(1010));
        assert!(budget.try_take());
    }
}
