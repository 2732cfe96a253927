//! Test helpers shared by the verification modules' unit tests: fixtures
//! from `tests/fixtures`, keys and attestors.

use std::path::PathBuf;

use p256::ecdsa::SigningKey;

use crate::crypto::{Algorithm, PublicKey};
use crate::policy::attestation::Requirement;
use crate::policy::{Attestor, AttestorKey};

#[path = "../../tests/common/fixture_dir.rs"]
mod fixture_dir;

/// The fixtures directory, `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    fixture_dir::fixtures_dir()
}

/// A fixture's bytes; panics naming the file when it cannot be read.
pub fn fixture(path: &str) -> Vec<u8> {
    let path = fixtures().join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn fixture_text(path: &str) -> String {
    String::from_utf8(fixture(path)).expect("fixture is UTF-8")
}

/// An attestor key from a PEM public key.
pub fn pem_key(id: &str, pem: &str, algorithm: Algorithm) -> AttestorKey {
    AttestorKey {
        id: id.into(),
        key: PublicKey::from_pem(pem, algorithm).expect("public key PEM"),
    }
}

/// The attestor key, under `id`, that verifies `signer`'s signatures.
pub fn p256_key(id: &str, signer: &SigningKey) -> AttestorKey {
    let pem = p256::pkcs8::EncodePublicKey::to_public_key_pem(
        signer.verifying_key(),
        p256::pkcs8::LineEnding::LF,
    )
    .expect("encode public key");
    pem_key(id, &pem, Algorithm::EcdsaP256Sha256)
}

/// A fresh P-256 signing key and the attestor key that verifies it.
pub fn p256_pair(id: &str) -> (SigningKey, AttestorKey) {
    let signer = SigningKey::random(&mut rand_core::OsRng);
    let key = p256_key(id, &signer);
    (signer, key)
}

/// An attestor named `name` holding `keys`, requiring attestations of
/// `predicate_types` without conditions (none: a signature suffices).
pub fn attestor(name: &str, keys: Vec<AttestorKey>, predicate_types: &[&str]) -> Attestor {
    Attestor {
        name: name.into(),
        keys,
        keyless: None,
        signature_repository: None,
        attestations: predicate_types
            .iter()
            .map(|p| Requirement {
                predicate_type: (*p).into(),
                conditions: Vec::new(),
            })
            .collect(),
    }
}

/// A keyless attestor: `identities` (issuer, subject regular expression),
/// under `root`, requiring `predicate_types` (none: a signature suffices).
pub fn keyless_attestor(
    name: &str,
    identities: &[(&str, &str)],
    root: crate::sigstore::TrustedRoot,
    predicate_types: &[&str],
) -> Attestor {
    use crate::sigstore::{IdentityPolicy, Matcher};
    let mut attestor = attestor(name, Vec::new(), predicate_types);
    attestor.keyless = Some(crate::policy::Keyless {
        identities: identities
            .iter()
            .map(|(issuer, subject)| IdentityPolicy {
                issuer: Matcher::Exact((*issuer).into()),
                subject: Matcher::regex(subject).expect("regex"),
                claims: Vec::new(),
            })
            .collect(),
        root: std::sync::Arc::new(root),
        root_source: "test".into(),
        require_tlog: true,
        require_sct: true,
    });
    attestor
}
