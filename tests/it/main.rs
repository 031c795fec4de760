//! Integration tests: the real `twofa-authz` binary behind a real Envoy, a real
//! nginx and a real Caddy, with a real Redis, a Keycloak stand-in and an echo application.
//!
//! Run through `scripts/test.sh`, which installs the tools and exports where they
//! are (`TWOFA_TEST_ENVOY`, `TWOFA_TEST_NGINX`, `TWOFA_TEST_CADDY`, `TWOFA_TEST_REDIS`,
//! `TWOFA_TEST_PG_BINDIR`), or with `cargo test --test it` once they are there.

// The Keycloak discovery document is one large `json!` literal.
#![recursion_limit = "256"]

mod support;

/// One `#[tokio::test]` per scenario of `decisions`, through the given proxy.
macro_rules! scenarios_through {
    ($proxy:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crate::decisions::$name($proxy).await;
            }
        )*
    };
}

mod audit;
mod bad_input;
mod check_caddy;
mod check_envoy;
mod check_nginx;
mod cli;
mod conformance;
mod decisions;
mod deploy_envoy;
mod dev_walkthrough;
mod devices;
mod dry_run;
mod forward_auth;
mod harness;
mod keys;
mod listener;
mod logout;
mod messages;
mod methods_hint;
mod migrations;
mod openapi;
mod ops;
mod otp_rotation;
mod pg_tls;
mod readiness;
mod reasons;
mod recovery_burst;
mod redis_tier;
mod service;
mod session_cache;
mod session_store;
mod spa_cors;
mod stores;
mod tracing;
mod ui;
mod user_budget;
mod user_common;
mod user_contact;
mod user_inputs;
mod user_login;
mod user_resilience;
mod user_sensitive;
mod user_totp;
mod webauthn;
