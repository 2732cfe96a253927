//! Answers kept for when an upstream cannot be reached (the content store,
//! `cache.content`).
//!
//! While the upstream answers, what it says about manifests (by tag or
//! digest), referrers listings and small blobs (signatures, attestations,
//! bundles, image configs) is kept: the bytes by digest (checked), and per
//! name the digest and media type it served — or that it had nothing
//! (`404`), so that an offline verification sees the same absences.
//!
//! A tag whose manifest the store holds is revalidated with a `HEAD`
//! (same `Accept`): if the upstream names the stored digest, the stored
//! bytes are the answer, with no `GET` (Docker Hub does not count a `HEAD`
//! as a pull). How often a tag is asked at all is `cache.tagTtl`'s
//! business, above this.
//!
//! When the upstream cannot be reached (no connection, a timeout, a broken
//! connection, or a `502`/`503`/`504` from a gateway in front of it), a
//! request for something kept is answered from the store, marked
//! [`Stale`]. Nothing here decides admission: the verifier checks these
//! answers like any others, against the current policy and keys, so the
//! store can only make an image available that would be admitted now on
//! evidence once served by the upstream — never one that was not.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::body::{Tap, UpstreamBody};
use super::{Access, UpstreamError};
use crate::oci::{Digest, Reference};
use crate::store::small::{Answer, MAX_SMALL};
use crate::store::ContentStore;

/// Marks a response that came from the store because the upstream could
/// not be reached (in the response's extensions). Holds why.
#[derive(Debug, Clone)]
pub struct Stale(pub Arc<str>);

/// A request whose answer is kept.
#[derive(Debug, Clone)]
pub(super) enum Kept {
    Manifest {
        repository: String,
        reference: Reference,
    },
    Referrers {
        repository: String,
        key: String,
    },
    Blob {
        digest: Digest,
    },
}

impl Kept {
    /// What `GET path_and_query` asks for, if it is kept.
    pub(super) fn of(path_and_query: &str) -> Option<Kept> {
        let path = path_and_query.split('?').next()?;
        let rest = path.strip_prefix("/v2/")?;
        if let Some((repository, reference)) = rest.rsplit_once("/manifests/") {
            crate::oci::validate_name(repository).ok()?;
            return Some(Kept::Manifest {
                repository: repository.to_owned(),
                reference: Reference::parse(reference).ok()?,
            });
        }
        if let Some((repository, digest)) = rest.rsplit_once("/referrers/") {
            crate::oci::validate_name(repository).ok()?;
            digest.parse::<Digest>().ok()?;
            // The query (an artifactType filter) is part of the question.
            return Some(Kept::Referrers {
                repository: repository.to_owned(),
                key: Digest::sha256_of(path_and_query.as_bytes())
                    .hex()
                    .to_owned(),
            });
        }
        if let Some((repository, digest)) = rest.rsplit_once("/blobs/") {
            crate::oci::validate_name(repository).ok()?;
            return Some(Kept::Blob {
                digest: digest.parse().ok()?,
            });
        }
        None
    }

    fn name(&self) -> (&str, &'static str, String) {
        match self {
            Kept::Manifest {
                repository,
                reference,
            } => (repository, "manifests", reference.to_string()),
            Kept::Referrers { repository, key } => (repository, "referrers", key.clone()),
            Kept::Blob { .. } => ("", "blobs", String::new()),
        }
    }
}

/// Whether `result` means the upstream could not be reached.
pub(super) fn unreachable(
    result: &Result<Response<UpstreamBody>, UpstreamError>,
) -> Option<String> {
    match result {
        Err(
            e @ (UpstreamError::Connect { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::Protocol { .. }),
        ) => Some(e.to_string()),
        Err(_) => None,
        Ok(response) => matches!(
            response.status(),
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        )
        .then(|| format!("the upstream answered {}", response.status())),
    }
}

/// What the store kept for a request.
enum Found {
    /// The upstream had answered `404`.
    Absent,
    Document {
        bytes: Bytes,
        digest: Digest,
        media_type: Option<String>,
    },
}

/// Looks `kept` up in the store (blocking: small files).
fn look_up(store: &ContentStore, registry: &str, kept: &Kept) -> Option<Found> {
    let (digest, media_type) = match kept {
        Kept::Blob { digest } => (digest.clone(), None),
        Kept::Manifest {
            reference: Reference::Digest(digest),
            ..
        } => {
            let (repository, kind, name) = kept.name();
            let media_type = match store.get_answer(registry, repository, kind, &name) {
                Some(Answer::Found { media_type, .. }) => media_type,
                _ => None,
            };
            (digest.clone(), media_type)
        }
        _ => {
            let (repository, kind, name) = kept.name();
            match store.get_answer(registry, repository, kind, &name)? {
                Answer::Absent => return Some(Found::Absent),
                Answer::Found { digest, media_type } => (digest, media_type),
            }
        }
    };
    Some(Found::Document {
        bytes: store.get_small(&digest)?,
        digest,
        media_type,
    })
}

/// The kept answer to `kept` from `registry`, marked stale with `why`.
pub(super) async fn answer(
    store: &Arc<ContentStore>,
    registry: &str,
    kept: &Kept,
    why: String,
) -> Option<Response<UpstreamBody>> {
    let found = {
        let (store, registry, kept) = (Arc::clone(store), registry.to_owned(), kept.clone());
        tokio::task::spawn_blocking(move || look_up(&store, &registry, &kept))
            .await
            .ok()??
    };
    let mut response = match found {
        Found::Absent => {
            let mut r = Response::new(UpstreamBody::stored(
                Bytes::from_static(
                    br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"not found (as the upstream last answered)"}]}"#,
                ),
                registry.to_owned(),
            ));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
        Found::Document {
            bytes,
            digest,
            media_type,
        } => document(bytes, &digest, media_type.as_deref(), registry),
    };
    response.extensions_mut().insert(Stale(why.into()));
    Some(response)
}

