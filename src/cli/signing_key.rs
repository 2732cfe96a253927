//! The key `sign` and `attest` sign with (`--key`): a PKCS#8 PEM as
//! `portcullis keygen` writes it, or cosign's encrypted `cosign.key`
//! opened with the password in `COSIGN_PASSWORD`, as cosign does. The
//! format and its bounds are [`crate::crypto::private_key`]'s; this reads
//! the file (bounded) and finds the password. The password is never
//! printed, and Portcullis does not prompt for it.

use std::ffi::OsString;
use std::io::Read as _;
use std::path::Path;

use zeroize::Zeroizing;

use crate::crypto::private_key::{
    p256_signing_key, PrivateKeyError, PrivateKeyFile, MAX_KEY_FILE_BYTES,
};

/// Where cosign (and so Portcullis) finds an encrypted key's password.
pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

/// Reads the signing key at `path`; an encrypted cosign key is opened
/// with `COSIGN_PASSWORD`.
pub(super) fn read_signing_key(path: &Path) -> Result<p256::ecdsa::SigningKey, String> {
    read_with_password(path, std::env::var_os(PASSWORD_ENV))
}

/// [`read_signing_key`] with the password given (`None`: not set).
fn read_with_password(
    path: &Path,
    password: Option<OsString>,
) -> Result<p256::ecdsa::SigningKey, String> {
    let shown = path.display();
    let bytes = read_key_file(path)?;
    let file = PrivateKeyFile::parse(&bytes).map_err(|e| format!("{shown}: {e}"))?;
    let der = match file {
        PrivateKeyFile::Plain(der) => der,
        PrivateKeyFile::Encrypted(key) => {
            let Some(password) = password else {
                return Err(format!(
                    "{shown} is an encrypted cosign key: set {PASSWORD_ENV} to its password \
                     (Portcullis does not prompt for it)"
                ));
            };
            let password = Zeroizing::new(password.into_encoded_bytes());
            key.decrypt(&password).map_err(|e| match e {
                PrivateKeyError::WrongPassword => {
                    format!("cannot decrypt {shown}: wrong {PASSWORD_ENV} or corrupted key")
                }
                other => format!("cannot decrypt {shown}: {other}"),
            })?
        }
    };
    p256_signing_key(&der).map_err(|e| format!("{shown}: {e}"))
}

/// The key file's bytes, at most [`MAX_KEY_FILE_BYTES`] (wiped when
/// dropped: they may be an unencrypted key).
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > MAX_KEY_FILE_BYTES {
        return Err(format!("{}: {}", path.display(), PrivateKeyError::TooLarge));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePrivateKey as _;

    #[test]
    fn plain_pkcs8_needs_no_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        std::fs::write(
            &path,
            key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(read_with_password(&path, None).unwrap(), key);
        assert_eq!(
            read_with_password(&path, Some("ignored".into())).unwrap(),
            key
        );
    }

    #[test]
    fn encrypted_key_errors_are_clear_and_hold_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cosign.key");
        // go-securesystemslib's test vector in a cosign PEM: its password
        // is "supersecret"; its plaintext is not a key.
        let body = br#"{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"N9a7x5JFGbrtB2uBR81jPwp0eiLR4A7FV3mjVAQrg1g="},"cipher":{"name":"nacl/secretbox","nonce":"2h8HxMmgRfuYdpswZBQaU3xJ1nkA/5Ik"},"ciphertext":"SEW6sUh0jf2wfdjJGPNS9+bkk2uB+Cxamf32zR8XkQ=="}"#;
        use base64::Engine as _;
        let pem = format!(
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(body)
        );
        std::fs::write(&path, pem).unwrap();
        let e = read_with_password(&path, None).unwrap_err();
        assert!(e.contains("set COSIGN_PASSWORD"), "{e}");
        let e = read_with_password(&path, Some("hunter2-wrong".into())).unwrap_err();
        assert!(e.ends_with("wrong COSIGN_PASSWORD or corrupted key"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = read_with_password(&path, Some("supersecret".into())).unwrap_err();
        assert!(e.contains("not a PKCS#8 private key"), "{e}");
        assert!(
            !e.contains("supersecret") && !e.contains("reallyimportant"),
            "{e}"
        );
    }

    #[test]
    fn oversized_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.key");
        std::fs::write(&path, vec![b'A'; MAX_KEY_FILE_BYTES + 1]).unwrap();
        let e = read_with_password(&path, None).unwrap_err();
        assert!(e.contains("larger than 65536 bytes"), "{e}");
        let e = read_with_password(&dir.path().join("missing"), None).unwrap_err();
        assert!(e.starts_with("cannot read"), "{e}");
    }
}
