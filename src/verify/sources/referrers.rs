//! Evidence source: sigstore bundles attached to an image as OCI 1.1
//! referrers (cosign v3's default).
//!
//! Lists `GET /v2/<name>/referrers/<digest>`; an upstream without the
//! referrers API answers 404, and the `sha256-<hex>` referrers tag is read
//! instead (distribution 2.8 has no referrers API). Every listed manifest
//! that may hold a bundle is fetched by digest and its bundle layers are
//! fetched, all concurrently and bounded. Nothing listed is trusted: the
//! index's `artifactType` and annotations only decide what is worth
//! fetching, and the bundle's signed content decides what it proves.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use super::cosign::MAX_ENVELOPE_BYTES;
use crate::oci::{media, Digest};
use crate::upstream::{Referrers, Upstream};
use crate::verify::budget::Budget;
use crate::verify::formats::bundle::is_bundle_media_type;
use crate::verify::VerifyError;

/// Referrer manifests examined per image; more is a hostile or broken
/// upstream, and the rest are reported, not fetched.
pub const MAX_REFERRERS: usize = 32;
/// Bundle layers examined per referrer manifest.
const MAX_BUNDLE_LAYERS: usize = 8;
/// The artifact type registries report for manifests whose config is the
/// empty descriptor (ghcr.io does for cosign bundles).
const EMPTY_ARTIFACT: &str = "application/vnd.oci.empty.v1+json";

/// A bundle found, or why a referrer could not give one.
pub type FoundBundle = (String, Result<Bytes, String>);

struct Index {
    manifests: Vec<Descriptor>,
}

struct Descriptor {
    digest: String,
    artifact_type: Option<String>,
}

/// A referrers index, read unambiguously ([`crate::oci::json::Strict`]).
fn read_index(bytes: &[u8]) -> Result<Index, String> {
    use crate::oci::json::Strict;
    let doc = Strict::parse(bytes).map_err(|e| e.to_string())?;
    let manifests = match doc.get("manifests") {
        None | Some(Strict::Null) => &[][..],
        Some(Strict::Array(m)) => m,
        Some(_) => return Err("manifests is not a list".into()),
    };
    let text = |d: &Strict, key: &str| d.get(key).and_then(Strict::as_str).map(str::to_owned);
    Ok(Index {
        manifests: manifests
            .iter()
            .map(|d| Descriptor {
                digest: text(d, "digest").unwrap_or_default(),
                artifact_type: text(d, "artifactType"),
            })
            .collect(),
    })
}

/// Every sigstore bundle attached to `digest` in `repository`.
pub async fn bundles(
    upstream: Arc<Upstream>,
    budget: &Arc<Budget>,
    repository: &str,
    digest: &Digest,
) -> Result<Vec<FoundBundle>, VerifyError> {
    let Some((listing, index)) = list(&upstream, budget, repository, digest).await? else {
        return Ok(Vec::new());
    };
    let index = match read_index(&index) {
        Ok(i) => i,
        Err(e) => return Ok(vec![(listing, Err(format!("referrers index: {e}")))]),
    };
    let mut found = Vec::new();
    let mut fetches = tokio::task::JoinSet::new();
    let candidates = index
        .manifests
        .into_iter()
        .filter(|m| may_hold_bundle(m.artifact_type.as_deref()));
    for (count, descriptor) in candidates.enumerate() {
        let source = format!("{}/{repository}@{}", upstream.registry, descriptor.digest);
        if count >= MAX_REFERRERS {
            found.push((
                source,
                Err(format!("more than {MAX_REFERRERS} referrers; not examined")),
            ));
            continue;
        }
        let Ok(referrer) = descriptor.digest.parse::<Digest>() else {
            found.push((
                source,
                Err(format!("invalid referrer digest {:?}", descriptor.digest)),
            ));
            continue;
        };
        let upstream = Arc::clone(&upstream);
        let budget = Arc::clone(budget);
        let repository = repository.to_owned();
        let subject = digest.to_string();
        fetches.spawn(async move {
            let result =
                referrer_bundles(&upstream, &budget, &repository, &referrer, &subject).await;
            (count, source, result)
        });
    }
    let mut fetched = Vec::new();
    while let Some(joined) = fetches.join_next().await {
        let (order, source, result) = joined.map_err(|e| VerifyError::Internal(e.to_string()))?;
        fetched.push((order, source, result?));
    }
    fetched.sort_by_key(|(order, _, _)| *order);
    for (_, source, bundles) in fetched {
        match bundles {
            Ok(bundles) => found.extend(
                bundles
                    .into_iter()
                    .map(|(layer, bundle)| (format!("{source} layer {layer}"), bundle)),
            ),
            Err(reason) => found.push((source, Err(reason))),
        }
    }
    Ok(found)
}

