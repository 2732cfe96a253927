//! Blob endpoints: whole and ranged bodies with their faults, and the
//! storage listener that blob redirects point at.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use tokio::sync::mpsc;

use super::config::FakeConfig;
use super::response::{empty, full, header_str, oci_error, redirect, FakeBody, Resp, BLOB_CHUNK};
use super::{lock, Shared};

/// Result of parsing a `Range` header against a representation of `size`.
enum RangeSpec {
    /// No usable range: serve the whole thing (absent, or multi-range).
    Whole,
    /// Inclusive byte range.
    Single(u64, u64),
    /// Syntactically invalid (Go: "invalid range").
    Invalid,
    /// Valid but nothing overlaps the representation.
    NoOverlap,
}

/// Single-range subset of Go's `net/http` `parseRange`.
fn parse_range(h: Option<&str>, size: u64) -> RangeSpec {
    let Some(h) = h else {
        return RangeSpec::Whole;
    };
    let Some(spec) = h.strip_prefix("bytes=") else {
        return RangeSpec::Invalid;
    };
    if spec.contains(',') {
        return RangeSpec::Whole;
    }
    let spec = spec.trim();
    let Some((start, end)) = spec.split_once('-') else {
        return RangeSpec::Invalid;
    };
    let (start, end) = (start.trim(), end.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if start.is_empty() {
        let Some(n) = num(end) else {
            return RangeSpec::Invalid;
        };
        if n == 0 || size == 0 {
            return RangeSpec::NoOverlap;
        }
        let n = n.min(size);
        return RangeSpec::Single(size - n, size - 1);
    }
    let Some(s) = num(start) else {
        return RangeSpec::Invalid;
    };
    if end.is_empty() {
        if s >= size {
            return RangeSpec::NoOverlap;
        }
        return RangeSpec::Single(s, size - 1);
    }
    let Some(e) = num(end) else {
        return RangeSpec::Invalid;
    };
    if s > e {
        return RangeSpec::Invalid;
    }
    if s >= size {
        return RangeSpec::NoOverlap;
    }
    RangeSpec::Single(s, e.min(size - 1))
}

pub(super) fn serve_storage(
    shared: &Shared,
    cfg: &FakeConfig,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Resp {
    // /storage/<repo...>/<digest>
    let Some(rest) = path.strip_prefix("/storage/") else {
        return full(StatusCode::NOT_FOUND, "text/plain", "no such object\n");
    };
    let Some((repo, digest)) = rest.rsplit_once('/') else {
        return full(StatusCode::NOT_FOUND, "text/plain", "no such object\n");
    };
    if method != Method::GET && method != Method::HEAD {
        return full(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "read-only\n");
    }
    if cfg.redirect_loop {
        return redirect(format!("{}{path}?sig=again", shared.storage_url));
    }
    serve_blob(shared, cfg, repo, digest, method == Method::HEAD, headers)
}

pub(super) fn serve_blob(
    shared: &Shared,
    cfg: &FakeConfig,
    name: &str,
    digest: &str,
    head: bool,
    headers: &HeaderMap,
) -> Resp {
    let found = lock(&shared.store)
        .blobs
        .get(&(name.to_string(), digest.to_string()))
        .cloned();
    let Some(blob) = found else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
        );
    };
    let size = blob.len() as u64;
    if head {
        return blob_headers(digest)
            .header("content-type", "application/octet-stream")
            .header("content-length", size)
            .body(FakeBody::Full(None))
            .expect("response");
    }
    match parse_range(header_str(headers, "range"), size) {
        RangeSpec::Invalid => full(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "text/plain; charset=utf-8",
            "invalid range\n",
        ),
        RangeSpec::NoOverlap => {
            let mut r = full(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "text/plain; charset=utf-8",
                "invalid range: failed to overlap\n",
            );
            r.headers_mut().insert(
                "content-range",
                http::HeaderValue::from_str(&format!("bytes */{size}")).expect("header"),
            );
            r
        }
        RangeSpec::Single(s, e) => serve_range(cfg, digest, &blob, s, e),
        RangeSpec::Whole => serve_whole(cfg, digest, blob),
    }
}

