//! The texts we send: one-time codes (plain text and HTML email, a short
//! SMS) and change notices (never a code). Anything that came from a user
//! (addresses, numbers) is HTML-escaped in the HTML part.

use std::time::Duration;

use crate::factor::otp::Purpose;

#[derive(Debug, Clone)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A change to the account worth telling its owner about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Sent to the old address; `new` is the new address.
    EmailChanged {
        new: String,
    },
    /// Sent to the old number; `new` is the new number.
    MobileChanged {
        new: String,
    },
    TotpEnrolled,
    TotpRemoved,
    RecoveryCodesRegenerated,
}

impl Notice {
    /// A stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::EmailChanged { .. } => "email_changed",
            Notice::MobileChanged { .. } => "mobile_changed",
            Notice::TotpEnrolled => "totp_enrolled",
            Notice::TotpRemoved => "totp_removed",
            Notice::RecoveryCodesRegenerated => "recovery_codes_regenerated",
        }
    }

    /// One sentence saying what happened. Contacts are masked: the notice
    /// may go to an address that is no longer the user's.
    fn sentence(&self) -> String {
        match self {
            Notice::EmailChanged { new } => format!(
                "The email address of your account was changed to {}.",
                mask_email(new)
            ),
            Notice::MobileChanged { new } => format!(
                "The mobile number of your account was changed to {}.",
                mask_mobile(new)
            ),
            Notice::TotpEnrolled => {
                "An authenticator app was set up as a second factor for your account.".into()
            }
            Notice::TotpRemoved => {
                "The authenticator app was removed from your account's second factors.".into()
            }
            Notice::RecoveryCodesRegenerated => {
                "New recovery codes were generated for your account; the old ones no longer work."
                    .into()
            }
        }
    }

    fn subject(&self) -> &'static str {
        match self {
            Notice::EmailChanged { .. } => "Your email address was changed",
            Notice::MobileChanged { .. } => "Your mobile number was changed",
            Notice::TotpEnrolled => "An authenticator app was added to your account",
            Notice::TotpRemoved => "The authenticator app was removed from your account",
            Notice::RecoveryCodesRegenerated => "New recovery codes were generated",
        }
    }
}

/// "10 minutes", "1 hour", "90 seconds".
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = if s >= 3600 && s.is_multiple_of(3600) {
        (s / 3600, "hour")
    } else if s >= 60 && s.is_multiple_of(60) {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// Minimal HTML escaping for text and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `a***e@example.com`: enough for the owner to recognise, little for
/// anyone else.
pub fn mask_email(addr: &str) -> String {
    match addr.rsplit_once('@') {
        Some((local, domain)) => {
            let chars: Vec<char> = local.chars().collect();
            let masked = match chars.len() {
                0 => String::new(),
                1 | 2 => format!("{}***", chars[0]),
                n => format!("{}***{}", chars[0], chars[n - 1]),
            };
            format!("{masked}@{domain}")
        }
        None => "***".into(),
    }
}

/// `+*******0123`: the last four digits.
pub fn mask_mobile(num: &str) -> String {
    let digits: Vec<char> = num.chars().filter(char::is_ascii_digit).collect();
    if digits.len() <= 4 {
        return "****".into();
    }
    let tail: String = digits[digits.len() - 4..].iter().collect();
    format!("+{}{tail}", "*".repeat(digits.len() - 4))
}

const FOOTER_TEXT: &str = "If you did not ask for this, you can ignore this message.";

fn html_page(product: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{p}</title></head>\
         <body style=\"font-family: sans-serif; line-height: 1.5\">{body}\
         <p style=\"color: #666; font-size: 0.9em\">{p}</p></body></html>\n",
        p = escape_html(product)
    )
}

