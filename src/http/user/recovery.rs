//! `POST /user/verify-recovery-code` and `POST /user/recovery-codes`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::totp::{method_enabled, no_store, notice_recipients};
use super::{load_profile, Auth};
use crate::app::AppState;
use crate::delivery::Notice;
use crate::error::Error;
use crate::factor::{self, recovery};
use crate::http::ApiJson;
use crate::store::Factor;

/// Longer than any code with generous spacing, short enough to bound work.
const MAX_CODE_INPUT: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    code: String,
}

/// `POST /user/verify-recovery-code`: spends the code and marks the session
/// verified with `recovery`. A wrong (or already spent) code counts against
/// the user's attempt budget.
pub async fn verify(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Response, Error> {
    if req.code.trim().is_empty() || req.code.len() > MAX_CODE_INPUT {
        return Err(Error::InvalidRequest(format!(
            "`code` is 1 to {MAX_CODE_INPUT} characters"
        )));
    }
    method_enabled(&state, Factor::Recovery)?;
    load_profile(&state, &id).await?;
    factor::require_sid(&id)?;
    factor::guard(&state, &id).await?;

    let Some(remaining) =
        recovery::redeem(state.profiles.as_ref(), &state.hashing, id.sub(), &req.code).await?
    else {
        return Err(factor::wrong_code(&state, &id, Factor::Recovery).await);
    };
    factor::mark_session_verified(&state, &id, Factor::Recovery).await?;
    if let Err(e) = factor::right_code(&state, &id, Factor::Recovery).await {
        tracing::warn!(error = %e, "could not reset the attempt counters after a success");
    }
    tracing::info!(remaining, "recovery code used");
    Ok(no_store(
        StatusCode::OK,
        json!({ "verified": true, "recovery_codes_remaining": remaining }),
    ))
}

/// `POST /user/recovery-codes`: a new set replacing the old one, shown once.
/// Needs a verified session.
pub async fn regenerate(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
) -> Result<Response, Error> {
    method_enabled(&state, Factor::Recovery)?;
    let p = load_profile(&state, &id).await?;
    factor::require_verified_session(&state, &id, &p).await?;
    let n = state.cfg.security.recovery_code_count as usize;
    let codes = recovery::issue(state.profiles.as_ref(), &state.hashing, id.sub(), n).await?;
    tracing::info!("recovery codes regenerated");
    state
        .delivery
        .notify(notice_recipients(&p, &id), Notice::RecoveryCodesRegenerated);
    Ok(no_store(
        StatusCode::CREATED,
        json!({ "recovery_codes": codes }),
    ))
}
