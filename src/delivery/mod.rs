//! Delivery of one-time codes and change notices, one trait per channel:
//! [`EmailSender`] (SMTP, Resend, log) and [`SmsSender`] (Twilio, webhook,
//! log). Every send is bounded by [`SEND_TIMEOUT`]; a provider error or a
//! timeout is a 502 `delivery_failed` for the caller, with the provider's
//! reason in the log only. Nothing here ever logs a code, except the `log`
//! provider in dev mode, whose whole point is to show it.

mod log;
pub mod message;
mod resend;
mod smtp;
mod twilio;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;

pub use message::{mask_email, mask_mobile, Email, Notice};

/// Longest a provider may take to accept one message.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a provider did not take a message; for logs, never for clients.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

#[async_trait]
pub trait EmailSender: Send + Sync {
    /// Short provider name for logs (`smtp`, `resend`, `log`).
    fn name(&self) -> &'static str;
    async fn send(&self, msg: &Email) -> Result<(), DeliveryError>;
}

#[async_trait]
pub trait SmsSender: Send + Sync {
    fn name(&self) -> &'static str;
    /// `to` is E.164.
    async fn send(&self, to: &str, body: &str) -> Result<(), DeliveryError>;
}

/// Where a notice goes: any of a (verified) address and number.
#[derive(Debug, Clone, Default)]
pub struct Recipients {
    pub email: Option<String>,
    pub mobile: Option<String>,
}

impl Recipients {
    /// The verified contacts of a profile: where factor notices go.
    pub fn of(p: &crate::store::Profile) -> Self {
        Self {
            email: p.email.clone().filter(|_| p.email_verified),
            mobile: p.mobile.clone().filter(|_| p.mobile_verified),
        }
    }
}

pub struct Delivery {
    pub email: Arc<dyn EmailSender>,
    pub sms: Arc<dyn SmsSender>,
    /// Product name in messages (`totp.issuer`).
    product: String,
    notify_changes: bool,
    metrics: Arc<Metrics>,
}

impl Delivery {
    /// The providers named by `email.provider` and `sms.provider`.
    pub fn from_config(
        cfg: &Config,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let e = &cfg.email;
        let email: Arc<dyn EmailSender> = match e.provider.as_str() {
            "log" => Arc::new(log::LogEmail { dev: cfg.dev }),
            "smtp" => {
                let url = e
                    .smtp_url
                    .as_ref()
                    .ok_or("email.smtp_url: required with email.provider = \"smtp\"")?;
                Arc::new(smtp::Smtp::new(url.expose(), from(cfg)?)?)
            }
            "resend" => {
                let key = e
                    .resend_api_key
                    .as_ref()
                    .ok_or("email.resend_api_key: required with email.provider = \"resend\"")?;
                Arc::new(resend::Resend::new(
                    http.clone(),
                    &e.resend_api_url,
                    key.clone(),
                    from(cfg)?,
                )?)
            }
            other => {
                return Err(format!(
                    "email.provider: `{other}` is not one of smtp, resend, log"
                ))
            }
        };
        let s = &cfg.sms;
        let sms: Arc<dyn SmsSender> = match s.provider.as_str() {
            "log" => Arc::new(log::LogSms { dev: cfg.dev }),
            "twilio" => {
                let (Some(sid), Some(token), Some(sender)) =
                    (&s.twilio_account_sid, &s.twilio_auth_token, &s.twilio_from)
                else {
                    return Err("sms.twilio_account_sid, sms.twilio_auth_token and sms.twilio_from: required with sms.provider = \"twilio\"".into());
                };
                Arc::new(twilio::Twilio::new(
                    http.clone(),
                    &s.twilio_api_url,
                    sid,
                    token.clone(),
                    sender,
                )?)
            }
            "webhook" => {
                let url = s
                    .webhook_url
                    .as_ref()
                    .ok_or("sms.webhook_url: required with sms.provider = \"webhook\"")?;
                Arc::new(webhook::Webhook::new(
                    http,
                    url,
                    s.webhook_bearer_token.clone(),
                )?)
            }
            other => {
                return Err(format!(
                    "sms.provider: `{other}` is not one of twilio, webhook, log"
                ))
            }
        };
        Ok(Self {
            email,
            sms,
            product: cfg.totp.issuer.clone(),
            notify_changes: cfg.security.notify_changes,
            metrics,
        })
    }

