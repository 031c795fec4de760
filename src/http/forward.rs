//! Forward auth over HTTP: nginx `auth_request`, Traefik `forwardAuth`, and
//! Envoy's ext_authz HTTP service. Same decisions as the gRPC Check.
//!
//! The original request comes from headers the proxy sets (nginx:
//! X-Original-Method/-URI; Traefik: X-Forwarded-Method/-Uri/-Host) or, for
//! Envoy's HTTP service with `path_prefix: /authz`, from our own request
//! line. Per-route requirements are not read from headers here: nginx copies
//! client headers into the subrequest, so any such header could be forged.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, HOST};
use http::{HeaderMap, StatusCode};

use crate::app::AppState;
use crate::authz::{CheckInput, Decision};

/// Envoy's HTTP ext_authz reads this response header as the list of request
/// headers to drop before forwarding upstream.
const ENVOY_REMOVE: &str = "x-envoy-auth-headers-to-remove";

pub async fn authz(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let start = Instant::now();
    let h = req.headers();
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    let own_path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let envoy_path = own_path
        .strip_prefix("/authz")
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let (method, path) = if let Some(uri) = text("x-original-uri") {
        (text("x-original-method").unwrap_or("GET"), uri)
    } else if let Some(uri) = text("x-forwarded-uri") {
        (text("x-forwarded-method").unwrap_or("GET"), uri)
    } else {
        (req.method().as_str(), envoy_path)
    };
    let host = text("x-forwarded-host")
        .or_else(|| text(HOST.as_str()))
        .unwrap_or("");
    let input = CheckInput {
        method,
        host,
        path,
        authorization: text(AUTHORIZATION.as_str()),
        ext_require: None,
        ext_max_age: None,
    };
    let decision = state.authz.check(&input).await;
    let resp = render(&state, &decision, h);
    state
        .metrics
        .http_checks
        .record(decision.outcome(), start.elapsed().as_secs_f64());
    resp
}

fn render(state: &AppState, decision: &Decision, req_headers: &HeaderMap) -> Response {
    let names = &state.authz.headers;
    match decision {
        Decision::Allow {
            identity,
            second_factor,
        } => {
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
            (StatusCode::OK, out).into_response()
        }
        Decision::Deny(err) => super::problem::response(err, state.authz.www_authenticate(err)),
    }
}
