//! `POST /user/generate-totp`, `POST /user/verify-totp`, `DELETE /user/totp`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{load_profile, Auth};
use crate::app::AppState;
use crate::delivery::{Notice, Recipients};
use crate::error::Error;
use crate::factor::totp::{self as t, Params, TotpSecret};
use crate::factor::{self, qr, recovery};
use crate::http::ApiJson;
use crate::store::{Factor, Profile};
use crate::token::Identity;

/// Longer than any code (8 digits, maybe spaced), short enough to bound work.
const MAX_TOTP_INPUT: usize = 32;

/// Answers that carry a secret or recovery codes must not be kept by any
/// cache between the user and us.
pub fn no_store(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

pub fn method_enabled(state: &AppState, m: Factor) -> Result<(), Error> {
    if state.cfg.security.methods.iter().any(|x| x == m.as_str()) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "`{}` is not an enabled second factor here",
            m.as_str()
        )))
    }
}

/// Where change notices go: the verified contacts (a Keycloak-verified
/// email counts).
pub fn notice_recipients(p: &Profile, id: &Identity) -> Recipients {
    Recipients {
        email: p.email.clone().filter(|_| factor::email_verified(p, id)),
        mobile: p.mobile.clone().filter(|_| p.mobile_verified),
        locale: id.locale().map(String::from),
    }
}

/// The account name in the authenticator app: the username, else the
/// email, else the subject.
fn account_name(p: &Profile, id: &Identity) -> String {
    id.username()
        .map(String::from)
        .or_else(|| p.username.clone())
        .or_else(|| id.email().map(String::from))
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| id.sub().to_string())
        .chars()
        .take(128)
        .collect()
}

