//! The HTTP listener's routes: forward auth (`/authz/auth-request`,
//! `/authz/forward-auth`, `/authz/ext-authz/...`), health, metrics, the dev
//! token route, the `/user` API and the `/ui/` page. Errors leave as RFC 9457
//! problem+json.

mod dev;
mod forward;
mod health;
mod logout;
pub mod openapi;
pub mod problem;
mod ui;
mod user;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use serde::de::{DeserializeOwned, IgnoredAny};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::app::AppState;
use crate::authz::AuthHeader;
use crate::error::Error;

/// The request's `Authorization` header for [`crate::authz::bearer`]: sent
/// twice, it is two credentials, never "the first one wins".
pub fn authorization(headers: &HeaderMap) -> AuthHeader<'_> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    match (all.next(), all.next()) {
        (None, _) => AuthHeader::Absent,
        (Some(_), Some(_)) => AuthHeader::Invalid(crate::token::Reason::MultipleCredentials),
        (Some(v), None) => v.to_str().map_or(
            AuthHeader::Invalid(crate::token::Reason::Malformed),
            AuthHeader::Value,
        ),
    }
}

/// Bodies of the JSON API are small (INTERFACE.md section 5: 16 KiB).
pub const MAX_BODY: usize = 16 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    // With `server.metrics_addr` the metrics live on their own listener
    // ([`metrics_router`]) and nowhere else: a port opened for the API must
    // not expose them.
    if state.cfg.server.metrics_addr.is_none() {
        r = r.route("/metrics", get(health::metrics));
    }
    r = r
        .route("/authz/auth-request", any(forward::auth_request))
        .route("/authz/forward-auth", any(forward::forward_auth))
        .route("/authz/ext-authz/", any(forward::ext_authz))
        .route("/authz/ext-authz/{*path}", any(forward::ext_authz))
        .route(
            "/keycloak/backchannel-logout",
            post(logout::backchannel_logout),
        );
    // CORS only where browsers on other origins call us: tower-http answers
    // every OPTIONS request as a preflight (200) without calling the route,
    // which on a forward-auth endpoint would be an allow decision (Envoy's
    // HTTP ext_authz sends the original method, OPTIONS included). The 405
    // fallback goes in before the layer, so that it is behind CORS too.
    let cors = cors(&state.cfg.server.cors_allowed_origins);
    if state.dev.is_some() {
        r = r.route(
            "/dev/token",
            post(dev::token)
                .fallback(method_not_allowed)
                .layer(cors.clone()),
        );
    }
    let spec = openapi::spec(state.dev.is_some());
    r = r
        .route(
            "/openapi.json",
            get(openapi::openapi_json).layer(axum::Extension(spec)),
        )
        .merge(
            user::routes()
                .method_not_allowed_fallback(method_not_allowed)
                .layer(cors),
        )
        .merge(ui::routes(&state));
    // Last, after every route is in: a known path asked with a method it
    // does not take gets a problem (axum adds `Allow`), not a bare 405.
    r.method_not_allowed_fallback(method_not_allowed)
        .fallback(|| async { Error::NotFound })
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The `server.metrics_addr` listener: `GET /metrics` and nothing else.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .fallback(|| async { Error::NotFound })
        .with_state(state)
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
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
    // MatchedPath is an Arc'd template and the method a static name: nothing
    // is allocated per request here (forward auth is a Check path too).
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    // Forward auth has its own span, in the Check it makes.
    let span = match &route {
        Some(r) if r.as_str().starts_with("/user") => {
            crate::telemetry::user_span(method, r.as_str(), req.headers())
        }
        _ => tracing::Span::none(),
    };
    let resp = if span.is_disabled() {
        next.run(req).await
    } else {
        tracing::Instrument::instrument(next.run(req), span.clone()).await
    };
    crate::telemetry::user_done(&span, &resp);
    let route = route.as_ref().map_or("unmatched", |m| m.as_str());
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[method, route, resp.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[method, route])
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// The listener's outermost layer: what audit events say about the client
/// ([`crate::audit::RequestMeta`]: its headers and the connection's peer),
/// visible to the services for the rest of each request. A tower service
/// rather than axum middleware, so that nothing is boxed; header values are
/// shared, not copied: most requests (every Check) write no event.
#[derive(Clone)]
pub struct WithRequestMeta<S> {
    inner: S,
    peer: std::net::IpAddr,
}

