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
    #[error("there is no WebAuthn ceremony in progress for this session (none started, already finished, or expired)")]
    NoPendingCeremony,
    #[error("the WebAuthn credential could not be verified: {0}")]
    InvalidCredential(String),
    #[error("no WebAuthn credential with this id is registered for this user")]
    WebAuthnCredentialNotFound,
    #[error("this WebAuthn credential is registered already")]
    WebAuthnCredentialExists,
    #[error("this user has no WebAuthn credential")]
    WebAuthnNotEnabled,
    #[error("the logout token is not valid")]
    InvalidLogoutToken(&'static str),
    /// `security.remember_device_ttl` is 0: the remembered-device routes
    /// exist but are turned off.
    #[error("remembered devices are turned off here (security.remember_device_ttl)")]
    RememberedDevicesDisabled,
    #[error("no remembered device with this id")]
    DeviceNotFound,
    #[error("not found")]
    NotFound,
    /// A known path asked with a method it does not take (the `Allow`
    /// header names those it does).
    #[error("this path does not take this method")]
    MethodNotAllowed,
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

/// One entry of the problem catalogue: a `code` of the contract, the HTTP
/// status it is always answered with, and its problem `title`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemKind {
    pub code: &'static str,
    pub status: StatusCode,
    pub title: &'static str,
}

/// Declares each kind once, as a constant in [`problems`] and as an entry
/// of [`CATALOGUE`], so the list cannot miss one.
macro_rules! catalogue {
    ($($name:ident = $code:literal, $status:ident, $title:literal;)*) => {
        /// Every problem kind by name, for [`Error::kind`] and the OpenAPI
        /// description of each route (`http::openapi`).
        pub mod problems {
            use super::ProblemKind;
            use http::StatusCode;
            $(pub const $name: ProblemKind = ProblemKind {
                code: $code,
                status: StatusCode::$status,
                title: $title,
            };)*
        }
        /// Every problem `code` the service answers with: rendered by
        /// [`Error::problem`] and published in `/openapi.json`, both from here.
        pub const CATALOGUE: &[ProblemKind] = &[$(problems::$name),*];
    };
}

catalogue! {
    MISSING_TOKEN = "missing_token", UNAUTHORIZED, "Missing token";
    INVALID_TOKEN = "invalid_token", UNAUTHORIZED, "Invalid token";
    SECOND_FACTOR_REQUIRED = "second_factor_required", FORBIDDEN, "Second factor required";
    AUTHZ_UNAVAILABLE = "authz_unavailable", SERVICE_UNAVAILABLE, "Authorization unavailable";
    INVALID_JSON = "invalid_json", BAD_REQUEST, "Invalid JSON";
    INVALID_REQUEST = "invalid_request", UNPROCESSABLE_ENTITY, "Invalid request";
    INVALID_CHECK_REQUEST = "invalid_request", BAD_REQUEST, "Invalid check request";
    PAYLOAD_TOO_LARGE = "payload_too_large", PAYLOAD_TOO_LARGE, "Payload too large";
    PROFILE_EXISTS = "profile_exists", CONFLICT, "Profile exists";
    PROFILE_NOT_FOUND = "profile_not_found", NOT_FOUND, "Profile not found";
    INVALID_EMAIL = "invalid_email", UNPROCESSABLE_ENTITY, "Invalid email";
    INVALID_MOBILE = "invalid_mobile", UNPROCESSABLE_ENTITY, "Invalid mobile";
    RESEND_TOO_SOON = "resend_too_soon", TOO_MANY_REQUESTS, "Resend too soon";
    DELIVERY_FAILED = "delivery_failed", BAD_GATEWAY, "Delivery failed";
    CONTACT_NOT_VERIFIED = "contact_not_verified", CONFLICT, "Contact not verified";
    INVALID_CODE = "invalid_code", BAD_REQUEST, "Invalid code";
    NO_PENDING_CODE = "no_pending_code", NOT_FOUND, "No pending code";
    TOO_MANY_ATTEMPTS = "too_many_attempts", TOO_MANY_REQUESTS, "Too many attempts";
    NO_PENDING_TOTP = "no_pending_totp", NOT_FOUND, "No pending TOTP";
    TOTP_NOT_ENABLED = "totp_not_enabled", NOT_FOUND, "TOTP not enabled";
    TOTP_ALREADY_ENABLED = "totp_already_enabled", CONFLICT, "TOTP already enabled";
    FACTOR_LOCKED = "factor_locked", LOCKED, "Factor locked";
    NO_PENDING_CEREMONY = "no_pending_ceremony", NOT_FOUND, "No pending WebAuthn ceremony";
    INVALID_CREDENTIAL = "invalid_credential", BAD_REQUEST, "Invalid WebAuthn credential";
    WEBAUTHN_CREDENTIAL_NOT_FOUND = "webauthn_credential_not_found", NOT_FOUND, "WebAuthn credential not found";
    WEBAUTHN_CREDENTIAL_EXISTS = "webauthn_credential_exists", CONFLICT, "WebAuthn credential exists";
    WEBAUTHN_NOT_ENABLED = "webauthn_not_enabled", NOT_FOUND, "WebAuthn not enabled";
    INVALID_LOGOUT_TOKEN = "invalid_logout_token", BAD_REQUEST, "Invalid logout token";
    REMEMBERED_DEVICES_DISABLED = "remembered_devices_disabled", NOT_FOUND, "Remembered devices disabled";
    DEVICE_NOT_FOUND = "device_not_found", NOT_FOUND, "Device not found";
    NOT_FOUND = "not_found", NOT_FOUND, "Not found";
    METHOD_NOT_ALLOWED = "method_not_allowed", METHOD_NOT_ALLOWED, "Method not allowed";
    STORAGE_UNAVAILABLE = "storage_unavailable", SERVICE_UNAVAILABLE, "Storage unavailable";
    BUSY = "busy", SERVICE_UNAVAILABLE, "Busy";
    KEYCLOAK_ADMIN_FAILED = "keycloak_admin_failed", BAD_GATEWAY, "Identity provider failed";
    INTERNAL_ERROR = "internal_error", INTERNAL_SERVER_ERROR, "Internal error";
}

