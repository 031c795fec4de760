//! Path normalization for policy matching. Proxies and upstreams disagree on
//! what `/public/../admin`, `//admin` or `/%61dmin` mean; a gate that matches
//! raw strings can be walked around. We match on one canonical form
//! (RFC 3986 section 6.2.2: decode unreserved characters, remove dot
//! segments) and refuse to guess for anything ambiguous.

/// The canonical path, or `None` when the path cannot be normalized safely:
/// not starting with `/`, `..` above the root, an encoded `/` or `\`, a
/// backslash, a broken percent escape, or a control character.
pub fn normalize(raw: &str) -> Option<String> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let raw = &raw[..end];
    if !raw.starts_with('/') {
        return None;
    }
    let decoded = decode_unreserved(raw)?;
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
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
    Some(path)
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
        ] {
            assert_eq!(normalize(p), None, "{p:?}");
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
}
