//! Evidence source: cosign tag-based signatures (`sha256-<hex>.sig`).
//!
//! Fetches the `.sig` manifest from the image's repository (or an
//! attestor's `signatureRepository`) and the payload blob of every
//! simple-signing layer, concurrently. Transport and upstream failures are
//! errors (the caller fails closed and does not cache them); content that
//! cannot be a valid signature becomes a `Malformed` candidate, which is a
//! verdict like any other.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;

use super::simple_signing::Candidate;
use super::VerifyError;
use crate::oci::{media, Digest};
use crate::serve::MAX_MANIFEST_BYTES;
use crate::upstream::Upstream;

/// The layer media type of a cosign / containers-image signature.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation carrying the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Largest signature payload fetched (cosign's are ~250 bytes; annotations
/// make them larger, never megabytes).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Signature layers examined per `.sig` manifest; more is a hostile or
/// broken upstream, and the rest are reported, not fetched.
pub const MAX_SIGNATURE_LAYERS: usize = 64;

/// A candidate, or why the layer could not be one.
pub type Found = (String, Result<Candidate, String>);

#[derive(Deserialize)]
struct SigManifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
pub(crate) struct Layer {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub annotations: std::collections::HashMap<String, String>,
}

/// The layer media type of a cosign attestation (`.att`): a DSSE envelope.
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
/// Largest DSSE envelope fetched (SLSA provenance is kilobytes; a few MiB
/// of SBOM attestation is possible but not something to verify inline).
pub const MAX_ENVELOPE_BYTES: usize = 4 * 1024 * 1024;

/// All simple-signing signatures stored for `digest` in `repository`.
///
/// `likely` are payloads the signer probably wrote
/// ([`super::simple_signing::likely_payloads`]): a layer whose digest one
/// of them has is not fetched, since those are its bytes. With cosign's
/// defaults that saves the payload round trip, the slowest step of a cold
/// verification.
pub async fn signatures(
    upstream: Arc<Upstream>,
    repository: &str,
    digest: &Digest,
    likely: &[Vec<u8>],
) -> Result<Vec<Found>, VerifyError> {
    let layers = artifact_layers(
        upstream,
        repository,
        digest,
        "sig",
        SIMPLE_SIGNING,
        MAX_PAYLOAD_BYTES,
        likely,
    )
    .await?;
    Ok(layers
        .into_iter()
        .map(|(source, layer)| {
            let candidate = layer.and_then(|(payload, annotations)| {
                let signature_b64 = annotations
                    .get(SIGNATURE_ANNOTATION)
                    .cloned()
                    .ok_or_else(|| "layer has no signature annotation".to_owned())?;
                Ok(Candidate {
                    payload: payload.to_vec(),
                    signature_b64,
                })
            });
            (source, candidate)
        })
        .collect())
}

/// All DSSE envelopes stored as cosign attestations (`sha256-<hex>.att`)
/// for `digest` in `repository`.
pub async fn attestations(
    upstream: Arc<Upstream>,
    repository: &str,
    digest: &Digest,
) -> Result<Vec<(String, Result<Bytes, String>)>, VerifyError> {
    let layers = artifact_layers(
        upstream,
        repository,
        digest,
        "att",
        DSSE_ENVELOPE,
        MAX_ENVELOPE_BYTES,
        &[],
    )
    .await?;
    Ok(layers
        .into_iter()
        .map(|(source, layer)| (source, layer.map(|(bytes, _)| bytes)))
        .collect())
}

type Annotations = std::collections::HashMap<String, String>;

