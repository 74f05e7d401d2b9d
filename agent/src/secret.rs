//! A string that must never be printed.
//!
//! Passwords and secret keys travel inside configuration structs that are logged at
//! debug level and turned into error messages; wrapping them makes the safe thing the
//! default: `Debug` and `Display` print a placeholder, and the only way to the value is
//! the explicit [`Secret::expose`].

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A secret value (password, secret key). Serialises transparently (so it can be stored
/// in the 0600 state file) but never formats.
#[derive(Clone, PartialEq, Eq, Serialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

/// Accepts only strings, and never quotes the offending input in its error: serde's
/// default "invalid type: integer `1234`" would echo a mistyped secret back to the caller.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Secret, E> {
                Err(E::custom("a secret must be a string"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(de::Error::custom("a secret must be a string"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(de::Error::custom("a secret must be a string"))
            }
        }
        // deserialize_any: with deserialize_string serde_json reports the type error itself,
        // quoting the value, before the visitor sees it.
        d.deserialize_any(SecretVisitor)
    }
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the few places that must hand it on (the cli's environment,
    /// the S3 signer).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty (treated as "no password").
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn mistyped_secret_is_refused_without_echoing_it() {
        for bad in [
            "1234567",
            "true",
            "[\"x1234567\"]",
            "{\"a\":\"x1234567\"}",
            "12.5",
        ] {
            let err = serde_json::from_str::<Secret>(bad).unwrap_err().to_string();
            assert!(err.contains("must be a string"), "{err}");
            assert!(!err.contains("1234567") && !err.contains("12.5"), "{err}");
        }
    }

    #[test]
    fn secret_serialises_transparently() {
        let s: Secret = serde_json::from_str("\"k\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"k\"");
    }
}
