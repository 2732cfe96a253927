//! Sigstore trust material: a `trusted_root.json` (the
//! `dev.sigstore.trustedroot` format of sigstore/protobuf-specs), read
//! into the keys and certificate authorities verification uses, each with
//! the window in which it may be trusted.
//!
//! The default is Sigstore's public-good root, embedded in the binary:
//! `trusted_root.json` here is byte-identical to the one shipped in the
//! PyPI wheel sigstore 4.5.1 (from `tuf-repo-cdn.sigstore.dev`), sha256
//! `6494e21ea73fa7ee769f85f57d5a3e6a08725eae1e38c755fc3517c9e6bc0b66`,
//! taken on 2026-12-05: Rekor v1 and v2 log keys, two Fulcio CAs, two CT
//! logs and one timestamp authority. A private Sigstore deployment gives
//! its own file (`trustedRoot:`, `--trusted-root`).

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::time;

/// Sigstore's public-good trusted root (see the module documentation).
pub const PUBLIC_GOOD: &str = include_str!("trusted_root.json");

/// A time window, in milliseconds since the Unix epoch; `end` inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: Option<i64>,
}

impl Window {
    /// Whether `at_ms` lies within the window (both ends inclusive).
    pub fn contains(&self, at_ms: i64) -> bool {
        at_ms >= self.start_ms && self.end_ms.is_none_or(|end| at_ms <= end)
    }
}

/// What a log or authority key verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    Ed25519,
    RsaPkcs1Sha256,
    RsaPssSha256,
}

/// A public key from the trusted root.
#[derive(Debug, Clone)]
pub struct Key {
    pub kind: KeyKind,
    /// The SubjectPublicKeyInfo, DER.
    pub spki: Vec<u8>,
    /// What ring verifies with: the EC point, the raw Ed25519 key or the
    /// PKCS#1 RSA key.
    raw: Vec<u8>,
}

const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

impl Key {
    /// Reads a SubjectPublicKeyInfo; what it verifies comes from the key's
    /// own algorithm identifier, never from a label next to it.
    pub fn from_spki(der: &[u8]) -> Result<Key, String> {
        use spki::der::Decode as _;
        let info = spki::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
        let oid = info.algorithm.oid.to_string();
        let curve = info.algorithm.parameters_oid().ok().map(|o| o.to_string());
        let kind = match (oid.as_str(), curve.as_deref()) {
            (OID_EC, Some(OID_P256)) => KeyKind::EcdsaP256Sha256,
            (OID_EC, Some(OID_P384)) => KeyKind::EcdsaP384Sha384,
            (OID_ED25519, _) => KeyKind::Ed25519,
            (OID_RSA, _) => KeyKind::RsaPkcs1Sha256,
            (oid, curve) => {
                return Err(format!(
                    "unsupported key type {oid}{}",
                    curve.map(|c| format!(" on curve {c}")).unwrap_or_default()
                ))
            }
        };
        Ok(Key {
            kind,
            spki: der.to_vec(),
            raw: info.subject_public_key.raw_bytes().to_vec(),
        })
    }

