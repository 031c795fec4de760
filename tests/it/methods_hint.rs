//! A Check's 403 lists the methods this user can use (INTERFACE.md section 3),
//! as the /user API last saw them, without the Check reading the database.

use serde_json::json;

use crate::user_common::UserStack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_lists_the_users_own_methods() {
    let u = UserStack::start(|_| {}).await;
    let alice = u.alice();
    u.create_profile(&alice).await;
    let profile = u.profile(&alice).await;
    let methods = profile["methods"].clone();
    assert!(
        methods.as_array().is_some_and(|m| !m.is_empty()),
        "{profile}"
    );

    // Another session of Alice, not verified: the denial names her methods.
    let other = u.other_session(&alice);
    let r = u
        .stack
        .authz("GET", "/admin/reports")
        .bearer(&other.jwt)
        .send()
        .await;
    assert_eq!(r.status, 403, "{}", u.stack.explain("403", &r));
    assert_eq!(r.json()["methods"], methods);

    // Someone the /user API has never seen: the operator's enabled methods.
    let bob = u.stack.keycloak.token().user("bob").build();
    let r = u
        .stack
        .authz("GET", "/admin/reports")
        .bearer(&bob.jwt)
        .send()
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["methods"],
        json!(["totp", "email", "sms", "recovery"])
    );
}
