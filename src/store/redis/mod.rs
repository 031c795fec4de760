//! Redis implementations of the short-lived stores, on one server (plain or
//! TLS), a Redis Cluster or Sentinel's primary ([`target`]), each store over
//! one reconnecting multiplexed connection ([`link`]). Every key carries
//! `storage.key_prefix` and a TTL, and every request names keys of one hash
//! slot only (`store::keys`), so the same code runs on a Cluster.

pub mod link;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use link::{Link, Req};
pub use target::{RedisTarget, Topology};

use super::{
    keys, Attempt, AttemptLimits, SessionIds, SessionStore, StoreError, Verified, MAX_LOCKOUT,
    SERIES_MEMORY,
};

/// Verified sessions. Its link is the Check path's: one multiplexed
/// connection that every Check's lookup is pipelined on.
pub struct RedisSessionStore {
    link: Arc<Link>,
    prefix: String,
}

impl RedisSessionStore {
    pub fn new(link: Arc<Link>, prefix: String) -> Self {
        Self { link, prefix }
    }

    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    fn session_key(&self, subject: &str, session: &str) -> String {
        format!("{}{}", self.prefix, keys::session(subject, session))
    }

    fn subject_key(&self, subject: &str) -> String {
        format!("{}{}", self.prefix, keys::subject_sessions(subject))
    }

    fn sid_key(&self, sid: &str) -> String {
        format!("{}{}", self.prefix, keys::session_by_sid(sid))
    }

    /// Deletes a session and its entry in the subject's index in one MULTI
    /// (both in the subject's slot); true when the session existed.
    async fn drop_session(&self, subject: &str, session: &str) -> Result<bool, StoreError> {
        let mut p = redis::pipe();
        p.atomic()
            .cmd("DEL")
            .arg(self.session_key(subject, session))
            .cmd("SREM")
            .arg(self.subject_key(subject))
            .arg(session)
            .ignore();
        let (n,): (u64,) = self.link.run(Req::Pipe(&p)).await?;
        Ok(n > 0)
    }

    /// Deletes a sid index entry only while it still names `target`: a newer
    /// verification of the same `sid` keeps its entry.
    async fn drop_sid(&self, sid: &str, target: &str) -> Result<(), StoreError> {
        let script = redis::Script::new(DELETE_IF_EQ);
        let mut inv = script.prepare_invoke();
        inv.key(self.sid_key(sid)).arg(target);
        self.link.run::<u64>(Req::Script(&inv)).await.map(|_| ())
    }
}

/// Deletes every session listed in a subject's index, then the index, in one
/// step so that a concurrent verification cannot slip between them. The
/// session keys share the index's hash tag (`{S}`), so on Redis Cluster they
/// live in the slot the script runs in.
const REMOVE_SUBJECT: &str = r#"
local members = redis.call('SMEMBERS', KEYS[1])
local n = 0
for _, h in ipairs(members) do
  n = n + redis.call('DEL', ARGV[1] .. h)
end
redis.call('DEL', KEYS[1])
return n
"#;

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn get(&self, subject: &str, session: &str) -> Result<Option<Verified>, StoreError> {
        let mut c = redis::cmd("GET");
        c.arg(self.session_key(subject, session));
        let raw: Option<Vec<u8>> = self.link.read(Req::Cmd(&c)).await?;
        raw.map(|b| super::decode_verified(&b)).transpose()
    }

    /// GET and PTTL of one key in one round trip (what the session cache
    /// fills an entry from). PTTL: -2 when the key is gone, -1 without TTL.
    async fn get_with_ttl(
        &self,
        subject: &str,
        session: &str,
    ) -> Result<Option<(Verified, Option<Duration>)>, StoreError> {
        let key = self.session_key(subject, session);
        let mut p = redis::pipe();
        p.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let (raw, pttl): (Option<Vec<u8>>, i64) = self.link.read(Req::Pipe(&p)).await?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let v = super::decode_verified(&raw)?;
        Ok(match pttl {
            // Gone between the two commands (another client's DEL ran
            // between them): the fresher answer.
            -2 => None,
            // No TTL: this store never writes one, so no expiry to trust.
            ms if ms < 0 => Some((v, None)),
            ms => Some((v, Some(Duration::from_millis(ms as u64)))),
        })
    }

    async fn put(&self, ids: &SessionIds, v: Verified, ttl: Duration) -> Result<(), StoreError> {
        let secs = ttl.as_secs().max(1);
        let value = super::encode_verified(v);
        // The sid index lives in another slot than the session: its own
        // step, first, so that a failure leaves at most an entry pointing
        // at nothing (which logout by sid then finds empty).
        let mut c = redis::cmd("SET");
        c.arg(self.sid_key(&ids.sid))
            .arg(keys::sid_target(&ids.subject, &ids.session))
            .arg("EX")
            .arg(secs);
        self.link.run::<()>(Req::Cmd(&c)).await?;
        let skey = self.subject_key(&ids.subject);
        let mut p = redis::pipe();
        p.atomic()
            .cmd("SET")
            .arg(self.session_key(&ids.subject, &ids.session))
            .arg(&value[..])
            .arg("EX")
            .arg(secs)
            .ignore()
            .cmd("SADD")
            .arg(&skey)
            .arg(&ids.session)
            .ignore()
            // Every member shares the same TTL, so the index lives as long as
            // its newest session.
            .cmd("EXPIRE")
            .arg(&skey)
            .arg(secs)
            .ignore();
        self.link.run::<()>(Req::Pipe(&p)).await
    }

    async fn remove(&self, ids: &SessionIds) -> Result<bool, StoreError> {
        let existed = self.drop_session(&ids.subject, &ids.session).await?;
        self.drop_sid(&ids.sid, &keys::sid_target(&ids.subject, &ids.session))
            .await?;
        Ok(existed)
    }

    async fn remove_subject(&self, subject: &str) -> Result<u64, StoreError> {
        let script = redis::Script::new(REMOVE_SUBJECT);
        let mut inv = script.prepare_invoke();
        inv.key(self.subject_key(subject)).arg(format!(
            "{}{}",
            self.prefix,
            keys::session(subject, "")
        ));
        self.link.run(Req::Script(&inv)).await
    }

    async fn remove_sid(&self, sid: &str) -> Result<bool, StoreError> {
        let mut c = redis::cmd("GET");
        c.arg(self.sid_key(sid));
        let target: Option<String> = self.link.read(Req::Cmd(&c)).await?;
        let Some(target) = target else {
            return Ok(false);
        };
        let existed = match keys::parse_sid_target(&target) {
            Some((subject, session)) => self.drop_session(subject, session).await?,
            // Not written by this version: nothing to follow.
            None => false,
        };
        self.drop_sid(sid, &target).await?;
        Ok(existed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.link.ping().await
    }
}