    /// Verifies `signature` over `message` (ECDSA signatures ASN.1 DER).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature as rs;
        let algorithm: &'static dyn rs::VerificationAlgorithm = match self.kind {
            KeyKind::EcdsaP256Sha256 => &rs::ECDSA_P256_SHA256_ASN1,
            KeyKind::EcdsaP384Sha384 => &rs::ECDSA_P384_SHA384_ASN1,
            KeyKind::Ed25519 => &rs::ED25519,
            KeyKind::RsaPkcs1Sha256 => &rs::RSA_PKCS1_2048_8192_SHA256,
            KeyKind::RsaPssSha256 => &rs::RSA_PSS_2048_8192_SHA256,
        };
        rs::UnparsedPublicKey::new(algorithm, &self.raw)
            .verify(message, signature)
            .is_ok()
    }

    /// Reads a trusted root's key as its `keyDetails` says it is encoded:
    /// a SubjectPublicKeyInfo (`PKIX_*`), or a bare PKCS#1 RSA key
    /// (`PKCS1_RSA_*`, which Sigstore's staging CT log has).
    fn from_trusted_root(der: &[u8], details: &str) -> Result<Key, String> {
        if details.starts_with("PKCS1_RSA_") {
            use spki::der::Encode as _;
            let info = spki::SubjectPublicKeyInfoOwned {
                algorithm: spki::AlgorithmIdentifierOwned {
                    oid: spki::ObjectIdentifier::new_unwrap(OID_RSA),
                    parameters: Some(spki::der::asn1::Null.into()),
                },
                subject_public_key: spki::der::asn1::BitString::from_bytes(der)
                    .map_err(|e| format!("the RSA key: {e}"))?,
            };
            let spki = info.to_der().map_err(|e| format!("the RSA key: {e}"))?;
            let mut key = Key::from_spki(&spki)?;
            if details.contains("PSS") {
                key.kind = KeyKind::RsaPssSha256;
            }
            return Ok(key);
        }
        let mut key = Key::from_spki(der)?;
        if key.kind == KeyKind::RsaPkcs1Sha256 && details.contains("PSS") {
            key.kind = KeyKind::RsaPssSha256;
        }
        Ok(key)
    }

    /// SHA-256 of the SubjectPublicKeyInfo: a Rekor v1 or CT log's ID.
    pub fn spki_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.spki).into()
    }

    /// The raw key (the EC point, or the 32 bytes of an Ed25519 key).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// A transparency log (Rekor) or certificate transparency log.
#[derive(Debug, Clone)]
pub struct Log {
    /// `logId.keyId`: what entries and SCTs name the log by.
    pub id: Vec<u8>,
    pub key: Key,
    pub valid: Window,
    pub base_url: String,
}

/// A certificate authority (Fulcio) or timestamp authority: its chain,
/// issuing certificate first and root last (DER).
#[derive(Debug, Clone)]
pub struct Authority {
    pub chain: Vec<Vec<u8>>,
    pub valid: Window,
    pub uri: String,
}

