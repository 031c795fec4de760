//! Remembered devices (issue 13, item 2; docs/remembered-devices.md), end to
//! end on the real binary with PostgreSQL, Redis and a real SMTP server: a
//! token issued after a real factor verifies a later session of the same
//! user with `device`, rotates on every use, is revoked (and the user told)
//! when a replaced token comes back, never satisfies a step-up or a
//! sensitive operation, and goes with `reset-user` and a logout by `sub`.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::burst::{self, statuses};
use crate::support::http::{self, Response};
use crate::support::keycloak::{uuid, Token, CLIENT};
use crate::user_common::{UserStack, ALICE_MOBILE};

const ALICE: &str = "alice@example.com";
/// Longer than `factor::device::REUSE_GRACE` (3 s): a replaced token sent
/// after this is taken for a stolen copy.
const PAST_GRACE: Duration = Duration::from_millis(3500);

async fn stack(ttl: &str, tweak: impl FnOnce(&mut crate::support::app::AppConfig)) -> UserStack {
    let ttl = ttl.to_owned();
    UserStack::start(move |c| {
        c.set_str("security", "remember_device_ttl", &ttl);
        tweak(c);
    })
    .await
}

/// Alice with a profile and a session that passed an emailed code.
async fn verified_alice(u: &UserStack) -> Token {
    let alice = u.alice();
    u.create_profile(&alice).await;
    u.login_by_email(&alice, ALICE).await;
    alice
}

/// `POST /user/remembered-devices`: (id, token, expires_at).
async fn remember(u: &UserStack, t: &Token, name: Option<&str>) -> (String, String, i64) {
    let body = name.map_or(Value::Null, |n| json!({ "name": n }));
    let r = u.call("POST", "/user/remembered-devices", t, body).await;
    u.expect(&r, 201, "POST /user/remembered-devices");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let b = r.json();
    let token = b["device_token"].as_str().expect("device_token").to_owned();
    assert!(
        token.len() >= 22
            && token
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "base64url, at least 128 bits: {token}"
    );
    (
        b["id"].as_str().expect("id").to_owned(),
        token,
        b["expires_at"].as_i64().expect("expires_at"),
    )
}

async fn verify_device(u: &UserStack, t: &Token, token: &str) -> Response {
    u.call(
        "POST",
        "/user/verify-device",
        t,
        json!({ "device_token": token }),
    )
    .await
}

/// Verifies `t`'s session with `token`; returns the next token.
async fn use_device(u: &UserStack, t: &Token, token: &str) -> String {
    let r = verify_device(u, t, token).await;
    u.expect(&r, 200, "verify-device");
    let b = r.json();
    assert_eq!(b["verified"], true, "{b}");
    let next = b["device_token"].as_str().expect("device_token").to_owned();
    assert_ne!(next, token, "the token rotates on every use");
    next
}

/// A forward-auth Check, as nginx asks it.
async fn check(u: &UserStack, t: &Token, path: &str) -> Response {
    u.stack.authz("GET", path).bearer(&t.jwt).send().await
}