/// Whether a listed referrer may carry a sigstore bundle. Registries
/// report the manifest's `artifactType`, its config media type, the empty
/// descriptor's type, or nothing; only types that are plainly something
/// else (notation signatures, SBOM artifacts…) are skipped.
fn may_hold_bundle(artifact_type: Option<&str>) -> bool {
    match artifact_type {
        None => true,
        Some(t) => t.is_empty() || t == EMPTY_ARTIFACT || is_bundle_media_type(t),
    }
}

/// The referrers index for `digest`: from the API, or from the referrers
/// tag when the upstream has no API. `None` when there is neither.
async fn list(
    upstream: &Upstream,
    budget: &Budget,
    repository: &str,
    digest: &Digest,
) -> Result<Option<(String, Bytes)>, VerifyError> {
    let api = || format!("{}/{repository} referrers of {digest}", upstream.registry);
    let tag = || format!("{}/{repository}:{}", upstream.registry, digest.tag_form());
    let (what, response) = match upstream.referrers(repository, digest, None).await? {
        Referrers::Api(response) => (api(), response),
        Referrers::Tag(response) => (tag(), response),
        Referrers::Absent => return Ok(None),
        Referrers::Refused {
            tag: from_tag,
            response,
        } => {
            return Err(VerifyError::Status {
                what: if from_tag { tag() } else { api() },
                status: response.status(),
            })
        }
    };
    let bytes = budget.read_manifest(response, &what).await?;
    Ok(Some((what, bytes)))
}

/// The bundle layers of one referrer manifest, numbered from 1 as in the
/// manifest. `Err` is evidence that could not be read (a wrong subject,
/// an unparsable manifest); upstream failures are `VerifyError`s inside.
async fn referrer_bundles(
    upstream: &Upstream,
    budget: &Budget,
    repository: &str,
    referrer: &Digest,
    subject: &str,
) -> Result<Result<Vec<(usize, Result<Bytes, String>)>, String>, VerifyError> {
    let what = format!("{}/{repository}@{referrer}", upstream.registry);
    let mut accept = HeaderMap::new();
    accept.insert(
        header::ACCEPT,
        HeaderValue::from_static(media::OCI_MANIFEST),
    );
    let path = format!("/v2/{repository}/manifests/{referrer}");
    let response = upstream
        .fetch(Method::GET, &path, repository, &accept)
        .await?;
    match response.status() {
        StatusCode::OK => {}
        // Listed but gone (deleted since): nothing to examine.
        StatusCode::NOT_FOUND => return Ok(Err("listed referrer manifest not found".into())),
        status => return Err(VerifyError::Status { what, status }),
    }
    let bytes = budget.read_manifest(response, &what).await?;
    if referrer.same_algorithm_of(&bytes) != *referrer {
        return Err(VerifyError::Invalid {
            what,
            reason: "content does not match its digest".into(),
        });
    }
    let manifest = match crate::oci::manifest::read(&bytes, media::OCI_MANIFEST) {
        Ok(m) => m,
        Err(e) => return Ok(Err(format!("referrer manifest: {e}"))),
    };
    if let Some(s) = &manifest.subject {
        if s.digest.to_string() != subject {
            return Ok(Err(format!(
                "referrer's subject is {}, not {subject}",
                s.digest
            )));
        }
    }
    let mut out = Vec::new();
    let bundle_layers = manifest
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| is_bundle_media_type(&l.media_type));
    for (count, (index, layer)) in bundle_layers.enumerate() {
        let number = index + 1;
        if count >= MAX_BUNDLE_LAYERS {
            out.push((
                number,
                Err(format!(
                    "more than {MAX_BUNDLE_LAYERS} bundle layers; not examined"
                )),
            ));
            continue;
        }
        let digest = &layer.digest;
        if layer.size > MAX_ENVELOPE_BYTES as u64 {
            out.push((
                number,
                Err(format!(
                    "bundle of {} bytes exceeds {MAX_ENVELOPE_BYTES}",
                    layer.size
                )),
            ));
            continue;
        }
        let blob = budget
            .blob(upstream, repository, digest, layer.size, MAX_ENVELOPE_BYTES)
            .await?;
        out.push((number, Ok(blob)));
    }
    Ok(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_types_worth_fetching() {
        assert!(may_hold_bundle(None));
        assert!(may_hold_bundle(Some(EMPTY_ARTIFACT)));
        assert!(may_hold_bundle(Some(
            "application/vnd.dev.sigstore.bundle.v0.3+json"
        )));
        assert!(may_hold_bundle(Some(
            "application/vnd.dev.sigstore.bundle+json;version=0.2"
        )));
        assert!(!may_hold_bundle(Some(
            "application/vnd.cncf.notary.signature"
        )));
        assert!(!may_hold_bundle(Some("application/spdx+json")));
    }
}
