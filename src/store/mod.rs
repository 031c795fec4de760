//! Storage, one trait per kind of state: [`SessionStore`] holds the
//! short-lived "this Keycloak session passed factor F at T" facts (Redis or
//! memory). Implementations live beside it; `conformance` holds the one test
//! suite every implementation of a trait must pass.

pub mod conformance;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::config::StorageConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Factor {
    Totp,
    Email,
    Sms,
    Recovery,
}

impl Factor {
    pub fn as_str(self) -> &'static str {
        match self {
            Factor::Totp => "totp",
            Factor::Email => "email",
            Factor::Sms => "sms",
            Factor::Recovery => "recovery",
        }
    }
}

/// A session's second-factor state: which factor, passed when (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    #[serde(rename = "f")]
    pub factor: Factor,
    pub at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not answer: callers fail closed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Verified second-factor state per Keycloak session. Sessions are named by
/// `token::session_hash(iss, sub, sid)` and grouped by
/// `token::subject_hash(iss, sub)` so that a logout or an administrator reset
/// can end all sessions of a user.
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn get(&self, session: &str) -> Result<Option<Verified>, StoreError>;
    async fn put(
        &self,
        subject: &str,
        session: &str,
        v: Verified,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    async fn remove(&self, subject: &str, session: &str) -> Result<bool, StoreError>;
    /// Removes every session of the subject; returns how many there were.
    async fn remove_subject(&self, subject: &str) -> Result<u64, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The session store named by `storage.redis_url`.
pub fn session_store(
    cfg: &StorageConfig,
    clock: SharedClock,
) -> Result<Arc<dyn SessionStore>, String> {
    let url = cfg.redis_url.expose();
    if url == "memory://" {
        Ok(Arc::new(memory::MemorySessionStore::new(clock)))
    } else {
        let pool = redis::pool(url, cfg.pool_size)?;
        Ok(Arc::new(redis::RedisSessionStore::new(
            pool,
            cfg.key_prefix.clone(),
        )))
    }
}
