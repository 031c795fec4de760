//! OIDC Back-Channel Logout 1.0 (https://openid.net/specs/openid-connect-backchannel-1_0.html):
//! Keycloak posts a signed logout token when a session ends; the session's
//! second-factor state is deleted at once, everywhere (it lives in the shared
//! session store). A logout by `sub` alone (every session of the user) also
//! revokes the user's remembered devices.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::CACHE_CONTROL;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::app::AppState;
use crate::audit::{Event, Kind};
use crate::error::Error;
use crate::store::SessionIds;
use crate::token::{sid_hash, subject_hash, TokenError};

/// Section 2.4: the event that marks a logout token.
const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Logout tokens without `exp` are accepted for this long after `iat`.
const DEFAULT_LIFETIME: i64 = 300;

/// `application/x-www-form-urlencoded`, section 2.5.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = LogoutForm)]
struct Form {
    /// The signed logout token (a JWT).
    logout_token: String,
}

super::openapi::problems!(
    LogoutProblems = [&[
        crate::error::problems::INVALID_LOGOUT_TOKEN,
        crate::error::problems::AUTHZ_UNAVAILABLE,
        crate::error::problems::STORAGE_UNAVAILABLE,
    ],]
);

#[derive(Deserialize, Clone)]
struct LogoutClaims {
    iss: String,
    sub: Option<String>,
    sid: Option<String>,
    iat: Option<i64>,
    exp: Option<i64>,
    jti: Option<String>,
    typ: Option<String>,
    events: Option<Map<String, Value>>,
    nonce: Option<Value>,
}

/// OIDC Back-Channel Logout 1.0: the session's verified state is gone.
#[utoipa::path(
    post,
    path = "/keycloak/backchannel-logout",
    tag = "keycloak",
    request_body(content = Form, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "the session's second-factor state is deleted"), LogoutProblems)
)]
pub async fn backchannel_logout(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let result = handle(&state, &body).await;
    let event = Event::new(Kind::BackchannelLogout);
    state.audit.emit(match &result {
        Ok((subject, sid)) => event.hashes(subject.clone(), sid.clone()),
        // Who a refused token names is not known: it may be forged.
        Err(Error::InvalidLogoutToken(why)) => event.failure().field("reason", *why),
        Err(e) => event.failure().field("reason", e.code()),
    });
    let label = match &result {
        Ok(_) => "success",
        Err(Error::InvalidLogoutToken(_)) => "invalid",
        Err(_) => "error",
    };
    state
        .metrics
        .backchannel_logouts
        .with_label_values(&[label])
        .inc();
    match result {
        // Section 2.8: 200 on success, and the response must not be cached.
        Ok(_) => (StatusCode::OK, [(CACHE_CONTROL, "no-store")]).into_response(),
        Err(e) => {
            if let Error::InvalidLogoutToken(why) = &e {
                tracing::info!(reason = why, "refused a back-channel logout token");
            }
            e.into_response()
        }
    }
}

/// The logged-out subject's and session's hashes, as far as the token named
/// them.
async fn handle(state: &AppState, body: &[u8]) -> Result<(Option<String>, Option<String>), Error> {
    let form: Form = serde_urlencoded::from_bytes(body)
        .map_err(|_| Error::InvalidLogoutToken("not a logout_token form"))?;
    let v = state.authz.validator();
    let claims: LogoutClaims = match v
        .verify_signature(&form.logout_token, v.allowed_clients())
        .await
    {
        Ok(c) => c,
        Err(TokenError::Invalid(why)) => return Err(Error::InvalidLogoutToken(why.label())),
        Err(TokenError::Unavailable(_)) => {
            return Err(Error::AuthzUnavailable("signing keys not loaded"))
        }
    };
    let now = state.clock.now();
    let leeway = v.leeway();
    let iat = claims.iat.ok_or(Error::InvalidLogoutToken("no iat"))?;
    if iat - leeway > now {
        return Err(Error::InvalidLogoutToken("issued in the future"));
    }
    let exp = claims.exp.unwrap_or(iat + DEFAULT_LIFETIME);
    if exp + leeway <= now {
        return Err(Error::InvalidLogoutToken("expired"));
    }
    // Keycloak marks its logout tokens typ=Logout; an access or ID token
    // must never be usable as a logout token.
    if claims
        .typ
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("logout"))
    {
        return Err(Error::InvalidLogoutToken("not a logout token"));
    }
    if !claims
        .events
        .as_ref()
        .is_some_and(|e| e.get(LOGOUT_EVENT).is_some_and(Value::is_object))
    {
        return Err(Error::InvalidLogoutToken("no back-channel logout event"));
    }
    if claims.nonce.is_some() {
        return Err(Error::InvalidLogoutToken("has a nonce"));
    }
    let sub = claims.sub.filter(|s| !s.is_empty());
    let sid = claims.sid.filter(|s| !s.is_empty());
    if sub.is_none() && sid.is_none() {
        return Err(Error::InvalidLogoutToken("neither sub nor sid"));
    }
    if [&sub, &sid]
        .iter()
        .any(|v| v.as_ref().is_some_and(|s| s.len() > 1024))
    {
        return Err(Error::InvalidLogoutToken("claim too long"));
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= 1024)
        .ok_or(Error::InvalidLogoutToken("no jti"))?;

    // Section 2.6: a jti seen before within the token's lifetime is a replay.
    let jti_key = crate::store::keys::logout_jti(&sid_hash(&claims.iss, &jti));
    let ttl = Duration::from_secs((exp + leeway - now).clamp(60, 86_400) as u64);
    let fresh = state
        .ephemeral
        .set_nx(&jti_key, "1", ttl)
        .await
        .map_err(|e| Error::StorageUnavailable(e.to_string()))?;
    if !fresh {
        return Err(Error::InvalidLogoutToken("replayed"));
    }
    let removed = match (&sub, &sid) {
        (Some(sub), Some(sid)) => {
            state
                .sessions
                .remove(&SessionIds::new(&claims.iss, sub, sid))
                .await
        }
        (None, Some(sid)) => state.sessions.remove_sid(&sid_hash(&claims.iss, sid)).await,
        (Some(sub), None) => state
            .sessions
            .remove_subject(&subject_hash(&claims.iss, sub))
            .await
            .map(|n| n > 0),
        (None, None) => Ok(false),
    };
    if let Err(e) = removed {
        // Let Keycloak (or an operator) retry the same token.
        let _ = state.ephemeral.delete(&jti_key).await;
        return Err(Error::StorageUnavailable(e.to_string()));
    }
    // Logged out everywhere: remembered devices go too, or the next session
    // on any of them would be verified at once. After the sessions, so that
    // a database outage never keeps a session verified.
    if let (Some(sub), None) = (&sub, &sid) {
        if let Err(e) = state.factors.forget_all_devices(sub).await {
            if state.cfg.security.remember_device_ttl.as_secs() == 0 {
                // Off: the devices verify nothing; the logout stands.
                tracing::warn!(error = %e, "could not revoke the remembered devices of a user logged out everywhere");
            } else {
                let _ = state.ephemeral.delete(&jti_key).await;
                return Err(e);
            }
        }
    }
    Ok((
        sub.map(|s| subject_hash(&claims.iss, &s)),
        sid.map(|s| sid_hash(&claims.iss, &s)),
    ))
}
