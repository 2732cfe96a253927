//! Binary Authorization attestations: Container Analysis `ATTESTATION`
//! occurrences, as `gcloud container binauthz attestations list
//! --format=json` prints them (or the REST API returns them), checked for
//! one attestor. Pure: no I/O.
//!
//! An occurrence carries a `serializedPayload` (a simple-signing document
//! of type "Google cloud binauthz container signature") and signatures
//! over its *exact* bytes, each naming the attestor key (`publicKeyId`)
//! that made it. The payload is never re-serialized: gcloud writes pretty
//! sorted JSON, Go tools compact JSON, and only the bytes signed verify.
//!
//! Order, as in [`simple_signing`]: crypto first (only keys whose `id` is
//! the signature's `publicKeyId`; all of the attestor's keys when it is
//! empty, as Kritis writes), then the payload's binding to the image.
//! Nothing else in an occurrence is signed: `resourceUri`, `noteName` and
//! the timestamps are only cross-checked or recorded. PGP and JWT
//! attestations are parsed but [`Check::Unsupported`].
//!
//! Accepted shapes: a JSON list of occurrences (gcloud), one occurrence,
//! the REST list `{"occurrences": [...]}`, and the legacy v1beta1
//! `attestation.attestation.{genericSignedAttestation|pgpSignedAttestation}`.

use serde_json::{Map, Value};

use super::dsse::is_sha256_hex;
use super::simple_signing::{self, Subject};
use crate::crypto::decode_base64_lenient;
use crate::policy::{Attestor, AttestorKey, Check, SignedIdentity};

/// The `kind` of an attestation occurrence.
const KIND: &str = "ATTESTATION";
/// The only `contentType` a v1beta1 generic attestation may declare.
const SIMPLE_SIGNING_JSON: &str = "SIMPLE_SIGNING_JSON";
/// How an ASCII-armored OpenPGP message starts.
const PGP_ARMOR: &[u8] = b"-----BEGIN PGP ";

/// One attestation occurrence. Nothing in it is trusted until
/// [`Occurrence::check`].
#[derive(Debug, Clone)]
pub struct Occurrence {
    /// `projects/<p>/occurrences/<id>`.
    pub name: Option<String>,
    /// The image it is about, as written (`https://` prefix and all).
    /// Not signed.
    pub resource_uri: String,
    /// `projects/<p>/notes/<note>`: the attestor's note.
    pub note_name: Option<String>,
    payload: Vec<u8>,
    signatures: Vec<OccurrenceSignature>,
    jwts: usize,
}

/// One signature of an occurrence, decoded.
#[derive(Debug, Clone)]
pub struct OccurrenceSignature {
    /// The attestor key id it claims (empty: any of the attestor's keys).
    pub public_key_id: String,
    /// The raw signature bytes (for PGP, the armored signed message).
    pub signature: Vec<u8>,
    /// An OpenPGP signature, which Portcullis does not verify.
    pub pgp: bool,
}

/// Parses occurrences from JSON: a list, a single occurrence, or the REST
/// list form (`{}` and `{"occurrences": []}` are empty lists). Every
/// error names the occurrence and the field.
pub fn parse_occurrences(bytes: &[u8]) -> Result<Vec<Occurrence>, String> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("attestation occurrences are not JSON: {e}"))?;
    match &value {
        Value::Array(items) => parse_list(items),
        Value::Object(map) if is_list_response(map) => match map.get("occurrences") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => parse_list(items),
            Some(_) => Err("occurrences: must be a list".into()),
        },
        Value::Object(_) => Ok(vec![parse_occurrence(&value, "occurrence")?]),
        _ => Err("expected an attestation occurrence, a list of them, or \
                  {\"occurrences\": [...]}"
            .into()),
    }
}

/// A REST `occurrences.list` answer: `occurrences` and/or `nextPageToken`,
/// or `{}` when there are none.
fn is_list_response(map: &Map<String, Value>) -> bool {
    map.is_empty() || map.contains_key("occurrences") || map.contains_key("nextPageToken")
}

fn parse_list(items: &[Value]) -> Result<Vec<Occurrence>, String> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_occurrence(item, &format!("occurrences[{i}]")))
        .collect()
}

