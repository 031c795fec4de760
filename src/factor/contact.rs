//! Contacts as input: email syntax and mobile numbers in E.164, valid under
//! their country's numbering plan (INTERFACE.md section 5).

use std::str::FromStr;

use crate::error::Error;

/// RFC 5321 limits: 254 characters in all, 64 in the local part.
pub const MAX_EMAIL: usize = 254;
/// E.164 has at most 15 digits; allow some separators around them.
pub const MAX_MOBILE: usize = 32;

/// A deliverable-looking address: the syntax lettre accepts, a domain with a
/// dot (no bare hosts, no IP literals), nothing invisible. The domain is
/// lower-cased; the local part is kept as given.
pub fn normalize_email(input: &str) -> Result<String, Error> {
    let s = input.trim();
    if s.is_empty() || s.len() > MAX_EMAIL || s.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Error::InvalidEmail);
    }
    let (local, domain) = s.rsplit_once('@').ok_or(Error::InvalidEmail)?;
    if local.is_empty()
        || local.len() > 64
        || domain.len() < 3
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
        || !domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
        || domain
            .split('.')
            .any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-') || l.len() > 63)
    {
        return Err(Error::InvalidEmail);
    }
    let out = format!("{local}@{}", domain.to_lowercase());
    lettre::Address::from_str(&out).map_err(|_| Error::InvalidEmail)?;
    Ok(out)
}

/// A mobile number in international form (`+` and the country code; spaces,
/// dots, dashes and brackets between digits are tolerated), valid by
/// libphonenumber's metadata, normalised to E.164 (`+14155550123`).
pub fn normalize_mobile(input: &str) -> Result<String, Error> {
    let s = input.trim();
    if !s.starts_with('+')
        || s.len() > MAX_MOBILE
        || !s[1..]
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
    {
        return Err(Error::InvalidMobile);
    }
    let n = phonenumber::parse(None, s).map_err(|_| Error::InvalidMobile)?;
    if !phonenumber::is_valid(&n) {
        return Err(Error::InvalidMobile);
    }
    Ok(n.format().mode(phonenumber::Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email(" Alice.B+tag@Example.COM ").unwrap(),
            "Alice.B+tag@example.com"
        );
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "alice@localhost",
            "alice@exa mple.com",
            "alice@@example.com",
            "alice@example..com",
            "alice@.example.com",
            "alice@example.com.",
            "alice@-example.com",
            "alice@[127.0.0.1]",
            "ali\u{0}ce@example.com",
            "alice@example.com\r\nBcc: x@y.z",
            "<alice@example.com>",
            "a b@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert!(normalize_email(&long).is_err());
    }

    #[test]
    fn mobiles() {
        assert_eq!(normalize_mobile("+14155550123").unwrap(), "+14155550123");
        assert_eq!(
            normalize_mobile("+1 (415) 555-0123").unwrap(),
            "+14155550123"
        );
        assert_eq!(
            normalize_mobile("+44 7911 123456").unwrap(),
            "+447911123456"
        );
        assert_eq!(
            normalize_mobile("+49 151 23456789").unwrap(),
            "+4915123456789"
        );
        for bad in [
            "",
            "4155550123",
            "+",
            "+1",
            "+123",
            "+999999999999",
            "+1415555012x",
            "+1 415 555 0123 ext. 5",
            "++14155550123",
            "+1415555012345678901234567890123",
            "tel:+14155550123",
        ] {
            assert!(normalize_mobile(bad).is_err(), "{bad:?} accepted");
        }
    }
}
