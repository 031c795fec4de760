//! The HTTP listener: forward auth (`/authz`), health, metrics, the dev token
//! route, and the `/user` API. Errors leave as RFC 9457 problem+json.

mod dev;
mod forward;
mod health;
mod logout;
pub mod problem;
mod user;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::AppState;
use crate::error::Error;

/// Bodies of the JSON API are small (INTERFACE.md section 5: 16 KiB).
pub const MAX_BODY: usize = 16 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/authz", any(forward::authz))
        .route("/authz/{*rest}", any(forward::authz))
        .route(
            "/keycloak/backchannel-logout",
            post(logout::backchannel_logout),
        );
    if state.dev.is_some() {
        r = r.route("/dev/token", post(dev::token));
    }
    r = r.merge(user::routes());
    r.fallback(|| async { Error::NotFound })
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(cors(&state.cfg.server.cors_allowed_origins))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn cors(origins: &[String]) -> CorsLayer {
    use http::{header, Method};
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER])
}

/// Request count and latency by route template, never by raw path (which
/// would let clients create unbounded label values).
async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let method = match method.as_str() {
        "GET" | "POST" | "PATCH" | "DELETE" | "PUT" | "HEAD" | "OPTIONS" => {
            method.as_str().to_string()
        }
        _ => "other".into(),
    };
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[&method, &route, resp.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[&method, &route])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// A JSON body: malformed JSON is 400 `invalid_json`; valid JSON of the wrong
/// shape (types, missing or unknown fields) is 422 `invalid_request`; more
/// than 16 KiB is 413.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge
            } else {
                Error::InvalidJson("the body could not be read".into())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() > MAX_BODY {
        return Err(Error::PayloadTooLarge);
    }
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => Error::InvalidRequest(e.to_string()),
            _ => Error::InvalidJson(e.to_string()),
        }
    })
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        problem::response(&self, None)
    }
}
