//! `/user/webauthn/...`: passkey registration and authentication ceremonies
//! and the list of credentials (`factor::webauthn`). The options and the
//! authenticator's responses are webauthn-rs's JSON forms, as the browser's
//! `navigator.credentials` calls take and give them (binary fields
//! base64url).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::{no_store, Auth};
use crate::app::AppState;
use crate::error::{problems as p, Error};
use crate::factor::webauthn::{CredentialInfo, MAX_NAME};
use crate::http::openapi::{problems, AUTH, BODY, STORE, VERIFY};
use crate::http::ApiJson;

/// A credential id is the base64url of at most 1023 bytes (WebAuthn L3).
const MAX_CREDENTIAL_ID: usize = 1400;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WebAuthnRegisterFinishRequest)]
pub struct RegisterFinish {
    /// The `PublicKeyCredential` from `navigator.credentials.create()`:
    /// `id`, `rawId`, `type`, `response.attestationObject`,
    /// `response.clientDataJSON` (base64url), `extensions`.
    #[schema(value_type = Object)]
    credential: RegisterPublicKeyCredential,
    /// A label for the list, at most 64 characters; default "Passkey N".
    #[schema(max_length = 64)]
    name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WebAuthnAuthenticateFinishRequest)]
pub struct AuthenticateFinish {
    /// The `PublicKeyCredential` from `navigator.credentials.get()`: `id`,
    /// `rawId`, `type`, `response.authenticatorData`,
    /// `response.clientDataJSON`, `response.signature`,
    /// `response.userHandle` (base64url).
    #[schema(value_type = Object)]
    credential: PublicKeyCredential,
}

/// A registered credential.
#[derive(Serialize, ToSchema)]
#[schema(as = WebAuthnCredential)]
pub struct Credential {
    /// The credential id, base64url.
    id: String,
    name: String,
    /// Unix seconds.
    created_at: i64,
    /// Unix seconds of the last accepted assertion.
    last_used_at: Option<i64>,
    /// The authenticator may sync it to other devices (a multi-device
    /// passkey).
    backup_eligible: bool,
    /// It is backed up (synced) now.
    backup_state: bool,
}

impl From<CredentialInfo> for Credential {
    fn from(c: CredentialInfo) -> Self {
        Self {
            id: c.id,
            name: c.name,
            created_at: c.created_at,
            last_used_at: c.last_used_at,
            backup_eligible: c.backup_eligible,
            backup_state: c.backup_state,
        }
    }
}

/// The new credential, as the list shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = WebAuthnRegistered)]
pub struct Registered {
    id: String,
    name: String,
}

/// The assertion was right; the session is verified with `webauthn`.
#[derive(Serialize, ToSchema)]
#[schema(as = WebAuthnVerified)]
pub struct Verified {
    verified: bool,
}

problems!(
    RegisterStartProblems = [
        AUTH,
        STORE,
        &[
            p::INVALID_REQUEST,
            p::PROFILE_NOT_FOUND,
            p::SECOND_FACTOR_REQUIRED,
        ],
    ]
);

/// Starts registering a passkey: the creation options to hand to
/// `navigator.credentials.create()`, valid for 5 minutes in this session.
/// Needs a recent second factor once the user has one.
#[utoipa::path(
    post,
    path = "/user/webauthn/register/start",
    operation_id = "webauthn_register_start",
    tag = "user",
    security(("bearer" = [])),
    responses((status = 200, description = "creation options: webauthn-rs's `CreationChallengeResponse`, `PublicKeyCredentialCreationOptions` under `publicKey`, binary members base64url", body = serde_json::Value), RegisterStartProblems)
)]
pub async fn register_start(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
) -> Result<Response, Error> {
    let options = state.passkeys.register_start(&id).await?;
    Ok(no_store(StatusCode::OK, options))
}

problems!(
    RegisterFinishProblems = [
        AUTH,
        BODY,
        STORE,
        &[
            p::PROFILE_NOT_FOUND,
            p::SECOND_FACTOR_REQUIRED,
            p::NO_PENDING_CEREMONY,
            p::INVALID_CREDENTIAL,
            p::WEBAUTHN_CREDENTIAL_EXISTS,
        ],
    ]
);

