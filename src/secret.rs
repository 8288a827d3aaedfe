//! `Secret`: a real credential value that cannot be printed by accident.
//!
//! Owns the redaction rule of SPEC §5.6: `Debug` and `Display` never show the
//! value, only `expose()` does, and the only callers of `expose()` are the
//! swap (to build the outgoing header) and the store (to write a file back).
//! Does not own where values come from (see `store`).

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// A real credential value. Cloning is cheap (shared bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

/// Why a candidate value cannot be used as a credential.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the value is empty")]
    Empty,
    #[error(
        "the value contains a byte (at offset {offset}) that is not allowed in an HTTP header \
         (control character, space or non-ASCII); store the token alone, without quotes or \
         extra lines"
    )]
    InvalidByte { offset: usize },
}

impl Secret {
    /// Accepts raw bytes as read from a file or the admin API: one trailing
    /// newline (`\n` or `\r\n`) is dropped because editors and `echo` add it.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, SecretError> {
        let trimmed = raw
            .strip_suffix(b"\r\n")
            .or_else(|| raw.strip_suffix(b"\n"))
            .unwrap_or(raw);
        if trimmed.is_empty() {
            return Err(SecretError::Empty);
        }
        // Visible ASCII only: the value travels in a header and must never
        // be able to inject a header or confuse `Basic` encoding.
        if let Some(offset) = trimmed.iter().position(|b| !(0x21..=0x7e).contains(b)) {
            return Err(SecretError::InvalidByte { offset });
        }
        let text =
            std::str::from_utf8(trimmed).map_err(|_| SecretError::InvalidByte { offset: 0 })?;
        Ok(Secret(Arc::from(text)))
    }

    /// The real value. Call sites are deliberately few; grep for `expose(`.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// First 12 hex digits of the value's sha256: lets operators tell two
    /// values apart (SPEC §7) without revealing either.
    pub fn sha256_prefix(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(sha256:{}…)", self.sha256_prefix())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::from_bytes(b"sk-real-value-123\n").unwrap();
        assert_eq!(s.expose(), "sk-real-value-123");
        assert!(!format!("{s:?}").contains("sk-real"));
        assert!(!format!("{s}").contains("sk-real"));
        assert!(!format!("{:#?}", Some(&s)).contains("sk-real"));
    }

    #[test]
    fn one_trailing_newline_is_dropped_not_more() {
        assert_eq!(Secret::from_bytes(b"abc\r\n").unwrap().expose(), "abc");
        assert!(matches!(
            Secret::from_bytes(b"abc\n\n"),
            Err(SecretError::InvalidByte { offset: 3 })
        ));
        assert_eq!(Secret::from_bytes(b"\n"), Err(SecretError::Empty));
    }

    #[test]
    fn header_injection_bytes_are_refused() {
        for bad in [
            &b"a\rb"[..],
            b"a\nX-Evil: 1",
            b"a\0",
            b"a b",
            "é".as_bytes(),
        ] {
            assert!(Secret::from_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sha256_prefix_is_12_hex_digits() {
        let p = Secret::from_bytes(b"abc").unwrap().sha256_prefix();
        assert_eq!(p, "ba7816bf8f01");
    }
}
