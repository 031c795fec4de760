//! A Keycloak stand-in: an in-process HTTP server with Keycloak's URL layout and
//! wire format, and a minter of tokens shaped like Keycloak's access tokens.
//!
//! Served now: OIDC discovery (`/realms/{realm}/.well-known/openid-configuration`)
//! and the realm keys (`/realms/{realm}/protocol/openid-connect/certs`). The token
//! endpoint (client credentials) and the Admin REST API (`/admin/realms/{realm}/...`)
//! are meant to be added to [`router`] over the same shared [`State`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State as AxumState};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use parking_lot::Mutex;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Map, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

pub const REALM: &str = "test";
/// The client the default tokens were issued to (`azp`).
pub const CLIENT: &str = "web-app";
/// Keycloak's default audience for access tokens of a realm user.
pub const AUDIENCE: &str = "account";
/// `realm_access.roles` of the default tokens, in Keycloak's order.
pub const ROLES: [&str; 3] = ["offline_access", "default-roles-test", "uma_authorization"];

/// An RSA key of the realm, as Keycloak describes it in its JWKS.
#[derive(Clone)]
pub struct KeyPair {
    pub name: String,
    pub kid: String,
    /// `RS256` for a signing key, `RSA-OAEP` for the realm's encryption key.
    pub alg: &'static str,
    /// `sig` or `enc`.
    pub use_: &'static str,
    /// PKCS#1 DER, what jsonwebtoken's RSA signer takes.
    private_der: Vec<u8>,
    public_pem: String,
    n: String,
    e: String,
    cert_der: Vec<u8>,
}

impl KeyPair {
    /// The realm's first signing key.
    pub fn sig_a() -> KeyPair {
        KeyPair::fixture("sig-a", "RS256", "sig")
    }

    /// The signing key a rotation moves to.
    pub fn sig_b() -> KeyPair {
        KeyPair::fixture("sig-b", "RS256", "sig")
    }

    /// The realm's encryption key: published, but never a signing key.
    pub fn enc() -> KeyPair {
        KeyPair::fixture("enc", "RSA-OAEP", "enc")
    }

    /// A key the realm does not know.
    pub fn rogue() -> KeyPair {
        KeyPair::fixture("rogue", "RS256", "sig")
    }

    /// Loads `tests/fixtures/keycloak/{name}.key.pem` and `.crt.pem`.
    fn fixture(name: &str, alg: &'static str, use_: &'static str) -> KeyPair {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keycloak");
        let read = |file: String| {
            std::fs::read_to_string(dir.join(&file)).unwrap_or_else(|e| panic!("read {file}: {e}"))
        };
        let private_pem = read(format!("{name}.key.pem"));
        let cert_pem = read(format!("{name}.crt.pem"));
        let private = RsaPrivateKey::from_pkcs8_pem(&private_pem).expect("PKCS#8 RSA key");
        let public = RsaPublicKey::from(&private);
        let spki = public.to_public_key_der().expect("SPKI DER");
        KeyPair {
            name: name.to_owned(),
            // Keycloak names a key by the base64url SHA-256 of its encoded public key.
            kid: URL_SAFE_NO_PAD.encode(Sha256::digest(spki.as_bytes())),
            alg,
            use_,
            public_pem: public.to_public_key_pem(LineEnding::LF).expect("SPKI PEM"),
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            cert_der: pem_to_der(&cert_pem),
            private_der: private
                .to_pkcs1_der()
                .expect("PKCS#1 DER")
                .as_bytes()
                .to_vec(),
        }
    }

    /// The key as a JWK, member for member as Keycloak's certs endpoint lists it.
    pub fn jwk(&self) -> Value {
        json!({
            "kid": self.kid,
            "kty": "RSA",
            "alg": self.alg,
            "use": self.use_,
            "n": self.n,
            "e": self.e,
            "x5c": [STANDARD.encode(&self.cert_der)],
            "x5t": URL_SAFE_NO_PAD.encode(Sha1::digest(&self.cert_der)),
            "x5t#S256": URL_SAFE_NO_PAD.encode(Sha256::digest(&self.cert_der)),
        })
    }

    /// The public key in PEM, as an attacker would find it, e.g. to use it as an
    /// HMAC secret.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    STANDARD.decode(body).expect("PEM body is base64")
}

