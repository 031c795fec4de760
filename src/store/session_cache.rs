//! Second-factor state held in memory in front of the Redis session store
//! (`cache.session_capacity` entries), so that a Check of a known session
//! costs no round trip. Redis keeps it current: the invalidation channel
//! (`store::tracking`) reports every change of a session key by any
//! instance, and the entry goes.
//!
//! Guarantees (INTERFACE.md section 3):
//! - Answers come from memory only while the channel is up. When it goes
//!   down the cache is emptied and every lookup reads the store (which
//!   fails closed while Redis is unreachable) until it is up again; the
//!   channel notices a dead connection within about a second.
//! - A read that raced an invalidation is never kept: `state` carries a
//!   generation, bumped by every invalidation and by every change of the
//!   channel, and an answer is cached only if the generation it was read
//!   under is still current after it went in.
//! - A positive entry ends no later than the key does in Redis (its PTTL,
//!   read with the value, against the injected clock); a "not verified"
//!   entry is dropped by the same invalidation that a new verification
//!   sends, and after [`NEGATIVE_TTL`] in any case.
//! - This instance's own writes wait until their invalidation has come
//!   back on the channel (or empty the cache), so that a Check here right
//!   after a logout or a verification returns sees it.
//!
//! With Redis Cluster there is no channel (one per primary would be
//! needed): `cache.session_capacity` does not apply there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use quick_cache::sync::Cache;
use tokio::sync::watch;

use super::tracking::{Sink, Tracking};
use super::{keys, SessionIds, SessionStore, StoreError, Verified};
use crate::clock::SharedClock;
use crate::metrics::CacheCounters;

/// `cache.session_capacity` when the configuration does not say.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// How long a "not verified" answer may be kept (seconds). The channel
/// reports the write of a new verification at once; this only bounds what
/// a bug elsewhere could cost.
pub const NEGATIVE_TTL: i64 = 60;

/// A session key (SHA-256 of iss, sub, sid) as bytes.
type Key = [u8; 32];

#[derive(Debug, Clone, Copy)]
struct Entry {
    verified: Option<Verified>,
    /// Unix seconds: not used at or after.
    until: i64,
}

/// Bit 0 of the state word: the channel is up.
const LIVE: u64 = 1;
/// The generation counts in the other bits.
const STEP: u64 = 2;

struct State {
    entries: Cache<Key, Entry>,
    /// `generation * 2 + live`, in one word so that a reader sees both at
    /// once.
    state: AtomicU64,
    /// `storage.key_prefix`: what comes before a session key in Redis.
    store_prefix: String,
}

impl State {
    fn snapshot(&self) -> u64 {
        self.state.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.state.fetch_add(STEP, Ordering::SeqCst);
    }

    /// Caches an answer read under `seen`, unless anything was invalidated
    /// (or the channel changed) since.
    fn insert(&self, key: Key, entry: Entry, seen: u64) {
        if seen & LIVE == 0 || self.snapshot() != seen {
            return;
        }
        self.entries.insert(key, entry);
        // An invalidation between the check above and the insert bumped
        // the generation before it removed: the entry goes back out.
        if self.snapshot() != seen {
            self.entries.remove(&key);
        }
    }

    fn forget(&self, key: &Key) {
        self.bump();
        self.entries.remove(key);
    }

    fn key_of(&self, redis_key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(redis_key).ok()?;
        let session = keys::parse_session(key.strip_prefix(self.store_prefix.as_str())?)?;
        parse_hex(session)
    }
}

impl Sink for State {
    fn invalidate(&self, redis_key: &[u8]) {
        match self.key_of(redis_key) {
            Some(key) => self.forget(&key),
            // A tracked key this code does not name: it cannot be one that
            // was read into the cache, but dropping everything costs little
            // and needs no argument.
            None => self.invalidate_all(),
        }
    }

    fn invalidate_all(&self) {
        self.bump();
        self.entries.clear();
    }

    fn channel_up(&self) {
        let _ = self
            .state
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                Some(((s | LIVE) + STEP) | LIVE)
            });
    }

    fn channel_down(&self) {
        let _ = self
            .state
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                Some((s & !LIVE) + STEP)
            });
        self.entries.clear();
    }
}

/// 64 lower-case hex digits (the store's session names) as bytes.
fn parse_hex(s: &str) -> Option<Key> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

pub struct CachedSessions {
    inner: Arc<dyn SessionStore>,
    state: Arc<State>,
    tracking: Arc<Tracking>,
    clock: SharedClock,
    counters: CacheCounters,
}

