//! cosign's classic keyless signatures and attestations: a
//! `sha256-<hex>.sig` layer (a simple-signing payload, its signature in
//! an annotation) or a `sha256-<hex>.att` layer (a DSSE envelope) whose
//! Fulcio certificate, Rekor entry and timestamp travel as layer
//! annotations. They are read into the shape of a v0.1 bundle (a signed
//! entry timestamp, no inclusion proof required — what cosign's
//! `dev.sigstore.cosign/bundle` carries) and verified by the same code as
//! every bundle ([`super::verify_wire`]).
//!
//! The `dev.sigstore.cosign/chain` annotation is never read: the path to
//! a trusted CA comes from the trusted root only.

use std::collections::HashMap;

use serde::Deserialize;

use super::{
    tlog, verify_wire, Artifact, Options, Signer, TrustedRoot, Verified, WireBundle, WireCert,
    WireEnvelope, WireEnvelopeSignature, WireMaterial, WireMessage, WireTimestamp, WireTimestamps,
};
use crate::oci::json::Strict;

/// The signing certificate (PEM).
pub const CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
/// The Rekor entry with its signed entry timestamp (JSON).
pub const BUNDLE: &str = "dev.sigstore.cosign/bundle";
/// An RFC 3161 timestamp over the signature (JSON).
pub const TIMESTAMP: &str = "dev.sigstore.cosign/rfc3161timestamp";

/// What a layer signs.
#[derive(Debug, Clone, Copy)]
pub enum Signed<'a> {
    /// A `.sig` layer: the payload and the base64 signature annotation.
    Payload {
        payload: &'a [u8],
        signature_b64: &'a str,
    },
    /// A `.att` layer: a DSSE envelope (JSON), about the image `digest`.
    Envelope { json: &'a [u8], digest: [u8; 32] },
}

/// Whether a layer's annotations carry a signing certificate (a keyless
/// signature, or one made with a certificate).
pub fn has_certificate(annotations: &HashMap<String, String>) -> bool {
    annotations.contains_key(CERTIFICATE)
}

