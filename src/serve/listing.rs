//! Tag lists and referrers.
//!
//! Tag lists pass through with their `Link` pagination rewritten to the
//! name the client used (prefix and `?ns=` included). Referrers pass
//! through; an upstream without the referrers API (404) is answered from
//! the referrers tag schema (`sha256-<hex>` tag) or with an empty index.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::error::upstream_failure;
use super::{body_from, ProxyBody, ServeError};
use crate::oci::error::ErrorCode;
use crate::oci::{media, Digest};
use crate::routing::Route;
use crate::upstream::{read_bounded, ReadError, Referrers, Upstream, UpstreamBody};

/// Largest tag list or referrers page read from an upstream.
pub const MAX_LISTING_BYTES: usize = 4 * 1024 * 1024;

/// `GET|HEAD /v2/<name>/tags/list`: read whole, like a manifest, and
/// bounded alike (`timeouts.manifest`).
pub async fn tags(
    upstream: &Upstream,
    route: &Route,
    n: Option<usize>,
    last: Option<&str>,
    head: bool,
) -> Result<Response<ProxyBody>, ServeError> {
    upstream
        .within(
            upstream.timeouts().manifest,
            "manifest",
            || format!("the tag list of {}", route.repository),
            tags_now(upstream, route, n, last, head),
        )
        .await
}

