//! The message templates: minijinja, loaded and compiled once at start from
//! the embedded defaults (`templates/`) with any file of
//! `email.templates_dir` replacing the default of the same name.
//!
//! - `.html` templates escape everything they print (auto-escaping by file
//!   extension); `.txt` templates print plain text.
//! - Undefined variables are errors (strict), and at start every template is
//!   rendered once per locale with sample data, so that a typo in an
//!   operator's template stops `serve` and `check-config` (exit 2) naming the
//!   file, instead of sending an empty string.
//! - `t("key", name=value…)` returns the reader's locale string `key` with
//!   its `{name}` placeholders filled from the arguments or, failing those,
//!   from the template's variables (see `locales`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::{Kwargs, Value};
use minijinja::{AutoEscape, Environment, Error as TplError, ErrorKind, State, UndefinedBehavior};

use super::locales::{self, Locale, Locales, Part, Placeholders};
use super::message::{self, Email};
use crate::config::{Config, ConfigError};

/// The embedded default of every template an operator may override, by the
/// file name that overrides it.
macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/", $name)))),*]
    };
}

pub const EMBEDDED: &[(&str, &str)] = embedded![
    "base.txt",
    "base.html",
    "login_code.subject.txt",
    "login_code.txt",
    "login_code.html",
    "contact_code.subject.txt",
    "contact_code.txt",
    "contact_code.html",
    "code.sms.txt",
    "email_changed.subject.txt",
    "email_changed.txt",
    "email_changed.html",
    "email_changed.sms.txt",
    "mobile_changed.subject.txt",
    "mobile_changed.txt",
    "mobile_changed.html",
    "mobile_changed.sms.txt",
    "totp_enrolled.subject.txt",
    "totp_enrolled.txt",
    "totp_enrolled.html",
    "totp_enrolled.sms.txt",
    "totp_removed.subject.txt",
    "totp_removed.txt",
    "totp_removed.html",
    "totp_removed.sms.txt",
    "passkey_added.subject.txt",
    "passkey_added.txt",
    "passkey_added.html",
    "passkey_added.sms.txt",
    "passkey_removed.subject.txt",
    "passkey_removed.txt",
    "passkey_removed.html",
    "passkey_removed.sms.txt",
    "recovery_codes_regenerated.subject.txt",
    "recovery_codes_regenerated.txt",
    "recovery_codes_regenerated.html",
    "recovery_codes_regenerated.sms.txt",
    "device_revoked.subject.txt",
    "device_revoked.txt",
    "device_revoked.html",
    "device_revoked.sms.txt",
];

/// Template files are small; anything bigger is a mistake.
const MAX_TEMPLATE_FILE: u64 = 256 * 1024;
/// Bound on the files read from `email.templates_dir`.
const MAX_TEMPLATE_FILES: usize = 256;

/// Product name and links, the same in every message.
#[derive(Debug, Clone)]
pub struct Product {
    pub name: String,
    pub url: Option<String>,
    pub support_url: Option<String>,
}

/// A message that could not be rendered; the text is for logs (it names the
/// template and the kind of failure, never a value).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

/// The compiled templates, the locales and the product: everything needed
/// to render any message in any language.
pub struct Messages {
    env: Environment<'static>,
    locales: Arc<Locales>,
    product: Product,
    /// Templates an operator replaced or added, with their file: errors
    /// name the file, not the template.
    files: BTreeMap<String, PathBuf>,
}