/// `dev.sigstore.cosign/bundle`: cosign's `RekorBundle`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RekorBundle {
    #[serde(rename = "SignedEntryTimestamp")]
    signed_entry_timestamp: String,
    #[serde(rename = "Payload")]
    payload: RekorPayload,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RekorPayload {
    body: String,
    integrated_time: i64,
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rfc3161 {
    #[serde(rename = "SignedRFC3161Timestamp")]
    signed: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

/// Reads `text` as JSON the way Go and Portcullis agree on (no
/// duplicate or case-colliding keys), then into `T`.
fn strict<T: serde::de::DeserializeOwned>(what: &str, text: &[u8]) -> Result<T, String> {
    Strict::parse(text).map_err(|e| format!("{what}: {e}"))?;
    serde_json::from_slice(text).map_err(|e| format!("{what}: {e}"))
}

fn b64(what: &str, text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("{what} is not base64: {e}"))
}

/// The log entry of a `dev.sigstore.cosign/bundle` annotation.
fn entry(json: &str) -> Result<tlog::Entry, String> {
    use base64::Engine as _;
    let bundle: RekorBundle = strict(BUNDLE, json.as_bytes())?;
    let body = b64(&format!("{BUNDLE} Payload.body"), &bundle.payload.body)?;
    let parsed = Strict::parse(&body).map_err(|e| format!("the Rekor entry body: {e}"))?;
    let field = |name: &str| {
        parsed
            .get(name)
            .and_then(Strict::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("the Rekor entry body has no {name}"))
    };
    let log_id = hex::decode(&bundle.payload.log_id)
        .map_err(|_| format!("{BUNDLE} Payload.logID is not hex"))?;
    Ok(tlog::Entry {
        log_index: bundle.payload.log_index,
        log_id: tlog::LogId {
            key_id: base64::engine::general_purpose::STANDARD.encode(log_id),
        },
        kind_version: tlog::KindVersion {
            kind: field("kind")?,
            version: field("apiVersion")?,
        },
        integrated_time: Some(bundle.payload.integrated_time),
        inclusion_promise: Some(tlog::Promise {
            signed_entry_timestamp: bundle.signed_entry_timestamp,
        }),
        inclusion_proof: None,
        canonicalized_body: bundle.payload.body,
    })
}

/// Verifies a classic cosign layer signed with a certificate: the
/// signature, the Rekor entry (when there is one, or `requireTlog`), the
/// timestamp, the chain at the signing time, the SCT and the identity.
pub fn verify(
    signed: Signed<'_>,
    annotations: &HashMap<String, String>,
    signer: &Signer<'_>,
    root: &TrustedRoot,
    options: Options,
) -> Result<Verified, String> {
    let pem = annotations
        .get(CERTIFICATE)
        .ok_or("the layer has no signing certificate annotation")?;
    let (label, der) = crate::crypto::pem_decode(pem).map_err(|e| format!("{CERTIFICATE}: {e}"))?;
    if label != "CERTIFICATE" {
        return Err(format!(
            "{CERTIFICATE} holds a PEM {label:?}, not a CERTIFICATE"
        ));
    }
    let certificate = {
        use base64::Engine as _;
        WireCert {
            raw_bytes: base64::engine::general_purpose::STANDARD.encode(der),
        }
    };
    let tlog_entries = match annotations.get(BUNDLE) {
        Some(json) => vec![entry(json)?],
        None => Vec::new(),
    };
    let timestamps = match annotations.get(TIMESTAMP) {
        Some(json) => {
            let wire: Rfc3161 = strict(TIMESTAMP, json.as_bytes())?;
            Some(WireTimestamps {
                rfc3161_timestamps: vec![WireTimestamp {
                    signed_timestamp: wire.signed,
                }],
            })
        }
        None => None,
    };
    let (message_signature, dsse_envelope, artifact) = match signed {
        Signed::Payload {
            payload,
            signature_b64,
        } => (
            Some(WireMessage {
                message_digest: None,
                signature: signature_b64.trim().to_owned(),
            }),
            None,
            Artifact::Bytes(payload.to_vec()),
        ),
        Signed::Envelope { json, digest } => {
            let envelope: Envelope = strict("the DSSE envelope", json)?;
            (
                None,
                Some(WireEnvelope {
                    payload: envelope.payload,
                    payload_type: envelope.payload_type,
                    signatures: envelope
                        .signatures
                        .into_iter()
                        .map(|s| WireEnvelopeSignature { sig: s.sig })
                        .collect(),
                }),
                Artifact::Digest(digest),
            )
        }
    };
    let wire = WireBundle {
        media_type: "application/vnd.dev.sigstore.bundle+json;version=0.1".into(),
        verification_material: WireMaterial {
            certificate: Some(certificate),
            x509_certificate_chain: None,
            public_key: None,
            tlog_entries,
            timestamp_verification_data: timestamps,
        },
        message_signature,
        dsse_envelope,
    };
    verify_wire(&wire, &artifact, signer, root, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sigstore::IdentityPolicy;
    use crate::verify::testing::fixture;

    const CONNAISSEUR: &str = "connaisseur/cosign/securesystemsengineering/testimage";
    const CONTAINERS_IMAGE: &str = "containers-image/sigstore/dir-img-cosign-fulcio-rekor-valid";

    /// The one layer of a `.sig` manifest: its annotations.
    fn annotations(sig_manifest: &str) -> HashMap<String, String> {
        let manifest: serde_json::Value =
            serde_json::from_slice(&fixture(sig_manifest)).expect("JSON");
        serde_json::from_value(manifest["layers"][0]["annotations"].clone()).expect("annotations")
    }

    /// Connaisseur's keyless `.sig` (public-good Fulcio and Rekor, 2024).
    fn connaisseur() -> (Vec<u8>, HashMap<String, String>) {
        let payload = fixture(&format!(
            "{CONNAISSEUR}/blobs/sha256:897d9e862b4599b723442f36ed7b4cfd1628bb7656643c56855988cac161d065.json"
        ));
        let annotations = annotations(&format!(
            "{CONNAISSEUR}/manifests/sha256-31dc72a13a0c34b40eb95419d2b2fd67320c856baf3b72da518023ee8d370aee.sig.json"
        ));
        (payload, annotations)
    }

    fn check(
        payload: &[u8],
        annotations: &HashMap<String, String>,
        identity: &IdentityPolicy,
        root: &TrustedRoot,
        options: Options,
    ) -> Result<Verified, String> {
        let signed = Signed::Payload {
            payload,
            signature_b64: &annotations["dev.cosignproject.cosign/signature"],
        };
        let identities = [identity.clone()];
        verify(
            signed,
            annotations,
            &Signer::Identities(&identities),
            root,
            options,
        )
    }

    const NOW: i64 = 1_780_000_000_000;
    const PHILIPP: &str = "philipp.belitz@securesystems.de";
    const GITHUB_OAUTH: &str = "https://github.com/login/oauth";

    #[test]
    fn connaisseurs_keyless_signature_verifies_under_the_public_good_root() {
        let (payload, annotations) = connaisseur();
        let root = TrustedRoot::public_good();
        let right = IdentityPolicy::exact(PHILIPP, GITHUB_OAUTH);
        let verified =
            check(&payload, &annotations, &right, &root, Options::at(NOW)).expect("verifies");
        let identity = verified.identity.expect("keyless");
        assert_eq!(identity.subject.as_deref(), Some(PHILIPP));
        assert_eq!(verified.entries.len(), 1);
        assert_eq!(verified.entries[0].2, Some(1_717_082_297_000));

        for (identity, says) in [
            (
                IdentityPolicy::exact("bob@gmail.com", GITHUB_OAUTH),
                "subject",
            ),
            (
                IdentityPolicy::exact(PHILIPP, "https://accounts.google.com"),
                "issuer",
            ),
        ] {
            let e = check(&payload, &annotations, &identity, &root, Options::at(NOW))
                .expect_err("wrong identity");
            assert!(e.contains(says) && e.contains(PHILIPP), "{e}");
        }
    }

    #[test]
    fn every_part_of_a_classic_keyless_signature_is_checked() {
        let (payload, annotations) = connaisseur();
        let root = TrustedRoot::public_good();
        let right = IdentityPolicy::exact(PHILIPP, GITHUB_OAUTH);
        let refused = |payload: &[u8], annotations: &HashMap<String, String>, says: &str| {
            let e = check(payload, annotations, &right, &root, Options::at(NOW)).expect_err(says);
            assert!(e.contains(says), "wanted {says:?}: {e}");
        };
        // Another payload: the signature no longer holds.
        let mut other = payload.clone();
        other[10] ^= 1;
        refused(&other, &annotations, "signature");
        // No Rekor entry: no signing time (the certificate expired in 2024).
        let mut no_bundle = annotations.clone();
        no_bundle.remove(BUNDLE);
        refused(&payload, &no_bundle, "no transparency log entry");
        let lax = Options {
            require_tlog: false,
            ..Options::at(NOW)
        };
        let e = check(&payload, &no_bundle, &right, &root, lax).expect_err("no time");
        assert!(e.contains("no verified signing time"), "{e}");
        // A forged signed entry timestamp.
        let mut forged = annotations.clone();
        let bundle = forged[BUNDLE].replacen("MEUCIEoH", "MEUCIEoI", 1);
        forged.insert(BUNDLE.into(), bundle);
        refused(&payload, &forged, "signed entry timestamp");
        // An integrated time moved outside the certificate's validity is
        // caught by the signed entry timestamp over it.
        let mut moved = annotations.clone();
        let bundle = moved[BUNDLE].replacen("1717082297", "1717092297", 1);
        moved.insert(BUNDLE.into(), bundle);
        refused(&payload, &moved, "signed entry timestamp");
        // A certificate from a CA the root does not hold.
        let mut no_ca = root.clone();
        no_ca.certificate_authorities.clear();
        let e = check(&payload, &annotations, &right, &no_ca, Options::at(NOW))
            .expect_err("untrusted CA");
        assert!(e.contains("certificate authority"), "{e}");
        // Case-colliding keys in the Rekor bundle are ambiguous.
        let mut ambiguous = annotations.clone();
        let bundle = ambiguous[BUNDLE].replacen('{', "{\"signedEntryTimestamp\":\"x\",", 1);
        ambiguous.insert(BUNDLE.into(), bundle);
        refused(&payload, &ambiguous, BUNDLE);
    }

    #[test]
    fn containers_images_fulcio_signature_verifies_at_its_integrated_time() {
        let dir = CONTAINERS_IMAGE;
        let payload = fixture(&format!("{dir}/signature-1.payload"));
        let annotations: HashMap<String, String> =
            serde_json::from_slice(&fixture(&format!("{dir}/signature-1.annotations.json")))
                .expect("annotations");
        let root = TrustedRoot::public_good();
        let right = IdentityPolicy::exact("mitr@redhat.com", GITHUB_OAUTH);
        let verified =
            check(&payload, &annotations, &right, &root, Options::at(NOW)).expect("verifies");
        assert_eq!(verified.times_ms.len(), 1);
    }
}
