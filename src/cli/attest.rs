//! `portcullis attest`: a signed in-toto statement (a DSSE envelope)
//! appended to an image's `sha256-<hex>.att` manifest at its registry (or
//! in `COSIGN_REPOSITORY` when that is set), and the predicate types
//! `--type` accepts.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;

use super::image::RepositoryRef;
use super::registry::{append_layer, resolve, sign_base64, ArtifactLayer, RegistryOptions};
use super::signing_key::read_signing_key;
use super::{Exit, Outcome};
use crate::oci::{Algorithm, Digest};
use crate::verify::formats::dsse::{pae, IN_TOTO_PAYLOAD_TYPE};
use crate::verify::sources::cosign::{DSSE_ENVELOPE, MAX_ENVELOPE_BYTES, SIGNATURE_ANNOTATION};

/// Runs `portcullis attest`.
pub fn run(
    reference: &str,
    key: &Path,
    predicate: &Path,
    predicate_type: &str,
    registry: &RegistryOptions,
) -> Outcome {
    let cosign_repository = RepositoryRef::from_env().map_err(super::CliError::error)?;
    let (digest, location) = super::block_on(attest(
        reference,
        key,
        predicate,
        predicate_type,
        registry,
        cosign_repository.as_ref(),
    ))?;
    println!("attested {reference} ({digest})");
    println!("attestation: {location}");
    Ok(Exit::Ok)
}

/// cosign's `--type` shorthands and the predicate types they stand for
/// (`cosign attest --type`).
pub const PREDICATE_TYPE_SHORTHANDS: [(&str, &str); 10] = [
    ("custom", "https://cosign.sigstore.dev/attestation/v1"),
    ("slsaprovenance", "https://slsa.dev/provenance/v0.2"),
    ("slsaprovenance02", "https://slsa.dev/provenance/v0.2"),
    ("slsaprovenance1", "https://slsa.dev/provenance/v1"),
    ("spdx", "https://spdx.dev/Document"),
    ("spdxjson", "https://spdx.dev/Document"),
    ("cyclonedx", "https://cyclonedx.org/bom"),
    ("vuln", "https://cosign.sigstore.dev/attestation/vuln/v1"),
    ("openvex", "https://openvex.dev/ns"),
    ("link", "https://in-toto.io/Link/v1"),
];

/// The statement type `cosign attest` writes (in-toto Statement v0.1).
const STATEMENT_V01: &str = "https://in-toto.io/Statement/v0.1";

/// The predicate type `--type` names: a shorthand of
/// [`PREDICATE_TYPE_SHORTHANDS`], or a URI, taken as is (as cosign does).
pub fn predicate_type_uri(text: &str) -> Result<String, String> {
    if let Some((_, uri)) = PREDICATE_TYPE_SHORTHANDS.iter().find(|(s, _)| *s == text) {
        return Ok((*uri).to_owned());
    }
    // RFC 3986: scheme ":" hier-part, the scheme a letter then letters,
    // digits, "+", "-" or "."; no spaces anywhere.
    let is_uri = text.split_once(':').is_some_and(|(scheme, rest)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !rest.is_empty()
    }) && !text.chars().any(|c| c.is_whitespace() || c.is_control());
    if is_uri {
        return Ok(text.to_owned());
    }
    let shorthands: Vec<&str> = PREDICATE_TYPE_SHORTHANDS.iter().map(|(s, _)| *s).collect();
    Err(format!(
        "--type {text:?} is neither a predicate type URI (e.g. https://slsa.dev/provenance/v1) \
         nor one of cosign's shorthands: {}",
        shorthands.join(", ")
    ))
}

/// Reads a predicate: a file holding one JSON object.
fn read_predicate(path: &Path) -> Result<serde_json::Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("predicate {} is not valid JSON: {e}", path.display()))?;
    if !value.is_object() {
        let kind = match value {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::Object(_) => "an object",
        };
        return Err(format!(
            "predicate {} is {kind}; an in-toto predicate is a JSON object",
            path.display()
        ));
    }
    Ok(value)
}

#[derive(Serialize)]
struct Statement<'a> {
    #[serde(rename = "_type")]
    statement_type: &'a str,
    #[serde(rename = "predicateType")]
    predicate_type: &'a str,
    subject: [StatementSubject<'a>; 1],
    predicate: &'a serde_json::Value,
}

#[derive(Serialize)]
struct StatementSubject<'a> {
    name: &'a str,
    digest: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "payloadType")]
    payload_type: &'a str,
    payload: String,
    signatures: [EnvelopeSignature; 1],
}