async fn tags_now(
    upstream: &Upstream,
    route: &Route,
    n: Option<usize>,
    last: Option<&str>,
    head: bool,
) -> Result<Response<ProxyBody>, ServeError> {
    let query = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(n) = n {
            query.append_pair("n", &n.to_string());
        }
        if let Some(last) = last {
            query.append_pair("last", last);
        }
        query.finish()
    };
    let mut path = format!("/v2/{}/tags/list", route.repository);
    if !query.is_empty() {
        path = format!("{path}?{query}");
    }
    let what = format!("tag list of {}", route.canonical());
    let response = upstream
        .fetch(Method::GET, &path, &route.repository, &HeaderMap::new())
        .await?;
    if response.status() != StatusCode::OK {
        return Err(upstream_failure(route, response, what, ErrorCode::NameUnknown).await);
    }
    let link = response.headers().get(header::LINK).cloned();
    let bytes = read_listing(response, &what).await?;
    let mut out = json_response(bytes, HeaderValue::from_static("application/json"), head);
    if let Some(link) = link.and_then(|l| rewrite_link(&l, route, "tags/list")) {
        out.headers_mut().insert(header::LINK, link);
    }
    Ok(out)
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=]`.
/// `GET|HEAD /v2/<name>/referrers/<digest>`, with the tag-schema
/// fallback; read whole and bounded like a manifest.
pub async fn referrers(
    upstream: &Upstream,
    route: &Route,
    digest: &Digest,
    artifact_type: Option<&str>,
    head: bool,
) -> Result<Response<ProxyBody>, ServeError> {
    upstream
        .within(
            upstream.timeouts().manifest,
            "manifest",
            || format!("the referrers of {}@{digest}", route.repository),
            referrers_now(upstream, route, digest, artifact_type, head),
        )
        .await
}

async fn referrers_now(
    upstream: &Upstream,
    route: &Route,
    digest: &Digest,
    artifact_type: Option<&str>,
    head: bool,
) -> Result<Response<ProxyBody>, ServeError> {
    let api = || format!("referrers of {}@{digest}", route.canonical());
    let tag = || format!("referrers tag {}:{}", route.canonical(), digest.tag_form());
    let index = HeaderValue::from_static(media::OCI_INDEX);
    match upstream
        .referrers(&route.repository, digest, artifact_type)
        .await?
    {
        Referrers::Api(response) => {
            let headers = response.headers().clone();
            let bytes = read_listing(response, &api()).await?;
            let content_type = headers.get(header::CONTENT_TYPE).cloned().unwrap_or(index);
            let mut out = json_response(bytes, content_type, head);
            if let Some(f) = headers.get("oci-filters-applied") {
                out.headers_mut().insert("oci-filters-applied", f.clone());
            }
            if let Some(link) = headers
                .get(header::LINK)
                .and_then(|l| rewrite_link(l, route, &format!("referrers/{digest}")))
            {
                out.headers_mut().insert(header::LINK, link);
            }
            Ok(out)
        }
        Referrers::Tag(response) => {
            let what = tag();
            let bytes = read_listing(response, &what).await?;
            match artifact_type {
                None => Ok(json_response(bytes, index, head)),
                Some(wanted) => filtered(&bytes, wanted, what, head),
            }
        }
        Referrers::Absent => Ok(json_response(empty_index(), index, head)),
        Referrers::Refused {
            tag: from_tag,
            response,
        } => {
            let what = if from_tag { tag() } else { api() };
            Err(upstream_failure(route, response, what, ErrorCode::NameUnknown).await)
        }
    }
}

/// A tag-schema referrers index filtered by `artifactType` (the API
/// filters itself; the tag holds every referrer).
fn filtered(
    bytes: &[u8],
    wanted: &str,
    what: String,
    head: bool,
) -> Result<Response<ProxyBody>, ServeError> {
    let mut index: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ServeError::UpstreamInvalid {
            what: what.clone(),
            reason: format!("referrers index is not JSON: {e}"),
        })?;
    if let Some(manifests) = index
        .get_mut("manifests")
        .and_then(serde_json::Value::as_array_mut)
    {
        manifests.retain(|m| m.get("artifactType").and_then(|t| t.as_str()) == Some(wanted));
    }
    let filtered = serde_json::to_vec(&index).map_err(|e| ServeError::UpstreamInvalid {
        what,
        reason: e.to_string(),
    })?;
    let mut out = json_response(
        Bytes::from(filtered),
        HeaderValue::from_static(media::OCI_INDEX),
        head,
    );
    out.headers_mut().insert(
        "oci-filters-applied",
        HeaderValue::from_static("artifactType"),
    );
    Ok(out)
}

fn empty_index() -> Bytes {
    Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
    )
}

async fn read_listing(response: Response<UpstreamBody>, what: &str) -> Result<Bytes, ServeError> {
    read_bounded(response.into_body(), MAX_LISTING_BYTES)
        .await
        .map_err(|e| match e {
            ReadError::Stalled(timeout) => ServeError::Upstream(timeout),
            other => ServeError::UpstreamInvalid {
                what: what.to_owned(),
                reason: other.to_string(),
            },
        })
}

fn json_response(bytes: Bytes, content_type: HeaderValue, head: bool) -> Response<ProxyBody> {
    let len = bytes.len();
    let mut out = Response::new(body_from(if head { Bytes::new() } else { bytes }));
    out.headers_mut().insert(header::CONTENT_TYPE, content_type);
    out.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    out
}

/// Rewrites an upstream `Link: </v2/<upstream repo>/<endpoint>?q>; rel="next"`
/// to the client's view: `/v2/<client name>/<endpoint>?q[&ns=…]`.
fn rewrite_link(link: &HeaderValue, route: &Route, endpoint: &str) -> Option<HeaderValue> {
    let text = link.to_str().ok()?;
    let start = text.find('<')?;
    let end = text[start..].find('>')? + start;
    let target = &text[start + 1..end];
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .filter(|(k, _)| k != "ns")
        .collect();
    if let Some(ns) = &route.ns {
        params.push(("ns".to_owned(), ns.clone()));
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let mut rewritten = format!("/v2/{}/{endpoint}", route.client_name);
    if !query.is_empty() {
        rewritten = format!("{rewritten}?{query}");
    }
    HeaderValue::from_str(&format!("<{rewritten}>{}", &text[end + 1..])).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Endpoint;

    fn route(client_name: &str, ns: Option<&str>) -> Route {
        Route {
            endpoint: Endpoint::TagsList {
                n: None,
                last: None,
            },
            upstream: 0,
            registry: "r".into(),
            repository: "library/x".into(),
            client_name: client_name.into(),
            ns: ns.map(str::to_owned),
        }
    }

    #[test]
    fn links_point_back_at_the_client_name() {
        let link = HeaderValue::from_static(r#"</v2/library/x/tags/list?last=b&n=2>; rel="next""#);
        assert_eq!(
            rewrite_link(&link, &route("hub/x", None), "tags/list").unwrap(),
            r#"</v2/hub/x/tags/list?last=b&n=2>; rel="next""#
        );
        assert_eq!(
            rewrite_link(&link, &route("x", Some("docker.io")), "tags/list").unwrap(),
            r#"</v2/x/tags/list?last=b&n=2&ns=docker.io>; rel="next""#
        );
        let absolute = HeaderValue::from_static(
            r#"<https://up.example/v2/library/x/tags/list?n=2&last=b>; rel="next""#,
        );
        assert_eq!(
            rewrite_link(&absolute, &route("x", None), "tags/list").unwrap(),
            r#"</v2/x/tags/list?n=2&last=b>; rel="next""#
        );
        assert!(
            rewrite_link(&HeaderValue::from_static("garbage"), &route("x", None), "t").is_none()
        );
    }
}
