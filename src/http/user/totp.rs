//! `POST /user/generate-totp`, `POST /user/verify-totp`, `DELETE /user/totp`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{bounded_code, no_store, Auth};
use crate::app::AppState;
use crate::error::{problems as p, Error};
use crate::factor::qr;
use crate::http::openapi::{problems, AUTH, BODY, STORE, VERIFY};
use crate::http::ApiJson;

/// Longer than any code (8 digits, maybe spaced), short enough to bound work.
const MAX_TOTP_INPUT: usize = 32;

/// A pending TOTP secret, to be confirmed with `POST /user/verify-totp`
/// (`is_new_seed: true`) before it expires.
#[derive(Serialize, ToSchema)]
pub struct NewTotp {
    /// Base32, for manual entry.
    secret: String,
    otpauth_uri: String,
    /// The QR code of `otpauth_uri` as a base64 PNG.
    qr_png: String,
    /// The QR code of `otpauth_uri` as an SVG document.
    qr_svg: String,
    /// Unix seconds.
    expires_at: i64,
}

problems!(
    GenerateProblems = [
        AUTH,
        STORE,
        &[
            p::INVALID_REQUEST,
            p::PROFILE_NOT_FOUND,
            p::SECOND_FACTOR_REQUIRED,
            p::TOTP_ALREADY_ENABLED,
        ],
    ]
);

/// A new pending secret, its otpauth URI and QR codes. Needs a recent
/// second factor once the user has one.
#[utoipa::path(
    post,
    path = "/user/generate-totp",
    operation_id = "generate_totp",
    tag = "user",
    security(("bearer" = [])),
    responses((status = 201, description = "a pending TOTP secret", body = NewTotp), GenerateProblems)
)]
pub async fn generate(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
) -> Result<Response, Error> {
    let new = state.factors.generate_totp(&id).await?;
    let (png, svg) = {
        let u = new.otpauth_uri.clone();
        tokio::task::spawn_blocking(move || {
            Ok::<_, qr::QrError>((qr::png_base64(&u)?, qr::svg(&u)?))
        })
        .await
        .map_err(|e| Error::Internal(format!("QR worker: {e}")))?
        .map_err(|e| Error::Internal(format!("QR code: {e}")))?
    };
    Ok(no_store(
        StatusCode::CREATED,
        NewTotp {
            secret: new.secret.base32(),
            otpauth_uri: new.otpauth_uri,
            qr_png: png,
            qr_svg: svg,
            expires_at: new.expires_at,
        },
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VerifyTotpRequest)]
pub struct VerifyRequest {
    /// The code shown by the authenticator app.
    #[schema(min_length = 1, max_length = 32)]
    totp: String,
    /// `true` confirms the pending secret; `false` checks the enrolled one.
    is_new_seed: bool,
}

/// The code was right; the session is verified with `totp`.
#[derive(Serialize, ToSchema)]
pub struct TotpVerified {
    verified: bool,
    /// Only when a pending secret was confirmed: the recovery codes, shown
    /// this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_codes: Option<Vec<String>>,
}

problems!(
    VerifyProblems = [
        AUTH,
        BODY,
        STORE,
        VERIFY,
        &[
            p::PROFILE_NOT_FOUND,
            p::SECOND_FACTOR_REQUIRED,
            p::NO_PENDING_TOTP,
            p::TOTP_NOT_ENABLED,
            p::TOTP_ALREADY_ENABLED,
            p::BUSY,
        ],
    ]
);

/// `is_new_seed` confirms the pending secret (recovery codes returned once,
/// here); otherwise the enrolled secret is checked. Either way the session
/// becomes verified with `totp`.
#[utoipa::path(
    post,
    path = "/user/verify-totp",
    operation_id = "verify_totp",
    tag = "user",
    security(("bearer" = [])),
    request_body = VerifyRequest,
    responses((status = 200, description = "the code was right; the session is verified with `totp`", body = TotpVerified), VerifyProblems)
)]
pub async fn verify(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Response, Error> {
    bounded_code("totp", &req.totp, MAX_TOTP_INPUT)?;
    let recovery_codes = state
        .factors
        .verify_totp(&id, &req.totp, req.is_new_seed)
        .await?;
    Ok(no_store(
        StatusCode::OK,
        TotpVerified {
            verified: true,
            recovery_codes,
        },
    ))
}

problems!(
    RemoveProblems = [
        AUTH,
        STORE,
        &[
            p::INVALID_REQUEST,
            p::PROFILE_NOT_FOUND,
            p::SECOND_FACTOR_REQUIRED,
            p::TOTP_NOT_ENABLED,
        ],
    ]
);

/// Removes TOTP. Recovery codes stay: they are a factor of their own. Needs
/// a recent second factor.
#[utoipa::path(
    delete,
    path = "/user/totp",
    operation_id = "remove_totp",
    tag = "user",
    security(("bearer" = [])),
    responses((status = 204, description = "TOTP is removed"), RemoveProblems)
)]
pub async fn remove(State(state): State<Arc<AppState>>, Auth(id): Auth) -> Result<Response, Error> {
    state.factors.remove_totp(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
