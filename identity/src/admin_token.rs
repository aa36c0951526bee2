//! The admin token: a shared secret that carries the admin role, for operators and scripts (the load
//! generator, the benchmarks, the CLI) where no identity provider is at hand.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The shortest token accepted, in bytes: 32 random bytes, hex- or base64-encoded, are longer.
pub const MIN_LEN: usize = 32;

/// Placeholders seen in examples and compose files; refused whatever their length.
const KNOWN_DEFAULTS: [&str; 8] =
    ["change-me", "changeme", "admin", "password", "secret", "token", "admin-token", "orderflow"];

/// Why a configured admin token was refused at start.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminTokenError {
    #[error("ORDERFLOW_ADMIN_TOKEN is {0} bytes; use at least {MIN_LEN} (for example `openssl rand -hex 32`)")]
    TooShort(usize),
    #[error("ORDERFLOW_ADMIN_TOKEN is a well-known placeholder; set a random one (for example `openssl rand -hex 32`)")]
    KnownDefault,
    #[error("ORDERFLOW_ADMIN_TOKEN contains whitespace or control characters")]
    NotPrintable,
    #[error("both ORDERFLOW_ADMIN_TOKEN and ORDERFLOW_ADMIN_TOKEN_FILE are set; set one")]
    Both,
    #[error("reading ORDERFLOW_ADMIN_TOKEN_FILE {path}: {reason}")]
    File { path: String, reason: String },
}

/// A checked admin token. Its `Debug` and `Display` never show it: only [`AdminToken::id`], a short
/// hash that names it in logs and audit records.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    secret: String,
    id: String,
}

impl AdminToken {
    /// Checks a token: at least [`MIN_LEN`] visible ASCII bytes, not a known placeholder.
    pub fn parse(secret: &str) -> Result<Self, AdminTokenError> {
        if secret.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(AdminTokenError::NotPrintable);
        }
        let lowered = secret.to_ascii_lowercase();
        if KNOWN_DEFAULTS.iter().any(|d| lowered.contains(d) && lowered.len() < d.len() + 8) {
            return Err(AdminTokenError::KnownDefault);
        }
        if secret.len() < MIN_LEN {
            return Err(AdminTokenError::TooShort(secret.len()));
        }
        let digest = Sha256::digest(secret.as_bytes());
        let id = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Ok(Self { secret: secret.to_owned(), id })
    }

    /// The token from `ORDERFLOW_ADMIN_TOKEN` (`value`) or the file named by `ORDERFLOW_ADMIN_TOKEN_FILE`
    /// (`file`, its content with surrounding whitespace trimmed, as secrets mounted by Kubernetes or
    /// Docker end with a newline); `None` when neither is set (or the value is empty).
    pub fn from_settings(value: Option<&str>, file: Option<&Path>) -> Result<Option<Self>, AdminTokenError> {
        let value = value.filter(|v| !v.is_empty());
        match (value, file) {
            (Some(_), Some(_)) => Err(AdminTokenError::Both),
            (Some(v), None) => Self::parse(v).map(Some),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| AdminTokenError::File { path: path.display().to_string(), reason: e.to_string() })?;
                Self::parse(text.trim()).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    /// A short, stable name of the token (the first 4 bytes of its SHA-256, hex) for logs and audits.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `sent` is the token, compared without an early exit so the time taken does not tell how
    /// many leading bytes matched (the length is not secret).
    pub fn matches(&self, sent: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), sent.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken(id {}, <redacted>)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn short_placeholder_and_unprintable_tokens_are_refused() {
        assert_eq!(AdminToken::parse("s3cret"), Err(AdminTokenError::TooShort(6)));
        assert_eq!(AdminToken::parse("change-me"), Err(AdminTokenError::KnownDefault));
        assert_eq!(AdminToken::parse("CHANGE-ME-please"), Err(AdminTokenError::KnownDefault));
        assert_eq!(AdminToken::parse(&format!("{GOOD} x")), Err(AdminTokenError::NotPrintable));
        assert!(AdminToken::parse(GOOD).is_ok());
    }

    #[test]
    fn matches_exactly_and_never_shows_itself() {
        let token = AdminToken::parse(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert!(token.matches(GOOD));
        assert!(!token.matches(&GOOD[1..]));
        assert!(!token.matches(&format!("{GOOD}0")));
        let shown = format!("{token:?}");
        assert!(!shown.contains(GOOD) && shown.contains(token.id()), "{shown}");
        assert_eq!(token.id().len(), 8);
    }

    #[test]
    fn read_from_a_file_trimmed_or_from_the_value_but_not_both() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{GOOD}\n")).unwrap_or_else(|e| panic!("{e}"));
        let from_file = AdminToken::from_settings(None, Some(&path)).unwrap_or_else(|e| panic!("{e}"));
        assert!(from_file.is_some_and(|t| t.matches(GOOD)));
        assert_eq!(AdminToken::from_settings(Some(GOOD), Some(&path)), Err(AdminTokenError::Both));
        assert_eq!(AdminToken::from_settings(Some(""), None), Ok(None));
        assert!(matches!(
            AdminToken::from_settings(None, Some(&dir.path().join("missing"))),
            Err(AdminTokenError::File { .. })
        ));
    }
}
