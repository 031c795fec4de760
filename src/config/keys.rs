//! The list of configuration keys the loader accepts, read off the
//! configuration types themselves (serde's own field lists), so that it can
//! never drift from what `deny_unknown_fields` lets through; and the
//! start-up warnings about `TWOFA_*` environment variables that name none.
//!
//! docs/configuration.md is checked against [`accepted_keys`] by a test, in
//! both directions.

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::{
    AuditConfig, CacheConfig, Config, EmailConfig, KeycloakConfig, LogConfig, PolicyConfig,
    SecurityConfig, ServerConfig, SmsConfig, StorageConfig, TotpConfig, UiConfig, WebAuthnConfig,
};

/// The environment variable that names the configuration file; not a key.
pub const CONFIG_VAR: &str = "TWOFA_CONFIG";

/// The fields of one `[section]` table, as serde's derive lists them for
/// `deny_unknown_fields` (every field, including those skipped when
/// serializing, none of the `#[serde(skip)]` ones). `None` for a name that is
/// not a section: [`accepted_keys`] then misses it, and the unit test below
/// fails until the section is added here.
pub fn section_fields(section: &str) -> Option<&'static [&'static str]> {
    Some(match section {
        "server" => fields_of::<ServerConfig>(),
        "keycloak" => fields_of::<KeycloakConfig>(),
        "storage" => fields_of::<StorageConfig>(),
        "cache" => fields_of::<CacheConfig>(),
        "security" => fields_of::<SecurityConfig>(),
        "totp" => fields_of::<TotpConfig>(),
        "email" => fields_of::<EmailConfig>(),
        "sms" => fields_of::<SmsConfig>(),
        "policy" => fields_of::<PolicyConfig>(),
        "log" => fields_of::<LogConfig>(),
        "ui" => fields_of::<UiConfig>(),
        "audit" => fields_of::<AuditConfig>(),
        "webauthn" => fields_of::<WebAuthnConfig>(),
        _ => return None,
    })
}

/// The top-level tables of the configuration file.
pub fn sections() -> &'static [&'static str] {
    fields_of::<Config>()
}

/// Every key the loader accepts, `section.key`, in declaration order.
pub fn accepted_keys() -> Vec<String> {
    sections()
        .iter()
        .filter_map(|s| section_fields(s).map(|f| (s, f)))
        .flat_map(|(s, fields)| fields.iter().map(move |k| format!("{s}.{k}")))
        .collect()
}

/// `keycloak.url` → `TWOFA_KEYCLOAK__URL`.
pub fn env_var(key: &str) -> String {
    format!("TWOFA_{}", key.replacen('.', "__", 1).to_ascii_uppercase())
}

/// Warnings about `TWOFA_*` variables the loader skips without a word: those
/// without the `__` between section and key (the loader reads only
/// `TWOFA_<SECTION>__<KEY>`), with a suggestion when the name is a known
/// key's with a single underscore. A name with `__` that is no key is not
/// skipped: the loader refuses it (exit 2) naming the key.
pub fn env_warnings<I, K, V>(env: I) -> Vec<String>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
{
    let keys = accepted_keys();
    let mut out = Vec::new();
    for (name, _) in env {
        let name = name.as_ref();
        let Some(rest) = name.strip_prefix("TWOFA_") else {
            continue;
        };
        if name == CONFIG_VAR || rest.contains("__") {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let flat = |k: &String| k.replacen('.', "_", 1);
        let guess = keys
            .iter()
            .find(|k| flat(k) == lower)
            .map(|k| env_var(k))
            .or_else(|| {
                let base = lower.strip_suffix("_file")?;
                keys.iter()
                    .find(|k| flat(k) == base)
                    .map(|k| format!("{}_FILE", env_var(k)))
            });
        out.push(match guess {
            Some(var) => format!(
                "environment variable {name} names no configuration key and is ignored; did you mean {var}?"
            ),
            None => format!(
                "environment variable {name} names no configuration key and is ignored (keys are TWOFA_<SECTION>__<KEY>, two underscores, e.g. TWOFA_KEYCLOAK__URL; see docs/configuration.md)"
            ),
        });
    }
    out
}

/// The field list serde's derive hands to `deserialize_struct`, caught by a
/// deserializer that then gives up: nothing is deserialized.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut seen = None;
    let _ = T::deserialize(FieldProbe(&mut seen));
    seen.unwrap_or(&[])
}

