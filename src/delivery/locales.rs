//! The user-facing strings of messages and of the /ui/ page, one TOML file
//! per language (`locales/<tag>.toml`, embedded), and the choice of a
//! language for a reader from a BCP 47-ish tag such as Keycloak's `locale`
//! claim (`de`, `de-DE`, `de_DE`).
//!
//! Every locale has the keys of `en` (the reference): a key missing from a
//! locale is taken from `en`, so that a partial or outdated translation
//! still renders. Operators override or add locales with
//! `{email.templates_dir}/locales/<tag>.toml`; such a file is laid over the
//! embedded locale of the same tag (or over `en` for a new language).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::config::ConfigError;

/// The reference locale: complete by definition, the last fallback.
pub const REFERENCE: &str = "en";

/// The embedded locale files, by tag.
const EMBEDDED: &[(&str, &str)] = &[
    ("en", include_str!("../../locales/en.toml")),
    ("de", include_str!("../../locales/de.toml")),
];

/// Locale files and tags are small; anything bigger is a mistake.
const MAX_LOCALE_FILE: u64 = 256 * 1024;
const MAX_TAG_LEN: usize = 35;
/// Bound on the number of operator locale files read at start.
const MAX_LOCALE_FILES: usize = 64;

/// The strings of one language, by dotted key (`login_code.subject`,
/// `ui.error.invalid_code`).
#[derive(Debug, Clone)]
pub struct Locale {
    tag: String,
    strings: BTreeMap<String, String>,
    /// The operator's file, when one was laid over the embedded strings.
    file: Option<std::path::PathBuf>,
}

impl Locale {
    /// The canonical tag (`de`, `pt-BR`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `locale de`, or `locale de (/etc/twofa/templates/locales/de.toml)`:
    /// how errors name where a string comes from.
    pub fn described(&self) -> String {
        match &self.file {
            Some(f) => format!("locale {} ({})", self.tag, f.display()),
            None => format!("locale {}", self.tag),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.strings.get(key).map(String::as_str)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.strings.keys().map(String::as_str)
    }

    /// The `ui.*` strings, without the prefix, as a flat JSON object
    /// (`{"sign_in": "…", "error.invalid_code": "…"}`).
    pub fn ui_strings(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in &self.strings {
            if let Some(rest) = k.strip_prefix("ui.") {
                m.insert(rest.to_string(), Value::String(v.clone()));
            }
        }
        Value::Object(m)
    }
}

/// Every locale known to this process and the default one.
#[derive(Debug, Clone)]
pub struct Locales {
    /// By lower-cased tag.
    by_tag: BTreeMap<String, Locale>,
    default: String,
}

/// What loading operator locale files found that is worth a warning.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// (tag, keys taken from `en` because the file lacks them).
    pub incomplete: Vec<(String, Vec<String>)>,
}

