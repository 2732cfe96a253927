//! Blobs through the content store (`cache.content`): a stored blob is
//! served from disk (whole, or the one range asked for) with no upstream
//! request; a blob not stored is fetched once — the first request leads the
//! download, the others follow the file as it grows — and kept.
//!
//! Only a blob a [`BlobPermit`] names reaches this module, so the store
//! holds and serves nothing `verify` did not admit for the request at
//! hand; its bytes are the ones that hashed to that digest.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;

use super::blob::{check_range, describe, ByteRange, Holding};
use super::body::VerifyingBody;
use super::context::Ctx;
use super::error::upstream_failure;
use super::{App, BoxError, ProxyBody, ServeError};
use crate::oci::error::ErrorCode;
use crate::store::read::{self, StoredBlob};
use crate::store::{ContentStore, Download, Join, Lead};
use crate::verify::BlobPermit;

/// How many times a request waits for another's download before it goes
/// to the upstream itself (a leader gives up when its upstream refuses).
const JOIN_ATTEMPTS: usize = 2;

/// Serves the permitted blob through `store`; `None` when the request is
/// better sent to the upstream directly: the store steps aside (disk
/// trouble), a `HEAD` or a `Range` for a blob not stored yet, or a blob
/// the store cannot take (larger than `maxSize`).
pub(super) async fn serve(
    app: &App,
    store: &Arc<ContentStore>,
    ctx: &Ctx<'_>,
    permit: &BlobPermit,
) -> Result<Option<Response<ProxyBody>>, ServeError> {
    let digest = permit.digest();
    let range = match ctx.headers.get(header::RANGE) {
        Some(value) => Some(check_range(value)?),
        None => None,
    };
    if ctx.head || range.is_some() {
        return match store.stored(digest).await {
            Some(blob) => {
                store.stats.hits.fetch_add(1, Ordering::Relaxed);
                from_disk(blob, range, ctx.head).await.map(Some)
            }
            None => {
                store.stats.misses.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        };
    }
    for _ in 0..JOIN_ATTEMPTS {
        match store.join(digest).await {
            Join::Stored(blob) => return from_disk(blob, None, false).await.map(Some),
            Join::Bypass => return Ok(None),
            Join::Wait(waiter) => {
                if let Some(download) = waiter.started(app.fetch_wait).await {
                    store.stats.misses.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(following(&download, None)));
                }
            }
            Join::Lead(lead) => {
                store.stats.misses.fetch_add(1, Ordering::Relaxed);
                return lead_download(app, ctx, permit, lead).await.map(Some);
            }
        }
    }
    Ok(None)
}

/// A stored blob: `200` with all of it, or `206` with the range asked for
/// (`416` past its end). With `verifyOnRead` a range is served only after
/// the whole file hashed to its digest.
async fn from_disk(
    blob: StoredBlob,
    range: Option<ByteRange>,
    head: bool,
) -> Result<Response<ProxyBody>, ServeError> {
    let size = blob.size();
    let digest = blob.digest().clone();
    let part = match range {
        None => None,
        Some(range) => Some(select(&range, size).ok_or_else(|| {
            ServeError::BadRange(format!(
                "Range {} is past the end of {digest} ({size} bytes)",
                describe(&range)
            ))
        })?),
    };
    if part.is_some() && !head && blob.verifies_on_read() {
        blob.check()
            .await
            .map_err(|e| ServeError::UpstreamInvalid {
                what: format!("stored blob {digest}"),
                reason: e.to_string(),
            })?;
    }
    let length = part.map_or(size, |(first, last)| last - first + 1);
    let body = if head {
        super::body_from(bytes::Bytes::new())
    } else {
        blob.body(part)
            .map_err(|e| -> BoxError { Box::new(e) })
            .boxed_unsync()
    };
    let mut out = Response::new(body);
    if let Some((first, last)) = part {
        *out.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")) {
            out.headers_mut().insert(header::CONTENT_RANGE, value);
        }
    }
    blob_headers(out.headers_mut(), &digest, Some(length), None);
    Ok(out)
}

