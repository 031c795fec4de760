//! What the provider stand-ins (Twilio, Resend, an SMS webhook, the Keycloak
//! Admin API) share: an in-process HTTP server on a loopback port, a switch to
//! fail on demand, and a record of requests refused for not being what the
//! provider documents, which tests assert stays empty.

use std::net::SocketAddr;

use axum::http::StatusCode;
use parking_lot::Mutex;

pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(app: axum::Router) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a stand-in");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Server { addr, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Failure switch and protocol-violation log.
#[derive(Default)]
pub struct Control {
    failure: Mutex<Option<StatusCode>>,
    violations: Mutex<Vec<String>>,
}

impl Control {
    pub fn fail_with(&self, status: Option<u16>) {
        *self.failure.lock() = status.map(|s| StatusCode::from_u16(s).unwrap());
    }

    pub fn failure(&self) -> Option<StatusCode> {
        *self.failure.lock()
    }

    pub fn violation(&self, what: impl Into<String>) {
        self.violations.lock().push(what.into());
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().clone()
    }
}

/// `Authorization: Basic` credentials, decoded.
pub fn basic_auth(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// `Authorization: Bearer` token.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, t) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| t.trim().to_owned())
}

pub fn content_type(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}
