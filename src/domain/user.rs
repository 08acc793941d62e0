//! Users: email, display name, password.

use secrecy::{ExposeSecret, SecretString};

use super::text::{Lines, bounded_text};

/// An email address, valid by the WHATWG HTML definition of a "valid email address" (the
/// rule browsers apply to `<input type=email>`): a pragmatic subset of RFC 5322 without
/// quoted local parts, comments or IP literals. Case is kept as typed; uniqueness is
/// case-insensitive (the `users_email_key` index is on `lower(email)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 254;

    pub fn parse(value: String) -> Result<Self, String> {
        if value.len() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        let Some((local, domain)) = value.split_once('@') else {
            return Err("must be an email address like name@example.com".into());
        };
        const LOCAL_SPECIALS: &[u8] = b".!#$%&'*+/=?^_`{|}~-";
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(&b));
        let domain_ok = !domain.is_empty()
            && domain.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if local_ok && domain_ok {
            Ok(Self(value))
        } else {
            Err("must be an email address like name@example.com".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

bounded_text!(
    /// A user's display name: 1-100 characters on one line.
    UserName, 1, 100, Lines::Single
);

/// A password as typed: 12-256 characters (OWASP ASVS 2.1: at least 12, at least 64
/// allowed, no composition rules). Held as a secret so that it cannot reach a log.
#[derive(Debug, Clone)]
pub struct Password(SecretString);

impl Password {
    pub const MIN_CHARS: usize = 12;
    pub const MAX_CHARS: usize = 256;

    pub fn parse(value: SecretString) -> Result<Self, String> {
        let len = value.expose_secret().chars().count();
        if len < Self::MIN_CHARS {
            Err(format!("must be at least {} characters", Self::MIN_CHARS))
        } else if len > Self::MAX_CHARS {
            Err(format!("must be at most {} characters", Self::MAX_CHARS))
        } else {
            Ok(Self(value))
        }
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses() {
        for ok in [
            "a@b",
            "first.last+tag@example.co.uk",
            "x_y-z@sub-domain.example",
            "A@B.COM",
        ] {
            assert!(Email::parse(ok.into()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@@b.c",
            "a b@c.d",
            "a@-b.c",
            "a@b..c",
            "a@b.c-",
        ] {
            assert!(Email::parse(bad.into()).is_err(), "{bad:?}");
        }
        assert!(Email::parse(format!("{}@b.c", "a".repeat(65))).is_err());
        assert!(Email::parse(format!("a@{}.c", "b".repeat(250))).is_err());
    }

    #[test]
    fn password_length_is_bounded_in_characters() {
        assert!(Password::parse("short".to_string().into()).is_err());
        assert!(Password::parse("twelve chars".to_string().into()).is_ok());
        assert!(Password::parse("é".repeat(256).into()).is_ok());
        assert!(Password::parse("é".repeat(257).into()).is_err());
    }

    #[test]
    fn names_are_one_to_a_hundred_characters() {
        assert!(UserName::parse(String::new()).is_err());
        assert!(UserName::parse("a".repeat(100)).is_ok());
        assert!(UserName::parse("a".repeat(101)).is_err());
    }
}
