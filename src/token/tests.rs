//! Token validation against every attack kind, with Keycloak-shaped tokens
//! signed by the committed test keys and a pinned clock.

use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

use super::{Jwks, KeySet, TokenError, Validator};
use crate::clock::{Clock, ManualClock};
use crate::metrics::Metrics;

const ISS: &str = "https://sso.example.com/realms/demo";
const NOW: i64 = 1_800_000_000;

struct Key {
    der: Vec<u8>,
    n: String,
    e: String,
}

fn key(name: &str) -> Key {
    let pem = std::fs::read_to_string(format!(
        "{}/tests/fixtures/keycloak/{name}.key.pem",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    let k = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).expect("pkcs8");
    let b64 = |b: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Key {
        der: k.to_pkcs1_der().expect("der").as_bytes().to_vec(),
        n: b64(k.n().to_bytes_be()),
        e: b64(k.e().to_bytes_be()),
    }
}

fn jwks_doc(sig: &Key, enc: &Key) -> Value {
    // Keycloak lists its RSA-OAEP encryption key next to the signing key.
    json!({ "keys": [
        { "kid": "enc-1", "kty": "RSA", "alg": "RSA-OAEP", "use": "enc", "n": enc.n, "e": enc.e },
        { "kid": "sig-1", "kty": "RSA", "alg": "RS256", "use": "sig", "n": sig.n, "e": sig.e },
    ]})
}

struct Fixture {
    v: Validator,
    clock: Arc<ManualClock>,
    sig: Key,
    enc: Key,
    rogue: Key,
}

fn fixture(audiences: &[&str], clients: &[&str]) -> Fixture {
    fixture_with_capacity(audiences, clients, 1024)
}

fn fixture_with_capacity(audiences: &[&str], clients: &[&str], capacity: usize) -> Fixture {
    let (sig, enc, rogue) = (key("sig-a"), key("enc"), key("rogue"));
    let set = KeySet::from_jwks(&jwks_doc(&sig, &enc), &[Algorithm::RS256]).expect("jwks");
    assert_eq!(set.len(), 1, "the enc key must be ignored");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let clock = ManualClock::new(NOW);
    let v = Validator::new(
        ISS.into(),
        vec![Algorithm::RS256],
        audiences.iter().map(|s| s.to_string()).collect(),
        clients.iter().map(|s| s.to_string()).collect(),
        30,
        Jwks::fixed(set, metrics),
        clock.clone() as Arc<dyn Clock>,
        capacity,
    );
    Fixture {
        v,
        clock,
        sig,
        enc,
        rogue,
    }
}

fn claims() -> Value {
    json!({
        "exp": NOW + 300, "iat": NOW - 10, "jti": "j1", "iss": ISS, "aud": "account",
        "sub": "f:1:alice", "typ": "Bearer", "azp": "spa", "sid": "s-1", "session_state": "s-1",
        "preferred_username": "alice", "email": "alice@example.com", "email_verified": true,
        "realm_access": { "roles": ["user", "admin"] }, "scope": "openid email profile",
    })
}

fn sign(k: &Key, kid: &str, c: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, c, &EncodingKey::from_rsa_der(&k.der)).expect("sign")
}

fn with(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut c = claims();
    if let Some(m) = c.as_object_mut() {
        f(m);
    }
    c
}

async fn reason(f: &Fixture, token: &str) -> &'static str {
    match f.v.validate(token).await {
        Ok(_) => "valid",
        Err(TokenError::Invalid(r)) => r.label(),
        Err(TokenError::Unavailable(r)) => r.label(),
    }
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn a_keycloak_access_token_is_valid() {
    let f = fixture(&[], &[]);
    let id =
        f.v.validate(&sign(&f.sig, "sig-1", &claims()))
            .await
            .expect("valid");
    assert_eq!(id.iss(), ISS);
    assert_eq!(id.sub(), "f:1:alice");
    assert_eq!(id.sid(), Some("s-1"));
    assert_eq!(id.username(), Some("alice"));
    assert_eq!(id.email(), Some("alice@example.com"));
    assert!(id.email_verified());
    assert_eq!(id.groups(), "user,admin");
    assert_eq!(id.valid_until(), NOW + 300 + 30);
    assert_eq!(
        id.session_key().map(|k| k.hex().to_string()),
        Some(super::session_hash(ISS, "f:1:alice", "s-1"))
    );
}

#[tokio::test]
async fn forged_algorithms_are_refused() {
    let f = fixture(&[], &[]);
    // alg: none, no signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT","kid":"sig-1"})),
        b64(&claims())
    );
    assert_eq!(reason(&f, &none).await, "malformed");
    let none2 = format!(
        "{}.{}.",
        b64(&json!({"alg":"RS256","typ":"JWT","kid":"sig-1"})),
        b64(&claims())
    );
    assert_eq!(reason(&f, &none2).await, "bad_signature");
    // HS256 with the public key's bytes as the HMAC secret (algorithm confusion).
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("sig-1".into());
    let hs = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(f.sig.n.as_bytes()))
        .expect("hs");
    assert_eq!(reason(&f, &hs).await, "bad_algorithm");
}

