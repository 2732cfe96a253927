//! DSSE envelopes carrying in-toto statements (cosign `.att` layers,
//! `cosign attest`, the `dsseEnvelope` of a sigstore bundle): the signature
//! is checked over PAE with the attestor's keys, then the *signed*
//! statement: payload type, statement type, subject digest, predicate type
//! and the policy's conditions. Pure: no I/O.
//!
//! [`Envelope`] is the envelope as serialized, trusted for nothing;
//! [`Envelope::verify`] turns it into a [`Verified`] statement, the only
//! thing verdicts are drawn from. [`claimed_subjects`] reads the
//! *unverified* statement, for indexing only.

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

/// A DSSE envelope as serialized: `{"payloadType", "payload" (base64),
/// "signatures": [{"keyid", "sig" (base64)}]}`. Nothing in it is trusted
/// until [`Envelope::verify`] succeeds.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    #[serde(default)]
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, Deserialize)]
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
    name: String,
    #[serde(default)]
    digest: std::collections::HashMap<String, String>,
}

/// What the signed content must say about the pulled repository: the
/// rule's `signedIdentity`, applied to every repository the signed
/// content names for the image (in-toto subject names, cosign's
/// `cosign/sign/v1` statements); `require_named` refuses content that
/// names none.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// Canonical `<registry>/<repository>` pulled.
    pub name: &'a str,
    pub identity: &'a crate::policy::SignedIdentity,
    pub require_named: bool,
}

/// What evidence that names no repository is noted with.
pub const UNNAMED: &str = crate::policy::UNNAMED_NOTE;

impl Binding<'_> {
    /// Checks the repositories the signed content names (`names`, empty
    /// when it names none).
    pub fn check(&self, names: &[&str]) -> Result<(), Check> {
        if names.is_empty() {
            return if self.require_named {
                Err(Check::OtherRepository {
                    signed: "none (the signed content names no repository, and the rule sets requireNamedIdentity)".into(),
                })
            } else {
                Ok(())
            };
        }
        if names
            .iter()
            .any(|n| super::simple_signing::identity_matches(n, self.name, self.identity))
        {
            Ok(())
        } else {
            Err(Check::OtherRepository {
                signed: names.join(", "),
            })
        }
    }
}

pub use crate::crypto::pae;

