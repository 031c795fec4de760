//! Storage, one trait per kind of state:
//! - [`SessionStore`]: "this Keycloak session passed factor F at T" (Redis or memory);
//! - [`EphemeralStore`]: other short-lived state with TTLs: pending one-time
//!   codes, pending TOTP secrets, attempt counters, lockouts, resend timers,
//!   seen logout-token `jti`s (Redis or memory);
//! - [`ProfileStore`]: what must survive restarts: profiles, enrolled factors,
//!   recovery codes, WebAuthn credentials, the last accepted TOTP step, the
//!   consecutive-failure count (PostgreSQL or SQLite);
//! - [`DeviceStore`]: remembered devices, by the hash of their token
//!   (PostgreSQL or SQLite, as part of every [`ProfileStore`]; memory for
//!   tests).
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
pub mod session_cache;
pub mod sqlite;
pub mod tracking;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;
use crate::config::StorageConfig;
use session_cache::CachedSessions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Factor {
    Totp,
    Email,
    Sms,
    Recovery,
    /// A WebAuthn credential (passkey), `factor::webauthn`.
    #[serde(rename = "webauthn")]
    WebAuthn,
    /// A remembered device (`POST /user/verify-device`): proves the device,
    /// not a fresh factor, so it never satisfies a step-up `max_age` or
    /// `security.sensitive_max_age`.
    Device,
}

impl Factor {
    /// The byte that names the factor in [`encode_verified`].
    fn code(self) -> u8 {
        match self {
            Factor::Totp => 1,
            Factor::Email => 2,
            Factor::Sms => 3,
            Factor::Recovery => 4,
            Factor::WebAuthn => 5,
            // 5 is WebAuthn's.
            Factor::Device => 6,
        }
    }

    fn from_code(b: u8) -> Option<Self> {
        Some(match b {
            1 => Factor::Totp,
            2 => Factor::Email,
            3 => Factor::Sms,
            4 => Factor::Recovery,
            5 => Factor::WebAuthn,
            6 => Factor::Device,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Factor::Totp => "totp",
            Factor::Email => "email",
            Factor::Sms => "sms",
            Factor::Recovery => "recovery",
            Factor::WebAuthn => "webauthn",
            Factor::Device => "device",
        }
    }

    /// Whether passing this factor shows that the user was just there: what
    /// a step-up `max_age` and `security.sensitive_max_age` ask for. A
    /// remembered device proves only that the device holds a token issued
    /// earlier.
    pub fn is_fresh_proof(self) -> bool {
        !matches!(self, Factor::Device)
    }
}

/// A session's second-factor state: which factor, passed when (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    #[serde(rename = "f")]
    pub factor: Factor,
    pub at: i64,
}

/// The version byte of [`encode_verified`]'s layout.
const VERIFIED_V1: u8 = 1;
/// Version byte, factor byte, `at` as i64 big-endian.
const VERIFIED_V1_LEN: usize = 10;

/// A session's stored value: 10 bytes (a version byte, the factor, `at`
/// big-endian) instead of JSON, so that reading one costs no parser and no
/// allocation. The version byte is never `{`, which tells this layout from
/// the JSON `{"f": factor, "at": unix s}` that earlier versions wrote.
pub fn encode_verified(v: Verified) -> [u8; VERIFIED_V1_LEN] {
    let mut out = [0u8; VERIFIED_V1_LEN];
    out[0] = VERIFIED_V1;
    out[1] = v.factor.code();
    out[2..].copy_from_slice(&v.at.to_be_bytes());
    out
}

