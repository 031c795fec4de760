//! In-process stores for a single instance and `serve --dev`. Expiry follows
//! the injected clock, so tests can move time.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    keys, lockout_duration, Attempt, AttemptLimits, SessionIds, SessionStore, StoreError, Verified,
    SERIES_MEMORY,
};
use crate::clock::SharedClock;

/// Expired entries are swept when the map grows past this.
const SWEEP_AT: usize = 100_000;

struct Entry {
    v: Verified,
    expires: i64,
    subject: String,
    sid: String,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Entry>,
    subjects: HashMap<String, HashSet<String>>,
    sids: HashMap<String, String>,
}

impl Inner {
    fn drop_session(&mut self, session: &str) -> Option<Entry> {
        let e = self.sessions.remove(session)?;
        if let Some(set) = self.subjects.get_mut(&e.subject) {
            set.remove(session);
            if set.is_empty() {
                self.subjects.remove(&e.subject);
            }
        }
        if self.sids.get(&e.sid).is_some_and(|s| s == session) {
            self.sids.remove(&e.sid);
        }
        Some(e)
    }

    fn sweep(&mut self, now: i64) {
        let dead: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in dead {
            self.drop_session(&k);
        }
    }
}

pub struct MemorySessionStore {
    inner: Mutex<Inner>,
    clock: SharedClock,
}

impl MemorySessionStore {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            clock,
        }
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn get(&self, subject: &str, session: &str) -> Result<Option<Verified>, StoreError> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        match g.sessions.get(session) {
            Some(e) if e.subject != subject => Ok(None),
            Some(e) if e.expires > now => Ok(Some(e.v)),
            Some(_) => {
                g.drop_session(session);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(&self, ids: &SessionIds, v: Verified, ttl: Duration) -> Result<(), StoreError> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        if g.sessions.len() >= SWEEP_AT {
            g.sweep(now);
        }
        g.sessions.insert(
            ids.session.clone(),
            Entry {
                v,
                expires: now + ttl.as_secs() as i64,
                subject: ids.subject.clone(),
                sid: ids.sid.clone(),
            },
        );
        g.subjects
            .entry(ids.subject.clone())
            .or_default()
            .insert(ids.session.clone());
        g.sids.insert(ids.sid.clone(), ids.session.clone());
        Ok(())
    }

    async fn remove(&self, ids: &SessionIds) -> Result<bool, StoreError> {
        let now = self.clock.now();
        Ok(self
            .inner
            .lock()
            .drop_session(&ids.session)
            .is_some_and(|e| e.expires > now))
    }

    async fn remove_subject(&self, subject: &str) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        let sessions: Vec<String> = g
            .subjects
            .get(subject)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let mut n = 0;
        for s in sessions {
            if g.drop_session(&s).is_some_and(|e| e.expires > now) {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn remove_sid(&self, sid: &str) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        let Some(session) = g.sids.remove(sid) else {
            return Ok(false);
        };
        Ok(g.drop_session(&session).is_some_and(|e| e.expires > now))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Short-lived key/value state in process memory. Expiry is by the injected
/// clock (whole seconds, like the session store) so tests can move time.
pub struct MemoryEphemeralStore {
    entries: Mutex<HashMap<String, (String, i64)>>,
    clock: SharedClock,
}

impl MemoryEphemeralStore {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            clock,
        }
    }
}

/// Expiry time for a TTL. A TTL under one second still lives one second:
/// rounding it to zero would make the key vanish before anyone reads it.
fn expiry(now: i64, ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    now.saturating_add(secs.max(1) as i64)
}

/// The live value of `key`, dropping it first if it has expired.
fn live<'a>(
    map: &'a mut HashMap<String, (String, i64)>,
    key: &str,
    now: i64,
) -> Option<&'a mut (String, i64)> {
    if map.get(key).is_some_and(|(_, exp)| *exp <= now) {
        map.remove(key);
    }
    map.get_mut(key)
}

fn insert(map: &mut HashMap<String, (String, i64)>, key: &str, value: String, exp: i64, now: i64) {
    if map.len() >= SWEEP_AT {
        map.retain(|_, (_, e)| *e > now);
    }
    map.insert(key.to_string(), (value, exp));
}

