//! Sigstore bundles (cosign v3's `--new-bundle-format`, attached to images
//! as OCI 1.1 referrers): parsing, and checking one bundle for one
//! attestor. Pure: no I/O.
//!
//! A bundle (`application/vnd.dev.sigstore.bundle.v0.3+json`, or the older
//! `application/vnd.dev.sigstore.bundle+json;version=0.1|0.2`) holds
//! verification material and one of:
//!
//! - a `dsseEnvelope`: an in-toto statement signed over PAE. `cosign sign`
//!   (v3) signs images this way with the predicate type
//!   [`SIGNATURE_PREDICATE_TYPE`]; `cosign attest` with the user's.
//!   Verified by [`dsse`], classified by the *signed* predicate type only
//!   (the referrer's `dev.sigstore.bundle.predicateType` annotation is not
//!   signed and has been seen lying).
//! - a `messageSignature`: a signature over the artifact's bytes
//!   (`cosign sign-blob`). It is a signature, never an attestation, and
//!   verifying it needs the artifact's exact bytes.
//!
//! Only the attestor's configured keys verify. `publicKey.hint` is
//! recorded but never used to pick or reject a key; transparency log
//! entries are counted, not required. A keyless bundle (a Fulcio
//! certificate) is verified here only by key; for an attestor with
//! `keyless:` identities the verifier hands it to [`crate::sigstore`]
//! instead. One no configured key verifies, for an attestor without
//! `keyless:`, is [`Check::Unsupported`], not merely signed by an unknown
//! key.

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::dsse::{self, Envelope};
use crate::crypto::decode_base64_lenient;
use crate::policy::attestation::{Requirement, SIGNATURE_PREDICATE_TYPE};
use crate::policy::{Attestor, Check};

/// The v0.3 bundle media type (cosign v3).
pub const MEDIA_TYPE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The media type older bundles carry, with a `version` parameter.
const MEDIA_TYPE_VERSIONED: &str = "application/vnd.dev.sigstore.bundle+json";
/// `version` parameter values understood (0.3 was briefly written this way).
const VERSIONS: [&str; 3] = ["0.1", "0.2", "0.3"];
/// The only message digest algorithm understood.
const SHA2_256: &str = "SHA2_256";
/// Why a keyless bundle that no configured key verifies is not checked.
const KEYLESS: &str = "signed keyless (a Fulcio certificate), and the attestor has no \
                       `keyless:` identities to verify it with";

/// Whether `media_type` is a sigstore bundle media type Portcullis reads.
/// Case-insensitive, tolerant of spaces around `;` and `=`.
pub fn is_bundle_media_type(media_type: &str) -> bool {
    let mut parts = media_type.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default().to_ascii_lowercase();
    let params: Vec<&str> = parts.collect();
    if essence == MEDIA_TYPE_V03 {
        return params.is_empty();
    }
    if essence != MEDIA_TYPE_VERSIONED {
        return false;
    }
    match params.as_slice() {
        [param] => param.split_once('=').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("version")
                && VERSIONS.contains(&value.trim().trim_matches('"'))
        }),
        _ => false,
    }
}

/// The manifest a bundle must bind.
#[derive(Debug, Clone, Copy)]
pub struct Artifact<'a> {
    /// The manifest's sha256, as 64 lowercase hex digits.
    pub digest_hex: &'a str,
    /// The manifest's exact bytes, when available: a `messageSignature`
    /// signs them, so it cannot be checked without them.
    pub bytes: Option<&'a [u8]>,
    /// The repository the signed content must name (see
    /// [`dsse::Binding`]); `None` checks none (unit tests, indexing).
    pub binding: Option<dsse::Binding<'a>>,
}

/// A parsed bundle. Nothing in it is trusted until [`Bundle::check`].
#[derive(Debug, Clone)]
pub struct Bundle {
    media_type: String,
    content: Content,
    hint: Option<String>,
    keyless: bool,
    tlog_entries: usize,
}

#[derive(Debug, Clone)]
enum Content {
    Dsse(Envelope),
    Message(MessageSignature),
}