/// Reads [`encode_verified`]'s layout, and the JSON of earlier versions so
/// that sessions verified before a rolling upgrade stay verified.
pub fn decode_verified(raw: &[u8]) -> Result<Verified, StoreError> {
    match raw.first() {
        Some(&VERIFIED_V1) if raw.len() == VERIFIED_V1_LEN => {
            let factor = Factor::from_code(raw[1])
                .ok_or_else(|| StoreError::Corrupt(format!("unknown factor code {}", raw[1])))?;
            let mut at = [0u8; 8];
            at.copy_from_slice(&raw[2..]);
            Ok(Verified {
                factor,
                at: i64::from_be_bytes(at),
            })
        }
        Some(b'{') => serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt(e.to_string())),
        Some(b) => Err(StoreError::Corrupt(format!(
            "verified session: unknown layout {b} ({} bytes)",
            raw.len()
        ))),
        None => Err(StoreError::Corrupt("verified session: empty value".into())),
    }
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
    /// [`SessionStore::get`] with how long the stored state has left, when
    /// the store can tell: what a cache in front of it needs to forget the
    /// entry no later than the store does.
    async fn get_with_ttl(
        &self,
        subject: &str,
        session: &str,
    ) -> Result<Option<(Verified, Option<Duration>)>, StoreError> {
        Ok(self.get(subject, session).await?.map(|v| (v, None)))
    }
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

/// The session store of the Check path, and its cache when it has one.
pub type CheckSessions = (Arc<dyn SessionStore>, Option<Arc<CachedSessions>>);

/// The session store the Check path reads: [`session_store`], and with
/// Redis and `capacity > 0` a [`session_cache::CachedSessions`] in front of
/// it (returned too, so that `app::run` can start its invalidation
/// channel). The memory store needs no cache: it is in memory already. A
/// Cluster gets no cache: its keys live on several primaries, and one
/// tracking connection would hear the invalidations of only one of them.
pub fn cached_session_store(
    cfg: &StorageConfig,
    capacity: usize,
    clock: SharedClock,
    counters: crate::metrics::CacheCounters,
) -> Result<CheckSessions, String> {
    let Some(target) = redis_target(cfg)? else {
        return Ok((session_store(cfg, clock)?, None));
    };
    let inner = Arc::new(redis::RedisSessionStore::new(
        Arc::new(redis::Link::new(target.clone())),
        cfg.key_prefix.clone(),
    ));
    if capacity == 0 || target.topology() == redis::Topology::Cluster {
        return Ok((inner, None));
    }
    // Asked before every (re)connect of the invalidation channel: under
    // Sentinel that is the primary the sentinels name now, so after a
    // failover the channel (and the cache) follow the new primary.
    let tracking_target = tracking::Target::Dynamic(Arc::new(move || {
        let target = target.clone();
        Box::pin(async move {
            target
                .tracking_info()
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "redis: no single primary to track".to_string())
        })
    }));
    let cached = Arc::new(CachedSessions::new(
        inner,
        capacity,
        tracking::Tracking::new(
            tracking_target,
            format!("{}{}", cfg.key_prefix, keys::SESSION_PREFIX),
        ),
        clock,
        counters,
        cfg.key_prefix.clone(),
    ));
    Ok((cached.clone(), Some(cached)))
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
    pub remembered_devices: u32,
    pub webauthn_credentials: u32,
}

/// A registered WebAuthn credential (table `webauthn_credential`). Public
/// key material only: nothing here is a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebAuthnCredential {
    /// The credential id, base64url without padding; unique across users.
    pub id: String,
    pub subject: String,
    /// The user's label for it.
    pub name: String,
    /// webauthn-rs's `Passkey`, serialised as JSON: the public key, the
    /// signature counter and the backup flags it checks against.
    pub passkey: String,
    pub sign_count: i64,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// A remembered device (`remembered_device`): the token the device keeps is
/// stored only as its hash, beside the hash of the token it replaced (one
/// generation back), which identifies a stolen copy when it comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Random, public: what the list shows and `DELETE` names.
    pub id: String,
    /// The Keycloak `sub` it belongs to.
    pub subject: String,
    pub name: Option<String>,
    pub token_hash: String,
    pub previous_hash: Option<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub expires_at: i64,
}

/// Which of a device's token hashes a lookup matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMatch {
    /// The token the device holds now.
    Current(DeviceRecord),
    /// The token it held before its last rotation: replayed.
    Previous(DeviceRecord),
}

