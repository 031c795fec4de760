//! PostgreSQL over TLS (INTERFACE.md section 2: `sslmode` in
//! `storage.database_url`, `storage.database_ca_path`) against a real cluster
//! with `ssl = on`, a certificate of the test's own CA and SCRAM logins. The
//! cluster also accepts plaintext, so `pg_stat_ssl` shows what twofa-authz chose.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::support::app::{run_command, App, AppConfig};
use crate::support::keycloak::Keycloak;
use crate::support::postgres::{Postgres, TLS_PASSWORD};
use crate::support::redis::RedisServer;
use crate::support::tls::TestCa;
use crate::support::{base_config, http};
use crate::user_common::{Options, UserStack};

struct TlsPostgres {
    pg: Postgres,
    /// The CA that signed the server's certificate.
    ca_path: PathBuf,
    /// A CA that did not.
    other_ca_path: PathBuf,
    _dir: TempDir,
}

/// A cluster whose certificate names `localhost` and `127.0.0.1`, not
/// `127.0.0.2` (where it also listens).
async fn tls_postgres() -> TlsPostgres {
    let ca = TestCa::new("twofa-authz test CA");
    let pg = Postgres::start_tls(&ca.issue_server(&["localhost", "127.0.0.1"])).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_cert(dir.path(), "db-ca.pem");
    let other_ca_path = TestCa::new("some other CA").write_cert(dir.path(), "other-ca.pem");
    TlsPostgres {
        pg,
        ca_path,
        other_ca_path,
        _dir: dir,
    }
}

fn tls_url(pg: &Postgres, host: &str, db: &str, query: &str) -> String {
    format!(
        "postgres://postgres:{TLS_PASSWORD}@{host}:{}/{db}?{query}",
        pg.port()
    )
}

/// `pg_stat_ssl.ssl` of every connection twofa-authz holds to `db`.
async fn encrypted(pg: &Postgres, db: &str) -> Vec<bool> {
    pg.admin()
        .await
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
             WHERE a.datname = $1 AND a.application_name = 'twofa-authz'",
            &[&db],
        )
        .await
        .expect("query pg_stat_ssl")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn db_name(url_literal: Option<&str>) -> String {
    let url = url_literal.unwrap_or_default().trim_matches('"');
    url.rsplit('/').next().unwrap_or_default().to_owned()
}

/// The /user flow (profile, a code by email, the session verified) over
/// `sslmode=verify-full` with the CA from `storage.database_ca_path`, with SCRAM
/// channel binding required (`channel_binding=require`): every connection is
/// encrypted, and the server's certificate is the one the login is bound to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_flow_over_verify_full_is_encrypted() {
    let tls = tls_postgres().await;
    let ca_path = tls.ca_path.display().to_string();
    let port = tls.pg.port();
    let db = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = db.clone();
    let us = UserStack::start_with(
        Options {
            postgres: Some(tls.pg),
            ..Options::default()
        },
        move |c| {
            let name = db_name(c.get("storage", "database_url"));
            let url = format!(
                "postgres://postgres:{TLS_PASSWORD}@127.0.0.1:{port}/{name}?sslmode=verify-full&channel_binding=require"
            );
            c.set_str("storage", "database_url", &url)
                .set_str("storage", "database_ca_path", &ca_path);
            *seen.lock().unwrap() = name;
        },
    )
    .await;
    let db = db.lock().unwrap().clone();
    let alice = us.alice();
    us.create_profile(&alice).await;
    us.login_by_email(&alice, "alice@example.com").await;
    assert_eq!(
        us.profile(&alice).await["session"]["second_factor"],
        "email"
    );
    let ssl = encrypted(us.pg.get(), &db).await;
    assert!(
        !ssl.is_empty() && ssl.iter().all(|s| *s),
        "pg_stat_ssl of twofa-authz's connections: {ssl:?}\n{}",
        us.stack.app.log()
    );
    assert!(
        us.stack.app.log().contains("sslmode=verify-full"),
        "the start-up log names the TLS mode: {}",
        us.stack.app.log()
    );
}

