//! Values that must never be printed: `check-config` and `Debug` show them
//! redacted. URLs keep everything but their password so operators can still
//! see where a connection goes.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const REDACTED: &str = "<redacted>";

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A connection URL whose password (userinfo) is a secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(s: impl Into<String>) -> Self {
        SecretUrl(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some(REDACTED));
                u.to_string()
            }
            Ok(u) => {
                // Query strings may carry credentials too (e.g. ?password=).
                if u.query()
                    .is_some_and(|q| q.contains("pass") || q.contains("token") || q.contains("key"))
                {
                    let mut u = u.clone();
                    u.set_query(Some(REDACTED));
                    u.to_string()
                } else {
                    self.0.clone()
                }
            }
            Err(_) => REDACTED.to_string(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretUrl)
    }
}

/// A list of secrets (encryption keys).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretList(pub Vec<Secret>);

impl fmt::Debug for SecretList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} redacted]", self.0.len())
    }
}

impl Serialize for SecretList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Key ids are not secret and help operators check rotation.
        let shown: Vec<String> = self
            .0
            .iter()
            .map(|k| match k.expose().split_once(':') {
                Some((id, _)) => format!("{id}:{REDACTED}"),
                None => REDACTED.to_string(),
            })
            .collect();
        shown.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SecretList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(d).map(|v| SecretList(v.into_iter().map(Secret).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_hide_only_the_password() {
        let u = SecretUrl::new("postgres://twofa:hunter2@db:5432/twofa");
        assert_eq!(
            u.redacted(),
            "postgres://twofa:%3Credacted%3E@db:5432/twofa"
        );
        assert!(!format!("{u:?}").contains("hunter2"));
        assert_eq!(SecretUrl::new("memory://").redacted(), "memory://");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("topsecret");
        assert!(!format!("{s:?}").contains("topsecret"));
        assert!(!serde_json::to_string(&s).unwrap().contains("topsecret"));
        let l = SecretList(vec![Secret::new("k1:AAAA")]);
        assert_eq!(serde_json::to_string(&l).unwrap(), "[\"k1:<redacted>\"]");
    }
}
