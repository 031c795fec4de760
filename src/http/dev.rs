//! `POST /dev/token` (dev mode only): tokens from the built-in issuer.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiJson;
use crate::app::AppState;
use crate::error::Error;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    sub: String,
    username: Option<String>,
    email: Option<String>,
    sid: Option<String>,
}

pub async fn token(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Json<Value>, Error> {
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
    Ok(Json(
        json!({ "access_token": t, "token_type": "Bearer", "expires_in": 3600 }),
    ))
}