#[tokio::test]
async fn wrong_keys_are_refused() {
    let f = fixture(&[], &[]);
    assert_eq!(
        reason(&f, &sign(&f.enc, "enc-1", &claims())).await,
        "unknown_kid"
    );
    assert_eq!(
        reason(&f, &sign(&f.rogue, "sig-1", &claims())).await,
        "bad_signature"
    );
    assert_eq!(
        reason(&f, &sign(&f.rogue, "rogue", &claims())).await,
        "unknown_kid"
    );
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let f = fixture(&[], &[]);
    let t = sign(&f.sig, "sig-1", &claims());
    let parts: Vec<&str> = t.split('.').collect();
    let evil = with(|m| {
        m.insert("sub".into(), json!("admin"));
    });
    let forged = format!("{}.{}.{}", parts[0], b64(&evil), parts[2]);
    assert_eq!(reason(&f, &forged).await, "bad_signature");
    assert_eq!(reason(&f, "not.a.jwt").await, "malformed");
    assert_eq!(reason(&f, "").await, "malformed");
}

#[tokio::test]
async fn time_claims_use_the_configured_leeway() {
    let f = fixture(&[], &[]);
    let t = |c: Value| sign(&f.sig, "sig-1", &c);
    assert_eq!(
        reason(
            &f,
            &t(with(|m| {
                m.insert("exp".into(), json!(NOW - 31));
            }))
        )
        .await,
        "expired"
    );
    assert_eq!(
        reason(
            &f,
            &t(with(|m| {
                m.insert("exp".into(), json!(NOW - 29));
            }))
        )
        .await,
        "valid"
    );
    assert_eq!(
        reason(
            &f,
            &t(with(|m| {
                m.insert("nbf".into(), json!(NOW + 31));
            }))
        )
        .await,
        "not_yet_valid"
    );
    assert_eq!(
        reason(
            &f,
            &t(with(|m| {
                m.insert("nbf".into(), json!(NOW + 29));
            }))
        )
        .await,
        "valid"
    );
    assert_eq!(
        reason(
            &f,
            &t(with(|m| {
                m.insert("iat".into(), json!(NOW + 31));
            }))
        )
        .await,
        "issued_in_future"
    );
    assert_eq!(
        reason(
            &f,
            &t(with(|m| {
                m.remove("exp");
            }))
        )
        .await,
        "malformed"
    );
}

#[tokio::test]
async fn cached_tokens_still_expire() {
    let f = fixture(&[], &[]);
    let t = sign(&f.sig, "sig-1", &claims());
    assert_eq!(reason(&f, &t).await, "valid");
    assert_eq!(f.v.cache().len(), 1, "the token was not cached");
    assert_eq!(reason(&f, &t).await, "valid");
    f.clock.advance(300 + 29);
    assert_eq!(reason(&f, &t).await, "valid", "within the leeway");
    f.clock.advance(1);
    assert_eq!(reason(&f, &t).await, "expired");
}

#[tokio::test]
async fn the_cache_keeps_to_its_capacity_and_answers_right() {
    let f = fixture_with_capacity(&[], &[], 64);
    let cap = f.v.cache().capacity() as usize;
    let tokens: Vec<(String, String)> = (0..10 * cap)
        .map(|i| {
            let sub = format!("user-{i}");
            let t = sign(
                &f.sig,
                "sig-1",
                &with(|m| {
                    m.insert("sub".into(), json!(sub));
                }),
            );
            (sub, t)
        })
        .collect();
    for round in 0..2 {
        for (sub, t) in &tokens {
            let id = f.v.validate(t).await.expect("valid");
            assert_eq!(id.sub(), sub, "round {round}");
            assert!(f.v.cache().len() <= cap, "{} > {cap}", f.v.cache().len());
        }
    }
    assert!(f.v.cache().len() > cap / 2);
}

#[tokio::test]
async fn a_zero_capacity_cache_verifies_every_time() {
    let f = fixture(&[], &[]);
    let v = Validator::new(
        ISS.into(),
        vec![Algorithm::RS256],
        vec![],
        vec![],
        30,
        f.v.jwks().clone(),
        f.clock.clone() as Arc<dyn Clock>,
        0,
    );
    let t = sign(&f.sig, "sig-1", &claims());
    assert!(v.validate(&t).await.is_ok());
    assert!(v.validate(&t).await.is_ok());
    assert!(v.cache().is_empty());
}

