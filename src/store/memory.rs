//! In-process stores for a single instance and `serve --dev`. Expiry follows
//! the injected clock, so tests can move time.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{SessionIds, SessionStore, StoreError, Verified};
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
    async fn get(&self, session: &str) -> Result<Option<Verified>, StoreError> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        match g.sessions.get(session) {
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
