//! Evidence artifacts served to clients: cosign's `.sig`/`.att` manifests
//! and referrers (sigstore bundles), which `cosign verify` and other
//! verifiers read through the proxy.
//!
//! A manifest's labels are written by whoever pushed it, so none of them
//! decides that it is evidence. A manifest is served as evidence only when
//! all of these hold (checked by the verifier, rules first: an
//! `ALWAYS_DENY` rule serves nothing):
//!
//! 1. it was **reached as evidence** of an image in the same repository:
//!    requested by cosign's `sha256-<hex>.sig|.att` tag, or carrying an
//!    OCI `subject` (a referrer), and the two agree when both are there
//!    ([`relation`]);
//! 2. it is an **image manifest** (never an index: evidence admits no
//!    child manifests) with at least one layer;
//! 3. the **image it is evidence for is admitted** under the current
//!    policy (the verifier checks, verifying that image if needed);
//! 4. its **bytes are evidence** ([`check_content`]): every layer's
//!    declared type is a signature/attestation type and its content,
//!    fetched (bounded, within the verification's evidence budget) and
//!    digest-checked, parses as that type (simple-signing JSON, a DSSE
//!    envelope, a sigstore bundle); the config is small JSON that cannot
//!    start a container.
//!
//! Only then are its config and layers admitted as servable blobs. A
//! runnable image labelled as a signature, a manifest listing another
//! image's layers, or an artifact of an image the policy denies are all
//! refused, and the refusal is a decision in the audit trail.

use super::budget::Budget;
use super::sources::cosign::{
    DSSE_ENVELOPE, MAX_ENVELOPE_BYTES, MAX_PAYLOAD_BYTES, SIMPLE_SIGNING,
};
use super::VerifyError;
use crate::oci::json::Strict;
use crate::oci::manifest::{Descriptor, Kind, Reading};
use crate::oci::{Digest, Reference};
use crate::routing::{Endpoint, Route};
use crate::upstream::Upstream;

/// Largest config read of an evidence artifact (cosign's is ~250 bytes;
/// referrers use the 2-byte empty descriptor).
pub const MAX_ARTIFACT_CONFIG_BYTES: usize = 64 * 1024;

/// The evidence layer types, with the most bytes one layer may have.
fn layer_limit(media_type: &str) -> Option<usize> {
    match media_type {
        SIMPLE_SIGNING => Some(MAX_PAYLOAD_BYTES),
        DSSE_ENVELOPE => Some(MAX_ENVELOPE_BYTES),
        t if super::formats::bundle::is_bundle_media_type(t) => Some(MAX_ENVELOPE_BYTES),
        _ => None,
    }
}

/// The image a manifest was reached as evidence of, if it was: the digest
/// a cosign `sha256-<hex>.sig|.att` tag names, or the manifest's
/// `subject`. `Err` when the two disagree, or when the manifest names
/// itself.
pub fn relation(
    route: &Route,
    digest: &Digest,
    reading: &Reading,
) -> Result<Option<Digest>, String> {
    let by_tag = match &route.endpoint {
        Endpoint::Manifest(Reference::Tag(tag)) => cosign_tag_subject(tag),
        _ => None,
    };
    let by_subject = reading.subject.as_ref().map(|s| s.digest.clone());
    let subject = match (by_tag, by_subject) {
        (Some(t), Some(s)) if t != s => {
            return Err(format!(
                "its tag names {t} but its subject is {s}: evidence for two images"
            ))
        }
        (Some(t), _) => t,
        (None, Some(s)) => s,
        (None, None) => return Ok(None),
    };
    if &subject == digest {
        return Err("it names itself as its subject".into());
    }
    Ok(Some(subject))
}

/// `sha256-<hex>.sig` / `.att` → `sha256:<hex>`.
fn cosign_tag_subject(tag: &str) -> Option<Digest> {
    let stem = tag
        .strip_suffix(".sig")
        .or_else(|| tag.strip_suffix(".att"))?;
    let (algorithm, hex) = stem.split_once('-')?;
    format!("{algorithm}:{hex}").parse().ok()
}

