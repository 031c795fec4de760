//! `POST /user/generate-totp`, `POST /user/verify-totp`, `DELETE /user/totp`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{bounded_code, no_store, Auth};
use crate::app::AppState;
use crate::error::Error;
use crate::factor::qr;
use crate::http::ApiJson;

/// Longer than any code (8 digits, maybe spaced), short enough to bound work.
const MAX_TOTP_INPUT: usize = 32;

/// `POST /user/generate-totp`: a new pending secret, its otpauth URI and QR
/// codes.
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
        json!({
            "secret": new.secret.base32(),
            "otpauth_uri": new.otpauth_uri,
            "qr_png": png,
            "qr_svg": svg,
            "expires_at": new.expires_at,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    totp: String,
    is_new_seed: bool,
}

/// `POST /user/verify-totp`: `is_new_seed` confirms the pending secret
/// (recovery codes returned once, here); otherwise the enrolled secret is
/// checked. Either way the session becomes verified with `totp`.
pub async fn verify(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Response, Error> {
    bounded_code("totp", &req.totp, MAX_TOTP_INPUT)?;
    let body = match state
        .factors
        .verify_totp(&id, &req.totp, req.is_new_seed)
        .await?
    {
        Some(codes) => json!({ "verified": true, "recovery_codes": codes }),
        None => json!({ "verified": true }),
    };
    Ok(no_store(StatusCode::OK, body))
}

/// `DELETE /user/totp`. Recovery codes stay: they are a factor of their own.
pub async fn remove(State(state): State<Arc<AppState>>, Auth(id): Auth) -> Result<Response, Error> {
    state.factors.remove_totp(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
