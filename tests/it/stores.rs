//! The store conformance suites of `conformance.rs`, against
//! real servers: Redis for the short-lived state, PostgreSQL for profiles.
//! (The in-memory and SQLite implementations run the same suites as unit tests.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conformance;
use redis::AsyncCommands;
use twofa_authz::store::postgres::PostgresProfileStore;
use twofa_authz::store::redis::RedisEphemeralStore;
use twofa_authz::store::{EphemeralStore, ProfileStore, StoreError};

use crate::support::postgres::Postgres;
use crate::support::redis::RedisServer;
use crate::user_common::create_database;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ephemeral_store_conforms() {
    let redis = RedisServer::start().await;
    let store = Arc::new(crate::conformance::redis_ephemeral(&redis.url(), "twofa:"));
    conformance::ephemeral_store(store.clone(), "redis", |s| async move {
        tokio::time::sleep(Duration::from_secs(s)).await;
    })
    .await;

    // Every key carries the prefix and a TTL.
    store.set("a", "1", Duration::from_secs(30)).await.unwrap();
    store
        .set_nx("b", "1", Duration::from_secs(30))
        .await
        .unwrap();
    store.incr("c", Duration::from_secs(30)).await.unwrap();
    let mut con = redis.connection().await;
    let keys: Vec<String> = con.keys("*").await.unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    for k in keys {
        assert!(k.starts_with("twofa:"), "{k} lacks the prefix");
        let ttl: i64 = con.pttl(&k).await.unwrap();
        assert!(ttl > 0 && ttl <= 30_000, "{k} has TTL {ttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ephemeral_store_fails_fast_and_recovers() {
    let mut redis = RedisServer::start().await;
    let store: RedisEphemeralStore = crate::conformance::redis_ephemeral(&redis.url(), "twofa:");
    store.ping().await.unwrap();
    redis.stop();
    let t = Instant::now();
    assert!(matches!(
        store.get("x").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    redis.restart().await;
    let mut ok = false;
    for _ in 0..50 {
        if store.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the store did not recover after Redis came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_profile_store_conforms() {
    let pg = Postgres::start().await;
    let url = create_database(&pg).await;
    let store = Arc::new(PostgresProfileStore::new(&url, None, 8).unwrap());
    conformance::profile_store(store.clone(), "pg").await;
    conformance::device_store(store.clone(), "pg").await;
    conformance::reset_revokes_devices(store.clone(), "pg").await;

    // The schema is versioned and the tables are the contract's.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let v: i64 = client
        .query_one("SELECT MAX(version) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, twofa_authz::store::migrations::latest());
    for table in [
        "user_profile",
        "totp_secret",
        "totp_last_step",
        "recovery_code",
        "factor_failure",
        "remembered_device",
    ] {
        client
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await
            .unwrap_or_else(|e| panic!("table {table}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_profile_store_is_unavailable_while_down_and_recovers() {
    let mut pg = Postgres::start().await;
    let url = create_database(&pg).await;
    let store = Arc::new(PostgresProfileStore::new(&url, None, 4).unwrap());
    store.migrate().await.unwrap();
    // Fill the pool: four connections at once.
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.ping().await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    pg.stop().await;
    let t = Instant::now();
    assert!(matches!(
        store.get_profile("x").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    pg.start_server().await;
    // Every pooled connection died with the server; each is tested at
    // checkout and replaced, so the very first call works.
    for i in 0..6 {
        if let Err(e) = store.get_profile("x").await {
            panic!("call {i} after PostgreSQL came back: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_is_unavailable_when_never_started() {
    // Nothing listens there: the store is built, and fails promptly.
    let port = crate::support::ports::free_port();
    let store =
        PostgresProfileStore::new(&format!("postgres://postgres@127.0.0.1:{port}/x"), None, 2)
            .unwrap();
    let t = Instant::now();
    assert!(matches!(
        store.migrate().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(t.elapsed() < Duration::from_secs(5));
}
