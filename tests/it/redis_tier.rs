//! The Redis tier in production shapes (issue 9): TLS with a CA of the test's
//! own (and a wrong CA refused at start), a 3-primary Redis Cluster running
//! every short-lived feature, a Sentinel failover that never lets an
//! unverified session through and is followed without a restart, a restart
//! after which the very next call works, and readiness with Redis down.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::readiness::grpc_health_becomes;
use crate::support::app::App;
use crate::support::http;
use crate::support::keycloak::{now, uuid, Token, TokenBuilder, CLIENT};
use crate::support::process::poll_until;
use crate::support::redis::{TestRedis, Topology};
use crate::support::tls::TestCa;
use crate::support::Stack;
use crate::user_common::{Options, UserStack};
use crate::user_totp::{generate, oathtool, parse_uri, verify_totp};

/// The status of a Check (nginx's way) of a 2fa route for `token`.
async fn check(stack: &Stack, token: &Token) -> u16 {
    stack
        .authz("GET", "/admin/reports")
        .bearer(&token.jwt)
        .send()
        .await
        .status
}

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// A logout token as Keycloak sends it for `token`'s session.
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

async fn logout(stack: &Stack, logout_token: &Token) {
    let r = post_logout(stack, logout_token).await;
    assert_eq!(
        r.status,
        200,
        "{}",
        stack.explain("back-channel logout", &r)
    );
}

async fn post_logout(stack: &Stack, logout_token: &Token) -> http::Response {
    http::request(
        "POST",
        stack.app.http_addr(),
        "/keycloak/backchannel-logout",
    )
    .header("Content-Type", "application/x-www-form-urlencoded")
    .body(format!("logout_token={}", logout_token.jwt).into_bytes())
    .send()
    .await
}

