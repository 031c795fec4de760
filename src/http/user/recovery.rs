//! `POST /user/verify-recovery-code` and `POST /user/recovery-codes`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{bounded_code, no_store, Auth};
use crate::app::AppState;
use crate::error::Error;
use crate::http::ApiJson;

/// Longer than any code with generous spacing, short enough to bound work.
const MAX_CODE_INPUT: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    code: String,
}

/// `POST /user/verify-recovery-code`: spends the code and marks the session
/// verified with `recovery`.
pub async fn verify(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Response, Error> {
    bounded_code("code", &req.code, MAX_CODE_INPUT)?;
    let remaining = state.factors.verify_recovery_code(&id, &req.code).await?;
    Ok(no_store(
        StatusCode::OK,
        json!({ "verified": true, "recovery_codes_remaining": remaining }),
    ))
}

/// `POST /user/recovery-codes`: a new set replacing the old one, shown once.
pub async fn regenerate(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
) -> Result<Response, Error> {
    let codes = state.factors.regenerate_recovery_codes(&id).await?;
    Ok(no_store(
        StatusCode::CREATED,
        json!({ "recovery_codes": codes }),
    ))
}
