//! The session-store conformance suite against a real Redis, the same suite
//! the in-memory store passes in the unit tests.

use std::time::Duration;

use crate::support::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_session_store_conforms() {
    let redis = RedisServer::start().await;
    let store = crate::conformance::redis_sessions(&redis.url(), "conf:");
    let now = crate::support::keycloak::now();
    // Redis keeps its own time: expiry is observed by waiting.
    crate::conformance::session_store(&store, now, |s| {
        tokio::time::sleep(Duration::from_millis(s * 1000 + 100))
    })
    .await;
    // Every key carries the prefix and a TTL.
    let mut con = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut con)
        .await
        .expect("KEYS");
    for k in keys {
        assert!(k.starts_with("conf:"), "{k}");
        let ttl: i64 = redis::cmd("TTL")
            .arg(&k)
            .query_async(&mut con)
            .await
            .expect("TTL");
        assert!(ttl > 0, "{k} has no TTL");
    }
}

/// The same suite through the session cache in front of Redis, with its
/// invalidation channel up: the cache changes no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_redis_session_store_conforms() {
    use twofa_authz::config::{SecretUrl, StorageConfig};
    let redis = RedisServer::start().await;
    let cfg = StorageConfig {
        redis_url: SecretUrl::new(redis.url()),
        key_prefix: "conf:".into(),
        pool_size: 4,
        ..StorageConfig::default()
    };
    let metrics = twofa_authz::metrics::Metrics::new().expect("metrics");
    let (store, cache) = twofa_authz::store::cached_session_store(
        &cfg,
        1024,
        twofa_authz::clock::system(),
        metrics.session_cache.clone(),
    )
    .expect("store");
    let cache = cache.expect("Redis gets a cache");
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    cache.start(shutdown);
    assert!(
        crate::support::process::poll_until(Duration::from_secs(5), || async { cache.is_live() })
            .await,
        "the invalidation channel never came up"
    );
    let now = crate::support::keycloak::now();
    crate::conformance::session_store(store.as_ref(), now, |s| {
        tokio::time::sleep(Duration::from_millis(s * 1000 + 100))
    })
    .await;
    // And it was in play: a second read comes from memory.
    let ids = twofa_authz::store::SessionIds::new("https://kc/realms/r", "carol", "s9");
    let v = twofa_authz::store::Verified {
        factor: twofa_authz::store::Factor::Email,
        at: now,
    };
    store
        .put(&ids, v, Duration::from_secs(60))
        .await
        .expect("put");
    let hits = metrics.session_cache.hits.get();
    for _ in 0..2 {
        let got = store.get(&ids.subject, &ids.session).await.expect("get");
        assert_eq!(got, Some(v));
    }
    assert_eq!(
        metrics.session_cache.hits.get(),
        hits + 1,
        "the second read"
    );
}