struct FieldProbe<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("field probe: fields read"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field probe: not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_is_probed_and_the_keys_are_the_loaders() {
        for s in sections() {
            assert!(
                section_fields(s).is_some_and(|f| !f.is_empty()),
                "[{s}] has no entry in config::keys::section_fields"
            );
        }
        let keys = accepted_keys();
        for k in [
            "server.grpc_addr",
            "server.metrics_addr",
            "storage.database_ca_path",
            "ui.client_id",
            "policy.rules",
            "log.level",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.ends_with(".dev") || k == "dev"));
        // Each listed key is accepted by the loader (an unknown one is an
        // error naming it), and a key beside them is not.
        let dir = tempfile::tempdir().unwrap();
        for k in &keys {
            let (s, f) = k.split_once('.').unwrap();
            let path = dir.path().join("c.toml");
            // A value of the wrong type for most keys: the error must then be
            // about the value, never "unknown field".
            std::fs::write(&path, format!("[{s}]\n{f} = {{ probe = 1 }}\n")).unwrap();
            let e = super::super::load(Some(&path), Vec::new(), false).unwrap_err();
            assert!(
                !(e.key == *k && e.message.contains("unknown field")),
                "{k}: {e}"
            );
        }
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nnot_a_key = 1\n").unwrap();
        let e = super::super::load(Some(&path), Vec::new(), false).unwrap_err();
        assert!(
            e.key == "server.not_a_key" && e.message.contains("unknown field"),
            "{e}"
        );
    }

    #[test]
    fn single_underscore_variables_are_warned_about_with_a_suggestion() {
        let w = env_warnings([
            ("TWOFA_KEYCLOAK_URL", "https://sso.example.com"),
            ("TWOFA_STORAGE_REDIS_URL_FILE", "/run/secrets/redis"),
            ("TWOFA_SERVER_METRICS_ADDR", "0.0.0.0:9090"),
            ("TWOFA_NOTHING", "x"),
            ("TWOFA_KEYCLOAK__URL", "https://sso.example.com"),
            ("TWOFA_STORAGE__REDIS_URL_FILE", "/run/secrets/redis"),
            ("TWOFA_CONFIG", "/etc/twofa.toml"),
            ("HOME", "/root"),
        ]);
        assert_eq!(w.len(), 4, "{w:#?}");
        assert!(
            w[0].contains("TWOFA_KEYCLOAK_URL ")
                && w[0].contains("did you mean TWOFA_KEYCLOAK__URL?"),
            "{}",
            w[0]
        );
        assert!(
            w[1].contains("did you mean TWOFA_STORAGE__REDIS_URL_FILE?"),
            "{}",
            w[1]
        );
        assert!(
            w[2].contains("did you mean TWOFA_SERVER__METRICS_ADDR?"),
            "{}",
            w[2]
        );
        assert!(
            w[3].contains("TWOFA_NOTHING") && !w[3].contains("did you mean"),
            "{}",
            w[3]
        );
        assert_eq!(env_var("keycloak.jwks_url"), "TWOFA_KEYCLOAK__JWKS_URL");
    }

    /// docs/configuration.md has one table row per accepted key, with its
    /// environment variable (and `_FILE` form exactly for secret keys), a
    /// default and an example; and no row for a key the loader refuses.
    #[test]
    fn the_configuration_reference_lists_exactly_the_accepted_keys() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/configuration.md"
        ))
        .unwrap();
        let mut documented = Vec::new();
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            let key = cells[0].trim_matches('`');
            if !key.contains('.') {
                continue;
            }
            assert_eq!(
                cells.len(),
                5,
                "{key}: key | default | environment variable | example | meaning"
            );
            let var = env_var(key);
            let secret = crate::config::SECRET_KEYS.contains(&key);
            let want = if secret {
                format!("`{var}`, `{var}_FILE`")
            } else {
                format!("`{var}`")
            };
            assert_eq!(cells[2], want, "{key}: environment variable column");
            assert!(
                !cells[1].is_empty() && !cells[3].is_empty(),
                "{key}: default and example"
            );
            assert_eq!(
                cells[4].contains("_file"),
                secret,
                "{key}: `_file` is for secrets only"
            );
            documented.push(key.to_string());
        }
        let accepted = accepted_keys();
        let missing: Vec<_> = accepted
            .iter()
            .filter(|k| !documented.contains(k))
            .collect();
        assert!(
            missing.is_empty(),
            "accepted but not in docs/configuration.md: {missing:?}"
        );
        let unknown: Vec<_> = documented
            .iter()
            .filter(|k| !accepted.contains(k))
            .collect();
        assert!(
            unknown.is_empty(),
            "in docs/configuration.md but not accepted: {unknown:?}"
        );
        let mut dedup = documented.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), documented.len(), "a key documented twice");
    }
}
