//! The `Idempotency-Key` a client sends with a create, so that a retry of it is
//! answered with the first response instead of creating a second resource
//! (draft-ietf-httpapi-idempotency-key-header).
//!
//! # What is a key
//!
//! The contract (shared/api.md) says a key is 1 to 255 visible ASCII characters. The draft
//! makes the field a Structured Field String (RFC 8941 §3.3.3), written in quotes
//! (`Idempotency-Key: "8e03978e-…"`), while the clients that popularised the header —
//! Stripe's and most others — send the bare value (`Idempotency-Key: 8e03978e-…`). Both
//! are accepted and mean the same key: a value that starts with a double quote is read as
//! a Structured Field String (quotes removed, `\"` and `\\` unescaped), anything else is
//! taken as it is. The key itself — what is compared — must then be 1 to 255 visible
//! ASCII characters either way.
//!
//! The draft names no status for a malformed key (it covers a missing key, 400; a key
//! reused with another payload, 422; a key whose first request is still running, 409).
//! RFC 8941 would have a parser ignore a field it cannot parse, but ignoring the key would
//! silently drop the protection the client asked for: a retry would create a second
//! resource. So a malformed key is refused like any other unacceptable input of this API,
//! with a 422 whose `errors` name the `Idempotency-Key` header; a request that carries the
//! field more than once is refused the same way, since it is not known which key was meant.

/// A key as the client meant it: the unquoted value, 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_CHARS: usize = 255;

    /// Reads a key from one header field value's bytes (see the module docs).
    pub fn parse(value: &[u8]) -> Result<Self, String> {
        let key = match value.strip_prefix(b"\"") {
            Some(quoted) => unquote(quoted)?,
            None => value.to_vec(),
        };
        if key.is_empty() {
            return Err("must not be empty".into());
        }
        if key.len() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        if !key.iter().all(u8::is_ascii_graphic) {
            return Err("must be visible ASCII characters only (no spaces)".into());
        }
        // Every byte is ASCII: the conversion cannot fail.
        String::from_utf8(key)
            .map(Self)
            .map_err(|_| "must be visible ASCII characters only (no spaces)".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The content of a Structured Field String whose opening quote is already consumed
/// (RFC 8941 §4.2.5): up to the closing quote, which must end the value; a backslash
/// escapes only `"` and `\`.
fn unquote(rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(rest.len());
    let mut bytes = rest.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => out.push(escaped),
                _ => return Err("has a backslash that escapes neither '\"' nor '\\'".into()),
            },
            b'"' => {
                return if bytes.as_slice().is_empty() {
                    Ok(out)
                } else {
                    Err("has characters after the closing quote".into())
                };
            }
            byte => out.push(byte),
        }
    }
    Err("has no closing quote".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(value: &str) -> Result<String, String> {
        IdempotencyKey::parse(value.as_bytes()).map(|k| k.as_str().to_owned())
    }

    #[test]
    fn a_bare_and_a_quoted_key_are_the_same_key() {
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(key(uuid).unwrap(), uuid);
        assert_eq!(key(&format!("\"{uuid}\"")).unwrap(), uuid);
        assert_eq!(key(r#""a\"b\\c""#).unwrap(), r#"a"b\c"#);
    }

    #[test]
    fn a_key_is_one_to_two_hundred_fifty_five_visible_ascii_characters() {
        assert!(key(&"k".repeat(255)).is_ok());
        assert!(key(&"k".repeat(256)).is_err());
        assert!(key("!~").is_ok());
        for bad in ["", "\"\"", "a b", "\"a b\"", "tab\there", "caf\u{e9}"] {
            assert!(key(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::parse(b"\xff\xfe").is_err());
    }

    #[test]
    fn a_malformed_structured_string_is_refused_with_a_reason() {
        assert!(key("\"open").unwrap_err().contains("closing quote"));
        assert!(
            key("\"a\"b")
                .unwrap_err()
                .contains("after the closing quote")
        );
        assert!(key(r#""a\nb""#).unwrap_err().contains("backslash"));
    }
}
