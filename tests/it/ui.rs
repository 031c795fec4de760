//! The `/ui/` page (INTERFACE.md section 9) in a real headless Chromium, on the
//! real binary: in dev mode the whole flow (sign in, enroll TOTP with the QR
//! code read back by zbarimg and the code computed by oathtool, recovery codes
//! shown once with copy and download, a factor in a new session, a recovery
//! code, an email change with the code from the real SMTP server, the resend
//! countdown, removing TOTP after a fresh factor, `?rd=`); and one pass
//! against the Keycloak stand-in's authorization endpoint with PKCE. Over
//! plain HTTP: the security headers, the page's language, the server's check
//! of `?rd=`, `ui.enabled = false`, and the stand-in's PKCE checks.
//!
//! Screenshots of every step land in `target/ui-screenshots/<test>/`.

use std::process::Command;
use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::Locator;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::support::app::{test_encryption_key, toml_string, toml_strings, App, AppConfig};
use crate::support::browser::Browser;
use crate::support::http;
use crate::support::keycloak::{now, Keycloak, PublicClient, AUDIENCE, PASSWORD};
use crate::support::ports::free_port;
use crate::support::process::{accepts_connections, poll_until, ChildGuard};
use crate::support::smtp::{code_after, SmtpServer};
use crate::support::upstream::Upstream;
use crate::user_totp::{oathtool, parse_uri, zbarimg};

const NEW_EMAIL: &str = "alice@example.net";
const MOBILE: &str = "+14155550123";
const UI_CLIENT: &str = "twofa-ui";

/// `twofa-authz serve --dev --config FILE` in a temp working directory.
pub struct Dev {
    child: ChildGuard,
    _dir: TempDir,
    pub addr: String,
}

impl Dev {
    async fn start(config: &str, env: &[(&str, &str)]) -> Dev {
        Dev::start_on(&format!("127.0.0.1:{}", free_port()), config, env).await
    }