/// Short-lived key/value state in Redis: every key gets `storage.key_prefix`
/// and a TTL, in millisecond precision.
pub struct RedisEphemeralStore {
    link: Arc<Link>,
    prefix: String,
}

impl RedisEphemeralStore {
    pub fn new(link: Arc<Link>, prefix: String) -> Self {
        Self { link, prefix }
    }

    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }
}

fn millis(ttl: Duration) -> u64 {
    // PX 0 is an error in Redis; anything below a millisecond lives one.
    (ttl.as_millis() as u64).max(1)
}

/// Compare-and-delete in one step: two verifications of the same code cannot
/// both see it present and both delete it.
const DELETE_IF_EQ: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// INCR that gives a new counter its TTL. The TTL is also set when a counter
/// somehow has none, so that no key ever lives forever.
const INCR_WITH_TTL: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"#;

/// One attempt of the budget (`EphemeralStore::take_attempt`), atomically.
/// KEYS: the counter, the lockout, the series (one user: one hash tag, one
/// slot). ARGV: max attempts, first lockout (ms), longest lockout (ms),
/// series memory (ms). Returns {0, ms left} while locked, else
/// {1, attempt number, lockout started (ms, 0 for none)}.
const TAKE_ATTEMPT: &str = r#"
local left = redis.call('PTTL', KEYS[2])
if left == -1 then
  -- A lockout is never written without a TTL; give it one rather than
  -- locking forever.
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  left = tonumber(ARGV[2])
end
if left >= 0 then
  return {0, left}
end
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local max = tonumber(ARGV[1])
if n < max then
  return {1, n, 0}
end
local level = redis.call('INCR', KEYS[3])
local d = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local i = 1
while i < level and d < cap do
  d = d * 2
  i = i + 1
end
if d > cap then d = cap end
redis.call('SET', KEYS[2], level, 'PX', d)
redis.call('PEXPIRE', KEYS[3], d + tonumber(ARGV[4]))
redis.call('DEL', KEYS[1])
return {1, max, d}
"#;

