//! Public keys and signature verification, for the algorithms Binary
//! Authorization attestors declare. Pure: no I/O.
//!
//! | `signatureAlgorithm`                         | implementation |
//! |----------------------------------------------|----------------|
//! | `ECDSA_P256_SHA256` (cosign's default)       | ring (p256 signs and parses) |
//! | `ECDSA_P384_SHA384`                          | ring           |
//! | `RSA_SIGN_PKCS1_{2048,3072,4096}_SHA256/512` | ring           |
//! | `RSA_PSS_{2048,3072,4096}_SHA256/512`        | ring           |
//! | `RSA_SIGN_PSS_…` (the same, BinAuthz's other spelling) | ring |
//!
//! `ECDSA_P521_SHA512` and PGP keys are rejected when the policy loads:
//! a key that cannot be used is never accepted.
//!
//! [`private_key`] reads the private keys `sign` and `attest` sign with:
//! PKCS#8 PEM, and cosign's encrypted keys (scrypt + NaCl secretbox).
//!
//! May use: nothing of the crate but `oci`. Must never use: config, policy
//! or anything that does I/O.

use std::fmt;

pub mod private_key;

use base64::Engine as _;
use p256::pkcs8::DecodePublicKey as _;
use spki::der::Decode as _;

/// A signature algorithm from Binary Authorization's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    RsaPkcs1Sha256 { bits: usize },
    RsaPkcs1Sha512 { bits: usize },
    RsaPssSha256 { bits: usize },
    RsaPssSha512 { bits: usize },
}

impl Algorithm {
    /// Parses a BinAuthz `signatureAlgorithm` value.
    pub fn parse(name: &str) -> Result<Algorithm, String> {
        let rsa = |rest: &str, sha512: bool| -> Result<usize, String> {
            let bits = rest.parse::<usize>().map_err(|_| unknown(name))?;
            if ![2048, 3072, 4096].contains(&bits) {
                return Err(unknown(name));
            }
            let _ = sha512;
            Ok(bits)
        };
        match name {
            "ECDSA_P256_SHA256" | "EC_SIGN_P256_SHA256" => Ok(Algorithm::EcdsaP256Sha256),
            "ECDSA_P384_SHA384" | "EC_SIGN_P384_SHA384" => Ok(Algorithm::EcdsaP384Sha384),
            "ECDSA_P521_SHA512" | "EC_SIGN_P521_SHA512" => Err(format!(
                "{name} is not supported (no P-521 verifier); use ECDSA_P256_SHA256 or ECDSA_P384_SHA384"
            )),
            _ => {
                if let Some(rest) = name.strip_prefix("RSA_SIGN_PKCS1_") {
                    if let Some(bits) = rest.strip_suffix("_SHA256") {
                        return Ok(Algorithm::RsaPkcs1Sha256 { bits: rsa(bits, false)? });
                    }
                    if let Some(bits) = rest.strip_suffix("_SHA512") {
                        return Ok(Algorithm::RsaPkcs1Sha512 { bits: rsa(bits, true)? });
                    }
                }
                // BinAuthz spells the same PSS algorithms both ways
                // (`RSA_PSS_…` and `RSA_SIGN_PSS_…`, like KMS).
                if let Some(rest) = name
                    .strip_prefix("RSA_PSS_")
                    .or_else(|| name.strip_prefix("RSA_SIGN_PSS_"))
                {
                    if let Some(bits) = rest.strip_suffix("_SHA256") {
                        return Ok(Algorithm::RsaPssSha256 { bits: rsa(bits, false)? });
                    }
                    if let Some(bits) = rest.strip_suffix("_SHA512") {
                        return Ok(Algorithm::RsaPssSha512 { bits: rsa(bits, true)? });
                    }
                }
                Err(unknown(name))
            }
        }
    }

    /// The BinAuthz spelling.
    pub fn name(self) -> String {
        match self {
            Algorithm::EcdsaP256Sha256 => "ECDSA_P256_SHA256".into(),
            Algorithm::EcdsaP384Sha384 => "ECDSA_P384_SHA384".into(),
            Algorithm::RsaPkcs1Sha256 { bits } => format!("RSA_SIGN_PKCS1_{bits}_SHA256"),
            Algorithm::RsaPkcs1Sha512 { bits } => format!("RSA_SIGN_PKCS1_{bits}_SHA512"),
            Algorithm::RsaPssSha256 { bits } => format!("RSA_PSS_{bits}_SHA256"),
            Algorithm::RsaPssSha512 { bits } => format!("RSA_PSS_{bits}_SHA512"),
        }
    }