/// A JWKS endpoint whose document the test replaces.
async fn jwks_server(doc: Value) -> (String, Arc<parking_lot::Mutex<Value>>) {
    let doc = Arc::new(parking_lot::Mutex::new(doc));
    let served = doc.clone();
    let app = axum::Router::new().route(
        "/certs",
        axum::routing::get(move || {
            let d = served.lock().clone();
            async move { axum::Json(d) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/certs"), doc)
}

#[tokio::test]
async fn a_key_change_forgets_verified_tokens() {
    let (sig, enc, sig_b) = (key("sig-a"), key("enc"), key("sig-b"));
    let (url, doc) = jwks_server(jwks_doc(&sig, &enc)).await;
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let jwks = Jwks::remote(
        reqwest::Client::new(),
        ISS.into(),
        Some(url),
        vec![Algorithm::RS256],
        std::time::Duration::from_secs(3600),
        std::time::Duration::ZERO,
        metrics,
    );
    jwks.refresh().await.expect("first load");
    let clock = ManualClock::new(NOW);
    let v = Validator::new(
        ISS.into(),
        vec![Algorithm::RS256],
        vec![],
        vec![],
        30,
        jwks.clone(),
        clock as Arc<dyn Clock>,
        1024,
    );
    let t = sign(&sig, "sig-1", &claims());
    assert!(v.validate(&t).await.is_ok());
    assert_eq!(v.cache().len(), 1);

    // The same key set again: the cache stays.
    jwks.refresh().await.expect("refresh");
    assert_eq!(v.cache().len(), 1, "cleared although nothing changed");

    // sig-1 leaves the realm; sig-2 replaces it.
    *doc.lock() = json!({ "keys": [
        { "kid": "sig-2", "kty": "RSA", "alg": "RS256", "use": "sig", "n": sig_b.n, "e": sig_b.e },
    ]});
    jwks.refresh().await.expect("refresh");
    assert!(v.cache().is_empty(), "a key change left verified tokens");
    match v.validate(&t).await {
        Err(TokenError::Invalid(r)) => assert_eq!(r.label(), "unknown_kid"),
        other => panic!("a token of a withdrawn key: {:?}", other.map(|_| "valid")),
    }
}

#[tokio::test]
async fn issuer_audience_client_and_type_are_checked() {
    let f = fixture(&["account", "api"], &["spa"]);
    let t = |c: Value| sign(&f.sig, "sig-1", &c);
    assert_eq!(reason(&f, &t(claims())).await, "valid");
    assert_eq!(
        reason(
            &f,
            &t(with(|m| {
                m.insert("iss".into(), json!("https://evil/realms/demo"));
            }))
        )
        .await,
        "wrong_issuer"
    );
    assert_eq!(
        reason(
            &f,
            &t(with(|m| {
                m.insert("aud".into(), json!(["other"]));
            }))
        )
        .await,
        "wrong_audience"
    );
    assert_eq!(
        reason(
            &f,
            &t(with(|m| {
                m.insert("aud".into(), json!(["other", "api"]));
            }))
        )
        .await,
        "valid"
    );
    let no_aud = t(with(|m| {
        m.remove("aud");
    }));
    assert_eq!(reason(&f, &no_aud).await, "wrong_audience");
    assert_eq!(
        reason(
            &f,
            &t(with(|m| {
                m.insert("azp".into(), json!("cli"));
            }))
        )
        .await,
        "wrong_client"
    );
    assert_eq!(
        reason(
            &f,
            &t(with(|m| {
                m.remove("azp");
            }))
        )
        .await,
        "wrong_client"
    );
    for typ in ["ID", "Refresh", "Logout"] {
        assert_eq!(
            reason(
                &f,
                &t(with(|m| {
                    m.insert("typ".into(), json!(typ));
                }))
            )
            .await,
            "wrong_type"
        );
    }
    assert_eq!(
        reason(
            &f,
            &t(with(|m| {
                m.remove("typ");
            }))
        )
        .await,
        "valid"
    );
}

#[tokio::test]
async fn missing_sid_and_oversized_tokens() {
    let f = fixture(&[], &[]);
    let t = sign(
        &f.sig,
        "sig-1",
        &with(|m| {
            m.remove("sid");
            m.remove("session_state");
        }),
    );
    let id =
        f.v.validate(&t)
            .await
            .expect("a token without sid is still a valid token");
    assert!(id.sid().is_none() && id.session_key().is_none());
    let big = sign(
        &f.sig,
        "sig-1",
        &with(|m| {
            m.insert("pad".into(), json!("x".repeat(20_000)));
        }),
    );
    assert_eq!(reason(&f, &big).await, "malformed");
    let long_sub = sign(
        &f.sig,
        "sig-1",
        &with(|m| {
            m.insert("sub".into(), json!("x".repeat(2000)));
        }),
    );
    assert_eq!(reason(&f, &long_sub).await, "malformed");
}

#[tokio::test]
async fn the_locale_claim_is_read_and_a_strange_one_is_ignored() {
    let f = fixture(&[], &[]);
    for (value, want) in [
        (json!("de-DE"), Some("de-DE")),
        (json!("pt_BR"), Some("pt_BR")),
        (json!(42), None),
        (json!(["de"]), None),
        (json!("<script>"), None),
        (json!("d".repeat(100)), None),
        (Value::Null, None),
    ] {
        let c = with(|m| {
            m.insert("locale".into(), value.clone());
        });
        let id = f.v.validate(&sign(&f.sig, "sig-1", &c)).await;
        let id = id.unwrap_or_else(|_| panic!("locale {value} must not make the token invalid"));
        assert_eq!(id.locale(), want, "{value}");
    }
    let id =
        f.v.validate(&sign(&f.sig, "sig-1", &claims()))
            .await
            .expect("valid");
    assert_eq!(id.locale(), None);
}
