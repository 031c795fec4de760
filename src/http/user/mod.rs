//! The `/user` API of INTERFACE.md section 5: profiles and contacts
//! (`profile`), codes by email and SMS (`otp`), TOTP (`totp`), recovery
//! codes (`recovery`), remembered devices (`devices`) and WebAuthn passkeys
//! (`webauthn`). Every route needs a valid bearer token ([`Auth`]); the
//! profile belongs to the token's `sub`. Handlers parse, call the factor
//! service (`factor::Factors`), render.

mod devices;
mod otp;
mod profile;
mod recovery;
mod totp;
mod webauthn;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Json;
use axum::Router;
use http::request::Parts;
use http::{header, StatusCode};

use crate::app::AppState;
use crate::authz::bearer;
use crate::error::Error;
use crate::token::{Identity, TokenError};

pub use crate::factor::contact::{normalize_email, normalize_mobile};

/// The `/user` part of `/openapi.json` (`http::openapi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    profile::create,
    profile::get,
    profile::patch,
    otp::send,
    otp::verify,
    totp::generate,
    totp::verify,
    totp::remove,
    recovery::verify,
    recovery::regenerate,
    devices::remember,
    devices::list,
    devices::forget,
    devices::verify,
    webauthn::register_start,
    webauthn::register_finish,
    webauthn::authenticate_start,
    webauthn::authenticate_finish,
    webauthn::list,
    webauthn::remove,
))]
pub struct UserApi;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/user",
            post(profile::create)
                .get(profile::get)
                .patch(profile::patch),
        )
        .route("/user/send-otp", post(otp::send))
        .route("/user/verify-otp", post(otp::verify))
        .route("/user/generate-totp", post(totp::generate))
        .route("/user/verify-totp", post(totp::verify))
        .route("/user/totp", delete(totp::remove))
        .route("/user/verify-recovery-code", post(recovery::verify))
        .route("/user/recovery-codes", post(recovery::regenerate))
        .route(
            "/user/remembered-devices",
            post(devices::remember).get(devices::list),
        )
        .route("/user/remembered-devices/{id}", delete(devices::forget))
        .route("/user/verify-device", post(devices::verify))
        .route(
            "/user/webauthn/register/start",
            post(webauthn::register_start),
        )
        .route(
            "/user/webauthn/register/finish",
            post(webauthn::register_finish),
        )
        .route(
            "/user/webauthn/authenticate/start",
            post(webauthn::authenticate_start),
        )
        .route(
            "/user/webauthn/authenticate/finish",
            post(webauthn::authenticate_finish),
        )
        .route("/user/webauthn/credentials", get(webauthn::list))
        .route("/user/webauthn/credentials/{id}", delete(webauthn::remove))
}

/// The validated access token of the request. Rejections are those of the
/// Check path: 401 with `www-authenticate` for a missing or invalid token,
/// 503 when the signing keys are not available.
pub struct Auth(pub Arc<Identity>);

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        // Two Authorization headers are two credentials: 401, as on the
        // Check path, never "the first one wins".
        let result = match bearer(crate::http::authorization(&parts.headers)) {
            Ok(None) => Err(Error::MissingToken),
            Err(why) => Err(Error::InvalidToken(why.label())),
            Ok(Some(t)) => match state.authz.validator().validate(t).await {
                Ok(id) => {
                    crate::telemetry::user_subject(&id);
                    Ok(id)
                }
                Err(TokenError::Invalid(why)) => Err(Error::InvalidToken(why.label())),
                Err(TokenError::Unavailable(why)) => Err(Error::AuthzUnavailable(why.label())),
            },
        };
        result.map(Auth).map_err(|e| {
            crate::http::problem::response(&e, state.authz.www_authenticate(&e)).into_response()
        })
    }
}

/// Answers that carry a secret or recovery codes must not be kept by any
/// cache between the user and us.
pub fn no_store<T: serde::Serialize>(status: StatusCode, body: T) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// A typed code: bounded before any work is done on it.
pub fn bounded_code(name: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.trim().is_empty() || value.len() > max {
        return Err(Error::InvalidRequest(format!(
            "`{name}` is 1 to {max} characters"
        )));
    }
    Ok(())
}
