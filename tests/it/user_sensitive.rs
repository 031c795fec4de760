//! "Needs a recent second factor" (issue 8, item 3; INTERFACE.md section 5):
//! adding, changing or removing a factor or a contact, and confirming a
//! pending TOTP secret, need a factor passed by this session within
//! `security.sensitive_max_age`; whether the user has a factor comes from the
//! stored profile, never from the token. Also the rate limit of change
//! notices (item 6).

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::burst::{self, statuses};
use crate::support::http::Response;
use crate::support::keycloak::now;
use crate::user_budget::{enroll_totp, factorless_user, stack, Store};
use crate::user_common::{UserStack, ALICE_MOBILE};
use crate::user_totp::{oathtool, parse_uri};

const NEW_MOBILE: &str = "+14155550124";

#[track_caller]
fn expect_recent_factor_required(u: &UserStack, r: &Response, what: &str, max_age: u64) {
    u.expect_problem(r, 403, "second_factor_required", what);
    let b = r.json();
    assert_eq!(b["max_age"], max_age, "{what}: {b}");
    assert!(
        b["methods"].as_array().is_some_and(|m| !m.is_empty()),
        "{what}: {b}"
    );
}

/// A session that passed a factor an hour ago (within
/// `security.second_factor_ttl`, beyond `security.sensitive_max_age`) may
/// not touch factors or contacts; after a fresh code it may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_session_is_refused_on_every_sensitive_route_until_a_fresh_code() {
    let u = UserStack::start(|_| {}).await;
    let alice = u.alice();
    u.create_profile(&alice).await;

    // While fresh: a pending TOTP secret and a pending mobile number.
    u.login_by_email(&alice, "alice@example.com").await;
    let r = u
        .call("POST", "/user/generate-totp", &alice, Value::Null)
        .await;
    u.expect(&r, 201, "generate-totp while fresh");
    let params = parse_uri(r.json()["otpauth_uri"].as_str().unwrap());
    let r = u
        .call("PATCH", "/user", &alice, json!({ "mobile": NEW_MOBILE }))
        .await;
    u.expect(&r, 202, "PATCH while fresh");
    let sms_code = u.sms_to(NEW_MOBILE, 1).await.code();

    // An hour later (the session store says so).
    u.stack.mark_verified(&alice, "email", now() - 3600).await;
    let stale_calls: Vec<(&str, &str, Value)> = vec![
        (
            "PATCH",
            "/user",
            json!({ "email": "alice.new@example.com" }),
        ),
        ("POST", "/user/generate-totp", Value::Null),
        ("DELETE", "/user/totp", Value::Null),
        ("POST", "/user/recovery-codes", Value::Null),
        (
            "POST",
            "/user/verify-totp",
            json!({ "totp": oathtool(&params, now()), "is_new_seed": true }),
        ),
        (
            "POST",
            "/user/verify-otp",
            json!({ "otp": sms_code, "otp_type": "mobile", "purpose": "contact" }),
        ),
    ];
    for (method, path, body) in &stale_calls {
        let r = u.call(method, path, &alice, body.clone()).await;
        expect_recent_factor_required(&u, &r, &format!("stale {method} {path}"), 600);
    }
    // Nothing happened, nothing was consumed.
    let p = u.profile(&alice).await;
    assert_eq!(p["mobile"], ALICE_MOBILE, "{p}");
    assert_eq!(p["pending"]["mobile"], NEW_MOBILE, "{p}");
    assert_eq!(p["totp_enabled"], false, "{p}");
    assert_eq!(p["recovery_codes_remaining"], 0, "{p}");
    // The Check path still counts the session as verified (12 h), and its
    // step-up denial carries no `max_age`: only the /user rule adds it.
    let r = u
        .stack
        .authz("GET", "/api/x")
        .bearer(&alice.jwt)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", u.stack.explain("token route", &r));
    let r = u
        .stack
        .authz("GET", "/admin/x")
        .bearer(&alice.jwt)
        .send()
        .await;
    assert_eq!(r.status, 403, "{}", u.stack.explain("step-up route", &r));
    assert!(r.json().get("max_age").is_none(), "{}", r.text());

    // A fresh code, and each of them goes through.
    u.login_by_email(&alice, "alice@example.com").await;
    let r = u
        .call(
            "POST",
            "/user/verify-otp",
            &alice,
            json!({ "otp": sms_code, "otp_type": "mobile", "purpose": "contact" }),
        )
        .await;
    u.expect(&r, 200, "confirm the mobile");
    assert_eq!(u.profile(&alice).await["mobile"], NEW_MOBILE);
    let r = u
        .call(
            "POST",
            "/user/verify-totp",
            &alice,
            json!({ "totp": oathtool(&params, now()), "is_new_seed": true }),
        )
        .await;
    u.expect(&r, 200, "confirm TOTP");
    let r = u
        .call("POST", "/user/recovery-codes", &alice, Value::Null)
        .await;
    u.expect(&r, 201, "regenerate");
    let r = u.call("DELETE", "/user/totp", &alice, Value::Null).await;
    u.expect(&r, 204, "remove TOTP");
    let r = u
        .call("POST", "/user/generate-totp", &alice, Value::Null)
        .await;
    u.expect(&r, 201, "generate again");
    let r = u
        .call(
            "PATCH",
            "/user",
            &alice,
            json!({ "email": "alice.new@example.com" }),
        )
        .await;
    u.expect(&r, 202, "PATCH email");
}

