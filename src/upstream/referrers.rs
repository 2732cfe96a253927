//! The referrers of a digest, the one way both serving (`GET
//! /v2/<name>/referrers/<digest>`) and verification (sigstore bundles
//! attached as referrers) ask for them: the OCI 1.1 referrers API, or,
//! from an upstream without it, the index stored under the referrers tag
//! (`sha256-<hex>`, the tag schema; distribution 2.8 has no API).
//!
//! An upstream that just showed it has no API is not asked again for a
//! while: one round trip less per lookup. What the index holds is the
//! caller's business; this module only finds it.

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::{Upstream, UpstreamBody, UpstreamError};
use crate::oci::{media, Digest};

/// Where a referrers index was found, or why there is none.
pub enum Referrers {
    /// The referrers API answered `200`: its index, filtered by
    /// `artifactType` if the upstream says so in `OCI-Filters-Applied`.
    Api(Response<UpstreamBody>),
    /// No API; the referrers tag holds this index (never filtered).
    Tag(Response<UpstreamBody>),
    /// No API and no referrers tag: nothing refers to the digest.
    Absent,
    /// The API (`tag: false`) or the tag (`tag: true`) answered another
    /// status; the response is the caller's to report.
    Refused {
        tag: bool,
        response: Response<UpstreamBody>,
    },
}

/// Statuses meaning "no referrers API here": the spec says 404; some
/// registries answer 405 or 501 for endpoints they do not implement.
fn no_referrers_api(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
    )
}

impl Upstream {
    /// The referrers of `digest` in `repository`, asking the API for
    /// `artifact_type` only when given.
    pub async fn referrers(
        &self,
        repository: &str,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Referrers, UpstreamError> {
        let mut accept = HeaderMap::new();
        accept.insert(header::ACCEPT, HeaderValue::from_static(media::OCI_INDEX));
        if !self.known_without_referrers_api() {
            let mut path = format!("/v2/{repository}/referrers/{digest}");
            if let Some(t) = artifact_type {
                let query: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("artifactType", t)
                    .finish();
                path = format!("{path}?{query}");
            }
            let response = self.fetch(Method::GET, &path, repository, &accept).await?;
            match response.status() {
                StatusCode::OK => return Ok(Referrers::Api(response)),
                status if no_referrers_api(status) => self.mark_no_referrers_api(),
                _ => {
                    return Ok(Referrers::Refused {
                        tag: false,
                        response,
                    })
                }
            }
        }
        let path = format!("/v2/{repository}/manifests/{}", digest.tag_form());
        let response = self.fetch(Method::GET, &path, repository, &accept).await?;
        Ok(match response.status() {
            StatusCode::OK => Referrers::Tag(response),
            StatusCode::NOT_FOUND => Referrers::Absent,
            _ => Referrers::Refused {
                tag: true,
                response,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_meaning_no_api() {
        for s in [404, 405, 501] {
            assert!(no_referrers_api(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 400, 401, 403, 429, 500, 502, 503] {
            assert!(!no_referrers_api(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