/// `POST /user/generate-totp`: a new pending secret, its otpauth URI and QR
/// codes. Needs a verified session once the user has any factor.
pub async fn generate(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
) -> Result<Response, Error> {
    method_enabled(&state, Factor::Totp)?;
    let p = load_profile(&state, &id).await?;
    factor::require_verified_session(&state, &id, &p).await?;
    if state.profiles.get_totp(id.sub()).await?.is_some() {
        return Err(Error::TotpAlreadyEnabled);
    }
    let cfg = &state.cfg;
    let secret = TotpSecret::generate(Params::from_config(&cfg.totp));
    let uri = secret.otpauth_uri(&cfg.totp.issuer, &account_name(&p, &id));
    let (png, svg) = {
        let u = uri.clone();
        tokio::task::spawn_blocking(move || {
            Ok::<_, qr::QrError>((qr::png_base64(&u)?, qr::svg(&u)?))
        })
        .await
        .map_err(|e| Error::Internal(format!("QR worker: {e}")))?
        .map_err(|e| Error::Internal(format!("QR code: {e}")))?
    };
    let expires_at = t::put_pending(
        state.ephemeral.as_ref(),
        &state.keys,
        &factor::user_key(&id),
        id.sub(),
        &secret,
        cfg.security.pending_totp_ttl.get(),
        state.clock.now(),
    )
    .await?;
    tracing::info!("TOTP secret generated, waiting for confirmation");
    Ok(no_store(
        StatusCode::CREATED,
        json!({
            "secret": secret.base32(),
            "otpauth_uri": uri,
            "qr_png": png,
            "qr_svg": svg,
            "expires_at": expires_at,
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
/// (enables TOTP, issues recovery codes); otherwise the enrolled secret is
/// checked. Either way the session becomes verified with `totp`. Wrong
/// codes and replayed time steps count against the user's attempt budget.
pub async fn verify(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Response, Error> {
    if req.totp.trim().is_empty() || req.totp.len() > MAX_TOTP_INPUT {
        return Err(Error::InvalidRequest(format!(
            "`totp` is 1 to {MAX_TOTP_INPUT} characters"
        )));
    }
    method_enabled(&state, Factor::Totp)?;
    let p = load_profile(&state, &id).await?;
    factor::require_sid(&id)?;
    factor::guard(&state, &id).await?;

    let u = factor::user_key(&id);
    let secret = if req.is_new_seed {
        if state.profiles.get_totp(id.sub()).await?.is_some() {
            return Err(Error::TotpAlreadyEnabled);
        }
        let now = state.clock.now();
        match t::get_pending(state.ephemeral.as_ref(), &state.keys, &u, id.sub(), now).await? {
            Some(s) => s,
            None => {
                factor::record_verification(&state, Factor::Totp, "no_pending");
                return Err(Error::NoPendingTotp);
            }
        }
    } else {
        match t::get_enrolled(state.profiles.as_ref(), &state.keys, id.sub()).await? {
            Some(s) => s,
            None => {
                factor::record_verification(&state, Factor::Totp, "no_pending");
                return Err(Error::TotpNotEnabled);
            }
        }
    };

    let now = state.clock.now();
    let Some(m) = secret.verify(&req.totp, now, state.cfg.totp.skew) else {
        return Err(factor::wrong_code(&state, &id, Factor::Totp).await);
    };
    // Every match goes through here: a step accepted once (also by a
    // parallel request) is never accepted again.
    if !state
        .profiles
        .accept_totp_step(id.sub(), m.step_start)
        .await?
    {
        tracing::info!("TOTP code refused: its time step was already used");
        return Err(factor::wrong_code(&state, &id, Factor::Totp).await);
    }

    let recovery_codes = if req.is_new_seed {
        Some(confirm(&state, &id, &u, &secret).await?)
    } else {
        None
    };
    factor::mark_session_verified(&state, &id, Factor::Totp).await?;
    if let Err(e) = factor::right_code(&state, &id, Factor::Totp).await {
        tracing::warn!(error = %e, "could not reset the attempt counters after a success");
    }
    match recovery_codes {
        Some(codes) => {
            tracing::info!("TOTP enrolled");
            state
                .delivery
                .notify(notice_recipients(&p, &id), Notice::TotpEnrolled);
            Ok(no_store(
                StatusCode::OK,
                json!({ "verified": true, "recovery_codes": codes }),
            ))
        }
        None => Ok(no_store(StatusCode::OK, json!({ "verified": true }))),
    }
}

/// Enables the confirmed pending secret and issues the recovery codes.
async fn confirm(
    state: &AppState,
    id: &Identity,
    u: &str,
    secret: &TotpSecret,
) -> Result<Vec<String>, Error> {
    let rec = t::seal_record(&state.keys, id.sub(), secret, state.clock.now())?;
    if !state.profiles.insert_totp(id.sub(), &rec).await? {
        // A parallel confirmation (of another pending secret) won.
        return Err(Error::TotpAlreadyEnabled);
    }
    if let Err(e) = t::clear_pending(state.ephemeral.as_ref(), u).await {
        // It lapses by itself; confirming it again fails with 409.
        tracing::warn!(error = %e, "could not remove the confirmed pending TOTP secret");
    }
    let n = state.cfg.security.recovery_code_count as usize;
    match recovery::issue(state.profiles.as_ref(), &state.hashing, id.sub(), n).await {
        Ok(codes) => Ok(codes),
        Err(e) => {
            // Without its recovery codes the enrollment is not complete:
            // undo it, so the user can simply try again.
            let _ = state.profiles.delete_totp(id.sub()).await;
            Err(e)
        }
    }
}

/// `DELETE /user/totp`. Needs a verified session. Recovery codes stay: they
/// are a factor of their own.
pub async fn remove(State(state): State<Arc<AppState>>, Auth(id): Auth) -> Result<Response, Error> {
    let p = load_profile(&state, &id).await?;
    factor::require_verified_session(&state, &id, &p).await?;
    if !state.profiles.delete_totp(id.sub()).await? {
        return Err(Error::TotpNotEnabled);
    }
    let _ = t::clear_pending(state.ephemeral.as_ref(), &factor::user_key(&id)).await;
    tracing::info!("TOTP removed");
    state
        .delivery
        .notify(notice_recipients(&p, &id), Notice::TotpRemoved);
    Ok(StatusCode::NO_CONTENT.into_response())
}