/// Checks that an evidence artifact's bytes are evidence: `Ok(Err(why))`
/// when they are not (a denial), `Err` when they could not be read (an
/// upstream failure, or the evidence budget).
pub async fn check_content(
    upstream: &Upstream,
    budget: &Budget,
    repository: &str,
    reading: &Reading,
) -> Result<Result<(), String>, VerifyError> {
    if reading.kind != Kind::Image {
        return Ok(Err(format!(
            "evidence must be an image manifest, not an {}",
            reading.kind.name()
        )));
    }
    if reading.layers.is_empty() {
        return Ok(Err("evidence without layers".into()));
    }
    let Some(config) = &reading.config else {
        return Ok(Err("evidence without a config".into()));
    };
    if config.size > MAX_ARTIFACT_CONFIG_BYTES as u64 {
        return Ok(Err(format!(
            "its config of {} bytes is larger than an evidence config ({MAX_ARTIFACT_CONFIG_BYTES})",
            config.size
        )));
    }
    let bytes = budget
        .blob(
            upstream,
            repository,
            &config.digest,
            config.size,
            MAX_ARTIFACT_CONFIG_BYTES,
        )
        .await?;
    if let Err(why) = config_is_inert(&bytes) {
        return Ok(Err(format!("its config {why}")));
    }
    for (i, layer) in reading.layers.iter().enumerate() {
        if let Err(why) = check_layer(upstream, budget, repository, layer).await? {
            return Ok(Err(format!("layer {}: {why}", i + 1)));
        }
    }
    Ok(Ok(()))
}

async fn check_layer(
    upstream: &Upstream,
    budget: &Budget,
    repository: &str,
    layer: &Descriptor,
) -> Result<Result<(), String>, VerifyError> {
    let Some(limit) = layer_limit(&layer.media_type) else {
        return Ok(Err(format!(
            "{:?} is not a signature or attestation type",
            layer.media_type
        )));
    };
    if layer.size > limit as u64 {
        return Ok(Err(format!(
            "{} bytes, more than a {} may have ({limit})",
            layer.size, layer.media_type
        )));
    }
    let bytes = budget
        .blob(upstream, repository, &layer.digest, layer.size, limit)
        .await?;
    Ok(content_is(&layer.media_type, &bytes))
}

/// Whether `bytes` are what an evidence layer of `media_type` holds.
pub fn content_is(media_type: &str, bytes: &[u8]) -> Result<(), String> {
    let doc = Strict::parse(bytes).map_err(|e| format!("is not {media_type} content: {e}"))?;
    let object = |key: &str| doc.get(key).is_some_and(Strict::is_object);
    let string = |key: &str| doc.get(key).and_then(Strict::as_str).is_some();
    let ok = match media_type {
        // A simple-signing payload: `critical` with the image and type.
        SIMPLE_SIGNING => {
            let critical = doc.get("critical");
            critical.is_some_and(|c| c.get("image").is_some_and(Strict::is_object))
                && critical.is_some_and(|c| c.get("type").and_then(Strict::as_str).is_some())
        }
        DSSE_ENVELOPE => {
            string("payload")
                && string("payloadType")
                && doc.get("signatures").and_then(Strict::as_array).is_some()
        }
        // A sigstore bundle: its own media type and verification material.
        _ => {
            doc.get("mediaType")
                .and_then(Strict::as_str)
                .is_some_and(super::formats::bundle::is_bundle_media_type)
                && object("verificationMaterial")
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("its content is not a {media_type}"))
    }
}

