//! `POST /user/send-otp` (a login code to a verified contact) and
//! `POST /user/verify-otp` (a login code, or the code of a contact change).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{bounded_code, Auth};
use crate::app::AppState;
use crate::error::{problems as p, Error};
use crate::factor::otp::{Channel, Purpose};
use crate::http::openapi::{problems, AUTH, BODY, STORE, VERIFY};
use crate::http::ApiJson;

/// Longer than any code we issue, short enough to bound the work.
const MAX_OTP_INPUT: usize = 32;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SendOtpRequest)]
pub struct SendRequest {
    /// The verified contact to send a login code to.
    otp_type: Channel,
}

/// A login code is on its way.
#[derive(Serialize, ToSchema)]
pub struct Sent {
    /// The contact, masked (`a***@example.com`, `+49******89`).
    sent_to: String,
    /// Unix seconds after which the code is no longer accepted.
    expires_at: i64,
}

problems!(
    SendProblems = [
        AUTH,
        BODY,
        STORE,
        &[
            p::PROFILE_NOT_FOUND,
            p::CONTACT_NOT_VERIFIED,
            p::RESEND_TOO_SOON,
            p::TOO_MANY_ATTEMPTS,
            p::DELIVERY_FAILED,
            p::FACTOR_LOCKED,
        ],
    ]
);

/// A login code to a verified contact.
#[utoipa::path(
    post,
    path = "/user/send-otp",
    operation_id = "send_otp",
    tag = "user",
    security(("bearer" = [])),
    request_body = SendRequest,
    responses((status = 202, description = "a login code is on its way", body = Sent), SendProblems)
)]
pub async fn send(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<SendRequest>,
) -> Result<Response, Error> {
    let sent = state.factors.send_login_code(&id, req.otp_type).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Sent {
            sent_to: sent.sent_to,
            expires_at: sent.expires_at,
        }),
    )
        .into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VerifyOtpRequest)]
pub struct VerifyRequest {
    /// The code as received (at most 32 characters).
    #[schema(min_length = 1, max_length = 32)]
    otp: String,
    otp_type: Channel,
    /// Without it: `contact` if a change is pending on that channel, else
    /// `login`.
    #[serde(default)]
    purpose: Option<Purpose>,
}

/// The code was right.
#[derive(Serialize, ToSchema)]
pub struct OtpVerified {
    verified: bool,
    /// `contact`: the pending contact is now the verified one; `login`: the
    /// session is verified.
    purpose: Purpose,
}

problems!(
    VerifyProblems = [
        AUTH,
        BODY,
        STORE,
        VERIFY,
        &[p::PROFILE_NOT_FOUND, p::NO_PENDING_CODE],
    ]
);

/// A login code, or the code of a pending contact change.
#[utoipa::path(
    post,
    path = "/user/verify-otp",
    operation_id = "verify_otp",
    tag = "user",
    security(("bearer" = [])),
    request_body = VerifyRequest,
    responses((status = 200, description = "the code was right", body = OtpVerified), VerifyProblems)
)]
pub async fn verify(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Json<OtpVerified>, Error> {
    bounded_code("otp", &req.otp, MAX_OTP_INPUT)?;
    let purpose = state
        .factors
        .verify_code(&id, req.otp_type, req.purpose, &req.otp)
        .await?;
    Ok(Json(OtpVerified {
        verified: true,
        purpose,
    }))
}
