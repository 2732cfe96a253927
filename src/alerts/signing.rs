//! Signed webhook bodies: with `signingSecretFile`, every POST carries
//!
//! - `X-Portcullis-Timestamp: <unix seconds>`, the time of the attempt, and
//! - `X-Portcullis-Signature: sha256=<hex>`, the HMAC-SHA256, keyed with
//!   the shared secret, of `<timestamp>.<body>`: the timestamp header's
//!   value, one `.`, then the exact body bytes.
//!
//! A receiver recomputes the HMAC over the bytes it received, compares in
//! constant time, and refuses a timestamp too far from its clock (five
//! minutes is the usual tolerance), so a captured request cannot be
//! replayed later. Each attempt (retries included) is signed anew.
//!
//! The secret is the file's content without its trailing newline, at
//! least [`MIN_SECRET_LEN`] bytes. It is kept only inside the keyed HMAC
//! state; [`SigningKey`]'s `Debug` and every error name the file, never
//! its content.
//!
//! May use: std, `hmac`, `sha2`. Must never use: the layers above alerts.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header with the signature: `sha256=<lowercase hex>`.
pub const SIGNATURE_HEADER: &str = "x-portcullis-signature";
/// The header with the Unix time (seconds) the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-portcullis-timestamp";
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Largest secret file read, in bytes.
const MAX_SECRET_FILE: u64 = 4096;

/// A webhook's keyed HMAC-SHA256.
#[derive(Clone)]
pub struct SigningKey {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// The key for `secret` (at least [`MIN_SECRET_LEN`] bytes).
    pub fn new(secret: &[u8]) -> Result<SigningKey, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the secret must be at least {MIN_SECRET_LEN} bytes"
            ));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|_| "the secret cannot key an HMAC".to_owned())?;
        Ok(SigningKey { mac })
    }

    /// Reads the secret from `path`: its content without the trailing
    /// newline (`\n` or `\r\n`). Errors name the file, never the content.
    pub fn from_file(path: &Path) -> Result<SigningKey, String> {
        let len = std::fs::metadata(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .len();
        if len > MAX_SECRET_FILE {
            return Err(format!(
                "{} is larger than {MAX_SECRET_FILE} bytes: not a secret",
                path.display()
            ));
        }
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let secret = bytes
            .strip_suffix(b"\n")
            .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
            .unwrap_or(&bytes);
        SigningKey::new(secret).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// `sha256=<hex>` of `<timestamp>.<body>`.
    pub fn sign(&self, timestamp: u64, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_timestamp_dot_body() {
        // The expected value is Python's:
        // hmac.new(b"0123456789abcdef-secret", b"1700000000.{}", "sha256").hexdigest()
        let key = SigningKey::new(b"0123456789abcdef-secret").unwrap();
        assert_eq!(
            key.sign(1_700_000_000, b"{}"),
            "sha256=98c46143285b7e2a97edce2d3e564546f46c6b7f6d8479418b7a0ce3c456a915"
        );
    }

    #[test]
    fn files_are_read_trimmed_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef-secret\r\n").unwrap();
        let from_file = SigningKey::from_file(&path).unwrap();
        let direct = SigningKey::new(b"0123456789abcdef-secret").unwrap();
        assert_eq!(from_file.sign(1, b"x"), direct.sign(1, b"x"));
        assert_ne!(from_file.sign(2, b"x"), direct.sign(1, b"x"));
        assert_ne!(from_file.sign(1, b"y"), direct.sign(1, b"x"));
        assert_eq!(format!("{from_file:?}"), "SigningKey(<redacted>)");

        std::fs::write(&path, "short-S3CRET\n").unwrap();
        let e = SigningKey::from_file(&path).unwrap_err();
        assert!(e.contains("at least 16") && !e.contains("S3CRET"), "{e}");
        let e = SigningKey::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::write(&path, vec![b'a'; 5000]).unwrap();
        assert!(SigningKey::from_file(&path).unwrap_err().contains("larger"));
    }
}
