//! The realm's signing keys as they live in Keycloak: rotation, the encryption key
//! beside them, the keys endpoint failing, clock skew.

use std::time::{Duration, Instant};

use crate::support::app::App;
use crate::support::http::{self, Response};
use crate::support::keycloak::{uuid, KeyPair, Keycloak};
use crate::support::redis::RedisServer;
use crate::support::{assert_problem, base_config, Stack};

/// A token-only check straight to twofa-authz.
async fn check(stack: &Stack, jwt: &str) -> Response {
    stack.authz("GET", "/api/x").bearer(jwt).send().await
}

/// Retries a check until it answers `status`: the service may refetch keys at
/// most once per `jwks_min_refresh_interval` (1 s in tests).
async fn eventually(stack: &Stack, jwt: &str, status: u16, within: Duration) -> Response {
    let deadline = Instant::now() + within;
    loop {
        let response = check(stack, jwt).await;
        if response.status == status || Instant::now() >= deadline {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_to_a_new_signing_key() {
    let stack = Stack::start(None).await;
    let kc = &stack.keycloak;
    let old = kc.token().build();
    let response = check(&stack, &old.jwt).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("old key", &response)
    );

    let fetches = kc.jwks_fetches();
    kc.rotate_to(&KeyPair::sig_b());
    let new = kc.token().build();
    let response = eventually(&stack, &new.jwt, 200, Duration::from_secs(5)).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("new kid after rotation", &response)
    );
    assert!(
        kc.jwks_fetches() > fetches,
        "the new kid was accepted without a refetch"
    );

    // The old key leaves the realm: once the service has refetched (which another
    // unknown kid triggers), tokens of the old key are refused.
    kc.retire(&KeyPair::sig_a().kid);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = kc.token().kid(&uuid()).build();
    let _ = eventually(&stack, &unknown.jwt, 401, Duration::from_secs(3)).await;
    let old_again = kc.token().signed_with(&KeyPair::sig_a()).build();
    let response = eventually(&stack, &old_again.jwt, 401, Duration::from_secs(5)).await;
    assert_problem(&stack, "retired key", &response, 401, "invalid_token");

    // The realm's encryption key is in the JWKS but signs nothing.
    let enc = kc.token().signed_with(&KeyPair::enc()).build();
    let response = check(&stack, &enc.jwt).await;
    assert_problem(
        &stack,
        "signed with the enc key",
        &response,
        401,
        "invalid_token",
    );
}

/// A token verified (and so cached) under a key that then leaves the realm is
/// refused from the moment the service has seen the new key set: the
/// verified-token cache is cleared on every key change, not kept until `exp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_of_a_retired_key_is_refused_after_rotation() {
    let stack = Stack::start(None).await;
    let kc = &stack.keycloak;
    let old = kc.token().build();
    for attempt in ["first", "cached"] {
        let response = check(&stack, &old.jwt).await;
        assert_eq!(
            response.status,
            200,
            "{}",
            stack.explain(attempt, &response)
        );
    }

    // Keycloak rotates: sig-b signs from now on and sig-a leaves the JWKS.
    kc.rotate_to(&KeyPair::sig_b());
    kc.retire(&KeyPair::sig_a().kid);
    let fetches = kc.jwks_fetches();
    // A token of the new key makes the service refetch (at most once per
    // `jwks_min_refresh_interval`, 1 s here).
    let new = kc.token().build();
    let response = eventually(&stack, &new.jwt, 200, Duration::from_secs(5)).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("new key after rotation", &response)
    );
    assert!(
        kc.jwks_fetches() > fetches,
        "the new key set was never fetched"
    );

    // No waiting: the key set that no longer holds sig-a is already loaded.
    let response = check(&stack, &old.jwt).await;
    assert_problem(
        &stack,
        "cached token of the retired key",
        &response,
        401,
        "invalid_token",
    );
}

/// Unknown kids cannot make the service hammer Keycloak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_refetch_at_most_once_per_interval() {
    let stack = Stack::start(None).await;
    let kc = &stack.keycloak;
    // Let the interval that began with the first fetch pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = kc.jwks_fetches();
    let started = Instant::now();
    for _ in 0..20 {
        let token = kc
            .token()
            .signed_with(&KeyPair::rogue())
            .kid(&uuid())
            .build();
        let response = check(&stack, &token.jwt).await;
        assert_problem(&stack, "unknown kid", &response, 401, "invalid_token");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let fetches = kc.jwks_fetches() - before;
    let allowed = 1 + elapsed.ceil() as usize;
    assert!(
        fetches <= allowed,
        "{fetches} JWKS fetches for 20 unknown kids in {elapsed:.1} s (at most {allowed})"
    );
}

