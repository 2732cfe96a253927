//! `portcullis keygen`: a P-256 key pair for signing.

use std::path::Path;

use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};

use super::{CliError, Exit, Outcome};

/// Runs `portcullis keygen`.
pub fn run(key: &Path, public: &Path) -> Outcome {
    keygen(key, public).map_err(CliError::error)?;
    println!(
        "wrote private key {} (mode 0600) and public key {}",
        key.display(),
        public.display()
    );
    Ok(Exit::Ok)
}

/// `portcullis keygen`: a P-256 key pair, private key PKCS#8 PEM (mode
/// 0600), public key SPKI PEM.
pub fn keygen(key: &Path, public: &Path) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let secret = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let private_pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("encoding the private key: {e}"))?;
    let public_pem = secret
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| format!("encoding the public key: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key)
        .map_err(|e| format!("cannot create {}: {e}", key.display()))?;
    file.write_all(private_pem.as_bytes())
        .map_err(|e| format!("writing {}: {e}", key.display()))?;
    std::fs::write(public, public_pem.as_bytes())
        .map_err(|e| format!("writing {}: {e}", public.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_private_key_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        let public = dir.path().join("k.pub");
        keygen(&key, &public).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let pem = std::fs::read_to_string(&public).unwrap();
        assert!(crate::crypto::PublicKey::from_pem(
            &pem,
            crate::crypto::Algorithm::EcdsaP256Sha256
        )
        .is_ok());
        assert!(keygen(&key, &public).is_err(), "never overwrite a key");
    }
}
