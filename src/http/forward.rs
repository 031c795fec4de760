//! Forward auth over HTTP (INTERFACE.md section 4): one endpoint per kind of
//! proxy, each reading the original request only from what its own proxy
//! sets. Same decisions as the gRPC Check.
//!
//! | endpoint | proxy | method, URI, host |
//! |---|---|---|
//! | `/authz/auth-request` | nginx `auth_request` | `X-Original-Method`, `X-Original-URI`, `X-Forwarded-Host` else `Host` |
//! | `/authz/forward-auth` | Traefik `forwardAuth`, Caddy `forward_auth` | `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host` |
//! | `/authz/ext-authz/{*path}` | Envoy HTTP ext_authz | own method, own path after the prefix, `Host` |
//!
//! Traefik and Caddy pass every client header on to the auth service and set
//! only their own `X-Forwarded-*`; nginx copies client headers into the
//! subrequest too. So an endpoint never falls back to another proxy's
//! headers: a client-sent `X-Original-URI` must not choose what a Caddy check
//! decides. A header the proxy always sets that is missing or repeated means
//! a misconfigured proxy (or a client reaching the endpoint directly): 400
//! `invalid_request`, which nginx turns into 500 and Traefik/Caddy pass on,
//! closed either way. Per-route requirements are never read from headers.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, StatusCode};

use super::authorization;
use super::openapi::problems;
use crate::app::AppState;
use crate::authz::{CheckInput, Decision};
use crate::error::Error;

/// Envoy's HTTP ext_authz service is configured with this `path_prefix`;
/// the original path follows it.
pub const EXT_AUTHZ_PREFIX: &str = "/authz/ext-authz";

/// Envoy's HTTP ext_authz reads this response header as the list of request
/// headers to drop before forwarding upstream.
const ENVOY_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// The original request, borrowed from the check request.
struct Original<'a> {
    method: &'a str,
    uri: &'a str,
    host: &'a str,
}

problems!(
    /// The decisions of INTERFACE.md section 3, and 400 for a check request
    /// that lacks its proxy's headers.
    CheckProblems = [
        &[
            crate::error::problems::INVALID_CHECK_REQUEST,
            crate::error::problems::MISSING_TOKEN,
            crate::error::problems::INVALID_TOKEN,
            crate::error::problems::SECOND_FACTOR_REQUIRED,
            crate::error::problems::AUTHZ_UNAVAILABLE,
        ],
    ]
);

/// nginx `auth_request`.
#[utoipa::path(
    method(get, post, put, patch, delete, head, options),
    path = "/authz/auth-request",
    tag = "forward-auth",
    description = "nginx `auth_request`: the original request from `X-Original-Method`, \
        `X-Original-URI` and `X-Forwarded-Host` (else `Host`). Any method.",
    responses(
        (status = 200, description = "allowed: the identity headers (`x-auth-request-*`) are set"),
        CheckProblems,
    )
)]
pub async fn auth_request(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let h = req.headers();
    let original = (|| {
        let uri = required_uri(h, "x-original-uri")?;
        let method = required_text(h, "x-original-method")?;
        let host = match single_text(h, "x-forwarded-host")? {
            Some(host) => host,
            None => single_text(h, HOST.as_str())?.unwrap_or(""),
        };
        Ok(Original { method, uri, host })
    })();
    check(&state, h, original, false, "/authz/auth-request").await
}

/// Traefik `forwardAuth` and Caddy `forward_auth`.
#[utoipa::path(
    method(get, post, put, patch, delete, head, options),
    path = "/authz/forward-auth",
    tag = "forward-auth",
    description = "Traefik `forwardAuth`, Caddy `forward_auth`: the original request from \
        `X-Forwarded-Method`, `X-Forwarded-Uri` and `X-Forwarded-Host`. Any method.",
    responses(
        (status = 200, description = "allowed: the identity headers (`x-auth-request-*`) are set"),
        CheckProblems,
    )
)]
pub async fn forward_auth(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let h = req.headers();
    let original = (|| {
        Ok(Original {
            uri: required_uri(h, "x-forwarded-uri")?,
            method: required_text(h, "x-forwarded-method")?,
            host: required_text(h, "x-forwarded-host")?,
        })
    })();
    check(&state, h, original, false, "/authz/forward-auth").await
}