/// The variables of one message, by name.
pub type Vars = Vec<(&'static str, Value)>;

impl Messages {
    /// From `email.templates_dir`, `email.default_locale` and the product
    /// keys. Renders every template with sample data in every locale;
    /// errors name the key and the file.
    pub fn from_config(cfg: &Config) -> Result<(Messages, locales::LoadReport), ConfigError> {
        let e = &cfg.email;
        let product = Product {
            name: e
                .product_name
                .clone()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| cfg.totp.issuer.clone()),
            url: e.product_url.clone().filter(|u| !u.is_empty()),
            support_url: e.support_url.clone().filter(|u| !u.is_empty()),
        };
        let dir = e
            .templates_dir
            .as_deref()
            .filter(|d| !d.trim().is_empty())
            .map(Path::new);
        Messages::load(dir, &e.default_locale, product)
    }

    /// The embedded templates and locales only (tests, tools).
    pub fn embedded(product: Product) -> Result<Messages, ConfigError> {
        Messages::load(None, locales::REFERENCE, product).map(|(m, _)| m)
    }

    pub fn load(
        dir: Option<&Path>,
        default_locale: &str,
        product: Product,
    ) -> Result<(Messages, locales::LoadReport), ConfigError> {
        let (locales, report) = Locales::load(dir, default_locale)?;
        let locales = Arc::new(locales);
        let mut sources: BTreeMap<String, String> = EMBEDDED
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        let mut files = BTreeMap::new();
        if let Some(dir) = dir {
            if !dir.is_dir() {
                return Err(dir_error(format!("{} is not a directory", dir.display())));
            }
            for (name, path) in template_files(dir)? {
                let text = locales::read_small(&path, MAX_TEMPLATE_FILE).map_err(dir_error)?;
                sources.insert(name.clone(), text);
                files.insert(name, path);
            }
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| dir_error(e.to_string()))?;
        env.set_syntax(syntax);
        let l = locales.clone();
        env.add_function(
            "t",
            move |state: &State, key: &str, kwargs: Kwargs| -> Result<String, TplError> {
                translate(&l, state, key, &kwargs)
            },
        );
        for (name, source) in sources {
            let shown = shown(&files, &name);
            env.add_template_owned(name, source)
                .map_err(|e| dir_error(format!("{shown}: {e}")))?;
        }
        let m = Messages {
            env,
            locales,
            product,
            files,
        };
        m.check()?;
        Ok((m, report))
    }

    pub fn locales(&self) -> &Locales {
        &self.locales
    }

    pub fn product(&self) -> &Product {
        &self.product
    }

    /// Renders every message with sample data in every locale, and checks
    /// what must hold of the output (a one-line subject without the code,
    /// a non-empty SMS).
    fn check(&self) -> Result<(), ConfigError> {
        for l in self.locales.all() {
            for sample in message::samples(l) {
                let which = format!("locale {}, sample data", l.tag());
                match sample.channel {
                    Channel::Email => {
                        let email = self
                            .email_strict(sample.base, l, "alice@example.com", sample.vars)
                            .map_err(|e| dir_error(format!("{e} ({which})")))?;
                        if email.subject.is_empty() {
                            return Err(dir_error(format!(
                                "{}: renders an empty subject ({which})",
                                shown(&self.files, &format!("{}.subject.txt", sample.base))
                            )));
                        }
                        if email.subject.contains(message::SAMPLE_CODE) {
                            return Err(dir_error(format!(
                                "{}: the subject must not show the code: subjects appear in \
                                 notifications and logs ({which})",
                                shown(&self.files, &format!("{}.subject.txt", sample.base))
                            )));
                        }
                    }
                    Channel::Sms => {
                        let body = self
                            .sms_strict(sample.base, l, "+14155550123", sample.vars)
                            .map_err(|e| dir_error(format!("{e} ({which})")))?;
                        if body.is_empty() {
                            return Err(dir_error(format!(
                                "{}: renders an empty SMS ({which})",
                                shown(&self.files, &format!("{}.sms.txt", sample.base))
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The email `base` (`login_code`, `email_changed`, …) in the best
    /// locale for `requested`.
    pub fn email(
        &self,
        base: &str,
        requested: Option<&str>,
        to: &str,
        vars: impl FnOnce(&Locale) -> Vars,
    ) -> Result<Email, RenderError> {
        let l = self.locales.pick(requested);
        self.email_strict(base, l, to, vars(l))
            .map_err(|e| RenderError(loggable(&e)))
    }

    /// The SMS `base` (`code`, `email_changed`, …) in the best locale for
    /// `requested`.
    pub fn sms(
        &self,
        base: &str,
        requested: Option<&str>,
        to: &str,
        vars: impl FnOnce(&Locale) -> Vars,
    ) -> Result<String, RenderError> {
        let l = self.locales.pick(requested);
        self.sms_strict(base, l, to, vars(l))
            .map_err(|e| RenderError(loggable(&e)))
    }

    fn email_strict(&self, base: &str, l: &Locale, to: &str, vars: Vars) -> Result<Email, Failure> {
        let ctx = self.context(l, to, vars);
        let subject = self.render(&format!("{base}.subject.txt"), &ctx)?;
        let text = self.render(&format!("{base}.txt"), &ctx)?;
        let html = self.render(&format!("{base}.html"), &ctx)?;
        Ok(Email {
            to: to.to_string(),
            // One line: a header cannot hold more, and a template's line
            // breaks must not become header folding.
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            text: tidy_text(&text),
            html,
        })
    }

    fn sms_strict(&self, base: &str, l: &Locale, to: &str, vars: Vars) -> Result<String, Failure> {
        let ctx = self.context(l, to, vars);
        Ok(self
            .render(&format!("{base}.sms.txt"), &ctx)?
            .trim()
            .to_string())
    }

    fn context(&self, l: &Locale, to: &str, vars: Vars) -> Value {
        let p = &self.product;
        let mut all: Vars = vec![
            ("locale", Value::from(l.tag())),
            ("product_name", Value::from(p.name.as_str())),
            ("product_url", Value::from(p.url.clone())),
            ("support_url", Value::from(p.support_url.clone())),
            ("to", Value::from(to)),
        ];
        all.extend(vars);
        Value::from_pairs(all)
    }

    fn render(&self, name: &str, ctx: &Value) -> Result<String, Failure> {
        let tpl = self.env.get_template(name).map_err(|e| Failure {
            shown: shown(&self.files, name),
            error: e,
        })?;
        tpl.render(ctx).map_err(|e| Failure {
            // The template the error is in: maybe a layout it extends.
            shown: shown(&self.files, e.name().unwrap_or(name)),
            error: e,
        })
    }
}

/// Which channel a sample message is rendered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Sms,
}

/// A template error with the file (or built-in template) it is in.
#[derive(Debug)]
struct Failure {
    shown: String,
    error: TplError,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.shown, self.error)
    }
}

/// For logs at run time: the template, line and kind of error only. The
/// detail of an error may quote a value, and values include codes.
fn loggable(f: &Failure) -> String {
    match f.error.line() {
        Some(line) => format!("{} line {line}: {}", f.shown, f.error.kind()),
        None => format!("{}: {}", f.shown, f.error.kind()),
    }
}

fn dir_error(message: String) -> ConfigError {
    ConfigError::new("email.templates_dir", message)
}

/// How an error names a template: the operator's file, or the default.
fn shown(files: &BTreeMap<String, PathBuf>, name: &str) -> String {
    match files.get(name) {
        Some(p) => p.display().to_string(),
        None => format!("built-in template {name}"),
    }
}

/// The operator's templates: every `.txt` and `.html` file at the top of
/// the directory, each either replacing a default (by its name) or a
/// partial of the operator's own whose name starts with `_` (for
/// `{% include %}`). Any other `.txt`/`.html` name is a mistake (a typo
/// would silently leave the default in place), so it is an error.
fn template_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| dir_error(format!("cannot read {}: {e}", dir.display())))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| dir_error(format!("cannot read {}: {e}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with('.') || !(name.ends_with(".txt") || name.ends_with(".html")) {
            continue;
        }
        if !path.is_file() {
            continue;
        }
        if !name.starts_with('_') && !EMBEDDED.iter().any(|(n, _)| *n == name) {
            return Err(dir_error(format!(
                "{}: `{name}` is not a template name (see docs/messages.md; \
                 partials of your own start with `_`)",
                path.display()
            )));
        }
        out.push((name, path));
        if out.len() > MAX_TEMPLATE_FILES {
            return Err(dir_error(format!(
                "{}: more than {MAX_TEMPLATE_FILES} templates",
                dir.display()
            )));
        }
    }
    out.sort();
    Ok(out)
}

/// `t(key, …)`: the string `key` of the locale the message is rendered in,
/// placeholders filled from the keyword arguments, else from the variables.
fn translate(
    locales: &Locales,
    state: &State,
    key: &str,
    kwargs: &Kwargs,
) -> Result<String, TplError> {
    let tag = state
        .lookup("locale")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let l = locales.pick(Some(&tag));
    let Some(s) = l.get(key) else {
        return Err(TplError::new(
            ErrorKind::UndefinedError,
            format!("t(\"{key}\"): no such string in {}", l.described()),
        ));
    };
    let mut out = String::with_capacity(s.len() + 16);
    for part in Placeholders::new(s) {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Var(name) => {
                let v = if kwargs.has(name) {
                    kwargs.get::<Value>(name)?
                } else {
                    state.lookup(name).unwrap_or(Value::UNDEFINED)
                };
                if v.is_undefined() || v.is_none() {
                    return Err(TplError::new(
                        ErrorKind::UndefinedError,
                        format!(
                            "string `{key}` of {} uses {{{name}}}, which this message does not set",
                            l.described()
                        ),
                    ));
                }
                out.push_str(&v.to_string());
            }
            Part::Bad(at) => {
                return Err(TplError::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "string `{key}` of {}: bad placeholder at byte {at}",
                        l.described()
                    ),
                ))
            }
        }
    }
    kwargs.assert_all_used()?;
    Ok(out)
}

/// Text parts: no leading blank lines, at most one blank line in a row
/// (template tags leave some), one final newline.
fn tidy_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.trim().lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
            out.push('\n');
        } else {
            blank = 0;
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidy_text_collapses_blank_lines() {
        assert_eq!(
            tidy_text("\n\na\n\n\n\nb  \n-- \nc\n\n"),
            "a\n\nb  \n-- \nc\n"
        );
    }

    #[test]
    fn every_embedded_template_is_used_by_a_message() {
        let en = Locales::embedded().default_locale();
        let mut used: Vec<String> = vec!["base.txt".into(), "base.html".into()];
        for s in message::samples(en) {
            match s.channel {
                Channel::Email => {
                    for ext in ["subject.txt", "txt", "html"] {
                        used.push(format!("{}.{ext}", s.base));
                    }
                }
                Channel::Sms => used.push(format!("{}.sms.txt", s.base)),
            }
        }
        for (name, _) in EMBEDDED {
            assert!(used.iter().any(|u| u == name), "{name} is never rendered");
        }
        assert_eq!(used.len(), EMBEDDED.len(), "{used:?}");
    }
}