fn parse_occurrence(value: &Value, at: &str) -> Result<Occurrence, String> {
    if !value.is_object() {
        return Err(format!("{at}: must be an object"));
    }
    if let Some(kind) = string(value, "kind", at)? {
        if kind != KIND {
            return Err(format!("{at}.kind: {kind:?} is not an {KIND} occurrence"));
        }
    }
    let resource_uri = resource_uri(value, at)?;
    let attestation_at = format!("{at}.attestation");
    let attestation =
        object(value, "attestation", at)?.ok_or_else(|| format!("{attestation_at}: missing"))?;
    let body = match object(attestation, "attestation", &attestation_at)? {
        Some(legacy) => parse_legacy(legacy, &format!("{attestation_at}.attestation"))?,
        None => parse_signed(attestation, &attestation_at)?,
    };
    Ok(Occurrence {
        name: string(value, "name", at)?.map(str::to_owned),
        resource_uri,
        note_name: string(value, "noteName", at)?.map(str::to_owned),
        payload: body.payload,
        signatures: body.signatures,
        jwts: body.jwts,
    })
}

/// `resourceUri` (v1), or `resource.uri` (v1beta1).
fn resource_uri(value: &Value, at: &str) -> Result<String, String> {
    if let Some(uri) = string(value, "resourceUri", at)? {
        return Ok(uri.to_owned());
    }
    let resource_at = format!("{at}.resource");
    object(value, "resource", at)?
        .map(|resource| string(resource, "uri", &resource_at))
        .transpose()?
        .flatten()
        .map(str::to_owned)
        .ok_or_else(|| format!("{at}.resourceUri: missing"))
}

/// What an attestation holds, whatever its shape.
struct Body {
    payload: Vec<u8>,
    signatures: Vec<OccurrenceSignature>,
    jwts: usize,
}

/// A v1 `attestation`, or a v1beta1 `genericSignedAttestation`: a
/// `serializedPayload` and `signatures`.
fn parse_signed(attestation: &Value, at: &str) -> Result<Body, String> {
    let payload = string(attestation, "serializedPayload", at)?
        .ok_or_else(|| format!("{at}.serializedPayload: missing"))?;
    let payload = decode_base64_lenient(payload)
        .ok_or_else(|| format!("{at}.serializedPayload: empty or not base64"))?;
    let signatures = array(attestation, "signatures", at)?
        .iter()
        .enumerate()
        .map(|(j, s)| parse_signature(s, &format!("{at}.signatures[{j}]")))
        .collect::<Result<_, _>>()?;
    Ok(Body {
        payload,
        signatures,
        jwts: array(attestation, "jwts", at)?.len(),
    })
}

fn parse_signature(value: &Value, at: &str) -> Result<OccurrenceSignature, String> {
    if !value.is_object() {
        return Err(format!("{at}: must be an object"));
    }
    let text = string(value, "signature", at)?.ok_or_else(|| format!("{at}.signature: missing"))?;
    let signature = decode_base64_lenient(text)
        .ok_or_else(|| format!("{at}.signature: empty or not base64"))?;
    Ok(OccurrenceSignature {
        public_key_id: string(value, "publicKeyId", at)?
            .unwrap_or_default()
            .to_owned(),
        pgp: signature.starts_with(PGP_ARMOR),
        signature,
    })
}

/// The v1beta1 `attestation.attestation`: one of
/// `genericSignedAttestation` (as v1) and `pgpSignedAttestation` (an
/// attached PGP signature that contains the payload; kept, unverifiable).
fn parse_legacy(legacy: &Value, at: &str) -> Result<Body, String> {
    if let Some(generic) = object(legacy, "genericSignedAttestation", at)? {
        let generic_at = format!("{at}.genericSignedAttestation");
        if let Some(content_type) = string(generic, "contentType", &generic_at)? {
            if content_type != SIMPLE_SIGNING_JSON {
                return Err(format!(
                    "{generic_at}.contentType: {content_type:?} is not {SIMPLE_SIGNING_JSON}"
                ));
            }
        }
        return parse_signed(generic, &generic_at);
    }
    if let Some(pgp) = object(legacy, "pgpSignedAttestation", at)? {
        let pgp_at = format!("{at}.pgpSignedAttestation");
        let signature = string(pgp, "signature", &pgp_at)?
            .ok_or_else(|| format!("{pgp_at}.signature: missing"))?;
        return Ok(Body {
            payload: Vec::new(),
            signatures: vec![OccurrenceSignature {
                public_key_id: string(pgp, "pgpKeyId", &pgp_at)?
                    .unwrap_or_default()
                    .to_owned(),
                signature: signature.as_bytes().to_vec(),
                pgp: true,
            }],
            jwts: 0,
        });
    }
    Err(format!(
        "{at}: expected genericSignedAttestation or pgpSignedAttestation"
    ))
}

