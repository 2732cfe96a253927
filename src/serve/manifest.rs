//! Manifests: fetched whole from the upstream (bounded), hashed over the
//! exact bytes, checked against a requested digest, then served with
//! `Docker-Content-Digest`, `Content-Type` and `Content-Length`.
//!
//! The bytes served are the bytes hashed and verified: a [`Manifest`]
//! computes its own digest, and `respond` only accepts an [`Admission`],
//! which only [`crate::verify::Verifier::admit`] can create.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response};
use moka::future::Cache;

use super::error::upstream_failure;
use super::{body_from, finish, App, Ctx, ProxyBody, Routine, ServeError};
use crate::config::CacheConfig;
use crate::oci::error::ErrorCode;
use crate::oci::manifest::{Manifest, MAX_MANIFEST_BYTES};
use crate::oci::{Digest, Reference};
use crate::routing::Route;
use crate::upstream::offline::Stale;
use crate::upstream::{read_bounded, ReadError, Upstream};
use crate::verify::{Admission, Failed, Outcome};

/// `Docker-Content-Digest`.
const DOCKER_CONTENT_DIGEST: header::HeaderName =
    header::HeaderName::from_static("docker-content-digest");

/// Manifests kept in memory: by digest (immutable content; bounded by
/// bytes) and, when `cache.tagTtl` is set, by tag for that long.
#[derive(Debug)]
pub struct ManifestCache {
    by_digest: Option<Cache<(usize, String, Digest), Manifest>>,
    by_tag: Option<Cache<(usize, String, String, String), Manifest>>,
}

impl ManifestCache {
    pub fn new(config: &CacheConfig) -> ManifestCache {
        let by_digest = (config.manifest_cache_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(config.manifest_cache_bytes)
                .weigher(|_, m: &Manifest| u32::try_from(m.bytes().len()).unwrap_or(u32::MAX))
                .build()
        });
        let by_tag = (!config.tag_ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(config.manifest_cache_bytes.max(1024 * 1024))
                .weigher(|_, m: &Manifest| u32::try_from(m.bytes().len()).unwrap_or(u32::MAX))
                .time_to_live(config.tag_ttl)
                .build()
        });
        ManifestCache { by_digest, by_tag }
    }

    /// The manifest from memory when allowed, else from the upstream.
    pub async fn get_or_fetch(
        &self,
        upstream: &Upstream,
        route: &Route,
        reference: &Reference,
        client_headers: &HeaderMap,
    ) -> Result<Manifest, ServeError> {
        let repo = route.repository.clone();
        match reference {
            Reference::Digest(d) => {
                let key = (route.upstream, repo, d.clone());
                if let Some(cache) = &self.by_digest {
                    if let Some(m) = cache.get(&key).await {
                        return Ok(m);
                    }
                }
                let m = fetch(upstream, route, reference, client_headers).await?;
                if let Some(cache) = self.by_digest.as_ref().filter(|_| m.offline().is_none()) {
                    cache.insert(key, m.clone()).await;
                }
                Ok(m)
            }
            Reference::Tag(tag) => {
                let accept = client_headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(",");
                let key = (route.upstream, repo, tag.clone(), accept);
                if let Some(cache) = &self.by_tag {
                    if let Some(m) = cache.get(&key).await {
                        return Ok(m);
                    }
                }
                let m = fetch(upstream, route, reference, client_headers).await?;
                if let Some(cache) = self.by_tag.as_ref().filter(|_| m.offline().is_none()) {
                    cache.insert(key, m.clone()).await;
                }
                Ok(m)
            }
        }
    }
}

/// `GET|HEAD /v2/<name>/manifests/<reference>`: resolve (the bytes, from
/// memory or the upstream), verify, finish, then serve the verified bytes
/// (no second fetch).
pub(super) async fn pull(
    app: &App,
    ctx: &Ctx<'_>,
    reference: &Reference,
) -> Result<Response<ProxyBody>, ServeError> {
    let route = &ctx.route;
    let upstream = &app.upstreams[route.upstream];
    let resolve = app
        .manifests
        .get_or_fetch(upstream, route, reference, ctx.headers);
    let outcome = match app
        .verifier
        .admit(route, reference, resolve, &ctx.glass)
        .await
    {
        Ok(outcome) => outcome,
        Err(Failed::Fetch(e)) => return Err(e),
        Err(Failed::Verify { digest, error }) => {
            return Err(ServeError::CannotVerify {
                image: format!("image {}@{digest}", ctx.canonical),
                source: error,
            })
        }
    };
    let routine = finish::manifest(app, ctx, reference, &outcome).await;
    match outcome {
        Outcome::Admitted(admission) => {
            let mut response = respond(&admission, ctx.head);
            if routine {
                response.extensions_mut().insert(Routine);
            }
            Ok(response)
        }
        Outcome::Denied(denial) => Err(ServeError::Denied {
            subject: format!("image {}@{}", ctx.canonical, denial.digest()),
            decision: Arc::clone(denial.decision()),
        }),
    }
}

