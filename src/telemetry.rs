//! Logs and traces: the `tracing` subscriber (log lines on stderr as
//! `log.format` and `log.level` say) and, only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, one span per Check and per `/user`
//! request exported over OTLP/gRPC (docs/tracing.md).
//!
//! The spans live on their own target, [`TARGET`], which the log layer never
//! takes: with no exporter no layer is interested in them, their callsites
//! are disabled once and for all, and a span costs the load of the
//! callsite's cached interest. Their fields are filled in only for an
//! enabled span, so the Check path allocates nothing for them.

use std::time::Duration;

use axum::response::Response;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, FilterExt, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::authz::Outcome;
use crate::config::Config;
use crate::token::Identity;

/// The target of every exported span.
pub const TARGET: &str = "twofa::trace";

/// The `route` of a gRPC Check span.
pub const GRPC_CHECK_ROUTE: &str = "envoy.service.auth.v3.Authorization/Check";

/// The standard variables (OpenTelemetry's SDK environment specification)
/// that turn the exporter on; the SDK reads the rest (`OTEL_SERVICE_NAME`,
/// `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, ...) itself.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// A client-sent `x-request-id` is kept only this long: it is an
/// attribute of every span, and a header may be kilobytes.
const MAX_REQUEST_ID: usize = 128;

/// What [`init`] set up; [`Telemetry::shutdown`] flushes the spans still
/// queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter (at most 5 s:
    /// the SDK's own limit). Called after the graceful shutdown, while the
    /// runtime the gRPC client runs on is still up.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5)) {
                tracing::warn!(error = %e, "could not export the last spans");
            }
        }
    }
}

/// Installs the global subscriber. `rt` is the runtime the OTLP gRPC client
/// will run on (tonic spawns its connection there); without one, or without
/// an endpoint in the environment, nothing is exported and no OpenTelemetry
/// layer is installed at all.
pub fn init(cfg: &Config, rt: Option<&tokio::runtime::Runtime>) -> Telemetry {
    let (provider, failure) = match (export_wanted(), rt) {
        (false, _) => (None, None),
        (true, None) => (None, Some("the async runtime did not start".to_owned())),
        (true, Some(rt)) => {
            let _in_runtime = rt.enter();
            match provider() {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e.to_string())),
            }
        }
    };
    let logs = log_layer(&cfg.log.level, &cfg.log.format);
    let installed = match &provider {
        Some(p) => {
            let otel = tracing_opentelemetry::layer()
                .with_tracer(p.tracer("twofa-authz"))
                // The spans are never entered: busy/idle times would say
                // nothing, and thread and source location are noise.
                .with_tracked_inactivity(false)
                .with_threads(false)
                .with_location(false)
                .with_target(false)
                // Only our spans: events and the spans of the libraries
                // (tonic, hyper, h2 — the exporter's own among them) stay out.
                .with_filter(
                    filter_fn(|m| m.target() == TARGET).with_max_level_hint(LevelFilter::INFO),
                );
            tracing_subscriber::registry()
                .with(logs)
                .with(otel)
                .try_init()
        }
        None => tracing_subscriber::registry().with(logs).try_init(),
    };
    if let Err(e) = installed {
        eprintln!("twofa-authz: cannot install the log subscriber: {e}");
    }
    if let Some(e) = failure {
        tracing::warn!(error = %e, "OTLP trace export is configured but cannot start; running without it");
    } else if provider.is_some() {
        if let Ok(p) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL") {
            if p != "grpc" {
                tracing::warn!(protocol = %p, "OTEL_EXPORTER_OTLP_PROTOCOL is not supported: spans are exported over OTLP/gRPC");
            }
        }
        tracing::info!("exporting spans over OTLP/gRPC");
    }
    Telemetry { provider }
}

fn non_empty(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty())
}

fn export_wanted() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
    !disabled && ENDPOINT_VARS.iter().any(|v| non_empty(v))
}

fn provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    // The SDK names an unnamed service `unknown_service`: ours has a name.
    let named = non_empty("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("twofa-authz");
    }
    Ok(SdkTracerProvider::builder()
        // Honours OTEL_BSP_SCHEDULE_DELAY and the other OTEL_BSP_* variables.
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The log lines: `log.level` as an EnvFilter, never the spans of
/// [`TARGET`] (they are for the exporter; were the log layer interested in
/// them, they would be built on every Check with export off).
fn log_layer(level: &str, format: &str) -> impl Layer<Registry> + Send + Sync {
    let mut filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Audit events are written whatever the level, unless the filter says
    // otherwise about them (`warn,audit=off`).
    if !level.contains("audit") {
        if let Ok(d) = "audit=info".parse() {
            filter = filter.add_directive(d);
        }
    }
    // The hint keeps the EnvFilter's maximum level the global one: a filter
    // with no hint would let every `debug!` reach its callsite check.
    let not_spans = filter_fn(|m| m.target() != TARGET).with_max_level_hint(LevelFilter::TRACE);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    fmt.with_filter(filter.and(not_spans))
}

/// Whether spans are exported: false (a cached atomic load) unless an
/// exporter is installed.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// The span of a Check (gRPC or forward auth), disabled unless exported.
/// `route` is the endpoint that was called, never the checked path: a path
/// can carry a user's name or address.
pub fn check_span(route: &'static str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "authz.check",
        otel.kind = "server",
        route,
        request_id = Empty,
        decision = Empty,
        reason = Empty,
        subject = Empty,
    )
}

