//! Storage, one trait per kind of state:
//! - [`SessionStore`]: "this Keycloak session passed factor F at T" (Redis or memory);
//! - [`EphemeralStore`]: other short-lived state with TTLs: pending one-time
//!   codes, pending TOTP secrets, attempt counters, lockouts, resend timers,
//!   seen logout-token `jti`s (Redis or memory);
//! - [`ProfileStore`]: what must survive restarts: profiles, enrolled factors,
//!   recovery codes, the last accepted TOTP step, the consecutive-failure
//!   count (PostgreSQL or SQLite).
//!
//! Implementations live beside the traits; `tests/it/conformance.rs` holds
//! the one test suite per trait that every implementation must pass. Every
//! short-lived key is named in [`keys`].

pub mod keys;
pub mod memory;
pub mod migrations;
pub mod pg_tls;
pub mod postgres;
pub mod redis;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::config::StorageConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The backend answered, but this build cannot use it as configured: a
    /// schema it was not written for, a TLS certificate that fails
    /// verification. Waiting does not help; callers fail closed, and at
    /// start the process refuses to run.
    #[error("store cannot be used: {0}")]
    Incompatible(String),
}

/// The names of one Keycloak session: hashes of (iss, sub, sid), of
/// (iss, sub) for the subject's index (and the Redis Cluster hash tag of
/// the session's keys, see [`keys`]), and of (iss, sid) for back-channel
/// logout tokens that name only the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionIds {
    pub session: String,
    pub subject: String,
    pub sid: String,
}

impl SessionIds {
    pub fn new(iss: &str, sub: &str, sid: &str) -> Self {
        Self {
            session: crate::token::session_hash(iss, sub, sid),
            subject: crate::token::subject_hash(iss, sub),
            sid: crate::token::sid_hash(iss, sid),
        }
    }
}

