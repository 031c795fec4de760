//! INTERFACE.md sections 3 and 4 through a real nginx running envoy/nginx.conf
//! (auth_request to /authz), plus what only the nginx example has to get right.

use crate::support::upstream::Echoed;
use crate::support::{Proxy, Stack};

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
