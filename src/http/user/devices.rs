//! Remembered devices: `POST`/`GET /user/remembered-devices`,
//! `DELETE /user/remembered-devices/{id}` and `POST /user/verify-device`
//! (docs/remembered-devices.md). With `security.remember_device_ttl = 0`
//! every one answers 404 `remembered_devices_disabled`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{bounded_code, no_store, Auth};
use crate::app::AppState;
use crate::error::{problems as p, Error};
use crate::factor::device::{normalize_name, DeviceView};
use crate::http::openapi::{problems, AUTH, BODY, STORE, VERIFY};
use crate::http::ApiJson;

/// Longer than any token this service issues (43 characters), short enough
/// to bound work.
const MAX_TOKEN_INPUT: usize = 128;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RememberDeviceRequest)]
pub struct RememberRequest {
    /// What the user calls this device ("Work laptop"); at most 64
    /// characters.
    #[schema(max_length = 64)]
    name: Option<String>,
}

/// A device token, shown once: the frontend keeps it on this device and
/// sends it to `POST /user/verify-device` in a later session.
#[derive(Serialize, ToSchema)]
pub struct RememberedDevice {
    id: String,
    /// base64url, 256 random bits. Only its hash is stored.
    device_token: String,
    /// Unix seconds; using the device does not extend it.
    expires_at: i64,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceEntry {
    id: String,
    name: Option<String>,
    /// Unix seconds.
    created_at: i64,
    /// Unix seconds; null until the device is first used.
    last_used_at: Option<i64>,
    /// Unix seconds.
    expires_at: i64,
}

impl From<DeviceView> for DeviceEntry {
    fn from(d: DeviceView) -> Self {
        DeviceEntry {
            id: d.id,
            name: d.name,
            created_at: d.created_at,
            last_used_at: d.last_used_at,
            expires_at: d.expires_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeviceList {
    devices: Vec<DeviceEntry>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VerifyDeviceRequest)]
pub struct VerifyRequest {
    /// The token this device was given last.
    #[schema(min_length = 1, max_length = 128)]
    device_token: String,
}

/// The session is verified with `device`; the device's next token.
#[derive(Serialize, ToSchema)]
pub struct DeviceVerified {
    verified: bool,
    /// Replaces the token sent: that one no longer works, and sending it
    /// again revokes the device.
    device_token: String,
    /// Unix seconds.
    expires_at: i64,
}

problems!(
    RememberProblems = [
        AUTH,
        BODY,
        STORE,
        &[
            p::PROFILE_NOT_FOUND,
            p::SECOND_FACTOR_REQUIRED,
            p::REMEMBERED_DEVICES_DISABLED,
        ],
    ]
);

/// Remembers this device: a token for the frontend to keep here. Needs a
/// second factor other than `device` passed by this session within
/// `security.sensitive_max_age`.
#[utoipa::path(
    post,
    path = "/user/remembered-devices",
    operation_id = "remember_device",
    tag = "user",
    security(("bearer" = [])),
    request_body(content = RememberRequest, description = "optional"),
    responses((status = 201, description = "the device token, shown once", body = RememberedDevice), RememberProblems)
)]
pub async fn remember(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<RememberRequest>,
) -> Result<Response, Error> {
    let name = normalize_name(req.name.as_deref())?;
    let d = state.factors.remember_device(&id, name).await?;
    Ok(no_store(
        StatusCode::CREATED,
        RememberedDevice {
            id: d.id,
            device_token: d.token,
            expires_at: d.expires_at,
        },
    ))
}

problems!(ListProblems = [AUTH, STORE, &[p::REMEMBERED_DEVICES_DISABLED]]);

/// The user's remembered devices that have not expired, oldest first
/// (never their tokens).
#[utoipa::path(
    get,
    path = "/user/remembered-devices",
    operation_id = "list_remembered_devices",
    tag = "user",
    security(("bearer" = [])),
    responses((status = 200, description = "the remembered devices", body = DeviceList), ListProblems)
)]
pub async fn list(State(state): State<Arc<AppState>>, Auth(id): Auth) -> Result<Response, Error> {
    let devices = state.factors.list_devices(&id).await?;
    Ok(no_store(
        StatusCode::OK,
        DeviceList {
            devices: devices.into_iter().map(DeviceEntry::from).collect(),
        },
    ))
}

problems!(
    ForgetProblems = [
        AUTH,
        STORE,
        &[
            p::PROFILE_NOT_FOUND,
            p::SECOND_FACTOR_REQUIRED,
            p::DEVICE_NOT_FOUND,
            p::REMEMBERED_DEVICES_DISABLED,
        ],
    ]
);

/// Revokes one remembered device: its token stops working. Needs a
/// verified session (any factor).
#[utoipa::path(
    delete,
    path = "/user/remembered-devices/{id}",
    operation_id = "forget_remembered_device",
    tag = "user",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "the device's id")),
    responses((status = 204, description = "the device is revoked"), ForgetProblems)
)]
pub async fn forget(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    Path(device): Path<String>,
) -> Result<Response, Error> {
    // Ids are 32 hex digits; anything else names no device.
    if device.len() > 64 {
        return Err(Error::DeviceNotFound);
    }
    state.factors.forget_device(&id, &device).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

problems!(
    VerifyProblems = [
        AUTH,
        BODY,
        STORE,
        VERIFY,
        &[p::PROFILE_NOT_FOUND, p::REMEMBERED_DEVICES_DISABLED],
    ]
);

/// Verifies this session with a remembered device's token (factor
/// `device`) and rotates the token. An unknown, expired or another user's
/// token is a wrong code; a token the device had already replaced revokes
/// the device and tells the user.
#[utoipa::path(
    post,
    path = "/user/verify-device",
    operation_id = "verify_device",
    tag = "user",
    security(("bearer" = [])),
    request_body = VerifyRequest,
    responses((status = 200, description = "the session is verified; the device's next token", body = DeviceVerified), VerifyProblems)
)]
pub async fn verify(
    State(state): State<Arc<AppState>>,
    Auth(id): Auth,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Response, Error> {
    bounded_code("device_token", &req.device_token, MAX_TOKEN_INPUT)?;
    let d = state.factors.verify_device(&id, &req.device_token).await?;
    Ok(no_store(
        StatusCode::OK,
        DeviceVerified {
            verified: true,
            device_token: d.token,
            expires_at: d.expires_at,
        },
    ))
}
