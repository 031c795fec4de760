//! The database going away: `/user` answers 503 problem+json and recovers by
//! itself, `/readyz` stays 200 and shows the database down (degraded), and the
//! Check path keeps deciding (it never touches the database). After PostgreSQL
//! restarts or its connections are cut, the very next `/user` call works.

use std::time::Duration;

use serde_json::Value;

use crate::support::app::App;
use crate::support::keycloak::Keycloak;
use crate::support::postgres::Postgres;
use crate::support::process::poll_until;
use crate::support::redis::RedisServer;
use crate::support::{base_config, http};
use crate::user_common::{create_database, Options, UserStack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_gives_503_then_recovers() {
    let mut us = UserStack::start_with(
        Options {
            own_postgres: true,
            ..Options::default()
        },
        |_| {},
    )
    .await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    us.login_by_email(&alice, "alice@example.com").await;

    us.pg.own().stop().await;
    let r = us.call("GET", "/user", &alice, Value::Null).await;
    us.expect_problem(&r, 503, "storage_unavailable", "GET /user, database down");
    let r = us.send_otp(&alice, "email").await;
    us.expect_problem(&r, 503, "storage_unavailable", "send-otp, database down");
    let ready = http::get(us.addr(), "/readyz").send().await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["checks"]["database"], "down");
    assert_eq!(ready.json()["degraded"], serde_json::json!(["database"]));
    assert_eq!(ready.json()["not_ready"], serde_json::json!([]));
    // The Check path decides without the database: the verified session
    // still passes a 2fa route.
    let r = us
        .stack
        .authz("GET", "/admin/reports")
        .bearer(&alice.jwt)
        .send()
        .await;
    assert_eq!(
        r.status,
        200,
        "{}",
        us.stack.explain("Check with the database down", &r)
    );

    us.pg.own().start_server().await;
    let back = poll_until(Duration::from_secs(20), || async {
        us.call("GET", "/user", &alice, Value::Null).await.status == 200
    })
    .await;
    assert!(back, "GET /user did not recover: {}", us.stack.app.log());
    let ready = http::get(us.addr(), "/readyz").send().await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(
        us.profile(&alice).await["session"]["second_factor"],
        "email"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_at_start_then_migrated_when_it_comes() {
    let mut pg = Postgres::start().await;
    let url = create_database(&pg).await;
    pg.stop().await;
    let redis = RedisServer::start().await;
    let keycloak = Keycloak::start().await;
    let mut config = base_config(&keycloak, &redis);
    config.set_str("storage", "database_url", &url);
    let app = App::start_unready(&config).await;

    let ready = poll_until(Duration::from_secs(10), || async {
        let r = http::get(app.http_addr(), "/readyz").send().await;
        r.status == 200 && r.json()["checks"]["database"] == "down"
    })
    .await;
    assert!(ready, "readyz should name the database: {}", app.log());
    let token = keycloak.token().build();
    let r = http::request("POST", app.http_addr(), "/user")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "storage_unavailable");
    // A token route is decided all the same.
    let r = http::get(app.http_addr(), "/authz")
        .header("X-Original-Method", "GET")
        .header("X-Original-URI", "/api/x")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    pg.start_server().await;
    let created = poll_until(Duration::from_secs(40), || async {
        http::request("POST", app.http_addr(), "/user")
            .bearer(&token.jwt)
            .send()
            .await
            .status
            == 201
    })
    .await;
    assert!(
        created,
        "no profile after the database came back: {}",
        app.log()
    );
    assert!(
        app.log().contains("database migrations applied"),
        "{}",
        app.log()
    );
}

/// Pool connections killed under the service (a proxy or failover cutting
/// them), then PostgreSQL restarted: each time the next `/user` call gets a
/// fresh connection. At most one 503 is tolerated, and never more than one,
/// although the pool held several dead connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_cut_or_a_restart_the_next_user_call_works() {
    let mut us = UserStack::start_with(
        Options {
            own_postgres: true,
            ..Options::default()
        },
        |_| {},
    )
    .await;
    let alice = us.alice();
    us.create_profile(&alice).await;
    let db = us
        .stack
        .config
        .get("storage", "database_url")
        .unwrap_or_default()
        .trim_matches('"')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();

    for round in ["connections cut", "PostgreSQL restarted"] {
        // Several connections in the pool: eight calls at once.
        let calls = (0..8).map(|_| us.call("GET", "/user", &alice, Value::Null));
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.status, 200, "{round}, before: {}", r.text());
        }
        let pooled: i64 = us
            .pg
            .get()
            .admin()
            .await
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'twofa-authz'",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        assert!(pooled >= 2, "{round}: only {pooled} pooled connection(s)");
        if round == "connections cut" {
            let killed = us
                .pg
                .get()
                .admin()
                .await
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND application_name = 'twofa-authz'",
                    &[&db],
                )
                .await
                .unwrap()
                .len();
            assert!(killed >= 2, "killed {killed}");
        } else {
            us.pg.own().stop().await;
            us.pg.own().start_server().await;
        }
        let mut statuses = Vec::new();
        for _ in 0..8 {
            statuses.push(us.call("GET", "/user", &alice, Value::Null).await.status);
        }
        let failures = statuses.iter().filter(|s| **s != 200).count();
        assert!(
            failures == 0 || (failures == 1 && statuses[0] == 503),
            "{round}: statuses of the next calls {statuses:?}\n{}",
            us.stack.app.log()
        );
    }
}