async fn devices(u: &UserStack, t: &Token) -> Vec<Value> {
    let r = u
        .call("GET", "/user/remembered-devices", t, Value::Null)
        .await;
    u.expect(&r, 200, "GET /user/remembered-devices");
    r.json()["devices"].as_array().expect("devices").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_device_verifies_a_new_session_and_rotates() {
    let u = stack("30d", |_| {}).await;
    let alice = verified_alice(&u).await;
    let (id, t1, expires_at) = remember(&u, &alice, Some("Work laptop")).await;
    let now = crate::support::keycloak::now();
    assert!(
        (expires_at - (now + 30 * 86_400)).abs() <= 5,
        "{expires_at}"
    );

    // A new Keycloak session on that device: not verified, until the token.
    let s2 = u.other_session(&alice);
    u.expect(&check(&u, &s2, "/secure").await, 403, "Check before");
    let t2 = use_device(&u, &s2, &t1).await;
    let r = check(&u, &s2, "/secure").await;
    u.expect(&r, 200, "Check after verify-device");
    assert_eq!(r.header("x-auth-request-second-factor"), Some("device"));
    assert_eq!(u.profile(&s2).await["session"]["second_factor"], "device");

    // The chain goes on with each new token.
    let s3 = u.other_session(&alice);
    let t3 = use_device(&u, &s3, &t2).await;
    u.expect(
        &check(&u, &s3, "/secure").await,
        200,
        "Check, third session",
    );

    // Listed without the token; deleted, it verifies nothing more.
    let list = devices(&u, &alice).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let d = &list[0];
    assert_eq!(d["id"], id);
    assert_eq!(d["name"], "Work laptop");
    assert_eq!(d["expires_at"], expires_at, "use does not extend the TTL");
    assert!(d["created_at"].as_i64().is_some() && d["last_used_at"].as_i64().is_some());
    let text = d.to_string();
    for secret in [&t1, &t2, &t3] {
        assert!(!text.contains(secret.as_str()), "{text}");
    }
    assert!(d.get("device_token").is_none() && d.get("token_hash").is_none());

    let r = u
        .call(
            "DELETE",
            &format!("/user/remembered-devices/{id}"),
            &alice,
            Value::Null,
        )
        .await;
    u.expect(&r, 204, "DELETE the device");
    let r = u
        .call(
            "DELETE",
            &format!("/user/remembered-devices/{id}"),
            &alice,
            Value::Null,
        )
        .await;
    u.expect_problem(&r, 404, "device_not_found", "DELETE it again");
    assert!(devices(&u, &alice).await.is_empty());
    let s4 = u.other_session(&alice);
    let r = verify_device(&u, &s4, &t3).await;
    u.expect_problem(&r, 400, "invalid_code", "a deleted device's token");
    u.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_token_that_comes_back_revokes_the_device_and_tells_the_user() {
    let u = stack("30d", |_| {}).await;
    let alice = verified_alice(&u).await;
    let (_, t1, _) = remember(&u, &alice, None).await;
    let device_session = u.other_session(&alice);
    let t2 = use_device(&u, &device_session, &t1).await;
    u.expect(
        &check(&u, &device_session, "/secure").await,
        200,
        "the device's session",
    );
    let mails_before = u.smtp.messages_to(ALICE).len();
    let sms_before = u.twilio.messages_to(ALICE_MOBILE).len();

    // Later, the copy of t1 comes back from somewhere else.
    tokio::time::sleep(PAST_GRACE).await;
    let thief = u.other_session(&alice);
    let r = verify_device(&u, &thief, &t1).await;
    u.expect_problem(&r, 400, "invalid_code", "the replaced token");
    u.expect(
        &check(&u, &thief, "/secure").await,
        403,
        "the thief's session",
    );

    // The user is told, by the real SMTP server.
    let mail = u.smtp.wait_for(ALICE, mails_before + 1).await;
    assert!(
        mail.subject.contains("remembered device was revoked"),
        "{}",
        mail.subject
    );
    assert!(!mail.text.contains(&t1) && !mail.text.contains(&t2));
    // And by SMS to the verified mobile (Twilio's wire format, stand-in).
    let sms = u.twilio.wait_for(ALICE_MOBILE, sms_before + 1).await;
    assert!(
        sms.body.contains("remembered device was revoked"),
        "{}",
        sms.body
    );
    u.assert_no_violations();

    // The device is gone: its newer token is refused too, and the sessions
    // it may have verified are no longer verified.
    assert!(devices(&u, &alice).await.is_empty());
    let s = u.other_session(&alice);
    let r = verify_device(&u, &s, &t2).await;
    u.expect_problem(&r, 400, "invalid_code", "the newer token after the theft");
    u.expect(
        &check(&u, &device_session, "/secure").await,
        403,
        "the device's session after the theft",
    );
    u.expect(
        &check(&u, &alice, "/secure").await,
        403,
        "every verified session of the user ends",
    );
    let log = u.stack.app.log();
    assert!(log.contains("device revoked as stolen"));
    // The audit trail (docs/audit.md): one device_revoked, after the
    // device_remembered and the device's factor_passed.
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"event\":\"device_"))
        .collect();
    assert_eq!(audit.len(), 2, "{audit:#?}");
    assert!(
        audit[0].contains("\"event\":\"device_remembered\""),
        "{audit:#?}"
    );
    assert!(
        audit[1].contains("\"event\":\"device_revoked\"")
            && audit[1].contains("\"outcome\":\"failure\"")
            && audit[1].contains("replaced_token_reused"),
        "{audit:#?}"
    );
    assert!(
        log.contains("\"method\":\"device\""),
        "factor_passed by device"
    );
    for secret in [&t1, &t2] {
        assert!(
            !u.stack.app.log().contains(secret.as_str()),
            "a token in the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_device_is_refused() {
    let u = stack("2s", |_| {}).await;
    let alice = verified_alice(&u).await;
    let (_, t1, expires_at) = remember(&u, &alice, None).await;
    assert!(expires_at <= crate::support::keycloak::now() + 3);
    // Still valid: it works once, and rotation does not extend it.
    let s2 = u.other_session(&alice);
    let t2 = use_device(&u, &s2, &t1).await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let s3 = u.other_session(&alice);
    let r = verify_device(&u, &s3, &t2).await;
    u.expect_problem(&r, 400, "invalid_code", "an expired device");
    u.expect(&check(&u, &s3, "/secure").await, 403, "Check");
    assert!(devices(&u, &alice).await.is_empty(), "expired: not listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_user_revokes_every_device() {
    let u = stack("30d", |_| {}).await;
    let alice = verified_alice(&u).await;
    let (_, t1, _) = remember(&u, &alice, Some("a")).await;
    let (_, t2, _) = remember(&u, &alice, Some("b")).await;
    let out = u.reset_user(alice.sub());
    assert!(
        out.contains("2 remembered device(s) revoked"),
        "reset-user says what it removed: {out}"
    );
    for t in [&t1, &t2] {
        let s = u.other_session(&alice);
        let r = verify_device(&u, &s, t).await;
        u.expect_problem(&r, 400, "invalid_code", "a device after reset-user");
    }
    assert!(devices(&u, &alice).await.is_empty());
}

/// A logout token as Keycloak sends it for "log out everywhere": `sub`, no
/// `sid`.
fn logout_by_sub(u: &UserStack, t: &Token) -> String {
    u.stack
        .keycloak
        .token()
        .claim("sub", json!(t.sub()))
        .without("sid")
        .without("session_state")
        .claim("typ", json!("Logout"))
        .claim("aud", json!(CLIENT))
        .claim("jti", json!(uuid()))
        .claim(
            "events",
            json!({ "http://schemas.openid.net/event/backchannel-logout": {} }),
        )
        .without("azp")
        .without("scope")
        .without("realm_access")
        .build()
        .jwt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backchannel_logout_by_sub_revokes_every_device() {
    let u = stack("30d", |_| {}).await;
    let alice = verified_alice(&u).await;
    let (_, t1, _) = remember(&u, &alice, None).await;
    let r = http::request("POST", u.addr(), "/keycloak/backchannel-logout")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("logout_token={}", logout_by_sub(&u, &alice)).into_bytes())
        .send()
        .await;
    u.expect(&r, 200, "logout by sub");
    let s = u.other_session(&alice);
    let r = verify_device(&u, &s, &t1).await;
    u.expect_problem(&r, 400, "invalid_code", "a device after logout by sub");
    assert!(devices(&u, &alice).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_never_satisfies_a_step_up_or_a_sensitive_operation() {
    let u = stack("30d", |_| {}).await;
    let alice = verified_alice(&u).await;
    // A real factor just now passes the step-up rule (`/admin`, 15m).
    u.expect(&check(&u, &alice, "/admin/x").await, 200, "step-up, email");
    let (_, t1, _) = remember(&u, &alice, None).await;

    let s = u.other_session(&alice);
    let t2 = use_device(&u, &s, &t1).await;
    u.expect(&check(&u, &s, "/secure").await, 200, "plain 2fa, device");
    let r = check(&u, &s, "/admin/x").await;
    u.expect_problem(&r, 403, "second_factor_required", "step-up with device");

    // Sensitive operations ask for a fresh factor, with `max_age`.
    for (method, path, body) in [
        ("POST", "/user/generate-totp", Value::Null),
        ("POST", "/user/recovery-codes", Value::Null),
        (
            "PATCH",
            "/user",
            json!({ "email": "alice.new@example.com" }),
        ),
        // A device cannot vouch for another device.
        ("POST", "/user/remembered-devices", Value::Null),
    ] {
        let r = u.call(method, path, &s, body).await;
        u.expect_problem(
            &r,
            403,
            "second_factor_required",
            &format!("{method} {path}"),
        );
        assert_eq!(r.json()["max_age"], 600, "{method} {path}");
    }
    // The same session with a real factor passes both.
    u.login_by_email(&s, ALICE).await;
    u.expect(&check(&u, &s, "/admin/x").await, 200, "step-up after email");
    let r = u
        .call("POST", "/user/recovery-codes", &s, Value::Null)
        .await;
    u.expect(&r, 201, "recovery codes after email");
    drop(t2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uses_of_one_token_at_once_verify_exactly_one_session() {
    exactly_one_of_a_burst(|_| {}).await;
}

/// The same on the embedded stores: SQLite and the in-memory session store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uses_at_once_verify_exactly_one_session_on_sqlite_and_memory() {
    exactly_one_of_a_burst(|c| {
        c.set_str("storage", "database_url", "sqlite://twofa.db")
            .set_str("storage", "redis_url", "memory://");
    })
    .await;
}

async fn exactly_one_of_a_burst(tweak: impl FnOnce(&mut crate::support::app::AppConfig)) {
    // A budget that the burst does not spend.
    let u = stack("30d", |c| {
        c.set("security", "max_attempts", "50");
        tweak(c);
    })
    .await;
    let alice = verified_alice(&u).await;
    let (_, t1, _) = remember(&u, &alice, None).await;
    const N: usize = 16;
    let sessions: Vec<Token> = (0..N).map(|_| u.other_session(&alice)).collect();
    let reqs = sessions
        .iter()
        .map(|s| {
            u.req("POST", "/user/verify-device", s)
                .body(json!({ "device_token": t1 }).to_string())
        })
        .collect();
    let answers: Vec<Response> = burst::release(reqs, Duration::from_secs(30))
        .await
        .answers()
        .await
        .into_iter()
        .map(|a| a.response)
        .collect();
    assert_eq!(
        statuses(&answers),
        vec![(200, 1), (400, N - 1)],
        "{:?}",
        answers.iter().map(Response::text).collect::<Vec<_>>()
    );
    let winner = answers.iter().position(|a| a.status == 200).unwrap();
    for (i, s) in sessions.iter().enumerate() {
        let want = if i == winner { 200 } else { 403 };
        u.expect(
            &check(&u, s, "/secure").await,
            want,
            &format!("session {i}"),
        );
    }
    // The losers did not revoke the device: the winner's token works.
    let next = answers[winner].json()["device_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = u.other_session(&alice);
    use_device(&u, &s, &next).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_other_users_tokens_are_refused_against_the_budget() {
    let u = stack("30d", |_| {}).await;
    let alice = verified_alice(&u).await;
    let (_, t1, _) = remember(&u, &alice, None).await;

    let bob = u.stack.keycloak.token().user("bob").build();
    u.kc_admin
        .add_user(bob.sub(), "bob", "bob@example.com", json!({}));
    u.create_profile(&bob).await;
    let mut remaining = HashSet::new();
    for (what, token) in [
        ("alice's token", t1.clone()),
        ("a forged token", "A".repeat(43)),
        ("alice's token again", t1.clone()),
    ] {
        let r = verify_device(&u, &bob, &token).await;
        u.expect_problem(&r, 400, "invalid_code", what);
        remaining.insert(r.json()["attempts_remaining"].as_u64().unwrap());
    }
    assert_eq!(
        remaining,
        HashSet::from([4, 3, 2]),
        "each refusal spends an attempt"
    );
    u.expect(
        &check(&u, &bob, "/secure").await,
        403,
        "bob stays unverified",
    );
    let r = verify_device(&u, &bob, "A").await;
    u.expect_problem(&r, 400, "invalid_code", "a short forgery");
    let r = verify_device(&u, &bob, "B").await;
    u.expect_problem(&r, 429, "too_many_attempts", "the budget is spent");

    // Alice's device is untouched by bob's tries.
    let s = u.other_session(&alice);
    use_device(&u, &s, &t1).await;
    let r = verify_device(&u, &alice, &"x".repeat(500)).await;
    u.expect_problem(&r, 422, "invalid_request", "an oversized token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembering_needs_a_real_factor_and_the_feature_on() {
    let u = stack("30d", |_| {}).await;
    let alice = u.alice();
    u.create_profile(&alice).await;
    let r = u
        .call("POST", "/user/remembered-devices", &alice, Value::Null)
        .await;
    u.expect_problem(&r, 403, "second_factor_required", "an unverified session");
    let r = u
        .call(
            "POST",
            "/user/remembered-devices",
            &alice,
            json!({ "name": "x".repeat(65) }),
        )
        .await;
    u.expect_problem(&r, 422, "invalid_request", "a long name");

    let off = UserStack::start(|_| {}).await;
    let alice = off.alice();
    off.create_profile(&alice).await;
    for (method, path, body) in [
        ("POST", "/user/remembered-devices", Value::Null),
        ("GET", "/user/remembered-devices", Value::Null),
        ("DELETE", "/user/remembered-devices/abc", Value::Null),
        (
            "POST",
            "/user/verify-device",
            json!({ "device_token": "A".repeat(43) }),
        ),
    ] {
        let r = off.call(method, path, &alice, body).await;
        off.expect_problem(
            &r,
            404,
            "remembered_devices_disabled",
            &format!("{method} {path} while off"),
        );
    }
}

/// Through a real Envoy (gRPC Check): a device-verified session reaches the
/// application on a `2fa` route with `x-auth-request-second-factor: device`,
/// but not a route whose `twofa.max_age` context extension asks for a
/// step-up (`/admin` in envoy/envoy.yaml), while a real factor passes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_device_passes_2fa_but_never_the_per_route_max_age() {
    let opts = crate::user_common::Options {
        proxy: Some(crate::support::Proxy::Envoy),
        ..Default::default()
    };
    let u = UserStack::start_with(opts, |c| {
        c.set_str("security", "remember_device_ttl", "30d");
    })
    .await;
    let alice = verified_alice(&u).await;
    let through = |t: &Token, path: &str| u.stack.get(path).bearer(&t.jwt).send();
    let r = through(&alice, "/admin/reports").await;
    crate::support::assert_reached_upstream(&u.stack, "step-up with email", &r);
    let (_, t1, _) = remember(&u, &alice, None).await;

    let s = u.other_session(&alice);
    use_device(&u, &s, &t1).await;
    let r = through(&s, "/secure").await;
    let echoed = crate::support::assert_reached_upstream(&u.stack, "2fa with device", &r);
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("device")
    );
    let r = through(&s, "/admin/reports").await;
    u.expect_problem(
        &r,
        403,
        "second_factor_required",
        "twofa.max_age with device",
    );
}
