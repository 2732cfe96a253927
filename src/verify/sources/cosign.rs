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
use serde::Deserialize;

use crate::oci::Digest;
use crate::verify::budget::Budget;
use crate::verify::formats::simple_signing::Candidate;
use crate::verify::VerifyError;

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
pub type FoundSignature = (String, Result<Candidate, String>);

/// The layers of an evidence manifest (`.sig`, `.att`, a referrer), read
/// with the same unambiguous reading as every manifest
/// ([`crate::oci::json::Strict`]): colliding keys are refused, fields are
/// found as a Go runtime finds them.
pub(crate) fn read_layers(bytes: &[u8]) -> Result<Vec<EvidenceLayer>, String> {
    use crate::oci::json::Strict;
    let doc = Strict::parse(bytes).map_err(|e| e.to_string())?;
    if doc.has("manifests") {
        return Err("an index, not an image manifest".into());
    }
    let layers = match doc.get("layers") {
        None | Some(Strict::Null) => return Ok(Vec::new()),
        Some(Strict::Array(layers)) => layers,
        Some(_) => return Err("layers is not a list".into()),
    };
    layers
        .iter()
        .map(|l| {
            let text = |key: &str| match l.get(key) {
                None | Some(Strict::Null) => Ok(String::new()),
                Some(Strict::String(s)) => Ok(s.clone()),
                Some(_) => Err(format!("layer {key} is not a string")),
            };
            let mut annotations = std::collections::HashMap::new();
            match l.get("annotations") {
                None | Some(Strict::Null) => {}
                Some(Strict::Object(entries)) => {
                    for (k, v) in entries {
                        let Strict::String(v) = v else {
                            return Err(format!("annotation {k} is not a string"));
                        };
                        annotations.insert(k.clone(), v.clone());
                    }
                }
                Some(_) => return Err("annotations is not an object".into()),
            }
            Ok(EvidenceLayer {
                media_type: text("mediaType")?,
                digest: text("digest")?,
                size: match l.get("size") {
                    None | Some(Strict::Null) => 0,
                    Some(n) => n.as_u64().ok_or("layer size is not a number")?,
                },
                annotations,
            })
        })
        .collect()
}

#[derive(Deserialize)]
pub(crate) struct EvidenceLayer {
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

/// A cosign tag-based artifact: the tag suffix next to the image's
/// `sha256-<hex>`, the layer media type that holds its evidence and the
/// largest such layer fetched.
struct Artifact {
    suffix: &'static str,
    media_type: &'static str,
    limit: usize,
}

const SIG: Artifact = Artifact {
    suffix: "sig",
    media_type: SIMPLE_SIGNING,
    limit: MAX_PAYLOAD_BYTES,
};

const ATT: Artifact = Artifact {
    suffix: "att",
    media_type: DSSE_ENVELOPE,
    limit: MAX_ENVELOPE_BYTES,
};

/// Where a lookup reads: the upstream and repository holding the
/// artifacts of `digest`, charged to `budget`.
#[derive(Clone, Copy)]
struct Site<'a> {
    upstream: &'a Arc<Upstream>,
    budget: &'a Arc<Budget>,
    repository: &'a str,
    digest: &'a Digest,
}

/// All simple-signing signatures stored for `digest` in `repository`.
///
/// `likely` are payloads the signer probably wrote
/// ([`crate::verify::formats::simple_signing::likely_payloads`]): a layer
/// whose digest one of them has is not fetched, since those are its bytes.
/// With cosign's defaults that saves the payload round trip, the slowest
/// step of a cold verification.
pub async fn signatures(
    upstream: Arc<Upstream>,
    budget: &Arc<Budget>,
    repository: &str,
    digest: &Digest,
    likely: &[Vec<u8>],
) -> Result<Vec<FoundSignature>, VerifyError> {
    let site = Site {
        upstream: &upstream,
        budget,
        repository,
        digest,
    };
    let layers = artifact_layers(site, &SIG, likely).await?;
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
                    annotations,
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
    budget: &Arc<Budget>,
    repository: &str,
    digest: &Digest,
) -> Result<Vec<FoundLayer>, VerifyError> {
    let site = Site {
        upstream: &upstream,
        budget,
        repository,
        digest,
    };
    artifact_layers(site, &ATT, &[]).await
}

pub type Annotations = std::collections::HashMap<String, String>;

/// A layer as found: its source (`<where> layer <n>`) and its content with
/// its annotations, or why it is not evidence.
pub type FoundLayer = (String, Result<(Bytes, Annotations), String>);

