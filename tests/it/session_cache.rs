//! Second-factor state held in memory (`cache.session_capacity`), kept
//! current by Redis (INTERFACE.md section 3): two twofa-authz instances share
//! one real Redis; a change made through one (or by `reset-user`, or by an
//! expiry) is seen by the other within 1 s, and an instance that loses Redis
//! stops answering from memory within 2 s. Also the decision table of
//! section 3 again with the cache off.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::app::App;
use crate::support::http;
use crate::support::keycloak::{now, uuid, Token, TokenBuilder, CLIENT};
use crate::support::process::poll_until;
use crate::support::redis::SessionKey;
use crate::support::{Stack, KEY_PREFIX};
use crate::user_common::UserStack;

/// The contract's bound for a change to reach every instance.
const SEEN_WITHIN: Duration = Duration::from_secs(1);
/// The contract's bound for an instance without its invalidation channel.
const STOP_WITHIN: Duration = Duration::from_secs(2);
/// A default-2fa path without max_age.
const PATH: &str = "/secure/report";

/// What instance `http_addr` decides for `token` on [`PATH`] (forward auth,
/// as nginx asks).
async fn status_on(http_addr: &str, token: &Token) -> u16 {
    http::get(http_addr, "/authz/auth-request")
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", PATH)
        .header("X-Forwarded-Host", "app.example.com")
        .bearer(&token.jwt)
        .send()
        .await
        .status
}

fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn session_hits(http_addr: &str) -> f64 {
    let text = http::get(http_addr, "/metrics").send().await.text();
    sample(&text, "twofa_cache_hits_total{cache=\"session\"}")
}

/// Checks `token` on `b` until its answers come from memory: the instance's
/// channel is up and the entry is cached. Asserts every answer is `want`.
async fn warm(b: &App, token: &Token, want: u16) {
    let before = session_hits(b.http_addr()).await;
    let cached = poll_until(Duration::from_secs(10), || async {
        assert_eq!(status_on(b.http_addr(), token).await, want, "{}", b.log());
        session_hits(b.http_addr()).await > before
    })
    .await;
    assert!(cached, "B never answered from memory:\n{}", b.log());
}

/// Polls `b` until it answers `want`; how long that took from `since`.
async fn time_until(
    b: &App,
    token: &Token,
    want: u16,
    since: Instant,
    limit: Duration,
) -> Duration {
    let seen = poll_until(limit + Duration::from_secs(3), || async {
        status_on(b.http_addr(), token).await == want
    })
    .await;
    let took = since.elapsed();
    assert!(seen, "B never answered {want}:\n{}", b.log());
    took
}

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