/// A config that cannot start a container: a JSON object (read
/// unambiguously) with no OS, no architecture and no entrypoint or
/// command, looked up the way a Go runtime looks them up. cosign writes
/// exactly such a config; referrers use the empty descriptor `{}`.
pub fn config_is_inert(config: &[u8]) -> Result<(), String> {
    let doc = Strict::parse(config).map_err(|e| format!("is not readable: {e}"))?;
    if !doc.is_object() {
        return Err("is not a JSON object".into());
    }
    let empty = |v: Option<&Strict>| v.is_none_or(Strict::is_empty_value);
    let inner = doc.get("config");
    for (what, value) in [
        ("os", doc.get("os")),
        ("architecture", doc.get("architecture")),
        ("config.Entrypoint", inner.and_then(|c| c.get("Entrypoint"))),
        ("config.Cmd", inner.and_then(|c| c.get("Cmd"))),
    ] {
        if !empty(value) {
            return Err(format!("sets {what}: it could start a container"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosign_config_and_the_empty_descriptor_are_inert() {
        let cosign = br#"{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":["sha256:4306feade2f8d7aa22ad654dfd61d0ee66a94f8970fba8d825f45641e9087a78"]},"config":{}}"#;
        assert_eq!(config_is_inert(cosign), Ok(()));
        assert_eq!(config_is_inert(b"{}"), Ok(()));
    }

    #[test]
    fn runnable_configs_are_not_inert_however_they_spell_it() {
        for config in [
            &br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]}}"#[..],
            br#"{"architecture":"","os":"","config":{"Entrypoint":["/x"]}}"#,
            // Go matches keys case-insensitively and keeps the last
            // duplicate: both spellings are refused.
            br#"{"os":"","OS":"linux"}"#,
            br#"{"os":"","os":"linux"}"#,
            br#"{"config":{"Entrypoint":null,"entrypoint":["/bin/sh"]}}"#,
            br#"{"OS":"linux"}"#,
            br#"{"Config":{"cmd":["sh"]}}"#,
            b"not json",
            b"[]",
        ] {
            assert!(
                config_is_inert(config).is_err(),
                "{}",
                String::from_utf8_lossy(config)
            );
        }
    }

    #[test]
    fn layers_must_hold_what_their_type_says() {
        let payload = br#"{"critical":{"identity":{"docker-reference":"r/a"},"image":{"docker-manifest-digest":"sha256:00"},"type":"cosign container image signature"},"optional":null}"#;
        assert_eq!(content_is(SIMPLE_SIGNING, payload), Ok(()));
        let envelope = br#"{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"sig":"AA=="}]}"#;
        assert_eq!(content_is(DSSE_ENVELOPE, envelope), Ok(()));
        let bundle = br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{},"messageSignature":{}}"#;
        assert_eq!(
            content_is("application/vnd.dev.sigstore.bundle.v0.3+json", bundle),
            Ok(())
        );
        // A gzip'd tar labelled as a signature is not one.
        let targz = [0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0x03];
        assert!(content_is(SIMPLE_SIGNING, &targz).is_err());
        assert!(content_is(DSSE_ENVELOPE, payload).is_err());
        assert!(content_is(SIMPLE_SIGNING, envelope).is_err());
        // Ambiguous JSON is not evidence either.
        let doubled = br#"{"critical":{"image":{},"type":"x"},"Critical":{}}"#;
        assert!(content_is(SIMPLE_SIGNING, doubled).is_err());
    }

    #[test]
    fn cosign_tags_name_their_subject() {
        let hex = "a".repeat(64);
        assert_eq!(
            cosign_tag_subject(&format!("sha256-{hex}.sig")).map(|d| d.to_string()),
            Some(format!("sha256:{hex}"))
        );
        assert!(cosign_tag_subject(&format!("sha256-{hex}.att")).is_some());
        assert!(cosign_tag_subject(&format!("sha256-{hex}")).is_none());
        assert!(cosign_tag_subject("latest.sig").is_none());
        assert!(cosign_tag_subject("sha256-zz.sig").is_none());
    }
}
