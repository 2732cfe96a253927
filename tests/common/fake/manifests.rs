//! The manifest, `tags/list` and referrers endpoints.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;

use super::config::FakeConfig;
use super::content::{sha256_digest, OCI_EMPTY_INDEX, OCI_INDEX};
use super::response::{
    empty, full, oci_error, page_not_found, trickle, FakeBody, Resp, BLOB_CHUNK,
};
use super::{lock, Shared};

pub(super) fn serve_manifest(
    shared: &Shared,
    cfg: &FakeConfig,
    name: &str,
    reference: &str,
    head: bool,
    headers: &HeaderMap,
) -> Resp {
    let found = lock(&shared.store)
        .manifests
        .get(&(name.to_string(), reference.to_string()))
        .cloned();
    let Some(m) = found else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        );
    };
    if cfg.strict_accept && !accepts(headers, &m.media_type) {
        return oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown (media type not accepted)",
        );
    }
    let by_digest = reference.contains(':');
    let claimed = if by_digest {
        reference.to_string()
    } else {
        sha256_digest(&m.bytes)
    };
    let bytes = if by_digest && cfg.wrong_manifest_digest {
        let mut b = m.bytes.to_vec();
        b.extend_from_slice(b"\n\n");
        Bytes::from(b)
    } else {
        m.bytes.clone()
    };
    let builder = empty(StatusCode::OK)
        .header("content-type", &m.media_type)
        .header("docker-content-digest", &claimed)
        .header("etag", format!("\"{claimed}\""))
        .header("docker-distribution-api-version", "registry/2.0");
    if head {
        return builder
            .header("content-length", bytes.len())
            .body(FakeBody::Full(None))
            .expect("response");
    }
    if let Some((suffix, every)) = &cfg.trickle_manifests {
        if reference.ends_with(suffix.as_str()) {
            return builder
                .header("content-length", bytes.len())
                .body(trickle(bytes, *every))
                .expect("response");
        }
    }
    if cfg.chunked_manifests {
        return builder.body(chunked(bytes)).expect("response");
    }
    builder
        .header("content-length", bytes.len())
        .body(FakeBody::Full(Some(bytes)))
        .expect("response")
}

/// A body fed through a channel by a task, so that it goes out chunked,
/// without `Content-Length`.
fn chunked(bytes: Bytes) -> FakeBody {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for chunk in bytes.chunks(BLOB_CHUNK.max(bytes.len() / 2 + 1)) {
            if tx.send(Ok(Bytes::copy_from_slice(chunk))).await.is_err() {
                return;
            }
        }
    });
    FakeBody::Channel(rx)
}

/// Whether the request's `Accept` headers list `media_type` (or `*/*`).
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get_all("accept")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.split(';').next().unwrap_or("").trim();
            t == media_type || t == "*/*"
        })
}

pub(super) fn serve_tags(
    shared: &Shared,
    cfg: &FakeConfig,
    name: &str,
    query: Option<&str>,
) -> Resp {
    let tags: Option<Vec<String>> = lock(&shared.store)
        .tags
        .get(name)
        .map(|s| s.iter().cloned().collect());
    let Some(tags) = tags else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry",
        );
    };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| pairs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    let n: Option<usize> = match get("n") {
        Some(v) => match v.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                return oci_error(
                    StatusCode::BAD_REQUEST,
                    "PAGINATION_NUMBER_INVALID",
                    "invalid number of results requested",
                )
            }
        },
        None => None,
    };
    let last = get("last");
    let after: Vec<String> = tags
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|l| t > l))
        .collect();
    let limit = n.or(cfg.tags_page_size).unwrap_or(usize::MAX);
    let page: Vec<String> = after.iter().take(limit).cloned().collect();
    let body = serde_json::json!({"name": name, "tags": page}).to_string();
    let mut resp = full(StatusCode::OK, "application/json", body);
    if limit > 0 && after.len() > page.len() {
        let last_tag = page.last().cloned().unwrap_or_default();
        let target = format!(
            "/v2/{name}/tags/list?last={}&n={limit}",
            form_urlencoded::byte_serialize(last_tag.as_bytes()).collect::<String>()
        );
        let target = if cfg.absolute_links {
            format!("http://{}{target}", shared.addr)
        } else {
            target
        };
        resp.headers_mut().insert(
            "link",
            http::HeaderValue::from_str(&format!("<{target}>; rel=\"next\"")).expect("header"),
        );
    }
    resp
}

pub(super) fn serve_referrers(shared: &Shared, cfg: &FakeConfig, name: &str, digest: &str) -> Resp {
    if cfg.no_referrers_api {
        return page_not_found();
    }
    let stored = lock(&shared.store)
        .referrers
        .get(&(name.to_string(), digest.to_string()))
        .cloned();
    let body = stored.unwrap_or_else(|| Bytes::from_static(OCI_EMPTY_INDEX.as_bytes()));
    full(StatusCode::OK, OCI_INDEX, body)
}