/// Verified second-factor state per Keycloak session. Looked up by the
/// subject and session hashes on the hot path; removable by subject
/// (administrator reset, logout by `sub`) and by `sid` (logout by session).
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn get(&self, subject: &str, session: &str) -> Result<Option<Verified>, StoreError>;
    async fn put(&self, ids: &SessionIds, v: Verified, ttl: Duration) -> Result<(), StoreError>;
    async fn remove(&self, ids: &SessionIds) -> Result<bool, StoreError>;
    /// Removes every session of the subject; returns how many there were.
    async fn remove_subject(&self, subject: &str) -> Result<u64, StoreError>;
    /// Removes the session known by this `sid` hash, whoever its subject.
    async fn remove_sid(&self, sid: &str) -> Result<bool, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The Redis deployment the storage keys name (`storage.redis_url`,
/// `storage.redis_cluster_urls`, or `storage.redis_sentinel_urls` with
/// `storage.redis_sentinel_master`); `None` for `memory://`. Connects to
/// nothing. [`redis::RedisTarget::tracking_info`] gives the connection
/// settings of the current primary (for an invalidation channel).
pub fn redis_target(cfg: &StorageConfig) -> Result<Option<Arc<redis::RedisTarget>>, String> {
    Ok(redis::RedisTarget::from_config(cfg)?.map(Arc::new))
}

/// The session store the storage keys name: Redis (one server, Cluster or
/// Sentinel) or memory. Its one multiplexed connection is the Check path's.
pub fn session_store(
    cfg: &StorageConfig,
    clock: SharedClock,
) -> Result<Arc<dyn SessionStore>, String> {
    match redis_target(cfg)? {
        None => Ok(Arc::new(memory::MemorySessionStore::new(clock))),
        Some(t) => Ok(Arc::new(redis::RedisSessionStore::new(
            Arc::new(redis::Link::new(t)),
            cfg.key_prefix.clone(),
        ))),
    }
}

/// The short-lived state store the storage keys name. Its Redis connection
/// is separate from the session store's, so that a burst of `/user` traffic
/// queues behind nothing on the Check path's socket.
pub fn ephemeral_store(
    cfg: &StorageConfig,
    clock: SharedClock,
) -> Result<Arc<dyn EphemeralStore>, String> {
    match redis_target(cfg)? {
        None => Ok(Arc::new(memory::MemoryEphemeralStore::new(clock))),
        Some(t) => Ok(Arc::new(redis::RedisEphemeralStore::new(
            Arc::new(redis::Link::new(t)),
            cfg.key_prefix.clone(),
        ))),
    }
}

/// The profile store named by `storage.database_url`. Nothing is connected
/// yet: a database that is down at start makes `/user` answer 503 until it
/// is back.
pub fn profile_store(cfg: &StorageConfig) -> Result<Arc<dyn ProfileStore>, String> {
    let url = cfg.database_url.expose();
    if url.starts_with("sqlite://") {
        Ok(Arc::new(sqlite::SqliteProfileStore::new(url)?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresProfileStore::new(
            url,
            cfg.database_ca_path.as_deref(),
            cfg.pool_size,
        )?))
    } else {
        Err("storage.database_url: must be postgres://… or sqlite://PATH".into())
    }
}

/// Short-lived key/value state with TTLs. Keys are given without the
/// configured prefix; implementations add it. Every key has a TTL.
#[async_trait]
pub trait EphemeralStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError>;
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError>;
    /// Sets only if absent; true when it was set.
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError>;
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;
    /// Deletes only if the current value equals `expected`, atomically; true
    /// when it was deleted. This is how a one-time code is consumed exactly
    /// once under concurrent verification.
    async fn delete_if_eq(&self, key: &str, expected: &str) -> Result<bool, StoreError>;
    /// Increments a counter, creating it with `ttl` if absent (the TTL is not
    /// extended by later increments); returns the new value.
    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError>;
    /// Remaining lifetime of a key, None when absent.
    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;

    /// Takes one attempt from `user`'s budget, before any code is looked at,
    /// in one atomic step (keys [`keys::attempts`], [`keys::lockout`],
    /// [`keys::lockout_series`]):
    /// - while the lockout key exists: [`Attempt::Locked`] with its time left;
    /// - else the counter is incremented (created with TTL `limits.lockout`);
    ///   the attempt that brings it to `limits.max_attempts` also starts the
    ///   lockout: the series level is incremented (remembered for the lockout
    ///   plus [`SERIES_MEMORY`]), the lockout lasts [`lockout_duration`] of
    ///   that level, and the counter is deleted. Either way
    ///   [`Attempt::Granted`].
    ///
    /// However many requests arrive at once, at most `max_attempts` are
    /// granted per lockout period.
    async fn take_attempt(&self, user: &str, limits: AttemptLimits) -> Result<Attempt, StoreError>;
    /// Removes the counter, the lockout and the series of `user` in one step
    /// (a right code; an administrator reset); true when any existed.
    async fn clear_attempts(&self, user: &str) -> Result<bool, StoreError>;
}

/// The attempt budget's settings (`security.max_attempts`, `security.lockout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimits {
    pub max_attempts: u32,
    /// The first lockout of a series.
    pub lockout: Duration,
}

/// What [`EphemeralStore::take_attempt`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The code may be compared. `n` is this attempt's number (1 to
    /// `max_attempts`); `locked_now` is the lockout that this attempt
    /// started, when it was the last one of the budget.
    Granted {
        n: u32,
        locked_now: Option<Duration>,
    },
    /// Locked out for `left` more: the code must not be compared.
    Locked { left: Duration },
}

/// The longest lockout, whatever the doubling says.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(24 * 3600);

/// How long the lockout series is remembered after its latest lockout: a
/// user who gets locked out again within this time waits twice as long.
pub const SERIES_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// `base * 2^(level-1)`, at most [`MAX_LOCKOUT`]. Level 1 is the first
/// lockout of a series.
pub fn lockout_duration(base: Duration, level: u64) -> Duration {
    let shift = level.saturating_sub(1);
    if shift >= 24 {
        // 2^24 times even one second is far beyond the cap.
        return MAX_LOCKOUT;
    }
    base.checked_mul(1u32 << shift)
        .unwrap_or(MAX_LOCKOUT)
        .min(MAX_LOCKOUT)
}

