//! Errors as RFC 9457 `application/problem+json` responses.

use axum::response::{IntoResponse, Response};
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};

use crate::error::{Error, PROBLEM_JSON};

pub fn response(err: &Error, www_authenticate: Option<&str>) -> Response {
    if let Error::Internal(detail)
    | Error::StorageUnavailable(detail)
    | Error::KeycloakAdminFailed(detail) = err
    {
        tracing::error!(code = err.code(), detail = %detail, "request failed");
    }
    let mut resp = (err.status(), err.problem().to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if let Some(w) = www_authenticate.and_then(|w| HeaderValue::from_str(w).ok()) {
        h.insert(WWW_AUTHENTICATE, w);
    }
    if let Some(r) = err.retry_after() {
        h.insert(RETRY_AFTER, HeaderValue::from(r.as_secs().max(1)));
    }
    // Extensions allocate: only for a span that will read it.
    if crate::telemetry::enabled() {
        resp.extensions_mut()
            .insert(crate::telemetry::ProblemCode(err.code()));
    }
    resp
}
