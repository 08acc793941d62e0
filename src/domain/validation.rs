//! Collecting every field error of a request at once.
//!
//! A client that sends three bad fields should learn about all three in one 422, not one
//! per round trip. [`validate`] takes a tuple of `(field name, parse result)` pairs and
//! returns either a tuple of the parsed values or every error:
//!
//! ```
//! use keel::domain::{validate, Email, UserName};
//! let (email, name) = validate((
//!     ("email", Email::parse("ada@example.com".into())),
//!     ("name", UserName::parse("Ada".into())),
//! ))
//! .unwrap();
//! assert_eq!(email.as_str(), "ada@example.com");
//! assert_eq!(name.as_str(), "Ada");
//! ```

use std::fmt;

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name as the client sent it (a JSON pointer-ish path for nested fields).
    pub field: String,
    pub message: String,
}

/// Every field that failed validation (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn one(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for e in &self.0 {
            if !first {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
            first = false;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// A tuple of `(field, Result)` pairs that can be validated together.
pub trait Validate {
    type Output;
    fn validate(self) -> Result<Self::Output, ValidationErrors>;
}

/// Validates every field of a tuple and returns all the errors, or all the values.
pub fn validate<V: Validate>(fields: V) -> Result<V::Output, ValidationErrors> {
    fields.validate()
}

macro_rules! impl_validate {
    ($($t:ident $e:ident $v:ident),+) => {
        impl<$($t, $e: fmt::Display),+> Validate for ($((&str, Result<$t, $e>),)+) {
            type Output = ($($t,)+);

            #[allow(non_snake_case)]
            fn validate(self) -> Result<Self::Output, ValidationErrors> {
                let ($($v,)+) = self;
                let mut errors = Vec::new();
                $(
                    let $v = match $v.1 {
                        Ok(value) => Some(value),
                        Err(e) => {
                            errors.push(FieldError { field: $v.0.to_string(), message: e.to_string() });
                            None
                        }
                    };
                )+
                match ($($v,)+) {
                    ($(Some($v),)+) => Ok(($($v,)+)),
                    _ => Err(ValidationErrors(errors)),
                }
            }
        }
    };
}

impl_validate!(A EA a);
impl_validate!(A EA a, B EB b);
impl_validate!(A EA a, B EB b, C EC c);
impl_validate!(A EA a, B EB b, C EC c, D ED d);
impl_validate!(A EA a, B EB b, C EC c, D ED d, E EE e);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_failing_field() {
        let result = validate((
            ("a", Ok::<u8, String>(1)),
            ("b", Err::<u8, String>("bad b".into())),
            ("c", Err::<u8, String>("bad c".into())),
        ));
        let errors = result.unwrap_err().0;
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["b", "c"]);
    }

    #[test]
    fn returns_all_values_when_every_field_is_valid() {
        let values = validate((("a", Ok::<u8, String>(1)), ("b", Ok::<&str, String>("x"))));
        assert_eq!(values, Ok((1, "x")));
    }
}
