//! Checking one cosign / containers-image "simple signing" signature: the
//! signature over the exact payload bytes with an attestor's keys, then the
//! payload's binding to the image being served. Pure: no I/O.
//!
//! Order matters: crypto first, then parsing (a payload nobody trusted is
//! never interpreted), then digest, then identity.

use serde::Deserialize;

use crate::crypto::decode_base64_lenient;
use crate::policy::{Attestor, Check, SignedIdentity};

/// Payload types accepted in `critical.type`.
const ACCEPTED_TYPES: [&str; 3] = [
    "cosign container image signature",
    "atomic container signature",
    "google cloud binauthz container signature",
];

/// One signature to check: the payload bytes and the base64 signature.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub payload: Vec<u8>,
    pub signature_b64: String,
    /// The layer's other annotations: a keyless signature's certificate,
    /// Rekor bundle and timestamp (see `sigstore::cosign`).
    pub annotations: std::collections::HashMap<String, String>,
}

/// The image a signature must bind.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// Canonical `<registry>/<repository>`.
    pub name: &'a str,
    /// `sha256:<hex>` of the manifest being served.
    pub digest: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    critical: Critical,
    #[serde(default)]
    #[allow(dead_code)]
    optional: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Checks `candidate` for `attestor` against `subject`.
pub fn check(
    candidate: &Candidate,
    attestor: &Attestor,
    subject: &Subject<'_>,
    identity: &SignedIdentity,
) -> Check {
    let Some(signature) = decode_base64_lenient(&candidate.signature_b64) else {
        return Check::Malformed {
            reason: "signature annotation is empty or not base64".into(),
        };
    };
    let Some(key) = attestor
        .keys
        .iter()
        .find(|k| k.key.verify(&candidate.payload, &signature))
    else {
        return Check::UnknownKey;
    };
    check_payload(&candidate.payload, subject, identity, &key.id)
}

/// Interprets a payload whose signature verified with key `key_id`.
pub fn check_payload(
    payload: &[u8],
    subject: &Subject<'_>,
    identity: &SignedIdentity,
    key_id: &str,
) -> Check {
    let parsed: Payload = match serde_json::from_slice(payload) {
        Ok(p) => p,
        Err(e) => {
            return Check::Malformed {
                reason: format!("signed payload is not a simple-signing document: {e}"),
            }
        }
    };
    let kind = parsed.critical.kind.to_ascii_lowercase();
    if !ACCEPTED_TYPES.contains(&kind.as_str()) {
        return Check::Malformed {
            reason: format!("unknown critical.type {:?}", parsed.critical.kind),
        };
    }
    let signed_digest = parsed.critical.image.docker_manifest_digest;
    if signed_digest != subject.digest {
        return Check::OtherDigest {
            signed: signed_digest,
        };
    }
    let signed_ref = parsed.critical.identity.docker_reference;
    if !identity_matches(&signed_ref, subject.name, identity) {
        return Check::OtherRepository { signed: signed_ref };
    }
    Check::Valid {
        key_id: key_id.to_owned(),
    }
}

/// Whether a signed `docker-reference` names the pulled repository under
/// the rule's `signedIdentity`.
pub fn identity_matches(signed: &str, pulled: &str, rule: &SignedIdentity) -> bool {
    let signed_repo = normalize_repository(signed);
    match rule {
        SignedIdentity::Ignore => true,
        SignedIdentity::MatchRepository => signed_repo == normalize_repository(pulled),
        SignedIdentity::ExactRepository(repo) => signed_repo == normalize_repository(repo),
        SignedIdentity::RemapIdentity {
            prefix,
            signed_prefix,
        } => {
            let pulled = normalize_repository(pulled);
            match pulled.strip_prefix(prefix.as_str()) {
                Some(rest) => {
                    signed_repo == normalize_repository(&format!("{signed_prefix}{rest}"))
                }
                None => signed_repo == pulled,
            }
        }
    }
}

