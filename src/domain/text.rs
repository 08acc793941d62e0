//! Bounded text: the length and character rules shared by every free-text field.

/// What single-line fields (names, titles) may not contain: C0 controls and DEL.
/// The same rule as an OpenAPI `pattern`, so that clients and fuzzers see it.
pub const SINGLE_LINE_PATTERN: &str = r"^[^\u0000-\u001f\u007f]*$";
/// What multi-line fields (descriptions, comment bodies) may not contain: NUL, which
/// PostgreSQL's `text` cannot store.
pub const MULTI_LINE_PATTERN: &str = r"^[^\u0000]*$";

#[derive(Clone, Copy)]
pub(crate) enum Lines {
    Single,
    Multi,
}

/// Checks a text's length in characters (Unicode scalar values, as JSON Schema counts
/// them) and its characters.
pub(crate) fn bounded(
    value: String,
    min: usize,
    max: usize,
    lines: Lines,
) -> Result<String, String> {
    let len = value.chars().count();
    if len < min {
        return Err(if min == 1 {
            "must not be empty".into()
        } else {
            format!("must be at least {min} characters")
        });
    }
    if len > max {
        return Err(format!("must be at most {max} characters"));
    }
    let bad = match lines {
        Lines::Single => value.chars().any(|c| c.is_ascii_control()),
        Lines::Multi => value.contains('\0'),
    };
    if bad {
        return Err(match lines {
            Lines::Single => "must not contain control characters".into(),
            Lines::Multi => "must not contain NUL characters".into(),
        });
    }
    Ok(value)
}

/// Declares a newtype over a bounded `String`, with `parse`, `as_str` and `into_inner`.
macro_rules! bounded_text {
    ($(#[$doc:meta])* $name:ident, $min:expr, $max:expr, $lines:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub const MIN_CHARS: usize = $min;
            pub const MAX_CHARS: usize = $max;

            pub fn parse(value: String) -> Result<Self, String> {
                crate::domain::text::bounded(value, $min, $max, $lines).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
pub(crate) use bounded_text;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_counts_characters_not_bytes() {
        assert!(bounded("éé".into(), 1, 2, Lines::Single).is_ok());
        assert!(bounded("ééé".into(), 1, 2, Lines::Single).is_err());
    }

    #[test]
    fn single_line_refuses_controls_multi_line_only_nul() {
        assert!(bounded("a\nb".into(), 1, 9, Lines::Single).is_err());
        assert!(bounded("a\nb".into(), 1, 9, Lines::Multi).is_ok());
        assert!(bounded("a\0b".into(), 1, 9, Lines::Multi).is_err());
    }

    #[test]
    fn empty_is_refused_when_min_is_one() {
        assert_eq!(
            bounded(String::new(), 1, 9, Lines::Single).unwrap_err(),
            "must not be empty"
        );
    }
}
