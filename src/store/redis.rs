//! Redis implementations (bb8 pool of multiplexed connections). Every key
//! carries `storage.key_prefix` and a TTL. Calls are bounded by a short
//! timeout: a slow or dead Redis must turn into a prompt 503, not a hung
//! proxy.

use std::time::Duration;

use async_trait::async_trait;
use bb8_redis::redis::aio::MultiplexedConnection;
use bb8_redis::RedisConnectionManager;
use redis::{FromRedisValue, RedisError};

use super::hot::HotReader;
use super::{
    keys, Attempt, AttemptLimits, SessionIds, SessionStore, StoreError, Verified, MAX_LOCKOUT,
    SERIES_MEMORY,
};

const OP_TIMEOUT: Duration = Duration::from_millis(1000);
/// bb8 waits this long for a connection when none is idle, even when every
/// connect attempt is refused at once: it bounds how long a Check waits
/// before answering 503 while Redis is down. A healthy connect (TLS
/// included) takes a few milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// A multiplexed connection that remembers it failed. bb8-redis never reports
/// a connection as broken, so without this a pool would keep handing out
/// connections to a Redis that restarted and every call would fail forever.
pub struct Conn {
    pub inner: MultiplexedConnection,
    broken: bool,
}

pub struct Manager(RedisConnectionManager);

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let inner = self.0.connect().await?;
        Ok(Conn {
            inner,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        self.0.is_valid(&mut conn.inner).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

pub type Pool = bb8::Pool<Manager>;

/// The connection settings of `storage.redis_url`, with TCP_NODELAY: redis-rs
/// leaves Nagle's algorithm on by default, which holds back each small
/// pipelined command until the previous one is acknowledged and adds
/// milliseconds to every Check while the CPU sits idle.
pub fn connection_info(url: &str) -> Result<redis::ConnectionInfo, String> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|e| format!("storage.redis_url: {e}"))?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    Ok(info.set_tcp_settings(tcp))
}

/// A pool that does not connect yet: the service starts (and reports not
/// ready) while Redis is down, and recovers on its own when it is back.
pub fn pool(url: &str, size: u32) -> Result<Pool, String> {
    let mgr = RedisConnectionManager::new(connection_info(url)?)
        .map_err(|e| format!("storage.redis_url: {e}"))?;
    Ok(bb8::Pool::builder()
        .max_size(size)
        // A PING per checkout would double the round trips of every Check;
        // failed connections are marked broken instead (see `Conn`).
        .test_on_check_out(false)
        .connection_timeout(CONNECT_TIMEOUT)
        .retry_connection(false)
        // Warm connections, so a Check rarely waits for a connect.
        .min_idle(Some(2))
        .build_unchecked(Manager(mgr)))
}

/// Runs one Redis request with a timeout, marking the connection broken on
/// any I/O failure so the pool replaces it.
pub async fn run<T: FromRedisValue>(pool: &Pool, req: Req<'_>) -> Result<T, StoreError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
    let fut = async {
        match req {
            Req::Cmd(c) => c.query_async::<T>(&mut conn.inner).await,
            Req::Pipe(p) => p.query_async::<T>(&mut conn.inner).await,
            Req::Script(s) => s.invoke_async::<T>(&mut conn.inner).await,
        }
    };
    let out = tokio::time::timeout(OP_TIMEOUT, fut).await;
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            if connection_failed(&e) {
                conn.broken = true;
            }
            Err(StoreError::Unavailable(format!("redis: {e}")))
        }
        Err(_) => {
            conn.broken = true;
            Err(StoreError::Unavailable("redis: timed out".into()))
        }
    }
}

/// Whether an error means the connection itself is gone (to be replaced),
/// rather than a command that failed on a healthy connection.
pub fn connection_failed(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal()
}

pub enum Req<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
    Script(&'a redis::ScriptInvocation<'a>),
}

pub struct RedisSessionStore {
    pool: Pool,
    prefix: String,
    /// The hot-path lookup (see `store::hot`).
    reads: HotReader,
}

