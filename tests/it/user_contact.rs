//! Contact changes (`PATCH /user` + `POST /user/verify-otp` purpose `contact`)
//! by email and by SMS, the Keycloak Admin API around them, and the rule that
//! a contact change needs a verified session once the user has a factor.

use serde_json::{json, Value};

use crate::support::resend::{self, Resend};
use crate::support::sms_webhook::{self, SmsWebhook};
use crate::user_common::{UserStack, ALICE_MOBILE, FROM};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_is_created_from_token_and_keycloak() {
    let us = UserStack::start(|_| {}).await;
    let alice = us.alice();
    let p = us.create_profile(&alice).await;
    assert_eq!(p["subject"], alice.sub());
    assert_eq!(p["username"], "alice");
    assert_eq!(p["first_name"], "Alice");
    assert_eq!(p["last_name"], "Liddell");
    assert_eq!(p["email"], "alice@example.com");
    assert_eq!(p["email_verified"], true);
    assert_eq!(p["mobile"], ALICE_MOBILE);
    assert_eq!(p["mobile_verified"], true);
    assert_eq!(p["totp_enabled"], false);
    assert_eq!(p["recovery_codes_remaining"], 0);
    assert_eq!(p["methods"], json!(["email", "sms"]));
    assert_eq!(
        p["session"],
        json!({"second_factor": null, "verified_at": null, "expires_at": null})
    );
    assert!(p["created_at"].as_i64().unwrap() > 1_600_000_000);
    let again = us.call("POST", "/user", &alice, Value::Null).await;
    us.expect_problem(&again, 409, "profile_exists", "POST /user twice");
    assert_eq!(us.profile(&alice).await["subject"], alice.sub());
    us.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_change_by_email() {
    let us = UserStack::start(|_| {}).await;
    let alice = us.alice();
    us.create_profile(&alice).await;

    // Alice has factors (a Keycloak-verified email, a verified mobile): a
    // password-only session may not change a contact.
    let r = us
        .call(
            "PATCH",
            "/user",
            &alice,
            json!({"email": "alice.new@example.com"}),
        )
        .await;
    us.expect_problem(&r, 403, "second_factor_required", "PATCH before 2FA");
    assert_eq!(r.json()["methods"], json!(["email", "sms"]));
    assert!(us.smtp.messages_to("alice.new@example.com").is_empty());

    us.login_by_email(&alice, "alice@example.com").await;
    let r = us
        .call(
            "PATCH",
            "/user",
            &alice,
            json!({"email": "Alice.New@EXAMPLE.com"}),
        )
        .await;
    us.expect(&r, 202, "PATCH email");
    assert_eq!(
        r.json()["pending"],
        json!({"email": "Alice.New@example.com"})
    );

    let mail = us.smtp.wait_for("Alice.New@example.com", 1).await;
    assert!(mail.from.contains("no-reply@example.com"), "{}", mail.from);
    assert!(FROM.contains("no-reply@example.com"));
    assert!(mail.text.contains("10 minutes"), "{}", mail.text);
    assert!(mail.text.contains("Do not share"), "{}", mail.text);
    let code = mail.code();
    assert_eq!(code.len(), 6);
    assert!(mail.html.contains(&code), "{}", mail.html);
    assert!(!mail.subject.contains(&code));

    // Until verified, the old address stays the one in use.
    let p = us.profile(&alice).await;
    assert_eq!(p["email"], "alice@example.com");
    assert_eq!(p["pending"]["email"], "Alice.New@example.com");

    // Without `purpose`, a pending change means `contact`.
    let r = us.verify(&alice, "email", &code, None).await;
    us.expect(&r, 200, "verify contact code");
    assert_eq!(r.json(), json!({"verified": true, "purpose": "contact"}));
    let p = us.profile(&alice).await;
    assert_eq!(p["email"], "Alice.New@example.com");
    assert_eq!(p["email_verified"], true);
    assert!(p["pending"].get("email").is_none());

    // Written back to Keycloak, every other member and attribute kept.
    let kc = us.kc_admin.user(alice.sub());
    assert_eq!(kc["email"], "Alice.New@example.com");
    assert_eq!(kc["emailVerified"], true);
    assert_eq!(kc["attributes"]["department"], json!(["R&D"]));
    assert_eq!(kc["username"], "alice");

    // The old address is told, without any code.
    let notice = us.smtp.wait_for("alice@example.com", 2).await;
    assert!(
        notice.subject.contains("email address was changed"),
        "{}",
        notice.subject
    );
    assert!(notice.text.contains("A***w@example.com"), "{}", notice.text);
    assert!(!notice.text.contains(&code) && !notice.html.contains(&code));
    // (The product name in the footer, `totp.issuer` by default, has a digit.)
    assert!(
        !notice
            .text
            .replace("2FA-Middleware", "")
            .chars()
            .any(|c| c.is_ascii_digit()),
        "a notice carries no code: {}",
        notice.text
    );

    // The code is spent.
    let r = us.verify(&alice, "email", &code, Some("contact")).await;
    us.expect_problem(&r, 404, "no_pending_code", "reuse of a contact code");
    us.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_change_by_sms() {
    let us = UserStack::start(|_| {}).await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    us.login_by_email(&alice, "alice@example.com").await;

    let r = us
        .call(
            "PATCH",
            "/user",
            &alice,
            json!({"mobile": "+44 7911 123456"}),
        )
        .await;
    us.expect(&r, 202, "PATCH mobile");
    assert_eq!(r.json()["pending"], json!({"mobile": "+447911123456"}));
    let sms = us.sms_to("+447911123456", 1).await;
    assert_eq!(sms.from, crate::support::twilio::FROM);
    assert!(sms.body.contains("expires in 10 minutes"), "{}", sms.body);
    assert!(sms.body.len() <= 160);

    let r = us.verify(&alice, "mobile", &sms.code(), None).await;
    us.expect(&r, 200, "verify mobile contact code");
    assert_eq!(r.json()["purpose"], "contact");
    let p = us.profile(&alice).await;
    assert_eq!(p["mobile"], "+447911123456");
    assert_eq!(p["mobile_verified"], true);

    let kc = us.kc_admin.user(alice.sub());
    assert_eq!(kc["attributes"]["mobile"], json!(["+447911123456"]));
    assert_eq!(kc["attributes"]["mobileVerified"], json!(["true"]));
    assert_eq!(kc["attributes"]["department"], json!(["R&D"]));
    assert_eq!(kc["email"], "alice@example.com");

    // The old number is told, without a code.
    let notice = us.sms_to(ALICE_MOBILE, 1).await;
    assert!(notice.body.contains("mobile number"), "{}", notice.body);
    assert!(notice.body.contains("+********3456"), "{}", notice.body);
    assert!(!notice.body.contains(&sms.code()));

    // The new number now passes the second factor for a new session.
    tokio::time::sleep(crate::user_common::RESEND_INTERVAL).await;
    let other = us.other_session(&alice);
    let r = us.send_otp(&other, "mobile").await;
    us.expect(&r, 202, "send-otp mobile");
    assert_eq!(r.json()["sent_to"], "+********3456");
    let login = us.sms_to("+447911123456", 2).await;
    let r = us.verify(&other, "mobile", &login.code(), None).await;
    us.expect(&r, 200, "login by sms");
    assert_eq!(r.json()["purpose"], "login");
    assert_eq!(us.profile(&other).await["session"]["second_factor"], "sms");
    us.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_change_needs_a_verified_session_once_a_factor_exists() {
    let us = UserStack::start(|_| {}).await;
    // Bob's email is not verified by Keycloak and he has no mobile: no factor.
    let bob = us
        .stack
        .keycloak
        .token()
        .user("bob")
        .claim("email_verified", json!(false))
        .build();
    us.kc_admin
        .add_user(bob.sub(), "bob", "bob@example.com", json!({}));
    let p = us.create_profile(&bob).await;
    assert_eq!(p["methods"], json!([]));
    let r = us
        .call("PATCH", "/user", &bob, json!({"email": "bob@example.com"}))
        .await;
    us.expect(&r, 202, "first contact without a factor");
    let code = us.smtp.wait_for("bob@example.com", 1).await.code();
    us.expect(
        &us.verify(&bob, "email", &code, None).await,
        200,
        "verify bob's email",
    );
    assert_eq!(us.profile(&bob).await["methods"], json!(["email"]));

    // Now that he has a factor, the same session (never verified) may not
    // change contacts; nor may another one.
    let r = us
        .call("PATCH", "/user", &bob, json!({"mobile": "+14155550199"}))
        .await;
    us.expect_problem(
        &r,
        403,
        "second_factor_required",
        "PATCH with a factor, unverified",
    );
    let other = us.other_session(&bob);
    let r = us
        .call(
            "PATCH",
            "/user",
            &other,
            json!({"email": "evil@example.com"}),
        )
        .await;
    us.expect_problem(
        &r,
        403,
        "second_factor_required",
        "PATCH from another session",
    );

    // Carol has only a Keycloak-verified email: that counts as a factor.
    let carol = us.stack.keycloak.token().user("carol").build();
    us.kc_admin
        .add_user(carol.sub(), "carol", "carol@example.com", json!({}));
    let p = us.create_profile(&carol).await;
    assert_eq!(p["methods"], json!(["email"]));
    let r = us
        .call(
            "PATCH",
            "/user",
            &carol,
            json!({"email": "evil@example.com"}),
        )
        .await;
    us.expect_problem(
        &r,
        403,
        "second_factor_required",
        "PATCH with a Keycloak-verified email",
    );
    assert!(us.smtp.messages_to("evil@example.com").is_empty());

    // A verified session of Carol's is enough, and only for that session.
    us.login_by_email(&carol, "carol@example.com").await;
    let r = us
        .call("PATCH", "/user", &carol, json!({"mobile": "+14155550188"}))
        .await;
    us.expect(&r, 202, "PATCH after 2FA");
    let other = us.other_session(&carol);
    let r = us
        .call("PATCH", "/user", &other, json!({"mobile": "+14155550177"}))
        .await;
    us.expect_problem(
        &r,
        403,
        "second_factor_required",
        "PATCH from Carol's other session",
    );
    us.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_admin_failures_are_502_and_leave_nothing_half_written() {
    let us = UserStack::start(|_| {}).await;
    let alice = us.alice();

    us.kc_admin.fail_with(Some(500));
    let r = us.call("POST", "/user", &alice, Value::Null).await;
    us.expect_problem(
        &r,
        502,
        "keycloak_admin_failed",
        "POST /user with Keycloak down",
    );
    let r = us.call("GET", "/user", &alice, Value::Null).await;
    us.expect_problem(&r, 404, "profile_not_found", "no half-written profile");
    us.kc_admin.fail_with(None);
    us.create_profile(&alice).await;

    us.login_by_email(&alice, "alice@example.com").await;
    let r = us
        .call(
            "PATCH",
            "/user",
            &alice,
            json!({"email": "new@example.com"}),
        )
        .await;
    us.expect(&r, 202, "PATCH");
    let code = us.smtp.wait_for("new@example.com", 1).await.code();

    // Keycloak refuses the write-back: nothing changes on our side, and the
    // code stays usable for a retry.
    us.kc_admin.fail_with(Some(503));
    let r = us.verify(&alice, "email", &code, None).await;
    us.expect_problem(
        &r,
        502,
        "keycloak_admin_failed",
        "verify with Keycloak down",
    );
    let p = us.profile(&alice).await;
    assert_eq!(p["email"], "alice@example.com");
    assert_eq!(p["pending"]["email"], "new@example.com");
    assert_eq!(us.kc_admin.user(alice.sub())["email"], "alice@example.com");
    us.kc_admin.fail_with(None);
    let r = us.verify(&alice, "email", &code, None).await;
    us.expect(&r, 200, "verify after Keycloak is back");
    assert_eq!(us.profile(&alice).await["email"], "new@example.com");
    assert_eq!(us.kc_admin.user(alice.sub())["email"], "new@example.com");
    us.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_is_cached_and_renewed_after_401() {
    let us = UserStack::start(|_| {}).await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    assert_eq!(us.kc_admin.token_requests(), 1);
    let bob = us.stack.keycloak.token().user("bob").build();
    us.kc_admin
        .add_user(bob.sub(), "bob", "bob@example.com", json!({}));
    us.create_profile(&bob).await;
    assert_eq!(us.kc_admin.token_requests(), 1, "the token is cached");

    us.kc_admin.revoke_tokens();
    let carol = us.stack.keycloak.token().user("carol").build();
    us.kc_admin.add_user(
        carol.sub(),
        "carol",
        "carol@example.com",
        json!({"mobile": ["+1 415 555 0100"], "mobileVerified": ["false"]}),
    );
    let p = us.create_profile(&carol).await;
    assert_eq!(
        us.kc_admin.token_requests(),
        2,
        "a 401 fetches a new token once"
    );
    assert_eq!(p["mobile"], "+14155550100", "normalised to E.164");
    assert_eq!(p["mobile_verified"], false);
    us.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_email_and_webhook_sms_providers() {
    let resend = Resend::start().await;
    let webhook = SmsWebhook::start().await;
    let (resend_url, webhook_url) = (resend.base_url(), webhook.url());
    let us = UserStack::start(move |c| {
        c.set_str("email", "provider", "resend")
            .set_str("email", "resend_api_url", &resend_url)
            .set_str("email", "resend_api_key", resend::API_KEY)
            .set_str("sms", "provider", "webhook")
            .set_str("sms", "webhook_url", &webhook_url)
            .set_str("sms", "webhook_bearer_token", sms_webhook::TOKEN);
    })
    .await;
    let alice = us.alice();
    us.create_profile(&alice).await;

    let r = us.send_otp(&alice, "email").await;
    us.expect(&r, 202, "send-otp via Resend");
    let sent = resend.emails_to("alice@example.com");
    assert_eq!(sent.len(), 1, "violations {:?}", resend.violations());
    let e = &sent[0];
    assert_eq!(e.from, FROM);
    let code = crate::support::smtp::code_after(&e.text, "code is:").expect("code in text");
    assert!(e.html.contains(&code));
    let r = us.verify(&alice, "email", &code, None).await;
    us.expect(&r, 200, "verify a Resend code");
    tokio::time::sleep(crate::user_common::RESEND_INTERVAL).await;

    let r = us
        .call("PATCH", "/user", &alice, json!({"mobile": "+14155550142"}))
        .await;
    us.expect(&r, 202, "PATCH mobile via webhook");
    let sms = webhook.messages_to("+14155550142");
    assert_eq!(sms.len(), 1, "violations {:?}", webhook.violations());
    let r = us.verify(&alice, "mobile", &sms[0].code(), None).await;
    us.expect(&r, 200, "verify a webhook code");
    assert!(resend.violations().is_empty(), "{:?}", resend.violations());
    assert!(
        webhook.violations().is_empty(),
        "{:?}",
        webhook.violations()
    );

    // A provider error is a 502 and consumes nothing.
    resend.fail_with(Some(500));
    let other = us.other_session(&alice);
    let r = us.send_otp(&other, "email").await;
    us.expect_problem(&r, 502, "delivery_failed", "Resend failing");
    resend.fail_with(None);
    let r = us.send_otp(&other, "email").await;
    us.expect(&r, 202, "retry at once after a failed delivery");
}
