//! Path normalization for policy matching. Proxies and upstreams disagree on
//! what `/public/../admin`, `//admin` or `/%61dmin` mean; a gate that matches
//! raw strings can be walked around. We match on one canonical form
//! (RFC 3986 section 6.2.2: decode unreserved characters, remove dot
//! segments) and refuse to guess for anything ambiguous.
//!
//! Upstreams also read one segment in ways the canonical form does not:
//! Tomcat and Spring drop `;`-parameters (`/admin;jsessionid=1`), Spring's
//! suffix matching serves `/admin` for `/admin.json`, IIS drops trailing dots
//! and, like Express, ignores case. [`loosely_names`] says whether a request
//! segment may mean a rule's segment to such an upstream; the policy gives
//! those paths the strictest requirement (INTERFACE.md section 3).

use std::borrow::Cow;

/// A request path as the policy reads it.
#[derive(Debug)]
pub struct RequestPath<'a> {
    /// The canonical path: what rules match as written.
    pub canonical: Cow<'a, str>,
    /// The decoded path before dot segments were resolved, when resolving
    /// changed its segments: an upstream that does not resolve them (nginx
    /// passes `$request_uri` on as sent) acts on this reading instead.
    pub unresolved: Option<String>,
    /// Whether a segment may read differently to a lenient upstream (upper
    /// case, `.`, a percent escape or a non-ASCII character). False for the
    /// common plain path, which then skips the lenient comparison entirely.
    pub lenient_forms: bool,
}

/// The canonical path, or `None` when the path cannot be normalized safely.
/// See [`parse`].
pub fn normalize(raw: &str) -> Option<Cow<'_, str>> {
    parse(raw).map(|p| p.canonical)
}

/// Reads a request path (query and fragment dropped). `None` when it cannot
/// be normalized safely: not starting with `/`, `..` above the root, an
/// encoded `/` or `\`, a backslash, a broken percent escape, a control
/// character, a segment that is only dots once its `;`-parameters are
/// dropped (`..;`, `.;x`, `...`), or `..` after a segment of parameters only
/// (`;x/..`): Tomcat resolves those where we would not.
///
/// A path that is already canonical is borrowed, not copied: the common case
/// on the Check path allocates nothing.
pub fn parse(raw: &str) -> Option<RequestPath<'_>> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let raw = &raw[..end];
    if !raw.starts_with('/') {
        return None;
    }
    if is_canonical(raw) {
        return Some(RequestPath {
            canonical: Cow::Borrowed(raw),
            unresolved: None,
            lenient_forms: raw.bytes().any(lenient_byte),
        });
    }
    let decoded = decode_unreserved(raw)?;
    let mut out: Vec<&str> = Vec::new();
    let mut resolved = false;
    for seg in decoded.split('/') {
        match seg {
            "" => {}
            "." => resolved = true,
            ".." => {
                resolved = true;
                // `/x/;p/..`: Tomcat drops the parameters, merges the empty
                // segment away and so removes `x` where we would remove `;p`.
                if cut_params(out.pop()?).is_empty() {
                    return None;
                }
            }
            s if dot_like(s) => return None,
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() {
        path.push('/');
    }
    let lenient_forms = path.bytes().any(lenient_byte);
    Some(RequestPath {
        canonical: Cow::Owned(path),
        unresolved: resolved.then_some(decoded),
        lenient_forms,
    })
}

/// `/`, or segments that are neither empty, `.` nor `..`, with nothing to
/// decode and nothing the slow path would refuse.
fn is_canonical(raw: &str) -> bool {
    if raw == "/" {
        return true;
    }
    raw[1..].split('/').all(|seg| {
        !seg.is_empty()
            && !seg.bytes().all(|b| b == b'.')
            && !seg
                .bytes()
                .any(|b| matches!(b, b'%' | b'\\' | b';') || b < 0x20 || b == 0x7f)
    })
}

fn lenient_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'.' || b == b';' || b == b'%' || b >= 0x80
}

/// A segment that is nothing but dots once Tomcat's parameter stripping is
/// applied (`..;x`, `.;`), or more than two dots (`...`).
fn dot_like(seg: &str) -> bool {
    let c = cut_params(seg);
    !c.is_empty() && c.bytes().all(|b| b == b'.')
}