    /// For tests: any senders.
    pub fn new(
        email: Arc<dyn EmailSender>,
        sms: Arc<dyn SmsSender>,
        product: String,
        notify_changes: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            email,
            sms,
            product,
            notify_changes,
            metrics,
        }
    }

    /// Sends a one-time code by email; 502 `delivery_failed` on any failure.
    pub async fn send_email_code(
        &self,
        to: &str,
        code: &str,
        ttl: Duration,
        purpose: crate::factor::otp::Purpose,
    ) -> Result<(), Error> {
        let msg = message::code_email(&self.product, to, code, ttl, purpose);
        let r = bounded(self.email.send(&msg)).await;
        self.record("email", self.email.name(), r)
    }

    /// Sends a one-time code by SMS; 502 `delivery_failed` on any failure.
    pub async fn send_sms_code(&self, to: &str, code: &str, ttl: Duration) -> Result<(), Error> {
        let body = message::code_sms(&self.product, code, ttl);
        let r = bounded(self.sms.send(to, &body)).await;
        self.record("sms", self.sms.name(), r)
    }

    fn record(
        &self,
        channel: &str,
        provider: &str,
        r: Result<(), DeliveryError>,
    ) -> Result<(), Error> {
        let result = if r.is_ok() { "ok" } else { "error" };
        self.metrics
            .otp_sent
            .with_label_values(&[channel, result])
            .inc();
        r.map_err(|e| {
            tracing::warn!(channel, provider, error = %e, "code delivery failed");
            Error::DeliveryFailed
        })
    }

    /// Tells the user about a change to their account (no code in it), by
    /// email and SMS to the given recipients, when `security.notify_changes`
    /// is on. Runs in the background: a slow or failing provider must not
    /// fail or delay the change itself, which has already happened.
    pub fn notify(self: &Arc<Self>, to: Recipients, notice: Notice) {
        if !self.notify_changes || (to.email.is_none() && to.mobile.is_none()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Some(addr) = &to.email {
                let msg = message::notice_email(&this.product, addr, &notice);
                if let Err(e) = bounded(this.email.send(&msg)).await {
                    tracing::warn!(provider = this.email.name(), error = %e, notice = notice.kind(), "change notice by email failed");
                }
            }
            if let Some(num) = &to.mobile {
                let body = message::notice_sms(&this.product, &notice);
                if let Err(e) = bounded(this.sms.send(num, &body)).await {
                    tracing::warn!(provider = this.sms.name(), error = %e, notice = notice.kind(), "change notice by SMS failed");
                }
            }
        });
    }
}

async fn bounded(
    f: impl std::future::Future<Output = Result<(), DeliveryError>>,
) -> Result<(), DeliveryError> {
    match tokio::time::timeout(SEND_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(DeliveryError(format!(
            "no answer within {}s",
            SEND_TIMEOUT.as_secs()
        ))),
    }
}

fn from(cfg: &Config) -> Result<String, String> {
    let f = cfg
        .email
        .from
        .clone()
        .filter(|f| !f.trim().is_empty())
        .ok_or("email.from: required to send email, e.g. \"2FA <no-reply@example.com>\"")?;
    f.parse::<lettre::message::Mailbox>()
        .map_err(|e| format!("email.from: `{f}` is not an address: {e}"))?;
    Ok(f)
}

/// A provider's error answer, without its body: bodies may echo what we
/// sent, and what we sent contains a code.
fn http_status_error(provider: &str, status: reqwest::StatusCode) -> DeliveryError {
    DeliveryError(format!("{provider} answered HTTP {}", status.as_u16()))
}

fn http_send_error(provider: &str, e: &reqwest::Error) -> DeliveryError {
    // Only the kind of failure: reqwest's message names the URL, and a
    // webhook URL may carry a token in its query.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    DeliveryError(format!("{provider}: {kind}"))
}
