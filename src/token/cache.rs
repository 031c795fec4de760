//! Recently verified tokens, so that the hot path does not verify the same
//! RS256 signature on every request of a session. Keyed by the SHA-256 of the
//! whole token (a forged token cannot collide with a cached one), bounded to
//! `cache.token_capacity` entries, and an entry is never returned at or past
//! its token's `exp` plus the leeway.
//!
//! The store is quick_cache's sync cache: sharded, O(1) insert and eviction
//! (S3-FIFO-like, scan resistant, so a burst of one-off tokens does not push
//! out the sessions that keep coming back), no background thread and no
//! async. Expiry is checked against the injected clock on every hit rather
//! than by a timer, so tests control it and an expired token can never be
//! served between two sweeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

use super::Identity;
use crate::metrics::CacheCounters;

/// `cache.token_capacity` when the configuration does not say.
pub const DEFAULT_CAPACITY: usize = 65_536;

pub type Key = [u8; 32];

pub struct TokenCache {
    /// `None` when `cache.token_capacity = 0`: every token is verified.
    entries: Option<Cache<Key, Arc<Identity>>>,
    /// Bumped by [`TokenCache::clear`]. A verification that began before a
    /// key change may finish after it; its result must not be cached, or a
    /// token of a withdrawn key would stay accepted until it expires.
    generation: AtomicU64,
    /// `twofa_cache_{hits,misses}_total{cache="token"}`, once wired.
    counters: OnceLock<CacheCounters>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: (capacity > 0).then(|| Cache::new(capacity)),
            generation: AtomicU64::new(0),
            counters: OnceLock::new(),
        }
    }

    /// Counts this cache's hits and misses from now on (the first call
    /// wins).
    pub fn count_with(&self, counters: CacheCounters) {
        let _ = self.counters.set(counters);
    }

    fn count(&self, hit: bool) {
        if let Some(c) = self.counters.get() {
            if hit {
                c.hits.inc();
            } else {
                c.misses.inc();
            }
        }
    }

    pub fn key(token: &str) -> Key {
        Sha256::digest(token.as_bytes()).into()
    }

    /// Read before a verification starts; hand it to [`TokenCache::insert`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The identity of a cached token still valid at `now`.
    pub fn get(&self, key: &Key, now: i64) -> Option<Arc<Identity>> {
        let entries = self.entries.as_ref()?;
        let found = entries.get(key).and_then(|id| {
            if id.valid_until() > now {
                Some(id)
            } else {
                entries.remove(key);
                None
            }
        });
        self.count(found.is_some());
        found
    }

    /// Remembers a token verified under the key set of `generation`; a no-op
    /// if the key set has changed since.
    pub fn insert(&self, key: Key, id: Arc<Identity>, generation: u64) {
        let Some(entries) = &self.entries else {
            return;
        };
        if self.generation() != generation {
            return;
        }
        entries.insert(key, id);
        // A clear() between the check above and the insert would have missed
        // this entry: the generation it bumped first tells us to take it back.
        if self.generation() != generation {
            entries.remove(&key);
        }
    }

    /// Forget everything, e.g. when the signing keys changed.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(entries) = &self.entries {
            entries.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, Cache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries the cache holds at most (0: disabled).
    pub fn capacity(&self) -> u64 {
        self.entries.as_ref().map_or(0, Cache::capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::IdentityParts;

    fn identity(i: usize, valid_until: i64) -> Arc<Identity> {
        let (sub, sid) = (format!("user-{i}"), format!("session-{i}"));
        Arc::new(Identity::new(
            "https://kc/realms/r".into(),
            IdentityParts {
                sub: &sub,
                sid: Some(&sid),
                roles: &["user"],
                exp: valid_until - 30,
                valid_until,
                ..Default::default()
            },
        ))
    }

    fn key(i: usize) -> Key {
        TokenCache::key(&format!("token-{i}"))
    }

    #[test]
    fn capacity_holds_under_ten_times_as_many_tokens() {
        let cap = 1000;
        let c = TokenCache::new(cap);
        for i in 0..10 * cap {
            c.insert(key(i), identity(i, 100), c.generation());
            assert!(
                c.len() <= cap,
                "{} entries after {} inserts",
                c.len(),
                i + 1
            );
        }
        assert!(c.len() > cap / 2, "only {} entries kept", c.len());
        // What is there is what was put there.
        let hits = (0..10 * cap)
            .filter_map(|i| c.get(&key(i), 0).map(|id| (i, id)))
            .inspect(|(i, id)| assert_eq!(id.sub(), format!("user-{i}")))
            .count();
        assert_eq!(hits, c.len());
    }

    #[test]
    fn an_entry_expires_at_valid_until() {
        use crate::clock::{Clock, ManualClock};
        let clock = ManualClock::new(1_000);
        let c = TokenCache::new(16);
        c.insert(key(1), identity(1, 1_010), c.generation());
        assert!(c.get(&key(1), clock.now()).is_some());
        clock.advance(9);
        assert!(c.get(&key(1), clock.now()).is_some(), "one second left");
        clock.advance(1);
        assert!(c.get(&key(1), clock.now()).is_none(), "at valid_until");
        assert!(c.is_empty(), "the expired entry is dropped");
        // Going back in time does not bring it back.
        assert!(c.get(&key(1), 0).is_none());
    }

    #[test]
    fn clear_forgets_everything_and_late_inserts() {
        let c = TokenCache::new(16);
        let before = c.generation();
        c.insert(key(1), identity(1, 100), before);
        c.clear();
        assert!(c.get(&key(1), 0).is_none());
        // A verification that started before the key change finishes now.
        c.insert(key(2), identity(2, 100), before);
        assert!(c.get(&key(2), 0).is_none(), "cached across a key change");
        c.insert(key(2), identity(2, 100), c.generation());
        assert!(c.get(&key(2), 0).is_some());
    }

    #[test]
    fn hits_and_misses_are_counted() {
        let m = crate::metrics::Metrics::new().expect("metrics");
        let c = TokenCache::new(16);
        c.count_with(m.token_cache.clone());
        assert!(c.get(&key(1), 0).is_none());
        c.insert(key(1), identity(1, 100), c.generation());
        assert!(c.get(&key(1), 0).is_some());
        assert!(c.get(&key(1), 0).is_some());
        // Expired: a miss.
        assert!(c.get(&key(1), 100).is_none());
        assert_eq!(
            (m.token_cache.hits.get(), m.token_cache.misses.get()),
            (2, 2)
        );
        assert_eq!(m.session_cache.hits.get(), 0);
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let c = TokenCache::new(0);
        c.insert(key(1), identity(1, 100), c.generation());
        assert!(c.get(&key(1), 0).is_none());
        assert_eq!((c.len(), c.capacity()), (0, 0));
    }

    #[test]
    fn the_default_capacity_is_what_the_cache_holds() {
        let c = TokenCache::new(DEFAULT_CAPACITY);
        assert_eq!(c.capacity(), DEFAULT_CAPACITY as u64);
    }
}