/// The W3C trace context and Envoy's request id, as a request carried them.
#[derive(Default, Clone, Copy)]
pub struct Carrier<'a> {
    pub request_id: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

impl<'a> Carrier<'a> {
    pub fn from_headers(h: &'a http::HeaderMap) -> Self {
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        Carrier {
            request_id: get("x-request-id"),
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        }
    }
}

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Records the request id on an enabled span and makes a valid
/// `traceparent` its remote parent. The caller tests
/// [`Span::is_disabled`] first, so that a disabled span reads no header.
pub fn begin(span: &Span, carrier: &Carrier<'_>) {
    if let Some(id) = carrier.request_id {
        span.record("request_id", truncate(id, MAX_REQUEST_ID));
    }
    if carrier.traceparent.is_some() {
        let cx = TraceContextPropagator::new().extract(carrier);
        if cx.span().span_context().is_valid() {
            // Fails only for a span already started, which ours is not.
            let _ = span.set_parent(cx);
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The subject as logs and spans name it: the store's subject key (SHA-256
/// of `iss` and `sub`) cut to 16 hex digits, as the debug decision log
/// line has it. Never the `sub` itself.
fn record_subject_on(span: &Span, id: &Identity) {
    span.record("subject", &id.subject_key()[..16]);
}

/// A Check's decision on its span (a no-op on a disabled one).
pub fn decided(span: &Span, outcome: Outcome, identity: Option<&Identity>) {
    if span.is_disabled() {
        return;
    }
    span.record("decision", outcome.verdict.label());
    span.record("reason", outcome.reason.label());
    if let Some(id) = identity {
        record_subject_on(span, id);
    }
}

/// A Check refused before any decision (a forward-auth request without its
/// proxy's headers).
pub fn refused(span: &Span, code: &'static str) {
    if span.is_disabled() {
        return;
    }
    span.record("decision", "invalid_check_request");
    span.record("reason", code);
}

/// The span of a `/user` request, disabled unless exported.
pub fn user_span(method: &'static str, route: &str, headers: &http::HeaderMap) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "user.request",
        otel.kind = "server",
        otel.name = Empty,
        route,
        http.request.method = method,
        request_id = Empty,
        http.response.status_code = Empty,
        decision = Empty,
        reason = Empty,
        subject = Empty,
    );
    if !span.is_disabled() {
        span.record("otel.name", format!("{method} {route}"));
        begin(&span, &Carrier::from_headers(headers));
    }
    span
}

/// The problem code of an error response, for the `/user` span's `reason`;
/// attached only while spans are exported.
#[derive(Clone, Copy)]
pub struct ProblemCode(pub &'static str);

/// The outcome of a `/user` request on its span: `ok`, `refused` (4xx) or
/// `error` (5xx), and the problem's code.
pub fn user_done(span: &Span, resp: &Response) {
    if span.is_disabled() {
        return;
    }
    let status = resp.status();
    span.record("http.response.status_code", status.as_u16());
    let decision = match status.as_u16() {
        500.. => "error",
        400.. => "refused",
        _ => "ok",
    };
    span.record("decision", decision);
    let reason = resp
        .extensions()
        .get::<ProblemCode>()
        .map_or("none", |c| c.0);
    span.record("reason", reason);
}

/// The authenticated subject of a `/user` request, on the request's span
/// (the current one: the middleware runs the handler inside it).
pub fn user_subject(id: &Identity) {
    if enabled() {
        record_subject_on(&Span::current(), id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_spans_are_disabled_and_logs_are_not() {
        let subscriber = tracing_subscriber::registry().with(log_layer("info", "text"));
        tracing::subscriber::with_default(subscriber, || {
            assert!(check_span(GRPC_CHECK_ROUTE).is_disabled());
            assert!(user_span("GET", "/user", &http::HeaderMap::new()).is_disabled());
            assert!(!enabled());
            // Even a filter that names the target does not let them in.
            assert!(tracing::enabled!(target: "twofa_authz", tracing::Level::INFO));
        });
        let subscriber =
            tracing_subscriber::registry().with(log_layer("twofa::trace=trace,info", "json"));
        tracing::subscriber::with_default(subscriber, || {
            assert!(check_span(GRPC_CHECK_ROUTE).is_disabled());
        });
    }

    #[test]
    fn request_ids_are_bounded_on_a_char_boundary() {
        assert_eq!(truncate("abc", 128), "abc");
        let long = "é".repeat(100);
        let t = truncate(&long, 128);
        assert_eq!(t.len(), 128);
        assert_eq!(truncate(&long, 127).len(), 126);
    }
}