/// A `messageSignature`, decoded.
#[derive(Debug, Clone)]
struct MessageSignature {
    /// `messageDigest.algorithm` (`HASH_ALGORITHM_UNSPECIFIED` if absent).
    algorithm: String,
    /// `messageDigest.digest`: identifies the artifact; not what the
    /// signature is checked against.
    digest: Vec<u8>,
    signature: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBundle {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    verification_material: Option<WireMaterial>,
    #[serde(default)]
    dsse_envelope: Option<Value>,
    #[serde(default)]
    message_signature: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMaterial {
    #[serde(default)]
    public_key: Option<WirePublicKey>,
    #[serde(default)]
    certificate: Option<Value>,
    #[serde(default)]
    x509_certificate_chain: Option<Value>,
    #[serde(default)]
    tlog_entries: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct WirePublicKey {
    #[serde(default)]
    hint: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMessageSignature {
    #[serde(default)]
    message_digest: Option<WireHashOutput>,
    #[serde(default)]
    signature: Option<String>,
}

#[derive(Deserialize)]
struct WireHashOutput {
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    digest: Option<String>,
}

/// Parses a bundle's JSON. The error says which field is wrong.
pub fn parse(bytes: &[u8]) -> Result<Bundle, String> {
    let wire: WireBundle =
        serde_json::from_slice(bytes).map_err(|e| format!("not a sigstore bundle: {e}"))?;
    let media_type = wire
        .media_type
        .ok_or("not a sigstore bundle: mediaType is missing")?;
    if !is_bundle_media_type(&media_type) {
        return Err(format!(
            "unsupported bundle mediaType {media_type:?} (expected {MEDIA_TYPE_V03} or \
             {MEDIA_TYPE_VERSIONED};version=0.1|0.2)"
        ));
    }
    let material = wire
        .verification_material
        .ok_or("verificationMaterial is missing")?;
    let kinds = [
        material.public_key.is_some(),
        material.certificate.is_some(),
        material.x509_certificate_chain.is_some(),
    ];
    if kinds.iter().filter(|present| **present).count() > 1 {
        return Err(
            "verificationMaterial holds more than one of publicKey, certificate and \
                    x509CertificateChain"
                .into(),
        );
    }
    let content = match (wire.dsse_envelope, wire.message_signature) {
        (Some(envelope), None) => Content::Dsse(
            serde_json::from_value(envelope).map_err(|e| format!("dsseEnvelope: {e}"))?,
        ),
        (None, Some(message)) => Content::Message(parse_message_signature(message)?),
        (Some(_), Some(_)) => {
            return Err("the bundle holds both dsseEnvelope and messageSignature".into())
        }
        (None, None) => {
            return Err("the bundle holds neither dsseEnvelope nor messageSignature".into())
        }
    };
    Ok(Bundle {
        media_type,
        content,
        hint: material.public_key.and_then(|k| k.hint),
        keyless: material.certificate.is_some() || material.x509_certificate_chain.is_some(),
        tlog_entries: material.tlog_entries.map_or(0, |entries| entries.len()),
    })
}

fn parse_message_signature(value: Value) -> Result<MessageSignature, String> {
    let wire: WireMessageSignature =
        serde_json::from_value(value).map_err(|e| format!("messageSignature: {e}"))?;
    let signature = wire
        .signature
        .ok_or("messageSignature.signature is missing")?;
    let signature = decode_base64_lenient(&signature)
        .ok_or("messageSignature.signature is empty or not base64")?;
    let hash = wire
        .message_digest
        .ok_or("messageSignature.messageDigest is missing")?;
    let algorithm = hash
        .algorithm
        .unwrap_or_else(|| "HASH_ALGORITHM_UNSPECIFIED".into());
    let digest = hash
        .digest
        .as_deref()
        .and_then(decode_base64_lenient)
        .ok_or("messageSignature.messageDigest.digest is missing or not base64")?;
    if algorithm == SHA2_256 && digest.len() != 32 {
        return Err(format!(
            "messageSignature.messageDigest.digest is {} bytes; a SHA2_256 digest is 32",
            digest.len()
        ));
    }
    Ok(MessageSignature {
        algorithm,
        digest,
        signature,
    })
}

impl Bundle {
    /// The media type as written.
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// `verificationMaterial.publicKey.hint`: advisory only, never used to
    /// pick or reject a key.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// Whether the bundle was signed keyless (a `certificate` or an
    /// `x509CertificateChain` instead of a public key hint).
    pub fn is_keyless(&self) -> bool {
        self.keyless
    }

    /// Transparency log entries carried (recorded, not verified or
    /// required).
    pub fn tlog_entries(&self) -> usize {
        self.tlog_entries
    }

    /// Whether the content is a DSSE envelope (else a message signature).
    pub fn is_dsse(&self) -> bool {
        matches!(self.content, Content::Dsse(_))
    }

    /// The sha256 digests (lowercase hex) the bundle *claims* to be about,
    /// read without verifying anything: the statement's subjects, or a
    /// message signature's SHA2_256 `messageDigest`. Only for indexing
    /// evidence by digest, never for a verdict.
    /// Whether the signed content names a repository for `digest_hex`
    /// (a DSSE statement's subject name); a message signature never does.
    /// Read without verifying: only for notes on evidence that verified.
    pub fn names_repository(&self, digest_hex: &str) -> bool {
        match &self.content {
            Content::Dsse(envelope) => !envelope.claimed_names(digest_hex).is_empty(),
            Content::Message(_) => false,
        }
    }

    pub fn claimed_subjects(&self) -> Vec<String> {
        match &self.content {
            Content::Dsse(envelope) => envelope.claimed_subjects(),
            Content::Message(message) if message.algorithm == SHA2_256 => {
                vec![hex::encode(&message.digest)]
            }
            Content::Message(_) => Vec::new(),
        }
    }

    /// Checks the bundle for `attestor` against `artifact`. Returns the
    /// verdict and, when a DSSE signature verified, the signed predicate
    /// type.
    ///
    /// An attestor without required attestations wants a signature: a
    /// DSSE statement of [`SIGNATURE_PREDICATE_TYPE`] or a message
    /// signature. One with requirements wants a DSSE statement meeting
    /// one of them.
    pub fn check(&self, attestor: &Attestor, artifact: &Artifact<'_>) -> (Check, Option<String>) {
        match &self.content {
            Content::Dsse(envelope) => self.check_dsse(envelope, attestor, artifact),
            Content::Message(message) => {
                let check = self.check_message(message, attestor, artifact);
                // A message signature names no repository.
                let check = match (check, &artifact.binding) {
                    (Check::Valid { key_id }, Some(binding)) => match binding.check(&[]) {
                        Ok(()) => Check::Valid { key_id },
                        Err(refused) => refused,
                    },
                    (check, _) => check,
                };
                (check, None)
            }
        }
    }

    fn check_dsse(
        &self,
        envelope: &Envelope,
        attestor: &Attestor,
        artifact: &Artifact<'_>,
    ) -> (Check, Option<String>) {
        let digest_hex = artifact.digest_hex;
        let binding = artifact.binding.as_ref();
        let verified = match envelope.verify(attestor) {
            Ok(verified) => verified,
            Err(check) => return (self.unverified(check), None),
        };
        let check = if attestor.attestations.is_empty() {
            let signature = Requirement {
                predicate_type: SIGNATURE_PREDICATE_TYPE.into(),
                conditions: Vec::new(),
            };
            verified.check(digest_hex, Some(&signature), binding)
        } else {
            dsse::check_for_attestor(&verified, attestor, digest_hex, binding)
        };
        (check, Some(verified.predicate_type().to_owned()))
    }

    fn check_message(
        &self,
        message: &MessageSignature,
        attestor: &Attestor,
        artifact: &Artifact<'_>,
    ) -> Check {
        if message.algorithm != SHA2_256 {
            return Check::Unsupported {
                reason: format!(
                    "message signature digest algorithm {} is not supported (only {SHA2_256})",
                    message.algorithm
                ),
            };
        }
        let signed = hex::encode(&message.digest);
        if signed != artifact.digest_hex {
            return Check::OtherDigest {
                signed: format!("sha256:{signed}"),
            };
        }
        let Some(bytes) = artifact.bytes else {
            return Check::Malformed {
                reason: "a message signature signs the artifact's bytes, which were not \
                         available to check it"
                    .into(),
            };
        };
        if hex::encode(Sha256::digest(bytes)) != artifact.digest_hex {
            return Check::Malformed {
                reason: format!(
                    "the artifact bytes given do not hash to sha256:{}",
                    artifact.digest_hex
                ),
            };
        }
        let Some(key) = attestor
            .keys
            .iter()
            .find(|k| k.key.verify(bytes, &message.signature))
        else {
            return self.unverified(Check::UnknownKey);
        };
        if !attestor.attestations.is_empty() {
            return Check::OtherPredicate {
                signed: "none (a message signature signs the artifact itself; it is not an \
                         attestation)"
                    .into(),
            };
        }
        Check::Valid {
            key_id: key.id.clone(),
        }
    }

    /// A keyless bundle no configured key verifies could only be checked
    /// against a trust root: say so rather than "unknown key".
    fn unverified(&self, check: Check) -> Check {
        if self.keyless && check == Check::UnknownKey {
            Check::Unsupported {
                reason: KEYLESS.into(),
            }
        } else {
            check
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Algorithm, PublicKey};
    use crate::policy::AttestorKey;
    use crate::verify::testing::{attestor, fixture, fixture_text, p256_pair, pem_key};
    use base64::Engine as _;

    const SLSA_02: &str = "https://slsa.dev/provenance/v0.2";
    /// sha256("some-payload"), the cosign DSSE vectors' blob.
    const BLOB: &str = "658781cd4ed9bca60dacd09f7bb914bb51502e8b5d619f57f39a1d652596cc24";
    /// The kubewarden-controller image signed by sigstore-rs' bundle_v03.
    const KUBEWARDEN: &str = "c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172";

    fn key_from_der(id: &str, spki: &[u8]) -> AttestorKey {
        AttestorKey {
            id: id.into(),
            key: PublicKey::from_spki_der(spki, Algorithm::EcdsaP256Sha256).unwrap(),
        }
    }

    fn digest_only(digest_hex: &str) -> Artifact<'_> {
        Artifact {
            digest_hex,
            bytes: None,
            binding: None,
        }
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// The SubjectPublicKeyInfo of an X.509 certificate (DER), walking
    /// Certificate → tbsCertificate → [version], serial, signature, issuer,
    /// validity, subject → subjectPublicKeyInfo.
    fn certificate_spki(cert: &[u8]) -> Vec<u8> {
        use spki::der::{asn1::AnyRef, Decode, Encode, Reader, SliceReader, Tag, TagNumber};
        let cert = AnyRef::from_der(cert).unwrap();
        let mut outer = SliceReader::new(cert.value()).unwrap();
        let tbs = AnyRef::decode(&mut outer).unwrap();
        let mut fields = SliceReader::new(tbs.value()).unwrap();
        let version = Tag::ContextSpecific {
            constructed: true,
            number: TagNumber::N0,
        };
        if fields.peek_tag().unwrap() == version {
            AnyRef::decode(&mut fields).unwrap();
        }
        for _serial_signature_issuer_validity_subject in 0..5 {
            AnyRef::decode(&mut fields).unwrap();
        }
        AnyRef::decode(&mut fields).unwrap().to_der().unwrap()
    }

    /// Re-encodes a bundle after editing its decoded DSSE payload.
    fn with_payload(bundle: &[u8], edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut value: Value = serde_json::from_slice(bundle).unwrap();
        let envelope = &mut value["dsseEnvelope"];
        let mut payload = b64.decode(envelope["payload"].as_str().unwrap()).unwrap();
        edit(&mut payload);
        envelope["payload"] = b64.encode(payload).into();
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn bundle_media_types() {
        for accepted in [
            "application/vnd.dev.sigstore.bundle.v0.3+json",
            "application/vnd.dev.sigstore.bundle+json;version=0.1",
            "application/vnd.dev.sigstore.bundle+json;version=0.2",
            "application/vnd.dev.sigstore.bundle+json; version=0.2",
            "application/vnd.dev.sigstore.bundle+json ; version = 0.1",
            "application/vnd.dev.sigstore.bundle+json;version=0.3",
            "Application/Vnd.Dev.Sigstore.Bundle.V0.3+JSON",
        ] {
            assert!(is_bundle_media_type(accepted), "{accepted}");
        }
        for rejected in [
            "application/vnd.dev.sigstore.bundle+json",
            "application/vnd.dev.sigstore.bundle+json;version=0.4",
            "application/vnd.dev.sigstore.bundle+json;version=0.1;x=y",
            "application/vnd.dev.sigstore.bundle.v0.4+json",
            "application/vnd.dsse.envelope.v1+json",
            "application/vnd.oci.empty.v1+json",
            "",
        ] {
            assert!(!is_bundle_media_type(rejected), "{rejected}");
        }
    }

    #[test]
    fn conformance_managed_key_bundles_are_valid_for_the_artifact() {
        let artifact = fixture("sigstore-conformance/a.txt");
        let digest = sha256_hex(&artifact);
        for case in ["managed-key-happy-path", "managed-key-and-trusted-root"] {
            let dir = format!("sigstore-conformance/{case}");
            let bundle = parse(&fixture(&format!("{dir}/bundle.sigstore.json"))).unwrap();
            let pem = fixture_text(&format!("{dir}/key.pub"));
            let signer = attestor(
                "ci",
                vec![pem_key("managed", &pem, Algorithm::EcdsaP256Sha256)],
                &[],
            );
            let (check, predicate) = bundle.check(
                &signer,
                &Artifact {
                    digest_hex: &digest,
                    bytes: Some(&artifact),
                    binding: None,
                },
            );
            assert_eq!(
                check,
                Check::Valid {
                    key_id: "managed".into()
                },
                "{case}"
            );
            assert_eq!(predicate, None, "{case}");
            assert!(!bundle.is_dsse() && !bundle.is_keyless(), "{case}");
            assert_eq!(bundle.tlog_entries(), 1, "{case}");
            assert_eq!(bundle.claimed_subjects(), vec![digest.clone()], "{case}");
            // The hint is recorded as written: base64(sha256(SPKI DER)).
            let (_, der) = crate::crypto::pem_decode(&pem).unwrap();
            let hint = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(der));
            assert_eq!(bundle.hint(), Some(hint.as_str()), "{case}");
        }
    }

    #[test]
    fn conformance_wrong_key_pem_does_not_load() {
        let pem = fixture_text("sigstore-conformance/managed-key-wrong-key_fail/key.pub");
        assert!(PublicKey::from_pem(&pem, Algorithm::EcdsaP256Sha256).is_err());
    }

    #[test]
    fn conformance_no_key_or_another_key_is_not_valid() {
        let artifact = fixture("sigstore-conformance/a.txt");
        let digest = sha256_hex(&artifact);
        let bundle = parse(&fixture(
            "sigstore-conformance/managed-key-no-key_fail/bundle.sigstore.json",
        ))
        .unwrap();
        let target = Artifact {
            digest_hex: &digest,
            bytes: Some(&artifact),
            binding: None,
        };
        // Key-based: never falls back to keyless, whatever the keys.
        assert_eq!(
            bundle.check(&attestor("ci", Vec::new(), &[]), &target).0,
            Check::UnknownKey
        );
        assert_eq!(
            bundle
                .check(&attestor("ci", vec![p256_pair("random").1], &[]), &target)
                .0,
            Check::UnknownKey
        );
    }

    #[test]
    fn message_signature_needs_the_exact_artifact_and_is_no_attestation() {
        let dir = "sigstore-conformance/managed-key-happy-path";
        let bytes = fixture(&format!("{dir}/bundle.sigstore.json"));
        let bundle = parse(&bytes).unwrap();
        let signer = attestor(
            "ci",
            vec![pem_key(
                "managed",
                &fixture_text(&format!("{dir}/key.pub")),
                Algorithm::EcdsaP256Sha256,
            )],
            &[],
        );
        let artifact = fixture("sigstore-conformance/a.txt");
        let digest = sha256_hex(&artifact);

        let mut mutated = artifact.clone();
        mutated[0] ^= 1;
        let mutated_digest = sha256_hex(&mutated);
        // The mutated artifact is another digest than the one signed.
        let (check, _) = bundle.check(
            &signer,
            &Artifact {
                digest_hex: &mutated_digest,
                bytes: Some(&mutated),
                binding: None,
            },
        );
        assert_eq!(
            check,
            Check::OtherDigest {
                signed: format!("sha256:{digest}")
            }
        );
        // Bytes that do not match the digest they are given with.
        let (check, _) = bundle.check(
            &signer,
            &Artifact {
                digest_hex: &digest,
                bytes: Some(&mutated),
                binding: None,
            },
        );
        assert!(matches!(check, Check::Malformed { .. }), "{check:?}");
        // Without the bytes nothing can be checked.
        let (check, _) = bundle.check(&signer, &digest_only(&digest));
        assert!(
            matches!(&check, Check::Malformed { reason } if reason.contains("bytes")),
            "{check:?}"
        );
        // The signature itself altered.
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut value: Value = serde_json::from_slice(&bytes).unwrap();
        let signature = &mut value["messageSignature"]["signature"];
        let mut der = b64.decode(signature.as_str().unwrap()).unwrap();
        der[20] ^= 1;
        *signature = b64.encode(der).into();
        let altered = parse(&serde_json::to_vec(&value).unwrap()).unwrap();
        let target = Artifact {
            digest_hex: &digest,
            bytes: Some(&artifact),
            binding: None,
        };
        assert_eq!(altered.check(&signer, &target).0, Check::UnknownKey);
        // A valid signature does not satisfy an attestor wanting provenance.
        let wants_provenance = attestor(
            "ci",
            vec![pem_key(
                "managed",
                &fixture_text(&format!("{dir}/key.pub")),
                Algorithm::EcdsaP256Sha256,
            )],
            &[SLSA_02],
        );
        assert!(matches!(
            bundle.check(&wants_provenance, &target).0,
            Check::OtherPredicate { .. }
        ));
    }

    #[test]
    fn cosign_constructed_new_bundles() {
        let dir = "cosign/dsse-attestation-vectors";
        let pem = fixture_text(&format!("{dir}/cosign.pub"));
        let valid = parse(&fixture(&format!(
            "{dir}/CONSTRUCTED-newbundle-valid.sigstore.json"
        )))
        .unwrap();
        assert_eq!(valid.hint(), Some("hint"));
        assert_eq!(valid.tlog_entries(), 0);
        assert!(valid.is_dsse() && !valid.is_keyless());
        assert_eq!(valid.claimed_subjects(), vec![BLOB.to_owned()]);

        let wants_provenance = attestor(
            "ci",
            vec![pem_key("cosign", &pem, Algorithm::EcdsaP256Sha256)],
            &[SLSA_02],
        );
        assert_eq!(
            valid.check(&wants_provenance, &digest_only(BLOB)),
            (
                Check::Valid {
                    key_id: "cosign".into()
                },
                Some(SLSA_02.to_owned())
            )
        );
        // Provenance is not a signature.
        let wants_signature = attestor(
            "ci",
            vec![pem_key("cosign", &pem, Algorithm::EcdsaP256Sha256)],
            &[],
        );
        assert_eq!(
            valid.check(&wants_signature, &digest_only(BLOB)),
            (
                Check::OtherPredicate {
                    signed: SLSA_02.into()
                },
                Some(SLSA_02.to_owned())
            )
        );
        let other_blob = sha256_hex(&fixture(&format!("{dir}/other-blob")));
        assert!(matches!(
            valid.check(&wants_provenance, &digest_only(&other_blob)).0,
            Check::OtherDigest { .. }
        ));

        let badsig = parse(&fixture(&format!(
            "{dir}/CONSTRUCTED-newbundle-badsig.sigstore.json"
        )))
        .unwrap();
        assert_eq!(
            badsig.check(&wants_provenance, &digest_only(BLOB)),
            (Check::UnknownKey, None)
        );
    }

    #[test]
    fn sigstore_rs_keyless_image_signature() {
        let bytes = fixture("sigstore-rs/bundle_v03/bundle_v03.json");
        let bundle = parse(&bytes).unwrap();
        assert!(bundle.is_keyless() && bundle.is_dsse());
        assert_eq!(bundle.hint(), None);
        assert_eq!(bundle.tlog_entries(), 1);
        assert_eq!(bundle.claimed_subjects(), vec![KUBEWARDEN.to_owned()]);

        // No configured key verifies it: keyless is reported as such.
        let (check, predicate) = bundle.check(
            &attestor("ci", vec![p256_pair("random").1], &[]),
            &digest_only(KUBEWARDEN),
        );
        assert!(
            matches!(&check, Check::Unsupported { reason } if reason.contains("keyless")),
            "{check:?}"
        );
        assert_eq!(predicate, None);

        // The leaf certificate's key, configured as a plain key, verifies
        // it as an image signature.
        let spki = certificate_spki(&fixture("sigstore-rs/bundle_v03/signing-cert.der"));
        let leaf = || attestor("ci", vec![key_from_der("leaf", &spki)], &[]);
        assert_eq!(
            bundle.check(&leaf(), &digest_only(KUBEWARDEN)),
            (
                Check::Valid {
                    key_id: "leaf".into()
                },
                Some(SIGNATURE_PREDICATE_TYPE.to_owned())
            )
        );
        assert!(matches!(
            bundle.check(&leaf(), &digest_only(BLOB)).0,
            Check::OtherDigest { .. }
        ));
        // A signature is not an attestation.
        let wants_provenance = attestor("ci", vec![key_from_der("leaf", &spki)], &[SLSA_02]);
        assert!(matches!(
            bundle.check(&wants_provenance, &digest_only(KUBEWARDEN)).0,
            Check::OtherPredicate { .. }
        ));

        // sigstore-rs' mutated negatives: no key verifies them any more
        // (and the bundle being keyless, that is reported as unsupported).
        let flipped = with_payload(&bytes, |p| {
            let last = p.len() - 3;
            p[last] ^= 1;
        });
        let predicate = with_payload(&bytes, |p| {
            let text = String::from_utf8(p.clone())
                .unwrap()
                .replace(SIGNATURE_PREDICATE_TYPE, "https://example.com/predicate/v1");
            *p = text.into_bytes();
        });
        for mutated in [flipped, predicate] {
            let mutated = parse(&mutated).unwrap();
            let (check, predicate) = mutated.check(&leaf(), &digest_only(KUBEWARDEN));
            assert!(!matches!(check, Check::Valid { .. }), "{check:?}");
            assert_eq!(predicate, None);
        }
    }

    #[test]
    fn cosign_keyless_attestation_bundle_is_unsupported() {
        let bundle = parse(&fixture(
            "cosign/oci-attestation-bundle/oci-attestation.sigstore.json",
        ))
        .unwrap();
        let subject = "732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4";
        assert!(bundle.is_keyless());
        assert_eq!(bundle.claimed_subjects(), vec![subject.to_owned()]);
        for requirements in [&[][..], &["https://cosign.sigstore.dev/attestation/v1"][..]] {
            let (check, _) = bundle.check(
                &attestor("ci", vec![p256_pair("random").1], requirements),
                &digest_only(subject),
            );
            assert!(matches!(check, Check::Unsupported { .. }), "{check:?}");
        }
    }

    #[test]
    fn older_bundle_versions_parse() {
        let dir = "cosign/dsse-attestation-vectors";
        let mut value: Value = serde_json::from_slice(&fixture(&format!(
            "{dir}/CONSTRUCTED-newbundle-valid.sigstore.json"
        )))
        .unwrap();
        value["mediaType"] = "application/vnd.dev.sigstore.bundle+json; version=0.2".into();
        value["verificationMaterial"] = serde_json::json!({
            "x509CertificateChain": {"certificates": [{"rawBytes": "MAA="}]},
            "tlogEntries": [{}, {}],
        });
        let bundle = parse(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert!(bundle.is_keyless());
        assert_eq!(bundle.tlog_entries(), 2);
        assert_eq!(
            bundle.media_type(),
            "application/vnd.dev.sigstore.bundle+json; version=0.2"
        );
        // A configured key still verifies a keyless bundle.
        let pem = fixture_text(&format!("{dir}/cosign.pub"));
        assert!(matches!(
            bundle
                .check(
                    &attestor(
                        "ci",
                        vec![pem_key("cosign", &pem, Algorithm::EcdsaP256Sha256)],
                        &[SLSA_02]
                    ),
                    &digest_only(BLOB)
                )
                .0,
            Check::Valid { .. }
        ));
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let envelope =
            r#"{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[]}"#;
        let message = r#"{"messageDigest":{"algorithm":"SHA2_256","digest":"oM/HEnHW4njlfNMy/5V8P3BD/do1TEy7GQow1W76Ab8="},"signature":"MEUC"}"#;
        let bundle = |media: &str, material: &str, content: &str| {
            format!(r#"{{"mediaType":"{media}","verificationMaterial":{material}{content}}}"#)
        };
        let key = r#"{"publicKey":{"hint":"h"}}"#;
        for (text, want) in [
            ("not json".to_owned(), "not a sigstore bundle"),
            (
                r#"{"verificationMaterial":{}}"#.to_owned(),
                "mediaType is missing",
            ),
            (
                bundle("application/json", key, ""),
                "unsupported bundle mediaType",
            ),
            (
                r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#.to_owned(),
                "verificationMaterial is missing",
            ),
            (
                bundle(MEDIA_TYPE_V03, key, ""),
                "neither dsseEnvelope nor messageSignature",
            ),
            (
                bundle(
                    MEDIA_TYPE_V03,
                    key,
                    &format!(r#","dsseEnvelope":{envelope},"messageSignature":{message}"#),
                ),
                "both dsseEnvelope and messageSignature",
            ),
            (
                bundle(
                    MEDIA_TYPE_V03,
                    r#"{"publicKey":{},"certificate":{"rawBytes":"MAA="}}"#,
                    &format!(r#","dsseEnvelope":{envelope}"#),
                ),
                "more than one of publicKey",
            ),
            (
                bundle(MEDIA_TYPE_V03, key, r#","dsseEnvelope":{"payload":"e30="}"#),
                "dsseEnvelope: missing field `payloadType`",
            ),
            (
                bundle(
                    MEDIA_TYPE_V03,
                    key,
                    r#","messageSignature":{"messageDigest":{"algorithm":"SHA2_256","digest":"oM8="}}"#,
                ),
                "messageSignature.signature is missing",
            ),
            (
                bundle(
                    MEDIA_TYPE_V03,
                    key,
                    r#","messageSignature":{"messageDigest":{"algorithm":"SHA2_256","digest":"oM8="},"signature":"!!"}"#,
                ),
                "messageSignature.signature is empty or not base64",
            ),
            (
                bundle(
                    MEDIA_TYPE_V03,
                    key,
                    r#","messageSignature":{"signature":"MEUC"}"#,
                ),
                "messageSignature.messageDigest is missing",
            ),
            (
                bundle(
                    MEDIA_TYPE_V03,
                    key,
                    r#","messageSignature":{"messageDigest":{"algorithm":"SHA2_256","digest":"oM8="},"signature":"MEUC"}"#,
                ),
                "is 2 bytes; a SHA2_256 digest is 32",
            ),
        ] {
            let err = parse(text.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        // Well-formed forms parse.
        assert!(parse(
            bundle(
                MEDIA_TYPE_V03,
                key,
                &format!(r#","dsseEnvelope":{envelope}"#)
            )
            .as_bytes()
        )
        .is_ok());
        assert!(parse(
            bundle(
                MEDIA_TYPE_V03,
                key,
                &format!(r#","messageSignature":{message}"#)
            )
            .as_bytes()
        )
        .is_ok());
    }

    #[test]
    fn other_digest_algorithms_are_unsupported_and_claim_nothing() {
        let text = format!(
            r#"{{"mediaType":"{MEDIA_TYPE_V03}","verificationMaterial":{{"publicKey":{{}}}},"messageSignature":{{"messageDigest":{{"algorithm":"SHA2_384","digest":"AAAA"}},"signature":"MEUC"}}}}"#
        );
        let bundle = parse(text.as_bytes()).unwrap();
        assert!(bundle.claimed_subjects().is_empty());
        assert!(matches!(
            bundle
                .check(
                    &attestor("ci", vec![p256_pair("random").1], &[]),
                    &digest_only(BLOB)
                )
                .0,
            Check::Unsupported { .. }
        ));
    }
}