impl RedisSessionStore {
    pub fn connect(url: &str, pool_size: u32, prefix: String) -> Result<Self, String> {
        Ok(Self {
            pool: pool(url, pool_size)?,
            prefix,
            reads: HotReader::new(url)?,
        })
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
        let (n,): (u64,) = run(&self.pool, Req::Pipe(&p)).await?;
        Ok(n > 0)
    }

    /// Deletes a sid index entry only while it still names `target`: a newer
    /// verification of the same `sid` keeps its entry.
    async fn drop_sid(&self, sid: &str, target: &str) -> Result<(), StoreError> {
        let script = redis::Script::new(DELETE_IF_EQ);
        let mut inv = script.prepare_invoke();
        inv.key(self.sid_key(sid)).arg(target);
        run::<u64>(&self.pool, Req::Script(&inv)).await.map(|_| ())
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
        let raw = self.reads.get(&self.session_key(subject, session)).await?;
        raw.map(|b| super::decode_verified(&b)).transpose()
    }

    async fn get_with_ttl(
        &self,
        subject: &str,
        session: &str,
    ) -> Result<Option<(Verified, Option<Duration>)>, StoreError> {
        let key = self.session_key(subject, session);
        let (raw, pttl) = self.reads.get_with_pttl(&key).await?;
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
        run::<()>(&self.pool, Req::Cmd(&c)).await?;
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
        run::<()>(&self.pool, Req::Pipe(&p)).await
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
        run(&self.pool, Req::Script(&inv)).await
    }

    async fn remove_sid(&self, sid: &str) -> Result<bool, StoreError> {
        let mut c = redis::cmd("GET");
        c.arg(self.sid_key(sid));
        let target: Option<String> = run(&self.pool, Req::Cmd(&c)).await?;
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
        let c = redis::cmd("PING");
        let _: String = run(&self.pool, Req::Cmd(&c)).await?;
        Ok(())
    }
}

/// Short-lived key/value state in Redis: every key gets `storage.key_prefix`
/// and a TTL, in millisecond precision.
pub struct RedisEphemeralStore {
    pool: Pool,
    prefix: String,
}

impl RedisEphemeralStore {
    pub fn new(pool: Pool, prefix: String) -> Self {
        Self { pool, prefix }
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
        run(&self.pool, Req::Cmd(&c)).await
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut c = redis::cmd("SET");
        c.arg(self.key(key)).arg(value).arg("PX").arg(millis(ttl));
        run::<()>(&self.pool, Req::Cmd(&c)).await
    }

    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut c = redis::cmd("SET");
        c.arg(self.key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl));
        let r: Option<String> = run(&self.pool, Req::Cmd(&c)).await?;
        Ok(r.is_some())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut c = redis::cmd("DEL");
        c.arg(self.key(key));
        let n: u64 = run(&self.pool, Req::Cmd(&c)).await?;
        Ok(n > 0)
    }

    async fn delete_if_eq(&self, key: &str, expected: &str) -> Result<bool, StoreError> {
        let script = redis::Script::new(DELETE_IF_EQ);
        let mut inv = script.prepare_invoke();
        inv.key(self.key(key)).arg(expected);
        let n: u64 = run(&self.pool, Req::Script(&inv)).await?;
        Ok(n > 0)
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        let script = redis::Script::new(INCR_WITH_TTL);
        let mut inv = script.prepare_invoke();
        inv.key(self.key(key)).arg(millis(ttl));
        run(&self.pool, Req::Script(&inv)).await
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let mut c = redis::cmd("PTTL");
        c.arg(self.key(key));
        let ms: i64 = run(&self.pool, Req::Cmd(&c)).await?;
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
        let c = redis::cmd("PING");
        let _: String = run(&self.pool, Req::Cmd(&c)).await?;
        Ok(())
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
        let r: Vec<i64> = run(&self.pool, Req::Script(&inv)).await?;
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
        let n: u64 = run(&self.pool, Req::Cmd(&c)).await?;
        Ok(n > 0)
    }
}