/// Envoy's HTTP ext_authz service (`path_prefix: /authz/ext-authz`): the
/// check request is the original one, its path behind the prefix.
#[utoipa::path(
    method(get, post, put, patch, delete, head, options),
    path = "/authz/ext-authz/{path}",
    tag = "forward-auth",
    description = "Envoy HTTP ext_authz (`path_prefix: /authz/ext-authz`): the request's own \
        method, its path after the prefix (which may be empty) and `Host`.",
    params(("path" = String, Path, description = "the original path, without its leading slash")),
    responses(
        (status = 200, description = "allowed: the identity headers (`x-auth-request-*`) are set, \
            and `x-envoy-auth-headers-to-remove` lists client-sent ones"),
        CheckProblems,
    )
)]
pub async fn ext_authz(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let h = req.headers();
    let own = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let original = match own.strip_prefix(EXT_AUTHZ_PREFIX) {
        Some(uri) if uri.starts_with('/') => single_text(h, HOST.as_str()).map(|host| Original {
            method: req.method().as_str(),
            uri,
            host: host.unwrap_or(""),
        }),
        _ => Err(Error::InvalidCheckRequest(format!(
            "the path must start with {EXT_AUTHZ_PREFIX}/"
        ))),
    };
    check(&state, h, original, true, "/authz/ext-authz/{*path}").await
}

async fn check(
    state: &AppState,
    h: &HeaderMap,
    original: Result<Original<'_>, Error>,
    envoy: bool,
    route: &'static str,
) -> Response {
    let start = Instant::now();
    let span = crate::telemetry::check_span(route);
    if !span.is_disabled() {
        crate::telemetry::begin(&span, &crate::telemetry::Carrier::from_headers(h));
    }
    let original = match original {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "forward-auth request without the proxy's headers; is the proxy configured as documented?");
            crate::telemetry::refused(&span, e.code());
            return e.into_response();
        }
    };
    let input = CheckInput {
        method: original.method,
        host: original.host,
        path: original.uri,
        authorization: authorization(h),
        ext_require: None,
        ext_max_age: None,
        // Per-route modes are Envoy's context_extensions, which forward auth
        // has no trusted carrier for: rules' `dry_run` applies here.
        ext_mode: None,
    };
    let (decision, identity) = state.authz.check_identified(&input).await;
    let resp = render(state, &decision, h, envoy);
    state
        .metrics
        .http_checks
        .record(decision.outcome(), start.elapsed().as_secs_f64());
    crate::telemetry::decided(&span, decision.outcome(), identity.as_deref());
    resp
}

/// The one value of a header, `None` when absent; repeated or not text is
/// 400: a proxy sets each of these once.
fn single_text<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Error> {
    let mut all = h.get_all(name).iter();
    match (all.next(), all.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(Error::InvalidCheckRequest(format!(
            "{name} given more than once"
        ))),
        (Some(v), None) => v
            .to_str()
            .map(Some)
            .map_err(|_| Error::InvalidCheckRequest(format!("{name} is not text"))),
    }
}

fn required_text<'a>(h: &'a HeaderMap, name: &str) -> Result<&'a str, Error> {
    single_text(h, name)?.ok_or_else(|| Error::InvalidCheckRequest(format!("{name} is missing")))
}

/// The original URI: like [`required_text`], but UTF-8 is accepted (nginx
/// passes `$request_uri` as the client sent it; the path normalizer reads
/// UTF-8).
fn required_uri<'a>(h: &'a HeaderMap, name: &str) -> Result<&'a str, Error> {
    let mut all = h.get_all(name).iter();
    match (all.next(), all.next()) {
        (None, _) => Err(Error::InvalidCheckRequest(format!("{name} is missing"))),
        (Some(_), Some(_)) => Err(Error::InvalidCheckRequest(format!(
            "{name} given more than once"
        ))),
        (Some(v), None) => std::str::from_utf8(v.as_bytes())
            .map_err(|_| Error::InvalidCheckRequest(format!("{name} is not UTF-8"))),
    }
}

fn render(state: &AppState, decision: &Decision, req_headers: &HeaderMap, envoy: bool) -> Response {
    let names = &state.authz.headers;
    let (identity, second_factor, would_deny) = match decision {
        Decision::Allow {
            identity,
            second_factor,
        } => (identity, second_factor, None),
        Decision::DryRun {
            would_deny,
            identity,
            second_factor,
            ..
        } => (identity, second_factor, Some(would_deny)),
        Decision::Deny(err, _) => {
            return super::problem::response(err, state.authz.www_authenticate(err))
        }
    };
    let mut out = HeaderMap::new();
    if let Some(id) = identity {
        for (k, v) in names.values(id, *second_factor) {
            if let (Ok(k), Ok(v)) = (
                HeaderName::try_from(k),
                HeaderValue::from_bytes(v.as_bytes()),
            ) {
                out.insert(k, v);
            }
        }
    }
    if let (Some(err), Ok(k)) = (would_deny, HeaderName::try_from(names.would_deny.as_str())) {
        out.insert(k, HeaderValue::from(err.status().as_u16()));
    }
    if envoy {
        let stale: Vec<&str> = req_headers
            .keys()
            .map(HeaderName::as_str)
            .filter(|k| names.has_prefix(k) && !out.contains_key(*k))
            .collect();
        if !stale.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&stale.join(",")) {
                out.insert(ENVOY_REMOVE, v);
            }
        }
    }
    (StatusCode::OK, out).into_response()
}