/// The trust material verification uses.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    /// Rekor logs.
    pub tlogs: Vec<Log>,
    /// Certificate transparency logs (embedded SCTs).
    pub ctlogs: Vec<Log>,
    /// Fulcio certificate authorities.
    pub certificate_authorities: Vec<Authority>,
    /// RFC 3161 timestamp authorities.
    pub timestamp_authorities: Vec<Authority>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRoot {
    media_type: String,
    #[serde(default)]
    tlogs: Vec<WireLog>,
    #[serde(default)]
    ctlogs: Vec<WireLog>,
    #[serde(default)]
    certificate_authorities: Vec<WireAuthority>,
    #[serde(default)]
    timestamp_authorities: Vec<WireAuthority>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireLog {
    #[serde(default)]
    base_url: String,
    public_key: WireKey,
    log_id: WireLogId,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireKey {
    raw_bytes: String,
    #[serde(default)]
    key_details: String,
    valid_for: Option<WireWindow>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireLogId {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAuthority {
    #[serde(default)]
    uri: String,
    cert_chain: WireChain,
    valid_for: Option<WireWindow>,
}

#[derive(Deserialize)]
struct WireChain {
    certificates: Vec<WireCert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCert {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct WireWindow {
    start: Option<String>,
    end: Option<String>,
}

/// The media types of the trusted root format understood.
const MEDIA_TYPES: [&str; 2] = [
    "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
    "application/vnd.dev.sigstore.trustedroot.v0.2+json",
];

fn b64(what: &str, text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("{what} is not base64: {e}"))
}

fn window(what: &str, wire: Option<WireWindow>) -> Result<Window, String> {
    // A key without a window is not usable: the format requires a start.
    let wire = wire.ok_or_else(|| format!("{what} has no validFor"))?;
    let start = wire
        .start
        .ok_or_else(|| format!("{what}: validFor has no start"))?;
    Ok(Window {
        start_ms: time::parse_rfc3339_ms(&start).map_err(|e| format!("{what}: {e}"))?,
        end_ms: wire
            .end
            .map(|end| time::parse_rfc3339_ms(&end).map_err(|e| format!("{what}: {e}")))
            .transpose()?,
    })
}

impl TrustedRoot {
    /// Sigstore's public-good root, embedded.
    pub fn public_good() -> TrustedRoot {
        // Checked by a unit test: the embedded file always parses.
        TrustedRoot::parse(PUBLIC_GOOD.as_bytes()).unwrap_or(TrustedRoot {
            tlogs: Vec::new(),
            ctlogs: Vec::new(),
            certificate_authorities: Vec::new(),
            timestamp_authorities: Vec::new(),
        })
    }

    /// Parses a `trusted_root.json`. Every key and certificate must
    /// decode: a root that is partly unreadable is refused whole.
    pub fn parse(bytes: &[u8]) -> Result<TrustedRoot, String> {
        let wire: WireRoot = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a Sigstore trusted root: {e}"))?;
        if !MEDIA_TYPES.contains(&wire.media_type.as_str()) {
            return Err(format!(
                "unsupported trusted root mediaType {:?}",
                wire.media_type
            ));
        }
        let logs = |what: &str, wire: Vec<WireLog>| -> Result<Vec<Log>, String> {
            wire.into_iter()
                .enumerate()
                .map(|(i, log)| {
                    let what = format!("{what}[{i}]");
                    let der = b64(&format!("{what}.publicKey"), &log.public_key.raw_bytes)?;
                    Ok(Log {
                        id: b64(&format!("{what}.logId"), &log.log_id.key_id)?,
                        key: Key::from_trusted_root(&der, &log.public_key.key_details)
                            .map_err(|e| format!("{what}.publicKey: {e}"))?,
                        valid: window(&format!("{what}.publicKey"), log.public_key.valid_for)?,
                        base_url: log.base_url,
                    })
                })
                .collect()
        };
        let authorities =
            |what: &str, wire: Vec<WireAuthority>| -> Result<Vec<Authority>, String> {
                wire.into_iter()
                    .enumerate()
                    .map(|(i, authority)| {
                        let what = format!("{what}[{i}]");
                        let chain = authority
                            .cert_chain
                            .certificates
                            .iter()
                            .map(|c| b64(&format!("{what}.certChain"), &c.raw_bytes))
                            .collect::<Result<Vec<_>, _>>()?;
                        if chain.is_empty() {
                            return Err(format!("{what}.certChain is empty"));
                        }
                        Ok(Authority {
                            chain,
                            valid: window(&what, authority.valid_for)?,
                            uri: authority.uri,
                        })
                    })
                    .collect()
            };
        Ok(TrustedRoot {
            tlogs: logs("tlogs", wire.tlogs)?,
            ctlogs: logs("ctlogs", wire.ctlogs)?,
            certificate_authorities: authorities(
                "certificateAuthorities",
                wire.certificate_authorities,
            )?,
            timestamp_authorities: authorities("timestampAuthorities", wire.timestamp_authorities)?,
        })
    }

    /// The Rekor log with this ID.
    pub fn tlog(&self, id: &[u8]) -> Option<&Log> {
        self.tlogs.iter().find(|log| log.id == id)
    }

    /// The CT log with this ID.
    pub fn ctlog(&self, id: &[u8]) -> Option<&Log> {
        self.ctlogs.iter().find(|log| log.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_public_good_root_parses_whole() {
        let root = TrustedRoot::parse(PUBLIC_GOOD.as_bytes()).expect("embedded root");
        assert_eq!(root.tlogs.len(), 2);
        assert_eq!(root.ctlogs.len(), 2);
        assert_eq!(root.certificate_authorities.len(), 2);
        assert_eq!(root.timestamp_authorities.len(), 1);
        // A Rekor v1 log's ID is the SHA-256 of its key.
        let v1 = &root.tlogs[0];
        assert_eq!(v1.key.kind, KeyKind::EcdsaP256Sha256);
        assert_eq!(v1.id, v1.key.spki_sha256());
        assert_eq!(root.tlogs[1].key.kind, KeyKind::Ed25519);
    }

    #[test]
    fn windows_include_both_ends() {
        let w = Window {
            start_ms: 10,
            end_ms: Some(20),
        };
        assert!(w.contains(10) && w.contains(20));
        assert!(!w.contains(9) && !w.contains(21));
    }

    #[test]
    fn a_root_with_an_unreadable_key_is_refused_whole() {
        let text = PUBLIC_GOOD.replacen("\"rawBytes\": \"MFkw", "\"rawBytes\": \"!!!!", 1);
        assert!(TrustedRoot::parse(text.as_bytes()).is_err());
    }
}
