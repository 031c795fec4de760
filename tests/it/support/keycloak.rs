//! A Keycloak stand-in: an in-process HTTP server with Keycloak's URL layout and
//! wire format, and a minter of tokens shaped like Keycloak's access tokens.
//!
//! Served now: OIDC discovery (`/realms/{realm}/.well-known/openid-configuration`),
//! the realm keys (`/realms/{realm}/protocol/openid-connect/certs`), and the
//! authorization-code flow with PKCE for public clients ([`PublicClient`]): the
//! authorization endpoint with a login form, and the token endpoint's
//! `authorization_code` grant, checking `code_challenge` (S256) as Keycloak does.
//! The client-credentials grant and the Admin REST API live in `kc_admin.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State as AxumState};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use parking_lot::Mutex;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Deserialize;
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
    /// The realm's public clients, by client id.
    clients: Mutex<HashMap<String, PublicClient>>,
    /// Authorization requests waiting for the login form, by login id.
    logins: Mutex<HashMap<String, Authorization>>,
    /// Issued authorization codes, by code; taken out on first use.
    codes: Mutex<HashMap<String, IssuedCode>>,
    /// Every authorization request's query, for assertions.
    authorize_requests: Mutex<Vec<HashMap<String, String>>>,
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
            clients: Mutex::new(HashMap::new()),
            logins: Mutex::new(HashMap::new()),
            codes: Mutex::new(HashMap::new()),
            authorize_requests: Mutex::new(Vec::new()),
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

    /// Registers a public client (standard flow, PKCE method S256 required).
    pub fn add_public_client(&self, client: PublicClient) {
        self.state
            .clients
            .lock()
            .insert(client.client_id.clone(), client);
    }

    /// The query of every authorization request so far.
    pub fn authorize_requests(&self) -> Vec<HashMap<String, String>> {
        self.state.authorize_requests.lock().clone()
    }

    /// `{issuer}/protocol/openid-connect/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer())
    }

    /// `{issuer}/protocol/openid-connect/auth`.
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/auth", self.issuer())
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
        .route(
            "/realms/{realm}/protocol/openid-connect/auth",
            get(pkce::authorize),
        )
        .route(
            "/realms/{realm}/login-actions/authenticate",
            post(pkce::authenticate),
        )
        .route(
            "/realms/{realm}/protocol/openid-connect/token",
            post(pkce::token).options(pkce::token_preflight),
        )
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

/// The password every user of the stand-in's login form has.
pub const PASSWORD: &str = "correct horse battery staple";

/// A public client of the realm, as its admin console would set it up:
/// standard flow on, client authentication off, "Proof Key for Code Exchange
/// Code Challenge Method" S256.
#[derive(Clone, Debug)]
pub struct PublicClient {
    pub client_id: String,
    /// Valid redirect URIs; a trailing `*` matches any rest, as in Keycloak.
    pub redirect_uris: Vec<String>,
    /// Web origins: the origins the token endpoint answers with CORS headers.
    pub web_origins: Vec<String>,
}

/// An authorization request that passed its checks, waiting for the login.
#[derive(Clone, Debug)]
struct Authorization {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    code_challenge: String,
    fragment: bool,
}

#[derive(Clone, Debug)]
struct IssuedCode {
    auth: Authorization,
    username: String,
    sid: String,
    expires: i64,
}

/// The authorization-code flow with PKCE (RFC 7636), answering as Keycloak 26
/// answers: errors before the redirect URI is trusted are an error page (400),
/// later ones go back to the client as `error` and `error_description`.
mod pkce {
    use super::*;
    use axum::extract::{Form, Query};
    use axum::response::{Html, Redirect};

    fn error_page(message: &str) -> Response {
        (
            StatusCode::BAD_REQUEST,
            Html(format!(
                "<!doctype html><title>Error</title><p id=\"kc-error-message\">{message}</p>"
            )),
        )
            .into_response()
    }