/// The `sha256-<hex>.<suffix>` manifest of `artifact` at `site`, read
/// within the budget: its location and bytes; `None` when there is none.
async fn artifact_manifest(
    site: Site<'_>,
    artifact: &Artifact,
) -> Result<Option<(String, Bytes)>, VerifyError> {
    let tag = format!("{}.{}", site.digest.tag_form(), artifact.suffix);
    let where_ = format!("{}/{}:{tag}", site.upstream.registry, site.repository);
    let mut accept = HeaderMap::new();
    accept.insert(
        header::ACCEPT,
        HeaderValue::from_static(
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        ),
    );
    let path = format!("/v2/{}/manifests/{tag}", site.repository);
    let response = site
        .upstream
        .fetch(Method::GET, &path, site.repository, &accept)
        .await?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        status => {
            return Err(VerifyError::Status {
                what: where_,
                status,
            })
        }
    }
    let bytes = site.budget.read_manifest(response, &where_).await?;
    Ok(Some((where_, bytes)))
}

/// The layers of `artifact`'s media type in its manifest, each fetched
/// (concurrently, bounded by the artifact's limit) with its annotations; a
/// layer with the digest of one of the `known` contents is not fetched.
/// Everything read is charged to the site's budget.
async fn artifact_layers(
    site: Site<'_>,
    artifact: &Artifact,
    known: &[Vec<u8>],
) -> Result<Vec<FoundLayer>, VerifyError> {
    let Some((where_, bytes)) = artifact_manifest(site, artifact).await? else {
        return Ok(Vec::new());
    };
    let layers = match read_layers(&bytes) {
        Ok(layers) => layers,
        Err(e) => {
            let reason = format!("{} manifest: {e}", artifact.suffix);
            return Ok(vec![(where_, Err(reason))]);
        }
    };
    let limit = artifact.limit;
    let mut found = Vec::new();
    let mut fetched = Vec::new();
    let mut fetches = tokio::task::JoinSet::new();
    let matching = layers
        .into_iter()
        .enumerate()
        .filter(|(_, l)| l.media_type == artifact.media_type);
    for (count, (index, layer)) in matching.enumerate() {
        let source = format!("{where_} layer {}", index + 1);
        let layer_digest = match examined(&layer, count, limit) {
            Ok(digest) => digest,
            Err(reason) => {
                found.push((source, Err(reason)));
                continue;
            }
        };
        let annotations = layer.annotations;
        let same = |bytes: &&Vec<u8>| {
            bytes.len() as u64 == layer.size
                && layer_digest.same_algorithm_of(bytes) == layer_digest
        };
        if let Some(bytes) = known.iter().find(same) {
            fetched.push((index, source, (Bytes::copy_from_slice(bytes), annotations)));
            continue;
        }
        let upstream = Arc::clone(site.upstream);
        let budget = Arc::clone(site.budget);
        let repository = site.repository.to_owned();
        let size = layer.size;
        fetches.spawn(async move {
            let blob = budget
                .blob(&upstream, &repository, &layer_digest, size, limit)
                .await;
            (index, source, blob.map(|b| (b, annotations)))
        });
    }
    while let Some(joined) = fetches.join_next().await {
        let (index, source, result) = joined.map_err(|e| VerifyError::Internal(e.to_string()))?;
        fetched.push((index, source, result?));
    }
    fetched.sort_by_key(|(index, _, _)| *index);
    found.extend(fetched.into_iter().map(|(_, s, c)| (s, Ok(c))));
    Ok(found)
}

/// The digest of the `count`-th matching layer if it is examined at all:
/// not past [`MAX_SIGNATURE_LAYERS`], a valid digest, within `limit`.
fn examined(layer: &EvidenceLayer, count: usize, limit: usize) -> Result<Digest, String> {
    if count >= MAX_SIGNATURE_LAYERS {
        return Err(format!(
            "more than {MAX_SIGNATURE_LAYERS} layers; not examined"
        ));
    }
    let digest: Digest = layer
        .digest
        .parse()
        .map_err(|_| format!("invalid layer digest {:?}", layer.digest))?;
    if layer.size > limit as u64 {
        return Err(format!("layer of {} bytes exceeds {limit}", layer.size));
    }
    Ok(digest)
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

/// Reads an evidence document whole, at most `limit` bytes: a stalled
/// body is a timeout (504), anything else content that cannot be evidence.
pub(crate) async fn read_bounded(
    body: crate::upstream::UpstreamBody,
    limit: usize,
    what: &str,
) -> Result<Bytes, VerifyError> {
    crate::upstream::read_bounded(body, limit)
        .await
        .map_err(|e| match e {
            crate::upstream::ReadError::Stalled(timeout) => VerifyError::Upstream(timeout),
            other => VerifyError::Invalid {
                what: what.to_owned(),
                reason: other.to_string(),
            },
        })
}