/// The keys endpoint failing after the first load does not stop validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_survive_a_keycloak_outage() {
    let stack = Stack::start_with(None, |config| {
        // Background refreshes during the outage must fail harmlessly too.
        config.set_str("keycloak", "jwks_cache_ttl", "1s");
    })
    .await;
    let kc = &stack.keycloak;
    let response = check(&stack, &kc.token().build().jwt).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("keys up", &response)
    );

    kc.fail_with(Some(500));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // A new token each time: a token verified moments ago may be cached.
    let response = check(&stack, &kc.token().build().jwt).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("keys endpoint 500", &response)
    );

    kc.stop().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let response = check(&stack, &kc.token().build().jwt).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("Keycloak down", &response)
    );
    let response = http::get(stack.app.http_addr(), "/readyz").send().await;
    assert_eq!(
        response.status,
        200,
        "{}",
        stack.explain("/readyz with cached keys", &response)
    );

    // Still strict while Keycloak is away.
    let forged = kc.token().forge_hs256_with_public_key().build();
    let response = check(&stack, &forged.jwt).await;
    assert_problem(
        &stack,
        "forgery during the outage",
        &response,
        401,
        "invalid_token",
    );
}

/// No keys at all yet: not ready, and checks are 503 (cannot decide), not 401.
/// Keycloak appearing later heals it without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keys_yet_is_503_until_keycloak_answers() {
    let redis = RedisServer::start().await;
    let kc = Keycloak::start().await;
    kc.stop().await;
    let mut config = base_config(&kc, &redis);
    config.set_str("keycloak", "jwks_cache_ttl", "1s");
    let app = App::start_unready(&config).await;

    let response = http::get(app.http_addr(), "/readyz").send().await;
    assert_eq!(
        response.status,
        503,
        "/readyz without keys: {:?} {}",
        response.status,
        response.text()
    );

    let token = kc.token().build();
    let authz = |jwt: String| {
        http::get(app.http_addr(), "/authz/auth-request")
            .header("X-Original-Method", "GET")
            .header("X-Original-URI", "/api/x")
            .bearer(&jwt)
    };
    let response = authz(token.jwt.clone()).send().await;
    assert_eq!(
        response.status,
        503,
        "check without keys: {}\n{}",
        response.text(),
        app.log()
    );
    assert_eq!(response.json()["code"], "authz_unavailable");

    kc.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = authz(token.jwt.clone()).send().await;
        if response.status == 200 {
            break;
        }
        assert_ne!(
            response.status,
            401,
            "a valid token was refused: {}",
            response.text()
        );
        assert!(
            Instant::now() < deadline,
            "no recovery 20 s after Keycloak came up: {} {}\n{}",
            response.status,
            response.text(),
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let response = http::get(app.http_addr(), "/readyz").send().await;
    assert_eq!(
        response.status,
        200,
        "/readyz after keys arrived: {}",
        response.text()
    );
}

/// `keycloak.leeway` (30 s here) applies to exp, nbf and iat, and no further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leeway_tolerates_small_clock_skew() {
    let stack = Stack::start(None).await;
    let kc = &stack.keycloak;
    let within = [
        ("expired 10 s ago", kc.token().expires_in(-10).build()),
        ("nbf in 10 s", kc.token().not_before_in(10).build()),
        ("iat in 10 s", kc.token().issued_in(10).build()),
    ];
    for (name, token) in within {
        let response = check(&stack, &token.jwt).await;
        assert_eq!(response.status, 200, "{}", stack.explain(name, &response));
    }
    let beyond = [
        ("expired 90 s ago", kc.token().expires_in(-90).build()),
        ("nbf in 90 s", kc.token().not_before_in(90).build()),
        ("iat in 90 s", kc.token().issued_in(90).build()),
    ];
    for (name, token) in beyond {
        let response = check(&stack, &token.jwt).await;
        assert_problem(&stack, name, &response, 401, "invalid_token");
    }
}