/// The bytes `range` selects from a blob of `size` bytes, as `(first,
/// last)`; `None` when it selects nothing.
fn select(range: &ByteRange, size: u64) -> Option<(u64, u64)> {
    if size == 0 {
        return None;
    }
    match *range {
        ByteRange::From(first, _) if first >= size => None,
        ByteRange::From(first, Some(last)) => Some((first, last.min(size - 1))),
        ByteRange::From(first, None) => Some((first, size - 1)),
        ByteRange::Suffix(n) => Some((size - n.min(size), size - 1)),
    }
}

/// A download in flight, as it grows.
fn following(download: &Arc<Download>, content_type: Option<&HeaderValue>) -> Response<ProxyBody> {
    let body = read::follow(download)
        .map_err(|e| -> BoxError { Box::new(e) })
        .boxed_unsync();
    let mut out = Response::new(body);
    blob_headers(
        out.headers_mut(),
        download.digest(),
        download.length(),
        content_type,
    );
    out
}

/// Fetches the blob from the upstream and starts its download into the
/// store; this request gets the upstream's frames as they arrive (the
/// others follow the file), and the last byte once the digest matched. A blob
/// the store cannot take is streamed from the upstream as without a
/// store.
async fn lead_download(
    app: &App,
    ctx: &Ctx<'_>,
    permit: &BlobPermit,
    lead: Lead,
) -> Result<Response<ProxyBody>, ServeError> {
    let digest = permit.digest();
    let slots = app.fetch_slots(ctx.connection).await?;
    let deadline = tokio::time::Instant::now() + app.download_time;
    let path = format!("/v2/{}/blobs/{digest}", ctx.route.repository);
    let response = app
        .upstream(ctx)
        .fetch_unkept(Method::GET, &path, &ctx.route.repository, &HeaderMap::new())
        .await?;
    if response.status() != StatusCode::OK {
        let what = format!("blob {}@{digest}", ctx.canonical);
        return Err(upstream_failure(&ctx.route, response, what, ErrorCode::BlobUnknown).await);
    }
    let (parts, body) = response.into_parts();
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let content_type = parts.headers.get(header::CONTENT_TYPE);
    match lead.start(body, length, deadline, slots).await {
        Ok((download, tee)) => {
            let body = read::lead(tee)
                .map_err(|e| -> BoxError { Box::new(e) })
                .boxed_unsync();
            let mut out = Response::new(body);
            blob_headers(out.headers_mut(), digest, download.length(), content_type);
            Ok(out)
        }
        Err((body, slots)) => {
            let body = Holding::new(VerifyingBody::new(body, digest.clone()), slots).boxed_unsync();
            let mut out = Response::new(body);
            blob_headers(out.headers_mut(), digest, length, content_type);
            Ok(out)
        }
    }
}

/// The headers of a blob response.
fn blob_headers(
    headers: &mut HeaderMap,
    digest: &crate::oci::Digest,
    length: Option<u64>,
    content_type: Option<&HeaderValue>,
) {
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    headers.insert(
        header::CONTENT_TYPE,
        content_type
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(value) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert("docker-content-digest", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_select_within_the_blob() {
        assert_eq!(select(&ByteRange::From(0, None), 10), Some((0, 9)));
        assert_eq!(select(&ByteRange::From(2, Some(4)), 10), Some((2, 4)));
        assert_eq!(select(&ByteRange::From(2, Some(400)), 10), Some((2, 9)));
        assert_eq!(select(&ByteRange::Suffix(3), 10), Some((7, 9)));
        assert_eq!(select(&ByteRange::Suffix(30), 10), Some((0, 9)));
        assert_eq!(select(&ByteRange::From(10, None), 10), None);
        assert_eq!(select(&ByteRange::From(0, None), 0), None);
    }
}
