//! Sigstore bundle verification, complete and fail-closed, as the
//! Sigstore client specification describes it: for keyless signatures
//! (a short-lived Fulcio certificate) and for key-signed bundles logged to
//! Rekor. Pure: no I/O; the clock is passed in.
//!
//! A bundle verifies only when every check holds; the error names the
//! first that failed:
//!
//! 1. the bundle is well-formed (one verification material, one content,
//!    no colliding JSON keys);
//! 2. the signature verifies — over the artifact's bytes (or its SHA-256,
//!    for a message signature when only the digest is known) or over the
//!    DSSE envelope's pre-authentication encoding — with the certificate's
//!    key or the expected key; a DSSE statement must name the artifact's
//!    SHA-256 among its subjects;
//! 3. every transparency-log entry is in a log of the trusted root, well
//!    formed, with a signed entry timestamp and/or an inclusion proof to a
//!    checkpoint the log signed ([`tlog`]), and records exactly this
//!    signature, signer and artifact ([`body`]);
//! 4. the signing time comes from a verified source — a Rekor v1
//!    integrated time vouched for by its log, or an RFC 3161 timestamp
//!    from a trusted authority over this signature ([`tsa`]) — and every
//!    such time lies within the certificate's validity;
//! 5. the certificate chains to a Fulcio CA of the trusted root valid at
//!    that time, for code signing ([`cert`]), carries an SCT from a
//!    trusted CT log ([`sct`]), and names the expected identity.
//!
//! Building blocks: ring (signatures), rustls-webpki (certificate paths),
//! RustCrypto's x509-cert and cms/x509-tsp (reading certificates and
//! timestamps). No DER is parsed by hand; the Merkle proof and checkpoint
//! checks are short and written here, with tests against every tree
//! shape, because the `sigstore` crate's were incomplete when evaluated.

pub mod body;
pub mod cert;
pub mod cosign;
pub mod identity;
pub mod root;
pub mod sct;
pub mod time;
pub mod tlog;
pub mod tsa;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

pub use cert::Identity;
pub use identity::{IdentityPolicy, Matcher};
pub use root::TrustedRoot;

use crate::oci::json::Strict;

/// The artifact a bundle must be about.
#[derive(Debug, Clone)]
pub enum Artifact {
    /// Its bytes.
    Bytes(Vec<u8>),
    /// Only its SHA-256.
    Digest([u8; 32]),
}

impl Artifact {
    pub fn sha256(&self) -> [u8; 32] {
        match self {
            Artifact::Bytes(bytes) => Sha256::digest(bytes).into(),
            Artifact::Digest(digest) => *digest,
        }
    }
}

/// Who must have signed.
#[derive(Debug, Clone)]
pub enum Signer<'a> {
    /// A certificate issued to one of these identities (keyless).
    Identities(&'a [IdentityPolicy]),
    /// This key (SubjectPublicKeyInfo, DER).
    Key(root::Key),
}

/// What verification requires beyond the signature.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// At least one transparency-log entry (default true).
    pub require_tlog: bool,
    /// An embedded SCT in the certificate (default true).
    pub require_sct: bool,
    /// Now, in milliseconds since the epoch.
    pub now_ms: i64,
}

impl Options {
    pub fn at(now_ms: i64) -> Options {
        Options {
            require_tlog: true,
            require_sct: true,
            now_ms,
        }
    }
}

