//! Which requirement applies to a request: the ordered rules of
//! `policy.rules` (first match wins), then `policy.default`, with Envoy's
//! per-route `context_extensions` (`twofa.require`, `twofa.max_age`) beating
//! both.
//!
//! A path that some rule would match when read the lenient way of an
//! upstream (case, `;`-parameters, trailing dots, a `.ext` suffix, dot
//! segments left unresolved) but that the rule does not match as written gets
//! the strictest requirement: `2fa` with the smallest `max_age` of any rule.
//! Upstreams disagree on such paths, so they never fall through to a weaker
//! rule (INTERFACE.md section 3).

use std::time::Duration;

use super::path::{decode_all, loose_prefix, normalize, parse, segment_prefix, RequestPath};
use crate::config::{parse_duration, PolicyConfig, Requirement};

pub const EXT_REQUIRE: &str = "twofa.require";
pub const EXT_MAX_AGE: &str = "twofa.max_age";
/// `"dry-run"` or `"enforce"`: a per-route override of the rules' `dry_run`.
pub const EXT_MODE: &str = "twofa.mode";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub require: Requirement,
    /// Step-up: the second factor must have been passed within this time.
    pub max_age: Option<Duration>,
    /// Rollout mode: a refusal is turned into an allow that is marked and
    /// counted (docs/dry-run.md).
    pub dry_run: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadExtension(pub &'static str);

struct Rule {
    prefix: Option<String>,
    /// The prefix's segments, decoded, for the lenient comparison; empty for
    /// no prefix or `/`, which match every path anyway.
    segments: Vec<String>,
    methods: Vec<String>,
    host: Option<String>,
    need: Need,
}

pub struct Policy {
    rules: Vec<Rule>,
    default: Requirement,
    /// `2fa` with the smallest `max_age` of any rule: for paths that cannot
    /// be normalized or that some rule matches only leniently.
    strictest: Need,
    /// Some prefix has upper case or non-ASCII characters: then even a plain
    /// lower-case request path may match it only leniently.
    unplain_prefixes: bool,
}

impl Policy {
    pub fn new(cfg: &PolicyConfig) -> Self {
        let rules: Vec<Rule> = cfg
            .rules
            .iter()
            .map(|r| {
                // Validated at load to start with `/`; normalize the same way
                // as request paths so both sides compare like with like.
                let prefix = r
                    .path_prefix
                    .as_deref()
                    .map(|p| normalize(p).map_or_else(|| p.to_string(), |n| n.into_owned()));
                let segments = prefix
                    .as_deref()
                    .map(|p| {
                        p.split('/')
                            .filter(|s| !s.is_empty())
                            .map(|s| decode_all(s).into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                (r, prefix, segments)
            })
            .map(|(r, prefix, segments)| Rule {
                prefix,
                segments,
                methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                host: r.host.as_deref().map(|h| h.to_ascii_lowercase()),
                need: Need {
                    require: r.require,
                    max_age: r.max_age.map(|d| d.get()),
                    dry_run: r.dry_run,
                },
            })
            .collect();
        let strictest = Need {
            require: Requirement::TwoFa,
            max_age: rules.iter().filter_map(|r| r.need.max_age).min(),
            // An ambiguous path may be read upstream as any rule's path: it
            // is let through in dry run only if every rule is in dry run.
            dry_run: !rules.is_empty() && rules.iter().all(|r| r.need.dry_run),
        };
        let unplain_prefixes = rules.iter().any(|r| {
            r.prefix.as_deref().is_some_and(|p| {
                p.bytes()
                    .any(|b| b.is_ascii_uppercase() || b >= 0x80 || b == b'%')
            })
        });
        Self {
            rules,
            default: cfg.default,
            strictest,
            unplain_prefixes,
        }
    }

    /// `2fa` with the smallest `max_age` of any rule.
    pub fn strictest(&self) -> Need {
        self.strictest
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
        ext_mode: Option<&str>,
    ) -> Result<Need, BadExtension> {
        let ext_dry_run = ext_mode
            .map(|v| match v {
                "dry-run" => Ok(true),
                "enforce" => Ok(false),
                _ => Err(BadExtension(EXT_MODE)),
            })
            .transpose()?;
        let ext_require = ext_require
            .map(|v| Requirement::parse(v).ok_or(BadExtension(EXT_REQUIRE)))
            .transpose()?;
        let ext_max_age = ext_max_age
            .map(|v| parse_duration(v).map_err(|_| BadExtension(EXT_MAX_AGE)))
            .transpose()?;

        let Some(path) = parse(raw_path) else {
            // Strictest requirement for paths we cannot read unambiguously,
            // whatever the route says.
            return Ok(Need {
                require: Requirement::TwoFa,
                max_age: match (ext_max_age, self.strictest.max_age) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                dry_run: ext_dry_run.unwrap_or(self.strictest.dry_run),
            });
        };
        // A per-route setting replaces the rules' answer: skip them.
        let base = if ext_require.is_some() || ext_max_age.is_some() {
            Need {
                require: Requirement::TwoFa,
                max_age: None,
                dry_run: false,
            }
        } else {
            self.by_rules(method, strip_port(host), &path)
        };
        let mut need = Need {
            require: ext_require.unwrap_or(base.require),
            max_age: ext_max_age.or(if ext_require.is_some() {
                None
            } else {
                base.max_age
            }),
            dry_run: ext_dry_run.unwrap_or(base.dry_run),
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

impl Policy {
    /// The first rule that matches as written, then the default; the
    /// strictest requirement when any rule matches only leniently.
    fn by_rules(&self, method: &str, host: &str, path: &RequestPath<'_>) -> Need {
        let written = &path.canonical;
        let lenient = path.lenient_forms || path.unresolved.is_some() || self.unplain_prefixes;
        let mut first = None;
        for rule in &self.rules {
            if !rule.applies_to(method, host) {
                continue;
            }
            let as_written = rule
                .prefix
                .as_deref()
                .is_none_or(|p| segment_prefix(written, p));
            if as_written {
                // Later rules can still only match leniently: keep looking
                // only if this path has lenient readings.
                first.get_or_insert(rule.need);
                if !lenient {
                    break;
                }
            } else if lenient
                && (loose_prefix(written, &rule.segments)
                    || path
                        .unresolved
                        .as_deref()
                        .is_some_and(|u| loose_prefix(u, &rule.segments)))
            {
                return self.strictest;
            }
        }
        first.unwrap_or(Need {
            require: self.default,
            max_age: None,
            dry_run: false,
        })
    }
}

impl Rule {
    fn applies_to(&self, method: &str, host: &str) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        if let Some(h) = &self.host {
            let ok = match h.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1
                        && host.is_char_boundary(host.len() - suffix.len())
                        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                }
                None => host.eq_ignore_ascii_case(h),
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// The host without port and trailing dot (compared case-insensitively).
fn strip_port(host: &str) -> &str {
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
    h.trim_end_matches('.')
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
            dry_run: false,
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
        p.evaluate(m, h, path, None, None, None).unwrap().require
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
            p.evaluate("POST", "a.com", "/api/admin", None, None, None)
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
            .evaluate("GET", "a", "/public", Some("2fa"), Some("15m"), None)
            .unwrap();
        assert_eq!(
            n,
            Need {
                require: Requirement::TwoFa,
                max_age: Some(Duration::from_secs(900)),
                dry_run: false,
            }
        );
        let n = p
            .evaluate("GET", "a", "/secret", Some("none"), None, None)
            .unwrap();
        assert_eq!(n.require, Requirement::None);
        let n = p
            .evaluate("GET", "a", "/api", None, Some("5m"), None)
            .unwrap();
        assert_eq!(n.require, Requirement::TwoFa);
        assert_eq!(
            p.evaluate("GET", "a", "/x", Some("maybe"), None, None),
            Err(BadExtension(EXT_REQUIRE))
        );
        assert_eq!(
            p.evaluate("GET", "a", "/x", None, Some("soon"), None),
            Err(BadExtension(EXT_MAX_AGE))
        );
        // An unreadable path stays strict even when the route says none.
        let n = p
            .evaluate("GET", "a", "/public/%2F", Some("none"), None, None)
            .unwrap();
        assert_eq!(n.require, Requirement::TwoFa);
    }

    /// The rules of the finding: `/api/admin` (2fa, 30m) and `/api`
    /// (token), plus a step-up rule elsewhere with a smaller max_age.
    fn admin_policy() -> Policy {
        let mut admin = rule("/api/admin", Requirement::TwoFa);
        admin.max_age = Some(Dur::secs(1800));
        let mut step_up = rule("/admin", Requirement::TwoFa);
        step_up.max_age = Some(Dur::secs(900));
        Policy::new(&PolicyConfig {
            default: Requirement::Token,
            rules: vec![
                rule("/public", Requirement::None),
                admin,
                rule("/api", Requirement::Token),
                step_up,
            ],
            identity_header_prefix: "x-auth-request-".into(),
        })
    }

    fn strictest() -> Need {
        Need {
            require: Requirement::TwoFa,
            max_age: Some(Duration::from_secs(900)),
            dry_run: false,
        }
    }

    fn eval(p: &Policy, path: &str) -> Need {
        p.evaluate("GET", "a.com", path, None, None, None).unwrap()
    }

    #[test]
    fn the_strictest_requirement_has_the_smallest_max_age() {
        assert_eq!(admin_policy().strictest(), strictest());
        let none = Policy::new(&PolicyConfig {
            default: Requirement::None,
            rules: vec![rule("/a", Requirement::Token)],
            identity_header_prefix: "x-".into(),
        });
        assert_eq!(
            none.strictest(),
            Need {
                require: Requirement::TwoFa,
                max_age: None,
                dry_run: false,
            }
        );
    }

    #[test]
    fn lenient_forms_of_a_prefix_get_the_strictest_requirement() {
        let p = admin_policy();
        // As written: the rule's own answer.
        assert_eq!(
            eval(&p, "/api/admin/x"),
            Need {
                require: Requirement::TwoFa,
                max_age: Some(Duration::from_secs(1800)),
                dry_run: false,
            }
        );
        assert_eq!(eval(&p, "/api/x").require, Requirement::Token);
        for path in [
            // case
            "/api/Admin/x",
            "/API/ADMIN",
            "/api/%41dmin",
            "/api/adm%49n/x",
            // ;-parameters
            "/api/admin;jsessionid=1/x",
            "/api/admin;/x",
            "/api/admin%3bx=1",
            "/api;v=1/admin",
            // trailing dots
            "/api/admin./x",
            "/api/admin...",
            // a .ext suffix
            "/api/admin.json",
            "/api/Admin.tar.gz/x",
            // dot segments an upstream may leave unresolved
            "/admin/../public",
            "/api/admin/../x",
            // every form on the step-up rule, matched by nothing as written
            "/Admin/users",
            "/admin;x/users",
            "/admin.json",
            "/admin./users",
        ] {
            assert_eq!(eval(&p, path), strictest(), "{path}");
        }
        // Not a lenient form of any prefix: the rules as usual.
        for (path, require) in [
            ("/api/administrator", Requirement::Token),
            ("/api/adminx.json", Requirement::Token),
            ("/public/x.html", Requirement::None),
            ("/public/Index.HTML", Requirement::None),
            ("/public/a;b=c", Requirement::None),
            ("/other/Admin", Requirement::Token),
            ("/x/../public/y", Requirement::None),
        ] {
            assert_eq!(eval(&p, path).require, require, "{path}");
        }
    }

    #[test]
    fn unreadable_paths_get_the_smallest_max_age_too() {
        let p = admin_policy();
        for path in ["/public%2F..%2Fadmin", "/public/..;/admin", "/..", "/a\\b"] {
            assert_eq!(eval(&p, path), strictest(), "{path}");
        }
        // A route's own max_age counts when it is smaller.
        let n = p
            .evaluate("GET", "a", "/public/..;/x", Some("none"), Some("5m"), None)
            .unwrap();
        assert_eq!(n.max_age, Some(Duration::from_secs(300)));
        assert_eq!(n.require, Requirement::TwoFa);
    }

    #[test]
    fn route_settings_stand_on_lenient_forms() {
        let p = admin_policy();
        let n = p
            .evaluate("GET", "a", "/api/Admin", Some("token"), None, None)
            .unwrap();
        assert_eq!(n.require, Requirement::Token);
        let n = p
            .evaluate("GET", "a", "/api/Admin", None, Some("1h"), None)
            .unwrap();
        assert_eq!(n.max_age, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn a_prefix_with_upper_case_is_matched_leniently_by_plain_paths() {
        let mut admin = rule("/Admin", Requirement::TwoFa);
        admin.max_age = Some(Dur::secs(60));
        let p = Policy::new(&PolicyConfig {
            default: Requirement::Token,
            rules: vec![admin],
            identity_header_prefix: "x-".into(),
        });
        assert_eq!(eval(&p, "/admin").max_age, Some(Duration::from_secs(60)));
        assert_eq!(eval(&p, "/Admin").max_age, Some(Duration::from_secs(60)));
        assert_eq!(eval(&p, "/other").require, Requirement::Token);
    }

    #[test]
    fn method_and_host_still_decide_which_rules_count() {
        // `POST /api/admin` (2fa): a GET of `/api/Admin` is not about it.
        let p = policy();
        assert_eq!(req(&p, "GET", "a.com", "/api/Admin/x"), Requirement::Token);
        let n = p
            .evaluate("POST", "a.com", "/api/Admin/x", None, None, None)
            .unwrap();
        assert_eq!(n.max_age, Some(Duration::from_secs(900)));
    }

    #[test]
    fn dry_run_from_the_rule_or_the_route() {
        let mut trial = rule("/api", Requirement::TwoFa);
        trial.dry_run = true;
        let p = Policy::new(&PolicyConfig {
            default: Requirement::TwoFa,
            rules: vec![trial, rule("/admin", Requirement::TwoFa)],
            identity_header_prefix: "x-auth-request-".into(),
        });
        let ev = |path: &str, mode: Option<&str>| p.evaluate("GET", "a", path, None, None, mode);
        assert!(ev("/api/x", None).unwrap().dry_run);
        assert!(!ev("/admin/x", None).unwrap().dry_run);
        // The default (no rule matched) is enforced.
        assert!(!ev("/other", None).unwrap().dry_run);
        // The route's mode beats the rule either way.
        assert!(!ev("/api/x", Some("enforce")).unwrap().dry_run);
        assert!(ev("/admin/x", Some("dry-run")).unwrap().dry_run);
        assert_eq!(ev("/api/x", Some("dry_run")), Err(BadExtension(EXT_MODE)));
        assert_eq!(ev("/api/x", Some("")), Err(BadExtension(EXT_MODE)));
        // An ambiguous form of a dry-run rule's prefix is enforced while any
        // rule enforces: upstreams may read it as that rule's path.
        let n = ev("/API/x", None).unwrap();
        assert_eq!(n.require, Requirement::TwoFa);
        assert!(!n.dry_run);
        assert!(!ev("/a/../../x", None).unwrap().dry_run);
    }

    #[test]
    fn ambiguous_paths_are_dry_run_only_when_every_rule_is() {
        let mut a = rule("/api", Requirement::Token);
        a.dry_run = true;
        let mut b = rule("/admin", Requirement::TwoFa);
        b.dry_run = true;
        let p = Policy::new(&PolicyConfig {
            default: Requirement::TwoFa,
            rules: vec![a, b],
            identity_header_prefix: "x-auth-request-".into(),
        });
        let n = p
            .evaluate("GET", "a", "/Admin/x", None, None, None)
            .unwrap();
        assert_eq!(n.require, Requirement::TwoFa);
        assert!(n.dry_run);
    }
}