    fn rsa_bits(self) -> Option<usize> {
        match self {
            Algorithm::RsaPkcs1Sha256 { bits }
            | Algorithm::RsaPkcs1Sha512 { bits }
            | Algorithm::RsaPssSha256 { bits }
            | Algorithm::RsaPssSha512 { bits } => Some(bits),
            _ => None,
        }
    }
}

fn unknown(name: &str) -> String {
    format!(
        "unknown signatureAlgorithm {name:?} (supported: ECDSA_P256_SHA256, ECDSA_P384_SHA384, \
         RSA_SIGN_PKCS1_<2048|3072|4096>_SHA256|SHA512, RSA_PSS_<2048|3072|4096>_SHA256|SHA512, \
         RSA_SIGN_PSS_<2048|3072|4096>_SHA256|SHA512)"
    )
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

enum KeyMaterial {
    /// Raw public key bytes in the form ring expects for the algorithm.
    Ring(Vec<u8>),
}

/// A public key bound to one signature algorithm.
pub struct PublicKey {
    algorithm: Algorithm,
    material: KeyMaterial,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY` (SPKI) and checks it suits `algorithm`.
    pub fn from_pem(pem: &str, algorithm: Algorithm) -> Result<PublicKey, String> {
        let (label, der) = pem_decode(pem)?;
        if label != "PUBLIC KEY" {
            return Err(format!(
                "expected a PEM \"PUBLIC KEY\" (SubjectPublicKeyInfo), found {label:?}"
            ));
        }
        PublicKey::from_spki_der(&der, algorithm)
    }

    pub fn from_spki_der(der: &[u8], algorithm: Algorithm) -> Result<PublicKey, String> {
        let info = spki::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
        let oid = info.algorithm.oid.to_string();
        let curve = info.algorithm.parameters_oid().ok().map(|o| o.to_string());
        let key_bytes = info.subject_public_key.raw_bytes().to_vec();
        let mismatch =
            |what: &str| format!("key is {what}, but signatureAlgorithm is {algorithm:?}");
        let material = match algorithm {
            Algorithm::EcdsaP256Sha256 => {
                if oid != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_P256) {
                    return Err(mismatch(&describe(&oid, curve.as_deref())));
                }
                // Validate the point with p256; verify with ring, which the
                // benchmark (bench/) measured ~5x faster than p256 here.
                p256::ecdsa::VerifyingKey::from_public_key_der(der)
                    .map_err(|e| format!("invalid P-256 key: {e}"))?;
                KeyMaterial::Ring(key_bytes)
            }
            Algorithm::EcdsaP384Sha384 => {
                if oid != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_P384) {
                    return Err(mismatch(&describe(&oid, curve.as_deref())));
                }
                KeyMaterial::Ring(key_bytes)
            }
            _ => {
                if oid != OID_RSA {
                    return Err(mismatch(&describe(&oid, curve.as_deref())));
                }
                let bits = rsa_modulus_bits(&key_bytes)
                    .ok_or_else(|| "invalid RSA public key".to_string())?;
                let want = algorithm.rsa_bits().unwrap_or(0);
                if bits != want {
                    return Err(format!(
                        "RSA key has {bits} bits, but signatureAlgorithm {algorithm:?} says {want}"
                    ));
                }
                KeyMaterial::Ring(key_bytes)
            }
        };
        Ok(PublicKey {
            algorithm,
            material,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Parses a PEM `PUBLIC KEY` the way `cosign verify --key` uses it:
    /// the algorithm follows from the key (ECDSA P-256 with SHA-256, P-384
    /// with SHA-384, RSA PKCS#1 v1.5 with SHA-256), since a cosign key
    /// file names none.
    pub fn from_cosign_pem(pem: &str) -> Result<PublicKey, String> {
        let (label, der) = pem_decode(pem)?;
        if label != "PUBLIC KEY" {
            return Err(format!(
                "expected a PEM \"PUBLIC KEY\" (as cosign.pub holds), found {label:?}"
            ));
        }
        let info = spki::SubjectPublicKeyInfoRef::from_der(&der)
            .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
        let oid = info.algorithm.oid.to_string();
        let curve = info.algorithm.parameters_oid().ok().map(|o| o.to_string());
        let algorithm = match (oid.as_str(), curve.as_deref()) {
            (OID_EC_PUBLIC_KEY, Some(OID_P256)) => Algorithm::EcdsaP256Sha256,
            (OID_EC_PUBLIC_KEY, Some(OID_P384)) => Algorithm::EcdsaP384Sha384,
            (OID_RSA, _) => {
                let bits = rsa_modulus_bits(info.subject_public_key.raw_bytes())
                    .ok_or_else(|| "invalid RSA public key".to_string())?;
                if ![2048, 3072, 4096].contains(&bits) {
                    return Err(format!(
                        "RSA key of {bits} bits; supported: 2048, 3072, 4096"
                    ));
                }
                Algorithm::RsaPkcs1Sha256 { bits }
            }
            (oid, curve) => {
                return Err(format!(
                    "{} is not supported (ECDSA P-256 or P-384, or RSA)",
                    describe(oid, curve)
                ))
            }
        };
        PublicKey::from_spki_der(&der, algorithm)
    }

    /// Verifies `signature` over exactly `message`. ECDSA signatures are
    /// ASN.1 DER (what cosign, KMS and openssl produce); fixed-width r||s
    /// is accepted too.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            KeyMaterial::Ring(raw) => {
                use ring::signature as rs;
                let verify = |alg: &'static dyn rs::VerificationAlgorithm, sig: &[u8]| {
                    rs::UnparsedPublicKey::new(alg, raw)
                        .verify(message, sig)
                        .is_ok()
                };
                match self.algorithm {
                    Algorithm::EcdsaP384Sha384 => {
                        verify(&rs::ECDSA_P384_SHA384_ASN1, signature)
                            || (signature.len() == 96
                                && verify(&rs::ECDSA_P384_SHA384_FIXED, signature))
                    }
                    Algorithm::RsaPkcs1Sha256 { .. } => {
                        verify(&rs::RSA_PKCS1_2048_8192_SHA256, signature)
                    }
                    Algorithm::RsaPkcs1Sha512 { .. } => {
                        verify(&rs::RSA_PKCS1_2048_8192_SHA512, signature)
                    }
                    Algorithm::RsaPssSha256 { .. } => {
                        verify(&rs::RSA_PSS_2048_8192_SHA256, signature)
                    }
                    Algorithm::RsaPssSha512 { .. } => {
                        verify(&rs::RSA_PSS_2048_8192_SHA512, signature)
                    }
                    Algorithm::EcdsaP256Sha256 => {
                        verify(&rs::ECDSA_P256_SHA256_ASN1, signature)
                            || (signature.len() == 64
                                && verify(&rs::ECDSA_P256_SHA256_FIXED, signature))
                    }
                }
            }
        }
    }
}

fn describe(oid: &str, curve: Option<&str>) -> String {
    match (oid, curve) {
        (OID_EC_PUBLIC_KEY, Some(OID_P256)) => "an ECDSA P-256 key".into(),
        (OID_EC_PUBLIC_KEY, Some(OID_P384)) => "an ECDSA P-384 key".into(),
        (OID_EC_PUBLIC_KEY, Some(c)) => format!("an EC key on curve {c}"),
        (OID_RSA, _) => "an RSA key".into(),
        (other, _) => format!("a key of type {other}"),
    }
}

/// The modulus size of a PKCS#1 `RSAPublicKey` DER (SEQUENCE { n, e }).
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    use spki::der::{asn1::UintRef, Decode, Reader, SliceReader};
    let mut reader = SliceReader::new(der).ok()?;
    let modulus = reader
        .sequence(|r| {
            let n = UintRef::decode(r)?;
            let _exponent = UintRef::decode(r)?;
            Ok(n)
        })
        .ok()?;
    let bytes = modulus.as_bytes();
    let first = *bytes.first()?;
    Some(bytes.len() * 8 - first.leading_zeros() as usize)
}

/// Decodes one PEM block: its label and DER bytes.
pub fn pem_decode(pem: &str) -> Result<(String, Vec<u8>), String> {
    let text = pem.trim();
    let begin = text
        .find("-----BEGIN ")
        .ok_or("not PEM: no -----BEGIN line")?;
    let after_begin = &text[begin + "-----BEGIN ".len()..];
    let label_end = after_begin.find("-----").ok_or("not PEM: bad BEGIN line")?;
    let label = after_begin[..label_end].to_owned();
    let body_start = &after_begin[label_end + 5..];
    let end_marker = format!("-----END {label}-----");
    let body_end = body_start
        .find(&end_marker)
        .ok_or_else(|| format!("not PEM: no {end_marker} line"))?;
    let b64: String = body_start[..body_end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("PEM body is not base64: {e}"))?;
    Ok((label, der))
}

/// Decodes base64 as signatures arrive in the wild: standard or URL-safe
/// alphabet, padded or not, with line breaks ignored.
pub fn decode_base64_lenient(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if cleaned.is_empty() {
        return None;
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(&cleaned).ok())
}

/// DSSE's pre-authentication encoding: the bytes a DSSE signature signs
/// (`DSSEv1 <len> <type> <len> <payload>`).
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{signature::Signer, SigningKey};
    use p256::pkcs8::EncodePublicKey;

    fn p256_pair() -> (SigningKey, String) {
        let sk = SigningKey::random(&mut rand_core::OsRng);
        let pem = sk
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        (sk, pem)
    }

    #[test]
    fn p256_round_trip_and_tamper() {
        let (sk, pem) = p256_pair();
        let key = PublicKey::from_pem(&pem, Algorithm::EcdsaP256Sha256).unwrap();
        let sig: p256::ecdsa::Signature = sk.sign(b"payload");
        assert!(key.verify(b"payload", sig.to_der().as_bytes()));
        assert!(key.verify(b"payload", &sig.to_bytes()));
        assert!(!key.verify(b"payload!", sig.to_der().as_bytes()));
        assert!(!key.verify(b"payload", b"garbage"));
        let (_, other) = p256_pair();
        let other = PublicKey::from_pem(&other, Algorithm::EcdsaP256Sha256).unwrap();
        assert!(!other.verify(b"payload", sig.to_der().as_bytes()));
    }

    #[test]
    fn key_must_suit_algorithm() {
        let (_, pem) = p256_pair();
        let e = PublicKey::from_pem(&pem, Algorithm::EcdsaP384Sha384).unwrap_err();
        assert!(e.contains("P-256"), "{e}");
        let e = PublicKey::from_pem(&pem, Algorithm::RsaPkcs1Sha256 { bits: 2048 }).unwrap_err();
        assert!(e.contains("P-256"), "{e}");
        assert!(PublicKey::from_pem("nonsense", Algorithm::EcdsaP256Sha256).is_err());
    }

    #[test]
    fn cosign_public_keys_name_their_algorithm() {
        let (sk, pem) = p256_pair();
        let key = PublicKey::from_cosign_pem(&pem).unwrap();
        assert_eq!(key.algorithm(), Algorithm::EcdsaP256Sha256);
        let sig: p256::ecdsa::Signature = sk.sign(b"payload");
        assert!(key.verify(b"payload", sig.to_der().as_bytes()));
        let e = PublicKey::from_cosign_pem(&pem.replace("PUBLIC KEY", "PRIVATE KEY")).unwrap_err();
        assert!(e.contains("cosign.pub"), "{e}");
        assert!(PublicKey::from_cosign_pem("nonsense").is_err());
        // An Ed25519 key (SPKI from ring's PKCS#8 public half).
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        use ring::signature::KeyPair as _;
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(pair.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki)
        );
        let e = PublicKey::from_cosign_pem(&pem).unwrap_err();
        assert!(
            e.contains("1.3.101.112") && e.contains("not supported"),
            "{e}"
        );
    }

    #[test]
    fn algorithms() {
        assert_eq!(
            Algorithm::parse("ECDSA_P256_SHA256"),
            Ok(Algorithm::EcdsaP256Sha256)
        );
        assert_eq!(
            Algorithm::parse("RSA_PSS_4096_SHA512"),
            Ok(Algorithm::RsaPssSha512 { bits: 4096 })
        );
        assert_eq!(
            Algorithm::parse("RSA_SIGN_PKCS1_2048_SHA256"),
            Ok(Algorithm::RsaPkcs1Sha256 { bits: 2048 })
        );
        assert!(Algorithm::parse("ECDSA_P521_SHA512")
            .unwrap_err()
            .contains("not supported"));
        assert!(Algorithm::parse("RSA_PSS_1024_SHA256").is_err());
        assert!(Algorithm::parse("ED25519").is_err());
    }

    #[test]
    fn lenient_base64() {
        assert_eq!(decode_base64_lenient("aGk=\n"), Some(b"hi".to_vec()));
        assert_eq!(decode_base64_lenient("aGk"), Some(b"hi".to_vec()));
        assert_eq!(decode_base64_lenient("-_8="), Some(vec![0xfb, 0xff]));
        assert_eq!(decode_base64_lenient("+/8="), Some(vec![0xfb, 0xff]));
        assert_eq!(decode_base64_lenient(""), None);
        assert_eq!(decode_base64_lenient("!!"), None);
    }
}
