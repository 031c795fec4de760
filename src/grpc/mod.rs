//! Envoy's external authorization over gRPC: `envoy.service.auth.v3.Authorization/Check`
//! and the standard `grpc.health.v1.Health` service.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::app::AppState;
use crate::authz::{AuthHeader, CheckInput, Decision, EXT_MAX_AGE, EXT_MODE, EXT_REQUIRE};
use crate::error::PROBLEM_JSON;
use crate::token::Reason;

/// Generated from proto/; module nesting mirrors the proto packages because
/// the generated code refers across packages with relative paths.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    pub mod envoy {
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

use pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use pb::envoy::r#type::v3::HttpStatus;
use pb::envoy::service::auth::v3::attribute_context::{HeaderEntry, HttpRequest};
use pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use pb::envoy::service::auth::v3::check_response::HttpResponse;
use pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use pb::google::rpc::Status as RpcStatus;

pub struct AuthzService {
    state: Arc<AppState>,
}

pub fn service(state: Arc<AppState>) -> AuthorizationServer<AuthzService> {
    AuthorizationServer::new(AuthzService { state })
        // Check requests are small; anything large is not from Envoy.
        .max_decoding_message_size(256 * 1024)
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    /// Always completes the call with gRPC OK and puts the decision in
    /// `CheckResponse.status`. A gRPC error would make Envoy apply
    /// `failure_mode_allow`, which an operator may have set to true: a denial
    /// or a "cannot decide" must never depend on that setting, so every deny,
    /// including the fail-closed 503, is an ordinary CheckResponse.
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let start = Instant::now();
        let span = crate::telemetry::check_span(crate::telemetry::GRPC_CHECK_ROUTE);
        // Envoy's own trace context, of its ext_authz call, is the nearest
        // parent; the checked request's is taken when the call has none.
        let call_parent = if span.is_disabled() {
            None
        } else {
            call_trace_context(request.metadata())
        };
        let req = request.into_inner();
        let attrs = req.attributes.unwrap_or_default();
        let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
        let headers = Headers::of(&http);
        let input = CheckInput {
            method: &http.method,
            host: &http.host,
            path: &http.path,
            authorization: headers.authorization(),
            ext_require: attrs
                .context_extensions
                .get(EXT_REQUIRE)
                .map(String::as_str),
            ext_max_age: attrs
                .context_extensions
                .get(EXT_MAX_AGE)
                .map(String::as_str),
            ext_mode: attrs.context_extensions.get(EXT_MODE).map(String::as_str),
        };
        if !span.is_disabled() {
            // A repeated or binary value is no trace context.
            let get = |name: &str| headers.get(name).ok().flatten();
            let mut carrier = crate::telemetry::Carrier {
                request_id: get("x-request-id"),
                traceparent: get("traceparent"),
                tracestate: get("tracestate"),
            };
            if let Some((traceparent, tracestate)) = &call_parent {
                carrier.traceparent = Some(traceparent);
                carrier.tracestate = tracestate.as_deref();
            }
            crate::telemetry::begin(&span, &carrier);
        }
        let (decision, identity) = self.state.authz.check_identified(&input).await;
        let resp = self.render(&decision, headers.names());
        self.state
            .metrics
            .grpc_checks
            .record(decision.outcome(), start.elapsed().as_secs_f64());
        crate::telemetry::decided(&span, decision.outcome(), identity.as_deref());
        Ok(Response::new(resp))
    }
}

impl HeaderEntry {
    /// One entry of `HttpRequest.headers`, for callers that build Checks
    /// (tests, the load generator).
    pub fn new(key: &str, value: &str) -> Self {
        HeaderEntry {
            key: bytes::Bytes::copy_from_slice(key.as_bytes()),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        }
    }
}

