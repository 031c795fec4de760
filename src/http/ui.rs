//! `/ui/`: the self-service page of INTERFACE.md section 9, plain HTML, CSS
//! and JavaScript embedded in the binary (`ui/` in the repository), no
//! third-party asset. The page signs in by the OIDC authorization-code flow
//! with PKCE as the public client `ui.client_id` (or, in dev mode, through
//! `POST /dev/token`), keeps the token in memory and calls the `/user` API.
//!
//! The server hands the page what it must not guess, inline as a
//! non-executable JSON block (so the strict CSP needs no inline script):
//! its strings in the reader's language (from the locale files), the
//! issuer's endpoints (from the issuer's discovery document, fetched and
//! cached here, so that the browser needs no CORS for it), the origins of
//! `server.cors_allowed_origins`, and `?rd=` once it has checked it
//! ([`safe_redirect`]; the page checks it again against its own origin).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::delivery::locales::Locales;

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// Longest `?rd=` considered; browsers and proxies cap URLs near here too.
const MAX_RD_LEN: usize = 2048;
/// At most this much of `Accept-Language`, and this many of its entries.
const MAX_ACCEPT_LANGUAGE: usize = 1024;
const MAX_LANGUAGE_RANGES: usize = 16;
/// A discovery document is a few KiB; Keycloak's is under 10.
const MAX_DISCOVERY_BYTES: usize = 256 * 1024;
/// The issuer's endpoints are fetched again this often, and after a failure
/// not before this: a burst of page loads never becomes a burst of
/// requests to the identity provider.
const DISCOVERY_TTL_SECS: i64 = 600;
const DISCOVERY_RETRY_SECS: i64 = 10;
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the page's sign-in needs from the issuer's discovery document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_session_endpoint: Option<String>,
}

/// State of the page's routes: the cached discovery result.
#[derive(Default)]
pub struct Ui {
    discovery: tokio::sync::Mutex<Option<(i64, Result<Endpoints, String>)>>,
}

/// `/ui` (to `/ui/`), `/ui/`, its assets and `/ui/strings.json`; nothing
/// when `ui.enabled = false` (the listener's fallback answers 404).
pub fn routes(state: &AppState) -> Router<Arc<AppState>> {
    if !state.cfg.ui.enabled {
        return Router::new();
    }
    Router::new()
        .route("/ui", get(to_slash))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
        .route("/ui/strings.json", get(strings))
        .layer(Extension(Arc::new(Ui::default())))
}

/// Relative links of the page (`app.js`, `../user`) resolve from `/ui/`.
async fn to_slash(uri: Uri) -> Response {
    let target = uri
        .query()
        .and_then(|q| HeaderValue::from_str(&format!("/ui/?{q}")).ok())
        .unwrap_or(HeaderValue::from_static("/ui/"));
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, target)]).into_response()
}

/// The query of `/ui/`: `rd` (where to go once a factor is passed) and
/// `lang`. Anything else (the authorization response of a `response_mode`
/// of `query`) is the page's business.
#[derive(Debug, Default, PartialEq, Eq)]
struct IndexQuery {
    rd: Option<String>,
    rd_given: bool,
    lang: Option<String>,
}

/// Read by hand so that a malformed query never fails the page; `rd` given
/// twice is ambiguous and dropped.
fn parse_index_query(q: Option<&str>) -> IndexQuery {
    let mut out = IndexQuery::default();
    let mut rds = 0;
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "rd" => {
                rds += 1;
                out.rd_given = true;
                out.rd = Some(v.into_owned());
            }
            "lang" if v.len() <= 35 => out.lang = Some(v.into_owned()),
            _ => {}
        }
    }
    if rds > 1 {
        out.rd = None;
    }
    out
}

