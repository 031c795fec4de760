//! `POST /user`, `GET /user`, `PATCH /user`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{load_profile, normalize_email, normalize_mobile, Auth};
use crate::app::AppState;
use crate::delivery::mask_email;
use crate::error::Error;
use crate::factor::otp::{self, Binding, Channel, Issued, Purpose};
use crate::factor::{self, Enrolled};
use crate::http::ApiJson;
use crate::store::Profile;
use crate::token::Identity;

/// Names from tokens are bounded before they are stored.
const MAX_NAME: usize = 255;

fn bounded(s: Option<&str>) -> Option<String> {
    s.map(|s| s.chars().take(MAX_NAME).collect())
}

/// The profile document of INTERFACE.md section 5.
pub async fn render(state: &AppState, id: &Identity, p: &Profile) -> Result<Value, Error> {
    let e: Enrolled = factor::enrolled(state, &p.subject).await?;
    let methods = factor::available_methods(state, id, p, e);
    factor::publish_methods(state, id, &methods).await;
    let session = factor::session_verified(state, id).await?;
    let ttl = state.cfg.security.second_factor_ttl.as_secs() as i64;
    let mut pending = serde_json::Map::new();
    if let Some(e) = &p.pending_email {
        pending.insert("email".into(), json!(e));
    }
    if let Some(m) = &p.pending_mobile {
        pending.insert("mobile".into(), json!(m));
    }
    Ok(json!({
        "subject": p.subject,
        "username": p.username,
        "first_name": p.first_name,
        "last_name": p.last_name,
        "email": p.email,
        "email_verified": factor::email_verified(p, id),
        "mobile": p.mobile,
        "mobile_verified": p.mobile_verified && p.mobile.is_some(),
        "totp_enabled": e.totp,
        "recovery_codes_remaining": e.recovery_codes,
        "methods": methods,
        "session": {
            "second_factor": session.map(|v| v.factor.as_str()),
            "verified_at": session.map(|v| v.at),
            "expires_at": session.map(|v| v.at + ttl),
        },
        "pending": pending,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    }))
}