/// The request's headers as Envoy sent them, read in place: `headers` (the
/// map form, see the proto) or, when the filter sets `encode_raw_headers`,
/// `header_map`. A handful of entries: a scan is cheaper than building a map.
pub enum Headers<'a> {
    Map(&'a [HeaderEntry]),
    Raw(&'a [HeaderValue]),
}

impl<'a> Headers<'a> {
    pub fn of(http: &'a HttpRequest) -> Self {
        match &http.header_map {
            Some(m) if http.headers.is_empty() => Headers::Raw(&m.headers),
            _ => Headers::Map(&http.headers),
        }
    }

    /// (name, value) pairs. Raw headers carry the value in `raw_value`, or
    /// in `value` from Envoy versions before that field.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let (map, raw) = match *self {
            Headers::Map(m) => (m, &[][..]),
            Headers::Raw(r) => (&[][..], r),
        };
        map.iter()
            .map(|e| (&e.key[..], &e.value[..]))
            .chain(raw.iter().map(|h| {
                let v = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value[..]
                };
                (h.key.as_bytes(), v)
            }))
    }

    /// The value of the one header `name` (ASCII, lower case), if sent once as
    /// text. Sent twice (a caller other than Envoy, which joins them) or not
    /// text: `Err`.
    pub fn get(&self, name: &str) -> Result<Option<&'a str>, Reason> {
        let mut found = None;
        for (k, v) in self.iter() {
            if k.eq_ignore_ascii_case(name.as_bytes()) {
                if found.is_some() {
                    return Err(Reason::MultipleCredentials);
                }
                found = Some(v);
            }
        }
        found
            .map(|v| std::str::from_utf8(v).map_err(|_| Reason::Malformed))
            .transpose()
    }

    /// Envoy joins repeated headers with `,` and bearer() refuses any comma
    /// as a second credential; two entries are two credentials as well.
    pub fn authorization(&self) -> AuthHeader<'a> {
        match self.get("authorization") {
            Ok(v) => AuthHeader::from_option(v),
            Err(why) => AuthHeader::Invalid(why),
        }
    }

    /// The names, for headers_to_remove. A name that is not text cannot be
    /// one of ours (they are ASCII), so it is skipped.
    pub fn names(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter_map(|(k, _)| std::str::from_utf8(k).ok())
    }
}

/// `traceparent` (and `tracestate`) of the gRPC call itself, as Envoy
/// sends them when its tracing is on.
fn call_trace_context(m: &tonic::metadata::MetadataMap) -> Option<(String, Option<String>)> {
    let get = |name: &str| m.get(name).and_then(|v| v.to_str().ok());
    let traceparent = get("traceparent")?;
    Some((traceparent.to_owned(), get("tracestate").map(str::to_owned)))
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            raw_value: bytes::Bytes::new(),
        }),
        // Replace, never append to, any value the client sent.
        append: Some(false),
        ..Default::default()
    }
}

impl AuthzService {
    fn render<'a>(
        &self,
        decision: &Decision,
        client_headers: impl Iterator<Item = &'a str>,
    ) -> CheckResponse {
        let names = &self.state.authz.headers;
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
            Decision::Deny(err, _) => return self.denied(err),
        };
        let mut set: Vec<HeaderValueOption> = match identity {
            Some(id) => names
                .values(id, *second_factor)
                .map(|(k, v)| header(k, &v))
                .collect(),
            None => Vec::new(),
        };
        if let Some(err) = would_deny {
            set.push(header(&names.would_deny, err.status().as_str()));
        }
        // Envoy applies headers_to_remove after headers: removing a
        // name we also set would drop our value. Only client-sent
        // identity headers that we do not set are listed.
        let headers_to_remove = client_headers
            .filter(|h| names.has_prefix(h))
            .filter(|h| {
                !set.iter().any(|o| {
                    o.header
                        .as_ref()
                        .is_some_and(|s| s.key.eq_ignore_ascii_case(h))
                })
            })
            .map(str::to_string)
            .collect();
        CheckResponse {
            status: Some(RpcStatus {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: set,
                headers_to_remove,
            })),
        }
    }

    fn denied(&self, err: &crate::error::Error) -> CheckResponse {
        let mut headers = vec![header("content-type", PROBLEM_JSON)];
        if let Some(w) = self.state.authz.www_authenticate(err) {
            headers.push(header("www-authenticate", w));
        }
        if let Some(r) = err.retry_after() {
            headers.push(header("retry-after", &r.as_secs().max(1).to_string()));
        }
        CheckResponse {
            status: Some(RpcStatus {
                code: err.grpc_code(),
                message: err.code().to_string(),
                details: vec![],
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(err.status().as_u16()),
                }),
                headers,
                body: err.problem().to_string(),
            })),
        }
    }
}