/// Whether `text` is a sha256 digest in the form subjects and indexes use:
/// 64 lowercase hex digits.
pub(crate) fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Envelope {
    /// Parses an envelope's JSON. The error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a DSSE envelope: {e}"))
    }

    /// The payload type as written (unverified until [`Envelope::verify`]).
    pub fn payload_type(&self) -> &str {
        &self.payload_type
    }

    fn decoded_payload(&self) -> Option<Vec<u8>> {
        decode_base64_lenient(&self.payload)
    }

    /// Verifies the signature with `attestor`'s keys and parses the signed
    /// statement. `Err` is the evidence's verdict: [`Check::UnknownKey`]
    /// when no key verifies any signature.
    pub fn verify(&self, attestor: &Attestor) -> Result<Verified, Check> {
        let malformed = |reason: String| Check::Malformed { reason };
        let payload = self
            .decoded_payload()
            .ok_or_else(|| malformed("DSSE payload is empty or not base64".into()))?;
        let message = pae(&self.payload_type, &payload);
        let key = self.signatures.iter().find_map(|s| {
            let sig = decode_base64_lenient(&s.sig)?;
            attestor.keys.iter().find(|k| k.key.verify(&message, &sig))
        });
        let Some(key) = key else {
            return Err(Check::UnknownKey);
        };
        Verified::from_signed(&self.payload_type, &payload, key.id.clone())
    }

    /// The names the statement *claims* for the subjects with sha256
    /// `digest_hex`, read without verifying anything: for notes only.
    pub fn claimed_names(&self, digest_hex: &str) -> Vec<String> {
        let Some(payload) = self.decoded_payload() else {
            return Vec::new();
        };
        let Ok(statement) = serde_json::from_slice::<Statement>(&payload) else {
            return Vec::new();
        };
        statement
            .subject
            .into_iter()
            .filter(|s| s.digest.get("sha256").is_some_and(|d| d == digest_hex))
            .map(|s| s.name)
            .filter(|n| !n.is_empty())
            .collect()
    }

    /// The sha256 subjects (lowercase hex) the statement *claims*, read
    /// without verifying anything: only for indexing evidence by digest
    /// (an attestation store), never for a verdict. Malformed content
    /// claims nothing.
    pub fn claimed_subjects(&self) -> Vec<String> {
        let Some(payload) = self.decoded_payload() else {
            return Vec::new();
        };
        let Ok(statement) = serde_json::from_slice::<serde_json::Value>(&payload) else {
            return Vec::new();
        };
        let subjects = statement
            .get("subject")
            .and_then(serde_json::Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut out: Vec<String> = subjects
            .iter()
            .filter_map(|s| s.pointer("/digest/sha256")?.as_str())
            .filter(|d| is_sha256_hex(d))
            .map(str::to_owned)
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A verified, parsed statement.
pub struct Verified {
    pub key_id: String,
    statement: Statement,
}

impl Verified {
    /// Reads a statement whose signature verified (with an attestor's key,
    /// or keyless by `sigstore`), signed by `key_id`. Only signed content
    /// is interpreted: this is never called before the signature held.
    pub fn from_signed(
        payload_type: &str,
        payload: &[u8],
        key_id: String,
    ) -> Result<Verified, Check> {
        let malformed = |reason: String| Check::Malformed { reason };
        if payload_type != IN_TOTO_PAYLOAD_TYPE {
            return Err(malformed(format!(
                "payloadType {payload_type:?} is not {IN_TOTO_PAYLOAD_TYPE}"
            )));
        }
        let statement: Statement = serde_json::from_slice(payload)
            .map_err(|e| malformed(format!("signed payload is not an in-toto statement: {e}")))?;
        if !STATEMENT_TYPES.contains(&statement.statement_type.as_str()) {
            return Err(malformed(format!(
                "unknown statement _type {:?}",
                statement.statement_type
            )));
        }
        Ok(Verified { key_id, statement })
    }

    /// The names the signed statement gives the subjects with sha256
    /// `digest_hex` (empty names left out).
    pub fn subject_names(&self, digest_hex: &str) -> Vec<&str> {
        self.statement
            .subject
            .iter()
            .filter(|s| s.digest.get("sha256").is_some_and(|d| d == digest_hex))
            .map(|s| s.name.as_str())
            .filter(|n| !n.is_empty())
            .collect()
    }

    pub fn predicate_type(&self) -> &str {
        &self.statement.predicate_type
    }

    /// Checks the statement binds `digest_hex` (sha256) and meets
    /// `requirement` (when given; without one, any predicate type counts,
    /// as for cosign v3's `https://sigstore.dev/cosign/sign/v1`).
    pub fn check(
        &self,
        digest_hex: &str,
        requirement: Option<&Requirement>,
        binding: Option<&Binding<'_>>,
    ) -> Check {
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
        if let Some(binding) = binding {
            if let Err(check) = binding.check(&self.subject_names(digest_hex)) {
                return check;
            }
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

/// Verifies a serialized envelope's signature with `attestor`'s keys and
/// parses its statement. `Err` is the evidence's verdict.
pub fn verify(envelope: &[u8], attestor: &Attestor) -> Result<Verified, Check> {
    Envelope::parse(envelope)
        .map_err(|reason| Check::Malformed { reason })?
        .verify(attestor)
}

/// The sha256 subjects a serialized envelope *claims* (unverified; see
/// [`Envelope::claimed_subjects`]): for indexing only.
pub fn claimed_subjects(envelope: &[u8]) -> Vec<String> {
    Envelope::parse(envelope)
        .map(|e| e.claimed_subjects())
        .unwrap_or_default()
}

/// Checks a verified statement for an attestor that requires
/// attestations: valid if it binds `digest_hex` and meets any of the
/// attestor's requirements; otherwise the most telling failure (a failed
/// condition on the right predicate type before "another predicate
/// type", so the message names what to fix).
pub fn check_for_attestor(
    verified: &Verified,
    attestor: &Attestor,
    digest_hex: &str,
    binding: Option<&Binding<'_>>,
) -> Check {
    let checks: Vec<Check> = attestor
        .attestations
        .iter()
        .map(|r| verified.check(digest_hex, Some(r), binding))
        .collect();
    if let Some(valid) = checks.iter().find(|c| matches!(c, Check::Valid { .. })) {
        return valid.clone();
    }
    checks
        .iter()
        .find(|c| !matches!(c, Check::OtherPredicate { .. }))
        .or(checks.first())
        .cloned()
        .unwrap_or(Check::Malformed {
            reason: "the attestor requires no attestation to check".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;
    use crate::verify::testing::{attestor, fixture, fixture_text, p256_pair, pem_key};
    use base64::Engine as _;

    const VECTORS: &str = "cosign/dsse-attestation-vectors";

    /// A vector's envelope, `{case}.dsse.json`.
    fn envelope(case: &str) -> Vec<u8> {
        fixture(&format!("{VECTORS}/{case}.dsse.json"))
    }

    /// The attestor "ci" holding the vectors' key as "cosign".
    fn cosign_attestor() -> Attestor {
        let pem = fixture_text(&format!("{VECTORS}/cosign.pub"));
        attestor(
            "ci",
            vec![pem_key("cosign", &pem, Algorithm::EcdsaP256Sha256)],
            &[],
        )
    }

    const BLOB: &str = "658781cd4ed9bca60dacd09f7bb914bb51502e8b5d619f57f39a1d652596cc24";

    fn check(case: &str, requirement: Option<&Requirement>) -> Check {
        let env = envelope(case);
        match verify(&env, &cosign_attestor()) {
            Ok(v) => v.check(BLOB, requirement, None),
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
        let ci = cosign_attestor();
        let env = envelope("blobSLSAProvenanceSignature");
        let v = verify(&env, &ci).ok().unwrap();
        let other = "sha256 of another-blob";
        assert!(matches!(
            v.check(other, None, None),
            Check::OtherDigest { .. }
        ));
        // Another key.
        let other_attestor = attestor("ci", vec![p256_pair("cosign").1], &[]);
        assert!(matches!(
            verify(&env, &other_attestor),
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
        assert!(matches!(verify(&tampered, &ci), Err(Check::UnknownKey)));
    }

    fn requirement(predicate_type: &str, builder_id: Option<&str>) -> Requirement {
        let doc = crate::config::policy::RequirementDoc {
            predicate_type: predicate_type.into(),
            conditions: builder_id
                .map(|id| crate::config::policy::ConditionDoc {
                    path: "/builder/id".into(),
                    equals: Some(id.into()),
                    one_of: None,
                    matches: None,
                    exists: None,
                })
                .into_iter()
                .collect(),
        };
        Requirement::compile(&doc).unwrap()
    }

    #[test]
    fn check_for_attestor_picks_the_most_telling_result() {
        let mut ci = cosign_attestor();
        let env = envelope("blobSLSAProvenanceSignature");
        let custom = "https://cosign.sigstore.dev/attestation/v1";
        let slsa = "https://slsa.dev/provenance/v0.2";
        let mut check_with = |requirements: Vec<Requirement>, digest: &str| {
            ci.attestations = requirements;
            let verified = verify(&env, &ci).ok().unwrap();
            check_for_attestor(&verified, &ci, digest, None)
        };
        assert_eq!(
            check_with(
                vec![requirement(custom, None), requirement(slsa, Some("2"))],
                BLOB
            ),
            Check::Valid {
                key_id: "cosign".into()
            }
        );
        // A failed condition says more than "another predicate type",
        // whatever the order of the requirements.
        assert!(matches!(
            check_with(
                vec![requirement(custom, None), requirement(slsa, Some("3"))],
                BLOB
            ),
            Check::ConditionFailed { .. }
        ));
        assert_eq!(
            check_with(vec![requirement(custom, None)], BLOB),
            Check::OtherPredicate {
                signed: slsa.into()
            }
        );
        assert!(matches!(
            check_with(vec![requirement(slsa, None)], "00"),
            Check::OtherDigest { .. }
        ));
        assert!(matches!(
            check_with(Vec::new(), BLOB),
            Check::Malformed { .. }
        ));
    }

    #[test]
    fn claimed_subjects_read_the_unverified_statement() {
        assert_eq!(
            claimed_subjects(&envelope("blobSLSAProvenanceSignature")),
            vec![BLOB.to_owned()]
        );
        assert_eq!(
            claimed_subjects(&envelope("dssePredicateMultipleSubjects")).len(),
            2
        );
        assert!(claimed_subjects(&envelope("dssePredicateEmptySubject")).is_empty());
        assert!(claimed_subjects(&envelope("dssePredicateMissingSha256")).is_empty());
        assert!(claimed_subjects(b"not json").is_empty());
        // Claimed even when no signature verifies: indexing only.
        let statement = format!(
            r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha256":"{BLOB}"}}}},{{"digest":{{"sha256":"NOT-HEX"}}}}],"predicateType":"x"}}"#
        );
        let envelope = serde_json::json!({
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "payload": base64::engine::general_purpose::STANDARD.encode(statement),
            "signatures": [],
        });
        let parsed = Envelope::parse(&serde_json::to_vec(&envelope).unwrap()).unwrap();
        assert_eq!(parsed.payload_type(), IN_TOTO_PAYLOAD_TYPE);
        assert_eq!(parsed.claimed_subjects(), vec![BLOB.to_owned()]);
    }

    #[test]
    fn pae_matches_the_spec_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }
}
