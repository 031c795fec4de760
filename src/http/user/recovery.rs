//! `POST /user/verify-recovery-code` and `POST /user/recovery-codes`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{bounded_code, no_store, Auth};
use crate::app::AppState;
use crate::error::{problems as p, Error};
use crate::http::openapi::{problems, AUTH, BODY, STORE, VERIFY};
use crate::http::ApiJson;

/// Longer than any code with generous spacing, short enough to bound work.
const MAX_CODE_INPUT: usize = 64;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VerifyRecoveryCodeRequest)]
pub struct VerifyRequest {
    /// A recovery code; case and dashes are ignored.
    #[schema(min_length = 1, max_length = 64)]
    code: String,
}

/// The code was right and is now spent.
#[derive(Serialize, ToSchema)]
pub struct RecoveryVerified {
    verified: bool,
    recovery_codes_remaining: usize,
}

/// A new set of recovery codes, shown this once.
#[derive(Serialize, ToSchema)]
pub struct RecoveryCodes {
    recovery_codes: Vec<String>,
}

problems!(VerifyProblems = [AUTH, BODY, STORE, VERIFY, &[p::PROFILE_NOT_FOUND, p::BUSY],]);

/// Spends a recovery code; the session becomes verified with `recovery`.
#[utoipa::path(
    post,
    path = "/user/verify-recovery-code",
    operation_id = "verify_recovery_code",
    tag = "user",
    security(("bearer" = [])),
    request_body = VerifyRequest,
    responses((status = 200, description = "the code was right and is spent", body = RecoveryVerified), VerifyProblems)
)]
pub async fn verify(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Response, Error> {
    bounded_code("code", &req.code, MAX_CODE_INPUT)?;
    let remaining = state.factors.verify_recovery_code(&id, &req.code).await?;
    Ok(no_store(
        StatusCode::OK,
        RecoveryVerified {
            verified: true,
            recovery_codes_remaining: remaining,
        },
    ))
}

problems!(
    RegenerateProblems = [
        AUTH,
        STORE,
        &[
            p::INVALID_REQUEST,
            p::PROFILE_NOT_FOUND,
            p::SECOND_FACTOR_REQUIRED,
            p::FACTOR_LOCKED,
            p::BUSY,
        ],
    ]
);

/// A new set replacing the old one, shown once. Needs a recent second
/// factor.
#[utoipa::path(
    post,
    path = "/user/recovery-codes",
    operation_id = "regenerate_recovery_codes",
    tag = "user",
    security(("bearer" = [])),
    responses((status = 201, description = "a new set of recovery codes, shown once", body = RecoveryCodes), RegenerateProblems)
)]
pub async fn regenerate(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
) -> Result<Response, Error> {
    let codes = state.factors.regenerate_recovery_codes(&id).await?;
    Ok(no_store(
        StatusCode::CREATED,
        RecoveryCodes {
            recovery_codes: codes,
        },
    ))
}