fn user_stack_options(topology: Topology) -> Options {
    Options {
        redis: Some(topology),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_redis_runs_the_flow_and_a_wrong_ca_stops_the_start() {
    let us = UserStack::start_with(user_stack_options(Topology::Tls), |_| {}).await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    assert_eq!(check(&us.stack, &alice).await, 403, "not verified yet");
    us.login_by_email(&alice, "alice@example.com").await;
    assert_eq!(
        check(&us.stack, &alice).await,
        200,
        "{}",
        us.stack.app.log()
    );
    let keys = us.stack.redis.keys().await;
    assert!(keys.iter().any(|k| k.contains("sv:{")), "{keys:?}");

    // The same configuration with a CA that did not sign Redis' certificate.
    let dir = tempfile::tempdir().unwrap();
    let wrong = TestCa::new("not the Redis CA").write_cert(dir.path(), "wrong.pem");
    let mut config = us.stack.config.clone();
    config.set_str("storage", "redis_ca_path", &wrong.display().to_string());
    let (status, log) = App::run_to_exit(&config, Duration::from_secs(20)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    for needle in [
        "refusing to start",
        "storage.redis_ca_path",
        "wrong.pem",
        "not signed by a trusted CA (wrong CA?)",
    ] {
        assert!(log.contains(needle), "no {needle:?} in:\n{log}");
    }

    // Plaintext to the TLS port is not a way around it either: the server
    // speaks TLS only, so nothing is ever decided on it.
    let mut config = us.stack.config.clone();
    let plain = us.stack.redis.url().replace("rediss://", "redis://");
    config
        .set_str("storage", "redis_url", &plain)
        .remove("storage", "redis_ca_path");
    let app = App::start_unready(&config).await;
    let r = http::get(app.http_addr(), "/readyz").send().await;
    assert_eq!(r.status, 503, "{}", r.text());
    let r = http::get(app.http_addr(), "/authz/auth-request")
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", "/admin/reports")
        .bearer(&alice.jwt)
        .send()
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
}

/// Sessions, codes, lockouts, the pending TOTP secret, logout by sid and by
/// sub, and `reset-user`, on a 3-primary Redis Cluster: every script and
/// MULTI keeps to one slot, so none of them meets CROSSSLOT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_runs_every_short_lived_feature() {
    let us = UserStack::start_with(user_stack_options(Topology::Cluster), |c| {
        c.set("security", "max_attempts", "3")
            .set_str("security", "lockout", "1m");
    })
    .await;
    let stack = &us.stack;

    // Codes and sessions.
    let alice = us.alice();
    us.create_profile(&alice).await;
    assert_eq!(check(stack, &alice).await, 403);
    us.login_by_email(&alice, "alice@example.com").await;
    assert_eq!(check(stack, &alice).await, 200, "{}", stack.app.log());

    // The pending TOTP secret, then its confirmation.
    let g = generate(&stack.app, &alice).await;
    let params = parse_uri(&g.uri);
    let r = verify_totp(&stack.app, &alice, &oathtool(&params, now()), true).await;
    assert_eq!(r.status, 200, "{}", stack.explain("verify-totp", &r));
    assert!(r.json()["recovery_codes"].is_array(), "{}", r.text());

    // Lockouts: three wrong codes spend the budget, the fourth is refused.
    let bob = stack.keycloak.token().user("bob").build();
    us.kc_admin
        .add_user(bob.sub(), "bob", "bob@example.com", json!({}));
    us.create_profile(&bob).await;
    let r = us.send_otp(&bob, "email").await;
    us.expect(&r, 202, "send-otp bob");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(us.verify(&bob, "email", "000000", None).await.status);
    }
    assert!(
        statuses[..2] == [400, 400] && statuses[3] == 429,
        "{statuses:?}"
    );

    // Logout by sid, then by sub.
    let s2 = us.other_session(&alice);
    let s3 = us.other_session(&alice);
    stack.mark_verified(&s2, "totp", now()).await;
    stack.mark_verified(&s3, "totp", now()).await;
    assert_eq!(check(stack, &s2).await, 200);
    logout(
        stack,
        &logout_for(stack.keycloak.token(), &alice)
            .without("sub")
            .build(),
    )
    .await;
    assert_eq!(check(stack, &alice).await, 403, "logged out by sid");
    assert_eq!(check(stack, &s2).await, 200, "other sessions stay");
    logout(
        stack,
        &logout_for(stack.keycloak.token(), &s2)
            .without("sid")
            .build(),
    )
    .await;
    assert_eq!(check(stack, &s2).await, 403, "logged out by sub");
    assert_eq!(check(stack, &s3).await, 403, "logged out by sub");

    // reset-user, through the CLI on the same Cluster.
    let s4 = us.other_session(&alice);
    stack.mark_verified(&s4, "totp", now()).await;
    assert_eq!(check(stack, &s4).await, 200);
    let out = us.reset_user(alice.sub());
    assert!(out.contains("removed 1 verified session(s)"), "{out}");
    assert_eq!(check(stack, &s4).await, 403, "reset-user ends the sessions");

    // The keys are spread over the primaries, each with prefix and TTL.
    let TestRedis::Cluster(cluster) = &stack.redis else {
        unreachable!()
    };
    let mut holding = 0;
    for node in &cluster.nodes {
        let keys = node.keys().await;
        holding += usize::from(!keys.is_empty());
        for k in keys {
            assert!(k.starts_with(crate::support::KEY_PREFIX), "{k}");
        }
    }
    assert!(holding >= 2, "every key landed on one node");
}

/// A verified session is allowed; `SENTINEL FAILOVER` runs; throughout,
/// an unverified session is never allowed (403, or 503 while no primary is
/// known); within 30 s the verified one is allowed again, from the new
/// primary, and writes (a logout) go there: no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed_and_fails_closed_meanwhile() {
    sentinel_failover(Topology::Sentinel).await;
}

/// The same with the sentinel, the primary and the replica over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_over_tls() {
    sentinel_failover(Topology::SentinelTls).await;
}