/// What the server serves and how it misbehaves; shared by all handlers.
pub struct State {
    realm: String,
    base_url: String,
    /// The keys of the realm's JWKS, in the order listed.
    keys: Mutex<Vec<KeyPair>>,
    /// The key new tokens are signed with, unless a test picks another.
    active: Mutex<KeyPair>,
    /// When set, every endpoint answers with this status.
    failure: Mutex<Option<StatusCode>>,
    /// Set while the server is stopped, for connections that were already open.
    down: AtomicBool,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

pub struct Keycloak {
    state: Arc<State>,
    addr: SocketAddr,
    server: Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
    /// While stopped: the address, bound but not listening, so connections
    /// are refused and nothing else on the machine (an outgoing connection's
    /// ephemeral port, another test's server) can take the port before
    /// [`Keycloak::restart`].
    parked: Mutex<Option<socket2::Socket>>,
}

impl Keycloak {
    /// Realm `test` with Keycloak's default keys: an RS256 signing key and an
    /// RSA-OAEP encryption key.
    pub async fn start() -> Keycloak {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Keycloak stand-in");
        let addr = listener.local_addr().unwrap();
        let signing = KeyPair::sig_a();
        let state = Arc::new(State {
            realm: REALM.to_owned(),
            base_url: format!("http://{addr}"),
            keys: Mutex::new(vec![KeyPair::enc(), signing.clone()]),
            active: Mutex::new(signing),
            failure: Mutex::new(None),
            down: AtomicBool::new(false),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        });
        let keycloak = Keycloak {
            state,
            addr,
            server: Mutex::new(None),
            parked: Mutex::new(None),
        };
        keycloak.serve(listener);
        keycloak
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let app = router(self.state.clone());
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        *self.server.lock() = Some((stop_tx, task));
    }

    /// `http://127.0.0.1:PORT`: what `keycloak.url` is set to.
    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    pub fn realm(&self) -> &str {
        &self.state.realm
    }

    pub fn issuer(&self) -> String {
        issuer(&self.state)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.issuer())
    }

    /// A token as Keycloak would issue it to user `alice` of client `web-app`, in a
    /// new session, signed with the active key. Adjust it with the builder.
    pub fn token(&self) -> TokenBuilder {
        TokenBuilder::new(&self.issuer(), self.state.active.lock().clone())
    }

    /// Adds `key` to the JWKS (a new key appears in Keycloak's key list).
    pub fn publish(&self, key: &KeyPair) {
        let mut keys = self.state.keys.lock();
        keys.retain(|k| k.kid != key.kid);
        keys.push(key.clone());
    }

    /// Key rotation, first half: publish `key` and sign new tokens with it.
    pub fn rotate_to(&self, key: &KeyPair) {
        self.publish(key);
        *self.state.active.lock() = key.clone();
    }

    /// Key rotation, second half: the old key disappears from the JWKS.
    pub fn retire(&self, kid: &str) {
        self.state.keys.lock().retain(|k| k.kid != kid);
    }

    /// Makes every endpoint answer `status` (`None` heals it).
    pub fn fail_with(&self, status: Option<u16>) {
        *self.state.failure.lock() = status.map(|s| StatusCode::from_u16(s).unwrap());
    }

    /// Takes the server down: new connections are refused, open ones are closed.
    pub async fn stop(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        let server = self.server.lock().take();
        if let Some((stop, mut task)) = server {
            let _ = stop.send(true);
            // Graceful shutdown waits for open connections; a client holding one
            // open must not keep the server "up", so stop waiting after a moment.
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                eprintln!("keycloak stand-in: connections still open after stop");
                task.abort();
                let _ = task.await;
            }
        }
        if self.parked.lock().is_none() {
            *self.parked.lock() = Some(park(self.addr));
        }
    }

    /// Brings the server back on the same address after [`Keycloak::stop`].
    pub async fn restart(&self) {
        self.stop().await;
        let socket = self
            .parked
            .lock()
            .take()
            .expect("the stopped stand-in holds its port");
        socket.listen(1024).expect("listen on the parked port");
        socket.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(socket.into())
            .expect("the parked port as a Tokio listener");
        self.state.down.store(false, Ordering::SeqCst);
        self.serve(listener);
    }

    /// How often the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How often the discovery document was fetched.
    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }
}

/// The address bound without listening: a connection to it is refused.
fn park(addr: SocketAddr) -> socket2::Socket {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("a socket to park the stand-in's port");
    // The old listener's accepted connections may sit in TIME_WAIT.
    socket.set_reuse_address(true).unwrap();
    socket
        .bind(&addr.into())
        .expect("park the Keycloak stand-in's port while it is down");
    socket
}

