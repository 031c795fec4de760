//! A generic SMS gateway stand-in for `sms.provider = "webhook"`: takes
//! `POST /sms` with the JSON body `{"to", "body"}` and, if a token is set,
//! requires `Authorization: Bearer <token>`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use serde_json::Value;

use super::standin::{bearer, content_type, Control, Server};
use super::twilio::Sms;

pub const TOKEN: &str = "webhook-test-token";

#[derive(Default)]
pub struct Inner {
    pub control: Control,
    messages: Mutex<Vec<Sms>>,
}

pub struct SmsWebhook {
    pub state: Arc<Inner>,
    server: Server,
}

impl SmsWebhook {
    pub async fn start() -> SmsWebhook {
        let state = Arc::new(Inner::default());
        let app = Router::new()
            .route("/sms", post(receive))
            .with_state(state.clone());
        SmsWebhook {
            state,
            server: Server::start(app).await,
        }
    }

    /// What `sms.webhook_url` is set to.
    pub fn url(&self) -> String {
        format!("{}/sms", self.server.base_url())
    }

    pub fn messages_to(&self, to: &str) -> Vec<Sms> {
        self.state
            .messages
            .lock()
            .iter()
            .filter(|m| m.to == to)
            .cloned()
            .collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.control.violations()
    }
}

async fn receive(State(state): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let c = &state.control;
    if let Some(status) = c.failure() {
        return status.into_response();
    }
    if bearer(&headers).as_deref() != Some(TOKEN) {
        c.violation("no or wrong bearer token");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if !content_type(&headers).starts_with("application/json") {
        c.violation(format!("content-type {}", content_type(&headers)));
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let obj = v.as_object();
    let (Some(to), Some(text)) = (
        v["to"].as_str().map(str::to_owned),
        v["body"].as_str().map(str::to_owned),
    ) else {
        c.violation(format!("body {v}"));
        return StatusCode::BAD_REQUEST.into_response();
    };
    if obj.is_some_and(|o| o.len() != 2) {
        c.violation(format!("members other than to/body: {v}"));
    }
    state.messages.lock().push(Sms {
        to,
        from: String::new(),
        body: text,
    });
    StatusCode::ACCEPTED.into_response()
}
