//! Manifests: fetched whole from the upstream (bounded), hashed over the
//! exact bytes, checked against a requested digest, then served with
//! `Docker-Content-Digest`, `Content-Type` and `Content-Length`.
//!
//! The bytes served are the bytes hashed and verified: a [`Manifest`] is
//! only built by [`fetch`], and `respond` only accepts an [`Admission`] of
//! it, which only [`crate::verify::Verifier::admit`] can create.

use bytes::Bytes;
use moka::future::Cache;

use crate::config::CacheConfig;
use http::{header, HeaderMap, HeaderValue, Method, Response};
use http_body_util::{BodyExt, Limited};

use super::{
    body_from, upstream_failure, ProxyBody, RequestLog, Routine, ServeError, MAX_MANIFEST_BYTES,
};
use crate::audit::{Client, Decided, RecordedVerdict, Subject};
use crate::breakglass::Attempt;
use crate::error::ErrorCode;
use crate::oci::{Digest, Reference};
use crate::policy::{Decision, Verdict};
use crate::routing::Route;
use crate::serve::App;
use crate::upstream::{BodyError, Upstream};
use crate::verify::{Admission, Outcome};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

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
                .weigher(|_, m: &Manifest| u32::try_from(m.bytes.len()).unwrap_or(u32::MAX))
                .build()
        });
        let by_tag = (!config.tag_ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(config.manifest_cache_bytes.max(1024 * 1024))
                .weigher(|_, m: &Manifest| u32::try_from(m.bytes.len()).unwrap_or(u32::MAX))
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
                if let Some(cache) = &self.by_digest {
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
                if let Some(cache) = &self.by_tag {
                    cache.insert(key, m.clone()).await;
                }
                Ok(m)
            }
        }
    }
}

/// A manifest as the upstream sent it, with the digest of its bytes.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    pub digest: Digest,
    pub media_type: HeaderValue,
    /// `Docker-Content-Digest` and `ETag`, made once with the manifest
    /// (it is served many times from the cache).
    digest_header: Option<HeaderValue>,
    etag: Option<HeaderValue>,
}

impl Manifest {
    pub fn new(bytes: Bytes, digest: Digest, media_type: HeaderValue) -> Manifest {
        let digest_header = HeaderValue::from_str(&digest.to_string()).ok();
        let etag = digest_header
            .as_ref()
            .and_then(|_| HeaderValue::from_str(&format!("\"{digest}\"")).ok());
        Manifest {
            bytes,
            digest,
            media_type,
            digest_header,
            etag,
        }
    }
}