impl Error {
    /// This error's entry in [`CATALOGUE`]: its code, status and title.
    pub fn kind(&self) -> &'static ProblemKind {
        use problems as p;
        match self {
            Error::MissingToken => &p::MISSING_TOKEN,
            Error::InvalidToken(_) => &p::INVALID_TOKEN,
            Error::SecondFactorRequired { .. } => &p::SECOND_FACTOR_REQUIRED,
            Error::AuthzUnavailable(_) => &p::AUTHZ_UNAVAILABLE,
            Error::InvalidJson(_) => &p::INVALID_JSON,
            Error::InvalidRequest(_) => &p::INVALID_REQUEST,
            // INTERFACE.md section 4: a misconfigured proxy's check request
            // is 400 `invalid_request` (nginx turns it into 500: closed).
            Error::InvalidCheckRequest(_) => &p::INVALID_CHECK_REQUEST,
            Error::PayloadTooLarge => &p::PAYLOAD_TOO_LARGE,
            Error::ProfileExists => &p::PROFILE_EXISTS,
            Error::ProfileNotFound => &p::PROFILE_NOT_FOUND,
            Error::InvalidEmail => &p::INVALID_EMAIL,
            Error::InvalidMobile => &p::INVALID_MOBILE,
            Error::ResendTooSoon { .. } => &p::RESEND_TOO_SOON,
            Error::DeliveryFailed => &p::DELIVERY_FAILED,
            Error::ContactNotVerified => &p::CONTACT_NOT_VERIFIED,
            Error::InvalidCode { .. } => &p::INVALID_CODE,
            Error::NoPendingCode => &p::NO_PENDING_CODE,
            Error::TooManyAttempts { .. } => &p::TOO_MANY_ATTEMPTS,
            Error::NoPendingTotp => &p::NO_PENDING_TOTP,
            Error::TotpNotEnabled => &p::TOTP_NOT_ENABLED,
            Error::TotpAlreadyEnabled => &p::TOTP_ALREADY_ENABLED,
            Error::FactorLocked => &p::FACTOR_LOCKED,
            Error::NoPendingCeremony => &p::NO_PENDING_CEREMONY,
            Error::InvalidCredential(_) => &p::INVALID_CREDENTIAL,
            Error::WebAuthnCredentialNotFound => &p::WEBAUTHN_CREDENTIAL_NOT_FOUND,
            Error::WebAuthnCredentialExists => &p::WEBAUTHN_CREDENTIAL_EXISTS,
            Error::WebAuthnNotEnabled => &p::WEBAUTHN_NOT_ENABLED,
            Error::InvalidLogoutToken(_) => &p::INVALID_LOGOUT_TOKEN,
            Error::RememberedDevicesDisabled => &p::REMEMBERED_DEVICES_DISABLED,
            Error::DeviceNotFound => &p::DEVICE_NOT_FOUND,
            Error::NotFound => &p::NOT_FOUND,
            Error::MethodNotAllowed => &p::METHOD_NOT_ALLOWED,
            Error::StorageUnavailable(_) => &p::STORAGE_UNAVAILABLE,
            Error::Busy { .. } => &p::BUSY,
            Error::KeycloakAdminFailed(_) => &p::KEYCLOAK_ADMIN_FAILED,
            Error::Internal(_) => &p::INTERNAL_ERROR,
        }
    }

    /// The stable, documented code of INTERFACE.md.
    pub fn code(&self) -> &'static str {
        self.kind().code
    }

    pub fn status(&self) -> StatusCode {
        self.kind().status
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

    /// The problem's `title`: the same for every occurrence of its code.
    pub fn title(&self) -> &'static str {
        self.kind().title
    }
}