impl Locales {
    /// The embedded locales only, default `en`.
    pub fn embedded() -> &'static Locales {
        static EMBEDDED_LOCALES: OnceLock<Locales> = OnceLock::new();
        EMBEDDED_LOCALES.get_or_init(|| {
            // The embedded files are checked by the unit tests; were one
            // broken, messages would fail to render (502), never panic.
            Locales::load(None, REFERENCE)
                .map(|(l, _)| l)
                .unwrap_or_else(|_| Locales {
                    by_tag: BTreeMap::new(),
                    default: REFERENCE.into(),
                })
        })
    }

    /// The embedded locales, with `dir/locales/*.toml` laid over them when
    /// `dir` is given. `default` must name one of them. Errors name the file.
    pub fn load(dir: Option<&Path>, default: &str) -> Result<(Locales, LoadReport), ConfigError> {
        let (locales, report) =
            Locales::load_files(dir).map_err(|e| ConfigError::new("email.templates_dir", e))?;
        let Some(d) = locales.lookup(default) else {
            return Err(ConfigError::new(
                "email.default_locale",
                format!(
                    "`{default}` is not a known locale ({})",
                    locales.tags().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        let default = d.tag.to_ascii_lowercase();
        Ok((Locales { default, ..locales }, report))
    }

    fn load_files(dir: Option<&Path>) -> Result<(Locales, LoadReport), String> {
        let mut by_tag = BTreeMap::new();
        for (tag, text) in EMBEDDED {
            let strings = parse(text).map_err(|e| format!("built-in locale {tag}: {e}"))?;
            by_tag.insert(
                tag.to_ascii_lowercase(),
                Locale {
                    tag: canonical_tag(tag).unwrap_or_else(|| tag.to_string()),
                    strings,
                    file: None,
                },
            );
        }
        let mut reference = by_tag
            .get(REFERENCE)
            .cloned()
            .ok_or("the built-in reference locale is missing")?;
        // Embedded translations fall back to `en` key by key too.
        for l in by_tag.values_mut() {
            for (k, v) in &reference.strings {
                l.strings.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let mut report = LoadReport::default();
        if let Some(dir) = dir {
            let ldir = dir.join("locales");
            if ldir.is_dir() {
                for (tag, path) in locale_files(&ldir)? {
                    let text = read_small(&path, MAX_LOCALE_FILE)?;
                    let overlay = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                    let key = tag.to_ascii_lowercase();
                    // Over an embedded translation (complete, see the tests)
                    // nothing is missing; a new language falls back to `en`.
                    let (base, missing) = match by_tag.get(&key) {
                        Some(own) => (own, Vec::new()),
                        None => (
                            &reference,
                            reference
                                .strings
                                .keys()
                                .filter(|k| !overlay.contains_key(*k))
                                .cloned()
                                .collect(),
                        ),
                    };
                    let mut strings = base.strings.clone();
                    strings.extend(overlay);
                    if !missing.is_empty() {
                        report.incomplete.push((tag.clone(), missing));
                    }
                    let l = Locale {
                        tag,
                        strings,
                        file: Some(path),
                    };
                    // New languages fall back to the operator's English.
                    if key == REFERENCE {
                        reference = l.clone();
                    }
                    by_tag.insert(key, l);
                }
            }
        }
        let locales = Locales {
            by_tag,
            default: REFERENCE.into(),
        };
        Ok((locales, report))
    }

    /// The canonical tags of every locale, sorted.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.by_tag.values().map(|l| l.tag.as_str())
    }

    pub fn all(&self) -> impl Iterator<Item = &Locale> {
        self.by_tag.values()
    }

    pub fn default_locale(&self) -> &Locale {
        static NONE: OnceLock<Locale> = OnceLock::new();
        self.by_tag
            .get(&self.default)
            .or_else(|| self.by_tag.values().next())
            .unwrap_or_else(|| {
                NONE.get_or_init(|| Locale {
                    tag: REFERENCE.into(),
                    strings: BTreeMap::new(),
                    file: None,
                })
            })
    }

    /// The locale of this tag or, failing that, of ever shorter prefixes of
    /// it (`de-DE` → `de`); case, `_`/`-` and POSIX suffixes ignored.
    pub fn lookup(&self, tag: &str) -> Option<&Locale> {
        let mut norm = normalize(tag)?;
        loop {
            if let Some(l) = self.by_tag.get(&norm) {
                return Some(l);
            }
            let i = norm.rfind('-')?;
            norm.truncate(i);
        }
    }

    /// The best locale for a requested tag (see [`Locales::lookup`]), else
    /// the default. Anything that is not a plausible language tag gets the
    /// default.
    pub fn pick(&self, requested: Option<&str>) -> &Locale {
        requested
            .and_then(|t| self.lookup(t))
            .unwrap_or_else(|| self.default_locale())
    }

    /// The /ui/ strings of the best locale for `requested` (see
    /// [`Locales::pick`]) as a flat JSON object, with the chosen tag.
    pub fn ui_strings(&self, requested: Option<&str>) -> (String, Value) {
        let l = self.pick(requested);
        (l.tag.clone(), l.ui_strings())
    }
}

/// The /ui/ strings of the embedded locales (no operator overrides; a
/// running service should use `Delivery::locales().ui_strings`, which
/// includes them).
pub fn ui_strings(lang: &str) -> Value {
    Locales::embedded().pick(Some(lang)).ui_strings()
}

/// `tag.toml` files of a directory, by canonical tag; hidden files and
/// other extensions are ignored, a `.toml` whose name is not a language tag
/// is an error.
fn locale_files(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for entry in rd {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let Some(stem) = name.strip_suffix(".toml") else {
            continue;
        };
        let tag = canonical_tag(stem).ok_or_else(|| {
            format!(
                "{}: `{stem}` is not a language tag (e.g. de, de-AT, pt-BR)",
                path.display()
            )
        })?;
        if !seen.insert(tag.to_ascii_lowercase()) {
            return Err(format!(
                "{}: a second file for locale {tag}",
                path.display()
            ));
        }
        out.push((tag, path));
        if out.len() > MAX_LOCALE_FILES {
            return Err(format!(
                "{}: more than {MAX_LOCALE_FILES} locale files",
                dir.display()
            ));
        }
    }
    // `en` first: the others fall back to it as the operator left it.
    out.sort_by_key(|(tag, _)| (tag != REFERENCE, tag.clone()));
    Ok(out)
}

pub(super) fn read_small(path: &Path, max: u64) -> Result<String, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > max {
        return Err(format!(
            "{} is larger than {} KiB",
            path.display(),
            max / 1024
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A locale file: nested tables of strings, flattened to dotted keys.
fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.message().to_string())?;
    let mut out = BTreeMap::new();
    flatten("", &table, &mut out)?;
    Ok(out)
}

fn flatten(
    prefix: &str,
    t: &toml::Table,
    out: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::String(s) => {
                check_placeholders(s).map_err(|e| format!("`{key}`: {e}"))?;
                out.insert(key, s.clone());
            }
            toml::Value::Table(inner) => flatten(&key, inner, out)?,
            _ => return Err(format!("`{key}` must be a string or a table")),
        }
    }
    Ok(())
}

/// Placeholders are `{name}` with a name of letters, digits and `_`; a
/// brace that opens none is a mistake worth reporting at start.
fn check_placeholders(s: &str) -> Result<(), String> {
    for part in Placeholders::new(s) {
        if let Part::Bad(at) = part {
            return Err(format!(
                "unbalanced or malformed placeholder at byte {at} (use {{name}})"
            ));
        }
    }
    Ok(())
}

/// A piece of a locale string: literal text, or a `{name}` placeholder.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Part<'a> {
    Text(&'a str),
    Var(&'a str),
    Bad(usize),
}

pub(super) struct Placeholders<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Placeholders<'a> {
    pub(super) fn new(s: &'a str) -> Self {
        Self { s, pos: 0 }
    }
}

impl<'a> Iterator for Placeholders<'a> {
    type Item = Part<'a>;

    fn next(&mut self) -> Option<Part<'a>> {
        let rest = &self.s[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let start = self.pos;
        match rest.find(['{', '}']) {
            Some(0) if rest.starts_with('{') => {
                let Some(end) = rest.find('}') else {
                    self.pos = self.s.len();
                    return Some(Part::Bad(start));
                };
                let name = &rest[1..end];
                self.pos += end + 1;
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Some(Part::Bad(start));
                }
                Some(Part::Var(name))
            }
            Some(0) => {
                self.pos = self.s.len();
                Some(Part::Bad(start))
            }
            Some(i) => {
                self.pos += i;
                Some(Part::Text(&rest[..i]))
            }
            None => {
                self.pos = self.s.len();
                Some(Part::Text(rest))
            }
        }
    }
}

/// Lower case, `_` as `-`, POSIX suffixes (`.UTF-8`, `@euro`) dropped; None
/// for anything that is not a plausible language tag.
fn normalize(tag: &str) -> Option<String> {
    let t = tag.trim();
    let t = t.split(['.', '@']).next().unwrap_or("");
    if t.is_empty() || t.len() > MAX_TAG_LEN {
        return None;
    }
    let t = t.replace('_', "-").to_ascii_lowercase();
    let mut parts = t.split('-');
    let lang = parts.next()?;
    if !(2..=3).contains(&lang.len()) || !lang.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    for p in parts {
        if !(1..=8).contains(&p.len()) || !p.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
    }
    Some(t)
}

/// `de`, `de-AT`, `zh-Hant-TW`, `pt-BR` (BCP 47 casing).
fn canonical_tag(tag: &str) -> Option<String> {
    let n = normalize(tag)?;
    let mut out = Vec::new();
    for (i, p) in n.split('-').enumerate() {
        out.push(match (i, p.len()) {
            (0, _) => p.to_string(),
            (_, 2) if p.chars().all(|c| c.is_ascii_alphabetic()) => p.to_ascii_uppercase(),
            (_, 4) if p.chars().all(|c| c.is_ascii_alphabetic()) => {
                let mut c = p.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            }
            _ => p.to_string(),
        });
    }
    Some(out.join("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problem codes the UI must be able to explain (INTERFACE.md
    /// section 5 and README "Where the contract is silent").
    const PROBLEM_CODES: &[&str] = &[
        "missing_token",
        "invalid_token",
        "second_factor_required",
        "invalid_code",
        "too_many_attempts",
        "resend_too_soon",
        "factor_locked",
        "delivery_failed",
        "invalid_email",
        "invalid_mobile",
        "contact_not_verified",
        "no_pending_code",
        "no_pending_totp",
        "totp_not_enabled",
        "totp_already_enabled",
        "profile_not_found",
        "profile_exists",
        "storage_unavailable",
        "authz_unavailable",
        "keycloak_admin_failed",
        "payload_too_large",
        "invalid_json",
        "invalid_request",
        "not_found",
        "internal_error",
    ];

    #[test]
    fn embedded_locales_have_exactly_the_reference_keys() {
        let en = parse(EMBEDDED[0].1).unwrap();
        for (tag, text) in EMBEDDED {
            let own = parse(text).unwrap();
            let missing: Vec<_> = en.keys().filter(|k| !own.contains_key(*k)).collect();
            let extra: Vec<_> = own.keys().filter(|k| !en.contains_key(*k)).collect();
            assert!(missing.is_empty(), "{tag} lacks {missing:?}");
            assert!(extra.is_empty(), "{tag} has keys en lacks: {extra:?}");
            assert!(
                own.values().all(|v| !v.trim().is_empty()),
                "{tag}: empty string"
            );
        }
    }

    #[test]
    fn every_problem_code_has_a_ui_sentence_in_every_locale() {
        for l in Locales::embedded().all() {
            let ui = l.ui_strings();
            for code in PROBLEM_CODES {
                assert!(
                    ui.get(format!("error.{code}")).is_some(),
                    "{}: no ui.error.{code}",
                    l.tag()
                );
            }
            for key in [
                "sign_in",
                "enroll_totp",
                "enter_code",
                "recovery_codes_once",
            ] {
                assert!(ui.get(key).is_some(), "{}: no ui.{key}", l.tag());
            }
            assert!(ui.get("login_code.subject").is_none(), "only ui.* keys");
        }
        assert_eq!(ui_strings("de-DE")["sign_in"], "Anmelden");
        assert_eq!(ui_strings("xx")["sign_in"], "Sign in");
        let (tag, s) = Locales::embedded().ui_strings(Some("de_AT"));
        assert_eq!(
            (tag.as_str(), s["sign_in"].as_str()),
            ("de", Some("Anmelden"))
        );
    }

    #[test]
    fn the_language_is_picked_from_tag_then_language_then_default() {
        let l = Locales::embedded();
        for t in [
            "de",
            "de-DE",
            "de_DE",
            "DE-de",
            "de_DE.UTF-8",
            " de-CH-1901 ",
        ] {
            assert_eq!(l.pick(Some(t)).tag(), "de", "{t}");
        }
        for t in ["fr", "", "x", "de/../en", "<script>", &"d".repeat(100)] {
            assert_eq!(l.pick(Some(t)).tag(), "en", "{t:?}");
        }
        assert_eq!(l.pick(None).tag(), "en");
        let (de_default, _) = Locales::load(None, "de-DE").unwrap();
        assert_eq!(de_default.pick(Some("fr")).tag(), "de");
        assert_eq!(
            Locales::load(None, "fr").unwrap_err().key,
            "email.default_locale"
        );
    }

    #[test]
    fn operator_files_override_and_add_locales() {
        let dir = tempfile::tempdir().unwrap();
        let ldir = dir.path().join("locales");
        std::fs::create_dir(&ldir).unwrap();
        std::fs::write(
            ldir.join("de.toml"),
            "[login_code]\nsubject = \"Ihr Code von ACME\"\n",
        )
        .unwrap();
        std::fs::write(
            ldir.join("fr_FR.toml"),
            "[ui]\nsign_in = \"Se connecter\"\n",
        )
        .unwrap();
        std::fs::write(ldir.join(".de.toml.swp"), "junk").unwrap();
        let (l, report) = Locales::load(Some(dir.path()), "en").unwrap();
        let de = l.pick(Some("de-DE"));
        assert_eq!(de.get("login_code.subject"), Some("Ihr Code von ACME"));
        assert_eq!(
            de.get("ui.sign_in"),
            Some("Anmelden"),
            "the rest stays German"
        );
        let fr = l.pick(Some("fr-FR"));
        assert_eq!(fr.tag(), "fr-FR");
        assert_eq!(fr.get("ui.sign_in"), Some("Se connecter"));
        assert_eq!(fr.get("ui.sign_out"), Some("Sign out"), "falls back to en");
        assert_eq!(l.pick(Some("fr")).tag(), "en", "fr-FR does not serve fr");
        assert_eq!(report.incomplete.len(), 1, "{report:?}");
        assert_eq!(report.incomplete[0].0, "fr-FR");
        assert!(report.incomplete[0].1.contains(&"ui.sign_out".to_string()));

        std::fs::write(ldir.join("de.toml"), "[login_code]\nsubject = 1\n").unwrap();
        let e = Locales::load(Some(dir.path()), "en")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("de.toml") && e.contains("login_code.subject"),
            "{e}"
        );
        std::fs::write(ldir.join("de.toml"), "[login_code]\nsubject = \"{code\"\n").unwrap();
        let e = Locales::load(Some(dir.path()), "en")
            .unwrap_err()
            .to_string();
        assert!(e.contains("de.toml") && e.contains("placeholder"), "{e}");
        std::fs::write(ldir.join("de.toml"), "[login_code\n").unwrap();
        let e = Locales::load(Some(dir.path()), "en")
            .unwrap_err()
            .to_string();
        assert!(e.contains("de.toml"), "{e}");
        std::fs::remove_file(ldir.join("de.toml")).unwrap();
        std::fs::write(ldir.join("not a tag.toml"), "").unwrap();
        let e = Locales::load(Some(dir.path()), "en")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a tag.toml"), "{e}");
    }

    #[test]
    fn placeholders_parse() {
        let parts: Vec<_> = Placeholders::new("{code} is {x_1}.").collect();
        assert_eq!(
            parts,
            vec![
                Part::Var("code"),
                Part::Text(" is "),
                Part::Var("x_1"),
                Part::Text(".")
            ]
        );
        assert!(check_placeholders("a {b").is_err());
        assert!(check_placeholders("a } b").is_err());
        assert!(check_placeholders("a {b c}").is_err());
        assert!(check_placeholders("{}").is_err());
        assert!(check_placeholders("plain").is_ok());
        assert_eq!(canonical_tag("zh_hant_tw").as_deref(), Some("zh-Hant-TW"));
        assert_eq!(canonical_tag("PT-br").as_deref(), Some("pt-BR"));
    }
}