/// The same rule on the in-process store, with real time passing:
/// `sensitive_max_age = "3s"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_factor_expires_with_sensitive_max_age_memory() {
    let u = stack(Store::Memory, |c| {
        c.set_str("security", "sensitive_max_age", "3s");
    })
    .await;
    let alice = u.alice();
    u.create_profile(&alice).await;
    let r = u
        .call("POST", "/user/recovery-codes", &alice, Value::Null)
        .await;
    expect_recent_factor_required(&u, &r, "never verified", 3);
    u.login_by_email(&alice, "alice@example.com").await;
    let r = u
        .call("POST", "/user/recovery-codes", &alice, Value::Null)
        .await;
    u.expect(&r, 201, "fresh");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let r = u
        .call("POST", "/user/recovery-codes", &alice, Value::Null)
        .await;
    expect_recent_factor_required(&u, &r, "3.5 s later", 3);
    u.login_by_email(&alice, "alice@example.com").await;
    let r = u
        .call("POST", "/user/recovery-codes", &alice, Value::Null)
        .await;
    u.expect(&r, 201, "fresh again");
}

/// "Has a factor" comes from the stored profile: a token that says
/// `email_verified: true` does not make an address the profile never
/// verified a factor, and one that says `false` does not take a verified
/// one away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn having_a_factor_comes_from_the_profile_not_the_token() {
    let u = UserStack::start(|_| {}).await;

    // Profile made from a token without a verified email; later tokens
    // claim it verified.
    factorless_user(&u, "dave").await;
    let claims_verified = u
        .stack
        .keycloak
        .token()
        .user("dave")
        .claim("email_verified", json!(true))
        .build();
    let p = u.profile(&claims_verified).await;
    assert_eq!(p["email_verified"], false, "{p}");
    assert_eq!(p["methods"], json!([]), "{p}");
    let r = u.send_otp(&claims_verified, "email").await;
    u.expect_problem(&r, 409, "contact_not_verified", "send-otp by a claim");
    // No factor: enrolling needs no verified session.
    let r = u
        .call("POST", "/user/generate-totp", &claims_verified, Value::Null)
        .await;
    u.expect(&r, 201, "generate-totp with no factor");

    // Profile with a verified email; a later token says it is not.
    let erin = u.stack.keycloak.token().user("erin").build();
    u.kc_admin
        .add_user(erin.sub(), "erin", "erin@example.com", json!({}));
    u.create_profile(&erin).await;
    let claims_unverified = u
        .stack
        .keycloak
        .token()
        .user("erin")
        .claim("email_verified", json!(false))
        .build();
    let p = u.profile(&claims_unverified).await;
    assert_eq!(p["email_verified"], true, "{p}");
    assert_eq!(p["methods"], json!(["email"]), "{p}");
    let r = u
        .call(
            "POST",
            "/user/generate-totp",
            &claims_unverified,
            Value::Null,
        )
        .await;
    expect_recent_factor_required(&u, &r, "generate with a stored factor", 600);
    let r = u.send_otp(&claims_unverified, "email").await;
    u.expect(&r, 202, "send-otp to the stored verified email");
}

/// 50 regenerations of recovery codes at once send at most one SMS and one
/// email notice; a notice of another kind still goes out; suppressed
/// notices are logged without the contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_notices_are_rate_limited_per_user_channel_and_kind() {
    let u = UserStack::start(|c| {
        c.set_str("security", "otp_resend_interval", "60s").set(
            "security",
            "recovery_code_count",
            "1",
        );
    })
    .await;
    let alice = u.alice();
    u.create_profile(&alice).await;
    u.stack.mark_verified(&alice, "email", now()).await;

    let requests = (0..50)
        .map(|_| u.req("POST", "/user/recovery-codes", &alice))
        .collect();
    let answers: Vec<Response> = burst::release(requests, Duration::from_secs(60))
        .await
        .answers()
        .await
        .into_iter()
        .map(|a| a.response)
        .collect();
    let created = answers.iter().filter(|a| a.status == 201).count();
    assert!(created >= 1, "{:?}", statuses(&answers));
    assert!(
        answers
            .iter()
            .all(|a| a.status == 201 || a.status == 429 || a.status == 503),
        "{:?}",
        statuses(&answers)
    );
    // Notices leave in the background: wait for the first, then give any
    // others time to arrive.
    u.smtp.wait_for("alice@example.com", 1).await;
    u.twilio.wait_for(ALICE_MOBILE, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = u.smtp.messages_to("alice@example.com");
    assert_eq!(
        mails.len(),
        1,
        "{:?}",
        mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    assert!(
        mails[0].subject.contains("recovery codes"),
        "{}",
        mails[0].subject
    );
    assert_eq!(u.twilio.messages_to(ALICE_MOBILE).len(), 1);

    // Another kind of notice is not held back by the first.
    let (_, _, _) = enroll_totp(&u, &alice).await;
    let mail = u.smtp.wait_for("alice@example.com", 2).await;
    assert!(
        mail.subject.contains("authenticator app was added"),
        "{}",
        mail.subject
    );
    u.twilio.wait_for(ALICE_MOBILE, 2).await;

    // The operation succeeds even when its notice is suppressed.
    let r = u
        .call("POST", "/user/recovery-codes", &alice, Value::Null)
        .await;
    u.expect(&r, 201, "regenerate within the interval");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(u.smtp.messages_to("alice@example.com").len(), 2);
    assert_eq!(u.twilio.messages_to(ALICE_MOBILE).len(), 2);
    let log = u.stack.app.log();
    let suppressed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("change notice suppressed"))
        .collect();
    assert!(!suppressed.is_empty(), "{log}");
    for line in suppressed {
        assert!(
            !line.contains("alice@") && !line.contains("5550123"),
            "a contact in the log: {line}"
        );
    }
}
