//! The one error type of the service: every failure a client can see, with
//! its contract `code()` (INTERFACE.md), its HTTP status and its gRPC status.
//! Rendering happens in exactly two places: `http::problem` (RFC 9457
//! problem+json) and `grpc` (CheckResponse status).

use std::time::Duration;

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a bearer token is required")]
    MissingToken,
    /// The reason is for logs and metrics only; clients get a generic message
    /// so that a forger learns nothing about which check failed.
    #[error("the bearer token is not valid")]
    InvalidToken(&'static str),
    /// `max_age` (seconds) is set when a factor passed longer ago than that
    /// does not count: the "recent second factor" of INTERFACE.md section 5.
    #[error("this request needs a second factor for the current session")]
    SecondFactorRequired {
        methods: Vec<String>,
        max_age: Option<u64>,
    },
    #[error("the authorization decision cannot be made right now")]
    AuthzUnavailable(&'static str),
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the request body does not match what this route takes: {0}")]
    InvalidRequest(String),
    /// A forward-auth request without the headers its proxy always sets
    /// (INTERFACE.md section 4): a misconfigured proxy, never decided.
    #[error(
        "the check request does not name the original request as this endpoint's proxy does: {0}"
    )]
    InvalidCheckRequest(String),
    #[error("the request body is larger than 16 KiB")]
    PayloadTooLarge,
    #[error("a profile already exists for this user")]
    ProfileExists,
    #[error("no profile exists for this user")]
    ProfileNotFound,
    #[error("the email address is not valid")]
    InvalidEmail,
    #[error("the mobile number is not valid: give it in E.164 form, e.g. +14155550123")]
    InvalidMobile,
    #[error("a code was sent recently; wait before asking for another")]
    ResendTooSoon { retry_after: Duration },
    #[error("the code could not be delivered")]
    DeliveryFailed,
    #[error("this contact has not been verified")]
    ContactNotVerified,
    #[error("the code is not valid")]
    InvalidCode { attempts_remaining: u32 },
    #[error("there is no pending code for this channel")]
    NoPendingCode,
    #[error("too many wrong codes; try again later")]
    TooManyAttempts { retry_after: Duration },
    #[error("there is no pending TOTP enrollment")]
    NoPendingTotp,
    #[error("TOTP is not enabled for this user")]
    TotpNotEnabled,
    #[error("TOTP is already enabled for this user")]
    TotpAlreadyEnabled,
    #[error("the second factor of this user is locked; an administrator must reset it")]
    FactorLocked,
    #[error("the logout token is not valid")]
    InvalidLogoutToken(&'static str),
    #[error("not found")]
    NotFound,
    #[error("a backing service is unavailable")]
    StorageUnavailable(String),
    /// Expensive work (password hashing) is at its bound: the caller may
    /// retry, nothing was done. Not in the contract; see the README.
    #[error("the server is busy; try again shortly")]
    Busy { retry_after: Duration },
    #[error("the identity provider's admin API failed")]
    KeycloakAdminFailed(String),
    #[error("internal error")]
    Internal(String),
}