async fn index(
    State(state): State<Arc<AppState>>,
    Extension(ui): Extension<Arc<Ui>>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(q): RawQuery,
) -> Response {
    let cfg = &state.cfg;
    let q = parse_index_query(q.as_deref());
    let locales = state.delivery.locales();
    let (lang, strings) = pick_strings(locales, q.lang.as_deref(), &headers);
    let allowed = allowed_origins(&cfg.server.cors_allowed_origins);
    let authority = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let rd =
        q.rd.as_deref()
            .and_then(|rd| safe_redirect(rd, authority, &allowed));

    let (oidc, oidc_error) = match (&cfg.ui.client_id, state.dev.is_some()) {
        (Some(client_id), false) => match ui.endpoints(&state).await {
            Ok(e) => (Some((e, client_id.clone())), false),
            Err(why) => {
                tracing::warn!(error = %why, "/ui/: the issuer's discovery document is not usable; sign-in is unavailable");
                (None, true)
            }
        },
        _ => (None, false),
    };
    let product = state.delivery.messages().product();
    let config = json!({
        "lang": lang,
        "strings": strings,
        "dev": state.dev.is_some(),
        "oidc": oidc.as_ref().map(|(e, client_id)| json!({
            "issuer": e.issuer,
            "authorization_endpoint": e.authorization_endpoint,
            "token_endpoint": e.token_endpoint,
            "end_session_endpoint": e.end_session_endpoint,
            "client_id": client_id,
        })),
        "oidc_error": oidc_error,
        "sign_in_configured": cfg.ui.client_id.is_some() || state.dev.is_some(),
        "allowed_origins": allowed,
        "rd": rd,
        "rd_rejected": q.rd_given && rd.is_none(),
        "resend_interval": cfg.security.otp_resend_interval.as_secs(),
        "webauthn": cfg.webauthn.rp_id.is_some()
            && cfg.security.methods.iter().any(|m| m == "webauthn"),
        "product_name": product.name,
        "support_url": product.support_url.as_deref().filter(|u| is_http_url(u)),
    });
    let html = render_index(&lang, &config);
    let mut connect = vec![];
    if let Some((e, _)) = &oidc {
        // The page posts to the token endpoint; the issuer's origin is
        // named as well, as Keycloak serves both from it.
        for u in [&e.issuer, &e.token_endpoint] {
            if let Some(o) = origin_of(u) {
                if !connect.contains(&o) {
                    connect.push(o);
                }
            }
        }
    }
    let mut resp = (StatusCode::OK, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Per user (`rd`, language) and holding the issuer's current endpoints.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
    security_headers(h, &csp(&connect));
    resp
}

async fn app_js(headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    asset(
        &headers,
        q.as_deref(),
        APP_JS,
        "text/javascript; charset=utf-8",
        js_version(),
    )
}

async fn app_css(headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    asset(
        &headers,
        q.as_deref(),
        APP_CSS,
        "text/css; charset=utf-8",
        css_version(),
    )
}

/// The page links `app.js?v=<hash of its content>`: such a URL is the same
/// bytes forever and may be cached as immutable; without (or with another)
/// `v` the browser revalidates by ETag.
fn asset(
    headers: &HeaderMap,
    query: Option<&str>,
    body: &'static str,
    content_type: &'static str,
    version: &'static str,
) -> Response {
    let etag = format!("\"{version}\"");
    let versioned = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "v" && v == version);
    let cache = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(e) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, e);
    }
    security_headers(h, &csp(&[]));
    resp
}

/// `GET /ui/strings.json?lang=de`: the page's strings in another language
/// (the token's `locale` claim, known only once signed in).
async fn strings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let q = parse_index_query(q.as_deref());
    let (lang, strings) = pick_strings(state.delivery.locales(), q.lang.as_deref(), &headers);
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "lang": lang, "strings": strings }).to_string(),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
    security_headers(h, &csp(&[]));
    resp
}

/// `lang` if it names a locale, else the first range of `Accept-Language`
/// (by `q`) that does, else `email.default_locale`.
fn pick_strings(locales: &Locales, lang: Option<&str>, headers: &HeaderMap) -> (String, Value) {
    if let Some(l) = lang.and_then(|l| locales.lookup(l)) {
        return (l.tag().to_string(), l.ui_strings());
    }
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    for range in accept_language(accept) {
        if let Some(l) = locales.lookup(&range) {
            return (l.tag().to_string(), l.ui_strings());
        }
    }
    locales.ui_strings(None)
}

/// The language ranges of an `Accept-Language` header (RFC 9110, 12.5.4),
/// most preferred first; `*` and ranges with `q=0` left out.
fn accept_language(h: &str) -> Vec<String> {
    let h = match h.char_indices().nth(MAX_ACCEPT_LANGUAGE) {
        Some((i, _)) => &h[..i],
        None => h,
    };
    let mut ranges: Vec<(u16, usize, String)> = Vec::new();
    for (i, item) in h.split(',').take(MAX_LANGUAGE_RANGES).enumerate() {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or_default().trim();
        if tag.is_empty() || tag == "*" {
            continue;
        }
        let mut q = 1000u16;
        for p in parts {
            if let Some(v) = p.trim().strip_prefix("q=") {
                q = v
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))
                    .map_or(0, |q| (q * 1000.0) as u16);
            }
        }
        if q > 0 {
            ranges.push((q, i, tag.to_string()));
        }
    }
    // Stable: equal weights keep the header's order.
    ranges.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranges.into_iter().map(|(_, _, t)| t).collect()
}

