//! `POST /user`, `GET /user`, `PATCH /user`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{normalize_email, normalize_mobile, Auth};
use crate::app::AppState;
use crate::error::{problems as p, Error};
use crate::factor::service::{email_verified, mobile_verified};
use crate::http::openapi::{problems, AUTH, BODY, STORE};
use crate::http::ApiJson;
use crate::store::{Factor, Profile};
use crate::token::Identity;

/// The profile document of INTERFACE.md section 5.
#[derive(Serialize, ToSchema)]
#[schema(as = Profile)]
pub struct ProfileDoc {
    /// The token's `sub`.
    subject: String,
    username: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    email_verified: bool,
    /// E.164.
    mobile: Option<String>,
    mobile_verified: bool,
    totp_enabled: bool,
    recovery_codes_remaining: u32,
    /// The second factors this user can pass now.
    #[schema(value_type = Vec<Factor>)]
    methods: Vec<String>,
    session: SessionDoc,
    /// Contact changes waiting for their code.
    pending: Pending,
    /// Unix seconds.
    created_at: i64,
    /// Unix seconds.
    updated_at: i64,
}

/// The second-factor state of the token's session.
#[derive(Serialize, ToSchema)]
pub struct SessionDoc {
    /// The factor this session passed, if any.
    second_factor: Option<Factor>,
    /// Unix seconds.
    verified_at: Option<i64>,
    /// Unix seconds: when the verified state ends.
    expires_at: Option<i64>,
}

/// New contacts that replace the verified ones once their code is verified
/// (`POST /user/verify-otp`).
#[derive(Serialize, ToSchema, Default)]
pub struct Pending {
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mobile: Option<String>,
}

async fn render(state: &AppState, id: &Identity, p: &Profile) -> Result<ProfileDoc, Error> {
    let o = state.factors.overview(id, p).await?;
    Ok(ProfileDoc {
        subject: p.subject.clone(),
        username: p.username.clone(),
        first_name: p.first_name.clone(),
        last_name: p.last_name.clone(),
        email: p.email.clone(),
        email_verified: email_verified(p),
        mobile: p.mobile.clone(),
        mobile_verified: mobile_verified(p),
        totp_enabled: o.enrolled.totp,
        recovery_codes_remaining: o.enrolled.recovery_codes,
        methods: o.methods,
        session: SessionDoc {
            second_factor: o.session.map(|v| v.factor),
            verified_at: o.session.map(|v| v.at),
            expires_at: o.session_expires_at,
        },
        pending: Pending {
            email: p.pending_email.clone(),
            mobile: p.pending_mobile.clone(),
        },
        created_at: p.created_at,
        updated_at: p.updated_at,
    })
}

problems!(CreateProblems = [AUTH, STORE, &[p::PROFILE_EXISTS, p::KEYCLOAK_ADMIN_FAILED],]);

/// The profile from the token's claims and, with the admin client,
/// Keycloak's mobile attributes.
#[utoipa::path(
    post,
    path = "/user",
    operation_id = "create_profile",
    tag = "user",
    security(("bearer" = [])),
    responses((status = 201, description = "the profile", body = ProfileDoc), CreateProblems)
)]
pub async fn create(State(state): State<Arc<AppState>>, Auth(id): Auth) -> Result<Response, Error> {
    let p = state.factors.create_profile(&id).await?;
    let body = render(&state, &id, &p).await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

problems!(GetProblems = [AUTH, STORE, &[p::PROFILE_NOT_FOUND]]);

/// The profile of the token's `sub`.
#[utoipa::path(
    get,
    path = "/user",
    operation_id = "get_profile",
    tag = "user",
    security(("bearer" = [])),
    responses((status = 200, description = "the profile", body = ProfileDoc), GetProblems)
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
) -> Result<Json<ProfileDoc>, Error> {
    let p = state.factors.profile(&id).await?;
    Ok(Json(render(&state, &id, &p).await?))
}

/// At least one of the two.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchRequest {
    #[serde(default)]
    #[schema(format = Email, max_length = 254)]
    email: Option<String>,
    /// E.164, e.g. `+14155550123`, and valid under its country's numbering
    /// plan (422 `invalid_mobile` otherwise).
    #[serde(default)]
    #[schema(pattern = r"^\+[1-9][0-9]{6,14}$")]
    mobile: Option<String>,
}

/// Codes were sent to the new contacts.
#[derive(Serialize, ToSchema)]
pub struct PatchAccepted {
    pending: Pending,
    /// Unix seconds: the codes' expiry.
    expires_at: i64,
}

problems!(
    PatchProblems = [
        AUTH,
        BODY,
        STORE,
        &[
            p::PROFILE_NOT_FOUND,
            p::INVALID_EMAIL,
            p::INVALID_MOBILE,
            p::SECOND_FACTOR_REQUIRED,
            p::RESEND_TOO_SOON,
            p::TOO_MANY_ATTEMPTS,
            p::DELIVERY_FAILED,
        ],
    ]
);

/// A code goes to each new contact, which replaces the old one only once
/// its code is verified (`POST /user/verify-otp`). Needs a recent second
/// factor once the user has one.
#[utoipa::path(
    patch,
    path = "/user",
    operation_id = "patch_profile",
    tag = "user",
    security(("bearer" = [])),
    request_body = PatchRequest,
    responses((status = 202, description = "codes were sent to the new contacts", body = PatchAccepted), PatchProblems)
)]
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
    Ok((
        StatusCode::ACCEPTED,
        Json(PatchAccepted {
            pending: Pending {
                email: out.email,
                mobile: out.mobile,
            },
            expires_at: out.expires_at,
        }),
    )
        .into_response())
}
