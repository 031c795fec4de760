//! Which requirement applies to a request: the ordered rules of
//! `policy.rules` (first match wins), then `policy.default`, with Envoy's
//! per-route `context_extensions` (`twofa.require`, `twofa.max_age`) beating
//! both.

use std::time::Duration;

use super::path::{normalize, segment_prefix};
use crate::config::{parse_duration, PolicyConfig, Requirement};

pub const EXT_REQUIRE: &str = "twofa.require";
pub const EXT_MAX_AGE: &str = "twofa.max_age";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub require: Requirement,
    /// Step-up: the second factor must have been passed within this time.
    pub max_age: Option<Duration>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadExtension(pub &'static str);

struct Rule {
    prefix: Option<String>,
    methods: Vec<String>,
    host: Option<String>,
    need: Need,
}

pub struct Policy {
    rules: Vec<Rule>,
    default: Requirement,
}

impl Policy {
    pub fn new(cfg: &PolicyConfig) -> Self {
        let rules = cfg
            .rules
            .iter()
            .map(|r| Rule {
                // Validated at load to start with `/`; normalize the same way
                // as request paths so both sides compare like with like.
                prefix: r
                    .path_prefix
                    .as_deref()
                    .map(|p| normalize(p).unwrap_or_else(|| p.to_string())),
                methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                host: r.host.as_deref().map(|h| h.to_ascii_lowercase()),
                need: Need {
                    require: r.require,
                    max_age: r.max_age.map(|d| d.get()),
                },
            })
            .collect();
        Self {
            rules,
            default: cfg.default,
        }
    }

    /// The requirement for a request. An invalid per-route extension is an
    /// operator error that we refuse to guess about (the caller answers 503).
    pub fn evaluate(
        &self,
        method: &str,
        host: &str,
        raw_path: &str,
        ext_require: Option<&str>,
        ext_max_age: Option<&str>,
    ) -> Result<Need, BadExtension> {
        let ext_require = ext_require
            .map(|v| Requirement::parse(v).ok_or(BadExtension(EXT_REQUIRE)))
            .transpose()?;
        let ext_max_age = ext_max_age
            .map(|v| parse_duration(v).map_err(|_| BadExtension(EXT_MAX_AGE)))
            .transpose()?;

        let Some(path) = normalize(raw_path) else {
            // Strictest requirement for paths we cannot read unambiguously.
            return Ok(Need {
                require: Requirement::TwoFa,
                max_age: ext_max_age,
            });
        };
        let host = strip_port(host);
        let base = self
            .rules
            .iter()
            .find(|r| r.matches(method, &host, &path))
            .map(|r| r.need)
            .unwrap_or(Need {
                require: self.default,
                max_age: None,
            });
        let mut need = Need {
            require: ext_require.unwrap_or(base.require),
            max_age: ext_max_age.or(if ext_require.is_some() {
                None
            } else {
                base.max_age
            }),
        };
        if ext_max_age.is_some() && ext_require.is_none() {
            // A route that asks for a recent second factor asks for one.
            need.require = Requirement::TwoFa;
        }
        if need.require != Requirement::TwoFa {
            need.max_age = None;
        }
        Ok(need)
    }
}

impl Rule {
    fn matches(&self, method: &str, host: &str, path: &str) -> bool {
        if let Some(p) = &self.prefix {
            if !segment_prefix(path, p) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        if let Some(h) = &self.host {
            let ok = match h.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
                None => host == h.as_str(),
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

fn strip_port(host: &str) -> String {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, RuleConfig};

    fn rule(prefix: &str, require: Requirement) -> RuleConfig {
        RuleConfig {
            path_prefix: Some(prefix.into()),
            methods: vec![],
            host: None,
            require,
            max_age: None,
        }
    }

    fn policy() -> Policy {
        let mut admin_post = rule("/api/admin", Requirement::TwoFa);
        admin_post.methods = vec!["POST".into()];
        admin_post.max_age = Some(Dur::secs(900));
        let mut host_rule = rule("/", Requirement::None);
        host_rule.host = Some("*.static.example.com".into());
        Policy::new(&PolicyConfig {
            default: Requirement::TwoFa,
            rules: vec![
                rule("/user", Requirement::Token),
                rule("/public", Requirement::None),
                admin_post,
                rule("/api", Requirement::Token),
                host_rule,
            ],
            identity_header_prefix: "x-auth-request-".into(),
        })
    }

    fn req(p: &Policy, m: &str, h: &str, path: &str) -> Requirement {
        p.evaluate(m, h, path, None, None).unwrap().require
    }

    #[test]
    fn first_match_wins_on_whole_segments() {
        let p = policy();
        assert_eq!(req(&p, "GET", "a.com", "/user"), Requirement::Token);
        assert_eq!(req(&p, "GET", "a.com", "/user/x"), Requirement::Token);
        assert_eq!(req(&p, "GET", "a.com", "/userdata"), Requirement::TwoFa);
        assert_eq!(req(&p, "GET", "a.com", "/public/x"), Requirement::None);
        assert_eq!(req(&p, "GET", "a.com", "/publicx"), Requirement::TwoFa);
        assert_eq!(req(&p, "POST", "a.com", "/api/admin/x"), Requirement::TwoFa);
        assert_eq!(req(&p, "get", "a.com", "/api/admin/x"), Requirement::Token);
        assert_eq!(
            p.evaluate("POST", "a.com", "/api/admin", None, None)
                .unwrap()
                .max_age,
            Some(Duration::from_secs(900))
        );
    }

    #[test]
    fn path_tricks_do_not_escape() {
        let p = policy();
        assert_eq!(
            req(&p, "GET", "a.com", "/public/../secret"),
            Requirement::TwoFa
        );
        assert_eq!(
            req(&p, "GET", "a.com", "/public/%2e%2e/secret"),
            Requirement::TwoFa
        );
        assert_eq!(
            req(&p, "GET", "a.com", "/public%2F..%2Fsecret"),
            Requirement::TwoFa
        );
        assert_eq!(
            req(&p, "GET", "a.com", "/public/..%2fsecret"),
            Requirement::TwoFa
        );
        assert_eq!(req(&p, "GET", "a.com", "//public//x"), Requirement::None);
        assert_eq!(req(&p, "GET", "a.com", "/%70ublic/x"), Requirement::None);
        assert_eq!(req(&p, "GET", "a.com", "/../public"), Requirement::TwoFa);
    }

    #[test]
    fn hosts_match_without_port_and_case() {
        let p = policy();
        assert_eq!(
            req(&p, "GET", "CDN.static.example.com:8443", "/x"),
            Requirement::None
        );
        assert_eq!(
            req(&p, "GET", "static.example.com", "/x"),
            Requirement::TwoFa
        );
        assert_eq!(
            req(&p, "GET", "evilstatic.example.com", "/x"),
            Requirement::TwoFa
        );
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn extensions_beat_rules() {
        let p = policy();
        let n = p
            .evaluate("GET", "a", "/public", Some("2fa"), Some("15m"))
            .unwrap();
        assert_eq!(
            n,
            Need {
                require: Requirement::TwoFa,
                max_age: Some(Duration::from_secs(900))
            }
        );
        let n = p
            .evaluate("GET", "a", "/secret", Some("none"), None)
            .unwrap();
        assert_eq!(n.require, Requirement::None);
        let n = p.evaluate("GET", "a", "/api", None, Some("5m")).unwrap();
        assert_eq!(n.require, Requirement::TwoFa);
        assert_eq!(
            p.evaluate("GET", "a", "/x", Some("maybe"), None),
            Err(BadExtension(EXT_REQUIRE))
        );
        assert_eq!(
            p.evaluate("GET", "a", "/x", None, Some("soon")),
            Err(BadExtension(EXT_MAX_AGE))
        );
        // An unreadable path stays strict even when the route says none.
        let n = p
            .evaluate("GET", "a", "/public/%2F", Some("none"), None)
            .unwrap();
        assert_eq!(n.require, Requirement::TwoFa);
    }
}