impl CachedSessions {
    /// `capacity` > 0. Answers nothing from memory until [`Self::start`]
    /// has brought the channel up.
    pub fn new(
        inner: Arc<dyn SessionStore>,
        capacity: usize,
        tracking: Tracking,
        clock: SharedClock,
        counters: CacheCounters,
        store_prefix: String,
    ) -> Self {
        Self {
            inner,
            state: Arc::new(State {
                entries: Cache::new(capacity.max(1)),
                state: AtomicU64::new(0),
                store_prefix,
            }),
            tracking: Arc::new(tracking),
            clock,
            counters,
        }
    }

    /// Opens the invalidation channel and keeps it open until `shutdown`.
    pub fn start(&self, shutdown: watch::Receiver<bool>) {
        self.tracking.spawn(self.state.clone(), shutdown);
    }

    /// Entries held now (`twofa_cache_entries{cache="session"}`).
    pub fn entries(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let state = self.state.clone();
        move || state.entries.len()
    }

    /// Whether answers may come from memory (the channel is up).
    pub fn is_live(&self) -> bool {
        self.state.snapshot() & LIVE != 0
    }

    /// After a write of this instance: forget `key`, then wait for the
    /// channel to deliver every invalidation the write caused (those of
    /// `remove_sid` and `remove_subject` name sessions this code does not
    /// know). If the channel cannot confirm it, forget everything.
    async fn after_write(&self, key: Option<Key>) {
        if let Some(k) = key {
            self.state.forget(&k);
        }
        if !self.tracking.sync().await {
            self.state.invalidate_all();
        }
    }
}

#[async_trait]
impl SessionStore for CachedSessions {
    async fn get(&self, subject: &str, session: &str) -> Result<Option<Verified>, StoreError> {
        let Some(key) = parse_hex(session) else {
            return self.inner.get(subject, session).await;
        };
        // Read before the store is asked: the generation this answer is
        // read under.
        let seen = self.state.snapshot();
        if seen & LIVE == 0 {
            self.counters.misses.inc();
            return self.inner.get(subject, session).await;
        }
        let now = self.clock.now();
        if let Some(e) = self.state.entries.get(&key) {
            if e.until > now {
                self.counters.hits.inc();
                return Ok(e.verified);
            }
            self.state.entries.remove(&key);
        }
        self.counters.misses.inc();
        let (answer, until) = match self.inner.get_with_ttl(subject, session).await? {
            None => (None, now.saturating_add(NEGATIVE_TTL)),
            // Whole seconds left, rounded down: the entry ends at or
            // before the key's own expiry in Redis.
            Some((v, Some(ttl))) => (Some(v), now.saturating_add(secs(ttl))),
            // No expiry known: answered, not kept.
            Some((v, None)) => return Ok(Some(v)),
        };
        if until > now {
            self.state.insert(
                key,
                Entry {
                    verified: answer,
                    until,
                },
                seen,
            );
        }
        Ok(answer)
    }

    async fn put(&self, ids: &SessionIds, v: Verified, ttl: Duration) -> Result<(), StoreError> {
        let r = self.inner.put(ids, v, ttl).await;
        self.after_write(parse_hex(&ids.session)).await;
        r
    }

    async fn remove(&self, ids: &SessionIds) -> Result<bool, StoreError> {
        let r = self.inner.remove(ids).await;
        self.after_write(parse_hex(&ids.session)).await;
        r
    }

    async fn remove_subject(&self, subject: &str) -> Result<u64, StoreError> {
        let r = self.inner.remove_subject(subject).await;
        self.after_write(None).await;
        r
    }