/// Fetches a manifest with the client's `Accept` header passed through
/// unchanged, so index/list negotiation is the client's own.
///
/// The whole fetch (response headers and every byte of the body) runs
/// under `timeouts.manifest`: the idle read timeout alone lets an upstream
/// that trickles a byte now and then hold the request, and every request
/// joined to it, forever.
pub async fn fetch(
    upstream: &Upstream,
    route: &Route,
    reference: &Reference,
    client_headers: &HeaderMap,
) -> Result<Manifest, ServeError> {
    upstream
        .within(
            upstream.timeouts().manifest,
            "manifest",
            || format!("manifest {}:{reference}", route.repository),
            fetch_now(upstream, route, reference, client_headers),
        )
        .await
}

async fn fetch_now(
    upstream: &Upstream,
    route: &Route,
    reference: &Reference,
    client_headers: &HeaderMap,
) -> Result<Manifest, ServeError> {
    let what = format!("manifest {}:{reference}", route.canonical());
    let mut headers = HeaderMap::new();
    for accept in client_headers.get_all(header::ACCEPT) {
        headers.append(header::ACCEPT, accept.clone());
    }
    let path = format!("/v2/{}/manifests/{reference}", route.repository);
    // Always GET: even a HEAD needs the bytes to know their digest.
    let response = upstream
        .fetch(Method::GET, &path, &route.repository, &headers)
        .await?;
    if !response.status().is_success() {
        return Err(upstream_failure(route, response, what, ErrorCode::ManifestUnknown).await);
    }
    let declared_len = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|len| len > MAX_MANIFEST_BYTES as u64) {
        return Err(ServeError::ManifestTooLarge {
            limit: MAX_MANIFEST_BYTES,
        });
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let offline = response
        .extensions()
        .get::<Stale>()
        .map(|s| Arc::clone(&s.0));
    let bytes = read_bounded(response.into_body(), MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge { limit } => ServeError::ManifestTooLarge { limit },
            ReadError::Stalled(timeout) => ServeError::Upstream(timeout),
            ReadError::Broken(reason) => ServeError::UpstreamInvalid {
                what: what.clone(),
                reason,
            },
        })?;
    let media_type = match content_type {
        Some(ct) => ct,
        None => media_type_field(&bytes).ok_or_else(|| ServeError::UpstreamInvalid {
            what: what.clone(),
            reason: "no Content-Type and no mediaType field".into(),
        })?,
    };
    let manifest =
        match reference {
            Reference::Digest(requested) => Manifest::by_digest(bytes, requested, media_type)
                .map_err(|m| ServeError::DigestMismatch {
                    requested: m.requested,
                    actual: m.actual,
                })?,
            Reference::Tag(_) => Manifest::new(bytes, media_type),
        };
    Ok(manifest.answered_offline(offline))
}

/// Serves exactly the bytes that were verified.
fn respond(admission: &Admission, head: bool) -> Response<ProxyBody> {
    let manifest = admission.manifest();
    let len = manifest.bytes().len();
    let body = if head {
        Bytes::new()
    } else {
        manifest.bytes().clone()
    };
    let mut response = Response::new(body_from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, manifest.media_type().clone());
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(digest) = manifest.digest_header() {
        headers.insert(DOCKER_CONTENT_DIGEST, digest.clone());
        if let Some(etag) = manifest.etag() {
            headers.insert(header::ETAG, etag.clone());
        }
    }
    response
}

/// The manifest's own `mediaType` field, for upstreams that send no
/// `Content-Type`.
fn media_type_field(bytes: &[u8]) -> Option<HeaderValue> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    HeaderValue::from_str(&probe.media_type?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn tag_entries_expire_after_the_ttl() {
        let config = CacheConfig {
            tag_ttl: Duration::from_millis(200),
            ..CacheConfig::default()
        };
        let cache = ManifestCache::new(&config);
        let by_tag = cache.by_tag.as_ref().unwrap();
        let m = Manifest::new(
            Bytes::from_static(b"{}"),
            HeaderValue::from_static("application/json"),
        );
        let key = (0, "r".to_string(), "t".to_string(), String::new());
        by_tag.insert(key.clone(), m).await;
        assert!(by_tag.get(&key).await.is_some());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(by_tag.get(&key).await.is_none());
    }
}