/// What a verified bundle established.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The certificate's identity (keyless).
    pub identity: Option<Identity>,
    /// The log entries that verified: log URL, index, integrated time.
    pub entries: Vec<(String, i64, Option<i64>)>,
    /// The verified signing times (ms): integrated times and timestamps.
    pub times_ms: Vec<i64>,
    /// The DSSE statement's predicate type, for an envelope.
    pub predicate_type: Option<String>,
    /// The DSSE envelope's payload type and payload (the signed
    /// statement), for an envelope.
    pub statement: Option<(String, Vec<u8>)>,
    /// SHA-256 of the signing certificate (DER), lowercase hex (keyless).
    pub certificate_sha256: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBundle {
    media_type: String,
    verification_material: WireMaterial,
    #[serde(default)]
    message_signature: Option<WireMessage>,
    #[serde(default)]
    dsse_envelope: Option<WireEnvelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMaterial {
    #[serde(default)]
    certificate: Option<WireCert>,
    #[serde(default)]
    x509_certificate_chain: Option<WireChain>,
    #[serde(default)]
    public_key: Option<serde_json::Value>,
    #[serde(default)]
    tlog_entries: Vec<tlog::Entry>,
    #[serde(default)]
    timestamp_verification_data: Option<WireTimestamps>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCert {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct WireChain {
    #[serde(default)]
    certificates: Vec<WireCert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTimestamps {
    #[serde(default)]
    rfc3161_timestamps: Vec<WireTimestamp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTimestamp {
    signed_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMessage {
    #[serde(default)]
    message_digest: Option<WireDigest>,
    signature: String,
}

#[derive(Deserialize)]
struct WireDigest {
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEnvelope {
    payload: String,
    payload_type: String,
    signatures: Vec<WireEnvelopeSignature>,
}

#[derive(Deserialize)]
struct WireEnvelopeSignature {
    sig: String,
}

fn b64(what: &str, text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("{what} is not base64: {e}"))
}

/// The bundle format's version, from its media type.
fn version(media_type: &str) -> Result<(u8, u8), String> {
    match media_type {
        "application/vnd.dev.sigstore.bundle+json;version=0.1" => Ok((0, 1)),
        "application/vnd.dev.sigstore.bundle+json;version=0.2" => Ok((0, 2)),
        "application/vnd.dev.sigstore.bundle+json;version=0.3"
        | "application/vnd.dev.sigstore.bundle.v0.3+json" => Ok((0, 3)),
        other => Err(format!("unsupported bundle mediaType {other:?}")),
    }
}

/// Verifies a bundle (its JSON) for `artifact`, signed as `signer`
/// expects, against `root`.
pub fn verify_bundle(
    json: &[u8],
    artifact: &Artifact,
    signer: &Signer<'_>,
    root: &TrustedRoot,
    options: Options,
) -> Result<Verified, String> {
    Strict::parse(json).map_err(|e| format!("the bundle is not valid JSON: {e}"))?;
    let wire: WireBundle =
        serde_json::from_slice(json).map_err(|e| format!("the bundle is malformed: {e}"))?;
    verify_wire(&wire, artifact, signer, root, options)
}

/// [`verify_bundle`] once the JSON was read (cosign's classic signatures
/// arrive as annotations, read into the same shape by [`cosign`]).
fn verify_wire(
    wire: &WireBundle,
    artifact: &Artifact,
    signer: &Signer<'_>,
    root: &TrustedRoot,
    options: Options,
) -> Result<Verified, String> {
    let version = version(&wire.media_type)?;
    let material = &wire.verification_material;

    // The signer's key.
    let leaf = match (
        &material.certificate,
        &material.x509_certificate_chain,
        &material.public_key,
    ) {
        (Some(cert), None, None) => Some(cert::Leaf::parse(&b64(
            "certificate.rawBytes",
            &cert.raw_bytes,
        )?)?),
        (None, Some(chain), None) => {
            let first = chain
                .certificates
                .first()
                .ok_or("the bundle's certificate chain is empty")?;
            // Only the leaf counts: the chain to a trusted CA comes from
            // the trusted root, never from the bundle.
            Some(cert::Leaf::parse(&b64(
                "x509CertificateChain",
                &first.raw_bytes,
            )?)?)
        }
        (None, None, Some(_)) => None,
        (None, None, None) => return Err("the bundle has no verification material".into()),
        _ => return Err("the bundle has more than one kind of verification material".into()),
    };
    let (key, verifier_der): (&root::Key, body::Verifier<'_>) = match (signer, &leaf) {
        (Signer::Identities(_), Some(leaf)) => (&leaf.key, body::Verifier::Certificate(&leaf.der)),
        (Signer::Identities(_), None) => {
            return Err("the bundle is signed with a key, not a certificate: an identity cannot verify it (give the key)".into())
        }
        (Signer::Key(key), None) => (key, body::Verifier::Key(&key.spki)),
        (Signer::Key(_), Some(_)) => {
            return Err("the bundle is signed with a certificate; verify it by identity, not by key".into())
        }
    };

    // The signature, over what.
    let digest = artifact.sha256();
    let (signature, pae, payload, predicate_type) =
        match (&wire.message_signature, &wire.dsse_envelope) {
            (Some(message), None) => {
                let signature = b64("messageSignature.signature", &message.signature)?;
                if let Some(claimed) = &message.message_digest {
                    if claimed.algorithm != "SHA2_256" {
                        return Err(format!(
                            "unsupported messageDigest algorithm {}",
                            claimed.algorithm
                        ));
                    }
                    if b64("messageDigest.digest", &claimed.digest)? != digest {
                        return Err(
                            "the bundle's messageDigest is not the artifact's SHA-256".into()
                        );
                    }
                }
                let ok = match artifact {
                    Artifact::Bytes(bytes) => key.verify(bytes, &signature),
                    Artifact::Digest(digest) => verify_prehash(key, digest, &signature)?,
                };
                if !ok {
                    return Err("the signature does not verify over the artifact".into());
                }
                (signature, None, None, None)
            }
            (None, Some(envelope)) => {
                let [only] = envelope.signatures.as_slice() else {
                    return Err(format!(
                        "the DSSE envelope has {} signatures; a bundle carries exactly one",
                        envelope.signatures.len()
                    ));
                };
                let signature = b64("dsseEnvelope signature", &only.sig)?;
                let payload = b64("dsseEnvelope.payload", &envelope.payload)?;
                let pae = crate::crypto::pae(&envelope.payload_type, &payload);
                if !key.verify(&pae, &signature) {
                    return Err("the DSSE envelope's signature does not verify".into());
                }
                let predicate_type = statement_names(&envelope.payload_type, &payload, &digest)?;
                (signature, Some(pae), Some(payload), Some(predicate_type))
            }
            (Some(_), Some(_)) => {
                return Err("the bundle holds both a message signature and a DSSE envelope".into())
            }
            (None, None) => {
                return Err(
                    "the bundle holds neither a message signature nor a DSSE envelope".into(),
                )
            }
        };
    let content = match (&pae, &payload) {
        (Some(pae), Some(payload)) => body::Content::Dsse { payload, pae },
        _ => body::Content::Message { digest: &digest },
    };
    let signed = body::Signed {
        content,
        signature: &signature,
        verifier: verifier_der,
    };

    // The transparency log.
    let needs = tlog::Requirements {
        promise: version == (0, 1),
        proof: version >= (0, 2),
    };
    if options.require_tlog && material.tlog_entries.is_empty() {
        return Err("the bundle has no transparency log entry (requireTlog)".into());
    }
    let mut entries = Vec::new();
    let mut times_ms = Vec::new();
    for entry in &material.tlog_entries {
        let logged = entry.verify(root, needs, options.now_ms)?;
        body::check(
            &logged.body,
            &entry.kind_version.kind,
            &entry.kind_version.version,
            &signed,
        )?;
        if let Some(t) = logged.integrated_ms {
            times_ms.push(t);
        }
        entries.push((logged.log, logged.log_index, logged.integrated_ms));
    }

    // RFC 3161 timestamps over the signature.
    let timestamps = material
        .timestamp_verification_data
        .as_ref()
        .map(|t| t.rfc3161_timestamps.as_slice())
        .unwrap_or_default();
    for (i, timestamp) in timestamps.iter().enumerate() {
        let der = b64(
            "rfc3161Timestamps.signedTimestamp",
            &timestamp.signed_timestamp,
        )?;
        let at = tsa::verify(&der, &signature, root)
            .map_err(|e| format!("RFC 3161 timestamp {}: {e}", i + 1))?;
        times_ms.push(at);
    }

    // The certificate, at the signing time.
    let identity = match (&leaf, signer) {
        (Some(leaf), Signer::Identities(policies)) => {
            if times_ms.is_empty() {
                return Err("no verified signing time (neither a log's integrated time nor a trusted timestamp)".into());
            }
            for at in &times_ms {
                if !leaf.valid_at(*at) {
                    return Err("the signing time lies outside the certificate's validity".into());
                }
            }
            let mut ca = None;
            for at in &times_ms {
                ca = Some(leaf.chain_to(root, *at)?);
            }
            let ca = ca.ok_or("no signing time")?;
            if options.require_sct {
                let issuer_spki = issuer_spki(&ca.chain[0])?;
                sct::verify_embedded(leaf, &issuer_spki, root)?;
            }
            let identity = leaf.identity()?;
            identity::check(&identity, policies)?;
            Some(identity)
        }
        _ => None,
    };
    let statement = match (&wire.dsse_envelope, payload) {
        (Some(envelope), Some(payload)) => Some((envelope.payload_type.clone(), payload)),
        _ => None,
    };
    Ok(Verified {
        identity,
        entries,
        times_ms,
        predicate_type,
        statement,
        certificate_sha256: leaf.as_ref().map(|l| hex::encode(Sha256::digest(&l.der))),
    })
}

/// The SubjectPublicKeyInfo (DER) of a CA certificate.
fn issuer_spki(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    use spki::der::{Decode as _, Encode as _};
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| format!("the CA certificate: {e}"))?;
    cert.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("the CA certificate's key: {e}"))
}

/// Verifies an ECDSA P-256 signature over a SHA-256 digest (a message
/// signature checked against an artifact known only by its digest).
fn verify_prehash(key: &root::Key, digest: &[u8; 32], signature: &[u8]) -> Result<bool, String> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    match key.kind {
        root::KeyKind::EcdsaP256Sha256 => {
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(key.raw())
                .map_err(|e| format!("the signer's key: {e}"))?;
            let Ok(signature) = p256::ecdsa::Signature::from_der(signature) else {
                return Ok(false);
            };
            Ok(key.verify_prehash(digest, &signature).is_ok())
        }
        other => Err(format!(
            "a {other:?} message signature can only be verified over the artifact's bytes, not its digest"
        )),
    }
}

/// Checks that a DSSE payload is an in-toto statement naming `digest`
/// (SHA-256) among its subjects; its predicate type.
fn statement_names(
    payload_type: &str,
    payload: &[u8],
    digest: &[u8; 32],
) -> Result<String, String> {
    if payload_type != "application/vnd.in-toto+json" {
        return Err(format!(
            "the DSSE payload type is {payload_type:?}, not an in-toto statement"
        ));
    }
    let statement = Strict::parse(payload).map_err(|e| format!("the in-toto statement: {e}"))?;
    let want = hex::encode(digest);
    let named = statement
        .get("subject")
        .and_then(Strict::as_array)
        .unwrap_or_default()
        .iter()
        .any(|s| {
            s.get("digest")
                .and_then(|d| d.get("sha256"))
                .and_then(Strict::as_str)
                == Some(want.as_str())
        });
    if !named {
        return Err(
            "the in-toto statement does not name the artifact's SHA-256 among its subjects".into(),
        );
    }
    Ok(statement
        .get("predicateType")
        .and_then(Strict::as_str)
        .unwrap_or_default()
        .to_owned())
}