#[derive(Serialize)]
struct EnvelopeSignature {
    keyid: &'static str,
    sig: String,
}

/// `portcullis attest`: resolves `reference` at its registry, signs an
/// in-toto statement about its digest carrying the predicate in
/// `predicate_path` (a DSSE envelope over PAE), and appends it to the
/// image's `sha256-<hex>.att` manifest, as `cosign attest --key` does.
/// `predicate_type` is a URI or a cosign shorthand
/// ([`predicate_type_uri`]). The envelope goes to `cosign_repository`
/// when given. Returns the attested digest and where the attestation is.
pub async fn attest(
    reference: &str,
    key_path: &Path,
    predicate_path: &Path,
    predicate_type: &str,
    options: &RegistryOptions,
    cosign_repository: Option<&RepositoryRef>,
) -> Result<(Digest, String), String> {
    let predicate_type = predicate_type_uri(predicate_type)?;
    let key = read_signing_key(key_path)?;
    let predicate = read_predicate(predicate_path)?;
    let target = resolve(reference, options, cosign_repository).await?;
    if target.digest.algorithm() != Algorithm::Sha256 {
        return Err(format!(
            "{reference}: an attestation names its image by sha256 digest; \
             give a tag or the sha256 digest instead of {}",
            target.digest
        ));
    }
    let name = target.image.canonical();
    let statement = Statement {
        statement_type: STATEMENT_V01,
        predicate_type: &predicate_type,
        subject: [StatementSubject {
            name: &name,
            digest: BTreeMap::from([("sha256", target.digest.hex())]),
        }],
        predicate: &predicate,
    };
    let payload = serde_json::to_vec(&statement).map_err(|e| e.to_string())?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let envelope = Envelope {
        payload_type: IN_TOTO_PAYLOAD_TYPE,
        payload: b64.encode(&payload),
        signatures: [EnvelopeSignature {
            keyid: "",
            sig: sign_base64(&key, &pae(IN_TOTO_PAYLOAD_TYPE, &payload)),
        }],
    };
    let envelope = serde_json::to_vec(&envelope).map_err(|e| e.to_string())?;
    if envelope.len() > MAX_ENVELOPE_BYTES {
        return Err(format!(
            "the attestation would be {} bytes; Portcullis reads envelopes of up to {MAX_ENVELOPE_BYTES} bytes",
            envelope.len()
        ));
    }
    let layer = ArtifactLayer {
        media_type: DSSE_ENVELOPE,
        content: Bytes::from(envelope),
        annotations: BTreeMap::from([
            (SIGNATURE_ANNOTATION.to_owned(), String::new()),
            ("predicateType".to_owned(), predicate_type),
        ]),
    };
    let location = append_layer(&target, "att", layer).await?;
    Ok((target.digest, location))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicate_types_are_cosign_shorthands_or_uris() {
        assert_eq!(
            predicate_type_uri("custom").unwrap(),
            "https://cosign.sigstore.dev/attestation/v1"
        );
        assert_eq!(
            predicate_type_uri("slsaprovenance").unwrap(),
            "https://slsa.dev/provenance/v0.2"
        );
        assert_eq!(
            predicate_type_uri("slsaprovenance1").unwrap(),
            "https://slsa.dev/provenance/v1"
        );
        assert_eq!(
            predicate_type_uri("spdxjson").unwrap(),
            "https://spdx.dev/Document"
        );
        assert_eq!(
            predicate_type_uri("https://example.com/p/v1").unwrap(),
            "https://example.com/p/v1"
        );
        assert_eq!(
            predicate_type_uri("urn:example:predicate").unwrap(),
            "urn:example:predicate"
        );
        for bad in [
            "",
            "slsa",
            "SLSAProvenance1",
            "1http://x",
            "https:",
            "a b:c",
        ] {
            let e = predicate_type_uri(bad).unwrap_err();
            assert!(e.contains("slsaprovenance1"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn predicates_must_be_json_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, "{\"builder\": {\"id\": \"ci\"}}\n").unwrap();
        assert_eq!(read_predicate(&path).unwrap()["builder"]["id"], "ci");
        std::fs::write(&path, "{\"builder\": ").unwrap();
        let e = read_predicate(&path).unwrap_err();
        assert!(
            e.contains("is not valid JSON") && e.contains("line 1"),
            "{e}"
        );
        std::fs::write(&path, "[1]").unwrap();
        let e = read_predicate(&path).unwrap_err();
        assert!(e.contains("is an array"), "{e}");
        let e = read_predicate(&dir.path().join("missing.json")).unwrap_err();
        assert!(e.starts_with("cannot read"), "{e}");
    }
}
