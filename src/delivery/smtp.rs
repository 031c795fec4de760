//! Email by SMTP (lettre, tokio, rustls).
//!
//! - `smtp://user:pass@host:587`: STARTTLS is required; a server that does
//!   not offer it (or a stripped offer) fails the send instead of falling
//!   back to plain text;
//! - `smtps://user:pass@host:465`: TLS from the first byte;
//! - `smtp://host:25?tls=none`: plain, for a relay on the same host or pod.

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use percent_encoding::percent_decode_str;

use super::{DeliveryError, Email, EmailSender, SEND_TIMEOUT};

pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

#[derive(Debug, PartialEq, Eq)]
enum Security {
    StartTls,
    Implicit,
    None,
}

impl Smtp {
    pub fn new(url: &str, from: String) -> Result<Self, String> {
        let bad = |m: &str| format!("email.smtp_url: {m}");
        let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut security = match u.scheme() {
            "smtp" => Security::StartTls,
            "smtps" => Security::Implicit,
            s => return Err(bad(&format!("scheme `{s}` is not smtp or smtps"))),
        };
        for (k, v) in u.query_pairs() {
            match (k.as_ref(), v.as_ref()) {
                ("tls", "none") if security == Security::StartTls => security = Security::None,
                ("tls", "starttls") if security == Security::StartTls => {}
                ("tls", "implicit") => security = Security::Implicit,
                _ => {
                    return Err(bad(&format!(
                        "unknown option `{k}={v}` (tls=none|starttls|implicit)"
                    )))
                }
            }
        }
        let builder = match security {
            Security::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
                .map_err(|e| bad(&e.to_string()))?,
            Security::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&host)
                .map_err(|e| bad(&e.to_string()))?,
            Security::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host),
        };
        let port = u.port().unwrap_or(match security {
            Security::StartTls => 587,
            Security::Implicit => 465,
            Security::None => 25,
        });
        let mut builder = builder.port(port).timeout(Some(SEND_TIMEOUT));
        if !u.username().is_empty() {
            let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
            builder = builder.credentials(Credentials::new(
                decode(u.username()),
                decode(u.password().unwrap_or("")),
            ));
        }
        let from = from
            .parse::<Mailbox>()
            .map_err(|e| format!("email.from: {e}"))?;
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }
}

#[async_trait]
impl EmailSender for Smtp {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, msg: &Email) -> Result<(), DeliveryError> {
        let to = msg
            .to
            .parse::<Mailbox>()
            .map_err(|e| DeliveryError(format!("recipient address: {e}")))?;
        let m = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(msg.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                msg.text.clone(),
                msg.html.clone(),
            ))
            .map_err(|e| DeliveryError(format!("building the message: {e}")))?;
        self.transport
            .send(m)
            .await
            .map(|_| ())
            .map_err(|e| DeliveryError(format!("smtp: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: &str = "2FA <no-reply@example.com>";

    #[test]
    fn url_forms() {
        assert!(Smtp::new("smtp://user:p%40ss@mail.example.com:587", FROM.into()).is_ok());
        assert!(Smtp::new("smtps://mail.example.com", FROM.into()).is_ok());
        assert!(Smtp::new("smtp://127.0.0.1:2525?tls=none", FROM.into()).is_ok());
        assert!(Smtp::new("http://mail.example.com", FROM.into()).is_err());
        assert!(Smtp::new("smtp://mail.example.com?tls=maybe", FROM.into()).is_err());
        assert!(Smtp::new("smtps://mail.example.com?tls=none", FROM.into()).is_err());
        assert!(Smtp::new("smtp://mail.example.com", "not an address".into()).is_err());
    }
}
