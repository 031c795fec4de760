//! A Resend stand-in: `POST /emails` as Resend documents it. Bearer API key,
//! a JSON body with `from`, `to` (an address or a list of at most 50),
//! `subject` and `html` and/or `text`; 200 `{"id"}` on success, Resend's
//! error document (`statusCode`, `message`, `name`) otherwise.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::standin::{bearer, content_type, Control, Server};

pub const API_KEY: &str = "re_test_0123456789";

#[derive(Clone, Debug)]
pub struct SentEmail {
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub html: String,
    pub text: String,
}

#[derive(Default)]
pub struct Inner {
    pub control: Control,
    emails: Mutex<Vec<SentEmail>>,
}

pub struct Resend {
    pub state: Arc<Inner>,
    server: Server,
}

impl Resend {
    pub async fn start() -> Resend {
        let state = Arc::new(Inner::default());
        let app = Router::new()
            .route("/emails", post(send))
            .with_state(state.clone());
        Resend {
            state,
            server: Server::start(app).await,
        }
    }

    /// What `email.resend_api_url` is set to.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    pub fn emails_to(&self, to: &str) -> Vec<SentEmail> {
        self.state
            .emails
            .lock()
            .iter()
            .filter(|e| e.to.iter().any(|t| t == to))
            .cloned()
            .collect()
    }

    pub fn fail_with(&self, status: Option<u16>) {
        self.state.control.fail_with(status);
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.control.violations()
    }
}

fn resend_error(status: StatusCode, name: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "statusCode": status.as_u16(), "message": message, "name": name })),
    )
        .into_response()
}

async fn send(State(state): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let c = &state.control;
    if let Some(status) = c.failure() {
        return resend_error(status, "internal_server_error", "injected by the test");
    }
    match bearer(&headers) {
        None => {
            c.violation("no bearer API key");
            return resend_error(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "Missing API key in the authorization header",
            );
        }
        Some(k) if k != API_KEY => {
            c.violation(format!("wrong API key {k}"));
            return resend_error(
                StatusCode::FORBIDDEN,
                "invalid_api_key",
                "API key is invalid",
            );
        }
        Some(_) => {}
    }
    if !content_type(&headers).starts_with("application/json") {
        c.violation(format!("content-type {}", content_type(&headers)));
        return resend_error(
            StatusCode::BAD_REQUEST,
            "validation_error",
            "Invalid content type",
        );
    }
    let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(&body) else {
        c.violation("body is not a JSON object");
        return resend_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            "Invalid JSON",
        );
    };
    let s = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_owned);
    let to: Option<Vec<String>> = match b.get("to") {
        Some(Value::String(t)) => Some(vec![t.clone()]),
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= 50 => {
            a.iter().map(|x| x.as_str().map(str::to_owned)).collect()
        }
        _ => None,
    };
    let (Some(from), Some(to), Some(subject)) = (s("from"), to, s("subject")) else {
        c.violation(format!("missing from/to/subject in {b:?}"));
        return resend_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_required_field",
            "Missing `to`, `from` or `subject` field.",
        );
    };
    if s("html").is_none() && s("text").is_none() {
        c.violation("neither html nor text");
        return resend_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            "Missing `html` or `text` field.",
        );
    }
    for k in b.keys() {
        if ![
            "from",
            "to",
            "subject",
            "html",
            "text",
            "cc",
            "bcc",
            "reply_to",
            "headers",
            "tags",
            "scheduled_at",
            "attachments",
        ]
        .contains(&k.as_str())
        {
            c.violation(format!("unknown member {k}"));
        }
    }
    state.emails.lock().push(SentEmail {
        from,
        to,
        subject,
        html: s("html").unwrap_or_default(),
        text: s("text").unwrap_or_default(),
    });
    Json(json!({ "id": super::keycloak::uuid() })).into_response()
}
