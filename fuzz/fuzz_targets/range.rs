//! The `Range` header a client sends for a blob and the `206` headers
//! (`Content-Range`, `Content-Length`) an upstream answers it with.
#![no_main]

use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // range \n content-range \n content-length
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let Some(Ok(range)) = parts.next().map(HeaderValue::from_bytes) else {
        return;
    };
    let mut upstream = HeaderMap::new();
    if let Some(Ok(v)) = parts.next().map(HeaderValue::from_bytes) {
        upstream.insert(header::CONTENT_RANGE, v);
    }
    if let Some(Ok(v)) = parts.next().map(HeaderValue::from_bytes) {
        upstream.insert(header::CONTENT_LENGTH, v);
    }
    let _ = portcullis::serve::blob::fuzz_range(&range, &upstream);
});