/// `object[key]` when present and not null.
fn field<'v>(object: &'v Value, key: &str) -> Option<&'v Value> {
    object.get(key).filter(|v| !v.is_null())
}

fn string<'v>(object: &'v Value, key: &str, at: &str) -> Result<Option<&'v str>, String> {
    match field(object, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{at}.{key}: must be a string")),
    }
}

fn object<'v>(object: &'v Value, key: &str, at: &str) -> Result<Option<&'v Value>, String> {
    match field(object, key) {
        None => Ok(None),
        Some(v) if v.is_object() => Ok(Some(v)),
        Some(_) => Err(format!("{at}.{key}: must be an object")),
    }
}

fn array<'v>(object: &'v Value, key: &str, at: &str) -> Result<&'v [Value], String> {
    match field(object, key) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("{at}.{key}: must be a list")),
    }
}

/// The `sha256:<hex>` a payload names in `critical.image`, if well formed.
fn payload_digest(payload: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let digest = value
        .pointer("/critical/image/docker-manifest-digest")?
        .as_str()?;
    let hex = digest.strip_prefix("sha256:")?;
    is_sha256_hex(hex).then(|| digest.to_owned())
}

impl Occurrence {
    /// The decoded `serializedPayload`, exactly as signed (empty for a
    /// v1beta1 PGP attestation, whose payload is inside the signature).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The signatures, decoded (unverified).
    pub fn signatures(&self) -> &[OccurrenceSignature] {
        &self.signatures
    }

    /// The `sha256:<hex>` the *unverified* payload names: only for
    /// indexing occurrences by digest, never for a verdict.
    pub fn claimed_digest(&self) -> Option<String> {
        payload_digest(&self.payload)
    }

    /// The digest in `resourceUri` (`[https://]<repo>@sha256:<hex>`), if
    /// it has one.
    fn resource_digest(&self) -> Option<&str> {
        let uri = self
            .resource_uri
            .strip_prefix("https://")
            .unwrap_or(&self.resource_uri);
        let (_, digest) = uri.rsplit_once('@')?;
        digest.starts_with("sha256:").then_some(digest)
    }

    /// Checks the occurrence for `attestor` against `subject`, the
    /// signed `docker-reference` compared under `identity`.
    pub fn check(
        &self,
        attestor: &Attestor,
        subject: &Subject<'_>,
        identity: &SignedIdentity,
    ) -> Check {
        if self.signatures.is_empty() {
            return if self.jwts > 0 {
                Check::Unsupported {
                    reason: "JWT attestations are not supported; use a PKIX key".into(),
                }
            } else {
                Check::Malformed {
                    reason: "the attestation has no signatures".into(),
                }
            };
        }
        match self.verifying_key(attestor) {
            Some(key) => self.check_signed(subject, identity, &key.id),
            None if self.signatures.iter().any(|s| s.pgp) => Check::Unsupported {
                reason: "PGP attestations are not supported; use a PKIX key".into(),
            },
            None => Check::UnknownKey,
        }
    }

    /// The first attestor key that verifies a (non-PGP) signature over
    /// the exact payload bytes, among the keys the signature names.
    fn verifying_key<'a>(&self, attestor: &'a Attestor) -> Option<&'a AttestorKey> {
        self.signatures.iter().filter(|s| !s.pgp).find_map(|s| {
            attestor.keys.iter().find(|k| {
                is_candidate(k, &s.public_key_id) && k.key.verify(&self.payload, &s.signature)
            })
        })
    }

    /// Interprets the payload, now known to be signed by `key_id`.
    fn check_signed(
        &self,
        subject: &Subject<'_>,
        identity: &SignedIdentity,
        key_id: &str,
    ) -> Check {
        if let (Some(resource), Some(signed)) =
            (self.resource_digest(), payload_digest(&self.payload))
        {
            if resource != signed {
                return Check::Malformed {
                    reason: format!(
                        "resourceUri names {resource} but the signed payload names {signed}"
                    ),
                };
            }
        }
        simple_signing::check_payload(&self.payload, subject, identity, key_id)
    }
}

