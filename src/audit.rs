//! Audit events (docs/audit.md): one JSON object per security event, always
//! logged on the `audit` target and, with `audit.webhook_url`, queued for a
//! webhook. Delivery is best effort and never makes a request wait: the queue
//! is bounded, and what does not fit is counted and dropped.
//!
//! Request metadata (client IP, user agent, request id) reaches the services
//! through a task-local [`RequestMeta`] the HTTP layer sets, so that no
//! service takes HTTP types; the CLI has none, and those fields are null.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use http::HeaderMap;
use parking_lot::Mutex;
use prometheus::IntCounter;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::clock::SharedClock;
use crate::config::AuditConfig;
use crate::metrics::Metrics;
use crate::token::{sid_hash, Identity};

/// Bounds on what a client sends us that ends up in an event.
const MAX_USER_AGENT: usize = 256;
const MAX_REQUEST_ID: usize = 128;

/// The events, by their names in docs/audit.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ProfileCreated,
    ContactChangeRequested,
    ContactChangeConfirmed,
    TotpEnrolled,
    TotpRemoved,
    RecoveryCodesGenerated,
    RecoveryCodeUsed,
    FactorPassed,
    Lockout,
    FactorLocked,
    UserReset,
    BackchannelLogout,
    DeviceRemembered,
    DeviceRevoked,
    WebAuthnRegistered,
    WebAuthnRemoved,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ProfileCreated => "profile_created",
            Kind::ContactChangeRequested => "contact_change_requested",
            Kind::ContactChangeConfirmed => "contact_change_confirmed",
            Kind::TotpEnrolled => "totp_enrolled",
            Kind::TotpRemoved => "totp_removed",
            Kind::RecoveryCodesGenerated => "recovery_codes_generated",
            Kind::RecoveryCodeUsed => "recovery_code_used",
            Kind::FactorPassed => "factor_passed",
            Kind::Lockout => "lockout",
            Kind::FactorLocked => "factor_locked",
            Kind::UserReset => "user_reset",
            Kind::BackchannelLogout => "backchannel_logout",
            Kind::DeviceRemembered => "device_remembered",
            Kind::DeviceRevoked => "device_revoked",
            Kind::WebAuthnRegistered => "webauthn_registered",
            Kind::WebAuthnRemoved => "webauthn_removed",
        }
    }
}

/// One event before it is stamped and sent. Only hashes name the user and
/// the session; extra fields are for labels and counts, never for tokens,
/// codes or contacts.
#[derive(Debug, Clone)]
pub struct Event {
    kind: Kind,
    outcome: &'static str,
    subject_hash: Option<String>,
    sid_hash: Option<String>,
    extra: Map<String, Value>,
}

impl Event {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            outcome: "success",
            subject_hash: None,
            sid_hash: None,
            extra: Map::new(),
        }
    }

    /// The token's subject and session, hashed.
    pub fn identity(self, id: &Identity) -> Self {
        let sid = id.sid().map(|s| sid_hash(id.iss(), s));
        self.hashes(Some(id.subject_key().as_str().to_owned()), sid)
    }

    /// `subject_hash` is `token::subject_hash(iss, sub)`, `sid_hash`
    /// `token::sid_hash(iss, sid)`.
    pub fn hashes(mut self, subject_hash: Option<String>, sid_hash: Option<String>) -> Self {
        self.subject_hash = subject_hash;
        self.sid_hash = sid_hash;
        self
    }

    pub fn failure(mut self) -> Self {
        self.outcome = "failure";
        self
    }

    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(name.to_string(), value.into());
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
}

/// The line as it is logged and posted; field order is the schema's.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: &'static str,
    outcome: &'static str,
    subject_hash: Option<&'a str>,
    sid_hash: Option<&'a str>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

/// What the HTTP request that caused an event says about its client, as
/// the proxy in front reported it. Header values are kept as they came
/// (reference-counted, no copy): they are read only when an event is
/// written, and most requests write none.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    forwarded_for: Option<HeaderValue>,
    real_ip: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    peer: Option<IpAddr>,
}

tokio::task_local! {
    static META: RequestMeta;
}

impl RequestMeta {
    /// From the request's headers and the connection's peer.
    pub fn from_headers(h: &HeaderMap, peer: Option<IpAddr>) -> Self {
        Self {
            forwarded_for: h.get("x-forwarded-for").cloned(),
            real_ip: h.get("x-real-ip").cloned(),
            user_agent: h.get(USER_AGENT).cloned(),
            request_id: h.get("x-request-id").cloned(),
            peer,
        }
    }

    /// Runs `f` (one request) with this metadata visible to
    /// [`Audit::emit`]; wraps the future, allocates nothing.
    pub fn scope<F: std::future::Future>(
        self,
        f: F,
    ) -> tokio::task::futures::TaskLocalFuture<RequestMeta, F> {
        META.scope(self, f)
    }

    /// `X-Forwarded-For`'s first hop, else `X-Real-IP`, else the peer; only
    /// what parses as an address (with or without a port).
    pub fn client_ip(&self) -> Option<String> {
        let first_hop = self
            .forwarded_for
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.split(',').next())
            .and_then(parse_ip);
        first_hop
            .or_else(|| {
                self.real_ip
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_ip)
            })
            .or(self.peer)
            .map(|ip| ip.to_string())
    }

    fn user_agent(&self) -> Option<String> {
        bounded(self.user_agent.as_ref(), MAX_USER_AGENT)
    }

    fn request_id(&self) -> Option<String> {
        bounded(self.request_id.as_ref(), MAX_REQUEST_ID)
    }
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

fn bounded(v: Option<&HeaderValue>, max: usize) -> Option<String> {
    let v = v?;
    let s: String = String::from_utf8_lossy(v.as_bytes())
        .chars()
        .take(max)
        .collect();
    Some(s)
}