/// A user's profile row (`user_profile`, keyed by the Keycloak `sub`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profile {
    pub subject: String,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
    pub mobile: Option<String>,
    pub mobile_verified: bool,
    /// A contact change waiting for its code; replaces the verified one only
    /// once verified.
    pub pending_email: Option<String>,
    pub pending_mobile: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An enrolled TOTP secret, encrypted (AEAD) with the key `key_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpRecord {
    pub ciphertext: Vec<u8>,
    pub key_id: String,
    pub enabled_at: i64,
}

/// What `reset_user` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetReport {
    pub totp: bool,
    pub recovery_codes: u32,
    pub failures_cleared: bool,
}

/// Durable state. Methods that must be atomic say so; both implementations
/// guarantee it with a transaction or a single conditional statement.
#[async_trait]
pub trait ProfileStore: Send + Sync {
    /// Applies pending versioned migrations and records a checksum for
    /// every applied migration that has none; idempotent. `Incompatible`
    /// when the database recorded migrations this binary does not know or
    /// with other checksums (nothing is changed then).
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Checks, without changing anything, that the database's schema is
    /// this binary's: `Incompatible` as for `migrate`, `Unavailable` while
    /// migrations are pending. Every other method runs this check first
    /// until it has passed once, so no data is read or written through a
    /// schema the code was not written for.
    async fn check_schema(&self) -> Result<(), StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts; false (and no change) when a profile for the subject exists.
    async fn create_profile(&self, p: &Profile) -> Result<bool, StoreError>;
    async fn get_profile(&self, subject: &str) -> Result<Option<Profile>, StoreError>;
    /// Overwrites every column of an existing profile; false when absent.
    async fn update_profile(&self, p: &Profile) -> Result<bool, StoreError>;

    async fn get_totp(&self, subject: &str) -> Result<Option<TotpRecord>, StoreError>;
    /// Enables TOTP; false (and no change) when one is already enabled.
    async fn insert_totp(&self, subject: &str, rec: &TotpRecord) -> Result<bool, StoreError>;
    async fn delete_totp(&self, subject: &str) -> Result<bool, StoreError>;
    /// Every TOTP record, for re-encryption under a new key.
    async fn all_totp(&self) -> Result<Vec<(String, TotpRecord)>, StoreError>;
    /// Replaces the ciphertext only if it is still `old` (compare-and-set).
    async fn reencrypt_totp(
        &self,
        subject: &str,
        old: &TotpRecord,
        new: &TotpRecord,
    ) -> Result<bool, StoreError>;
    /// Atomically records `step` as the last accepted TOTP time step if it is
    /// greater than the stored one; false means the step (or a later one) was
    /// already accepted: a replay. Kept across TOTP re-enrollment.
    async fn accept_totp_step(&self, subject: &str, step: i64) -> Result<bool, StoreError>;

    /// Replaces all recovery codes of the subject by these hashes.
    async fn replace_recovery_codes(
        &self,
        subject: &str,
        hashes: &[String],
    ) -> Result<(), StoreError>;
    /// (id, hash) of the unused recovery codes.
    async fn recovery_codes(&self, subject: &str) -> Result<Vec<(i64, String)>, StoreError>;
    /// Deletes one code; false when it was already gone (spent concurrently).
    async fn spend_recovery_code(&self, subject: &str, id: i64) -> Result<bool, StoreError>;

    /// One more wrong code in a row (any factor), in one conditional
    /// statement: the count is incremented only while it is below `cap`, so
    /// that parallel failures never push it past the cap. Some(new count)
    /// when it was counted; None when the count had already reached `cap`.
    async fn record_failure(&self, subject: &str, cap: u32) -> Result<Option<u32>, StoreError>;
    async fn failures(&self, subject: &str) -> Result<u32, StoreError>;
    async fn clear_failures(&self, subject: &str) -> Result<(), StoreError>;

    /// Administrator reset: removes TOTP, recovery codes and the failure
    /// count (the profile and contacts stay).
    async fn reset_user(&self, subject: &str) -> Result<ResetReport, StoreError>;
}
