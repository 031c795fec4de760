//! A Twilio stand-in: the Messages resource of the REST API 2010-04-01 as
//! Twilio documents it. `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`,
//! HTTP basic auth with the Account SID and auth token, a form-encoded body
//! with `To`, `From` and `Body`; 201 and the message resource on success,
//! Twilio's error document otherwise.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::json;

use super::standin::{basic_auth, content_type, Control, Server};

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "twilio-test-auth-token";
pub const FROM: &str = "+15005550006";

#[derive(Clone, Debug)]
pub struct Sms {
    pub to: String,
    pub from: String,
    pub body: String,
}

impl Sms {
    /// The code in a code SMS: the digits it starts with.
    pub fn code(&self) -> String {
        let d: String = self.body.chars().take_while(char::is_ascii_digit).collect();
        assert!(!d.is_empty(), "no code at the start of {:?}", self.body);
        d
    }
}

#[derive(Default)]
pub struct Inner {
    pub control: Control,
    messages: Mutex<Vec<Sms>>,
}

pub struct Twilio {
    pub state: Arc<Inner>,
    server: Server,
}

impl Twilio {
    pub async fn start() -> Twilio {
        let state = Arc::new(Inner::default());
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(create))
            .fallback(|| async {
                twilio_error(
                    StatusCode::NOT_FOUND,
                    20404,
                    "The requested resource was not found",
                )
            })
            .with_state(state.clone());
        Twilio {
            state,
            server: Server::start(app).await,
        }
    }

    /// What `sms.twilio_api_url` is set to.
    pub fn base_url(&self) -> String {
        self.server.base_url()
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

    pub fn fail_with(&self, status: Option<u16>) {
        self.state.control.fail_with(status);
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.control.violations()
    }

    pub async fn wait_for(&self, to: &str, n: usize) -> Sms {
        let ok = super::process::poll_until(std::time::Duration::from_secs(15), || {
            let got = self.messages_to(to).len();
            async move { got >= n }
        })
        .await;
        assert!(
            ok,
            "{to} did not get SMS #{n}; violations {:?}",
            self.violations()
        );
        self.messages_to(to).pop().unwrap()
    }
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        Json(json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })),
    )
        .into_response()
}

async fn create(
    State(state): State<Arc<Inner>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let c = &state.control;
    if let Some(status) = c.failure() {
        return twilio_error(status, 20500, "An internal server error has occurred");
    }
    if sid != ACCOUNT_SID {
        c.violation(format!("account SID in the path: {sid}"));
        return twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            "The requested resource was not found",
        );
    }
    if basic_auth(&headers) != Some((ACCOUNT_SID.into(), AUTH_TOKEN.into())) {
        c.violation("basic auth is not AccountSid:AuthToken");
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    if !content_type(&headers).starts_with("application/x-www-form-urlencoded") {
        c.violation(format!("content-type {}", content_type(&headers)));
        return twilio_error(StatusCode::BAD_REQUEST, 21601, "Unsupported content type");
    }
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (Some(to), Some(from), Some(text)) = (get("To"), get("From"), get("Body")) else {
        c.violation(format!("form fields {fields:?}"));
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    };
    if !to.starts_with('+') || !to[1..].chars().all(|ch| ch.is_ascii_digit()) {
        c.violation(format!("To is not E.164: {to}"));
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            "The 'To' number is not a valid phone number.",
        );
    }
    if from != FROM {
        c.violation(format!("From: {from}"));
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21659,
            "'From' is not a Twilio phone number",
        );
    }
    if text.is_empty() || text.chars().count() > 1600 {
        c.violation(format!("Body length {}", text.len()));
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    state.messages.lock().push(Sms {
        to: to.clone(),
        from: from.clone(),
        body: text.clone(),
    });
    (
        StatusCode::CREATED,
        Json(json!({
            "account_sid": ACCOUNT_SID,
            "api_version": "2010-04-01",
            "body": text,
            "direction": "outbound-api",
            "from": from,
            "to": to,
            "num_segments": "1",
            "sid": format!("SM{}", super::keycloak::uuid().replace('-', "")),
            "status": "queued",
            "uri": format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"),
        })),
    )
        .into_response()
}
