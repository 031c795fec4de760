//! Login codes (`POST /user/send-otp`, `POST /user/verify-otp` purpose
//! `login`): the session becomes verified and Envoy lets it through; codes are
//! bound to session and purpose; wrong codes, lockouts, resend limits, expiry,
//! concurrency, delivery failures and the consecutive-failure cap.

use std::time::Duration;

use serde_json::json;

use crate::support::{assert_reached_upstream, Proxy};
use crate::user_common::{retry_after, Options, UserStack, ALICE_MOBILE, RESEND_INTERVAL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_code_verifies_the_session_and_envoy_then_allows_a_2fa_route() {
    let us = UserStack::start_with(
        Options {
            proxy: Some(Proxy::Envoy),
            ..Options::default()
        },
        |_| {},
    )
    .await;
    let alice = us.alice();
    // `/admin` needs 2fa (envoy/envoy.yaml and the test policy).
    let r = us
        .stack
        .get("/admin/reports")
        .bearer(&alice.jwt)
        .send()
        .await;
    crate::support::assert_problem(&us.stack, "before 2FA", &r, 403, "second_factor_required");

    us.create_profile(&alice).await;
    let r = us.send_otp(&alice, "email").await;
    us.expect(&r, 202, "send-otp");
    let body = r.json();
    assert_eq!(body["sent_to"], "a***e@example.com");
    assert!(body["expires_at"].as_i64().unwrap() > crate::support::keycloak::now());
    let mail = us.smtp.wait_for("alice@example.com", 1).await;
    let r = us.verify(&alice, "email", &mail.code(), None).await;
    us.expect(&r, 200, "verify login code");
    assert_eq!(r.json(), json!({"verified": true, "purpose": "login"}));

    let r = us
        .stack
        .get("/admin/reports")
        .bearer(&alice.jwt)
        .send()
        .await;
    let echoed = assert_reached_upstream(&us.stack, "after 2FA", &r);
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("email")
    );
    let session = us.profile(&alice).await["session"].clone();
    assert_eq!(session["second_factor"], "email");
    let at = session["verified_at"].as_i64().unwrap();
    assert_eq!(session["expires_at"].as_i64().unwrap(), at + 12 * 3600);

    // Another session of the same user is not verified by it.
    let other = us.other_session(&alice);
    let r = us
        .stack
        .get("/admin/reports")
        .bearer(&other.jwt)
        .send()
        .await;
    crate::support::assert_problem(
        &us.stack,
        "other session",
        &r,
        403,
        "second_factor_required",
    );

    // Login by SMS for that other session.
    let r = us.send_otp(&other, "mobile").await;
    us.expect(&r, 202, "send-otp mobile");
    let sms = us.sms_to(ALICE_MOBILE, 1).await;
    let r = us
        .verify(&other, "mobile", &sms.code(), Some("login"))
        .await;
    us.expect(&r, 200, "verify sms login");
    let r = us
        .stack
        .get("/admin/reports")
        .bearer(&other.jwt)
        .send()
        .await;
    let echoed = assert_reached_upstream(&us.stack, "after SMS 2FA", &r);
    assert_eq!(
        echoed.header("x-auth-request-second-factor").as_deref(),
        Some("sms")
    );

    let m = us.metrics().await;
    for needle in [
        "twofa_otp_sent_total{channel=\"email\",result=\"ok\"} 1",
        "twofa_otp_sent_total{channel=\"sms\",result=\"ok\"} 1",
        "twofa_verifications_total{method=\"email\",result=\"success\"} 1",
        "twofa_verifications_total{method=\"sms\",result=\"success\"} 1",
        "route=\"/user/verify-otp\"",
    ] {
        assert!(m.contains(needle), "no {needle} in metrics:\n{m}");
    }
    us.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_bound_to_their_session_and_purpose() {
    let us = UserStack::start(|_| {}).await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    let other = us.other_session(&alice);

    // A login code asked for by one session does not verify another.
    let code = us
        .login_code_by_email(&alice, "alice@example.com", 1)
        .await
        .code();
    let r = us.verify(&other, "email", &code, Some("login")).await;
    us.expect_problem(&r, 400, "invalid_code", "code of another session");
    assert_eq!(
        us.profile(&other).await["session"]["second_factor"],
        json!(null)
    );
    // ... and is not spent by that attempt.
    let r = us.verify(&alice, "email", &code, Some("login")).await;
    us.expect(&r, 200, "the asking session");
    tokio::time::sleep(RESEND_INTERVAL).await;

    // A contact code does not verify a login, nor a login code a contact.
    let r = us
        .call(
            "PATCH",
            "/user",
            &alice,
            json!({"email": "alice2@example.com"}),
        )
        .await;
    us.expect(&r, 202, "PATCH");
    let contact_code = us.smtp.wait_for("alice2@example.com", 1).await.code();
    tokio::time::sleep(RESEND_INTERVAL).await;
    let login_code = us
        .login_code_by_email(&other, "alice@example.com", 2)
        .await
        .code();
    let r = us
        .verify(&other, "email", &contact_code, Some("login"))
        .await;
    us.expect_problem(&r, 400, "invalid_code", "contact code as login");
    let r = us
        .verify(&alice, "email", &login_code, Some("contact"))
        .await;
    us.expect_problem(&r, 400, "invalid_code", "login code as contact");
    assert_eq!(
        us.profile(&other).await["session"]["second_factor"],
        json!(null)
    );
    assert_eq!(us.profile(&alice).await["email"], "alice@example.com");
    // Each still works for what it was sent for.
    let r = us.verify(&other, "email", &login_code, Some("login")).await;
    us.expect(&r, 200, "login code for login");
    let r = us
        .verify(&alice, "email", &contact_code, Some("contact"))
        .await;
    us.expect(&r, 200, "contact code for contact");
    assert_eq!(us.profile(&alice).await["email"], "alice2@example.com");

    // A token without a session cannot ask for a login code.
    let no_sid = us.stack.keycloak.token().no_session().build();
    let r = us.send_otp(&no_sid, "email").await;
    us.expect_problem(&r, 422, "invalid_request", "send-otp without sid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_then_lockout_that_doubles() {
    let us = UserStack::start(|c| {
        c.set("security", "max_attempts", "3")
            .set_str("security", "lockout", "2s");
    })
    .await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    let code = us
        .login_code_by_email(&alice, "alice@example.com", 1)
        .await
        .code();
    let wrong = if code == "000000" { "111111" } else { "000000" };

    let r = us.verify(&alice, "email", wrong, None).await;
    us.expect_problem(&r, 400, "invalid_code", "wrong 1");
    assert_eq!(r.json()["attempts_remaining"], 2);
    let r = us.verify(&alice, "email", wrong, None).await;
    assert_eq!(r.json()["attempts_remaining"], 1);
    let r = us.verify(&alice, "email", wrong, None).await;
    us.expect_problem(&r, 429, "too_many_attempts", "wrong 3 locks");
    assert_eq!(retry_after(&r), 2);
    // Locked out: even the right code is refused.
    let r = us.verify(&alice, "email", &code, None).await;
    us.expect_problem(&r, 429, "too_many_attempts", "right code while locked");
    assert!((1..=2).contains(&retry_after(&r)));

    tokio::time::sleep(Duration::from_millis(2100)).await;
    for i in 0..2 {
        let r = us.verify(&alice, "email", wrong, None).await;
        us.expect_problem(&r, 400, "invalid_code", &format!("series 2, wrong {i}"));
    }
    let r = us.verify(&alice, "email", wrong, None).await;
    us.expect_problem(&r, 429, "too_many_attempts", "second lockout");
    assert_eq!(retry_after(&r), 4, "the second lockout lasts twice as long");

    tokio::time::sleep(Duration::from_millis(4100)).await;
    let r = us.verify(&alice, "email", &code, None).await;
    us.expect(&r, 200, "right code after the lockout");
    let m = us.metrics().await;
    assert!(m.contains("twofa_lockouts_total 2"), "{m}");
    assert!(
        m.contains("twofa_verifications_total{method=\"email\",result=\"invalid\"} 4"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_too_soon() {
    let us = UserStack::start(|c| {
        c.set_str("security", "otp_resend_interval", "30s");
    })
    .await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    us.expect(&us.send_otp(&alice, "email").await, 202, "first");
    let r = us.send_otp(&alice, "email").await;
    us.expect_problem(&r, 429, "resend_too_soon", "second");
    let wait = retry_after(&r);
    assert!((28..=30).contains(&wait), "Retry-After {wait}");
    assert_eq!(r.json()["retry_after"], wait);
    // Per channel: SMS has its own timer; another session shares the user's.
    us.expect(&us.send_otp(&alice, "mobile").await, 202, "sms");
    let other = us.other_session(&alice);
    let r = us.send_otp(&other, "email").await;
    us.expect_problem(&r, 429, "resend_too_soon", "other session");
    assert_eq!(us.smtp.messages_to("alice@example.com").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_verifications_of_one_code_succeed_once() {
    let us = UserStack::start(|_| {}).await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    let code = us
        .login_code_by_email(&alice, "alice@example.com", 1)
        .await
        .code();
    let requests: Vec<_> = (0..20)
        .map(|_| {
            us.req("POST", "/user/verify-otp", &alice)
                .body(json!({"otp": code, "otp_type": "email"}).to_string())
                .send()
        })
        .collect();
    let responses = futures::future::join_all(requests).await;
    let ok = responses.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        ok,
        1,
        "statuses {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    // The others: 404 when they found the code consumed, or 429 when they
    // arrived while the attempts of the budget were taken by requests still
    // in flight (each takes one before its code is compared).
    for r in responses.iter().filter(|r| r.status != 200) {
        if r.status == 429 {
            us.expect_problem(r, 429, "too_many_attempts", "a refused parallel request");
        } else {
            us.expect_problem(r, 404, "no_pending_code", "a losing parallel request");
        }
    }
    // Nobody is left locked out: every request that took an attempt either
    // succeeded or found the code consumed, and both clear the budget.
    let other = us.other_session(&alice);
    tokio::time::sleep(crate::user_common::RESEND_INTERVAL).await;
    let code = us
        .login_code_by_email(&other, "alice@example.com", 2)
        .await
        .code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let r = us.verify(&other, "email", wrong, Some("login")).await;
    us.expect_problem(&r, 400, "invalid_code", "after the burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_code_is_refused() {
    let us = UserStack::start(|c| {
        c.set_str("security", "otp_ttl", "2s");
    })
    .await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    let mail = us.login_code_by_email(&alice, "alice@example.com", 1).await;
    assert!(mail.text.contains("2 seconds"), "{}", mail.text);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = us.verify(&alice, "email", &mail.code(), None).await;
    us.expect_problem(&r, 404, "no_pending_code", "expired code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_is_502_and_consumes_nothing() {
    let mut us = UserStack::start(|c| {
        c.set_str("security", "otp_resend_interval", "60s");
    })
    .await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    us.smtp.stop();
    let r = us.send_otp(&alice, "email").await;
    us.expect_problem(&r, 502, "delivery_failed", "SMTP down");
    // No usable code was left behind.
    let keys = us.stack.redis.keys().await;
    assert!(!keys.iter().any(|k| k.contains("otp:")), "{keys:?}");
    // Nor a wrong-code count, nor the resend interval.
    us.smtp.restart().await;
    let r = us.send_otp(&alice, "email").await;
    us.expect(&r, 202, "retry at once");
    let code = us.smtp.wait_for("alice@example.com", 1).await.code();
    us.expect(
        &us.verify(&alice, "email", &code, None).await,
        200,
        "verify",
    );
    let m = us.metrics().await;
    assert!(
        m.contains("twofa_otp_sent_total{channel=\"email\",result=\"error\"} 1"),
        "{m}"
    );

    // Every key the service wrote carries the prefix and a TTL.
    let mut con = us.stack.redis.connection().await;
    for k in us.stack.redis.keys().await {
        assert!(k.starts_with(crate::support::KEY_PREFIX), "{k}");
        let ttl: i64 = redis::AsyncCommands::pttl(&mut con, &k).await.unwrap();
        assert!(ttl > 0, "{k} has no TTL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_url_without_tls_none_requires_starttls() {
    let us = UserStack::start(|_| {}).await;
    // Same server, but `smtp://` without `?tls=none`: aiosmtpd offers no
    // STARTTLS here, so nothing may be sent in the clear.
    let url = format!("smtp://127.0.0.1:{}", us.smtp.port());
    let mut config = us.stack.config.clone();
    config.set_str("email", "smtp_url", &url);
    let app = crate::support::app::App::start(&config).await;
    let alice = us.alice();
    let call = |m: &str, p: &str, b: Option<serde_json::Value>| {
        let mut r = crate::support::http::request(m, app.http_addr(), p)
            .bearer(&alice.jwt)
            .header("Content-Type", "application/json");
        if let Some(b) = b {
            r = r.body(b.to_string());
        }
        r.send()
    };
    assert_eq!(call("POST", "/user", None).await.status, 201);
    let r = call("POST", "/user/send-otp", Some(json!({"otp_type": "email"}))).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["code"], "delivery_failed");
    assert!(us.smtp.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failure_cap_is_423_until_reset_user() {
    let us = UserStack::start(|c| {
        c.set("security", "max_attempts", "2")
            .set_str("security", "lockout", "1s")
            .set("security", "max_consecutive_failures", "4");
    })
    .await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    us.login_by_email(&alice, "alice@example.com").await;
    let other = us.other_session(&alice);
    tokio::time::sleep(crate::user_common::RESEND_INTERVAL).await;
    let code = us
        .login_code_by_email(&other, "alice@example.com", 2)
        .await
        .code();
    let wrong = if code == "000000" { "111111" } else { "000000" };

    us.expect_problem(
        &us.verify(&other, "email", wrong, None).await,
        400,
        "invalid_code",
        "1",
    );
    us.expect_problem(
        &us.verify(&other, "email", wrong, None).await,
        429,
        "too_many_attempts",
        "2",
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    us.expect_problem(
        &us.verify(&other, "email", wrong, None).await,
        400,
        "invalid_code",
        "3",
    );
    // Lockout expiry did not reset the count: the fourth wrong code in a row
    // locks the factor.
    us.expect_problem(
        &us.verify(&other, "email", wrong, None).await,
        423,
        "factor_locked",
        "4",
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    us.expect_problem(
        &us.verify(&other, "email", &code, None).await,
        423,
        "factor_locked",
        "right code",
    );
    us.expect_problem(
        &us.send_otp(&other, "email").await,
        423,
        "factor_locked",
        "send-otp",
    );

    let out = us.reset_user(alice.sub());
    assert!(out.contains("failure count cleared"), "{out}");
    assert!(out.contains("removed 1 verified session"), "{out}");
    assert_eq!(
        us.profile(&alice).await["session"]["second_factor"],
        json!(null),
        "reset-user ends verified sessions"
    );
    // The pending code is still there and now works.
    let r = us.verify(&other, "email", &code, None).await;
    us.expect(&r, 200, "after reset-user");
}