/// The segment without its `;`-parameters (RFC 3986 section 3.3), encoded
/// `;` included: some upstreams decode before they strip.
fn cut_params(seg: &str) -> &str {
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b';' {
            return &seg[..i];
        }
        if b[i] == b'%'
            && b.get(i + 1) == Some(&b'3')
            && b.get(i + 2).map(|c| c | 0x20) == Some(b'b')
        {
            return &seg[..i];
        }
        i += 1;
    }
    seg
}

fn decode_unreserved(raw: &str) -> Option<String> {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hi = hex_val(*b.get(i + 1)?)?;
            let lo = hex_val(*b.get(i + 2)?)?;
            let v = hi << 4 | lo;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out.push(v as char);
            } else if v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f {
                // An encoded separator means the upstream may see a different
                // segment structure than we do.
                return None;
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[hi as usize]));
                out.push(char::from(b"0123456789ABCDEF"[lo as usize]));
            }
            i += 3;
        } else if c == b'\\' || c < 0x20 || c == 0x7f {
            return None;
        } else {
            // Copy the rest of this (possibly multi-byte) character as is.
            let start = i;
            i += 1;
            while i < b.len() && (b[i] & 0xC0) == 0x80 {
                i += 1;
            }
            out.push_str(&raw[start..i]);
            continue;
        }
    }
    Some(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Every percent escape decoded (the remaining ones are not unreserved:
/// `%3B`, `%C3%A9`); invalid UTF-8 becomes U+FFFD, which names nothing.
pub fn decode_all(seg: &str) -> Cow<'_, str> {
    if !seg.contains('%') {
        return Cow::Borrowed(seg);
    }
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Whole-segment prefix match: `/user` matches `/user` and `/user/x`, never
/// `/userdata`. `prefix` is itself normalized, without a trailing slash
/// (except the root).
pub fn segment_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether the segments of `path` begin with `prefix_segments` when each
/// is compared the lenient way of [`loosely_names`].
pub fn loose_prefix(path: &str, prefix_segments: &[String]) -> bool {
    let mut segs = path.split('/').filter(|s| !s.is_empty());
    prefix_segments
        .iter()
        .all(|p| segs.next().is_some_and(|s| loosely_names(s, p)))
}

/// Whether request segment `seg` may name `prefix_seg` (decoded) to some
/// upstream: equal once `;`-parameters and trailing dots are dropped and
/// case is ignored, or that followed by a `.ext` suffix.
pub fn loosely_names(seg: &str, prefix_seg: &str) -> bool {
    let seg = decode_all(seg);
    let c = cut_params(&seg);
    let c = c.trim_end_matches('.');
    let mut chars = c.chars();
    for p in prefix_seg.chars() {
        match chars.next() {
            Some(s) if same_letter(s, p) => {}
            _ => return false,
        }
    }
    matches!(chars.next(), None | Some('.'))
}

/// Case-insensitive, as Java's `equalsIgnoreCase` compares (which also
/// matches `ſ` with `s` and the Kelvin sign with `k`).
fn same_letter(a: char, b: char) -> bool {
    if a == b {
        return true;
    }
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(&b);
    }
    a.to_lowercase().eq(b.to_lowercase()) || a.to_uppercase().eq(b.to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        let n = |s| normalize(s);
        assert_eq!(n("/").as_deref(), Some("/"));
        assert_eq!(n("/a/b").as_deref(), Some("/a/b"));
        assert_eq!(n("/a/b/").as_deref(), Some("/a/b"));
        assert_eq!(n("//admin").as_deref(), Some("/admin"));
        assert_eq!(n("/public/../admin").as_deref(), Some("/admin"));
        assert_eq!(n("/public/./x").as_deref(), Some("/public/x"));
        assert_eq!(n("/%61dmin").as_deref(), Some("/admin"));
        assert_eq!(n("/public/%2e%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(n("/a?x=/../b").as_deref(), Some("/a"));
        assert_eq!(n("/a#frag").as_deref(), Some("/a"));
        assert_eq!(n("/caf%c3%a9").as_deref(), Some("/caf%C3%A9"));
        assert_eq!(n("/café").as_deref(), Some("/café"));
        assert_eq!(n("/a/%20b").as_deref(), Some("/a/%20b"));
        assert_eq!(n("/a;x=1/b").as_deref(), Some("/a;x=1/b"));
        assert_eq!(
            n("/app/;jsessionid=1").as_deref(),
            Some("/app/;jsessionid=1")
        );
        assert_eq!(n("/a./b").as_deref(), Some("/a./b"));
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for p in ["/", "/api/admin/x", "/static/app.js", "/Api", "/a-b_c~d"] {
            let parsed = parse(p).unwrap();
            assert!(matches!(parsed.canonical, Cow::Borrowed(_)), "{p}");
            assert!(parsed.unresolved.is_none());
        }
        assert!(!parse("/api/admin/x").unwrap().lenient_forms);
        assert!(!parse("/api/admin/x?Q=.;").unwrap().lenient_forms);
        for p in [
            "/api/Admin",
            "/api/admin.json",
            "/x/caf%C3%A9",
            "/a;b",
            "/é",
        ] {
            assert!(parse(p).unwrap().lenient_forms, "{p}");
        }
        for p in ["//a", "/a/", "/a/./b", "/a/../b", "/%61", "/a;b"] {
            assert!(matches!(parse(p).unwrap().canonical, Cow::Owned(_)), "{p}");
        }
    }

    #[test]
    fn resolving_dots_keeps_the_unresolved_reading() {
        let p = parse("/admin/../public").unwrap();
        assert_eq!(p.canonical, "/public");
        assert_eq!(p.unresolved.as_deref(), Some("/admin/../public"));
        let p = parse("/%61dmin//x").unwrap();
        assert_eq!(p.canonical, "/admin/x");
        assert_eq!(p.unresolved, None);
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "",
            "admin",
            "/..",
            "/a/../..",
            "/public%2F..%2Fadmin",
            "/a%2fb",
            "/a%5cb",
            "/a\\b",
            "/a%",
            "/a%4",
            "/a%zz",
            "/a%00",
            "/a\nb",
            "*",
            "/public/..;/admin",
            "/public/..;x=1/admin",
            "/public/.;/admin",
            "/public/..%3B/admin",
            "/public/.../admin",
            "/public/;x/../admin",
        ] {
            assert!(parse(p).is_none(), "{p:?}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(segment_prefix("/user", "/user"));
        assert!(segment_prefix("/user/x", "/user"));
        assert!(!segment_prefix("/userdata", "/user"));
        assert!(!segment_prefix("/use", "/user"));
        assert!(segment_prefix("/anything", "/"));
    }

    #[test]
    fn lenient_readings_of_a_segment() {
        for seg in [
            "admin",
            "Admin",
            "ADMIN",
            "admin;jsessionid=1",
            "Admin;x",
            "admin%3Bx",
            "admin.",
            "admin...",
            "admin.json",
            "ADMIN.tar.gz",
            "admin.;x",
            "%41dmin",
            "%C5%BFettings",
        ] {
            let target = if seg.contains("ettings") {
                "settings"
            } else {
                "admin"
            };
            assert!(loosely_names(seg, target), "{seg}");
        }
        for seg in [
            "administrator",
            "admi",
            "adminx",
            "x-admin",
            "adm;in",
            "",
            "..",
        ] {
            assert!(!loosely_names(seg, "admin"), "{seg}");
        }
        // The Kelvin sign is a `k` to a Unicode case fold.
        assert!(loosely_names("\u{212A}ey", "key"));
    }

    #[test]
    fn loose_prefixes() {
        let p = vec!["api".to_string(), "admin".to_string()];
        assert!(loose_prefix("/api/Admin/x", &p));
        assert!(loose_prefix("/API;v=1/admin.json", &p));
        assert!(loose_prefix("/api/admin./x", &p));
        assert!(!loose_prefix("/api", &p));
        assert!(!loose_prefix("/api/adminx", &p));
        assert!(loose_prefix("/anything", &[]));
    }
}