#[async_trait]
impl super::EphemeralStore for RedisEphemeralStore {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut c = redis::cmd("GET");
        c.arg(self.key(key));
        self.link.read(Req::Cmd(&c)).await
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut c = redis::cmd("SET");
        c.arg(self.key(key)).arg(value).arg("PX").arg(millis(ttl));
        self.link.read::<()>(Req::Cmd(&c)).await
    }

    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut c = redis::cmd("SET");
        c.arg(self.key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl));
        let r: Option<String> = self.link.run(Req::Cmd(&c)).await?;
        Ok(r.is_some())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut c = redis::cmd("DEL");
        c.arg(self.key(key));
        let n: u64 = self.link.run(Req::Cmd(&c)).await?;
        Ok(n > 0)
    }

    async fn delete_if_eq(&self, key: &str, expected: &str) -> Result<bool, StoreError> {
        let script = redis::Script::new(DELETE_IF_EQ);
        let mut inv = script.prepare_invoke();
        inv.key(self.key(key)).arg(expected);
        let n: u64 = self.link.run(Req::Script(&inv)).await?;
        Ok(n > 0)
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        let script = redis::Script::new(INCR_WITH_TTL);
        let mut inv = script.prepare_invoke();
        inv.key(self.key(key)).arg(millis(ttl));
        self.link.run(Req::Script(&inv)).await
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let mut c = redis::cmd("PTTL");
        c.arg(self.key(key));
        let ms: i64 = self.link.read(Req::Cmd(&c)).await?;
        Ok(match ms {
            // -2: no such key.
            -2 => None,
            // -1: a key without a TTL, which this store never writes; report
            // it as long-lived rather than as absent.
            -1 => Some(Duration::from_secs(u64::from(u32::MAX))),
            ms => Some(Duration::from_millis(ms.max(0) as u64)),
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.link.ping().await
    }

    async fn take_attempt(&self, user: &str, limits: AttemptLimits) -> Result<Attempt, StoreError> {
        let script = redis::Script::new(TAKE_ATTEMPT);
        let mut inv = script.prepare_invoke();
        inv.key(self.key(&keys::attempts(user)))
            .key(self.key(&keys::lockout(user)))
            .key(self.key(&keys::lockout_series(user)))
            .arg(limits.max_attempts.max(1))
            .arg(millis(limits.lockout))
            .arg(millis(MAX_LOCKOUT))
            .arg(millis(SERIES_MEMORY));
        let r: Vec<i64> = self.link.run(Req::Script(&inv)).await?;
        match r.as_slice() {
            [0, left] => Ok(Attempt::Locked {
                left: Duration::from_millis((*left).max(0) as u64),
            }),
            [1, n, d] => Ok(Attempt::Granted {
                n: u32::try_from(*n).unwrap_or(u32::MAX),
                locked_now: (*d > 0).then(|| Duration::from_millis(*d as u64)),
            }),
            other => Err(StoreError::Corrupt(format!(
                "take_attempt answered {other:?}"
            ))),
        }
    }

    async fn clear_attempts(&self, user: &str) -> Result<bool, StoreError> {
        let mut c = redis::cmd("DEL");
        c.arg(self.key(&keys::attempts(user)))
            .arg(self.key(&keys::lockout(user)))
            .arg(self.key(&keys::lockout_series(user)));
        let n: u64 = self.link.run(Req::Cmd(&c)).await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::keys;

    /// CRC16-CCITT (XMODEM), the checksum Redis Cluster computes slots with.
    fn crc16(data: &[u8]) -> u16 {
        let mut crc: u16 = 0;
        for &b in data {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    /// The slot of a key as Redis Cluster computes it: of the text between
    /// the first `{` and the next `}` when that is not empty, else of the
    /// whole key.
    fn slot(key: &str) -> u16 {
        let b = key.as_bytes();
        let tagged = key.find('{').and_then(|open| {
            let len = key[open + 1..].find('}')?;
            (len > 0).then(|| &b[open + 1..open + 1 + len])
        });
        crc16(tagged.unwrap_or(b)) % 16384
    }

    #[test]
    fn slots_match_redis() {
        // CLUSTER KEYSLOT of a real Redis.
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(slot("foo{}{bar}"), slot("bar"));
    }

    fn one_slot(what: &str, keys: &[String]) {
        let first = slot(&keys[0]);
        for k in keys {
            assert_eq!(
                slot(k),
                first,
                "{what}: {k} is in another slot than {}",
                keys[0]
            );
        }
    }

    /// Every key set that one script, MULTI or multi-key command of the
    /// stores uses lands in one slot, whatever the prefix and the user.
    #[test]
    fn every_multi_key_request_stays_in_one_slot() {
        let subjects = [
            crate::token::subject_hash("https://kc.example/realms/a", "alice"),
            crate::token::subject_hash("https://kc.example/realms/b", "bob"),
            "0".repeat(64),
        ];
        for prefix in ["twofa:", "", "prod:twofa:", "x"] {
            let p = |k: String| format!("{prefix}{k}");
            for s in &subjects {
                let session = crate::token::session_hash("https://kc.example", s, "sid-1");
                let other = crate::token::session_hash("https://kc.example", s, "sid-2");
                // take_attempt (TAKE_ATTEMPT) and clear_attempts (DEL of three).
                one_slot(
                    "the attempt budget",
                    &[
                        p(keys::attempts(s)),
                        p(keys::lockout(s)),
                        p(keys::lockout_series(s)),
                    ],
                );
                // put and drop_session: MULTI of the session and its index.
                one_slot(
                    "a session and its index",
                    &[p(keys::session(s, &session)), p(keys::subject_sessions(s))],
                );
                // remove_subject (REMOVE_SUBJECT): the index and every
                // session key it builds from ARGV[1] .. member.
                let built = |h: &str| format!("{}{h}", p(keys::session(s, "")));
                assert_eq!(built(&session), p(keys::session(s, &session)));
                one_slot(
                    "remove_subject",
                    &[p(keys::subject_sessions(s)), built(&session), built(&other)],
                );
            }
        }
        // Keys of two users are never in one request; different users are
        // (usually) on different slots, so the tag is what chooses.
        assert_ne!(
            slot(&keys::attempts(&subjects[0])),
            slot(&keys::attempts(&subjects[1]))
        );
    }
}
