//! `POST /user`, `GET /user`, `PATCH /user`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{normalize_email, normalize_mobile, Auth};
use crate::app::AppState;
use crate::error::Error;
use crate::factor::service::{email_verified, mobile_verified};
use crate::http::ApiJson;
use crate::store::Profile;
use crate::token::Identity;

/// The profile document of INTERFACE.md section 5.
async fn render(state: &AppState, id: &Identity, p: &Profile) -> Result<Value, Error> {
    let o = state.factors.overview(id, p).await?;
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
        "email_verified": email_verified(p),
        "mobile": p.mobile,
        "mobile_verified": mobile_verified(p),
        "totp_enabled": o.enrolled.totp,
        "recovery_codes_remaining": o.enrolled.recovery_codes,
        "methods": o.methods,
        "session": {
            "second_factor": o.session.map(|v| v.factor.as_str()),
            "verified_at": o.session.map(|v| v.at),
            "expires_at": o.session_expires_at,
        },
        "pending": pending,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    }))
}

/// `POST /user`: the profile from the token's claims and, with the admin
/// client, Keycloak's mobile attributes.
pub async fn create(State(state): State<Arc<AppState>>, Auth(id): Auth) -> Result<Response, Error> {
    let p = state.factors.create_profile(&id).await?;
    let body = render(&state, &id, &p).await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn get(State(state): State<Arc<AppState>>, Auth(id): Auth) -> Result<Json<Value>, Error> {
    let p = state.factors.profile(&id).await?;
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
/// one only once its code is verified (`POST /user/verify-otp`).
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
    let out = state.factors.change_contacts(&id, email, mobile).await?;
    let mut pending = serde_json::Map::new();
    if let Some(e) = out.email {
        pending.insert("email".into(), json!(e));
    }
    if let Some(m) = out.mobile {
        pending.insert("mobile".into(), json!(m));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "pending": pending, "expires_at": out.expires_at })),
    )
        .into_response())
}