/// The layers of `media_type` in the `sha256-<hex>.<suffix>` manifest, each
/// fetched (concurrently, bounded by `limit` bytes) with its annotations;
/// a layer with the digest of one of the `known` contents is not fetched.
async fn artifact_layers(
    upstream: Arc<Upstream>,
    repository: &str,
    digest: &Digest,
    suffix: &str,
    media_type: &'static str,
    limit: usize,
    known: &[Vec<u8>],
) -> Result<Vec<(String, Result<(Bytes, Annotations), String>)>, VerifyError> {
    let tag = format!("{}.{suffix}", digest.tag_form());
    let where_ = format!("{}/{repository}:{tag}", upstream.registry);
    let mut accept = HeaderMap::new();
    accept.insert(
        header::ACCEPT,
        HeaderValue::from_static(
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        ),
    );
    let path = format!("/v2/{repository}/manifests/{tag}");
    let response = upstream
        .fetch(Method::GET, &path, repository, &accept)
        .await?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(Vec::new()),
        status => {
            return Err(VerifyError::Status {
                what: where_,
                status,
            })
        }
    }
    let bytes = read_bounded(response.into_body(), MAX_MANIFEST_BYTES, &where_).await?;
    let manifest: SigManifest = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            return Ok(vec![(
                where_,
                Err(format!("{suffix} manifest is not valid JSON: {e}")),
            )])
        }
    };
    let mut found = Vec::new();
    let mut fetched_known = Vec::new();
    let mut fetches = tokio::task::JoinSet::new();
    let matching = manifest
        .layers
        .into_iter()
        .enumerate()
        .filter(|(_, l)| l.media_type == media_type);
    for (count, (index, layer)) in matching.enumerate() {
        let source = format!("{where_} layer {}", index + 1);
        if count >= MAX_SIGNATURE_LAYERS {
            found.push((
                source,
                Err(format!(
                    "more than {MAX_SIGNATURE_LAYERS} layers; not examined"
                )),
            ));
            continue;
        }
        let layer_digest: Digest = match layer.digest.parse() {
            Ok(d) => d,
            Err(_) => {
                found.push((
                    source,
                    Err(format!("invalid layer digest {:?}", layer.digest)),
                ));
                continue;
            }
        };
        if layer.size > limit as u64 {
            found.push((
                source,
                Err(format!("layer of {} bytes exceeds {limit}", layer.size)),
            ));
            continue;
        }
        let annotations = layer.annotations;
        let same = |bytes: &&Vec<u8>| {
            bytes.len() as u64 == layer.size
                && layer_digest.same_algorithm_of(bytes) == layer_digest
        };
        if let Some(bytes) = known.iter().find(same) {
            fetched_known.push((index, source, (Bytes::copy_from_slice(bytes), annotations)));
            continue;
        }
        let upstream = Arc::clone(&upstream);
        let repository = repository.to_owned();
        fetches.spawn(async move {
            let blob = fetch_blob(&upstream, &repository, &layer_digest, limit).await;
            (index, source, blob.map(|b| (b, annotations)))
        });
    }
    let mut fetched = fetched_known;
    while let Some(joined) = fetches.join_next().await {
        let (index, source, result) = joined.map_err(|e| VerifyError::Internal(e.to_string()))?;
        fetched.push((index, source, result?));
    }
    fetched.sort_by_key(|(index, _, _)| *index);
    found.extend(fetched.into_iter().map(|(_, s, c)| (s, Ok(c))));
    Ok(found)
}

/// Fetches a small blob whole and checks its digest. A blob that does not
/// match is an upstream fault: an error, never evidence.
pub async fn fetch_blob(
    upstream: &Upstream,
    repository: &str,
    digest: &Digest,
    limit: usize,
) -> Result<Bytes, VerifyError> {
    let what = format!("{}/{repository}@{digest}", upstream.registry);
    let path = format!("/v2/{repository}/blobs/{digest}");
    let response = upstream
        .fetch(Method::GET, &path, repository, &HeaderMap::new())
        .await?;
    if response.status() != StatusCode::OK {
        return Err(VerifyError::Status {
            what,
            status: response.status(),
        });
    }
    let bytes = read_bounded(response.into_body(), limit, &what).await?;
    if digest.same_algorithm_of(&bytes) != *digest {
        return Err(VerifyError::Invalid {
            what,
            reason: "content does not match its digest".into(),
        });
    }
    Ok(bytes)
}