impl Drop for Keycloak {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.server.lock().take() {
            let _ = stop.send(true);
            task.abort();
        }
    }
}

fn issuer(state: &State) -> String {
    format!("{}/realms/{}", state.base_url, state.realm)
}

/// Every route the stand-in serves. Later endpoints (token, admin API) go here.
fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/realms/{realm}/.well-known/openid-configuration",
            get(discovery),
        )
        .route("/realms/{realm}/protocol/openid-connect/certs", get(certs))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), misbehave))
        .with_state(state)
}

/// Applies the failure a test asked for, before any handler runs.
async fn misbehave(
    AxumState(state): AxumState<Arc<State>>,
    request: Request,
    next: Next,
) -> Response {
    if state.down.load(Ordering::SeqCst) {
        let mut response = StatusCode::SERVICE_UNAVAILABLE.into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let failure = *state.failure.lock();
    if let Some(status) = failure {
        // Count the attempt even though it fails: tests check refetch rate limits.
        if request.uri().path().ends_with("/certs") {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
        }
        return (
            status,
            Json(json!({"error": "unknown_error", "error_description": "injected by the test"})),
        )
            .into_response();
    }
    next.run(request).await
}

fn not_found_realm() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "Realm does not exist"})),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "Unable to find matching target resource method"})),
    )
        .into_response()
}

async fn certs(AxumState(state): AxumState<Arc<State>>, Path(realm): Path<String>) -> Response {
    if realm != state.realm {
        return not_found_realm();
    }
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys: Vec<Value> = state.keys.lock().iter().map(KeyPair::jwk).collect();
    Json(json!({ "keys": keys })).into_response()
}

