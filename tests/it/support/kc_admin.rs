//! A stand-in for Keycloak's token endpoint (client-credentials grant) and the
//! part of its Admin REST API that twofa-authz uses:
//! `GET`/`PUT /admin/realms/{realm}/users/{id}` with a `UserRepresentation`.
//!
//! It checks the requests as Keycloak would: the client's credentials at the
//! token endpoint, a bearer token it issued (and that has not expired or been
//! revoked) on every admin call, JSON bodies. Like Keycloak 24+, a `PUT`
//! replaces `attributes` wholesale, so a client that sends a partial
//! representation loses attributes here as it would there; such PUTs are also
//! recorded as violations.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::keycloak::REALM;
use super::standin::{basic_auth, bearer, content_type, Control, Server};

pub const CLIENT_ID: &str = "twofa-authz-admin";
pub const CLIENT_SECRET: &str = "admin-client-secret";

#[derive(Default)]
pub struct Inner {
    pub control: Control,
    users: Mutex<HashMap<String, Value>>,
    tokens: Mutex<HashSet<String>>,
    token_requests: AtomicUsize,
    puts: AtomicUsize,
}

pub struct KcAdmin {
    pub state: Arc<Inner>,
    server: Server,
}

impl KcAdmin {
    pub async fn start() -> KcAdmin {
        let state = Arc::new(Inner::default());
        let app = Router::new()
            .route("/realms/{realm}/protocol/openid-connect/token", post(token))
            .route(
                "/admin/realms/{realm}/users/{id}",
                get(get_user).put(put_user),
            )
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({"error": "Unable to find matching target resource method"})),
                )
            })
            .with_state(state.clone());
        KcAdmin {
            state,
            server: Server::start(app).await,
        }
    }

    /// What `keycloak.url` is set to for the admin client.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Adds (or replaces) a realm user as Keycloak would list it.
    pub fn add_user(&self, id: &str, username: &str, email: &str, attributes: Value) {
        let rep = json!({
            "id": id,
            "username": username,
            "firstName": "Alice",
            "lastName": "Liddell",
            "email": email,
            "emailVerified": true,
            "enabled": true,
            "createdTimestamp": 1_700_000_000_000u64,
            "totp": false,
            "attributes": attributes,
            "disableableCredentialTypes": [],
            "requiredActions": [],
            "notBefore": 0,
            "access": {
                "manageGroupMembership": true, "view": true, "mapRoles": true,
                "impersonate": false, "manage": true
            }
        });
        self.state.users.lock().insert(id.to_owned(), rep);
    }

    pub fn user(&self, id: &str) -> Value {
        self.state
            .users
            .lock()
            .get(id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub fn fail_with(&self, status: Option<u16>) {
        self.state.control.fail_with(status);
    }

    /// Invalidates every issued token (as a realm key rotation or a session
    /// logout would): the next admin call gets 401.
    pub fn revoke_tokens(&self) {
        self.state.tokens.lock().clear();
    }

    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    pub fn puts(&self) -> usize {
        self.state.puts.load(Ordering::SeqCst)
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.control.violations()
    }
}

fn kc_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

async fn token(
    State(state): State<Arc<Inner>>,
    Path(realm): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let c = &state.control;
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    if let Some(status) = c.failure() {
        return kc_error(status, "unknown_error", "injected by the test");
    }
    if realm != REALM {
        c.violation(format!("token endpoint of realm {realm}"));
        return kc_error(StatusCode::NOT_FOUND, "Realm does not exist", "");
    }
    if !content_type(&headers).starts_with("application/x-www-form-urlencoded") {
        c.violation(format!(
            "token request content-type {}",
            content_type(&headers)
        ));
        return kc_error(StatusCode::BAD_REQUEST, "invalid_request", "form expected");
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        c.violation(format!("grant_type {:?}", form.get("grant_type")));
        return kc_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Unsupported grant_type",
        );
    }
    let creds = basic_auth(&headers).or_else(|| {
        Some((
            form.get("client_id")?.clone(),
            form.get("client_secret")?.clone(),
        ))
    });
    if creds != Some((CLIENT_ID.into(), CLIENT_SECRET.into())) {
        c.violation(format!("client credentials {creds:?}"));
        return kc_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Invalid client or Invalid client credentials",
        );
    }
    let t = format!("kc-admin-{}", super::keycloak::uuid());
    state.tokens.lock().insert(t.clone());
    Json(json!({
        "access_token": t,
        "expires_in": 300,
        "refresh_expires_in": 0,
        "token_type": "Bearer",
        "not-before-policy": 0,
        "scope": "profile email"
    }))
    .into_response()
}

fn authorize(state: &Inner, realm: &str, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if let Some(status) = state.control.failure() {
        return Err(Box::new(kc_error(
            status,
            "unknown_error",
            "injected by the test",
        )));
    }
    if realm != REALM {
        state
            .control
            .violation(format!("admin call for realm {realm}"));
        return Err(Box::new(kc_error(
            StatusCode::NOT_FOUND,
            "Realm not found.",
            "",
        )));
    }
    match bearer(headers) {
        Some(t) if state.tokens.lock().contains(&t) => Ok(()),
        // Not a violation: a revoked or expired token is part of the protocol.
        _ => Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "HTTP 401 Unauthorized"})),
            )
                .into_response(),
        )),
    }
}

async fn get_user(
    State(state): State<Arc<Inner>>,
    Path((realm, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &realm, &headers) {
        return *r;
    }
    match state.users.lock().get(&id) {
        Some(rep) => Json(rep.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "User not found"})),
        )
            .into_response(),
    }
}

async fn put_user(
    State(state): State<Arc<Inner>>,
    Path((realm, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorize(&state, &realm, &headers) {
        return *r;
    }
    let c = &state.control;
    if !content_type(&headers).starts_with("application/json") {
        c.violation(format!("PUT content-type {}", content_type(&headers)));
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let Ok(Value::Object(update)) = serde_json::from_slice::<Value>(&body) else {
        c.violation("PUT body is not a JSON object");
        return kc_error(StatusCode::BAD_REQUEST, "unknown_error", "");
    };
    let mut users = state.users.lock();
    let Some(Value::Object(current)) = users.get_mut(&id) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "User not found"})),
        )
            .into_response();
    };
    for required in ["id", "username", "attributes"] {
        if !update.contains_key(required) {
            c.violation(format!("PUT of a partial representation: no `{required}`"));
        }
    }
    if let Some(Value::Object(old)) = current.get("attributes") {
        let new = update.get("attributes").and_then(Value::as_object);
        for k in old.keys() {
            if !new.is_some_and(|n| n.contains_key(k)) {
                c.violation(format!("PUT drops attribute `{k}`"));
            }
        }
    }
    for (k, v) in update {
        current.insert(k, v);
    }
    state.puts.fetch_add(1, Ordering::SeqCst);
    StatusCode::NO_CONTENT.into_response()
}