pub(crate) async fn read_bounded(
    body: crate::upstream::UpstreamBody,
    limit: usize,
    what: &str,
) -> Result<Bytes, VerifyError> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(
            |e| match crate::upstream::BodyError::timeout_in(e.as_ref()) {
                // A stalled body is a timeout (504), not invalid content.
                Some(timeout) => VerifyError::Upstream(timeout),
                None => VerifyError::Invalid {
                    what: what.to_owned(),
                    reason: e.to_string(),
                },
            },
        )
}

/// Media types of layers that carry signatures or attestations, never
/// runnable content.
pub const SIGNATURE_LAYER_TYPES: [&str; 5] = [
    SIMPLE_SIGNING,
    "application/vnd.dsse.envelope.v1+json",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
];

/// What a manifest's shape says about it.
pub(crate) struct ManifestShape {
    pub media_type: Option<String>,
    pub config: Option<Layer>,
    pub layers: Vec<Layer>,
    pub children: Vec<String>,
}

pub(crate) fn shape(bytes: &[u8]) -> Option<ManifestShape> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        config: Option<Layer>,
        #[serde(default)]
        layers: Vec<Layer>,
        #[serde(default)]
        manifests: Vec<Layer>,
    }
    let raw: Raw = serde_json::from_slice(bytes).ok()?;
    Some(ManifestShape {
        media_type: raw.media_type,
        config: raw.config,
        layers: raw.layers,
        children: raw.manifests.into_iter().map(|m| m.digest).collect(),
    })
}

impl ManifestShape {
    pub fn is_index(&self, content_type: &str) -> bool {
        let ct = content_type.split(';').next().unwrap_or("").trim();
        let declared = self.media_type.as_deref().unwrap_or("");
        [ct, declared]
            .iter()
            .any(|t| *t == media::OCI_INDEX || *t == media::DOCKER_LIST)
            || (self.config.is_none() && !self.children.is_empty())
    }

    /// Every layer is a signature/attestation media type (and there is at
    /// least one). The config still has to be checked (see
    /// [`config_is_inert`]).
    pub fn looks_like_artifact(&self) -> bool {
        !self.layers.is_empty()
            && self
                .layers
                .iter()
                .all(|l| SIGNATURE_LAYER_TYPES.contains(&l.media_type.as_str()))
    }
}

/// A config that cannot start a container: no OS, no architecture, no
/// entrypoint or command (cosign writes exactly such a config).
pub(crate) fn config_is_inert(config: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(config) else {
        return false;
    };
    let empty = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::String(s)) => s.is_empty(),
        Some(serde_json::Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    let inner = value.get("config");
    empty(value.get("os"))
        && empty(value.get("architecture"))
        && empty(inner.and_then(|c| c.get("Entrypoint")))
        && empty(inner.and_then(|c| c.get("Cmd")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosign_config_is_inert_and_image_config_is_not() {
        let cosign = br#"{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":["sha256:4306feade2f8d7aa22ad654dfd61d0ee66a94f8970fba8d825f45641e9087a78"]},"config":{}}"#;
        assert!(config_is_inert(cosign));
        let image = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert!(!config_is_inert(image));
        let sneaky = br#"{"architecture":"","os":"","config":{"Entrypoint":["/x"]}}"#;
        assert!(!config_is_inert(sneaky));
        assert!(!config_is_inert(b"not json"));
    }

    #[test]
    fn shapes() {
        let sig = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":233,"digest":"sha256:d748d2b76ebf8a245176858c537a245f62f4cd9271dcad170c107bd399384703"},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":250,"digest":"sha256:4306feade2f8d7aa22ad654dfd61d0ee66a94f8970fba8d825f45641e9087a78","annotations":{"dev.cosignproject.cosign/signature":"x"}}]}"#;
        let s = shape(sig).unwrap();
        assert!(s.looks_like_artifact());
        assert!(!s.is_index(media::OCI_MANIFEST));
        let image = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":1,"digest":"sha256:00"},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":1,"digest":"sha256:01"},{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":1,"digest":"sha256:02"}]}"#;
        assert!(!shape(image).unwrap().looks_like_artifact());
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":"sha256:0a"}]}"#;
        let s = shape(index).unwrap();
        assert!(s.is_index(media::OCI_INDEX));
        assert_eq!(s.children, vec!["sha256:0a".to_string()]);
    }
}