fn logout_for(builder: TokenBuilder, token: &Token) -> TokenBuilder {
    builder
        .claim("sub", json!(token.sub()))
        .sid(token.sid())
        .without("session_state")
        .claim("typ", json!("Logout"))
        .claim("aud", json!(CLIENT))
        .claim("jti", json!(uuid()))
        .claim("events", json!({ EVENT: {} }))
        .without("azp")
        .without("scope")
        .without("realm_access")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_through_a_is_refused_on_b_within_1s() {
    let stack = Stack::start(None).await;
    let b = App::start(&stack.config).await;
    let token = stack.keycloak.token().build();
    let other = stack.keycloak.token().user("bob").build();
    stack.mark_verified(&token, "totp", now()).await;
    stack.mark_verified(&other, "totp", now()).await;
    warm(&b, &token, 200).await;
    warm(&b, &other, 200).await;
    warm(&stack.app, &token, 200).await;

    let logout = logout_for(stack.keycloak.token(), &token).build();
    let r = http::request(
        "POST",
        stack.app.http_addr(),
        "/keycloak/backchannel-logout",
    )
    .header("Content-Type", "application/x-www-form-urlencoded")
    .body(format!("logout_token={}", logout.jwt).into_bytes())
    .send()
    .await;
    assert_eq!(r.status, 200, "{}", stack.explain("logout through A", &r));
    let done = Instant::now();
    // A itself: at once, from its own write.
    assert_eq!(status_on(stack.app.http_addr(), &token).await, 403);
    let took = time_until(&b, &token, 403, done, SEEN_WITHIN).await;
    assert!(took <= SEEN_WITHIN, "B allowed {took:?} after the logout");
    assert_eq!(
        status_on(b.http_addr(), &other).await,
        200,
        "another user's session stays verified (and cached)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_user_is_refused_on_b_within_1s_and_a_verification_through_a_is_allowed() {
    let us = UserStack::start(|_| {}).await;
    let b = App::start(&us.stack.config).await;
    let alice = us.alice();
    us.create_profile(&alice).await;

    // Not verified yet, and B remembers that.
    warm(&b, &alice, 403).await;

    // A verification through A (an emailed login code).
    let mail = us.login_code_by_email(&alice, "alice@example.com", 1).await;
    let r = us
        .verify(&alice, "email", &mail.code(), Some("login"))
        .await;
    us.expect(&r, 200, "verify-otp login through A");
    let done = Instant::now();
    let took = time_until(&b, &alice, 200, done, SEEN_WITHIN).await;
    assert!(
        took <= SEEN_WITHIN,
        "B refused {took:?} after the verification (a remembered \"not verified\" delayed it)"
    );
    warm(&b, &alice, 200).await;

    // The administrator resets the user with the CLI against the shared stores.
    let out = us.reset_user(alice.sub());
    let done = Instant::now();
    let took = time_until(&b, &alice, 403, done, SEEN_WITHIN).await;
    assert!(
        took <= SEEN_WITHIN,
        "B allowed {took:?} after reset-user: {out}"
    );
    assert_eq!(status_on(us.addr(), &alice).await, 403, "A too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_refused_on_b_at_its_expiry() {
    let stack = Stack::start(None).await;
    let b = App::start(&stack.config).await;
    let token = stack.keycloak.token().build();
    let key = SessionKey {
        prefix: KEY_PREFIX,
        iss: token.iss(),
        sub: token.sub(),
        sid: token.sid(),
    };
    // As an instance with `security.second_factor_ttl = "3s"` writes it.
    let ttl = Duration::from_secs(3);
    let written = Instant::now();
    stack.redis.mark_verified(&key, "totp", now(), ttl).await;
    let expires = written + ttl;
    warm(&b, &token, 200).await;
    assert!(
        Instant::now() < expires,
        "warming took too long to prove anything"
    );
    let hits = session_hits(b.http_addr()).await;
    let refused = poll_until(ttl + Duration::from_secs(3), || async {
        status_on(b.http_addr(), &token).await == 403
    })
    .await;
    let at = Instant::now();
    assert!(refused, "never refused after expiry:\n{}", b.log());
    assert!(
        at <= expires + SEEN_WITHIN + Duration::from_millis(100),
        "B allowed {:?} past the expiry",
        at - expires
    );
    assert!(
        session_hits(b.http_addr()).await > hits,
        "the answers until expiry came from memory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_means_503_within_2s_never_a_cached_allow_and_recovery() {
    let mut stack = Stack::start(None).await;
    let b = App::start(&stack.config).await;
    let token = stack.keycloak.token().build();
    stack.mark_verified(&token, "totp", now()).await;
    warm(&b, &token, 200).await;

    stack.redis.stop();
    let killed = Instant::now();
    let took = time_until(&b, &token, 503, killed, STOP_WITHIN).await;
    assert!(
        took <= STOP_WITHIN,
        "B answered from memory {took:?} after Redis went away"
    );
    // And stays closed while Redis is away.
    for _ in 0..5 {
        assert_eq!(status_on(b.http_addr(), &token).await, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back on the same port, empty (no persistence): the cached "verified"
    // must not come back with it.
    stack.redis.restart().await;
    let back = poll_until(Duration::from_secs(10), || async {
        status_on(b.http_addr(), &token).await != 503
    })
    .await;
    assert!(back, "B did not recover:\n{}", b.log());
    assert_eq!(
        status_on(b.http_addr(), &token).await,
        403,
        "the old entry is gone"
    );
    stack.mark_verified(&token, "totp", now()).await;
    let since = Instant::now();
    time_until(&b, &token, 200, since, SEEN_WITHIN).await;
    // Cached again once the channel is back.
    warm(&b, &token, 200).await;
}

/// The decision table of section 3 through Envoy with
/// `cache.session_capacity = 0` (every Check reads Redis); the same table
/// runs with the cache on in `check_envoy`.
mod without_the_session_cache {
    use crate::support::{with_settings, Proxy};

    macro_rules! cache_off {
        ($($name:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    with_settings(
                        &[("cache", "session_capacity", "0")],
                        crate::decisions::$name(Proxy::Envoy),
                    )
                    .await;
                }
            )*
        };
    }

    cache_off!(
        requirement_none_passes_without_identity,
        missing_token_is_401,
        invalid_tokens_are_401,
        requirement_token_sets_identity,
        second_factor_required_unless_verified,
        verified_session_is_allowed,
        step_up_max_age,
        session_store_outage_fails_closed,
        authz_unreachable_fails_closed,
        path_tricks_get_the_strict_requirement,
        client_identity_headers_never_reach_upstream,
        ambiguous_paths_get_the_strictest_requirement,
        more_than_one_credential_is_401,
        spoofed_original_request_headers_are_ignored,
    );

    /// The setting reached the process: no session entries, no hits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_is_really_off() {
        with_settings(&[("cache", "session_capacity", "0")], async {
            let stack = crate::support::Stack::start(None).await;
            let token = stack.keycloak.token().build();
            stack
                .mark_verified(&token, "totp", crate::support::keycloak::now())
                .await;
            for _ in 0..3 {
                assert_eq!(super::status_on(stack.app.http_addr(), &token).await, 200);
            }
            assert_eq!(super::session_hits(stack.app.http_addr()).await, 0.0);
        })
        .await;
    }
}
