//! `POST /user/send-otp` (a login code to a verified contact) and
//! `POST /user/verify-otp` (a login code, or the code of a contact change).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{load_profile, Auth};
use crate::app::AppState;
use crate::delivery::{mask_email, mask_mobile, Notice, Recipients};
use crate::error::Error;
use crate::factor;
use crate::factor::otp::{self, Binding, Channel, Check, Purpose};
use crate::http::ApiJson;
use crate::store::Profile;
use crate::token::Identity;

/// Longer than any code we issue, short enough to bound the work.
const MAX_OTP_INPUT: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    otp_type: Channel,
}

/// The verified contact of `channel` that login codes go to.
fn verified_contact(p: &Profile, id: &Identity, channel: Channel) -> Option<String> {
    match channel {
        Channel::Email => p.email.clone().filter(|_| factor::email_verified(p, id)),
        Channel::Mobile => p.mobile.clone().filter(|_| p.mobile_verified),
    }
}

fn method_enabled(state: &AppState, channel: Channel) -> Result<(), Error> {
    let m = channel.factor().as_str();
    if state.cfg.security.methods.iter().any(|x| x == m) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "`{m}` is not an enabled second factor here"
        )))
    }
}

pub async fn send(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<SendRequest>,
) -> Result<Response, Error> {
    let channel = req.otp_type;
    method_enabled(&state, channel)?;
    factor::require_sid(&id)?;
    // Present whenever `sid` is (both come from the same claim).
    let session = id
        .session_key()
        .map(|k| k.hex().to_string())
        .unwrap_or_default();
    let p = load_profile(&state, &id).await?;
    let dest = verified_contact(&p, &id, channel).ok_or(Error::ContactNotVerified)?;
    factor::guard(&state, &id).await?;

    let sec = &state.cfg.security;
    let b = Binding {
        purpose: Purpose::Login,
        channel,
        destination: &dest,
        session: Some(&session),
    };
    let issued = otp::issue(
        state.ephemeral.as_ref(),
        &state.keys,
        &factor::user_key(&id),
        &b,
        sec.otp_length as usize,
        sec.otp_ttl.get(),
        sec.otp_resend_interval.get(),
    )
    .await?;
    let ttl = sec.otp_ttl.get();
    let sent = match channel {
        Channel::Email => {
            state
                .delivery
                .send_email_code(&dest, &issued.code, ttl, Purpose::Login, id.locale())
                .await
        }
        Channel::Mobile => {
            state
                .delivery
                .send_sms_code(&dest, &issued.code, ttl, id.locale())
                .await
        }
    };
    if let Err(e) = sent {
        otp::revoke(state.ephemeral.as_ref(), &issued).await;
        return Err(e);
    }
    let masked = match channel {
        Channel::Email => mask_email(&dest),
        Channel::Mobile => mask_mobile(&dest),
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "sent_to": masked,
            "expires_at": state.clock.now() + ttl.as_secs() as i64,
        })),
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
    if req.otp.trim().is_empty() || req.otp.len() > MAX_OTP_INPUT {
        return Err(Error::InvalidRequest(format!(
            "`otp` is 1 to {MAX_OTP_INPUT} characters"
        )));
    }
    let channel = req.otp_type;
    let p = load_profile(&state, &id).await?;
    let pending = match channel {
        Channel::Email => p.pending_email.clone(),
        Channel::Mobile => p.pending_mobile.clone(),
    };
    let purpose = req.purpose.unwrap_or(if pending.is_some() {
        Purpose::Contact
    } else {
        Purpose::Login
    });
    let method = channel.factor();
    let session = match purpose {
        Purpose::Login => {
            method_enabled(&state, channel)?;
            factor::require_sid(&id)?;
            id.session_key().map(|k| k.hex().to_string())
        }
        Purpose::Contact => None,
    };
    factor::guard(&state, &id).await?;

    let dest = match purpose {
        Purpose::Contact => pending,
        Purpose::Login => verified_contact(&p, &id, channel),
    };
    let Some(dest) = dest else {
        factor::record_verification(&state, method, "no_pending");
        return Err(Error::NoPendingCode);
    };
    let b = Binding {
        purpose,
        channel,
        destination: &dest,
        session: session.as_deref(),
    };
    let u = factor::user_key(&id);
    let restore = match otp::check(state.ephemeral.as_ref(), &state.keys, &u, &b, &req.otp).await? {
        Check::NoPending => {
            factor::record_verification(&state, method, "no_pending");
            return Err(Error::NoPendingCode);
        }
        Check::Wrong => return Err(factor::wrong_code(&state, &id, method).await),
        Check::Consumed(r) => r,
    };

    // The code is consumed. If what it should achieve fails, it is put
    // back, so that the user can retry without a new code.
    let done = match purpose {
        Purpose::Login => factor::mark_session_verified(&state, &id, method)
            .await
            .map(|_| ()),
        Purpose::Contact => apply_contact(&state, &id, channel, &dest).await,
    };
    if let Err(e) = done {
        restore.put_back(state.ephemeral.as_ref()).await;
        return Err(e);
    }
    if let Err(e) = factor::right_code(&state, &id, method).await {
        // The verification itself succeeded; a counter that could not be
        // reset only means the next wrong code counts from a higher number.
        tracing::warn!(error = %e, "could not reset the attempt counters after a success");
    }
    Ok(Json(
        json!({ "verified": true, "purpose": purpose.as_str() }),
    ))
}

/// The pending contact becomes the verified one: first in Keycloak (when
/// `keycloak.sync_verified_contacts` and the admin client are on), then in
/// the profile, so a Keycloak failure leaves our side unchanged. The old
/// verified contact is told.
async fn apply_contact(
    state: &Arc<AppState>,
    id: &Identity,
    channel: Channel,
    new: &str,
) -> Result<(), Error> {
    if state.cfg.keycloak.sync_verified_contacts {
        if let Some(admin) = &state.keycloak_admin {
            match channel {
                Channel::Email => admin.set_verified_email(id.sub(), new).await?,
                Channel::Mobile => admin.set_verified_mobile(id.sub(), new).await?,
            }
        }
    }
    // Read again: the profile may have changed (another channel's PATCH)
    // while the code was checked and Keycloak was written.
    let mut p = load_profile(state, id).await?;
    let mut notice_to = Recipients {
        locale: id.locale().map(String::from),
        ..Recipients::default()
    };
    let notice = match channel {
        Channel::Email => {
            let old = p.email.clone().filter(|_| factor::email_verified(&p, id));
            notice_to.email = old.filter(|o| !o.eq_ignore_ascii_case(new));
            p.email = Some(new.to_string());
            p.email_verified = true;
            if p.pending_email.as_deref() == Some(new) {
                p.pending_email = None;
            }
            Notice::EmailChanged {
                new: new.to_string(),
            }
        }
        Channel::Mobile => {
            let old = p.mobile.clone().filter(|_| p.mobile_verified);
            notice_to.mobile = old.filter(|o| o != new);
            p.mobile = Some(new.to_string());
            p.mobile_verified = true;
            if p.pending_mobile.as_deref() == Some(new) {
                p.pending_mobile = None;
            }
            Notice::MobileChanged {
                new: new.to_string(),
            }
        }
    };
    p.updated_at = state.clock.now();
    if !state.profiles.update_profile(&p).await? {
        return Err(Error::ProfileNotFound);
    }
    state.delivery.notify(notice_to, notice);
    Ok(())
}