/// The discovery document, with the members and endpoint paths Keycloak 26 serves.
async fn discovery(AxumState(state): AxumState<Arc<State>>, Path(realm): Path<String>) -> Response {
    if realm != state.realm {
        return not_found_realm();
    }
    state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    let iss = issuer(&state);
    let oidc = format!("{iss}/protocol/openid-connect");
    let signing_algs = [
        "PS384", "RS384", "EdDSA", "ES384", "HS256", "HS512", "ES256", "RS256", "HS384", "ES512",
        "PS256", "PS512", "RS512",
    ];
    Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{oidc}/auth"),
        "token_endpoint": format!("{oidc}/token"),
        "introspection_endpoint": format!("{oidc}/token/introspect"),
        "userinfo_endpoint": format!("{oidc}/userinfo"),
        "end_session_endpoint": format!("{oidc}/logout"),
        "frontchannel_logout_session_supported": true,
        "frontchannel_logout_supported": true,
        "jwks_uri": format!("{oidc}/certs"),
        "check_session_iframe": format!("{oidc}/login-status-iframe.html"),
        "grant_types_supported": [
            "authorization_code", "client_credentials", "implicit", "password",
            "refresh_token", "urn:ietf:params:oauth:grant-type:device_code",
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "urn:ietf:params:oauth:grant-type:uma-ticket", "urn:openid:params:grant-type:ciba"
        ],
        "acr_values_supported": ["0", "1"],
        "response_types_supported": [
            "code", "none", "id_token", "token", "id_token token", "code id_token",
            "code token", "code id_token token"
        ],
        "subject_types_supported": ["public", "pairwise"],
        "prompt_values_supported": ["none", "login", "consent"],
        "id_token_signing_alg_values_supported": signing_algs,
        "id_token_encryption_alg_values_supported": ["ECDH-ES+A256KW", "ECDH-ES+A192KW", "ECDH-ES+A128KW", "RSA-OAEP", "RSA-OAEP-256", "RSA1_5", "ECDH-ES"],
        "id_token_encryption_enc_values_supported": ["A256GCM", "A192GCM", "A128GCM", "A128CBC-HS256", "A192CBC-HS384", "A256CBC-HS512"],
        "userinfo_signing_alg_values_supported": signing_algs,
        "request_object_signing_alg_values_supported": signing_algs,
        "response_modes_supported": ["query", "fragment", "form_post", "query.jwt", "fragment.jwt", "form_post.jwt", "jwt"],
        "registration_endpoint": format!("{iss}/clients-registrations/openid-connect"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post", "tls_client_auth", "client_secret_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": signing_algs,
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post", "tls_client_auth", "client_secret_jwt"],
        "introspection_endpoint_auth_signing_alg_values_supported": signing_algs,
        "authorization_signing_alg_values_supported": signing_algs,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "name", "given_name", "family_name", "preferred_username", "email", "acr", "azp", "nonce"],
        "claim_types_supported": ["normal"],
        "claims_parameter_supported": true,
        "scopes_supported": ["openid", "profile", "email", "address", "phone", "offline_access", "roles", "web-origins", "acr", "basic", "microprofile-jwt", "organization"],
        "request_parameter_supported": true,
        "request_uri_parameter_supported": true,
        "require_request_uri_registration": true,
        "code_challenge_methods_supported": ["plain", "S256"],
        "tls_client_certificate_bound_access_tokens": true,
        "revocation_endpoint": format!("{oidc}/revoke"),
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post", "tls_client_auth", "client_secret_jwt"],
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "device_authorization_endpoint": format!("{oidc}/auth/device"),
        "backchannel_token_delivery_modes_supported": ["poll", "ping"],
        "backchannel_authentication_endpoint": format!("{oidc}/ext/ciba/auth"),
        "require_pushed_authorization_requests": false,
        "pushed_authorization_request_endpoint": format!("{oidc}/ext/par/request"),
        "mtls_endpoint_aliases": {
            "token_endpoint": format!("{oidc}/token"),
            "revocation_endpoint": format!("{oidc}/revoke"),
            "introspection_endpoint": format!("{oidc}/token/introspect"),
            "device_authorization_endpoint": format!("{oidc}/auth/device"),
            "registration_endpoint": format!("{iss}/clients-registrations/openid-connect"),
            "userinfo_endpoint": format!("{oidc}/userinfo"),
            "pushed_authorization_request_endpoint": format!("{oidc}/ext/par/request"),
            "backchannel_authentication_endpoint": format!("{oidc}/ext/ciba/auth")
        },
        "authorization_response_iss_parameter_supported": true
    }))
    .into_response()
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A random UUID v4, as Keycloak uses for `sub`, `sid` and `jti`.
pub fn uuid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A stable UUID-shaped subject per username, so two tokens of one user share `sub`.
fn subject_of(issuer: &str, username: &str) -> String {
    let digest = Sha256::digest(format!("{issuer}\n{username}").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// How the token is signed.
enum Signing {
    /// With the builder's RSA key and algorithm.
    Rsa(Algorithm),
    /// The classic confusion attack: HS256 with the public key as the secret.
    HmacWithPublicKey,
    /// `alg: none`, empty signature.
    Unsigned,
}

/// A Keycloak access token under construction.
pub struct TokenBuilder {
    issuer: String,
    header: Map<String, Value>,
    claims: Map<String, Value>,
    key: KeyPair,
    signing: Signing,
}

impl TokenBuilder {
    fn new(issuer: &str, key: KeyPair) -> TokenBuilder {
        let now = now();
        let sid = uuid();
        let mut claims = Map::new();
        let mut set = |name: &str, value: Value| {
            claims.insert(name.to_owned(), value);
        };
        set("exp", json!(now + 300));
        set("iat", json!(now));
        set("jti", json!(uuid()));
        set("iss", json!(issuer));
        set("aud", json!(AUDIENCE));
        set("sub", json!(subject_of(issuer, "alice")));
        set("typ", json!("Bearer"));
        set("azp", json!(CLIENT));
        set("sid", json!(sid));
        set("session_state", json!(sid));
        set("acr", json!("1"));
        set("allowed-origins", json!(["http://localhost:3000"]));
        set("realm_access", json!({ "roles": ROLES }));
        set(
            "resource_access",
            json!({ "account": { "roles": ["manage-account", "manage-account-links", "view-profile"] } }),
        );
        set("scope", json!("openid email profile"));
        set("email_verified", json!(true));
        set("name", json!("Alice Liddell"));
        set("preferred_username", json!("alice"));
        set("given_name", json!("Alice"));
        set("family_name", json!("Liddell"));
        set("email", json!("alice@example.com"));
        let mut header = Map::new();
        header.insert("alg".into(), json!("RS256"));
        header.insert("typ".into(), json!("JWT"));
        header.insert("kid".into(), json!(key.kid));
        TokenBuilder {
            issuer: issuer.to_owned(),
            header,
            claims,
            key,
            signing: Signing::Rsa(Algorithm::RS256),
        }
    }

    /// Sets (or replaces) a claim.
    pub fn claim(mut self, name: &str, value: Value) -> TokenBuilder {
        self.claims.insert(name.to_owned(), value);
        self
    }

    /// Removes a claim.
    pub fn without(mut self, name: &str) -> TokenBuilder {
        self.claims.remove(name);
        self
    }

    /// Sets (or replaces) a header member.
    pub fn header(mut self, name: &str, value: Value) -> TokenBuilder {
        self.header.insert(name.to_owned(), value);
        self
    }

    /// Removes a header member.
    pub fn without_header(mut self, name: &str) -> TokenBuilder {
        self.header.remove(name);
        self
    }

    /// Another realm user: username, name, email and a `sub` of their own.
    pub fn user(self, username: &str) -> TokenBuilder {
        let sub = subject_of(&self.issuer, username);
        self.claim("preferred_username", json!(username))
            .claim("sub", json!(sub))
            .claim("email", json!(format!("{username}@example.com")))
            .claim("name", json!(username))
            .claim("given_name", json!(username))
            .claim("family_name", json!("Test"))
    }

    /// The Keycloak session: `sid` and the `session_state` Keycloak copies it to.
    pub fn sid(self, sid: &str) -> TokenBuilder {
        self.claim("sid", json!(sid))
            .claim("session_state", json!(sid))
    }

    /// A token of no Keycloak session (e.g. a service account's): neither `sid` nor
    /// `session_state`.
    pub fn no_session(self) -> TokenBuilder {
        self.without("sid").without("session_state")
    }

    /// `exp` relative to now, in seconds (negative: already expired).
    pub fn expires_in(self, seconds: i64) -> TokenBuilder {
        self.claim("exp", json!(now() + seconds))
    }

    /// `iat` relative to now, in seconds.
    pub fn issued_in(self, seconds: i64) -> TokenBuilder {
        self.claim("iat", json!(now() + seconds))
    }

    /// `nbf` relative to now, in seconds.
    pub fn not_before_in(self, seconds: i64) -> TokenBuilder {
        self.claim("nbf", json!(now() + seconds))
    }

    /// Signs with `key`, naming it in the header's `kid`.
    pub fn signed_with(mut self, key: &KeyPair) -> TokenBuilder {
        self.header.insert("kid".into(), json!(key.kid));
        self.key = key.clone();
        self
    }

    /// Overrides the header's `kid` (after [`TokenBuilder::signed_with`]).
    pub fn kid(self, kid: &str) -> TokenBuilder {
        self.header("kid", json!(kid))
    }

    /// Signs with another RSA algorithm (RS384, RS512, PS256...), saying so in the
    /// header.
    pub fn algorithm(mut self, alg: Algorithm) -> TokenBuilder {
        self.header.insert("alg".into(), json!(format!("{alg:?}")));
        self.signing = Signing::Rsa(alg);
        self
    }

    /// Forgery: `alg: HS256`, "signed" with the realm's public key as HMAC secret.
    pub fn forge_hs256_with_public_key(mut self) -> TokenBuilder {
        self.header.insert("alg".into(), json!("HS256"));
        self.signing = Signing::HmacWithPublicKey;
        self
    }

    /// Forgery: `alg: none` and no signature.
    pub fn forge_alg_none(mut self) -> TokenBuilder {
        self.header.insert("alg".into(), json!("none"));
        self.signing = Signing::Unsigned;
        self
    }

    pub fn build(self) -> Token {
        let header = URL_SAFE_NO_PAD.encode(Value::Object(self.header).to_string());
        let claims = Value::Object(self.claims);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let message = format!("{header}.{payload}");
        let signature = match self.signing {
            Signing::Rsa(alg) => {
                let key = EncodingKey::from_rsa_der(&self.key.private_der);
                jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).expect("sign the token")
            }
            Signing::HmacWithPublicKey => {
                let key = EncodingKey::from_secret(self.key.public_pem.as_bytes());
                jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
                    .expect("HMAC the token")
            }
            Signing::Unsigned => String::new(),
        };
        Token {
            jwt: format!("{message}.{signature}"),
            claims,
        }
    }
}

/// A minted token and the claims it carries.
#[derive(Clone, Debug)]
pub struct Token {
    pub jwt: String,
    pub claims: Value,
}

impl Token {
    pub fn sub(&self) -> &str {
        self.claims["sub"].as_str().expect("token has a sub")
    }

    pub fn sid(&self) -> &str {
        self.claims["sid"].as_str().expect("token has a sid")
    }

    pub fn iss(&self) -> &str {
        self.claims["iss"].as_str().expect("token has an iss")
    }

    /// The third segment: what turns the rest into a credential. Logs must never
    /// contain it.
    pub fn signature(&self) -> &str {
        self.jwt.rsplit('.').next().unwrap_or_default()
    }
}
