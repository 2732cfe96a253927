//! What a log entry's body records, compared with the bundle: the same
//! signature, by the same certificate or key, over the same artifact. An
//! entry that is validly logged but about something else proves nothing
//! about this signature.
//!
//! Kinds: `hashedrekord` 0.0.1 (Rekor v1) and 0.0.2 (Rekor v2, also for
//! DSSE: the digest of the envelope's PAE), `dsse` 0.0.1 and 0.0.2, and
//! `intoto` 0.0.2.

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::crypto::pem_decode;
use crate::oci::json::Strict;

/// What the bundle says was signed, and by whom.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub content: Content<'a>,
    /// The signature bytes.
    pub signature: &'a [u8],
    /// The signer: the leaf certificate (DER) or public key (SPKI DER).
    pub verifier: Verifier<'a>,
}

#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    /// A message signature over an artifact with this SHA-256.
    Message { digest: &'a [u8; 32] },
    /// A DSSE envelope.
    Dsse {
        payload: &'a [u8],
        /// The pre-authentication encoding the signature covers.
        pae: &'a [u8],
    },
}

#[derive(Debug, Clone, Copy)]
pub enum Verifier<'a> {
    Certificate(&'a [u8]),
    Key(&'a [u8]),
}

fn b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// Follows object keys.
fn at<'v>(value: &'v Strict, path: &[&str]) -> Option<&'v Strict> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn text<'v>(value: &'v Strict, path: &[&str]) -> Result<&'v str, String> {
    at(value, path)
        .and_then(Strict::as_str)
        .ok_or_else(|| format!("the log entry's body has no {}", path.join(".")))
}

/// A verifier as Rekor v1 records it: base64 of a PEM certificate or key.
fn pem_matches(recorded: &str, verifier: Verifier<'_>) -> bool {
    let Some(pem) = b64(recorded) else {
        return false;
    };
    let Ok(pem) = String::from_utf8(pem) else {
        return false;
    };
    let Ok((label, der)) = pem_decode(&pem) else {
        return false;
    };
    match verifier {
        Verifier::Certificate(cert) => label == "CERTIFICATE" && der == cert,
        Verifier::Key(key) => label == "PUBLIC KEY" && der == key,
    }
}

/// A verifier as Rekor v2 records it: `{x509Certificate: {rawBytes}}` or
/// `{publicKey: {rawBytes}}`.
fn v2_verifier_matches(recorded: &Strict, verifier: Verifier<'_>) -> bool {
    let (path, want): (&[&str], &[u8]) = match verifier {
        Verifier::Certificate(cert) => (&["x509Certificate", "rawBytes"], cert),
        Verifier::Key(key) => (&["publicKey", "rawBytes"], key),
    };
    at(recorded, path)
        .and_then(Strict::as_str)
        .and_then(b64)
        .is_some_and(|raw| raw == want)
}

/// Checks that `body` (JSON), of the entry's `kind` and `version`, records
/// exactly `signed`.
pub fn check(body: &[u8], kind: &str, version: &str, signed: &Signed<'_>) -> Result<(), String> {
    let value = Strict::parse(body).map_err(|e| format!("the log entry's body: {e}"))?;
    let body_kind = text(&value, &["kind"])?;
    let body_version = text(&value, &["apiVersion"])?;
    if body_kind != kind || body_version != version {
        return Err(format!(
            "the log entry says {kind} {version}, its body is {body_kind} {body_version}"
        ));
    }
    let mismatch = |what: &str| {
        Err(format!(
            "the log entry records a different {what} than the bundle"
        ))
    };
    match (kind, version, signed.content) {
        ("hashedrekord", "0.0.1", Content::Message { digest }) => {
            if text(&value, &["spec", "data", "hash", "algorithm"])? != "sha256"
                || text(&value, &["spec", "data", "hash", "value"])? != hex::encode(digest)
            {
                return mismatch("artifact digest");
            }
            if b64(text(&value, &["spec", "signature", "content"])?).as_deref() != Some(signed.signature) {
                return mismatch("signature");
            }
            if !pem_matches(text(&value, &["spec", "signature", "publicKey", "content"])?, signed.verifier) {
                return mismatch("certificate or key");
            }
            Ok(())
        }
        ("hashedrekord", "0.0.2", content) => {
            let spec = at(&value, &["spec", "hashedRekordV002"]).ok_or("the log entry's body has no spec.hashedRekordV002")?;
            let want: [u8; 32] = match content {
                Content::Message { digest } => *digest,
                Content::Dsse { pae, .. } => Sha256::digest(pae).into(),
            };
            if text(spec, &["data", "algorithm"])? != "SHA2_256"
                || b64(text(spec, &["data", "digest"])?).as_deref() != Some(want.as_slice())
            {
                return mismatch("artifact digest");
            }
            if b64(text(spec, &["signature", "content"])?).as_deref() != Some(signed.signature) {
                return mismatch("signature");
            }
            let verifier = at(spec, &["signature", "verifier"]).ok_or("the log entry's body has no verifier")?;
            if !v2_verifier_matches(verifier, signed.verifier) {
                return mismatch("certificate or key");
            }
            Ok(())
        }
        ("dsse", "0.0.1", Content::Dsse { payload, .. }) => {
            if text(&value, &["spec", "payloadHash", "algorithm"])? != "sha256"
                || text(&value, &["spec", "payloadHash", "value"])? != hex::encode(Sha256::digest(payload))
            {
                return mismatch("payload");
            }
            let signatures = at(&value, &["spec", "signatures"])
                .and_then(Strict::as_array)
                .ok_or("the log entry's body has no spec.signatures")?;
            let ours = signatures.iter().any(|s| {
                s.get("signature").and_then(Strict::as_str).and_then(b64).as_deref() == Some(signed.signature)
                    && s.get("verifier").and_then(Strict::as_str).is_some_and(|v| pem_matches(v, signed.verifier))
            });
            if signatures.len() != 1 || !ours {
                return mismatch("signature or certificate");
            }
            Ok(())
        }
        ("dsse", "0.0.2", Content::Dsse { payload, .. }) => {
            let spec = at(&value, &["spec", "dsseV002"]).ok_or("the log entry's body has no spec.dsseV002")?;
            if text(spec, &["payloadHash", "algorithm"])? != "SHA2_256"
                || b64(text(spec, &["payloadHash", "digest"])?).as_deref()
                    != Some(Sha256::digest(payload).as_slice())
            {
                return mismatch("payload");
            }
            let signatures = spec.get("signatures").and_then(Strict::as_array).ok_or("the log entry's body has no signatures")?;
            let ours = signatures.iter().any(|s| {
                s.get("content").and_then(Strict::as_str).and_then(b64).as_deref() == Some(signed.signature)
                    && s.get("verifier").is_some_and(|v| v2_verifier_matches(v, signed.verifier))
            });
            if signatures.len() != 1 || !ours {
                return mismatch("signature or certificate");
            }
            Ok(())
        }
        ("intoto", "0.0.2", Content::Dsse { payload, .. }) => {
            let content = at(&value, &["spec", "content"]).ok_or("the log entry's body has no spec.content")?;
            if text(content, &["payloadHash", "algorithm"])? != "sha256"
                || text(content, &["payloadHash", "value"])? != hex::encode(Sha256::digest(payload))
            {
                return mismatch("payload");
            }
            let signatures = at(content, &["envelope", "signatures"])
                .and_then(Strict::as_array)
                .ok_or("the log entry's body has no envelope signatures")?;
            // Rekor's intoto type stores each signature base64-encoded
            // once more.
            let ours = signatures.iter().any(|s| {
                let sig = s.get("sig").and_then(Strict::as_str).and_then(b64);
                let sig = sig
                    .as_deref()
                    .and_then(|once| std::str::from_utf8(once).ok())
                    .and_then(b64);
                sig.as_deref() == Some(signed.signature)
                    && s.get("publicKey").and_then(Strict::as_str).is_some_and(|v| pem_matches(v, signed.verifier))
            });
            if signatures.len() != 1 || !ours {
                return mismatch("signature or certificate");
            }
            Ok(())
        }
        (kind, version, Content::Message { .. }) => Err(format!(
            "a log entry of kind {kind} {version} cannot record a message signature"
        )),
        (kind, version, Content::Dsse { .. }) => Err(format!(
            "a log entry of kind {kind} {version} cannot record a DSSE envelope (or the kind is not supported)"
        )),
    }
}