/// The audit port: every service that does something worth auditing gets
/// one. Cheap to call; never blocks, never fails.
pub struct Audit {
    clock: SharedClock,
    queue: Option<Queue>,
    dropped: IntCounter,
}

struct Queue {
    tx: Mutex<Option<mpsc::Sender<String>>>,
    worker: Mutex<Worker>,
}

enum Worker {
    /// Built, not started: events wait in the queue (bounded).
    Idle {
        rx: mpsc::Receiver<String>,
        post: Post,
    },
    Running(JoinHandle<()>),
    Stopped,
}

struct Post {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
    failures: IntCounter,
}

impl Audit {
    /// Logs only (tests, and a configuration without `audit.webhook_url`).
    pub fn log_only(clock: SharedClock, metrics: &Metrics) -> Self {
        Self {
            clock,
            queue: None,
            dropped: metrics.audit_dropped.clone(),
        }
    }

    pub fn from_config(
        cfg: &AuditConfig,
        client: reqwest::Client,
        clock: SharedClock,
        metrics: &Metrics,
    ) -> Self {
        let mut a = Self::log_only(clock, metrics);
        if let Some(url) = &cfg.webhook_url {
            let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
            a.queue = Some(Queue {
                tx: Mutex::new(Some(tx)),
                worker: Mutex::new(Worker::Idle {
                    rx,
                    post: Post {
                        client,
                        url: url.clone(),
                        timeout: cfg.webhook_timeout.get(),
                        failures: metrics.audit_webhook_failures.clone(),
                    },
                }),
            });
        }
        a
    }

    /// Starts posting queued events to the webhook (needs a Tokio runtime).
    pub fn start(&self) {
        let Some(q) = &self.queue else { return };
        let mut w = q.worker.lock();
        *w = match std::mem::replace(&mut *w, Worker::Stopped) {
            Worker::Idle { rx, post } => Worker::Running(tokio::spawn(deliver(rx, post))),
            other => other,
        };
    }

    /// Stops taking events and gives the webhook up to `within` for those
    /// still queued (the CLI, and the server on shutdown).
    pub async fn close(&self, within: Duration) {
        let Some(q) = &self.queue else { return };
        drop(q.tx.lock().take());
        let handle = match std::mem::replace(&mut *q.worker.lock(), Worker::Stopped) {
            Worker::Running(h) => h,
            Worker::Idle { .. } | Worker::Stopped => return,
        };
        if tokio::time::timeout(within, handle).await.is_err() {
            tracing::warn!("audit webhook: events still queued at exit were not delivered");
        }
    }

    /// Stamps the event (time, request metadata), logs it and queues it.
    pub fn emit(&self, e: Event) {
        let (client_ip, user_agent, request_id) = META
            .try_with(|m| (m.client_ip(), m.user_agent(), m.request_id()))
            .unwrap_or_default();
        let line = Line {
            time: rfc3339(self.clock.now()),
            event: e.kind.as_str(),
            outcome: e.outcome,
            subject_hash: e.subject_hash.as_deref(),
            sid_hash: e.sid_hash.as_deref(),
            client_ip,
            user_agent,
            request_id,
            extra: &e.extra,
        };
        let json = match serde_json::to_string(&line) {
            Ok(j) => j,
            Err(err) => {
                tracing::warn!(error = %err, event = e.kind.as_str(), "audit event not serializable");
                return;
            }
        };
        // serde_json escapes control characters: the line stays one line
        // whatever a client put in its headers.
        tracing::info!(target: "audit", "{json}");
        let Some(q) = &self.queue else { return };
        let sent = match q.tx.lock().as_ref() {
            Some(tx) => tx.try_send(json).is_ok(),
            None => false,
        };
        if !sent {
            self.dropped.inc();
        }
    }
}

/// One POST at a time, each bounded by the timeout: a slow or dead webhook
/// fills the queue, and [`Audit::emit`] then drops and counts.
async fn deliver(mut rx: mpsc::Receiver<String>, p: Post) {
    while let Some(json) = rx.recv().await {
        let r = p
            .client
            .post(&p.url)
            .timeout(p.timeout)
            .header(CONTENT_TYPE, "application/json")
            .body(json)
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => {
                p.failures.inc();
                tracing::warn!(
                    status = resp.status().as_u16(),
                    "audit webhook refused an event"
                );
            }
            Err(e) => {
                p.failures.inc();
                tracing::warn!(error = %without_url(&e), "audit webhook unreachable");
            }
        }
    }
}

/// reqwest's errors name the URL, which may carry a token in its query.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    kind.to_string()
}

/// Unix seconds as RFC 3339 in UTC (`2026-12-03T08:36:40Z`).
pub fn rfc3339(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_287_000), "2026-12-03T08:36:40Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn client_ip_prefers_the_first_forwarded_hop() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7, 10.0.0.1".parse().unwrap());
        h.insert("x-real-ip", "198.51.100.2".parse().unwrap());
        assert_eq!(
            RequestMeta::from_headers(&h, None).client_ip().as_deref(),
            Some("203.0.113.7")
        );
        h.insert("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(
            RequestMeta::from_headers(&h, None).client_ip().as_deref(),
            Some("198.51.100.2")
        );
        h.remove("x-real-ip");
        h.insert("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(
            RequestMeta::from_headers(&h, None).client_ip().as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(RequestMeta::default().client_ip(), None);
    }

    #[test]
    fn user_agent_is_bounded() {
        let mut h = HeaderMap::new();
        h.insert(USER_AGENT, "x".repeat(1000).parse().unwrap());
        let m = RequestMeta::from_headers(&h, None);
        assert_eq!(m.user_agent().map(|s| s.len()), Some(MAX_USER_AGENT));
    }
}