/// The index with its language and the page's configuration filled in.
/// The configuration goes into `<script type="application/json">`, which
/// the browser never runs; `<`, `>` and `&` are escaped so that no string in
/// it (an operator's locale file, a URL) can close the element.
fn render_index(lang: &str, config: &Value) -> String {
    let json = config
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    let lang: String = lang
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let text = |k: &str| html_escape(config["strings"][k].as_str().unwrap_or_default());
    let values = [
        ("__LANG__", lang),
        ("__TITLE__", text("title")),
        ("__NOSCRIPT__", text("noscript")),
        ("__APP_CSS__", format!("app.css?v={}", css_version())),
        ("__APP_JS__", format!("app.js?v={}", js_version())),
        ("__CONFIG__", json),
    ];
    // One pass over the template: a value is never searched for markers.
    let mut out =
        String::with_capacity(INDEX_HTML.len() + values.iter().map(|v| v.1.len()).sum::<usize>());
    let mut rest = INDEX_HTML;
    while let Some((at, (marker, value))) = values
        .iter()
        .filter_map(|v| rest.find(v.0).map(|i| (i, v)))
        .min_by_key(|(i, _)| *i)
    {
        out.push_str(&rest[..at]);
        out.push_str(value);
        rest = &rest[at + marker.len()..];
    }
    out.push_str(rest);
    out
}

fn html_escape(s: &str) -> String {
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

/// The first 16 hex digits of the SHA-256 of an asset.
fn digest(asset: &str) -> String {
    hex::encode(&Sha256::digest(asset.as_bytes())[..8])
}

fn js_version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| digest(APP_JS))
}

fn css_version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| digest(APP_CSS))
}

/// The page's Content-Security-Policy: nothing but its own script, style
/// and images (and `data:` images: the QR code), connections to itself
/// and to `connect` (the issuer's token endpoint), no framing, no `<base>`,
/// forms only to itself.
pub fn csp(connect: &[String]) -> String {
    let mut connect_src = "'self'".to_string();
    for o in connect {
        connect_src.push(' ');
        connect_src.push_str(o);
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src {connect_src}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
}

fn security_headers(h: &mut HeaderMap, csp: &str) {
    if let Ok(v) = HeaderValue::from_str(csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // For browsers that predate `frame-ancestors`.
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
}

/// `server.cors_allowed_origins` as origins (`https://app.example.com`),
/// without `*`: a wildcard lets any site call the API with a token it
/// already has, but must never make `?rd=` an open redirect.
pub fn allowed_origins(configured: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for o in configured {
        if let Some(origin) = origin_of(o) {
            if !out.contains(&origin) {
                out.push(origin);
            }
        }
    }
    out
}

/// The ASCII serialization of an http(s) URL's origin.
fn origin_of(u: &str) -> Option<String> {
    let u = url::Url::parse(u).ok()?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return None;
    }
    Some(u.origin().ascii_serialization())
}

fn is_http_url(u: &str) -> bool {
    origin_of(u).is_some()
}

/// `?rd=` as a target the page may send the user to, or None. Accepted:
/// a path on this server (`/app/x?y`, never `//host` or anything with a
/// backslash, which browsers read as a slash), or an absolute http(s) URL
/// whose origin is one of `allowed` or whose host and port are the ones
/// this request was sent to (`authority`; the page then also requires the
/// scheme to be its own). Control characters, whitespace and anything
/// longer than 2 KiB are refused outright; URLs are parsed as browsers
/// parse them (WHATWG), and the parsed form is what is returned.
pub fn safe_redirect(raw: &str, authority: Option<&str>, allowed: &[String]) -> Option<String> {
    if raw.is_empty()
        || raw.len() > MAX_RD_LEN
        || raw.chars().any(|c| c.is_control() || c.is_whitespace())
        || raw.contains('\\')
    {
        return None;
    }
    if raw.starts_with('/') {
        if raw.starts_with("//") {
            return None;
        }
        let base = url::Url::parse("http://this-server.invalid/").ok()?;
        let u = base.join(raw).ok()?;
        if u.origin() != base.origin() {
            return None;
        }
        let mut out = u.path().to_string();
        if let Some(q) = u.query() {
            out.push('?');
            out.push_str(q);
        }
        if let Some(f) = u.fragment() {
            out.push('#');
            out.push_str(f);
        }
        return Some(out);
    }
    let u = url::Url::parse(raw).ok()?;
    if !matches!(u.scheme(), "http" | "https") || !u.username().is_empty() || u.password().is_some()
    {
        return None;
    }
    let origin = u.origin().ascii_serialization();
    if allowed.contains(&origin) {
        return Some(u.into());
    }
    let host = u.host_str()?;
    let port = u.port_or_known_default()?;
    let same = authority.is_some_and(|a| {
        let a = a.to_ascii_lowercase();
        a == format!("{host}:{port}") || (a == host && u.port().is_none())
    });
    same.then(|| u.into())
}

impl Ui {
    /// The issuer's endpoints, from its discovery document (cached).
    async fn endpoints(&self, state: &AppState) -> Result<Endpoints, String> {
        let now = state.clock.now();
        // One fetch at a time: page loads wait for it rather than each
        // asking the identity provider.
        let mut cached = self.discovery.lock().await;
        if let Some((at, r)) = cached.as_ref() {
            let ttl = if r.is_ok() {
                DISCOVERY_TTL_SECS
            } else {
                DISCOVERY_RETRY_SECS
            };
            if now.saturating_sub(*at) < ttl {
                return r.clone();
            }
        }
        let issuer = state
            .cfg
            .keycloak
            .effective_issuer()
            .ok_or("keycloak.url and keycloak.realm (or keycloak.issuer) are not set")?;
        let r = fetch_endpoints(&state.http, &issuer).await;
        *cached = Some((now, r.clone()));
        r
    }
}

async fn fetch_endpoints(http: &reqwest::Client, issuer: &str) -> Result<Endpoints, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let fetch = async {
        let mut resp = http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: status {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_DISCOVERY_BYTES {
                return Err(format!("{url}: larger than 256 KiB"));
            }
        }
        Ok(body)
    };
    let body = tokio::time::timeout(DISCOVERY_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("{url}: no answer within 5 s"))??;
    let doc: Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))?;
    endpoints_from(&doc, issuer)
}