/// The payload `cosign sign --key` writes for `digest` signed as
/// `reference` (`optional` is the JSON of its annotations, `null` without
/// any); `portcullis sign` writes the same bytes.
pub fn cosign_payload(reference: &str, digest: &str, optional: &str) -> String {
    let reference = serde_json::Value::String(reference.to_owned());
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":{reference}}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":{optional}}}"#
    )
}

/// The payloads cosign would have written, without annotations, when
/// signing `digest` in the repository named `name` (canonical
/// `<registry>/<repository>`): one per spelling of the name cosign uses.
/// Verification uses one of them instead of fetching a payload blob only
/// when it hashes to that blob's digest, i.e. is the same bytes.
pub fn likely_payloads(name: &str, digest: &str) -> Vec<Vec<u8>> {
    let mut names = vec![name.to_owned()];
    if let Some(path) = name.strip_prefix("docker.io/") {
        // go-containerregistry spells Docker Hub `index.docker.io`.
        names.push(format!("index.docker.io/{path}"));
    }
    names
        .iter()
        .map(|n| cosign_payload(n, digest, "null").into_bytes())
        .collect()
}

/// A reference reduced to `<registry>/<repository>`: tag and digest
/// dropped, Docker Hub spellings unified (`index.docker.io/alpine`,
/// `alpine` and `docker.io/library/alpine` are one repository).
pub fn normalize_repository(reference: &str) -> String {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last_slash = without_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let without_tag = match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    };
    let (host, path) = match without_tag.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => ("docker.io".to_owned(), without_tag.to_owned()),
    };
    let host = if crate::oci::DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        "docker.io".to_owned()
    } else {
        host
    };
    let path = if host == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    format!("{host}/{path}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::testing::{fixture, fixture_text};

    #[test]
    fn cosign_payload_is_byte_identical_to_what_cosign_writes() {
        // A real `cosign sign --key` (v3.0.4, classic .sig) payload, and
        // the layer digest its .sig manifest names.
        let dir = "wire-captures/cosign-v3.0.4-classic-signature";
        let real = fixture(&format!("{dir}/payload.json"));
        let digest = "sha256:f20c43161d73848408ef247f0ec7111b19fe58ffebc0cbcaa0d2c8bda4967268";
        let made = cosign_payload("localhost:15381/tobby/fixture", digest, "null");
        assert_eq!(made.as_bytes(), real.as_slice());
        let sig: serde_json::Value =
            serde_json::from_str(&fixture_text(&format!("{dir}/sig-manifest.json"))).unwrap();
        let layer: crate::oci::Digest = sig["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(layer.same_algorithm_of(made.as_bytes()), layer);
        assert_eq!(
            likely_payloads("localhost:15381/tobby/fixture", digest),
            vec![real]
        );
    }

    #[test]
    fn likely_payloads_cover_cosigns_docker_hub_spelling() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let likely = likely_payloads("docker.io/library/alpine", &digest);
        let references: Vec<String> = likely
            .iter()
            .map(|p| {
                let v: serde_json::Value = serde_json::from_slice(p).unwrap();
                v["critical"]["identity"]["docker-reference"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            references,
            ["docker.io/library/alpine", "index.docker.io/library/alpine"]
        );
        // A name needing JSON escaping stays valid JSON.
        let odd = cosign_payload("r.io/a\"b", &digest, "null");
        let v: serde_json::Value = serde_json::from_str(&odd).unwrap();
        assert_eq!(v["critical"]["identity"]["docker-reference"], "r.io/a\"b");
    }

    #[test]
    fn normalization() {
        for (input, want) in [
            ("index.docker.io/library/alpine", "docker.io/library/alpine"),
            ("alpine", "docker.io/library/alpine"),
            ("alpine:3", "docker.io/library/alpine"),
            ("docker.io/alpine", "docker.io/library/alpine"),
            ("127.0.0.1:5001/demo/app:v1", "127.0.0.1:5001/demo/app"),
            ("127.0.0.1:5001/demo/app", "127.0.0.1:5001/demo/app"),
            ("localhost:5000/x@sha256:0123", "localhost:5000/x"),
            ("ghcr.io/o/r:t@sha256:00", "ghcr.io/o/r"),
        ] {
            assert_eq!(normalize_repository(input), want, "{input}");
        }
    }

    #[test]
    fn identity_rules() {
        let pulled = "mirror.local/team/app";
        assert!(identity_matches(
            "mirror.local/team/app:v1",
            pulled,
            &SignedIdentity::MatchRepository
        ));
        assert!(!identity_matches(
            "ghcr.io/team/app",
            pulled,
            &SignedIdentity::MatchRepository
        ));
        assert!(identity_matches(
            "ghcr.io/team/app",
            pulled,
            &SignedIdentity::Ignore
        ));
        assert!(identity_matches(
            "ghcr.io/team/app",
            pulled,
            &SignedIdentity::ExactRepository("ghcr.io/team/app".into())
        ));
        let remap = SignedIdentity::RemapIdentity {
            prefix: "mirror.local/".into(),
            signed_prefix: "ghcr.io/".into(),
        };
        assert!(identity_matches("ghcr.io/team/app:v2", pulled, &remap));
        assert!(!identity_matches("ghcr.io/team/other", pulled, &remap));
    }

    #[test]
    fn payload_checks() {
        let subject = Subject {
            name: "r:1/demo/app",
            digest: "sha256:aa",
        };
        let id = SignedIdentity::MatchRepository;
        let payload = |reference: &str, digest: &str, kind: &str, extra: &str| {
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"{reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"{kind}"{extra}}},"optional":null}}"#
            )
        };
        let ok = payload(
            "r:1/demo/app",
            "sha256:aa",
            "cosign container image signature",
            "",
        );
        assert_eq!(
            check_payload(ok.as_bytes(), &subject, &id, "k"),
            Check::Valid { key_id: "k".into() }
        );
        let other = payload(
            "r:1/demo/app",
            "sha256:bb",
            "cosign container image signature",
            "",
        );
        assert!(matches!(
            check_payload(other.as_bytes(), &subject, &id, "k"),
            Check::OtherDigest { .. }
        ));
        let repo = payload(
            "r:1/demo/evil",
            "sha256:aa",
            "cosign container image signature",
            "",
        );
        assert!(matches!(
            check_payload(repo.as_bytes(), &subject, &id, "k"),
            Check::OtherRepository { .. }
        ));
        let unknown_critical = payload(
            "r:1/demo/app",
            "sha256:aa",
            "cosign container image signature",
            r#","extra":1"#,
        );
        assert!(matches!(
            check_payload(unknown_critical.as_bytes(), &subject, &id, "k"),
            Check::Malformed { .. }
        ));
        let kind = payload("r:1/demo/app", "sha256:aa", "something else", "");
        assert!(matches!(
            check_payload(kind.as_bytes(), &subject, &id, "k"),
            Check::Malformed { .. }
        ));
        let binauthz = payload(
            "r:1/demo/app",
            "sha256:aa",
            "Google cloud binauthz container signature",
            "",
        );
        assert!(matches!(
            check_payload(binauthz.as_bytes(), &subject, &id, "k"),
            Check::Valid { .. }
        ));
        let duplicate = r#"{"critical":{"identity":{"docker-reference":"r:1/demo/app"},"image":{"docker-manifest-digest":"sha256:bb","docker-manifest-digest":"sha256:aa"},"type":"cosign container image signature"},"optional":null}"#;
        assert!(matches!(
            check_payload(duplicate.as_bytes(), &subject, &id, "k"),
            Check::Malformed { .. }
        ));
        assert!(matches!(
            check_payload(b"not json", &subject, &id, "k"),
            Check::Malformed { .. }
        ));
    }
}
