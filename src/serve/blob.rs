//! Blobs: streamed from the upstream with flat memory. A whole blob is
//! hashed while it streams ([`super::body`]).
//!
//! Ranges: an upstream `206` is only accepted for a request that carried a
//! `Range`, and only with a `Content-Range` that is exactly the range
//! asked for (a `206` to a plain GET, or to another range, is an upstream
//! error: nothing is served). A `206` that covers the whole blob (a client
//! `bytes=0-`) is hashed like a full body; a true part of a blob cannot be
//! checked on its own, so it is held to its exact length and clients check
//! the assembled blob.
//!
//! Each fetch holds its [`FetchSlots`] until its response body ends or is
//! dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::{ExactLengthBody, VerifyingBody};
use super::error::upstream_failure;
use super::{body_from, BoxError, FetchSlots, ProxyBody, ServeError};
use crate::oci::error::ErrorCode;
use crate::routing::Route;
use crate::upstream::Upstream;
use crate::verify::BlobPermit;

/// Upstream response headers a blob response carries on.
const PASSED_HEADERS: [header::HeaderName; 5] = [
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::CACHE_CONTROL,
];

/// `GET|HEAD /v2/<name>/blobs/<digest>`, with an optional single `Range`:
/// only the blob a [`BlobPermit`] names.
/// A body streamed to the client keeps `slots`.
pub async fn serve(
    upstream: &Upstream,
    route: &Route,
    permit: &BlobPermit,
    client_headers: &HeaderMap,
    head: bool,
    slots: FetchSlots,
) -> Result<Response<ProxyBody>, ServeError> {
    let digest = permit.digest();
    let mut headers = HeaderMap::new();
    let mut requested = None;
    if let Some(range) = client_headers.get(header::RANGE) {
        requested = Some(check_range(range)?);
        headers.insert(header::RANGE, range.clone());
    }
    let method = if head { Method::HEAD } else { Method::GET };
    let path = format!("/v2/{}/blobs/{digest}", route.repository);
    let response = upstream
        .fetch_unkept(method, &path, &route.repository, &headers)
        .await?;
    let status = response.status();
    if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
        let what = format!("blob {}@{digest}", route.canonical());
        return Err(upstream_failure(route, response, what, ErrorCode::BlobUnknown).await);
    }
    let (parts, body) = response.into_parts();
    // The part a 206 carries, checked against the request.
    let part = if status == StatusCode::PARTIAL_CONTENT {
        let invalid = |reason: String| ServeError::UpstreamInvalid {
            what: format!("blob {}@{digest}", route.canonical()),
            reason,
        };
        let Some(requested) = requested else {
            return Err(invalid(
                "it answered 206 Partial Content to a request without Range; \
                 not serving a blob that cannot be verified"
                    .into(),
            ));
        };
        Some(check_partial(&requested, &parts.headers).map_err(invalid)?)
    } else {
        None
    };
    let body = match part {
        _ if head => body_from(Bytes::new()),
        // A whole blob, as a 200 or as a 206 covering all of it.
        None => Holding::new(VerifyingBody::new(body, digest.clone()), slots).boxed_unsync(),
        Some(part) if part.is_whole() => {
            Holding::new(VerifyingBody::new(body, digest.clone()), slots).boxed_unsync()
        }
        Some(part) => Holding::new(
            ExactLengthBody::new(body.map_err(|e| -> BoxError { Box::new(e) }), part.len()),
            slots,
        )
        .boxed_unsync(),
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    let headers = out.headers_mut();
    for name in PASSED_HEADERS {
        if name == header::CONTENT_RANGE && part.is_none() {
            // Only a checked 206 describes a range.
            continue;
        }
        if let Some(value) = parts.headers.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    if let Some(part) = part {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(part.len()));
    }
    headers
        .entry(header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/octet-stream"));
    if let Ok(value) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert("docker-content-digest", value);
    }
    Ok(out)
}

/// A client's byte range, as [`check_range`] accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ByteRange {
    /// `bytes=N-M` (`Some(M)`) or `bytes=N-` (`None`).
    From(u64, Option<u64>),
    /// `bytes=-N`: the last N bytes.
    Suffix(u64),
}

/// The part of a blob an upstream `206` carries (`Content-Range: bytes
/// first-last/total`), already checked against the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    first: u64,
    last: u64,
    total: u64,
}

impl Part {
    fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// The part is the whole blob: it can be hashed and checked.
    fn is_whole(&self) -> bool {
        self.first == 0 && self.last + 1 == self.total
    }
}

/// Parses `bytes first-last/total` strictly (digits only, a known total,
/// `first <= last < total`).
fn parse_content_range(value: &str) -> Option<Part> {
    let spec = value.trim().strip_prefix("bytes ")?;
    let (range, total) = spec.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let part = Part {
        first: number(first)?,
        last: number(last)?,
        total: number(total)?,
    };
    (part.first <= part.last && part.last < part.total).then_some(part)
}

