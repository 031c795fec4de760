//! Rotating `security.encryption_keys` does not invalidate one-time codes
//! already sent (issue 8, the code-hash key): a code emailed while one key came
//! first still verifies after a restart with a new key put first.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;

use crate::support::app::{test_encryption_key, toml_strings, App};
use crate::user_common::{UserStack, RESEND_INTERVAL};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_sent_before_a_key_rotation_verifies_after_it() {
    let mut us = UserStack::start(|_| {}).await;
    let old_key = test_encryption_key();
    assert_eq!(
        us.stack.config.get("security", "encryption_keys"),
        Some(toml_strings(&[&old_key]).as_str()),
        "the stack starts with the one test key"
    );
    let alice = us.alice();
    us.create_profile(&alice).await;
    let login = us
        .login_code_by_email(&alice, "alice@example.com", 1)
        .await
        .code();

    // The operator rotates: a new key first, the old one kept after it.
    // The pending code stays in Redis across the restart.
    us.stack.app.stop();
    let new_key = format!("rotated:{}", STANDARD.encode([42u8; 32]));
    let mut rotated = us.stack.config.clone();
    rotated.set(
        "security",
        "encryption_keys",
        toml_strings(&[&new_key, &old_key]),
    );
    us.stack.app = App::start(&rotated).await;

    // A wrong code is still wrong...
    let wrong = if login == "000000" {
        "111111"
    } else {
        "000000"
    };
    let r = us.verify(&alice, "email", wrong, Some("login")).await;
    us.expect_problem(&r, 400, "invalid_code", "a wrong code after the rotation");
    // ...and the code sent before the rotation verifies.
    let r = us.verify(&alice, "email", &login, Some("login")).await;
    us.expect(&r, 200, "the code sent before the rotation");
    assert_eq!(r.json(), json!({"verified": true, "purpose": "login"}));

    // A code sent now (hashed under the new key) verifies too, for another
    // session of the same user.
    let other = us.other_session(&alice);
    tokio::time::sleep(RESEND_INTERVAL).await;
    let code = us
        .login_code_by_email(&other, "alice@example.com", 2)
        .await
        .code();
    let r = us.verify(&other, "email", &code, Some("login")).await;
    us.expect(&r, 200, "a code sent after the rotation");
}