/// The endpoints of a discovery document that names `issuer` (OpenID
/// Connect Discovery 1.0, section 4.3: it must be the same string).
fn endpoints_from(doc: &Value, issuer: &str) -> Result<Endpoints, String> {
    let s = |k: &str| doc.get(k).and_then(Value::as_str);
    if s("issuer") != Some(issuer) {
        return Err(format!(
            "the discovery document names issuer {:?}, expected {issuer:?}",
            s("issuer")
        ));
    }
    let url = |k: &str| -> Result<String, String> {
        s(k).filter(|u| is_http_url(u))
            .map(str::to_string)
            .ok_or_else(|| format!("the discovery document has no http(s) {k}"))
    };
    Ok(Endpoints {
        issuer: issuer.to_string(),
        authorization_endpoint: url("authorization_endpoint")?,
        token_endpoint: url("token_endpoint")?,
        end_session_endpoint: url("end_session_endpoint").ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Option<&str> = Some("auth.example.com:8090");

    fn allowed() -> Vec<String> {
        allowed_origins(&[
            "https://app.example.com".into(),
            "https://APP.example.com/".into(),
            "http://127.0.0.1:3000".into(),
            "*".into(),
        ])
    }

    #[test]
    fn allowed_origins_are_normalized_and_never_a_wildcard() {
        assert_eq!(
            allowed(),
            vec!["https://app.example.com", "http://127.0.0.1:3000"]
        );
    }

    #[test]
    fn rd_accepts_own_paths_and_allowed_origins() {
        let ok = |rd: &str| safe_redirect(rd, HOST, &allowed());
        assert_eq!(ok("/app").as_deref(), Some("/app"));
        assert_eq!(ok("/app/x?y=1#top").as_deref(), Some("/app/x?y=1#top"));
        assert_eq!(ok("/a/../b/./c").as_deref(), Some("/b/c"));
        // Still a path on this server: the browser does not decode it.
        assert_eq!(ok("/%2F%2Fevil.com").as_deref(), Some("/%2F%2Fevil.com"));
        assert_eq!(ok("/%5Cevil.com").as_deref(), Some("/%5Cevil.com"));
        assert_eq!(
            ok("https://app.example.com/back?x=1").as_deref(),
            Some("https://app.example.com/back?x=1")
        );
        assert_eq!(
            ok("HTTPS://App.Example.com:443/back").as_deref(),
            Some("https://app.example.com/back")
        );
        assert_eq!(
            ok("http://127.0.0.1:3000/").as_deref(),
            Some("http://127.0.0.1:3000/")
        );
        // The host and port this request was sent to.
        assert_eq!(
            ok("http://auth.example.com:8090/ui/x").as_deref(),
            Some("http://auth.example.com:8090/ui/x")
        );
        assert_eq!(
            safe_redirect("http://h.example/x", Some("h.example"), &[]).as_deref(),
            Some("http://h.example/x")
        );
    }

    #[test]
    fn rd_is_never_an_open_redirect() {
        for rd in [
            "",
            "//evil.com",
            "///evil.com",
            "//evil.com/%2e%2e",
            "/\\evil.com",
            "\\/evil.com",
            "\\\\evil.com",
            "/\t/evil.com",
            "/\n/evil.com",
            " //evil.com",
            "//evil.com\u{0}",
            "https://evil.com",
            "https://evil.com/",
            "http://evil.com:443",
            "https:evil.com",
            "https:/evil.com",
            "http:\\\\evil.com",
            "https://app.example.com.evil.com/",
            "https://app.example.com@evil.com/",
            "https://user:pw@app.example.com/",
            "http://app.example.com/",
            "https://app.example.com:8443/",
            "http://127.0.0.1:3001/",
            "http://auth.example.com:8091/",
            "http://auth.example.com/",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "javascript://%0aalert(1)",
            "data:text/html,<script>alert(1)</script>",
            "vbscript:msgbox(1)",
            "%2F%2Fevil.com",
            "%6Aavascript:alert(1)",
            "evil.com",
            "ui/x",
            "./x",
            "?x",
            "#x",
            "otpauth://totp/x",
        ] {
            assert_eq!(safe_redirect(rd, HOST, &allowed()), None, "{rd:?}");
        }
        assert_eq!(
            safe_redirect(&format!("/{}", "a".repeat(3000)), HOST, &[]),
            None
        );
        assert_eq!(
            safe_redirect("https://x.example/", None, &["*".into()]),
            None
        );
    }

    #[test]
    fn a_repeated_rd_is_dropped() {
        let q = parse_index_query(Some("rd=%2Fa&rd=https%3A%2F%2Fevil.com"));
        assert_eq!(q.rd, None);
        assert!(q.rd_given);
        let q = parse_index_query(Some("rd=%2Fa&lang=de&code=x"));
        assert_eq!(q.rd.as_deref(), Some("/a"));
        assert_eq!(q.lang.as_deref(), Some("de"));
        assert_eq!(parse_index_query(Some("%zz=%%&rd")).rd.as_deref(), Some(""));
        assert_eq!(parse_index_query(None), IndexQuery::default());
    }

    #[test]
    fn accept_language_by_weight_then_order() {
        assert_eq!(
            accept_language("fr-CH, fr;q=0.9, de;q=0.95, *;q=0.5, en;q=0"),
            vec!["fr-CH", "de", "fr"]
        );
        assert_eq!(
            accept_language("de-DE,de;q=0.9,en;q=0.8"),
            vec!["de-DE", "de", "en"]
        );
        assert_eq!(accept_language("en;q=x, de;q=2"), Vec::<String>::new());
        assert!(accept_language(&"de,".repeat(10_000)).len() <= MAX_LANGUAGE_RANGES);
        let l = Locales::embedded();
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_LANGUAGE, "fr, de-AT;q=0.8".parse().unwrap());
        assert_eq!(pick_strings(l, None, &h).0, "de");
        assert_eq!(pick_strings(l, Some("en"), &h).0, "en");
        assert_eq!(pick_strings(l, Some("xx"), &h).0, "de");
        assert_eq!(pick_strings(l, None, &HeaderMap::new()).0, "en");
    }

    #[test]
    fn the_inline_configuration_cannot_close_its_element() {
        let html = render_index(
            "de\"><script>",
            &json!({
                "x": "</script><script>alert(1)</script><!--",
                "y": "a&b",
                "strings": { "title": "<b>T</b> __CONFIG__", "noscript": "x" },
            }),
        );
        let block = html
            .split("<script type=\"application/json\" id=\"twofa-config\">")
            .nth(1)
            .and_then(|rest| rest.split("</script>").next())
            .expect("the configuration block");
        assert!(!block.contains('<') && !block.contains('>') && !block.contains('&'));
        let back: Value = serde_json::from_str(block).unwrap();
        assert_eq!(back["x"], "</script><script>alert(1)</script><!--");
        assert!(html.contains("<html lang=\"descript\""), "{html}");
        assert!(
            html.contains("<title>&lt;b&gt;T&lt;/b&gt; __CONFIG__</title>"),
            "{html}"
        );
        // The only script the page runs is its own file.
        assert_eq!(html.matches("<script").count(), 2);
        assert!(html.contains(&format!("src=\"app.js?v={}\"", js_version())));
        for m in [
            "__LANG__",
            "__TITLE__",
            "__NOSCRIPT__",
            "__APP_CSS__",
            "__APP_JS__",
        ] {
            assert!(!html.contains(m), "{m} is filled");
        }
        // The title's own text (and its copy in the JSON) is never expanded.
        assert_eq!(html.matches("__CONFIG__").count(), 2);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let everywhere = ["http://", "https://", "//cdn", "<iframe"];
        for (name, text, own) in [
            (
                "index.html",
                INDEX_HTML,
                &[" style=", " onclick=", " onload=", " onerror="][..],
            ),
            (
                "app.js",
                APP_JS,
                &[
                    "eval(",
                    "innerHTML",
                    "outerHTML",
                    "insertAdjacentHTML",
                    "document.write",
                    "new Function",
                ][..],
            ),
            ("app.css", APP_CSS, &["@import", "url("][..]),
        ] {
            for bad in everywhere.iter().chain(own) {
                assert!(!text.contains(bad), "{name} contains {bad:?}");
            }
        }
        // Tokens never go to web storage; only the sign-in's state does.
        assert!(!APP_JS.contains("localStorage"));
        assert_eq!(APP_JS.matches("sessionStorage.setItem").count(), 1);
    }

    #[test]
    fn csp_is_strict() {
        let c = csp(&["https://sso.example.com".into()]);
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self' https://sso.example.com",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ] {
            assert!(c.split("; ").any(|p| p == part), "{part} in {c}");
        }
        assert!(!c.contains("unsafe"));
    }

    #[test]
    fn discovery_must_name_the_issuer_and_http_endpoints() {
        let iss = "https://sso.example.com/realms/demo";
        let doc = json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/protocol/openid-connect/auth"),
            "token_endpoint": format!("{iss}/protocol/openid-connect/token"),
            "end_session_endpoint": "javascript:alert(1)",
        });
        let e = endpoints_from(&doc, iss).unwrap();
        assert_eq!(
            e.token_endpoint,
            format!("{iss}/protocol/openid-connect/token")
        );
        assert_eq!(e.end_session_endpoint, None);
        assert!(endpoints_from(&doc, "https://sso.example.com/realms/other").is_err());
        let mut bad = doc.clone();
        bad["authorization_endpoint"] = json!("javascript:alert(1)");
        assert!(endpoints_from(&bad, iss).is_err());
        bad["authorization_endpoint"] = json!(null);
        assert!(endpoints_from(&bad, iss).is_err());
    }

    /// Every problem code of the catalogue has a sentence in every locale,
    /// so that the page never shows a bare code (a new code cannot be
    /// forgotten here).
    #[test]
    fn every_problem_code_has_a_sentence() {
        let codes: Vec<&str> = crate::error::CATALOGUE.iter().map(|k| k.code).collect();
        assert!(codes.len() >= 25, "{codes:?}");
        for l in Locales::embedded().all() {
            let ui = l.ui_strings();
            for c in &codes {
                let key = format!("error.{c}");
                assert!(
                    ui.get(&key)
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty()),
                    "{}: no ui.{key}",
                    l.tag()
                );
            }
        }
    }

    /// Every `data-i18n` key of the page and every `t("…")` of its script
    /// exists in the reference locale.
    #[test]
    fn every_string_the_page_uses_is_in_the_locale_files() {
        let ui = Locales::embedded().pick(Some("en")).ui_strings();
        let mut keys = Vec::new();
        for (text, marker) in [
            (INDEX_HTML, "data-i18n=\""),
            (INDEX_HTML, "data-i18n-alt=\""),
            (APP_JS, "t(\""),
        ] {
            for part in text.split(marker).skip(1) {
                if let Some(k) = part.split('"').next() {
                    keys.push(k.to_string());
                }
            }
        }
        assert!(keys.len() > 40, "{keys:?}");
        for k in keys {
            assert!(ui.get(&k).is_some(), "ui.{k} is not in locales/en.toml");
        }
    }
}