impl Error {
    /// The stable, documented code of INTERFACE.md.
    pub fn code(&self) -> &'static str {
        match self {
            Error::MissingToken => "missing_token",
            Error::InvalidToken(_) => "invalid_token",
            Error::SecondFactorRequired { .. } => "second_factor_required",
            Error::AuthzUnavailable(_) => "authz_unavailable",
            Error::InvalidJson(_) => "invalid_json",
            Error::InvalidRequest(_) | Error::InvalidCheckRequest(_) => "invalid_request",
            Error::PayloadTooLarge => "payload_too_large",
            Error::ProfileExists => "profile_exists",
            Error::ProfileNotFound => "profile_not_found",
            Error::InvalidEmail => "invalid_email",
            Error::InvalidMobile => "invalid_mobile",
            Error::ResendTooSoon { .. } => "resend_too_soon",
            Error::DeliveryFailed => "delivery_failed",
            Error::ContactNotVerified => "contact_not_verified",
            Error::InvalidCode { .. } => "invalid_code",
            Error::NoPendingCode => "no_pending_code",
            Error::TooManyAttempts { .. } => "too_many_attempts",
            Error::NoPendingTotp => "no_pending_totp",
            Error::TotpNotEnabled => "totp_not_enabled",
            Error::TotpAlreadyEnabled => "totp_already_enabled",
            Error::FactorLocked => "factor_locked",
            Error::InvalidLogoutToken(_) => "invalid_logout_token",
            Error::NotFound => "not_found",
            Error::StorageUnavailable(_) => "storage_unavailable",
            Error::Busy { .. } => "busy",
            Error::KeycloakAdminFailed(_) => "keycloak_admin_failed",
            Error::Internal(_) => "internal_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::MissingToken | Error::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Error::SecondFactorRequired { .. } => StatusCode::FORBIDDEN,
            Error::AuthzUnavailable(_) | Error::StorageUnavailable(_) | Error::Busy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::InvalidJson(_)
            | Error::InvalidCheckRequest(_)
            | Error::InvalidCode { .. }
            | Error::InvalidLogoutToken(_) => StatusCode::BAD_REQUEST,
            Error::InvalidRequest(_) | Error::InvalidEmail | Error::InvalidMobile => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::ProfileExists | Error::ContactNotVerified | Error::TotpAlreadyEnabled => {
                StatusCode::CONFLICT
            }
            Error::ProfileNotFound
            | Error::NoPendingCode
            | Error::NoPendingTotp
            | Error::TotpNotEnabled
            | Error::NotFound => StatusCode::NOT_FOUND,
            Error::ResendTooSoon { .. } | Error::TooManyAttempts { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Error::DeliveryFailed | Error::KeycloakAdminFailed(_) => StatusCode::BAD_GATEWAY,
            Error::FactorLocked => StatusCode::LOCKED,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The google.rpc.Code carried in `CheckResponse.status` for a denial.
    pub fn grpc_code(&self) -> i32 {
        match self.status() {
            StatusCode::UNAUTHORIZED => 16,        // UNAUTHENTICATED
            StatusCode::FORBIDDEN => 7,            // PERMISSION_DENIED
            StatusCode::SERVICE_UNAVAILABLE => 14, // UNAVAILABLE
            StatusCode::TOO_MANY_REQUESTS => 8,    // RESOURCE_EXHAUSTED
            _ => 13,                               // INTERNAL
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::ResendTooSoon { retry_after }
            | Error::TooManyAttempts { retry_after }
            | Error::Busy { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// Short title for problem+json: the status' reason phrase.
    pub fn title(&self) -> &'static str {
        self.status().canonical_reason().unwrap_or("Error")
    }
}

impl Error {
    /// The RFC 9457 problem document for this error: the one place where
    /// error bodies are shaped, for the HTTP API and for Check denials alike.
    pub fn problem(&self) -> serde_json::Value {
        let code = self.code();
        let mut body = serde_json::json!({
            "type": format!("urn:twofa-authz:problem:{code}"),
            "title": self.title(),
            "status": self.status().as_u16(),
            "detail": self.to_string(),
            "code": code,
        });
        if let Some(obj) = body.as_object_mut() {
            match self {
                Error::SecondFactorRequired { methods, max_age } => {
                    obj.insert("methods".into(), serde_json::json!(methods));
                    if let Some(secs) = max_age {
                        obj.insert("max_age".into(), serde_json::json!(secs));
                    }
                }
                Error::InvalidCode { attempts_remaining } => {
                    obj.insert(
                        "attempts_remaining".into(),
                        serde_json::json!(attempts_remaining),
                    );
                }
                Error::ResendTooSoon { retry_after }
                | Error::TooManyAttempts { retry_after }
                | Error::Busy { retry_after } => {
                    obj.insert(
                        "retry_after".into(),
                        serde_json::json!(retry_after.as_secs().max(1)),
                    );
                }
                _ => {}
            }
        }
        body
    }
}

pub const PROBLEM_JSON: &str = "application/problem+json";

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Unavailable(d)
            | crate::store::StoreError::Incompatible(d) => Error::StorageUnavailable(d),
            crate::store::StoreError::Corrupt(d) => Error::Internal(d),
        }
    }
}