async fn sentinel_failover(topology: Topology) {
    let mut stack = Stack::start_on(topology, None, |_| {}).await;
    let verified = stack.keycloak.token().build();
    let unverified = stack.keycloak.token().user("mallory").build();
    stack.mark_verified(&verified, "totp", now()).await;
    assert_eq!(check(&stack, &verified).await, 200);
    assert_eq!(check(&stack, &unverified).await, 403);

    let TestRedis::Sentinel(s) = &stack.redis else {
        unreachable!()
    };
    let before = s.primary_port().await;
    s.failover().await;
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut moved = false;
    loop {
        let (v, u) = tokio::join!(check(&stack, &verified), check(&stack, &unverified));
        assert!(u == 403 || u == 503, "unverified session answered {u}");
        assert!(v == 200 || v == 503, "verified session answered {v}");
        seen.push(v);
        if !moved {
            moved = s.primary_port().await != before;
        }
        if moved && v == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not back within 30 s (moved: {moved}, statuses {seen:?}):\n{}",
            stack.app.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The old primary gone: the service is on the new one.
    let TestRedis::Sentinel(s) = &mut stack.redis else {
        unreachable!()
    };
    let old = s
        .servers
        .iter_mut()
        .find(|x| x.port() == before)
        .expect("the old primary");
    old.stop();
    let back = poll_until(Duration::from_secs(10), || async {
        check(&stack, &verified).await == 200
    })
    .await;
    assert!(
        back,
        "not allowed without the old primary:\n{}",
        stack.app.log()
    );
    // The /user side's connection may still point at the old primary: its
    // first write fails closed once (it is not repeated: it may have run),
    // the next one goes to the new primary.
    let token = logout_for(stack.keycloak.token(), &verified).build();
    let mut r = post_logout(&stack, &token).await;
    if r.status == 503 {
        r = post_logout(&stack, &token).await;
    }
    assert_eq!(
        r.status,
        200,
        "{}",
        stack.explain("logout after the failover", &r)
    );
    assert_eq!(
        check(&stack, &verified).await,
        403,
        "the logout was written"
    );
    let r = http::get(stack.app.http_addr(), "/readyz").send().await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Redis stopped and started again on the same port (empty): the very next
/// `/user` call and the very next Check work, no 503 in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_the_next_calls_work() {
    let mut us = UserStack::start(|_| {}).await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    for round in 0..2 {
        // Both links in use before the restart.
        us.profile(&alice).await;
        assert_eq!(check(&us.stack, &alice).await, 403);
        us.stack.redis.restart().await;
        let r = us.call("GET", "/user", &alice, Value::Null).await;
        us.expect(
            &r,
            200,
            &format!("round {round}: GET /user right after the restart"),
        );
        assert_eq!(
            check(&us.stack, &alice).await,
            403,
            "round {round}: a Check right after the restart\n{}",
            us.stack.app.log()
        );
    }
    // And what changes state works again as well.
    let r = us.send_otp(&alice, "email").await;
    let r = if r.status == 503 {
        us.send_otp(&alice, "email").await
    } else {
        r
    };
    us.expect(&r, 202, "send-otp after the restart");
}

async fn readyz(stack: &Stack) -> (u16, Value) {
    let r = http::get(stack.app.http_addr(), "/readyz").send().await;
    (r.status, r.json())
}

/// With Redis down (one TLS server; one primary of a Cluster; Sentinel's
/// primary and replica), `/readyz` is
/// 503 naming the session store and gRPC health NOT_SERVING; both follow it
/// back. (One plain server: `readiness.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_in_each_topology() {
    for topology in [Topology::Tls, Topology::Cluster, Topology::Sentinel] {
        let mut stack = Stack::start_on(topology, None, |_| {}).await;
        let (status, body) = readyz(&stack).await;
        assert_eq!(status, 200, "{topology:?}: {body}");
        assert!(grpc_health_becomes(stack.app.grpc_addr(), ServingStatus::Serving).await);
        match &mut stack.redis {
            TestRedis::Cluster(c) => c.nodes[1].stop(),
            // Primary and replica both gone: no primary to be found.
            TestRedis::Sentinel(s) => s.servers.iter_mut().for_each(|x| x.stop()),
            other => other.stop(),
        }
        let down = poll_until(Duration::from_secs(10), || async {
            readyz(&stack).await.0 == 503
        })
        .await;
        assert!(down, "{topology:?}: /readyz stayed 200 with Redis down");
        let (_, body) = readyz(&stack).await;
        assert_eq!(
            body["checks"]["session_store"], "down",
            "{topology:?}: {body}"
        );
        assert_eq!(
            body["not_ready"],
            json!(["session_store"]),
            "{topology:?}: {body}"
        );
        assert!(
            grpc_health_becomes(stack.app.grpc_addr(), ServingStatus::NotServing).await,
            "{topology:?}: gRPC health stayed SERVING"
        );
        let token = stack.keycloak.token().build();
        assert_eq!(
            check(&stack, &token).await,
            503,
            "{topology:?}: fail closed"
        );
        match &mut stack.redis {
            TestRedis::Cluster(c) => c.nodes[1].restart().await,
            TestRedis::Sentinel(s) => {
                for x in s.servers.iter_mut() {
                    x.restart().await;
                }
            }
            other => other.restart().await,
        }
        let up = poll_until(Duration::from_secs(20), || async {
            readyz(&stack).await.0 == 200
        })
        .await;
        assert!(up, "{topology:?}: not ready again:\n{}", stack.app.log());
        assert!(
            grpc_health_becomes(stack.app.grpc_addr(), ServingStatus::Serving).await,
            "{topology:?}: gRPC health did not come back"
        );
    }
}