/// `require` without a CA path encrypts without verifying (the test CA is in
/// no system store); `disable` (the control) does not encrypt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_without_a_ca_and_disable_does_not() {
    let tls = tls_postgres().await;
    let redis = RedisServer::start().await;
    let keycloak = Keycloak::start().await;
    for (query, want) in [("sslmode=require", true), ("sslmode=disable", false)] {
        let db = tls.pg.create_database().await;
        let mut config = base_config(&keycloak, &redis);
        config.set_str(
            "storage",
            "database_url",
            &tls_url(&tls.pg, "127.0.0.1", &db, query),
        );
        let app = App::start(&config).await;
        let token = keycloak.token().build();
        let r = http::request("POST", app.http_addr(), "/user")
            .bearer(&token.jwt)
            .send()
            .await;
        assert_eq!(r.status, 201, "{query}: {}\n{}", r.text(), app.log());
        let ssl = encrypted(&tls.pg, &db).await;
        assert!(
            !ssl.is_empty() && ssl.iter().all(|s| *s == want),
            "{query}: pg_stat_ssl {ssl:?}, want all {want}"
        );
    }
}

/// A certificate that does not verify stops `serve` (exit 1) and `migrate`
/// with the reason, never a plaintext fallback: a CA that did not sign it, a
/// host name it does not name. `verify-ca` checks the chain only, so the
/// second host name passes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_verify_stops_the_start() {
    let tls = tls_postgres().await;
    let redis = RedisServer::start().await;
    let keycloak = Keycloak::start().await;
    let db = tls.pg.create_database().await;
    let config = |host: &str, query: &str, ca: &PathBuf| -> AppConfig {
        let mut c = base_config(&keycloak, &redis);
        c.set_str(
            "storage",
            "database_url",
            &tls_url(&tls.pg, host, &db, query),
        )
        .set_str("storage", "database_ca_path", &ca.display().to_string());
        c
    };
    let cases = [
        (
            "verify-full, another CA",
            config("127.0.0.1", "sslmode=verify-full", &tls.other_ca_path),
            "UnknownIssuer",
        ),
        (
            "require with another CA (checks the chain, as libpq does)",
            config("127.0.0.1", "sslmode=require", &tls.other_ca_path),
            "UnknownIssuer",
        ),
        (
            "verify-full, a host name the certificate does not name",
            config("127.0.0.2", "sslmode=verify-full", &tls.ca_path),
            "not valid for name",
        ),
    ];
    for (what, cfg, reason) in &cases {
        let (status, log) = App::run_to_exit(cfg, Duration::from_secs(20)).await;
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(1),
            "{what}: serve should exit 1; log:\n{log}"
        );
        assert!(
            log.contains("refusing to start") && log.contains(reason) && log.contains("TLS"),
            "{what}: the log should name the certificate problem ({reason}):\n{log}"
        );
        let (status, out) = run_command(cfg, &["migrate"]);
        assert_eq!(status.code(), Some(1), "{what}: migrate: {out}");
        assert!(out.contains(reason), "{what}: migrate: {out}");
    }
    let ssl = encrypted(&tls.pg, &db).await;
    assert!(ssl.is_empty(), "a refused start left connections: {ssl:?}");

    // verify-ca: the same wrong name is fine, the chain is what counts.
    let app = App::start(&config("127.0.0.2", "sslmode=verify-ca", &tls.ca_path)).await;
    let token = keycloak.token().build();
    let r = http::request("POST", app.http_addr(), "/user")
        .bearer(&token.jwt)
        .send()
        .await;
    assert_eq!(r.status, 201, "verify-ca: {}\n{}", r.text(), app.log());
    let ready: Value = http::get(app.http_addr(), "/readyz").send().await.json();
    assert_eq!(ready["checks"]["database"], "ok", "{ready}");
}