/// Checks an upstream `206` against the client's range: its
/// `Content-Range` must be exactly the part the range selects from a blob
/// of the size it states, and its `Content-Length` (if any) that part's
/// length. The reason is for the error message.
fn check_partial(requested: &ByteRange, headers: &HeaderMap) -> Result<Part, String> {
    let raw = headers
        .get(header::CONTENT_RANGE)
        .ok_or("it answered 206 Partial Content without Content-Range")?;
    let text = String::from_utf8_lossy(raw.as_bytes());
    let part = parse_content_range(&text)
        .ok_or_else(|| format!("it answered 206 with an invalid Content-Range {text:?}"))?;
    let total = part.total;
    let expected = match *requested {
        ByteRange::From(first, _) if first >= total => None,
        ByteRange::From(first, Some(last)) => Some((first, last.min(total - 1))),
        ByteRange::From(first, None) => Some((first, total - 1)),
        ByteRange::Suffix(n) => Some((total - n.min(total), total - 1)),
    };
    if expected != Some((part.first, part.last)) {
        return Err(format!(
            "it answered 206 with Content-Range {text:?}, which is not the range requested ({})",
            describe(requested)
        ));
    }
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let length = length
            .to_str()
            .ok()
            .and_then(|l| l.trim().parse::<u64>().ok());
        if length != Some(part.len()) {
            return Err(format!(
                "it answered 206 with Content-Range {text:?} but a Content-Length of {length:?}"
            ));
        }
    }
    Ok(part)
}

/// Fuzzing entry point (`fuzz/fuzz_targets/range.rs`), not part of the
/// API: a client's `Range` through [`check_range`] and, when accepted, an
/// upstream `206`'s headers through `check_partial`; the accepted range as
/// text, or why not.
#[doc(hidden)]
pub fn fuzz_range(range: &HeaderValue, upstream: &HeaderMap) -> Result<String, String> {
    let requested = check_range(range).map_err(|e| e.to_string())?;
    let part = check_partial(&requested, upstream)?;
    Ok(format!("{} {part:?}", describe(&requested)))
}

pub(super) fn describe(range: &ByteRange) -> String {
    match range {
        ByteRange::From(first, Some(last)) => format!("bytes={first}-{last}"),
        ByteRange::From(first, None) => format!("bytes={first}-"),
        ByteRange::Suffix(n) => format!("bytes=-{n}"),
    }
}

/// A body that holds its fetch's slots until it is dropped.
pub(super) struct Holding<B> {
    inner: B,
    _slots: FetchSlots,
}

impl<B> Holding<B> {
    pub(super) fn new(inner: B, slots: FetchSlots) -> Holding<B> {
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
pub(super) fn check_range(value: &HeaderValue) -> Result<ByteRange, ServeError> {
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
        (Some(s), Some(e)) if s <= e => Ok(ByteRange::From(s, Some(e))),
        (Some(s), None) => Ok(ByteRange::From(s, None)),
        (None, Some(n)) if n > 0 => Ok(ByteRange::Suffix(n)),
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

    fn partial(range: &str, content_range: &str, length: Option<&str>) -> Result<Part, String> {
        let requested = check_range(&HeaderValue::from_str(range).unwrap()).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(content_range).unwrap(),
        );
        if let Some(l) = length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_str(l).unwrap());
        }
        check_partial(&requested, &headers)
    }

    #[test]
    fn partial_answers_must_match_the_request() {
        let whole = Part {
            first: 0,
            last: 99,
            total: 100,
        };
        assert_eq!(
            partial("bytes=0-", "bytes 0-99/100", Some("100")),
            Ok(whole)
        );
        assert!(whole.is_whole());
        assert_eq!(partial("bytes=0-999", "bytes 0-99/100", None), Ok(whole));
        assert_eq!(partial("bytes=-1000", "bytes 0-99/100", None), Ok(whole));
        let tail = partial("bytes=-10", "bytes 90-99/100", None).unwrap();
        assert_eq!((tail.len(), tail.is_whole()), (10, false));
        assert!(partial("bytes=10-19", "bytes 10-19/100", Some("10")).is_ok());
        assert!(partial("bytes=90-", "bytes 90-99/100", None).is_ok());
        for (range, content_range, length) in [
            ("bytes=10-19", "bytes 11-20/100", None),
            ("bytes=10-19", "bytes 10-18/100", None),
            ("bytes=10-19", "bytes 10-19/100", Some("11")),
            ("bytes=10-19", "bytes 10-19/*", None),
            ("bytes=10-19", "bytes */100", None),
            ("bytes=10-19", "bytes 19-10/100", None),
            ("bytes=10-19", "bytes 10-19/15", None),
            ("bytes=0-", "bytes 0-49/100", None),
            ("bytes=-10", "bytes 0-99/100", None),
            ("bytes=200-", "bytes 0-99/100", None),
            ("bytes=0-", "items 0-99/100", None),
            ("bytes=0-", "bytes +0-99/100", None),
        ] {
            assert!(
                partial(range, content_range, length).is_err(),
                "{range} answered with {content_range} ({length:?})"
            );
        }
        let requested = check_range(&HeaderValue::from_static("bytes=0-")).unwrap();
        assert!(check_partial(&requested, &HeaderMap::new()).is_err());
    }
}