/// `GET|HEAD /v2/<name>/manifests/<reference>`.
///
/// Fetch, hash, verify, then serve the verified bytes (no second fetch).
/// `canonical` is `route.canonical()`.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    app: &App,
    route: &Route,
    canonical: &str,
    reference: &Reference,
    client_headers: &HeaderMap,
    head: bool,
    client: &Client,
    log: &RequestLog,
    started: Instant,
) -> Result<Response<ProxyBody>, ServeError> {
    let upstream = &app.upstreams[route.upstream];
    let fetch = app
        .manifests
        .get_or_fetch(upstream, route, reference, client_headers);
    let mut verify_started = Instant::now();
    let (manifest, early) = match reference {
        // By digest, the evidence is looked up while the manifest is
        // fetched (the verification time then includes the fetch).
        Reference::Digest(digest) => {
            app.verifier
                .fetch_and_verify(&app.upstreams, route, digest, fetch)
                .await?
        }
        Reference::Tag(_) => {
            let manifest = fetch.await?;
            verify_started = Instant::now();
            (manifest, None)
        }
    };
    // Formatted only when a message or an error needs it.
    let image = || format!("image {canonical}@{}", manifest.digest);
    let outcome = app
        .verifier
        .admit_with(&app.upstreams, route, &manifest, early)
        .await
        .map_err(|source| ServeError::CannotVerify {
            image: image(),
            source,
        })?;
    let tag = match reference {
        Reference::Tag(t) => Some(t.as_str()),
        Reference::Digest(_) => None,
    };
    let decided = |decision: &Arc<Decision>, cache_hit: bool| {
        if !cache_hit {
            app.observer.metrics.verification(verify_started.elapsed());
        }
        Decided {
            at: SystemTime::now(),
            client: client.clone(),
            subject: Subject::Manifest,
            reference: canonical.to_owned(),
            tag: tag.map(str::to_owned),
            digest: manifest.digest.clone(),
            decision: Arc::clone(decision),
            cache_hit,
            latency: started.elapsed(),
        }
    };
    match outcome {
        Outcome::Admitted(admission) => {
            let decision = &admission.decision;
            let cache_hit = admission.cache_hit;
            app.observer.decided(decided(decision, cache_hit)).await;
            let routine = match decision.verdict {
                Verdict::DryRunDeny => {
                    log.in_scope(|| {
                        tracing::warn!(
                            verdict = "dryrun-deny",
                            rule = %decision.rule,
                            cache_hit,
                            "{}",
                            decision.message(&image())
                        )
                    });
                    false
                }
                // A cached verdict was logged at info when it was made.
                _ if cache_hit => {
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        log.in_scope(|| {
                            tracing::debug!(
                                verdict = ?decision.verdict,
                                rule = %decision.rule,
                                cache_hit,
                                "{}",
                                decision.message(&image())
                            )
                        });
                    }
                    true
                }
                _ => {
                    log.in_scope(|| {
                        tracing::info!(
                            verdict = ?decision.verdict,
                            rule = %decision.rule,
                            cache_hit,
                            "{}",
                            decision.message(&image())
                        )
                    });
                    false
                }
            };
            let mut response = respond(&admission, head);
            if routine {
                response.extensions_mut().insert(Routine);
            }
            Ok(response)
        }
        Outcome::Denied {
            decision,
            cache_hit,
            ..
        } => {
            let attempt = app
                .break_glass
                .as_ref()
                .map(|g| g.check(client_headers))
                .unwrap_or(Attempt::None);
            if let Attempt::Valid(glass) = attempt {
                let admission = app
                    .verifier
                    .admit_break_glass(route, &manifest, Arc::clone(&decision), &glass)
                    .await;
                let mut rec = decided(&decision, cache_hit).to_record();
                rec.verdict = RecordedVerdict::Breakglass;
                rec.identity = Some(glass.identity.clone());
                rec.break_glass_justification = Some(glass.justification.clone());
                rec.reason = format!(
                    "{} — served by break-glass ({}: {})",
                    rec.reason, glass.identity, glass.justification
                );
                log.in_scope(|| {
                    tracing::warn!(
                        verdict = "breakglass",
                        identity = %glass.identity,
                        justification = %glass.justification,
                        "{}",
                        rec.reason
                    )
                });
                app.observer.record(rec).await;
                return Ok(respond(&admission, head));
            }
            app.observer.decided(decided(&decision, cache_hit)).await;
            log.in_scope(|| {
                if let Attempt::Invalid(why) = attempt {
                    tracing::warn!(%why, "break-glass refused");
                }
                tracing::warn!(
                    verdict = "deny",
                    rule = %decision.rule,
                    cache_hit,
                    "{}",
                    decision.message(&image())
                )
            });
            Err(ServeError::Denied {
                subject: image(),
                decision,
            })
        }
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
    let bytes = Limited::new(response.into_body(), MAX_MANIFEST_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ServeError::ManifestTooLarge {
                    limit: MAX_MANIFEST_BYTES,
                }
            } else if let Some(timeout) = BodyError::timeout_in(e.as_ref()) {
                ServeError::Upstream(timeout)
            } else {
                ServeError::UpstreamInvalid {
                    what: what.clone(),
                    reason: e.to_string(),
                }
            }
        })?
        .to_bytes();
    let digest = match reference {
        Reference::Digest(requested) => {
            let actual = requested.same_algorithm_of(&bytes);
            if &actual != requested {
                return Err(ServeError::DigestMismatch {
                    requested: requested.clone(),
                    actual,
                });
            }
            actual
        }
        Reference::Tag(_) => Digest::sha256_of(&bytes),
    };
    let media_type = match content_type {
        Some(ct) => ct,
        None => media_type_field(&bytes).ok_or_else(|| ServeError::UpstreamInvalid {
            what: what.clone(),
            reason: "no Content-Type and no mediaType field".into(),
        })?,
    };
    Ok(Manifest::new(bytes, digest, media_type))
}

/// Serves exactly the bytes that were verified.
fn respond(admission: &Admission<'_>, head: bool) -> Response<ProxyBody> {
    let manifest = admission.manifest();
    let len = manifest.bytes.len();
    let body = if head {
        Bytes::new()
    } else {
        manifest.bytes.clone()
    };
    let mut response = Response::new(body_from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, manifest.media_type.clone());
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(digest) = &manifest.digest_header {
        headers.insert(DOCKER_CONTENT_DIGEST, digest.clone());
        if let Some(etag) = &manifest.etag {
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
            Digest::sha256_of(b"{}"),
            HeaderValue::from_static("application/json"),
        );
        let key = (0, "r".to_string(), "t".to_string(), String::new());
        by_tag.insert(key.clone(), m).await;
        assert!(by_tag.get(&key).await.is_some());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(by_tag.get(&key).await.is_none());
    }
}