#[async_trait]
impl super::EphemeralStore for MemoryEphemeralStore {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let now = self.clock.now();
        let mut g = self.entries.lock();
        Ok(live(&mut g, key, now).map(|(v, _)| v.clone()))
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let now = self.clock.now();
        let mut g = self.entries.lock();
        insert(&mut g, key, value.to_string(), expiry(now, ttl), now);
        Ok(())
    }

    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut g = self.entries.lock();
        if live(&mut g, key, now).is_some() {
            return Ok(false);
        }
        insert(&mut g, key, value.to_string(), expiry(now, ttl), now);
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut g = self.entries.lock();
        let was_live = live(&mut g, key, now).is_some();
        g.remove(key);
        Ok(was_live)
    }

    async fn delete_if_eq(&self, key: &str, expected: &str) -> Result<bool, StoreError> {
        let now = self.clock.now();
        // One lock around compare and delete: the atomicity the trait promises.
        let mut g = self.entries.lock();
        match live(&mut g, key, now) {
            Some((v, _)) if crate::crypto::ct_eq(v.as_bytes(), expected.as_bytes()) => {
                g.remove(key);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let mut g = self.entries.lock();
        if let Some((v, _)) = live(&mut g, key, now) {
            let n = v
                .parse::<u64>()
                .map_err(|_| StoreError::Corrupt(format!("counter {key} is not a number")))?
                .saturating_add(1);
            *v = n.to_string();
            return Ok(n);
        }
        insert(&mut g, key, "1".to_string(), expiry(now, ttl), now);
        Ok(1)
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let now = self.clock.now();
        let mut g = self.entries.lock();
        Ok(live(&mut g, key, now).map(|(_, exp)| Duration::from_secs((*exp - now).max(0) as u64)))
    }

    async fn take_attempt(&self, user: &str, limits: AttemptLimits) -> Result<Attempt, StoreError> {
        let now = self.clock.now();
        let (att, lock, series) = (
            keys::attempts(user),
            keys::lockout(user),
            keys::lockout_series(user),
        );
        // One lock around the whole step: the atomicity the trait promises.
        let mut g = self.entries.lock();
        if let Some((_, exp)) = live(&mut g, &lock, now) {
            return Ok(Attempt::Locked {
                left: Duration::from_secs((*exp - now).max(0) as u64),
            });
        }
        let count = |v: &str, key: &str| {
            v.parse::<u64>()
                .map_err(|_| StoreError::Corrupt(format!("counter {key} is not a number")))
        };
        let n = match live(&mut g, &att, now) {
            Some((v, _)) => {
                let n = count(v, &att)?.saturating_add(1);
                *v = n.to_string();
                n
            }
            None => {
                let exp = expiry(now, limits.lockout);
                insert(&mut g, &att, "1".into(), exp, now);
                1
            }
        };
        let max = u64::from(limits.max_attempts.max(1));
        if n < max {
            return Ok(Attempt::Granted {
                n: n as u32,
                locked_now: None,
            });
        }
        let level = match live(&mut g, &series, now) {
            Some((v, _)) => count(v, &series)?.saturating_add(1),
            None => 1,
        };
        let d = lockout_duration(limits.lockout, level);
        insert(
            &mut g,
            &series,
            level.to_string(),
            expiry(now, d + SERIES_MEMORY),
            now,
        );
        insert(&mut g, &lock, level.to_string(), expiry(now, d), now);
        g.remove(&att);
        Ok(Attempt::Granted {
            n: max as u32,
            locked_now: Some(d),
        })
    }

    async fn clear_attempts(&self, user: &str) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut g = self.entries.lock();
        let mut any = false;
        for k in [
            keys::attempts(user),
            keys::lockout(user),
            keys::lockout_series(user),
        ] {
            any |= live(&mut g, &k, now).is_some();
            g.remove(&k);
        }
        Ok(any)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Remembered devices in memory, for tests of the device rules: the same
/// atomicity as the databases (one lock around each step).
#[derive(Default)]
pub struct MemoryDeviceStore {
    devices: Mutex<Vec<super::DeviceRecord>>,
}

impl MemoryDeviceStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl super::DeviceStore for MemoryDeviceStore {
    async fn insert_device(&self, d: &super::DeviceRecord) -> Result<(), StoreError> {
        let mut all = self.devices.lock();
        // The databases' primary key and unique hashes.
        if all.iter().any(|x| {
            x.id == d.id
                || x.token_hash == d.token_hash
                || x.previous_hash.as_deref() == Some(d.token_hash.as_str())
        }) {
            return Err(StoreError::Unavailable(
                "memory: a device with this id or token exists".into(),
            ));
        }
        all.push(d.clone());
        Ok(())
    }

    async fn devices(&self, subject: &str) -> Result<Vec<super::DeviceRecord>, StoreError> {
        let mut out: Vec<_> = self
            .devices
            .lock()
            .iter()
            .filter(|d| d.subject == subject)
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn find_device(
        &self,
        token_hash: &str,
    ) -> Result<Option<super::DeviceMatch>, StoreError> {
        let all = self.devices.lock();
        Ok(all.iter().find_map(|d| {
            if d.token_hash == token_hash {
                Some(super::DeviceMatch::Current(d.clone()))
            } else if d.previous_hash.as_deref() == Some(token_hash) {
                Some(super::DeviceMatch::Previous(d.clone()))
            } else {
                None
            }
        }))
    }

    async fn rotate_device(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
        used_at: i64,
    ) -> Result<bool, StoreError> {
        let mut all = self.devices.lock();
        match all
            .iter_mut()
            .find(|d| d.id == id && d.token_hash == old_hash)
        {
            Some(d) => {
                d.previous_hash = Some(std::mem::replace(&mut d.token_hash, new_hash.into()));
                d.last_used_at = Some(used_at);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn delete_device(&self, subject: &str, id: &str) -> Result<bool, StoreError> {
        let mut all = self.devices.lock();
        let before = all.len();
        all.retain(|d| !(d.subject == subject && d.id == id));
        Ok(all.len() != before)
    }

    async fn delete_devices(&self, subject: &str) -> Result<u32, StoreError> {
        let mut all = self.devices.lock();
        let before = all.len();
        all.retain(|d| d.subject != subject);
        Ok(u32::try_from(before - all.len()).unwrap_or(u32::MAX))
    }
}
