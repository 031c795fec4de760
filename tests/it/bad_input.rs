//! INTERFACE.md section 5: malformed JSON is 400 `invalid_json` whatever
//! fields it names; well-formed JSON of the wrong shape is 422
//! `invalid_request`.

use crate::support::http;
use crate::support::{assert_problem, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_syntax_before_shape() {
    let stack = Stack::start(None).await;
    let token = stack.keycloak.token().build();
    let post = |route: &str, body: &str| {
        http::request("POST", stack.app.http_addr(), route)
            .header("Content-Type", "application/json")
            .bearer(&token.jwt)
            .body(body.to_owned())
    };
    for (route, body) in [
        // An unknown field first, then broken syntax: still malformed.
        ("/user/send-otp", r#"{"unknown": 1, "otp_type": "#),
        ("/user/send-otp", r#"{"otp_type": 5,"#),
        ("/user/verify-otp", r#"{"nope": true "otp": "123456"}"#),
        ("/user/send-otp", r#"{"otp_type": "email"} {}"#),
    ] {
        let response = post(route, body).send().await;
        assert_problem(
            &stack,
            &format!("{route} {body}"),
            &response,
            400,
            "invalid_json",
        );
    }
    for (route, body) in [
        ("/user/send-otp", r#"{"otp_type": 5}"#),
        ("/user/send-otp", r#"{"otp_type": "email", "unknown": 1}"#),
        ("/user/send-otp", r#"["email"]"#),
        (
            "/user/verify-otp",
            r#"{"otp": 123456, "otp_type": "email"}"#,
        ),
    ] {
        let response = post(route, body).send().await;
        assert_problem(
            &stack,
            &format!("{route} {body}"),
            &response,
            422,
            "invalid_request",
        );
    }
}