/// A `200` carrying stored `bytes` (which hash to `digest`).
fn document(
    bytes: Bytes,
    digest: &Digest,
    media_type: Option<&str>,
    registry: &str,
) -> Response<UpstreamBody> {
    let len = bytes.len();
    let mut r = Response::new(UpstreamBody::stored(bytes, registry.to_owned()));
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(mt) = media_type.and_then(|m| HeaderValue::from_str(m).ok()) {
        headers.insert(header::CONTENT_TYPE, mt);
    }
    if let Ok(d) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert("docker-content-digest", d);
    }
    r
}

/// The manifest a tag led to when the upstream last answered it, if the
/// store still holds its bytes (checked against its digest on read).
pub(super) struct LastAnswer {
    digest: Digest,
    bytes: Bytes,
    media_type: Option<String>,
}

/// What the store holds for a manifest request by tag.
pub(super) async fn last_for_tag(
    store: &Arc<ContentStore>,
    registry: &str,
    kept: &Kept,
) -> Option<LastAnswer> {
    let Kept::Manifest {
        reference: Reference::Tag(_),
        ..
    } = kept
    else {
        return None;
    };
    let (store, registry, kept) = (Arc::clone(store), registry.to_owned(), kept.clone());
    tokio::task::spawn_blocking(move || match look_up(&store, &registry, &kept)? {
        Found::Absent => None,
        Found::Document {
            bytes,
            digest,
            media_type,
        } => Some(LastAnswer {
            digest,
            bytes,
            media_type,
        }),
    })
    .await
    .ok()?
}

/// Revalidation: `head` is the upstream's answer to a `HEAD` of the tag
/// (with the client's `Accept`). When it names the digest of the stored
/// manifest, that manifest is the answer a `GET` would bring (same digest,
/// same bytes) and it is served from the store; otherwise `None` (the tag
/// moved, the upstream does not say, or it refused: ask with a `GET`).
pub(super) fn unchanged(
    store: &ContentStore,
    registry: &str,
    last: LastAnswer,
    head: &Response<UpstreamBody>,
) -> Option<Response<UpstreamBody>> {
    let named = head
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<Digest>().ok());
    if head.status() != StatusCode::OK || named.as_ref() != Some(&last.digest) {
        store.stats.tags_changed.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    store.stats.tags_unchanged.fetch_add(1, Ordering::Relaxed);
    let media_type = head
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(last.media_type);
    Some(document(
        last.bytes,
        &last.digest,
        media_type.as_deref(),
        registry,
    ))
}

/// A manifest asked for by digest that the store holds (and whose media
/// type it kept): answered from the store without asking the upstream, as
/// content by digest never changes.
pub(super) async fn immutable(
    store: &Arc<ContentStore>,
    registry: &str,
    kept: &Kept,
) -> Option<Response<UpstreamBody>> {
    let Kept::Manifest {
        repository,
        reference: Reference::Digest(digest),
    } = kept
    else {
        return None;
    };
    let (store, registry, repository, digest) = (
        Arc::clone(store),
        registry.to_owned(),
        repository.clone(),
        digest.clone(),
    );
    let label = registry.clone();
    let (bytes, media_type) = tokio::task::spawn_blocking(move || {
        let media_type =
            match store.get_answer(&registry, &repository, "manifests", &digest.to_string())? {
                Answer::Found {
                    media_type: Some(m),
                    ..
                } => m,
                _ => return None,
            };
        Some((store.get_small(&digest)?, media_type))
    })
    .await
    .ok()??;
    let len = bytes.len();
    let mut response = Response::new(UpstreamBody::stored(bytes, label));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&media_type).ok()?,
    );
    Some(response)
}

/// Keeps what the upstream answers to `kept`: a `404` at once, a `200`'s
/// body once it has been read whole (through a [`Tap`]).
pub(super) fn record(
    store: &Arc<ContentStore>,
    registry: &str,
    kept: Kept,
    response: Response<UpstreamBody>,
) -> Response<UpstreamBody> {
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        if !matches!(kept, Kept::Blob { .. }) {
            let store = Arc::clone(store);
            let registry = registry.to_owned();
            tokio::task::spawn_blocking(move || {
                let (repository, kind, name) = kept.name();
                let _ = store.put_answer(&registry, repository, kind, &name, &Answer::Absent);
            });
        }
        return response;
    }
    if status != StatusCode::OK {
        return response;
    }
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_SMALL) {
        return response;
    }
    let media_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let store = Arc::clone(store);
    let registry = registry.to_owned();
    let on_end = Box::new(move |bytes: Bytes| {
        tokio::task::spawn_blocking(move || keep(&store, &registry, &kept, &bytes, media_type));
    });
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.with_tap(Tap::new(MAX_SMALL as usize, on_end)))
}