/// The headers every blob answer carries.
fn blob_headers(digest: &str) -> http::response::Builder {
    empty(StatusCode::OK)
        .header("docker-content-digest", digest)
        .header("accept-ranges", "bytes")
        .header("etag", format!("\"{digest}\""))
        .header("cache-control", "max-age=31536000")
}

/// `bytes` with the middle byte flipped: same length, wrong content.
fn flip_middle_byte(bytes: &Bytes) -> Bytes {
    let mut b = bytes.to_vec();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    Bytes::from(b)
}

/// A `206` for the inclusive range `s..=e` (shifted or corrupted if the
/// switches say so).
fn serve_range(cfg: &FakeConfig, digest: &str, blob: &Bytes, s: u64, e: u64) -> Resp {
    let size = blob.len() as u64;
    let (s, e) = if !cfg.shifted_ranges {
        (s, e)
    } else if e + 1 < size {
        (s + 1, e + 1)
    } else {
        (s.saturating_sub(1), e.saturating_sub(1))
    };
    let mut part = blob.slice(s as usize..=e as usize);
    if cfg.corrupt_ranges {
        part = flip_middle_byte(&part);
    }
    blob_headers(digest)
        .status(StatusCode::PARTIAL_CONTENT)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("bytes {s}-{e}/{size}"))
        .header("content-length", part.len())
        .body(FakeBody::Full(Some(part)))
        .expect("response")
}

/// The whole blob, with the whole-body faults applied.
fn serve_whole(cfg: &FakeConfig, digest: &str, blob: Bytes) -> Resp {
    let size = blob.len() as u64;
    let body = if cfg.corrupt_blob {
        flip_middle_byte(&blob)
    } else {
        blob
    };
    if cfg.partial_without_range {
        return blob_headers(digest)
            .status(StatusCode::PARTIAL_CONTENT)
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("bytes 0-{}/{size}", size.saturating_sub(1)),
            )
            .header("content-length", size)
            .body(FakeBody::Full(Some(body)))
            .expect("response");
    }
    blob_headers(digest)
        .header("content-type", "application/octet-stream")
        .header("content-length", size)
        .body(stream_blob(cfg, body))
        .expect("response")
}

/// `body` streamed in [`BLOB_CHUNK`]s by a task, which may pause before each
/// chunk, or stop half-way and then reset the connection or go silent.
fn stream_blob(cfg: &FakeConfig, body: Bytes) -> FakeBody {
    let half = body.len() / 2;
    let chunk_delay = cfg.blob_chunk_delay;
    let drop_mid = cfg.drop_connection_mid_blob;
    let stall_mid = cfg.stall_mid_blob;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut sent = 0usize;
        for chunk in body.chunks(BLOB_CHUNK) {
            if let Some(d) = chunk_delay {
                tokio::time::sleep(d).await;
            }
            if (drop_mid || stall_mid) && sent + chunk.len() > half {
                let first = half - sent;
                if first > 0 {
                    let _ = tx.send(Ok(Bytes::copy_from_slice(&chunk[..first]))).await;
                }
                if drop_mid {
                    let _ = tx
                        .send(Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "fake: dropping connection mid-blob",
                        )))
                        .await;
                } else {
                    // Keep the sender alive so the body neither ends nor errors.
                    std::future::pending::<()>().await;
                }
                return;
            }
            if tx.send(Ok(Bytes::copy_from_slice(chunk))).await.is_err() {
                return;
            }
            sent += chunk.len();
        }
    });
    FakeBody::Channel(rx)
}

/// A `307` sending a blob request to the storage listener (another host).
pub(super) fn redirect_to_storage(shared: &Shared, name: &str, digest: &str) -> Resp {
    redirect(format!(
        "{}/storage/{}/{}?sig=fake",
        shared.storage_url, name, digest
    ))
}
