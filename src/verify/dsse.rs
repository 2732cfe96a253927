//! DSSE envelopes carrying in-toto statements (cosign `.att` layers,
//! `cosign attest`): the signature is checked over PAE with the attestor's
//! keys, then the *signed* statement: payload type, statement type, subject
//! digest, predicate type and the policy's conditions. Pure: no I/O.

use base64::Engine as _;
use serde::Deserialize;

use crate::crypto::decode_base64_lenient;
use crate::policy::attestation::Requirement;
use crate::policy::{Attestor, Check};

/// The only payload type an attestation may carry.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Statement versions understood.
const STATEMENT_TYPES: [&str; 2] = [
    "https://in-toto.io/Statement/v0.1",
    "https://in-toto.io/Statement/v1",
];

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    #[serde(default)]
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    statement_type: String,
    #[serde(default)]
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    #[serde(default)]
    predicate: serde_json::Value,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    digest: std::collections::HashMap<String, String>,
}

/// DSSE's pre-authentication encoding.
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

/// A verified, parsed statement.
pub struct Verified {
    pub key_id: String,
    statement: Statement,
}

/// Verifies an envelope's signature with `attestor`'s keys and parses its
/// statement. `Err` is the evidence's verdict.
pub fn verify(envelope: &[u8], attestor: &Attestor) -> Result<Verified, Check> {
    let malformed = |reason: String| Check::Malformed { reason };
    let env: Envelope = serde_json::from_slice(envelope)
        .map_err(|e| malformed(format!("not a DSSE envelope: {e}")))?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(env.payload.trim())
        .map_err(|_| malformed("DSSE payload is not base64".into()))?;
    let message = pae(&env.payload_type, &payload);
    let key = env.signatures.iter().find_map(|s| {
        let sig = decode_base64_lenient(&s.sig)?;
        attestor.keys.iter().find(|k| k.key.verify(&message, &sig))
    });
    let Some(key) = key else {
        return Err(Check::UnknownKey);
    };
    // Only signed content is interpreted from here on.
    if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(malformed(format!(
            "payloadType {:?} is not {IN_TOTO_PAYLOAD_TYPE}",
            env.payload_type
        )));
    }
    let statement: Statement = serde_json::from_slice(&payload)
        .map_err(|e| malformed(format!("signed payload is not an in-toto statement: {e}")))?;
    if !STATEMENT_TYPES.contains(&statement.statement_type.as_str()) {
        return Err(malformed(format!(
            "unknown statement _type {:?}",
            statement.statement_type
        )));
    }
    Ok(Verified {
        key_id: key.id.clone(),
        statement,
    })
}

impl Verified {
    pub fn predicate_type(&self) -> &str {
        &self.statement.predicate_type
    }

