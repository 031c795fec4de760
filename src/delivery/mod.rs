//! Delivery of one-time codes and change notices, one trait per channel:
//! [`EmailSender`] (SMTP, Resend, log) and [`SmsSender`] (Twilio, webhook,
//! log). Messages are rendered from templates in the reader's language
//! ([`Messages`], docs/messages.md). Every send is bounded by
//! [`SEND_TIMEOUT`]; a provider error, a timeout or a template that fails
//! to render is a 502 `delivery_failed` for the caller, with the reason in
//! the log only. Nothing here ever logs a code, except the `log` provider in
//! dev mode, whose whole point is to show it.

pub mod locales;
mod log;
pub mod message;
mod resend;
mod smtp;
mod templates;
mod twilio;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;

pub use locales::Locales;
pub use message::{mask_email, mask_mobile, Email, Notice};
pub use templates::{Messages, Product, RenderError};

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

/// Where a notice goes: any of a (verified) address and number, and the
/// reader's language (the token's `locale` claim; `None`: the default).
#[derive(Debug, Clone, Default)]
pub struct Recipients {
    pub email: Option<String>,
    pub mobile: Option<String>,
    pub locale: Option<String>,
}

impl Recipients {
    /// The verified contacts of a profile: where factor notices go.
    pub fn of(p: &crate::store::Profile) -> Self {
        Self {
            email: p.email.clone().filter(|_| p.email_verified),
            mobile: p.mobile.clone().filter(|_| p.mobile_verified),
            locale: None,
        }
    }
}

pub struct Delivery {
    pub email: Arc<dyn EmailSender>,
    pub sms: Arc<dyn SmsSender>,
    messages: Arc<Messages>,
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
        // Validated with the configuration (config::load); built again here
        // so that the state owns its templates.
        let (messages, report) = Messages::from_config(cfg).map_err(|e| e.to_string())?;
        for (tag, missing) in &report.incomplete {
            tracing::warn!(
                locale = %tag,
                missing = missing.len(),
                first = %missing.first().map(String::as_str).unwrap_or_default(),
                "locale file lacks strings; English is used for them"
            );
        }
        Ok(Self {
            email,
            sms,
            messages: Arc::new(messages),
            notify_changes: cfg.security.notify_changes,
            metrics,
        })
    }

    /// For tests: any senders.
    pub fn new(
        email: Arc<dyn EmailSender>,
        sms: Arc<dyn SmsSender>,
        messages: Arc<Messages>,
        notify_changes: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            email,
            sms,
            messages,
            notify_changes,
            metrics,
        }
    }

    /// The templates and product of every message.
    pub fn messages(&self) -> &Messages {
        &self.messages
    }

    /// Every locale (embedded and the operator's): the /ui/ page takes its
    /// strings from here (`locales().ui_strings(..)`).
    pub fn locales(&self) -> &Locales {
        self.messages.locales()
    }

    /// Sends a one-time code by email in the reader's `locale` (the token's
    /// `locale` claim); 502 `delivery_failed` on any failure.
    pub async fn send_email_code(
        &self,
        to: &str,
        code: &str,
        ttl: Duration,
        purpose: crate::factor::otp::Purpose,
        locale: Option<&str>,
    ) -> Result<(), Error> {
        let r = match self.messages.code_email(locale, to, code, ttl, purpose) {
            Ok(msg) => bounded(self.email.send(&msg)).await,
            Err(e) => Err(rendering(e)),
        };
        self.record("email", self.email.name(), r)
    }

    /// Sends a one-time code by SMS in the reader's `locale`; 502
    /// `delivery_failed` on any failure.
    pub async fn send_sms_code(
        &self,
        to: &str,
        code: &str,
        ttl: Duration,
        locale: Option<&str>,
    ) -> Result<(), Error> {
        let r = match self.messages.code_sms(locale, to, code, ttl) {
            Ok(body) => bounded(self.sms.send(to, &body)).await,
            Err(e) => Err(rendering(e)),
        };
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
            let locale = to.locale.as_deref();
            if let Some(addr) = &to.email {
                let r = match this.messages.notice_email(locale, addr, &notice) {
                    Ok(msg) => bounded(this.email.send(&msg)).await,
                    Err(e) => Err(rendering(e)),
                };
                if let Err(e) = r {
                    tracing::warn!(provider = this.email.name(), error = %e, notice = notice.kind(), "change notice by email failed");
                }
            }
            if let Some(num) = &to.mobile {
                let r = match this.messages.notice_sms(locale, num, &notice) {
                    Ok(body) => bounded(this.sms.send(num, &body)).await,
                    Err(e) => Err(rendering(e)),
                };
                if let Err(e) = r {
                    tracing::warn!(provider = this.sms.name(), error = %e, notice = notice.kind(), "change notice by SMS failed");
                }
            }
        });
    }
}

/// A template that rendered with the sample data at start but not with
/// this message's: reported like a provider failure.
fn rendering(e: RenderError) -> DeliveryError {
    DeliveryError(format!("rendering the message: {e}"))
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