pub fn code_email(product: &str, to: &str, code: &str, ttl: Duration, purpose: Purpose) -> Email {
    let life = human(ttl);
    let why = match purpose {
        Purpose::Contact => format!("Use this code to confirm {to} as your email address."),
        Purpose::Login => "Use this code to finish signing in.".to_string(),
    };
    let text = format!(
        "Your verification code is: {code}\n\n\
         {why}\n\
         It expires in {life}.\n\n\
         Do not share this code with anyone. No one from {product} will ever ask you for it.\n\n\
         {FOOTER_TEXT}\n"
    );
    let why_html = match purpose {
        Purpose::Contact => format!(
            "Use this code to confirm <strong>{}</strong> as your email address.",
            escape_html(to)
        ),
        Purpose::Login => "Use this code to finish signing in.".to_string(),
    };
    let html = html_page(
        product,
        &format!(
            "<p>Your verification code is:</p>\
             <p style=\"font-size: 2em; font-weight: bold; letter-spacing: 0.2em\">{code}</p>\
             <p>{why_html}<br>It expires in {life}.</p>\
             <p><strong>Do not share this code with anyone.</strong> No one from {p} will ever ask you for it.</p>\
             <p>{FOOTER_TEXT}</p>",
            code = escape_html(code),
            p = escape_html(product)
        ),
    );
    Email {
        to: to.to_string(),
        subject: format!("Your {product} verification code"),
        text,
        html,
    }
}

pub fn code_sms(product: &str, code: &str, ttl: Duration) -> String {
    format!(
        "{code} is your {product} verification code. It expires in {}. Do not share it.",
        human(ttl)
    )
}

pub fn notice_email(product: &str, to: &str, n: &Notice) -> Email {
    let sentence = n.sentence();
    let warn = "If this was not you, contact your administrator at once: someone may have access to your account.";
    Email {
        to: to.to_string(),
        subject: format!("{product}: {}", n.subject()),
        text: format!("{sentence}\n\n{warn}\n"),
        html: html_page(
            product,
            &format!(
                "<p>{}</p><p><strong>{}</strong></p>",
                escape_html(&sentence),
                escape_html(warn)
            ),
        ),
    }
}

pub fn notice_sms(product: &str, n: &Notice) -> String {
    format!(
        "{product}: {} Not you? Contact your administrator.",
        n.sentence()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_email_has_code_lifetime_warning_and_escapes() {
        let to = "\"<script>\"@example.com";
        let e = code_email(
            "2FA",
            to,
            "123456",
            Duration::from_secs(600),
            Purpose::Contact,
        );
        assert!(e.text.contains("123456"));
        assert!(e.text.contains("10 minutes"));
        assert!(e.text.contains("Do not share"));
        assert!(e.html.contains("123456"));
        assert!(e.html.contains("10 minutes"));
        assert!(e.html.contains("&lt;script&gt;"));
        assert!(!e.html.contains("<script>"));
        assert!(!e.subject.contains("123456"));
        let s = code_sms("2FA", "123456", Duration::from_secs(300));
        assert!(s.contains("123456") && s.contains("5 minutes") && s.len() <= 160);
    }

    #[test]
    fn notices_carry_no_code_and_mask_contacts() {
        let n = Notice::EmailChanged {
            new: "mallory@evil.example".into(),
        };
        let e = notice_email("2FA", "alice@example.com", &n);
        assert!(e.text.contains("m***y@evil.example"));
        assert!(!e.text.contains("mallory@"));
        let s = notice_sms(
            "2FA",
            &Notice::MobileChanged {
                new: "+14155550123".into(),
            },
        );
        assert!(s.contains("+*******0123"), "{s}");
        assert!(s.len() <= 160);
    }

    #[test]
    fn masks_and_durations() {
        assert_eq!(mask_email("alice@example.com"), "a***e@example.com");
        assert_eq!(mask_email("al@example.com"), "a***@example.com");
        assert_eq!(mask_email("nonsense"), "***");
        assert_eq!(mask_mobile("+14155550123"), "+*******0123");
        assert_eq!(human(Duration::from_secs(600)), "10 minutes");
        assert_eq!(human(Duration::from_secs(3600)), "1 hour");
        assert_eq!(human(Duration::from_secs(90)), "90 seconds");
        assert_eq!(escape_html("a&b<'\">"), "a&amp;b&lt;&#39;&quot;&gt;");
    }
}