impl<S> WithRequestMeta<S> {
    pub fn new(inner: S, peer: std::net::IpAddr) -> Self {
        Self { inner, peer }
    }
}

impl<S, B> tower::Service<http::Request<B>> for WithRequestMeta<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<crate::audit::RequestMeta, S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let meta = crate::audit::RequestMeta::from_headers(req.headers(), Some(self.peer));
        meta.scope(self.inner.call(req))
    }
}

/// The method as a bounded label: the usual ones by name, anything else
/// (extension methods a client may invent) as `other`.
fn method_label(m: &http::Method) -> &'static str {
    use http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
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

/// Two passes, so that the class of the error does not depend on where in
/// the body the first problem is: the syntax of the whole body first (any
/// error: 400 `invalid_json`, even if an unknown field comes before it),
/// then its shape (any error: 422 `invalid_request`). The first pass reads
/// into [`IgnoredAny`] rather than a `serde_json::Value`: it allocates
/// nothing, and the typed pass still sees a repeated key (a `Value` would
/// keep the last one silently, and two readers could disagree on the body).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() > MAX_BODY {
        return Err(Error::PayloadTooLarge);
    }
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        bytes
    };
    serde_json::from_slice::<IgnoredAny>(body).map_err(|e| Error::InvalidJson(e.to_string()))?;
    // Every body of the API is an object; serde would also read a struct
    // from an array of its fields in order (`["email"]`).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::InvalidRequest(
            "the body must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| Error::InvalidRequest(e.to_string()))
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        problem::response(&self, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct SendOtp {
        otp_type: String,
    }

    fn code(body: &str) -> &'static str {
        match parse_json::<SendOtp>(body.as_bytes()) {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn malformed_json_is_400_whatever_fields_it_names() {
        for body in [
            r#"{"unknown": 1,"#,
            r#"{"unknown": 1, "otp_type": }"#,
            r#"{"otp_type": "email"} trailing"#,
            r#"{"otp_type": 5,"#,
            r#"{"otp_type": "email""#,
            "{'otp_type': 'email'}",
            "\u{feff}{}",
        ] {
            assert_eq!(code(body), "invalid_json", "{body}");
        }
        assert_eq!(
            parse_json::<SendOtp>(br#"{"x":1,"#).unwrap_err().status(),
            http::StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn well_formed_json_of_the_wrong_shape_is_422() {
        for body in [
            r#"{"otp_type": 5}"#,
            r#"{"otp_type": null}"#,
            r#"{"otp_type": "email", "unknown": 1}"#,
            r#"{"otp_type": "email", "otp_type": "sms"}"#,
            "{}",
            "",
            "[]",
            r#"["email"]"#,
            "5",
            "null",
        ] {
            assert_eq!(code(body), "invalid_request", "{body}");
        }
        assert_eq!(
            parse_json::<SendOtp>(br#"{"otp_type": 5}"#)
                .unwrap_err()
                .status(),
            http::StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(code(r#"{"otp_type": "email"}"#), "ok");
    }

    #[test]
    fn authorization_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(authorization(&h), AuthHeader::Absent);
        h.append(AUTHORIZATION, "Bearer a".parse().unwrap());
        assert_eq!(authorization(&h), AuthHeader::Value("Bearer a"));
        h.append(AUTHORIZATION, "Bearer b".parse().unwrap());
        assert!(matches!(authorization(&h), AuthHeader::Invalid(_)));
        let mut h = HeaderMap::new();
        h.append(
            AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert!(matches!(authorization(&h), AuthHeader::Invalid(_)));
    }
}