/// Whether a signature naming `public_key_id` may be from `key`: its id
/// is exactly that, or the signature names none.
fn is_candidate(key: &AttestorKey, public_key_id: &str) -> bool {
    public_key_id.is_empty() || key.id == public_key_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;
    use crate::verify::testing::{attestor, fixture, fixture_text, p256_key, pem_key};
    use base64::Engine as _;
    use p256::ecdsa::{signature::Signer, SigningKey};

    const KRITIS_IMAGE: &str = "gcr.io/kritis-project/kritis-server";
    const KRITIS_DIGEST: &str =
        "sha256:b0be9acc0c8ca214f64fa4e0e214abc0bf342e8a4bc23b7e842ab21cfb50a6ea";
    const KMS_KEY_ID: &str = "//cloudkms.googleapis.com/v1/projects/p/locations/global/keyRings/binauthz/cryptoKeys/signer/cryptoKeyVersions/1";

    fn rsa_key(id: &str, file: &str) -> AttestorKey {
        let pem = fixture_text(&format!("kritis-binauthz/{file}"));
        let algorithm = Algorithm::parse("RSA_SIGN_PKCS1_2048_SHA256").unwrap();
        pem_key(id, &pem, algorithm)
    }

    fn kritis() -> Occurrence {
        let mut parsed =
            parse_occurrences(&fixture("kritis-binauthz/DERIVED-pkix-occurrence.json")).unwrap();
        assert_eq!(parsed.len(), 1);
        parsed.remove(0)
    }

    fn subject<'a>(name: &'a str, digest: &'a str) -> Subject<'a> {
        Subject { name, digest }
    }

    /// What `gcloud container binauthz create-signature-payload` writes:
    /// pretty, sorted, newline-terminated.
    fn gcloud_payload(repository: &str, digest: &str) -> String {
        format!(
            "{{\n  \"critical\": {{\n    \"identity\": {{\n      \"docker-reference\": \"{repository}\"\n    }},\n    \"image\": {{\n      \"docker-manifest-digest\": \"{digest}\"\n    }},\n    \"type\": \"Google cloud binauthz container signature\"\n  }}\n}}\n"
        )
    }

    /// A `gcloud ... attestations list --format=json` answer with one
    /// occurrence signed by `signer`.
    fn gcloud_list(
        signer: &SigningKey,
        public_key_id: &str,
        payload: &str,
        resource_uri: &str,
    ) -> Vec<u8> {
        let signature: p256::ecdsa::Signature = signer.sign(payload.as_bytes());
        let list = serde_json::json!([{
            "attestation": {
                "serializedPayload": base64::engine::general_purpose::STANDARD.encode(payload),
                "signatures": [{
                    "publicKeyId": public_key_id,
                    "signature": base64::engine::general_purpose::URL_SAFE
                        .encode(signature.to_der().as_bytes()),
                }],
            },
            "createTime": "2024-01-01T00:00:00.000000Z",
            "kind": "ATTESTATION",
            "name": "projects/p/occurrences/0f3e",
            "noteName": "projects/p/notes/signer",
            "resourceUri": resource_uri,
            "updateTime": "2024-01-01T00:00:00.000000Z",
        }]);
        serde_json::to_vec_pretty(&list).unwrap()
    }

    fn yaml_capture(name: &str) -> Vec<u8> {
        let text = fixture(&format!(
            "wire-captures/gcloud-binauthz-attestations-list/{name}"
        ));
        let value: Value = serde_yaml_ng::from_slice(&text).unwrap();
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn kritis_pkix_occurrence_gives_the_readme_results() {
        let occurrence = kritis();
        assert_eq!(
            occurrence.payload(),
            fixture("kritis-binauthz/e2eTestPayload.json").as_slice()
        );
        assert_eq!(occurrence.claimed_digest().as_deref(), Some(KRITIS_DIGEST));
        assert_eq!(
            occurrence.note_name.as_deref(),
            Some("projects/DERIVED/notes/kritis-e2e")
        );
        let identity = SignedIdentity::MatchRepository;
        let image = subject(KRITIS_IMAGE, KRITIS_DIGEST);
        // publicKeyId "" (as Kritis writes it): any of the attestor's keys.
        assert_eq!(
            occurrence.check(
                &attestor(
                    "binauthz",
                    vec![
                        rsa_key("wrong", "rsa2048PubKey2.pem"),
                        rsa_key("kritis", "rsa2048PubKey1.pem")
                    ],
                    &[]
                ),
                &image,
                &identity
            ),
            Check::Valid {
                key_id: "kritis".into()
            }
        );
        assert_eq!(
            occurrence.check(
                &attestor(
                    "binauthz",
                    vec![rsa_key("wrong", "rsa2048PubKey2.pem")],
                    &[]
                ),
                &image,
                &identity
            ),
            Check::UnknownKey
        );
        let wrong_digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            occurrence.check(
                &attestor(
                    "binauthz",
                    vec![rsa_key("kritis", "rsa2048PubKey1.pem")],
                    &[]
                ),
                &subject(KRITIS_IMAGE, &wrong_digest),
                &identity
            ),
            Check::OtherDigest {
                signed: KRITIS_DIGEST.into()
            }
        );
        // Served through a mirror: the signed identity is the original.
        let mirror = subject("mirror.local/kritis-project/kritis-server", KRITIS_DIGEST);
        let key = || {
            attestor(
                "binauthz",
                vec![rsa_key("kritis", "rsa2048PubKey1.pem")],
                &[],
            )
        };
        assert!(matches!(
            occurrence.check(&key(), &mirror, &identity),
            Check::OtherRepository { .. }
        ));
        let remap = SignedIdentity::RemapIdentity {
            prefix: "mirror.local/".into(),
            signed_prefix: "gcr.io/".into(),
        };
        assert!(matches!(
            occurrence.check(&key(), &mirror, &remap),
            Check::Valid { .. }
        ));
    }

    #[test]
    fn gcloud_list_with_url_safe_signature_verifies() {
        let signer = SigningKey::random(&mut rand_core::OsRng);
        let repository = "registry.example/team/app";
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let payload = gcloud_payload(repository, &digest);
        let list = gcloud_list(
            &signer,
            KMS_KEY_ID,
            &payload,
            &format!("https://{repository}@{digest}"),
        );
        let occurrences = parse_occurrences(&list).unwrap();
        assert_eq!(occurrences.len(), 1);
        let occurrence = &occurrences[0];
        assert_eq!(occurrence.payload(), payload.as_bytes());
        assert_eq!(occurrence.claimed_digest(), Some(digest.clone()));
        assert_eq!(
            occurrence.name.as_deref(),
            Some("projects/p/occurrences/0f3e")
        );
        let image = subject(repository, &digest);
        let identity = SignedIdentity::MatchRepository;
        let other = SigningKey::random(&mut rand_core::OsRng);
        let keys = || {
            attestor(
                "binauthz",
                vec![p256_key("other", &other), p256_key(KMS_KEY_ID, &signer)],
                &[],
            )
        };
        assert_eq!(
            occurrence.check(&keys(), &image, &identity),
            Check::Valid {
                key_id: KMS_KEY_ID.into()
            }
        );
        // The right key under another id is not a candidate.
        let renamed = attestor("binauthz", vec![p256_key("another-id", &signer)], &[]);
        assert_eq!(
            occurrence.check(&renamed, &image, &identity),
            Check::UnknownKey
        );
        // The same signature claiming another key id.
        let mismatched = gcloud_list(
            &signer,
            "//cloudkms.googleapis.com/v1/projects/p/other",
            &payload,
            &format!("https://{repository}@{digest}"),
        );
        let mismatched = parse_occurrences(&mismatched).unwrap();
        assert_eq!(
            mismatched[0].check(&keys(), &image, &identity),
            Check::UnknownKey
        );
        // An empty id tries every key.
        let anonymous = parse_occurrences(&gcloud_list(&signer, "", &payload, repository)).unwrap();
        assert!(matches!(
            anonymous[0].check(&keys(), &image, &identity),
            Check::Valid { .. }
        ));
    }

    #[test]
    fn signature_encodings_and_list_shapes() {
        let signer = SigningKey::random(&mut rand_core::OsRng);
        let digest = format!("sha256:{}", "ab".repeat(32));
        let payload = gcloud_payload("r.example/app", &digest);
        let signature: p256::ecdsa::Signature = signer.sign(payload.as_bytes());
        let der = signature.to_der();
        let url_unpadded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(der.as_bytes());
        let std_wrapped = {
            let text = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
            format!("{}\r\n{}\n", &text[..40], &text[40..])
        };
        let keys = attestor("binauthz", vec![p256_key("k", &signer)], &[]);
        let image = subject("r.example/app", &digest);
        for encoded in [url_unpadded, std_wrapped] {
            let occurrence = serde_json::json!({
                "resourceUri": format!("r.example/app@{digest}"),
                "attestation": {
                    "serializedPayload": base64::engine::general_purpose::URL_SAFE.encode(&payload),
                    "signatures": [{"publicKeyId": "k", "signature": encoded}],
                },
            });
            let single = serde_json::to_vec(&occurrence).unwrap();
            let rest = serde_json::to_vec(&serde_json::json!({
                "occurrences": [occurrence],
                "nextPageToken": "",
            }))
            .unwrap();
            for bytes in [single, rest] {
                let parsed = parse_occurrences(&bytes).unwrap();
                assert_eq!(parsed.len(), 1);
                assert!(matches!(
                    parsed[0].check(&keys, &image, &SignedIdentity::MatchRepository),
                    Check::Valid { .. }
                ));
            }
        }
        assert!(parse_occurrences(b"{}").unwrap().is_empty());
        assert!(parse_occurrences(b"[]").unwrap().is_empty());
        assert!(parse_occurrences(br#"{"occurrences":[]}"#)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn resource_uri_digest_must_match_the_payload() {
        let signer = SigningKey::random(&mut rand_core::OsRng);
        let digest = format!("sha256:{}", "cd".repeat(32));
        let other = format!("sha256:{}", "ef".repeat(32));
        let payload = gcloud_payload("r.example/app", &digest);
        let list = gcloud_list(
            &signer,
            "k",
            &payload,
            &format!("https://r.example/app@{other}"),
        );
        let occurrence = &parse_occurrences(&list).unwrap()[0];
        let check = occurrence.check(
            &attestor("binauthz", vec![p256_key("k", &signer)], &[]),
            &subject("r.example/app", &digest),
            &SignedIdentity::MatchRepository,
        );
        assert!(
            matches!(&check, Check::Malformed { reason } if reason.contains("resourceUri")),
            "{check:?}"
        );
    }

    #[test]
    fn gcloud_captures_parse_and_are_not_verifiable() {
        let kms = parse_occurrences(&yaml_capture("kms-pkix-attestation.yaml")).unwrap();
        assert_eq!(kms.len(), 1);
        let kms = &kms[0];
        assert_eq!(
            kms.payload(),
            fixture("wire-captures/gcloud-binauthz-attestations-list/kms-serializedPayload.decoded.json")
                .as_slice()
        );
        let digest = "sha256:141df63a8c08f4de842408fa49eed2407f9942f5ef9e22bdd4efaa51b8990d5a";
        assert_eq!(kms.claimed_digest().as_deref(), Some(digest));
        assert_eq!(kms.signatures().len(), 1);
        assert_eq!(kms.signatures()[0].signature.len(), 512);
        assert!(!kms.signatures()[0].pgp);
        let kms_id = kms.signatures()[0].public_key_id.clone();
        let image = subject("gcr.io/gcp-cohorte-1/testbinauth", digest);
        let ours = SigningKey::random(&mut rand_core::OsRng);
        for keys in [
            attestor("binauthz", vec![p256_key(&kms_id, &ours)], &[]),
            attestor(
                "binauthz",
                vec![rsa_key(&kms_id, "rsa2048PubKey1.pem")],
                &[],
            ),
            attestor("binauthz", vec![rsa_key("", "rsa2048PubKey1.pem")], &[]),
        ] {
            assert_eq!(
                kms.check(&keys, &image, &SignedIdentity::MatchRepository),
                Check::UnknownKey
            );
        }

        let pgp = parse_occurrences(&yaml_capture("pgp-attestation.yaml")).unwrap();
        let pgp = &pgp[0];
        assert!(pgp.signatures()[0].pgp);
        assert_eq!(
            pgp.signatures()[0].public_key_id,
            "047A4078247A9ED2CEFE5241FF10D9820CA0F815"
        );
        assert_eq!(
            pgp.signatures()[0].signature,
            fixture("wire-captures/gcloud-binauthz-attestations-list/pgp-signature.asc")
        );
        assert_eq!(
            pgp.payload(),
            fixture("wire-captures/gcloud-binauthz-attestations-list/pgp-serializedPayload.decoded.json")
                .as_slice()
        );
        let digest = "sha256:35a70bdb7394af1b8c317cdcbb4c9b5560dbb165b53848fee7f77ab59f3e0724";
        assert_eq!(pgp.claimed_digest().as_deref(), Some(digest));
        let check = pgp.check(
            &attestor(
                "binauthz",
                vec![p256_key("047A4078247A9ED2CEFE5241FF10D9820CA0F815", &ours)],
                &[],
            ),
            &subject("us.gcr.io/srianjaneyam/hello-world", digest),
            &SignedIdentity::MatchRepository,
        );
        assert!(
            matches!(&check, Check::Unsupported { reason } if reason.contains("PGP")),
            "{check:?}"
        );
    }

    #[test]
    fn legacy_v1beta1_shapes() {
        let kritis: Value =
            serde_json::from_slice(&fixture("kritis-binauthz/DERIVED-pkix-occurrence.json"))
                .unwrap();
        let legacy = serde_json::json!({
            "name": "projects/p/occurrences/legacy",
            "resource": {"uri": kritis["resourceUri"]},
            "noteName": "projects/p/notes/n",
            "kind": "ATTESTATION",
            "attestation": {"attestation": {"genericSignedAttestation": {
                "contentType": "SIMPLE_SIGNING_JSON",
                "serializedPayload": kritis["attestation"]["serializedPayload"],
                "signatures": kritis["attestation"]["signatures"],
            }}},
        });
        let parsed = parse_occurrences(&serde_json::to_vec(&[legacy]).unwrap()).unwrap();
        assert_eq!(
            parsed[0].resource_uri,
            kritis["resourceUri"].as_str().unwrap()
        );
        assert!(matches!(
            parsed[0].check(
                &attestor(
                    "binauthz",
                    vec![rsa_key("kritis", "rsa2048PubKey1.pem")],
                    &[]
                ),
                &subject(KRITIS_IMAGE, KRITIS_DIGEST),
                &SignedIdentity::MatchRepository
            ),
            Check::Valid { .. }
        ));

        let armored =
            fixture_text("wire-captures/gcloud-binauthz-attestations-list/pgp-signature.asc");
        let pgp = serde_json::json!({
            "resource": {"uri": "https://us.gcr.io/p/app@sha256:00"},
            "kind": "ATTESTATION",
            "attestation": {"attestation": {"pgpSignedAttestation": {
                "signature": armored,
                "contentType": "SIMPLE_SIGNING_JSON",
                "pgpKeyId": "047A4078247A9ED2CEFE5241FF10D9820CA0F815",
            }}},
        });
        let parsed = parse_occurrences(&serde_json::to_vec(&pgp).unwrap()).unwrap();
        assert!(parsed[0].payload().is_empty());
        assert_eq!(parsed[0].claimed_digest(), None);
        assert!(matches!(
            parsed[0].check(
                &attestor(
                    "binauthz",
                    vec![rsa_key("kritis", "rsa2048PubKey1.pem")],
                    &[]
                ),
                &subject("us.gcr.io/p/app", "sha256:00"),
                &SignedIdentity::MatchRepository
            ),
            Check::Unsupported { .. }
        ));
    }

    #[test]
    fn jwt_only_and_unsigned_attestations_are_not_valid() {
        let payload =
            base64::engine::general_purpose::STANDARD.encode(gcloud_payload("r/app", "sha256:00"));
        let jwt = serde_json::json!({
            "resourceUri": "r/app",
            "attestation": {"serializedPayload": payload, "jwts": [{"compactJwt": "a.b.c"}]},
        });
        let parsed = parse_occurrences(&serde_json::to_vec(&jwt).unwrap()).unwrap();
        let keys = attestor(
            "binauthz",
            vec![rsa_key("kritis", "rsa2048PubKey1.pem")],
            &[],
        );
        let image = subject("r/app", "sha256:00");
        assert!(matches!(
            parsed[0].check(&keys, &image, &SignedIdentity::Ignore),
            Check::Unsupported { .. }
        ));
        let unsigned = serde_json::json!({
            "resourceUri": "r/app",
            "attestation": {"serializedPayload": payload, "signatures": []},
        });
        let parsed = parse_occurrences(&serde_json::to_vec(&unsigned).unwrap()).unwrap();
        assert!(matches!(
            parsed[0].check(&keys, &image, &SignedIdentity::Ignore),
            Check::Malformed { .. }
        ));
    }

    #[test]
    fn parse_errors_name_the_occurrence_and_field() {
        let ok = r#"{"resourceUri":"r/app","attestation":{"serializedPayload":"e30=","signatures":[{"publicKeyId":"k","signature":"MEUC"}]}}"#;
        for (text, want) in [
            ("not json".to_owned(), "not JSON"),
            ("42".to_owned(), "expected an attestation occurrence"),
            (r#"{"occurrences":{}}"#.to_owned(), "occurrences: must be a list"),
            (format!("[{ok}, 1]"), "occurrences[1]: must be an object"),
            (
                format!(r#"[{ok}, {{"kind":"VULNERABILITY","resourceUri":"r"}}]"#),
                r#"occurrences[1].kind: "VULNERABILITY" is not an ATTESTATION occurrence"#,
            ),
            (
                r#"[{"attestation":{"serializedPayload":"e30="}}]"#.to_owned(),
                "occurrences[0].resourceUri: missing",
            ),
            (
                r#"[{"resourceUri":"r"}]"#.to_owned(),
                "occurrences[0].attestation: missing",
            ),
            (
                r#"{"resourceUri":"r","attestation":{"signatures":[]}}"#.to_owned(),
                "occurrence.attestation.serializedPayload: missing",
            ),
            (
                r#"[{"resourceUri":"r","attestation":{"serializedPayload":"%%%"}}]"#.to_owned(),
                "occurrences[0].attestation.serializedPayload: empty or not base64",
            ),
            (
                r#"[{"resourceUri":"r","attestation":{"serializedPayload":"e30=","signatures":[{"publicKeyId":"k","signature":"MEUC"},{"publicKeyId":"k","signature":"not base64!"}]}}]"#.to_owned(),
                "occurrences[0].attestation.signatures[1].signature: empty or not base64",
            ),
            (
                r#"[{"resourceUri":"r","attestation":{"serializedPayload":"e30=","signatures":[{"publicKeyId":7,"signature":"MEUC"}]}}]"#.to_owned(),
                "occurrences[0].attestation.signatures[0].publicKeyId: must be a string",
            ),
            (
                r#"[{"resourceUri":"r","attestation":{"serializedPayload":"e30=","signatures":{}}}]"#.to_owned(),
                "occurrences[0].attestation.signatures: must be a list",
            ),
            (
                r#"[{"resourceUri":"r","attestation":{"attestation":{}}}]"#.to_owned(),
                "occurrences[0].attestation.attestation: expected genericSignedAttestation or pgpSignedAttestation",
            ),
            (
                r#"[{"resourceUri":"r","attestation":{"attestation":{"genericSignedAttestation":{"contentType":"JSON","serializedPayload":"e30="}}}}]"#.to_owned(),
                "genericSignedAttestation.contentType: \"JSON\" is not SIMPLE_SIGNING_JSON",
            ),
        ] {
            let err = parse_occurrences(text.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        assert_eq!(parse_occurrences(ok.as_bytes()).unwrap().len(), 1);
    }
}