/// `POST /user`: the profile from the token's claims and, with the admin
/// client, Keycloak's mobile attributes. Keycloak is asked before anything
/// is written: if it fails, there is no profile, not half of one.
pub async fn create(State(state): State<Arc<AppState>>, Auth(id): Auth) -> Result<Response, Error> {
    if state.profiles.get_profile(id.sub()).await?.is_some() {
        return Err(Error::ProfileExists);
    }
    let (mobile, mobile_verified) = match &state.keycloak_admin {
        Some(admin) => {
            let m = admin.mobile(id.sub()).await?;
            match m.number.as_deref().map(normalize_mobile) {
                Some(Ok(n)) => (Some(n), m.verified),
                Some(Err(_)) => {
                    tracing::warn!(
                        attribute = %state.cfg.keycloak.mobile_attribute,
                        "ignoring a Keycloak mobile number that is not a valid international number"
                    );
                    (None, false)
                }
                None => (None, false),
            }
        }
        None => (None, false),
    };
    let email = id.email().and_then(|e| normalize_email(e).ok());
    let now = state.clock.now();
    let p = Profile {
        subject: id.sub().to_string(),
        username: bounded(id.username()),
        first_name: bounded(id.given_name()),
        last_name: bounded(id.family_name()),
        email_verified: email.is_some() && id.email_verified(),
        email,
        mobile,
        mobile_verified,
        pending_email: None,
        pending_mobile: None,
        created_at: now,
        updated_at: now,
    };
    if !state.profiles.create_profile(&p).await? {
        return Err(Error::ProfileExists);
    }
    let body = render(&state, &id, &p).await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn get(State(state): State<Arc<AppState>>, Auth(id): Auth) -> Result<Json<Value>, Error> {
    let p = load_profile(&state, &id).await?;
    Ok(Json(render(&state, &id, &p).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    mobile: Option<String>,
}

/// `PATCH /user`: a code goes to each new contact, which replaces the old
/// one only once its code is verified (`POST /user/verify-otp`). Needs a
/// verified session once the user has any factor.
pub async fn patch(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<PatchRequest>,
) -> Result<Response, Error> {
    if req.email.is_none() && req.mobile.is_none() {
        return Err(Error::InvalidRequest(
            "give `email`, `mobile` or both".into(),
        ));
    }
    let email = req.email.as_deref().map(normalize_email).transpose()?;
    let mobile = req.mobile.as_deref().map(normalize_mobile).transpose()?;
    let mut p = load_profile(&state, &id).await?;
    factor::require_verified_session(&state, &id, &p).await?;

    // Asking for the contact one already has verified cancels a pending
    // change instead of sending a code.
    let email = email.filter(|e| {
        !(factor::email_verified(&p, &id)
            && p.email
                .as_deref()
                .is_some_and(|cur| cur.eq_ignore_ascii_case(e)))
    });
    let mobile = mobile.filter(|m| !(p.mobile_verified && p.mobile.as_deref() == Some(m.as_str())));
    let before = p.clone();
    if req.email.is_some() {
        p.pending_email = email.clone();
    }
    if req.mobile.is_some() {
        p.pending_mobile = mobile.clone();
    }

    let sec = &state.cfg.security;
    let u = factor::user_key(&id);
    let mut issued: Vec<(Channel, String, Issued)> = Vec::new();
    for (channel, dest) in [(Channel::Email, &email), (Channel::Mobile, &mobile)] {
        let Some(dest) = dest else { continue };
        let b = Binding {
            purpose: Purpose::Contact,
            channel,
            destination: dest,
            session: None,
        };
        match otp::issue(
            state.ephemeral.as_ref(),
            &state.keys,
            &u,
            &b,
            sec.otp_length as usize,
            sec.otp_ttl.get(),
            sec.otp_resend_interval.get(),
        )
        .await
        {
            Ok(i) => issued.push((channel, dest.clone(), i)),
            Err(e) => {
                for (_, _, i) in &issued {
                    otp::revoke(state.ephemeral.as_ref(), i).await;
                }
                return Err(e);
            }
        }
    }

    if p != before {
        p.updated_at = state.clock.now();
        if let Err(e) = state.profiles.update_profile(&p).await {
            for (_, _, i) in &issued {
                otp::revoke(state.ephemeral.as_ref(), i).await;
            }
            return Err(e.into());
        }
    }

    let mut failed = false;
    for (channel, dest, i) in &issued {
        let sent = match channel {
            Channel::Email => {
                state
                    .delivery
                    .send_email_code(
                        dest,
                        &i.code,
                        sec.otp_ttl.get(),
                        Purpose::Contact,
                        id.locale(),
                    )
                    .await
            }
            Channel::Mobile => {
                state
                    .delivery
                    .send_sms_code(dest, &i.code, sec.otp_ttl.get(), id.locale())
                    .await
            }
        };
        if sent.is_err() {
            otp::revoke(state.ephemeral.as_ref(), i).await;
            // The contact that could not be reached is not left pending.
            match channel {
                Channel::Email => p.pending_email = before.pending_email.clone(),
                Channel::Mobile => p.pending_mobile = before.pending_mobile.clone(),
            }
            failed = true;
        }
    }
    if failed {
        if let Err(e) = state.profiles.update_profile(&p).await {
            tracing::warn!(error = %e, "could not withdraw an undeliverable pending contact");
        }
        return Err(Error::DeliveryFailed);
    }

    let mut pending = serde_json::Map::new();
    for (channel, dest, _) in &issued {
        match channel {
            Channel::Email => pending.insert("email".into(), json!(dest)),
            Channel::Mobile => pending.insert("mobile".into(), json!(dest)),
        };
    }
    tracing::info!(
        email = email.as_deref().map(mask_email).unwrap_or_default(),
        mobile = mobile.is_some(),
        "contact change pending verification"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "pending": pending,
            "expires_at": state.clock.now() + sec.otp_ttl.as_secs() as i64,
        })),
    )
        .into_response())
}
