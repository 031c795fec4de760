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
