//! The behaviour every store implementation must show, written once and run
//! against each implementation (memory here; Redis, SQLite and PostgreSQL
//! from the integration tests, against real servers).

use std::future::Future;
use std::time::Duration;

use super::{Factor, SessionStore, Verified};

/// `advance(secs)` must move the store's notion of time forward: a manual
/// clock for the memory store, a real sleep for Redis (whose TTLs are its own).
pub async fn session_store<F, Fut>(store: &dyn SessionStore, now: i64, advance: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let (subj, s1, s2) = ("conf-subject", "conf-s1", "conf-s2");
    let other = "conf-other-subject";
    store.ping().await.expect("ping");
    assert_eq!(
        store.get(s1).await.expect("get"),
        None,
        "fresh store is empty"
    );

    let v = Verified {
        factor: Factor::Totp,
        at: now,
    };
    store
        .put(subj, s1, v, Duration::from_secs(60))
        .await
        .expect("put");
    assert_eq!(store.get(s1).await.expect("get"), Some(v));
    assert_eq!(
        store.get(s2).await.expect("get"),
        None,
        "sessions are independent"
    );

    // A later verification replaces the earlier one.
    let v2 = Verified {
        factor: Factor::Sms,
        at: now + 5,
    };
    store
        .put(subj, s1, v2, Duration::from_secs(60))
        .await
        .expect("put");
    assert_eq!(store.get(s1).await.expect("get"), Some(v2));

    assert!(store.remove(subj, s1).await.expect("remove"));
    assert!(!store.remove(subj, s1).await.expect("remove again"));
    assert_eq!(store.get(s1).await.expect("get"), None);

    // Removing a subject ends all of its sessions and only those.
    store
        .put(subj, s1, v, Duration::from_secs(60))
        .await
        .expect("put");
    store
        .put(subj, s2, v, Duration::from_secs(60))
        .await
        .expect("put");
    store
        .put(other, "conf-s3", v, Duration::from_secs(60))
        .await
        .expect("put");
    assert_eq!(store.remove_subject(subj).await.expect("remove_subject"), 2);
    assert_eq!(store.get(s1).await.expect("get"), None);
    assert_eq!(store.get(s2).await.expect("get"), None);
    assert_eq!(store.get("conf-s3").await.expect("get"), Some(v));
    assert_eq!(store.remove_subject(subj).await.expect("again"), 0);

    // Entries expire with their TTL.
    store
        .put(other, "conf-short", v, Duration::from_secs(1))
        .await
        .expect("put");
    assert_eq!(store.get("conf-short").await.expect("get"), Some(v));
    advance(2).await;
    assert_eq!(store.get("conf-short").await.expect("get"), None, "expired");
    store.remove_subject(other).await.expect("cleanup");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::clock::{Clock, ManualClock};
    use crate::store::memory::MemorySessionStore;

    #[tokio::test]
    async fn memory_session_store_conforms() {
        let clock = ManualClock::new(1_700_000_000);
        let store = MemorySessionStore::new(clock.clone() as Arc<dyn Clock>);
        let c = clock.clone();
        super::session_store(&store, clock.now(), move |s| {
            c.advance(s as i64);
            async {}
        })
        .await;
    }
}
