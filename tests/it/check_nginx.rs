//! INTERFACE.md sections 3 and 4 through a real nginx running envoy/nginx.conf
//! (auth_request to /authz/auth-request), plus what only the nginx example has
//! to get right.

use crate::support::upstream::Echoed;
use crate::support::{assert_problem, Proxy, Stack};

scenarios_through!(Proxy::Nginx;
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

/// The check location is internal: a client cannot call it to probe or bypass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_location_is_internal() {
    let stack = Stack::start(Some(Proxy::Nginx)).await;
    let response = stack.get("/_twofa_authz").send().await;
    assert_eq!(
        response.status,
        404,
        "{}",
        stack.explain("/_twofa_authz", &response)
    );
    assert!(Echoed::from_response(&response).is_none());
}

/// The user API and the back-channel logout are routed to twofa-authz itself,
/// so that users can enroll through nginx; `/userdata` is the application's,
/// behind the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_api_is_routed_to_twofa_authz() {
    let stack = Stack::start(Some(Proxy::Nginx)).await;
    let response = stack.get("/user").send().await;
    assert_problem(
        &stack,
        "GET /user without a token",
        &response,
        401,
        "missing_token",
    );
    let token = stack.keycloak.token().build();
    let response = stack.get("/user").bearer(&token.jwt).send().await;
    assert_problem(
        &stack,
        "GET /user, no profile yet",
        &response,
        404,
        "profile_not_found",
    );
    let response = stack
        .request("POST", "/user")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(
        response.status,
        201,
        "{}",
        stack.explain("POST /user", &response)
    );
    assert_eq!(response.json()["subject"], token.sub());
    let response = stack
        .request("POST", "/keycloak/backchannel-logout")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("logout_token=not-a-jwt")
        .send()
        .await;
    assert_problem(
        &stack,
        "back-channel logout",
        &response,
        400,
        "invalid_logout_token",
    );
    let response = stack.get("/userdata").bearer(&token.jwt).send().await;
    assert_problem(
        &stack,
        "GET /userdata",
        &response,
        403,
        "second_factor_required",
    );
}
