//! `POST /dev/token` (dev mode only): tokens from the built-in issuer.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::openapi::{problems, BODY};
use super::ApiJson;
use crate::app::AppState;
use crate::error::{problems as p, Error};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    sub: String,
    username: Option<String>,
    email: Option<String>,
    sid: Option<String>,
}

/// A token of the dev issuer.
#[derive(Serialize, ToSchema)]
pub struct DevToken {
    access_token: String,
    /// `Bearer`.
    token_type: &'static str,
    /// Seconds.
    expires_in: u64,
}

problems!(TokenProblems = [BODY, &[p::NOT_FOUND, p::INTERNAL_ERROR]]);

/// Dev mode only (`serve --dev`): a token signed by the built-in issuer,
/// with `sub`, `preferred_username`, `email`, `email_verified: true` and
/// `sid` (random unless given); it expires in one hour.
#[utoipa::path(
    post,
    path = "/dev/token",
    tag = "dev",
    request_body = TokenRequest,
    responses((status = 200, description = "a token of the dev issuer", body = DevToken), TokenProblems)
)]
pub async fn token(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Json<DevToken>, Error> {
    let issuer = state.dev.as_ref().ok_or(Error::NotFound)?;
    let fields = [
        Some(&req.sub),
        req.username.as_ref(),
        req.email.as_ref(),
        req.sid.as_ref(),
    ];
    if req.sub.is_empty()
        || fields
            .iter()
            .flatten()
            .any(|f| f.len() > 255 || f.chars().any(char::is_control))
    {
        return Err(Error::InvalidRequest(
            "sub is required; fields are at most 255 printable characters".into(),
        ));
    }
    let t = issuer
        .mint(
            &req.sub,
            req.username.as_deref(),
            req.email.as_deref(),
            req.sid.as_deref(),
        )
        .map_err(Error::Internal)?;
    Ok(Json(DevToken {
        access_token: t,
        token_type: "Bearer",
        expires_in: 3600,
    }))
}