    /// Checks the statement binds `digest_hex` (sha256) and meets
    /// `requirement` (when given; without one, any predicate type counts,
    /// as for cosign v3's `https://sigstore.dev/cosign/sign/v1`).
    pub fn check(&self, digest_hex: &str, requirement: Option<&Requirement>) -> Check {
        let subjects = &self.statement.subject;
        if !subjects
            .iter()
            .any(|s| s.digest.get("sha256").is_some_and(|d| d == digest_hex))
        {
            let signed: Vec<&str> = subjects
                .iter()
                .filter_map(|s| s.digest.get("sha256").map(String::as_str))
                .collect();
            return if signed.is_empty() {
                Check::Malformed {
                    reason: "the statement names no sha256 subject".into(),
                }
            } else {
                Check::OtherDigest {
                    signed: signed
                        .iter()
                        .map(|d| format!("sha256:{d}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            };
        }
        if let Some(requirement) = requirement {
            if self.statement.predicate_type != requirement.predicate_type {
                return Check::OtherPredicate {
                    signed: self.statement.predicate_type.clone(),
                };
            }
            if let Some(reason) = requirement.first_failure(&self.statement.predicate) {
                return Check::ConditionFailed { reason };
            }
        }
        Check::Valid {
            key_id: self.key_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AttestorDoc, PkixKeyDoc, Policy, PolicyDoc, PublicKeyDoc};
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/cosign/dsse-attestation-vectors")
    }

    fn attestor(pem: &str) -> Policy {
        let doc: PolicyDoc =
            serde_yaml_ng::from_str("defaultAdmissionRule: {evaluationMode: ALWAYS_ALLOW}")
                .unwrap();
        let a = AttestorDoc {
            name: "ci".into(),
            description: None,
            public_keys: vec![PublicKeyDoc {
                id: Some("cosign".into()),
                comment: None,
                pkix_public_key: Some(PkixKeyDoc {
                    public_key_pem: pem.into(),
                    signature_algorithm: "ECDSA_P256_SHA256".into(),
                }),
                ascii_armored_pgp_public_key: None,
            }],
            signature_repository: None,
            attestations: Vec::new(),
        };
        Policy::compile(&doc, &[a]).unwrap()
    }

    const BLOB: &str = "658781cd4ed9bca60dacd09f7bb914bb51502e8b5d619f57f39a1d652596cc24";

    fn check(case: &str, requirement: Option<&Requirement>) -> Check {
        let dir = fixtures();
        let pem = std::fs::read_to_string(dir.join("cosign.pub")).unwrap();
        let policy = attestor(&pem);
        let env = std::fs::read(dir.join(format!("{case}.dsse.json"))).unwrap();
        match verify(&env, &policy.attestors["ci"]) {
            Ok(v) => v.check(BLOB, requirement),
            Err(c) => c,
        }
    }

    fn slsa02() -> Requirement {
        Requirement {
            predicate_type: "https://slsa.dev/provenance/v0.2".into(),
            conditions: Vec::new(),
        }
    }

    #[test]
    fn cosign_dsse_vectors_give_the_readme_results() {
        assert_eq!(
            check("blobSLSAProvenanceSignature", Some(&slsa02())),
            Check::Valid {
                key_id: "cosign".into()
            }
        );
        assert!(matches!(
            check("dssePredicateEmptySubject", None),
            Check::Malformed { .. }
        ));
        assert!(matches!(
            check("dssePredicateMissingSha256", None),
            Check::Malformed { .. }
        ));
        assert!(matches!(
            check("dssePredicateMultipleSubjects", None),
            Check::Valid { .. }
        ));
        assert!(matches!(
            check("dssePredicateMultipleSubjectsInvalid", None),
            Check::OtherDigest { .. }
        ));
        let custom = Requirement {
            predicate_type: "https://cosign.sigstore.dev/attestation/v1".into(),
            conditions: Vec::new(),
        };
        assert!(matches!(
            check("blobSLSAProvenanceSignature", Some(&custom)),
            Check::OtherPredicate { .. }
        ));
    }

    #[test]
    fn other_blob_and_other_key_and_tampering_fail() {
        let dir = fixtures();
        let pem = std::fs::read_to_string(dir.join("cosign.pub")).unwrap();
        let policy = attestor(&pem);
        let env = std::fs::read(dir.join("blobSLSAProvenanceSignature.dsse.json")).unwrap();
        let v = verify(&env, &policy.attestors["ci"]).ok().unwrap();
        let other = "sha256 of another-blob";
        assert!(matches!(v.check(other, None), Check::OtherDigest { .. }));
        // Another key.
        let other_key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let other_pem = p256::pkcs8::EncodePublicKey::to_public_key_pem(
            other_key.verifying_key(),
            p256::pkcs8::LineEnding::LF,
        )
        .unwrap();
        let other_policy = attestor(&other_pem);
        assert!(matches!(
            verify(&env, &other_policy.attestors["ci"]),
            Err(Check::UnknownKey)
        ));
        // The payload edited after signing.
        let mut value: serde_json::Value = serde_json::from_slice(&env).unwrap();
        let payload = value["payload"].as_str().unwrap().to_owned();
        let mut statement = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .unwrap();
        let text = String::from_utf8(statement.clone())
            .unwrap()
            .replace("\"id\":\"2\"", "\"id\":\"3\"");
        statement = text.into_bytes();
        value["payload"] = base64::engine::general_purpose::STANDARD
            .encode(statement)
            .into();
        let tampered = serde_json::to_vec(&value).unwrap();
        assert!(matches!(
            verify(&tampered, &policy.attestors["ci"]),
            Err(Check::UnknownKey)
        ));
    }

    #[test]
    fn pae_matches_the_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }
}
