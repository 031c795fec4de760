//! Checks of the harness itself and of the example proxy configs, which pass
//! without twofa-authz: when a decision test fails, these tell whether to look
//! at the service or at the test rig.

use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha1::{Digest, Sha1};

use crate::support::envoy::{envoy_binary, Targets};
use crate::support::keycloak::{KeyPair, Keycloak, AUDIENCE, CLIENT};
use crate::support::nginx::nginx_command;
use crate::support::postgres::Postgres;
use crate::support::redis::{RedisServer, SessionKey};
use crate::support::upstream::{Echoed, Upstream};
use crate::support::{envoy, http, nginx};

fn run_ok(mut cmd: Command) -> String {
    let output = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn example_envoy_config_validates() {
    for (name, config) in [
        (
            "as shipped",
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/envoy.yaml"))
                .unwrap(),
        ),
        (
            "as the tests render it",
            envoy::render_config(
                20000,
                20001,
                Targets {
                    grpc_port: 20002,
                    http_port: 20003,
                    app_port: 20004,
                },
            ),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(envoy_binary());
        cmd.args(["--mode", "validate", "--log-level", "warn", "-c"])
            .arg(&path);
        let out = run_ok(cmd);
        assert!(out.contains("OK"), "{name}: {out}");
    }
}

#[test]
fn example_nginx_config_validates() {
    for (name, config) in [
        (
            "as shipped",
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/envoy/nginx.conf"))
                .unwrap(),
        ),
        (
            "as the tests render it",
            nginx::render_config(
                20000,
                Targets {
                    grpc_port: 20002,
                    http_port: 20003,
                    app_port: 20004,
                },
            ),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let mut cmd = nginx_command(dir.path(), &path, "");
        cmd.arg("-t");
        let out = run_ok(cmd);
        assert!(out.contains("test is successful"), "{name}: {out}");
    }
}

/// The stand-in's documents have Keycloak's layout, and its tokens verify
/// against its own JWKS the way any RS256 validator would check them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_stand_in_speaks_keycloak() {
    let kc = Keycloak::start().await;
    let addr = kc.base_url().trim_start_matches("http://").to_owned();

    let response = http::get(&addr, "/realms/test/.well-known/openid-configuration")
        .send()
        .await;
    assert_eq!(response.status, 200);
    let discovery = response.json();
    assert_eq!(discovery["issuer"], kc.issuer());
    assert_eq!(discovery["jwks_uri"], kc.jwks_url());
    assert_eq!(
        discovery["token_endpoint"],
        format!("{}/protocol/openid-connect/token", kc.issuer())
    );
    assert_eq!(kc.discovery_fetches(), 1);

    let response = http::get(&addr, "/realms/other/.well-known/openid-configuration")
        .send()
        .await;
    assert_eq!(response.status, 404);

    let jwks = http::get(&addr, "/realms/test/protocol/openid-connect/certs")
        .send()
        .await
        .json();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let sig = keys.iter().find(|k| k["use"] == "sig").expect("a sig key");
    let enc = keys.iter().find(|k| k["use"] == "enc").expect("an enc key");
    assert_eq!(sig["alg"], "RS256");
    assert_eq!(enc["alg"], "RSA-OAEP");
    for key in [sig, enc] {
        for member in [
            "kid", "kty", "alg", "use", "n", "e", "x5c", "x5t", "x5t#S256",
        ] {
            assert!(key.get(member).is_some(), "JWK without {member}: {key}");
        }
        let der = STANDARD.decode(key["x5c"][0].as_str().unwrap()).unwrap();
        assert_eq!(key["x5t"], URL_SAFE_NO_PAD.encode(Sha1::digest(&der)));
    }
    assert_eq!(kc.jwks_fetches(), 1);

    let token = kc.token().build();
    let header = jsonwebtoken::decode_header(&token.jwt).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), sig["kid"].as_str());
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let key =
        DecodingKey::from_rsa_components(sig["n"].as_str().unwrap(), sig["e"].as_str().unwrap())
            .unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[kc.issuer()]);
    let claims = jsonwebtoken::decode::<Value>(&token.jwt, &key, &validation)
        .expect("the stand-in's token verifies with its JWKS")
        .claims;
    for claim in [
        "exp",
        "iat",
        "jti",
        "iss",
        "aud",
        "sub",
        "typ",
        "azp",
        "sid",
        "session_state",
        "acr",
        "realm_access",
        "resource_access",
        "scope",
        "email_verified",
        "name",
        "preferred_username",
        "given_name",
        "family_name",
        "email",
    ] {
        assert!(
            claims.get(claim).is_some(),
            "token without {claim}: {claims}"
        );
    }
    assert_eq!(claims["typ"], "Bearer");
    assert_eq!(claims["azp"], CLIENT);

    // Forgeries and foreign keys do not verify with the realm key.
    for forged in [
        kc.token()
            .signed_with(&KeyPair::rogue())
            .kid(sig["kid"].as_str().unwrap())
            .build(),
        kc.token().algorithm(Algorithm::RS384).build(),
    ] {
        assert!(jsonwebtoken::decode::<Value>(&forged.jwt, &key, &validation).is_err());
    }
    assert!(kc.token().forge_alg_none().build().jwt.ends_with('.'));

    // Rotation and outage controls.
    kc.rotate_to(&KeyPair::sig_b());
    assert_eq!(
        jsonwebtoken::decode_header(&kc.token().build().jwt)
            .unwrap()
            .kid,
        Some(KeyPair::sig_b().kid)
    );
    kc.retire(&KeyPair::sig_a().kid);
    let jwks = http::get(&addr, "/realms/test/protocol/openid-connect/certs")
        .send()
        .await
        .json();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(
        kids,
        [KeyPair::enc().kid.as_str(), KeyPair::sig_b().kid.as_str()]
    );

    kc.fail_with(Some(500));
    let response = http::get(&addr, "/realms/test/protocol/openid-connect/certs")
        .send()
        .await;
    assert_eq!(response.status, 500);
    kc.fail_with(None);
    kc.stop().await;
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "still listening after stop"
    );
    kc.restart().await;
    let response = http::get(&addr, "/realms/test/protocol/openid-connect/certs")
        .send()
        .await;
    assert_eq!(response.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_upstream_reports_what_it_got() {
    let upstream = Upstream::start().await;
    let addr = format!("127.0.0.1:{}", upstream.port());
    let response = http::get(&addr, "/a/../b//c?q=1")
        .header("X-Auth-Request-User", "one")
        .header("x-auth-request-user", "two")
        .send()
        .await;
    let echoed = Echoed::from_response(&response).expect("echo answer");
    assert_eq!(echoed.method(), "GET");
    assert_eq!(echoed.path(), "/a/../b//c?q=1");
    assert_eq!(echoed.header_values("x-auth-request-user"), ["one", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stop_restart_and_session_layout() {
    let mut redis = RedisServer::start().await;
    let key = SessionKey {
        prefix: "twofa:",
        iss: "http://kc/realms/test",
        sub: "s",
        sid: "x",
    };
    redis
        .mark_verified(&key, "totp", 1, Duration::from_secs(60))
        .await;
    let mut keys = redis.keys().await;
    keys.sort();
    assert_eq!(
        keys,
        [
            format!(
                "twofa:sd:{{{}}}",
                twofa_authz::token::sid_hash(key.iss, key.sid)
            ),
            format!("twofa:su:{{{}}}", key.subject_hash()),
            format!("twofa:sv:{{{}}}:{}", key.subject_hash(), key.session_hash()),
        ]
    );
    // The sid index names both halves of the session's key.
    let mut con = redis.connection().await;
    let target: String = redis::AsyncCommands::get(&mut con, &keys[0]).await.unwrap();
    assert_eq!(
        target,
        format!("{}:{}", key.subject_hash(), key.session_hash())
    );
    let port = redis.port();
    redis.stop();
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
    redis.restart().await;
    assert_eq!(redis.port(), port);
    assert!(
        redis.keys().await.is_empty(),
        "a restarted Redis comes back empty"
    );
}

/// The throwaway PostgreSQL the storage tests will use: up, down, up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_smoke() {
    let mut pg = Postgres::start().await;
    async fn select_one(url: &str) -> i32 {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        tokio::spawn(connection);
        client.query_one("SELECT 1", &[]).await.unwrap().get(0)
    }
    assert_eq!(select_one(&pg.url()).await, 1);
    pg.stop().await;
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", pg.port()))
        .await
        .is_err());
    pg.start_server().await;
    assert_eq!(select_one(&pg.url()).await, 1);
}
