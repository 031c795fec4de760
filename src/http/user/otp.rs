//! `POST /user/send-otp` (a login code to a verified contact) and
//! `POST /user/verify-otp` (a login code, or the code of a contact change).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{bounded_code, Auth};
use crate::app::AppState;
use crate::error::Error;
use crate::factor::otp::{Channel, Purpose};
use crate::http::ApiJson;

/// Longer than any code we issue, short enough to bound the work.
const MAX_OTP_INPUT: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    otp_type: Channel,
}

pub async fn send(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<SendRequest>,
) -> Result<Response, Error> {
    let sent = state.factors.send_login_code(&id, req.otp_type).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "sent_to": sent.sent_to, "expires_at": sent.expires_at })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    otp: String,
    otp_type: Channel,
    #[serde(default)]
    purpose: Option<Purpose>,
}

pub async fn verify(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Json<serde_json::Value>, Error> {
    bounded_code("otp", &req.otp, MAX_OTP_INPUT)?;
    let purpose = state
        .factors
        .verify_code(&id, req.otp_type, req.purpose, &req.otp)
        .await?;
    Ok(Json(
        json!({ "verified": true, "purpose": purpose.as_str() }),
    ))
}