    fn redirect_uri_allowed(client: &PublicClient, uri: &str) -> bool {
        client
            .redirect_uris
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => uri.starts_with(prefix),
                None => uri == p,
            })
    }

    /// The authorization response: in the query, or in the fragment for
    /// `response_mode=fragment`.
    fn respond(auth: &Authorization, params: &[(&str, &str)]) -> Response {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            pairs.append_pair(k, v);
        }
        if let Some(st) = &auth.state {
            pairs.append_pair("state", st);
        }
        let encoded = pairs.finish();
        let sep = if auth.fragment {
            '#'
        } else if auth.redirect_uri.contains('?') {
            '&'
        } else {
            '?'
        };
        Redirect::to(&format!("{}{sep}{encoded}", auth.redirect_uri)).into_response()
    }

    /// RFC 7636 section 4.1/4.2: 43 to 128 characters of `[A-Za-z0-9-._~]`.
    fn pkce_shaped(s: &str) -> bool {
        (43..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    }

    pub async fn authorize(
        AxumState(state): AxumState<Arc<State>>,
        Path(realm): Path<String>,
        Query(q): Query<HashMap<String, String>>,
    ) -> Response {
        if realm != state.realm {
            return not_found_realm();
        }
        state.authorize_requests.lock().push(q.clone());
        let Some(client) = q
            .get("client_id")
            .and_then(|id| state.clients.lock().get(id).cloned())
        else {
            return error_page("Client not found.");
        };
        let Some(redirect_uri) = q
            .get("redirect_uri")
            .filter(|u| redirect_uri_allowed(&client, u))
        else {
            return error_page("Invalid parameter: redirect_uri");
        };
        let fragment = match q.get("response_mode").map(String::as_str) {
            None | Some("query") => false,
            Some("fragment") => true,
            Some(_) => return error_page("Invalid parameter: response_mode"),
        };
        let mut auth = Authorization {
            client_id: client.client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            state: q.get("state").cloned(),
            code_challenge: String::new(),
            fragment,
        };
        let fail = |error: &str, description: &str| {
            respond(
                &auth,
                &[("error", error), ("error_description", description)],
            )
        };
        if q.get("response_type").map(String::as_str) != Some("code") {
            return fail(
                "unsupported_response_type",
                "Client is not allowed to initiate browser login with given response_type.",
            );
        }
        if !q
            .get("scope")
            .is_some_and(|s| s.split(' ').any(|x| x == "openid"))
        {
            return fail("invalid_scope", "Invalid scopes: openid is required");
        }
        match q.get("code_challenge_method").map(String::as_str) {
            Some("S256") => {}
            None => {
                return fail(
                    "invalid_request",
                    "Missing parameter: code_challenge_method",
                )
            }
            Some(_) => {
                return fail(
                    "invalid_request",
                    "Invalid parameter: code_challenge_method",
                )
            }
        }
        match q.get("code_challenge") {
            Some(c) if pkce_shaped(c) => auth.code_challenge = c.clone(),
            None => return fail("invalid_request", "Missing parameter: code_challenge"),
            Some(_) => return fail("invalid_request", "Invalid parameter: code_challenge"),
        }
        let login = uuid();
        state.logins.lock().insert(login.clone(), auth);
        Html(format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in to {realm}</title></head>
<body><h1 id="kc-page-title">Sign in to your account</h1>
<form id="kc-form-login" method="post" action="/realms/{realm}/login-actions/authenticate">
<input type="hidden" name="login" value="{login}">
<label for="username">Username or email</label><input id="username" name="username" autofocus>
<label for="password">Password</label><input id="password" name="password" type="password">
<button type="submit" id="kc-login">Sign In</button>
</form></body></html>"#,
        ))
        .into_response()
    }

    #[derive(Deserialize)]
    pub struct Login {
        login: String,
        username: String,
        password: String,
    }

    pub async fn authenticate(
        AxumState(state): AxumState<Arc<State>>,
        Path(realm): Path<String>,
        Form(f): Form<Login>,
    ) -> Response {
        if realm != state.realm {
            return not_found_realm();
        }
        let Some(auth) = state.logins.lock().remove(&f.login) else {
            return error_page(
                "Your login attempt timed out. Login will start from the beginning.",
            );
        };
        if f.username.is_empty() || f.password != PASSWORD {
            // Keycloak shows the form again; a test only needs the refusal.
            return (
                StatusCode::UNAUTHORIZED,
                Html("Invalid username or password."),
            )
                .into_response();
        }
        let code = format!("{}.{}.{}", uuid(), uuid(), uuid());
        let sid = uuid();
        state.codes.lock().insert(
            code.clone(),
            IssuedCode {
                auth: auth.clone(),
                username: f.username,
                sid: sid.clone(),
                expires: now() + 60,
            },
        );
        let iss = issuer(&state);
        respond(
            &auth,
            &[("session_state", &sid), ("iss", &iss), ("code", &code)],
        )
    }

    #[derive(Deserialize)]
    pub struct TokenRequest {
        grant_type: Option<String>,
        code: Option<String>,
        redirect_uri: Option<String>,
        client_id: Option<String>,
        code_verifier: Option<String>,
    }

    fn grant_error(status: StatusCode, error: &str, description: &str) -> Response {
        (
            status,
            Json(json!({ "error": error, "error_description": description })),
        )
            .into_response()
    }

    /// CORS as Keycloak answers it: only for an origin among the client's
    /// web origins.
    fn with_cors(
        state: &State,
        client_id: Option<&str>,
        origin: Option<&str>,
        mut r: Response,
    ) -> Response {
        let allowed = client_id
            .and_then(|id| state.clients.lock().get(id).cloned())
            .zip(origin)
            .is_some_and(|(c, o)| c.web_origins.iter().any(|w| w == o));
        if let (true, Some(o)) = (allowed, origin) {
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_str(o).unwrap(),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        r
    }

    pub async fn token_preflight(
        AxumState(state): AxumState<Arc<State>>,
        headers: axum::http::HeaderMap,
    ) -> Response {
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        let known = state
            .clients
            .lock()
            .values()
            .any(|c| origin.is_some_and(|o| c.web_origins.iter().any(|w| w == o)));
        let mut r = StatusCode::OK.into_response();
        if let (true, Some(o)) = (known, origin) {
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_str(o).unwrap(),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Content-Type"),
            );
        }
        r
    }

    pub async fn token(
        AxumState(state): AxumState<Arc<State>>,
        Path(realm): Path<String>,
        headers: axum::http::HeaderMap,
        Form(t): Form<TokenRequest>,
    ) -> Response {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .map(str::to_owned);
        let client_id = t.client_id.clone();
        let r = token_inner(&state, &realm, t);
        with_cors(&state, client_id.as_deref(), origin.as_deref(), r)
    }

    fn token_inner(state: &State, realm: &str, t: TokenRequest) -> Response {
        if realm != state.realm {
            return not_found_realm();
        }
        let bad = StatusCode::BAD_REQUEST;
        if t.grant_type.as_deref() != Some("authorization_code") {
            return grant_error(bad, "unsupported_grant_type", "Unsupported grant_type");
        }
        let Some(client) = t
            .client_id
            .as_ref()
            .and_then(|id| state.clients.lock().get(id).cloned())
        else {
            return grant_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized_client",
                "Invalid client or Invalid client credentials",
            );
        };
        // Single use: the code is gone whatever happens next.
        let Some(issued) = t.code.as_ref().and_then(|c| state.codes.lock().remove(c)) else {
            return grant_error(bad, "invalid_grant", "Code not valid");
        };
        if issued.expires < now() {
            return grant_error(bad, "invalid_grant", "Code is expired");
        }
        if issued.auth.client_id != client.client_id {
            return grant_error(bad, "invalid_grant", "Auth error");
        }
        if t.redirect_uri.as_deref() != Some(issued.auth.redirect_uri.as_str()) {
            return grant_error(bad, "invalid_grant", "Incorrect redirect_uri");
        }
        let Some(verifier) = t.code_verifier else {
            return grant_error(bad, "invalid_grant", "PKCE code verifier not specified");
        };
        if !pkce_shaped(&verifier) {
            return grant_error(bad, "invalid_grant", "PKCE invalid code verifier");
        }
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if challenge != issued.auth.code_challenge {
            return grant_error(
                bad,
                "invalid_grant",
                "PKCE verification failed: Code mismatch",
            );
        }
        let key = state.active.lock().clone();
        let iss = issuer(state);
        let access = TokenBuilder::new(&iss, key.clone())
            .user(&issued.username)
            .sid(&issued.sid)
            .claim("azp", json!(client.client_id))
            .build();
        let id_token = TokenBuilder::new(&iss, key)
            .user(&issued.username)
            .sid(&issued.sid)
            .claim("azp", json!(client.client_id))
            .claim("aud", json!(client.client_id))
            .claim("typ", json!("ID"))
            .build();
        Json(json!({
            "access_token": access.jwt,
            "expires_in": 300,
            "refresh_expires_in": 1800,
            "refresh_token": uuid(),
            "token_type": "Bearer",
            "id_token": id_token.jwt,
            "not-before-policy": 0,
            "session_state": issued.sid,
            "scope": "openid email profile",
        }))
        .into_response()
    }
}