/// Stores a whole `200` body and what it answered.
fn keep(
    store: &ContentStore,
    registry: &str,
    kept: &Kept,
    bytes: &[u8],
    media_type: Option<String>,
) {
    let digest = match kept {
        Kept::Blob { digest }
        | Kept::Manifest {
            reference: Reference::Digest(digest),
            ..
        } => {
            if digest.same_algorithm_of(bytes) != *digest {
                return;
            }
            digest.clone()
        }
        _ => Digest::sha256_of(bytes),
    };
    if store.put_small(&digest, bytes).is_err() {
        return;
    }
    if let Kept::Blob { .. } = kept {
        return;
    }
    let (repository, kind, name) = kept.name();
    if let Kept::Manifest {
        reference: Reference::Tag(_),
        ..
    } = kept
    {
        // What a tag led to is also known by its digest.
        let by_digest = Answer::Found {
            digest: digest.clone(),
            media_type: media_type.clone(),
        };
        let _ = store.put_answer(registry, repository, kind, &digest.to_string(), &by_digest);
    }
    let _ = store.put_answer(
        registry,
        repository,
        kind,
        &name,
        &Answer::Found { digest, media_type },
    );
}

impl super::Upstream {
    /// A pull (`GET`) of something the store keeps: by-digest manifests
    /// from the store, stored tags revalidated with a `HEAD`, everything
    /// else fetched and kept; the store's answer when the upstream cannot
    /// be reached.
    pub(super) async fn request_kept(
        &self,
        store: &Arc<ContentStore>,
        kept: Kept,
        path_and_query: &str,
        repository: &str,
        headers: &HeaderMap,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if let Some(stored) = immutable(store, &self.registry, &kept).await {
            return Ok(stored);
        }
        let online = |method: Method| {
            self.request_online(
                method,
                path_and_query,
                repository,
                headers,
                Bytes::new(),
                Access::Pull,
            )
        };
        if let Some(last) = last_for_tag(store, &self.registry, &kept).await {
            // A tag whose manifest is stored: a HEAD says whether it still
            // leads there (cheap, and not a pull on Docker Hub's count).
            let head = online(Method::HEAD).await;
            if let Some(why) = unreachable(&head) {
                return self.answer_offline(store, &kept, why, path_and_query).await;
            }
            if let Some(response) = head
                .ok()
                .and_then(|head| unchanged(store, &self.registry, last, &head))
            {
                return Ok(response);
            }
        }
        let result = online(Method::GET).await;
        match unreachable(&result) {
            None => result.map(|r| record(store, &self.registry, kept, r)),
            Some(why) => self.answer_offline(store, &kept, why, path_and_query).await,
        }
    }

    /// The store's answer to `kept` when the upstream could not be reached
    /// (`why`), marked stale; or, if it holds none, the error saying so.
    async fn answer_offline(
        &self,
        store: &Arc<ContentStore>,
        kept: &Kept,
        why: String,
        path_and_query: &str,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match answer(store, &self.registry, kept, why.clone()).await {
            Some(answer) => {
                self.stale_answers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    upstream = %self.registry,
                    path = path_and_query,
                    reason = %why,
                    "upstream unreachable: answered from the content store"
                );
                Ok(answer)
            }
            None => Err(UpstreamError::Unreachable {
                upstream: self.registry.clone(),
                reason: why,
                what: path_and_query.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_kept() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(
            Kept::of("/v2/team/app/manifests/v1"),
            Some(Kept::Manifest { .. })
        ));
        assert!(matches!(
            Kept::of(&format!("/v2/team/app/manifests/{d}")),
            Some(Kept::Manifest {
                reference: Reference::Digest(_),
                ..
            })
        ));
        assert!(matches!(
            Kept::of(&format!("/v2/team/app/blobs/{d}")),
            Some(Kept::Blob { .. })
        ));
        let plain = Kept::of(&format!("/v2/team/app/referrers/{d}"));
        let filtered = Kept::of(&format!("/v2/team/app/referrers/{d}?artifactType=x"));
        match (plain, filtered) {
            (Some(Kept::Referrers { key: a, .. }), Some(Kept::Referrers { key: b, .. })) => {
                assert_ne!(a, b, "a filtered listing is another question")
            }
            other => panic!("{other:?}"),
        }
        for not_kept in [
            "/v2/",
            "/v2/team/app/tags/list",
            "/v2/team/app/blobs/uploads/",
            "/v2/Team/app/manifests/v1",
            "/v2/team/app/manifests/bad tag",
            "/token?scope=x",
        ] {
            assert!(Kept::of(not_kept).is_none(), "{not_kept}");
        }
    }
}