/// Remembered devices. Rotation is one conditional statement, so that two
/// uses of the same token at once rotate it once.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    async fn insert_device(&self, d: &DeviceRecord) -> Result<(), StoreError>;
    /// The subject's devices, oldest first, expired ones included.
    async fn devices(&self, subject: &str) -> Result<Vec<DeviceRecord>, StoreError>;
    /// The device whose current or previous token hash is `token_hash`.
    async fn find_device(&self, token_hash: &str) -> Result<Option<DeviceMatch>, StoreError>;
    /// Replaces the current hash by `new_hash` (the current one becomes the
    /// previous one) and records the use, only if the current hash is still
    /// `old_hash`: false when a parallel use rotated it first, or the
    /// device is gone.
    async fn rotate_device(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
        used_at: i64,
    ) -> Result<bool, StoreError>;
    /// Removes one device of the subject; false when there is none.
    async fn delete_device(&self, subject: &str, id: &str) -> Result<bool, StoreError>;
    /// Removes every device of the subject; how many there were.
    async fn delete_devices(&self, subject: &str) -> Result<u32, StoreError>;
}

/// Durable state. Methods that must be atomic say so; both implementations
/// guarantee it with a transaction or a single conditional statement.
/// Remembered devices live in the same database ([`DeviceStore`]).
#[async_trait]
pub trait ProfileStore: DeviceStore + Send + Sync {
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

    /// The subject's WebAuthn credentials, oldest first.
    async fn webauthn_credentials(
        &self,
        subject: &str,
    ) -> Result<Vec<WebAuthnCredential>, StoreError>;
    /// Adds one; false (and no change) when its id is registered already
    /// (to this user or another one).
    async fn insert_webauthn_credential(&self, c: &WebAuthnCredential) -> Result<bool, StoreError>;
    /// After an authentication: replaces the stored passkey, counter, flags
    /// and `last_used_at` only if the stored passkey is still `old_passkey`
    /// (compare-and-set: of two assertions racing with one counter value,
    /// one wins). False when it was not.
    async fn update_webauthn_credential(
        &self,
        c: &WebAuthnCredential,
        old_passkey: &str,
    ) -> Result<bool, StoreError>;
    async fn delete_webauthn_credential(&self, subject: &str, id: &str)
        -> Result<bool, StoreError>;

    /// Administrator reset: removes TOTP, recovery codes, WebAuthn
    /// credentials, remembered devices and the failure count (the profile
    /// and contacts stay).
    async fn reset_user(&self, subject: &str) -> Result<ResetReport, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_round_trips_in_ten_bytes() {
        for factor in [
            Factor::Totp,
            Factor::Email,
            Factor::Sms,
            Factor::Recovery,
            Factor::WebAuthn,
            Factor::Device,
        ] {
            for at in [0, 1_700_000_000, -1, i64::MAX] {
                let v = Verified { factor, at };
                let raw = encode_verified(v);
                assert_eq!(raw.len(), 10);
                assert_eq!(decode_verified(&raw).unwrap(), v);
            }
        }
    }

    /// Values written by earlier versions (JSON) still read: a rolling
    /// upgrade keeps verified sessions verified.
    #[test]
    fn the_json_of_earlier_versions_still_reads() {
        let v = decode_verified(br#"{"f":"sms","at":1700000000}"#).unwrap();
        assert_eq!(
            v,
            Verified {
                factor: Factor::Sms,
                at: 1_700_000_000
            }
        );
        assert_eq!(
            serde_json::to_vec(&v).unwrap(),
            br#"{"f":"sms","at":1700000000}"#
        );
    }

    #[test]
    fn anything_else_is_corrupt() {
        for bad in [
            &b""[..],
            &[1u8, 1, 0][..],
            &[1u8, 9, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[2u8, 1, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &br#"{"f":"voice","at":1}"#[..],
            &b"{not json"[..],
        ] {
            assert!(
                matches!(decode_verified(bad), Err(StoreError::Corrupt(_))),
                "{bad:?}"
            );
        }
    }
}