/// Finishes the registration with the authenticator's response.
#[utoipa::path(
    post,
    path = "/user/webauthn/register/finish",
    operation_id = "webauthn_register_finish",
    tag = "user",
    security(("bearer" = [])),
    request_body = RegisterFinish,
    responses((status = 201, description = "the credential is registered", body = Registered), RegisterFinishProblems)
)]
pub async fn register_finish(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<RegisterFinish>,
) -> Result<Response, Error> {
    if req
        .name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME)
    {
        return Err(Error::InvalidRequest(format!(
            "`name` is at most {MAX_NAME} characters"
        )));
    }
    let c = state
        .passkeys
        .register_finish(&id, &req.credential, req.name.as_deref())
        .await?;
    Ok(no_store(
        StatusCode::CREATED,
        Registered {
            id: c.id,
            name: c.name,
        },
    ))
}

problems!(
    AuthenticateStartProblems = [
        AUTH,
        STORE,
        &[
            p::INVALID_REQUEST,
            p::PROFILE_NOT_FOUND,
            p::WEBAUTHN_NOT_ENABLED,
            p::TOO_MANY_ATTEMPTS,
            p::FACTOR_LOCKED,
        ],
    ]
);

/// Starts an assertion: the request options to hand to
/// `navigator.credentials.get()`, valid for 5 minutes in this session.
#[utoipa::path(
    post,
    path = "/user/webauthn/authenticate/start",
    operation_id = "webauthn_authenticate_start",
    tag = "user",
    security(("bearer" = [])),
    responses((status = 200, description = "request options: webauthn-rs's `RequestChallengeResponse`, `PublicKeyCredentialRequestOptions` under `publicKey`, binary members base64url", body = serde_json::Value), AuthenticateStartProblems)
)]
pub async fn authenticate_start(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
) -> Result<Response, Error> {
    let options = state.passkeys.authenticate_start(&id).await?;
    Ok(no_store(StatusCode::OK, options))
}

problems!(
    AuthenticateFinishProblems = [
        AUTH,
        BODY,
        STORE,
        VERIFY,
        &[p::PROFILE_NOT_FOUND, p::NO_PENDING_CEREMONY],
    ]
);

/// Finishes the assertion; the session becomes verified with `webauthn`.
/// A refused assertion counts against the attempt budget like a wrong code.
#[utoipa::path(
    post,
    path = "/user/webauthn/authenticate/finish",
    operation_id = "webauthn_authenticate_finish",
    tag = "user",
    security(("bearer" = [])),
    request_body = AuthenticateFinish,
    responses((status = 200, description = "the assertion was right; the session is verified with `webauthn`", body = Verified), AuthenticateFinishProblems)
)]
pub async fn authenticate_finish(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<AuthenticateFinish>,
) -> Result<Response, Error> {
    state
        .passkeys
        .authenticate_finish(&id, &req.credential)
        .await?;
    Ok(no_store(StatusCode::OK, Verified { verified: true }))
}

problems!(ListProblems = [AUTH, STORE, &[p::INVALID_REQUEST, p::PROFILE_NOT_FOUND],]);

/// The user's registered credentials, oldest first.
#[utoipa::path(
    get,
    path = "/user/webauthn/credentials",
    operation_id = "webauthn_credentials",
    tag = "user",
    security(("bearer" = [])),
    responses((status = 200, description = "the registered credentials", body = Vec<Credential>), ListProblems)
)]
pub async fn list(State(state): State<Arc<AppState>>, Auth(id): Auth) -> Result<Response, Error> {
    let list: Vec<Credential> = state
        .passkeys
        .list(&id)
        .await?
        .into_iter()
        .map(Credential::from)
        .collect();
    Ok(no_store(StatusCode::OK, list))
}

problems!(
    RemoveProblems = [
        AUTH,
        STORE,
        &[
            p::INVALID_REQUEST,
            p::PROFILE_NOT_FOUND,
            p::SECOND_FACTOR_REQUIRED,
            p::WEBAUTHN_CREDENTIAL_NOT_FOUND,
        ],
    ]
);

/// Removes a credential. Needs a recent second factor.
#[utoipa::path(
    delete,
    path = "/user/webauthn/credentials/{id}",
    operation_id = "webauthn_remove_credential",
    tag = "user",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the credential id, base64url")),
    responses((status = 204, description = "the credential is removed"), RemoveProblems)
)]
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    Path(cred): Path<String>,
) -> Result<Response, Error> {
    if cred.is_empty() || cred.len() > MAX_CREDENTIAL_ID {
        return Err(Error::InvalidRequest(
            "the credential id is 1 to 1400 characters".into(),
        ));
    }
    state.passkeys.remove(&id, &cred).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