/// The RFC 9457 problem document of every error answer. Its OpenAPI schema
/// is derived from this struct, so the description and the bodies agree.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemBody {
    /// `urn:twofa-authz:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// The stable, documented code; clients branch on this.
    pub code: &'static str,
    /// `second_factor_required`: the factors this user can pass now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// `second_factor_required` on routes that need a recent factor: the
    /// configured `security.sensitive_max_age`, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
    /// `invalid_code`: wrong codes left before the lockout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts_remaining: Option<u32>,
    /// `resend_too_soon`, `too_many_attempts`, `busy`: seconds to wait, as
    /// in the `Retry-After` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Error {
    /// The RFC 9457 problem document for this error: the one place where
    /// error bodies are shaped, for the HTTP API and for Check denials alike.
    pub fn problem_body(&self) -> ProblemBody {
        let kind = self.kind();
        let mut body = ProblemBody {
            kind: format!("urn:twofa-authz:problem:{}", kind.code),
            title: kind.title,
            status: kind.status.as_u16(),
            detail: self.to_string(),
            code: kind.code,
            methods: None,
            max_age: None,
            attempts_remaining: None,
            retry_after: self.retry_after().map(|r| r.as_secs().max(1)),
        };
        match self {
            Error::SecondFactorRequired { methods, max_age } => {
                body.methods = Some(methods.clone());
                body.max_age = *max_age;
            }
            Error::InvalidCode { attempts_remaining } => {
                body.attempts_remaining = Some(*attempts_remaining);
            }
            _ => {}
        }
        body
    }

    pub fn problem(&self) -> serde_json::Value {
        serde_json::to_value(self.problem_body()).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// One of each variant, so that a new one shows up here.
    fn samples() -> Vec<Error> {
        let d = Duration::from_secs(3);
        vec![
            Error::MissingToken,
            Error::InvalidToken("x"),
            Error::SecondFactorRequired {
                methods: vec!["totp".into()],
                max_age: Some(600),
            },
            Error::AuthzUnavailable("x"),
            Error::InvalidJson("x".into()),
            Error::InvalidRequest("x".into()),
            Error::InvalidCheckRequest("x".into()),
            Error::PayloadTooLarge,
            Error::ProfileExists,
            Error::ProfileNotFound,
            Error::InvalidEmail,
            Error::InvalidMobile,
            Error::ResendTooSoon { retry_after: d },
            Error::DeliveryFailed,
            Error::ContactNotVerified,
            Error::InvalidCode {
                attempts_remaining: 2,
            },
            Error::NoPendingCode,
            Error::TooManyAttempts { retry_after: d },
            Error::NoPendingTotp,
            Error::TotpNotEnabled,
            Error::TotpAlreadyEnabled,
            Error::FactorLocked,
            Error::NoPendingCeremony,
            Error::InvalidCredential("x".into()),
            Error::WebAuthnCredentialNotFound,
            Error::WebAuthnCredentialExists,
            Error::WebAuthnNotEnabled,
            Error::InvalidLogoutToken("x"),
            Error::RememberedDevicesDisabled,
            Error::DeviceNotFound,
            Error::NotFound,
            Error::MethodNotAllowed,
            Error::StorageUnavailable("x".into()),
            Error::Busy { retry_after: d },
            Error::KeycloakAdminFailed("x".into()),
            Error::Internal("x".into()),
        ]
    }

    #[test]
    fn every_error_renders_its_catalogue_entry() {
        let mut seen = HashSet::new();
        for e in samples() {
            let kind = e.kind();
            assert!(CATALOGUE.contains(kind), "{} not catalogued", kind.code);
            seen.insert((kind.code, kind.status));
            let body = e.problem();
            assert_eq!(body["code"], kind.code);
            assert_eq!(body["status"], kind.status.as_u16());
            assert_eq!(body["title"], kind.title);
            assert_eq!(
                body["type"],
                format!("urn:twofa-authz:problem:{}", kind.code)
            );
        }
        // Every catalogued kind is reachable from some error.
        assert_eq!(seen.len(), CATALOGUE.len());
    }

    #[test]
    fn a_code_has_one_status_per_catalogue_entry() {
        let mut pairs = HashSet::new();
        for k in CATALOGUE {
            assert!(pairs.insert((k.code, k.status)), "{} twice", k.code);
        }
        let body = Error::InvalidCode {
            attempts_remaining: 0,
        }
        .problem();
        assert_eq!(body["attempts_remaining"], 0);
        assert!(body.get("methods").is_none());
        let body = Error::TooManyAttempts {
            retry_after: Duration::from_millis(10),
        }
        .problem();
        assert_eq!(body["retry_after"], 1);
    }
}
