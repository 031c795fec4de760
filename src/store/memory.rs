//! In-process stores for a single instance and `serve --dev`. Expiry follows
//! the injected clock, so tests can move time.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{SessionStore, StoreError, Verified};
use crate::clock::SharedClock;

/// Expired entries are swept when the map grows past this.
const SWEEP_AT: usize = 100_000;

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, (Verified, i64)>,
    subjects: HashMap<String, HashSet<String>>,
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
            Some((v, exp)) if *exp > now => Ok(Some(*v)),
            Some(_) => {
                g.sessions.remove(session);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(
        &self,
        subject: &str,
        session: &str,
        v: Verified,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        if g.sessions.len() >= SWEEP_AT {
            g.sessions.retain(|_, (_, exp)| *exp > now);
            let Inner { sessions, subjects } = &mut *g;
            subjects.retain(|_, set| {
                set.retain(|s| sessions.contains_key(s));
                !set.is_empty()
            });
        }
        g.sessions
            .insert(session.to_string(), (v, now + ttl.as_secs() as i64));
        g.subjects
            .entry(subject.to_string())
            .or_default()
            .insert(session.to_string());
        Ok(())
    }

    async fn remove(&self, subject: &str, session: &str) -> Result<bool, StoreError> {
        let mut g = self.inner.lock();
        if let Some(set) = g.subjects.get_mut(subject) {
            set.remove(session);
        }
        Ok(g.sessions.remove(session).is_some())
    }

    async fn remove_subject(&self, subject: &str) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        let Some(set) = g.subjects.remove(subject) else {
            return Ok(0);
        };
        let mut n = 0;
        for s in set {
            if let Some((_, exp)) = g.sessions.remove(&s) {
                if exp > now {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
