//! Bad inputs of every kind get a 4xx problem+json, never a 5xx.

use serde_json::json;

use crate::support::http;
use crate::user_common::UserStack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_4xx_never_5xx() {
    let us = UserStack::start(|_| {}).await;
    let alice = us.alice();
    let addr = us.addr().to_owned();

    // Authentication first, as on the Check path.
    for (path, method) in [
        ("/user", "GET"),
        ("/user", "POST"),
        ("/user", "PATCH"),
        ("/user/send-otp", "POST"),
        ("/user/verify-otp", "POST"),
    ] {
        let r = http::request(method, &addr, path).send().await;
        us.expect_problem(
            &r,
            401,
            "missing_token",
            &format!("{method} {path} without token"),
        );
        assert_eq!(
            r.header("www-authenticate"),
            Some(crate::support::expected_www_authenticate(&us.stack.keycloak, false).as_str())
        );
        let r = http::request(method, &addr, path)
            .bearer("not.a.jwt")
            .send()
            .await;
        us.expect_problem(
            &r,
            401,
            "invalid_token",
            &format!("{method} {path} bad token"),
        );
        let expired = us.stack.keycloak.token().expires_in(-120).build();
        let r = http::request(method, &addr, path)
            .bearer(&expired.jwt)
            .send()
            .await;
        us.expect_problem(
            &r,
            401,
            "invalid_token",
            &format!("{method} {path} expired token"),
        );
    }

    // No profile yet.
    let r = us
        .call("GET", "/user", &alice, serde_json::Value::Null)
        .await;
    us.expect_problem(&r, 404, "profile_not_found", "GET before POST");
    let r = us
        .call("PATCH", "/user", &alice, json!({"email": "a@example.com"}))
        .await;
    us.expect_problem(&r, 404, "profile_not_found", "PATCH before POST");
    let r = us.send_otp(&alice, "email").await;
    us.expect_problem(&r, 404, "profile_not_found", "send-otp before POST");
    let r = us.verify(&alice, "email", "123456", None).await;
    us.expect_problem(&r, 404, "profile_not_found", "verify before POST");
    us.create_profile(&alice).await;

    let big = format!("{{\"email\": \"{}\"}}", "a".repeat(17 * 1024));
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("PATCH", "/user", "{".into(), 400, "invalid_json"),
        ("PATCH", "/user", "not json".into(), 400, "invalid_json"),
        ("PATCH", "/user", "{}".into(), 422, "invalid_request"),
        ("PATCH", "/user", "".into(), 422, "invalid_request"),
        ("PATCH", "/user", "[1,2]".into(), 422, "invalid_request"),
        ("PATCH", "/user", "null".into(), 422, "invalid_request"),
        (
            "PATCH",
            "/user",
            r#"{"email": 5}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "PATCH",
            "/user",
            r#"{"nickname": "x"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "PATCH",
            "/user",
            r#"{"email": "a@example.com", "admin": true}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "PATCH",
            "/user",
            r#"{"email": "not-an-address"}"#.into(),
            422,
            "invalid_email",
        ),
        (
            "PATCH",
            "/user",
            r#"{"email": "a@example.com\r\nBcc: x@evil.example"}"#.into(),
            422,
            "invalid_email",
        ),
        (
            "PATCH",
            "/user",
            r#"{"email": "a\u0000b@example.com"}"#.into(),
            422,
            "invalid_email",
        ),
        (
            "PATCH",
            "/user",
            format!(r#"{{"email": "{}@example.com"}}"#, "x".repeat(300)),
            422,
            "invalid_email",
        ),
        (
            "PATCH",
            "/user",
            r#"{"mobile": "4155550123"}"#.into(),
            422,
            "invalid_mobile",
        ),
        (
            "PATCH",
            "/user",
            r#"{"mobile": "+1"}"#.into(),
            422,
            "invalid_mobile",
        ),
        (
            "PATCH",
            "/user",
            r#"{"mobile": "+999 1234"}"#.into(),
            422,
            "invalid_mobile",
        ),
        (
            "PATCH",
            "/user",
            r#"{"mobile": "+1415555012345678901234567890"}"#.into(),
            422,
            "invalid_mobile",
        ),
        (
            "PATCH",
            "/user",
            r#"{"mobile": "☎️"}"#.into(),
            422,
            "invalid_mobile",
        ),
        (
            "PATCH",
            "/user",
            r#"{"mobile": ["+14155550123"]}"#.into(),
            422,
            "invalid_request",
        ),
        ("PATCH", "/user", big.clone(), 413, "payload_too_large"),
        (
            "POST",
            "/user/send-otp",
            "{}".into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/user/send-otp",
            r#"{"otp_type": "fax"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/user/send-otp",
            r#"{"otp_type": "EMAIL"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/user/send-otp",
            r#"{"otp_type": "email", "to": "x@evil.example"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/user/send-otp",
            "{\"otp_type\":".into(),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/user/send-otp",
            big.clone(),
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/user/verify-otp",
            r#"{"otp_type": "email"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/user/verify-otp",
            r#"{"otp": "123456"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/user/verify-otp",
            r#"{"otp": 123456, "otp_type": "email"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/user/verify-otp",
            r#"{"otp": "", "otp_type": "email"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/user/verify-otp",
            format!(r#"{{"otp": "{}", "otp_type": "email"}}"#, "1".repeat(100)),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/user/verify-otp",
            r#"{"otp": "123456", "otp_type": "email", "purpose": "steal"}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/user/verify-otp",
            r#"{"otp": "123456", "otp_type": "email", "extra": 1}"#.into(),
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/user/verify-otp",
            r#"{"otp": "123456", "otp_type": "email", "purpose": "contact"}"#.into(),
            404,
            "no_pending_code",
        ),
        (
            "POST",
            "/user/verify-otp",
            r#"{"otp": "123456", "otp_type": "mobile", "purpose": "contact"}"#.into(),
            404,
            "no_pending_code",
        ),
        (
            "POST",
            "/user/verify-otp",
            r#"{"otp": "123456", "otp_type": "email"}"#.into(),
            404,
            "no_pending_code",
        ),
        ("POST", "/user/verify-otp", big, 413, "payload_too_large"),
    ];
    for (method, path, body, status, code) in cases {
        let r = us.req(method, path, &alice).body(body.clone()).send().await;
        let what = format!("{method} {path} {:?}", &body[..body.len().min(80)]);
        us.expect_problem(&r, status, code, &what);
    }

    // A user without a mobile cannot ask for a code by SMS.
    let bob = us.stack.keycloak.token().user("bob").build();
    us.kc_admin
        .add_user(bob.sub(), "bob", "bob@example.com", json!({}));
    us.create_profile(&bob).await;
    let r = us.send_otp(&bob, "mobile").await;
    us.expect_problem(
        &r,
        409,
        "contact_not_verified",
        "send-otp mobile without a mobile",
    );

    // Unknown routes and methods under /user are 4xx too.
    let r = us.req("DELETE", "/user", &alice).send().await;
    assert!((400..500).contains(&r.status), "DELETE /user: {}", r.status);
    let r = us.req("GET", "/user/nothing-here", &alice).send().await;
    assert!(
        (400..500).contains(&r.status),
        "GET /user/nothing-here: {}",
        r.status
    );

    let m = us.metrics().await;
    assert!(
        !m.lines()
            .any(|l| l.starts_with("twofa_http_requests_total") && l.contains("status=\"5")),
        "{m}"
    );
}