    async fn remove_sid(&self, sid: &str) -> Result<bool, StoreError> {
        let r = self.inner.remove_sid(sid).await;
        self.after_write(None).await;
        r
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::store::tracking::Target;
    use crate::store::Factor;
    use parking_lot::Mutex;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::oneshot;

    const PREFIX: &str = "twofa:";

    /// A session store that counts its reads and can hold one read until
    /// released.
    #[derive(Default)]
    struct Fake {
        value: Mutex<Option<(Verified, Option<Duration>)>>,
        reads: AtomicUsize,
        gate: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
    }

    impl Fake {
        fn set(&self, v: Option<(Verified, Option<Duration>)>) {
            *self.value.lock() = v;
        }
        fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl SessionStore for Fake {
        async fn get(&self, s: &str, k: &str) -> Result<Option<Verified>, StoreError> {
            Ok(self.get_with_ttl(s, k).await?.map(|(v, _)| v))
        }
        async fn get_with_ttl(
            &self,
            _: &str,
            _: &str,
        ) -> Result<Option<(Verified, Option<Duration>)>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let v = *self.value.lock();
            let gate = self.gate.lock().take();
            if let Some((started, release)) = gate {
                let _ = started.send(());
                let _ = release.await;
            }
            Ok(v)
        }
        async fn put(&self, _: &SessionIds, v: Verified, ttl: Duration) -> Result<(), StoreError> {
            self.set(Some((v, Some(ttl))));
            Ok(())
        }
        async fn remove(&self, _: &SessionIds) -> Result<bool, StoreError> {
            self.set(None);
            Ok(true)
        }
        async fn remove_subject(&self, _: &str) -> Result<u64, StoreError> {
            self.set(None);
            Ok(1)
        }
        async fn remove_sid(&self, _: &str) -> Result<bool, StoreError> {
            self.set(None);
            Ok(true)
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    struct Rig {
        fake: Arc<Fake>,
        cache: Arc<CachedSessions>,
        clock: Arc<ManualClock>,
        ids: SessionIds,
        metrics: crate::metrics::Metrics,
    }

    fn rig() -> Rig {
        let fake = Arc::new(Fake::default());
        let clock = ManualClock::new(1_000_000);
        let metrics = crate::metrics::Metrics::new().expect("metrics");
        let info =
            redis::IntoConnectionInfo::into_connection_info("redis://127.0.0.1:1/").expect("url");
        let cache = Arc::new(CachedSessions::new(
            fake.clone(),
            64,
            Tracking::new(Target::fixed(info), format!("{PREFIX}sv:")),
            clock.clone(),
            metrics.session_cache.clone(),
            PREFIX.into(),
        ));
        // As the channel would, once connected.
        cache.state.channel_up();
        Rig {
            fake,
            cache,
            clock,
            ids: SessionIds::new("https://kc/realms/r", "alice", "s1"),
            metrics,
        }
    }

    impl Rig {
        async fn get(&self) -> Option<Verified> {
            self.cache
                .get(&self.ids.subject, &self.ids.session)
                .await
                .expect("get")
        }
        /// The push Redis sends when this session's key changes.
        fn invalidation(&self) {
            let key = format!(
                "{PREFIX}{}",
                keys::session(&self.ids.subject, &self.ids.session)
            );
            self.cache.state.invalidate(key.as_bytes());
        }
    }

    fn totp(at: i64) -> Verified {
        Verified {
            factor: Factor::Totp,
            at,
        }
    }

    #[tokio::test]
    async fn a_known_session_is_answered_from_memory_until_invalidated() {
        let r = rig();
        r.fake.set(Some((totp(5), Some(Duration::from_secs(3600)))));
        assert_eq!(r.get().await, Some(totp(5)));
        assert_eq!(r.get().await, Some(totp(5)));
        assert_eq!(r.fake.reads(), 1, "the second Check came from memory");
        assert_eq!(
            (
                r.metrics.session_cache.hits.get(),
                r.metrics.session_cache.misses.get()
            ),
            (1, 1)
        );
        // Logout through another instance.
        r.fake.set(None);
        r.invalidation();
        assert_eq!(r.get().await, None);
        assert_eq!(r.fake.reads(), 2);
        assert_eq!((r.cache.entries())(), 1, "the negative answer is kept");
    }

    /// The race: an invalidation arrives while a read is in flight. The
    /// read's answer (older than the change) must not be kept.
    #[tokio::test]
    async fn a_read_racing_an_invalidation_is_not_cached() {
        let r = rig();
        r.fake.set(Some((totp(5), Some(Duration::from_secs(3600)))));
        let (started_tx, started) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        *r.fake.gate.lock() = Some((started_tx, release_rx));
        let cache = r.cache.clone();
        let (subject, session) = (r.ids.subject.clone(), r.ids.session.clone());
        let read = tokio::spawn(async move { cache.get(&subject, &session).await });
        started.await.expect("the read reached the store");
        // Meanwhile: logout elsewhere, and its invalidation arrives.
        r.fake.set(None);
        r.invalidation();
        release.send(()).expect("release");
        let stale = read.await.expect("join").expect("get");
        assert_eq!(
            stale,
            Some(totp(5)),
            "the in-flight read answers what it read"
        );
        assert_eq!((r.cache.entries())(), 0, "but it was not kept");
        assert_eq!(r.get().await, None, "the next Check asks the store");
        assert_eq!(r.fake.reads(), 2);
    }

    #[tokio::test]
    async fn a_new_verification_replaces_a_negative_at_once() {
        let r = rig();
        assert_eq!(r.get().await, None);
        assert_eq!(r.get().await, None);
        assert_eq!(r.fake.reads(), 1, "not verified, remembered");
        // Verified through another instance: its SET is reported.
        r.fake.set(Some((totp(7), Some(Duration::from_secs(60)))));
        r.invalidation();
        assert_eq!(r.get().await, Some(totp(7)));
        // A negative ends after NEGATIVE_TTL whatever happens.
        r.fake.set(None);
        r.invalidation();
        assert_eq!(r.get().await, None);
        r.fake.set(Some((totp(8), Some(Duration::from_secs(60)))));
        r.clock.advance(NEGATIVE_TTL - 1);
        assert_eq!(r.get().await, None);
        r.clock.advance(1);
        assert_eq!(r.get().await, Some(totp(8)));
    }

    #[tokio::test]
    async fn an_entry_ends_with_the_keys_ttl() {
        let r = rig();
        r.fake
            .set(Some((totp(5), Some(Duration::from_millis(2_900)))));
        assert_eq!(r.get().await, Some(totp(5)));
        // 2.9 s left: kept for 2 whole seconds, never past the key.
        r.clock.advance(1);
        assert_eq!(r.get().await, Some(totp(5)));
        assert_eq!(r.fake.reads(), 1);
        r.clock.advance(1);
        r.fake.set(None);
        assert_eq!(r.get().await, None, "expired in memory: the store is asked");
        assert_eq!(r.fake.reads(), 2);
        // A value without a TTL is answered but not kept.
        r.fake.set(Some((totp(6), None)));
        r.invalidation();
        assert_eq!(r.get().await, Some(totp(6)));
        assert_eq!(r.get().await, Some(totp(6)));
        assert_eq!(r.fake.reads(), 4);
    }

    #[tokio::test]
    async fn without_the_channel_every_check_reads_the_store() {
        let r = rig();
        r.fake.set(Some((totp(5), Some(Duration::from_secs(3600)))));
        assert_eq!(r.get().await, Some(totp(5)));
        r.cache.state.channel_down();
        assert!(!r.cache.is_live());
        assert_eq!((r.cache.entries())(), 0, "emptied");
        r.fake.set(None);
        assert_eq!(r.get().await, None);
        r.fake.set(Some((totp(5), Some(Duration::from_secs(3600)))));
        assert_eq!(r.get().await, Some(totp(5)));
        assert_eq!(r.fake.reads(), 3);
        assert_eq!((r.cache.entries())(), 0, "nothing kept while down");
        // Back up: cached again.
        r.cache.state.channel_up();
        assert_eq!(r.get().await, Some(totp(5)));
        assert_eq!(r.get().await, Some(totp(5)));
        assert_eq!(r.fake.reads(), 4);
    }

    /// A read that began while the channel was down must not be kept when
    /// the channel comes up before it finishes.
    #[tokio::test]
    async fn a_read_from_before_the_channel_came_up_is_not_cached() {
        let r = rig();
        r.cache.state.channel_down();
        let seen = r.cache.state.snapshot();
        r.cache.state.channel_up();
        let key = parse_hex(&r.ids.session).expect("hex");
        r.cache.state.insert(
            key,
            Entry {
                verified: Some(totp(1)),
                until: i64::MAX,
            },
            seen,
        );
        assert_eq!((r.cache.entries())(), 0);
    }

    /// This instance's own writes are seen by its next Check even before
    /// the channel reports them (here it never does: no Redis).
    #[tokio::test]
    async fn own_writes_are_seen_at_once() {
        let r = rig();
        r.fake.set(Some((totp(5), Some(Duration::from_secs(3600)))));
        assert_eq!(r.get().await, Some(totp(5)));
        r.cache.remove(&r.ids).await.expect("remove");
        assert_eq!(r.get().await, None);
        r.cache
            .put(&r.ids, totp(9), Duration::from_secs(60))
            .await
            .expect("put");
        assert_eq!(r.get().await, Some(totp(9)));
        for write in 0..2 {
            if write == 0 {
                r.cache.remove_subject(&r.ids.subject).await.expect("rs");
            } else {
                // Verified again elsewhere (and reported).
                r.fake.set(Some((totp(9), Some(Duration::from_secs(60)))));
                r.invalidation();
                assert_eq!(r.get().await, Some(totp(9)));
                r.cache.remove_sid(&r.ids.sid).await.expect("sid");
            }
            assert_eq!(r.get().await, None, "write {write}");
        }
    }

    #[test]
    fn invalidations_name_sessions_by_their_redis_key() {
        let r = rig();
        let state = &r.cache.state;
        let key = format!("{PREFIX}{}", keys::session(&r.ids.subject, &r.ids.session));
        assert_eq!(state.key_of(key.as_bytes()), parse_hex(&r.ids.session));
        assert!(state.key_of(b"other:sv:{a}:b").is_none());
        assert!(state.key_of(b"twofa:sv:{a}:not-hex").is_none());
        let before = state.snapshot();
        state.invalidate(b"twofa:sv:garbage");
        assert_ne!(
            state.snapshot(),
            before,
            "an unreadable key invalidates all"
        );
        assert!(r.clock.now() > 0);
    }
}
