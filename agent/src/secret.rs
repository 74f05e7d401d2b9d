//! A string that must never be printed.
//!
//! Passwords and secret keys travel inside configuration structs that are logged at
//! debug level and turned into error messages; wrapping them makes the safe thing the
//! default: `Debug` and `Display` print a placeholder, and the only way to the value is
//! the explicit [`Secret::expose`].

use serde::{Deserialize, Serialize};

/// A secret value (password, secret key). Serialises transparently (so it can be stored
/// in the 0600 state file) but never formats.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

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
    fn secret_serialises_transparently() {
        let s: Secret = serde_json::from_str("\"k\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"k\"");
    }
}
