//! Blobs: streamed from the upstream with flat memory. A whole blob is
//! hashed while it streams ([`super::verifying`]); ranges pass through
//! (a part of a blob cannot be checked on its own; clients check the
//! assembled blob). Each fetch holds its [`FetchSlots`] until its response
//! body ends or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::verifying::VerifyingBody;
use super::{body_from, upstream_failure, BoxError, FetchSlots, ProxyBody, ServeError};
use crate::error::ErrorCode;
use crate::oci::Digest;
use crate::routing::Route;
use crate::upstream::Upstream;

/// Upstream response headers a blob response carries on.
const PASSED_HEADERS: [header::HeaderName; 5] = [
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::CACHE_CONTROL,
];

/// `GET|HEAD /v2/<name>/blobs/<digest>`, with an optional single `Range`.
/// A body streamed to the client keeps `slots`.
pub async fn serve(
    upstream: &Upstream,
    route: &Route,
    digest: &Digest,
    client_headers: &HeaderMap,
    head: bool,
    slots: FetchSlots,
) -> Result<Response<ProxyBody>, ServeError> {
    let mut headers = HeaderMap::new();
    if let Some(range) = client_headers.get(header::RANGE) {
        check_range(range)?;
        headers.insert(header::RANGE, range.clone());
    }
    let method = if head { Method::HEAD } else { Method::GET };
    let path = format!("/v2/{}/blobs/{digest}", route.repository);
    let response = upstream
        .fetch(method, &path, &route.repository, &headers)
        .await?;
    let status = response.status();
    if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
        let what = format!("blob {}@{digest}", route.canonical());
        return Err(upstream_failure(route, response, what, ErrorCode::BlobUnknown).await);
    }
    let (parts, body) = response.into_parts();
    let body = if head {
        body_from(Bytes::new())
    } else if status == StatusCode::OK {
        Holding::new(VerifyingBody::new(body, digest.clone()), slots).boxed_unsync()
    } else {
        Holding::new(body.map_err(|e| -> BoxError { Box::new(e) }), slots).boxed_unsync()
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    let headers = out.headers_mut();
    for name in PASSED_HEADERS {
        if let Some(value) = parts.headers.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    headers
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/octet-stream"));
    if let Ok(value) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert("docker-content-digest", value);
    }
    Ok(out)
}

/// A body that holds its fetch's slots until it is dropped.
struct Holding<B> {
    inner: B,
    _slots: FetchSlots,
}

impl<B> Holding<B> {
    fn new(inner: B, slots: FetchSlots) -> Holding<B> {
        Holding {
            inner,
            _slots: slots,
        }
    }
}

impl<B> Body for Holding<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Accepts one byte range: `bytes=N-M`, `bytes=N-` or `bytes=-N`.
/// Multiple ranges are refused: no registry client asks for them, and a
/// multipart body is one more thing to get wrong.
fn check_range(value: &HeaderValue) -> Result<(), ServeError> {
    let bad = || {
        ServeError::BadRange(format!(
            "unsupported Range {:?}: one byte range (bytes=N-M, bytes=N- or bytes=-N) is supported",
            String::from_utf8_lossy(value.as_bytes())
        ))
    };
    let text = value.to_str().map_err(|_| bad())?;
    let spec = text.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (start, end) = spec.split_once('-').ok_or_else(bad)?;
    let number = |s: &str| -> Result<Option<u64>, ServeError> {
        if s.is_empty() {
            return Ok(None);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map(Some).map_err(|_| bad())
    };
    match (number(start.trim())?, number(end.trim())?) {
        (Some(s), Some(e)) if s <= e => Ok(()),
        (Some(_), None) => Ok(()),
        (None, Some(n)) if n > 0 => Ok(()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        for good in ["bytes=0-0", "bytes=0-99", "bytes=100-", "bytes=-5"] {
            assert!(
                check_range(&HeaderValue::from_static(good)).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "bytes=5-1",
            "bytes=-",
            "bytes=-0",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
            "0-1",
        ] {
            assert!(
                check_range(&HeaderValue::from_static(bad)).is_err(),
                "{bad}"
            );
        }
    }
}