    /// [`Dev::start`] with the HTTP listener on `addr`.
    pub async fn start_on(addr: &str, config: &str, env: &[(&str, &str)]) -> Dev {
        let dir = tempfile::Builder::new()
            .prefix("twofa-ui-dev-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("dev.toml");
        std::fs::write(&path, config).unwrap();
        let addr = addr.to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_twofa-authz"));
        cmd.args(["serve", "--dev", "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TWOFA_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("TWOFA_SERVER__HTTP_ADDR", &addr).env(
            "TWOFA_SERVER__GRPC_ADDR",
            format!("127.0.0.1:{}", free_port()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = ChildGuard::spawn("twofa-authz --dev", cmd, &dir.path().join("dev.log"));
        let ready = poll_until(Duration::from_secs(30), || {
            let addr = addr.clone();
            async move {
                accepts_connections(&addr).await
                    && http::get(&addr, "/readyz").send().await.status == 200
            }
        })
        .await;
        if !ready {
            child.assert_running();
            panic!("serve --dev not ready: {}", child.log());
        }
        Dev {
            child,
            _dir: dir,
            addr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log(&self) -> String {
        self.child.log()
    }
}

/// The page's configuration: the JSON block the server inlines.
fn page_config(html: &str) -> Value {
    let block = html
        .split("<script type=\"application/json\" id=\"twofa-config\">")
        .nth(1)
        .and_then(|r| r.split("</script>").next())
        .unwrap_or_else(|| panic!("no configuration block in {html}"));
    serde_json::from_str(block).unwrap()
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn assert_security_headers(what: &str, r: &http::Response, connect: &str) {
    let csp = r
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no CSP: {:?}", r.headers));
    let parts: Vec<&str> = csp.split(';').map(str::trim).collect();
    for want in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        connect,
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ] {
        assert!(parts.contains(&want), "{what}: {want:?} not in {csp:?}");
    }
    assert!(!csp.contains("unsafe-"), "{what}: {csp}");
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_headers_language_and_redirect_checks() {
    let dev = Dev::start(
        "[server]\ncors_allowed_origins = [\"https://app.example.com\", \"*\"]\n",
        &[],
    )
    .await;
    let a = &dev.addr;

    let r = http::get(a, "/ui/").send().await;
    assert_eq!(r.status, 200, "{}", dev.log());
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_security_headers("/ui/", &r, "connect-src 'self'");
    let html = r.text();
    let cfg = page_config(&html);
    assert_eq!(cfg["dev"], true);
    assert_eq!(cfg["lang"], "en");
    assert_eq!(cfg["strings"]["sign_in"], "Sign in");
    assert_eq!(cfg["rd"], Value::Null);
    assert_eq!(cfg["rd_rejected"], false);
    // `*` lets any site call the API, never makes ?rd= open.
    assert_eq!(
        cfg["allowed_origins"],
        serde_json::json!(["https://app.example.com"])
    );
    assert!(html.contains("<html lang=\"en\">"));

    // The assets: the versioned URL is immutable, any other revalidates.
    let js_url = html
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    assert!(js_url.starts_with("app.js?v="), "{js_url}");
    let r = http::get(a, &format!("/ui/{js_url}")).send().await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_security_headers("app.js", &r, "connect-src 'self'");
    let etag = r.header("etag").unwrap().to_owned();
    let r = http::get(a, "/ui/app.js").send().await;
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    let r = http::get(a, "/ui/app.js")
        .header("If-None-Match", &etag)
        .send()
        .await;
    assert_eq!(r.status, 304);
    let r = http::get(a, "/ui/app.css").send().await;
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    assert_security_headers("app.css", &r, "connect-src 'self'");

    // /ui redirects to /ui/ (the page's links are relative), keeping rd.
    let r = http::get(a, "/ui?rd=%2Fapp").send().await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("/ui/?rd=%2Fapp"));

    // The language: ?lang=, then Accept-Language, then email.default_locale.
    let r = http::get(a, "/ui/")
        .header("Accept-Language", "fr-CH, de;q=0.8, en;q=0.5")
        .send()
        .await;
    let html = r.text();
    assert!(html.contains("<html lang=\"de\">"), "{html}");
    assert!(html.contains("<title>Zweiter Faktor</title>"));
    let cfg = page_config(&html);
    assert_eq!(cfg["strings"]["sign_in"], "Anmelden");
    assert_eq!(
        cfg["strings"]["error.factor_locked"],
        "Ihr zweiter Faktor ist nach zu vielen falschen Codes gesperrt. Bitte wenden Sie sich an Ihren Administrator."
    );
    let r = http::get(a, "/ui/?lang=en")
        .header("Accept-Language", "de")
        .send()
        .await;
    assert_eq!(page_config(&r.text())["lang"], "en");
    let r = http::get(a, "/ui/strings.json?lang=de-AT").send().await;
    assert_eq!(r.status, 200);
    assert_security_headers("strings.json", &r, "connect-src 'self'");
    let s = r.json();
    assert_eq!(s["lang"], "de");
    assert_eq!(
        s["strings"]["error.invalid_code"],
        "Dieser Code stimmt nicht. Verbleibende Versuche: {attempts_remaining}."
    );
    assert_eq!(
        http::get(a, "/ui/strings.json?lang=xx").send().await.json()["lang"],
        "en"
    );

    // ?rd= as the server sees it: its own paths and allowed origins only.
    let host = a.as_str();
    let good = [
        ("%2Fapp%2Fx%3Fy%3D1", "/app/x?y=1".to_string()),
        ("/app", "/app".to_string()),
        // Encoded twice: still a path on this server, which the browser
        // does not decode into a host.
        ("%2F%255Cevil.com", "/%5Cevil.com".to_string()),
        ("%2F%252F%252Fevil.com", "/%2F%2Fevil.com".to_string()),
        (
            "https%3A%2F%2Fapp.example.com%2Fback",
            "https://app.example.com/back".to_string(),
        ),
        (
            &enc(&format!("http://{host}/elsewhere")),
            format!("http://{host}/elsewhere"),
        ),
        // Behind a TLS proxy the server sees the same Host: it lets the
        // scheme pass, the page compares it with its own origin.
        (
            &enc(&format!("https://{host}/elsewhere")),
            format!("https://{host}/elsewhere"),
        ),
    ];
    for (q, want) in &good {
        let cfg = page_config(&http::get(a, &format!("/ui/?rd={q}")).send().await.text());
        assert_eq!(cfg["rd"], want.as_str(), "rd={q}");
        assert_eq!(cfg["rd_rejected"], false, "rd={q}");
    }
    for q in [
        "//evil.com",
        "%2F%2Fevil.com",
        "https://evil.com",
        "https%3A%2F%2Fevil.com",
        "javascript:alert(1)",
        "javascript%3Aalert(document.domain)",
        "JaVaScRiPt%3Aalert(1)",
        "/%5Cevil.com",
        "%2F%5Cevil.com",
        "%5C%5Cevil.com",
        "%09%2F%2Fevil.com",
        "%2F%09%2Fevil.com",
        "%20%2F%2Fevil.com",
        "https%3Aevil.com",
        "https%3A%2F%2Fapp.example.com%40evil.com%2F",
        "https%3A%2F%2Fapp.example.com.evil.com%2F",
        "http%3A%2F%2Fapp.example.com%2F",
        "data%3Atext%2Fhtml%2C%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        "%2Fapp&rd=https%3A%2F%2Fevil.com",
        "",
    ] {
        let html = http::get(a, &format!("/ui/?rd={q}")).send().await.text();
        let cfg = page_config(&html);
        assert_eq!(cfg["rd"], Value::Null, "rd={q} must be refused");
        assert_eq!(cfg["rd_rejected"], true, "rd={q}");
        assert!(!html.contains("evil.com"), "rd={q} echoed into the page");
    }
    // Another Host: "same origin" follows the host the request was sent to.
    let r = http::get(a, &format!("/ui/?rd={}", enc(&format!("http://{host}/x"))))
        .host("other.example:8090")
        .send()
        .await;
    assert_eq!(page_config(&r.text())["rd"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_disabled_is_404() {
    let dev = Dev::start("[ui]\nenabled = false\n", &[]).await;
    for path in [
        "/ui/",
        "/ui",
        "/ui/app.js",
        "/ui/app.css",
        "/ui/strings.json",
    ] {
        let r = http::get(&dev.addr, path).send().await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["code"], "not_found", "{path}");
    }
    // Only the page: the API stays.
    assert_eq!(http::get(&dev.addr, "/healthz").send().await.status, 200);
}

/// Dev mode "sign in as".
pub async fn dev_sign_in(b: &Browser, username: &str) {
    b.fill("#dev-username", username).await;
    b.click("#dev-form button[type=submit]").await;
    b.text_contains("#who", username).await;
    b.visible("#account").await;
}

/// The texts of the recovery codes on screen.
async fn codes_on_screen(b: &Browser) -> Vec<String> {
    b.visible("#codes-list li").await;
    let mut out = Vec::new();
    for li in b
        .client
        .find_all(Locator::Css("#codes-list li"))
        .await
        .unwrap()
    {
        out.push(li.text().await.unwrap());
    }
    out
}

/// Codes of messages to `addr` whose subject contains `subject`, oldest first.
fn codes_in_mail(smtp: &SmtpServer, addr: &str, subject: &str) -> Vec<String> {
    smtp.messages_to(addr)
        .into_iter()
        .filter(|m| m.subject.contains(subject))
        .filter_map(|m| code_after(&m.text, "code is:"))
        .collect()
}

/// Waits for the `n`th such message and returns its code.
async fn nth_code(smtp: &SmtpServer, addr: &str, subject: &str, n: usize) -> String {
    let ok = poll_until(Duration::from_secs(15), || {
        let got = codes_in_mail(smtp, addr, subject).len();
        async move { got >= n }
    })
    .await;
    assert!(
        ok,
        "no message #{n} ({subject}) to {addr}: {:#?}",
        smtp.messages()
    );
    codes_in_mail(smtp, addr, subject)[n - 1].clone()
}

/// The code of the `n`th SMS with a verification code that dev mode logged.
async fn nth_sms_code(dev: &Dev, n: usize) -> String {
    let codes = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("verification code"))
            .filter_map(|l| code_after(l, "DEV MODE SMS (not sent):"))
            .collect()
    };
    let ok = poll_until(Duration::from_secs(15), || {
        let got = codes(&dev.log()).len();
        async move { got >= n }
    })
    .await;
    assert!(ok, "no SMS #{n} in the log:\n{}", dev.log());
    codes(&dev.log())[n - 1].clone()
}

async fn wait_download(b: &Browser, name: &str) -> String {
    let path = b.downloads().join(name);
    let ok = poll_until(Duration::from_secs(15), || {
        let p = path.clone();
        async move { p.exists() && std::fs::metadata(&p).map(|m| m.len() > 0).unwrap_or(false) }
    })
    .await;
    if !ok {
        b.fail(&format!("{name} was not downloaded")).await;
    }
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_dev_mode_whole_flow_in_chromium() {
    let smtp = SmtpServer::start().await;
    let other_app = Upstream::start().await;
    let allowed = format!("http://127.0.0.1:{}", other_app.port());
    let dev = Dev::start(
        &format!(
            "[server]\ncors_allowed_origins = [{}]\n\n[security]\notp_resend_interval = \"10s\"\nmax_consecutive_failures = 2\n\n\
             [email]\nprovider = \"smtp\"\nfrom = \"2FA <no-reply@example.com>\"\nsmtp_url = {}\n",
            toml_string(&allowed),
            toml_string(&smtp.url())
        ),
        &[],
    )
    .await;
    let base = dev.url("/ui/");
    let b = Browser::start("dev-flow", "en-US").await;

    // 1. Sign in with the keyboard alone: the user name field has the focus.
    b.goto(&base).await;
    b.visible("#dev-username").await;
    assert_eq!(b.focused_id().await, "dev-username");
    // Every field of the page has a label; every code field is a one-time
    // code for the browser and the phone's keyboard.
    let unlabelled = b
        .exec(
            "return [...document.querySelectorAll('input')].filter(i => { \
               const l = document.querySelector('label[for=\"' + i.id + '\"]'); \
               return !i.id || !l || !l.textContent.trim(); }).map(i => i.id || i.name)",
        )
        .await;
    assert_eq!(unlabelled, serde_json::json!([]), "inputs without a label");
    let code_fields = b
        .exec(
            "return [...document.querySelectorAll('input[id$=\"-code\"]')].map(i => \
               [i.id, i.getAttribute('autocomplete'), i.getAttribute('inputmode')])",
        )
        .await;
    let code_fields = code_fields.as_array().unwrap().clone();
    assert!(code_fields.len() >= 7, "{code_fields:?}");
    for f in &code_fields {
        assert_eq!(f[1], "one-time-code", "{f}");
        if f[0] != "v-recovery-code" {
            assert_eq!(f[2], "numeric", "{f}");
        }
    }
    b.shot("sign-in").await;
    b.keys("alice").await;
    b.press(Key::Enter).await;
    b.text_contains("#who", "Signed in as alice").await;
    b.visible("#acc-no-factor").await;
    b.shot("signed-in-without-factor").await;

    // 2. Enroll TOTP, still with the keyboard: QR code, secret, code.
    b.tab_to("act-enroll").await;
    b.press(Key::Enter).await;
    let qr = b.visible("#enroll-qr").await;
    let loaded = poll_until(Duration::from_secs(10), || async {
        b.exec("const i = document.getElementById('enroll-qr'); return i.complete && i.naturalWidth > 0")
            .await
            == Value::Bool(true)
    })
    .await;
    assert!(loaded, "the QR code image did not load");
    let src = b.attr("#enroll-qr", "src").await.unwrap();
    assert!(src.starts_with("data:image/svg+xml;base64,"), "{src:.40}");
    b.shot("enroll-totp-qr").await;
    let png = qr.screenshot().await.expect("screenshot of the QR code");
    let uri = b.attr("#enroll-link", "href").await.expect("otpauth link");
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert_eq!(
        zbarimg(&png),
        uri,
        "the QR code on screen encodes the API's otpauth URI"
    );
    let secret = b.text("#enroll-secret").await.replace(' ', "");
    let params = parse_uri(&uri);
    assert_eq!(secret, params.secret, "the secret for manual entry");
    // `oathtool --totp -b SECRET` with the secret read from the page.
    let mut from_page = parse_uri(&uri);
    from_page.secret = secret.clone();
    let code = oathtool(&from_page, now());
    b.tab_to("enroll-code").await;
    b.keys(&code).await;
    b.press(Key::Enter).await;

    // 3. The recovery codes, once, with copy and download.
    let codes = codes_on_screen(&b).await;
    assert_eq!(codes.len(), 10, "{codes:?}");
    b.shot("recovery-codes-once").await;
    b.click("#codes-copy").await;
    b.text_contains("#status", "Copied").await;
    b.click("#codes-download").await;
    let file = wait_download(&b, "recovery-codes.txt").await;
    assert_eq!(
        file.lines().collect::<Vec<_>>(),
        codes,
        "the downloaded file"
    );
    b.click("#codes-done").await;
    b.hidden("#codes").await;
    assert_eq!(
        b.exec("return document.querySelectorAll('#codes-list li').length")
            .await,
        0
    );
    b.text_contains("#acc-factors", "Authenticator app").await;
    b.text_contains("#acc-factors", "Recovery codes left: 10")
        .await;
    b.shot("totp-enrolled").await;
    // A reload starts over: the codes are not shown again.
    b.client.refresh().await.unwrap();
    b.visible("#dev-username").await;
    let source = b.client.source().await.unwrap();
    assert!(codes.iter().all(|c| !source.contains(c.as_str())));

    // 4. A new session passes TOTP and goes back to ?rd= (same origin).
    b.goto(&format!("{base}?rd={}", enc("/healthz?after=totp")))
        .await;
    dev_sign_in(&b, "alice").await;
    b.visible("#v-totp").await;
    assert!(!b.is_displayed("#codes").await);
    let text = b.text("body").await;
    assert!(
        codes.iter().all(|c| !text.contains(c.as_str())),
        "codes shown again"
    );
    b.shot("new-session-asks-for-a-factor").await;
    // The next time step: the enrollment's step is spent for good.
    b.fill("#v-totp-code", &oathtool(&from_page, now() + 30))
        .await;
    b.click("#v-totp button[type=submit]").await;
    let u = b
        .wait_url("/healthz?after=totp", |u| u.path() == "/healthz")
        .await;
    assert_eq!(u.query(), Some("after=totp"));
    assert_eq!(u.host_str(), Some("127.0.0.1"));

    // 5. A recovery code; then the email, confirmed with the code from SMTP.
    b.goto(&base).await;
    dev_sign_in(&b, "alice").await;
    b.visible("#v-recovery").await;
    b.fill("#v-recovery-code", &codes[0].to_lowercase()).await;
    b.click("#v-recovery button[type=submit]").await;
    b.text_contains("#status", "Second factor confirmed").await;
    b.text_contains("#acc-session", "Recovery code").await;
    b.text_contains("#acc-factors", "Recovery codes left: 9")
        .await;
    b.shot("recovery-code-used").await;
    b.fill("#new-email", NEW_EMAIL).await;
    b.click("#email-form button[type=submit]").await;
    b.visible("#email-code-form").await;
    b.text_contains("#acc-email", "waiting for confirmation")
        .await;
    let code = nth_code(&smtp, NEW_EMAIL, "Confirm your email address", 1).await;
    b.shot("email-change-code-sent").await;
    b.fill("#email-code", &code).await;
    b.click("#email-code-form button[type=submit]").await;
    b.text_contains("#acc-email", &format!("{NEW_EMAIL} (verified)"))
        .await;
    b.hidden("#email-code-form").await;
    b.shot("email-changed").await;
    // The mobile number: dev mode writes SMS to its log.
    b.fill("#new-mobile", MOBILE).await;
    b.click("#mobile-form button[type=submit]").await;
    b.visible("#mobile-code-form").await;
    let code = nth_sms_code(&dev, 1).await;
    b.fill("#mobile-code", &code).await;
    b.click("#mobile-code-form button[type=submit]").await;
    b.text_contains("#acc-mobile", &format!("{MOBILE} (verified)"))
        .await;
    b.text_contains("#acc-factors", "Code by SMS").await;
    b.shot("mobile-changed").await;

    // 6. A code by email, with the resend countdown, back to an allowed origin.
    let target = format!("{allowed}/back?from=ui");
    b.goto(&format!("{base}?rd={}", enc(&target))).await;
    dev_sign_in(&b, "alice").await;
    b.click("#v-email-send").await;
    // The contact code went to the same channel moments ago: 429 with
    // Retry-After, counted down on screen, the button disabled meanwhile.
    let shown = poll_until(Duration::from_secs(10), || async {
        b.is_displayed("#v-email-form").await || b.is_displayed("#error").await
    })
    .await;
    assert!(shown);
    if b.is_displayed("#error").await {
        b.text_contains("#error", "You can ask for a new one in")
            .await;
        b.shot("resend-too-soon-countdown").await;
        b.click("#v-email-send").await; // waits until the countdown enables it
    }
    b.visible("#v-email-form").await;
    b.text_contains("#v-email-sent", "A code was sent to a")
        .await;
    let resend = b
        .text_contains("#v-email-resend", "You can ask for a new code in")
        .await;
    assert!(
        !b.client
            .find(Locator::Css("#v-email-resend"))
            .await
            .unwrap()
            .is_enabled()
            .await
            .unwrap(),
        "resend is disabled during its countdown: {resend}"
    );
    b.shot("email-code-sent").await;
    let code = nth_code(&smtp, NEW_EMAIL, "verification code", 1).await;
    b.fill("#v-email-code", &code).await;
    b.click("#v-email-form button[type=submit]").await;
    let u = b
        .wait_url(&target, |u| u.origin().ascii_serialization() == allowed)
        .await;
    assert_eq!((u.path(), u.query()), ("/back", Some("from=ui")));

    // 7. Too soon for another code: the countdown from Retry-After ticks.
    b.goto(&base).await;
    dev_sign_in(&b, "alice").await;
    b.click("#v-email-send").await;
    let first = b
        .text_contains("#error", "You can ask for a new one in")
        .await;
    b.shot("resend-too-soon").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = b.text("#error").await;
    let secs = |s: &str| -> u64 {
        s.split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no seconds in {s:?}"))
    };
    assert!(secs(&later) < secs(&first), "{first:?} then {later:?}");

    // 8. Removing TOTP needs a recent factor: the page asks, then retries.
    b.click("#act-remove-totp").await;
    b.text_contains("#confirm-text", "Remove the authenticator app")
        .await;
    b.click("#confirm-yes").await;
    b.text_contains("#verify-why", "needs a recent second factor")
        .await;
    b.shot("recent-factor-needed").await;
    // A code by SMS this time (it may have to wait out the resend timer
    // of the mobile's confirmation code).
    b.click("#v-sms-send").await;
    let sent = poll_until(Duration::from_secs(10), || async {
        b.is_displayed("#v-sms-form").await || !b.is_enabled("#v-sms-send").await
    })
    .await;
    assert!(sent);
    if !b.is_displayed("#v-sms-form").await {
        b.click("#v-sms-send").await;
    }
    b.text_contains("#v-sms-sent", "A code was sent to +").await;
    let code = nth_sms_code(&dev, 2).await;
    b.fill("#v-sms-code", &code).await;
    b.click("#v-sms-form button[type=submit]").await;
    b.text_contains("#status", "The authenticator app was removed")
        .await;
    b.visible("#act-enroll").await;
    b.shot("totp-removed").await;

    // 9. New recovery codes (the factor is recent: no question), once.
    b.click("#act-regen").await;
    b.click("#confirm-yes").await;
    let fresh = codes_on_screen(&b).await;
    assert_eq!(fresh.len(), 10);
    assert!(fresh.iter().all(|c| !codes.contains(c)));
    b.shot("recovery-codes-regenerated").await;
    b.click("#codes-done").await;
    b.text_contains("#acc-factors", "Recovery codes left: 10")
        .await;

    // 10. ?rd= to another origin: refused by the server, never followed.
    for (i, evil) in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
    ]
    .iter()
    .enumerate()
    {
        b.goto(&format!("{base}?rd={}", enc(evil))).await;
        b.text_contains("#rd-note", "not allowed").await;
        dev_sign_in(&b, "alice").await;
        b.fill("#v-recovery-code", &fresh[i]).await;
        b.click("#v-recovery button[type=submit]").await;
        b.text_contains("#status", "Second factor confirmed").await;
        if i == 0 {
            b.shot("rd-refused-stays-here").await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let u = b.url().await;
        assert_eq!(
            (u.host_str(), u.path()),
            (Some("127.0.0.1"), "/ui/"),
            "rd={evil} was followed"
        );
    }

    // Same host, other scheme: the server cannot tell (it sees only the
    // Host), the page can, and stays.
    let other_scheme = format!("https://{}/ui/x", dev.addr);
    b.goto(&format!("{base}?rd={}", enc(&other_scheme))).await;
    dev_sign_in(&b, "alice").await;
    assert!(!b.is_displayed("#rd-note").await);
    b.fill("#v-recovery-code", &fresh[3]).await;
    b.click("#v-recovery button[type=submit]").await;
    b.text_contains("#status", "Second factor confirmed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let u = b.url().await;
    assert_eq!(
        (u.scheme(), u.path()),
        ("http", "/ui/"),
        "rd={other_scheme} was followed"
    );

    // Wrong codes: the attempts left, then (max_consecutive_failures = 2)
    // the lock, which only an administrator lifts.
    b.goto(&base).await;
    dev_sign_in(&b, "alice").await;
    b.fill("#v-recovery-code", "AAAA-BBBB-CCCC-DDDD-EEEE").await;
    b.click("#v-recovery button[type=submit]").await;
    b.text_contains("#error", "That code is not right. Attempts left: 4.")
        .await;
    b.shot("wrong-code").await;
    let mut locked = false;
    for _ in 0..3 {
        b.fill("#v-recovery-code", "AAAA-BBBB-CCCC-DDDD-EEEE").await;
        b.click("#v-recovery button[type=submit]").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if b.text("#error")
            .await
            .contains("contact your administrator")
        {
            locked = true;
            break;
        }
    }
    assert!(locked, "no 423 message: {}", b.text("#error").await);
    b.shot("factor-locked").await;

    // No token and no code in web storage, ever.
    assert_eq!(b.exec("return localStorage.length").await, 0);
    assert_eq!(b.exec("return sessionStorage.length").await, 0);
    b.close().await;
    let log = dev.log();
    assert!(!log.contains(&secret), "the TOTP secret was logged");
    assert!(codes.iter().all(|c| !log.contains(c.as_str())));
}

/// A public client for `origin`'s /ui/, as an operator sets it up in Keycloak.
fn ui_client(origin: &str) -> PublicClient {
    PublicClient {
        client_id: UI_CLIENT.into(),
        redirect_uris: vec![format!("{origin}/ui/*")],
        web_origins: vec![origin.into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_keycloak_sign_in_with_pkce_in_chromium() {
    let kc = Keycloak::start().await;
    let smtp = SmtpServer::start().await;
    let http_addr = format!("127.0.0.1:{}", free_port());
    let origin = format!("http://{http_addr}");
    kc.add_public_client(ui_client(&origin));
    let mut config = AppConfig::default();
    config
        .set_str("server", "http_addr", &http_addr)
        .set_str("keycloak", "url", kc.base_url())
        .set_str("keycloak", "realm", kc.realm())
        .set("keycloak", "audiences", toml_strings(&[AUDIENCE]))
        .set("keycloak", "allowed_clients", toml_strings(&[UI_CLIENT]))
        .set_str("storage", "database_url", "sqlite://twofa.db")
        .set_str("storage", "redis_url", "memory://")
        .set(
            "security",
            "encryption_keys",
            toml_strings(&[&test_encryption_key()]),
        )
        .set_str("ui", "client_id", UI_CLIENT)
        // No SMS provider here: SMS is not offered (`serve` refuses the
        // `log` provider for an offered channel outside dev mode).
        .set(
            "security",
            "methods",
            toml_strings(&["totp", "email", "recovery"]),
        )
        .set_str("email", "provider", "smtp")
        .set_str("email", "from", "2FA <no-reply@example.com>")
        .set_str("email", "smtp_url", &smtp.url());
    let app = App::start(&config).await;

    // The server hands the page the endpoints of the issuer's discovery
    // document; the CSP lets the page reach the token endpoint, nothing else.
    let r = http::get(app.http_addr(), "/ui/").send().await;
    assert_eq!(r.status, 200, "{}", app.log());
    assert_security_headers("/ui/", &r, &format!("connect-src 'self' {}", kc.base_url()));
    let cfg = page_config(&r.text());
    assert_eq!(cfg["dev"], false);
    assert_eq!(cfg["oidc"]["client_id"], UI_CLIENT);
    assert_eq!(cfg["oidc"]["issuer"], kc.issuer());
    assert_eq!(cfg["oidc"]["token_endpoint"], kc.token_endpoint());
    assert_eq!(
        cfg["oidc"]["authorization_endpoint"],
        kc.authorization_endpoint()
    );
    let fetches = kc.discovery_fetches();
    http::get(app.http_addr(), "/ui/").send().await;
    assert!(
        kc.discovery_fetches() <= fetches + 1,
        "the discovery document is cached"
    );

    let b = Browser::start("keycloak-pkce", "en-US").await;
    b.goto(&format!(
        "{origin}/ui/?rd={}",
        enc("/healthz?after=keycloak")
    ))
    .await;
    b.shot("sign-in-with-keycloak").await;
    b.click("#signin-oidc").await;
    b.visible("#kc-form-login").await;
    let req = kc
        .authorize_requests()
        .pop()
        .expect("an authorization request");
    assert_eq!(req.get("client_id").map(String::as_str), Some(UI_CLIENT));
    assert_eq!(req.get("response_type").map(String::as_str), Some("code"));
    assert_eq!(
        req.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    assert_eq!(req.get("code_challenge").map(String::len), Some(43));
    assert_eq!(req.get("redirect_uri"), Some(&format!("{origin}/ui/")));
    assert!(req.get("state").is_some_and(|s| s.len() >= 16));
    // Only the flow's state waits in sessionStorage, never a token.
    b.shot("keycloak-login-form").await;
    b.fill("#username", "alice").await;
    b.fill("#password", PASSWORD).await;
    b.click("#kc-login").await;

    // Back on /ui/: the code was exchanged with its verifier.
    b.text_contains("#who", "Signed in as alice").await;
    let u = b.url().await;
    assert_eq!(u.path(), "/ui/");
    assert!(
        u.fragment().is_none() && u.query().is_none(),
        "the code left the address bar: {u}"
    );
    assert_eq!(b.exec("return sessionStorage.length").await, 0);
    assert_eq!(b.exec("return localStorage.length").await, 0);
    // The Keycloak user's verified email is a factor: pass it, then ?rd=,
    // kept across the round trip to Keycloak.
    b.visible("#v-email").await;
    b.shot("keycloak-signed-in").await;
    b.click("#v-email-send").await;
    let code = nth_code(&smtp, "alice@example.com", "verification code", 1).await;
    b.fill("#v-email-code", &code).await;
    b.click("#v-email-form button[type=submit]").await;
    let u = b
        .wait_url("/healthz?after=keycloak", |u| u.path() == "/healthz")
        .await;
    assert_eq!(u.query(), Some("after=keycloak"));
    b.close().await;
}

/// The stand-in's authorization endpoint refuses what Keycloak refuses, so
/// that the browser test above means something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_standin_checks_pkce_as_keycloak_does() {
    let kc = Keycloak::start().await;
    let origin = "http://127.0.0.1:1";
    kc.add_public_client(ui_client(origin));
    kc.add_public_client(PublicClient {
        client_id: "other".into(),
        redirect_uris: vec![format!("{origin}/ui/*")],
        web_origins: vec![],
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect_uri = format!("{origin}/ui/");
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-a_long_verifier";
    let challenge = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        Sha256::digest(verifier.as_bytes()),
    );
    let auth = |params: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = kc.authorization_endpoint();
        async move { http.get(url).query(&params).send().await.unwrap() }
    };
    let standard = |challenge: &str| {
        vec![
            ("client_id", UI_CLIENT.to_string()),
            ("redirect_uri", redirect_uri.clone()),
            ("response_type", "code".into()),
            ("scope", "openid".into()),
            ("state", "st4te".into()),
            ("code_challenge", challenge.to_string()),
            ("code_challenge_method", "S256".into()),
        ]
    };
    // A code: the login form, then its redirect back (query mode).
    let code = || async {
        let r = auth(standard(&challenge)).await;
        assert_eq!(r.status(), 200);
        let form = r.text().await.unwrap();
        let login = form
            .split("name=\"login\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned();
        let r = http
            .post(format!("{}/login-actions/authenticate", kc.issuer()))
            .form(&[
                ("login", login.as_str()),
                ("username", "alice"),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_redirection(), "{}", r.status());
        let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
        assert!(loc.as_str().starts_with(&redirect_uri), "{loc}");
        let q: std::collections::HashMap<_, _> = loc.query_pairs().into_owned().collect();
        assert_eq!(q.get("state").map(String::as_str), Some("st4te"));
        assert_eq!(q.get("iss"), Some(&kc.issuer()));
        q["code"].clone()
    };
    let exchange =
        |code: String, verifier: Option<&'static str>, client: &'static str, redirect: String| {
            let http = http.clone();
            let url = kc.token_endpoint();
            async move {
                let mut form = vec![
                    ("grant_type", "authorization_code".to_string()),
                    ("code", code),
                    ("client_id", client.to_string()),
                    ("redirect_uri", redirect),
                ];
                if let Some(v) = verifier {
                    form.push(("code_verifier", v.to_string()));
                }
                let r = http
                    .post(url)
                    .header("Origin", "http://127.0.0.1:1")
                    .form(&form)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let cors = r
                    .headers()
                    .get("access-control-allow-origin")
                    .map(|v| v.to_str().unwrap().to_owned());
                (status, r.json::<Value>().await.unwrap(), cors)
            }
        };

    // A wrong verifier is refused, and the code is spent by the attempt.
    let c = code().await;
    let (s, body, _) = exchange(
        c.clone(),
        Some("wrong-verifier-wrong-verifier-wrong-verifier-00"),
        UI_CLIENT,
        redirect_uri.clone(),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert_eq!(
        body["error_description"],
        "PKCE verification failed: Code mismatch"
    );
    let (s, body, _) = exchange(c, Some(verifier), UI_CLIENT, redirect_uri.clone()).await;
    assert_eq!(
        (s, body["error_description"].as_str()),
        (400, Some("Code not valid"))
    );
    // No verifier, another redirect_uri, another client.
    let (s, body, _) = exchange(code().await, None, UI_CLIENT, redirect_uri.clone()).await;
    assert_eq!(
        (s, body["error_description"].as_str()),
        (400, Some("PKCE code verifier not specified"))
    );
    let (s, body, _) = exchange(
        code().await,
        Some(verifier),
        UI_CLIENT,
        format!("{origin}/ui/other"),
    )
    .await;
    assert_eq!(
        (s, body["error_description"].as_str()),
        (400, Some("Incorrect redirect_uri"))
    );
    let (s, _, _) = exchange(code().await, Some(verifier), "other", redirect_uri.clone()).await;
    assert_eq!(s, 400);
    // The right verifier: a token for the client, with CORS for its origin.
    let c = code().await;
    let (s, body, cors) =
        exchange(c.clone(), Some(verifier), UI_CLIENT, redirect_uri.clone()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(cors.as_deref(), Some(origin));
    let jwt = body["access_token"].as_str().unwrap();
    let payload = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        jwt.split('.').nth(1).unwrap(),
    )
    .unwrap();
    let claims: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(claims["azp"], UI_CLIENT);
    assert_eq!(claims["preferred_username"], "alice");
    let (s, _, _) = exchange(c, Some(verifier), UI_CLIENT, redirect_uri.clone()).await;
    assert_eq!(s, 400, "a code is used once");

    // The authorization request itself.
    let error_of = |r: reqwest::Response| {
        let loc = r
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        loc.and_then(|l| {
            url::Url::parse(&l)
                .unwrap()
                .query_pairs()
                .find(|(k, _)| k == "error_description")
                .map(|(_, v)| v.into_owned())
        })
    };
    let mut plain = standard(&challenge);
    plain.retain(|(k, _)| *k != "code_challenge_method");
    plain.push(("code_challenge_method", "plain".into()));
    assert_eq!(
        error_of(auth(plain).await).as_deref(),
        Some("Invalid parameter: code_challenge_method")
    );
    let mut none = standard(&challenge);
    none.retain(|(k, _)| !k.starts_with("code_challenge"));
    assert_eq!(
        error_of(auth(none).await).as_deref(),
        Some("Missing parameter: code_challenge_method")
    );
    assert_eq!(
        error_of(auth(standard("short")).await).as_deref(),
        Some("Invalid parameter: code_challenge")
    );
    let mut evil = standard(&challenge);
    evil.retain(|(k, _)| *k != "redirect_uri");
    evil.push(("redirect_uri", "https://evil.example/ui/".into()));
    let r = auth(evil).await;
    assert_eq!(
        r.status(),
        400,
        "an unregistered redirect_uri gets the error page"
    );
    let mut unknown = standard(&challenge);
    unknown.retain(|(k, _)| *k != "client_id");
    unknown.push(("client_id", "nobody".into()));
    assert_eq!(auth(unknown).await.status(), 400);
}
