//! Recently verified tokens, so that the hot path does not verify the same
//! RS256 signature on every request of a session. Keyed by the SHA-256 of the
//! whole token (a forged token cannot collide with a cached one), bounded in
//! size, and an entry never outlives its token's `exp`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::Identity;

const SHARDS: usize = 16;
const PER_SHARD: usize = 1024;

type Key = [u8; 32];

pub struct TokenCache {
    shards: Vec<Mutex<HashMap<Key, Arc<Identity>>>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenCache {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn key(token: &str) -> Key {
        Sha256::digest(token.as_bytes()).into()
    }

    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, Arc<Identity>>> {
        &self.shards[key[0] as usize % SHARDS]
    }

    /// The identity of a cached token still valid at `now` (`valid_until` is
    /// the token's exp plus the leeway).
    pub fn get(&self, key: &Key, now: i64) -> Option<Arc<Identity>> {
        let mut shard = self.shard(key).lock();
        match shard.get(key) {
            Some(id) if id.valid_until > now => Some(id.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: Key, id: Arc<Identity>, now: i64) {
        let mut shard = self.shard(&key).lock();
        if shard.len() >= PER_SHARD {
            shard.retain(|_, v| v.valid_until > now);
            if shard.len() >= PER_SHARD {
                // Still full of live tokens: drop an arbitrary one. A miss
                // only costs one signature verification.
                if let Some(k) = shard.keys().next().copied() {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(key, id);
    }

    /// Forget everything, e.g. when the signing keys changed.
    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
