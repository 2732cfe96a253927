//! Routing: from method, path and query to a [`Route`] naming the endpoint,
//! the upstream and the repository at that upstream.
//!
//! Everything a client controls is validated here, so a malformed name, tag
//! or digest is answered with a precise error and never reaches an
//! upstream. This module does no I/O.
//!
//! May use: `oci`, `config`. Must never use: upstream, verify, serve or
//! anything above.

use http::Method;

use crate::config::Config;
use crate::oci::{self, Digest, InvalidReference, Reference};

/// Why a request could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Invalid(#[from] InvalidReference),
    #[error("Portcullis is a read-only pull-through proxy: push and delete are not supported")]
    MethodNotAllowed,
    #[error("no such endpoint of the registry API")]
    NotFound,
    #[error("no upstream is configured for {registry}")]
    NoUpstream { registry: String },
    #[error("invalid query parameter: {0}")]
    BadQuery(String),
}

/// Which pull endpoint a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET|HEAD /v2/<name>/manifests/<reference>`
    Manifest(Reference),
    /// `GET|HEAD /v2/<name>/blobs/<digest>`
    Blob(Digest),
    /// `GET /v2/<name>/tags/list[?n=&last=]`
    TagsList {
        n: Option<usize>,
        last: Option<String>,
    },
    /// `GET /v2/<name>/referrers/<digest>[?artifactType=]`
    Referrers {
        digest: Digest,
        artifact_type: Option<String>,
    },
}

/// A routed repository request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub endpoint: Endpoint,
    /// Index of the upstream in the configuration.
    pub upstream: usize,
    /// The upstream's canonical registry host.
    pub registry: String,
    /// The repository at the upstream (prefix removed, Docker Hub
    /// `library/` added).
    pub repository: String,
    /// The name as the client wrote it, for links pointing back at us.
    pub client_name: String,
    /// containerd's `?ns=` mirror parameter, to carry into links.
    pub ns: Option<String>,
}

impl Route {
    /// `<registry>/<repository>`: the canonical reference logged with every
    /// request, and what policies match.
    pub fn canonical(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// What the router needs to know of each upstream.
#[derive(Debug, Clone)]
struct Entry {
    registry: String,
    prefix: Option<String>,
}

/// Maps requests to upstreams according to the configuration.
#[derive(Debug, Clone)]
pub struct Router {
    entries: Vec<Entry>,
    default: Option<usize>,
}

/// The result of routing a `/v2/` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// `GET /v2/`: answered locally.
    Base,
    Repository(Route),
}

impl Router {
    pub fn new(config: &Config) -> Router {
        Router {
            entries: config
                .upstreams
                .iter()
                .map(|u| Entry {
                    registry: u.registry.clone(),
                    prefix: u.prefix.clone(),
                })
                .collect(),
            default: config.default_upstream(),
        }
    }

    /// Routes a request whose path starts with `/v2`.
    pub fn route(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Result<Routed, RouteError> {
        if method != Method::GET && method != Method::HEAD {
            return Err(RouteError::MethodNotAllowed);
        }
        let rest = match path {
            "/v2" | "/v2/" => return Ok(Routed::Base),
            _ => path.strip_prefix("/v2/").ok_or(RouteError::NotFound)?,
        };
        let params = Params::parse(query);
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.windows(2).any(|w| w == ["blobs", "uploads"]) {
            return Err(RouteError::MethodNotAllowed);
        }
        let n = segments.len();
        if n < 3 {
            return Err(RouteError::NotFound);
        }
        let (name_segments, endpoint) = match (segments[n - 2], segments[n - 1]) {
            ("tags", "list") => {
                let count = params
                    .get("n")
                    .map(|v| {
                        v.parse::<usize>()
                            .map_err(|_| RouteError::BadQuery(format!("n={v:?} is not a count")))
                    })
                    .transpose()?;
                let last = params.get("last").map(str::to_owned);
                if let Some(last) = &last {
                    oci::validate_tag(last)?;
                }
                (&segments[..n - 2], Endpoint::TagsList { n: count, last })
            }
            ("manifests", reference) => (
                &segments[..n - 2],
                Endpoint::Manifest(Reference::parse(reference)?),
            ),
            ("blobs", digest) => (&segments[..n - 2], Endpoint::Blob(digest.parse()?)),
            ("referrers", digest) => (
                &segments[..n - 2],
                Endpoint::Referrers {
                    digest: digest.parse()?,
                    artifact_type: params.get("artifactType").map(str::to_owned),
                },
            ),
            _ => return Err(RouteError::NotFound),
        };
        let client_name = name_segments.join("/");
        oci::validate_name(&client_name)?;
        let ns = params.get("ns").map(str::to_owned);
        let (upstream, repository) = self.pick_upstream(ns.as_deref(), name_segments)?;
        let registry = self.entries[upstream].registry.clone();
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        Ok(Routed::Repository(Route {
            endpoint,
            upstream,
            registry,
            repository,
            client_name,
            ns,
        }))
    }

    /// `?ns=` first, then a path prefix, then the default upstream.
    fn pick_upstream(
        &self,
        ns: Option<&str>,
        name: &[&str],
    ) -> Result<(usize, String), RouteError> {
        if let Some(ns) = ns {
            return self
                .entries
                .iter()
                .position(|e| e.registry == ns)
                .map(|i| (i, name.join("/")))
                .ok_or_else(|| RouteError::NoUpstream {
                    registry: ns.to_owned(),
                });
        }
        if name.len() > 1 {
            if let Some(i) = self
                .entries
                .iter()
                .position(|e| e.prefix.as_deref() == Some(name[0]))
            {
                return Ok((i, name[1..].join("/")));
            }
        }
        self.default
            .map(|i| (i, name.join("/")))
            .ok_or_else(|| RouteError::NoUpstream {
                registry: "requests without a prefix (no upstream is the default)".to_owned(),
            })
    }
}

/// Decoded query parameters; the first occurrence of a key wins.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>) -> Params {
        Params(
            query
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router() -> Router {
        let config = Config::from_yaml(
            "listen: 127.0.0.1:1\nupstreams:\n  - registry: docker.io\n    default: true\n  - registry: 127.0.0.1:5001\n    url: http://127.0.0.1:5001\n    prefix: local\n",
            Path::new("/"),
        )
        .unwrap();
        Router::new(&config)
    }

    fn route(path: &str, query: Option<&str>) -> Result<Route, RouteError> {
        match router().route(&Method::GET, path, query)? {
            Routed::Repository(r) => Ok(r),
            Routed::Base => panic!("base"),
        }
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn base_and_methods() {
        let r = router();
        assert_eq!(r.route(&Method::GET, "/v2/", None), Ok(Routed::Base));
        assert_eq!(r.route(&Method::GET, "/v2", None), Ok(Routed::Base));
        for m in [Method::PUT, Method::POST, Method::PATCH, Method::DELETE] {
            assert_eq!(
                r.route(&m, "/v2/a/manifests/x", None),
                Err(RouteError::MethodNotAllowed)
            );
        }
        assert_eq!(
            r.route(&Method::GET, "/v2/a/blobs/uploads/123", None),
            Err(RouteError::MethodNotAllowed)
        );
    }

    #[test]
    fn docker_hub_default_with_library() {
        let r = route("/v2/nginx/manifests/latest", None).unwrap();
        assert_eq!(r.canonical(), "docker.io/library/nginx");
        assert_eq!(r.client_name, "nginx");
        let r = route("/v2/bitnami/redis/manifests/latest", None).unwrap();
        assert_eq!(r.canonical(), "docker.io/bitnami/redis");
    }

    #[test]
    fn prefix_and_ns() {
        let r = route("/v2/local/demo/app/blobs/".to_owned().as_str(), None);
        assert!(matches!(r, Err(RouteError::Invalid(_))));
        let r = route(&format!("/v2/local/demo/app/blobs/{D}"), None).unwrap();
        assert_eq!(r.canonical(), "127.0.0.1:5001/demo/app");
        assert_eq!(r.upstream, 1);
        let r = route("/v2/demo/app/manifests/v1", Some("ns=127.0.0.1:5001")).unwrap();
        assert_eq!(r.canonical(), "127.0.0.1:5001/demo/app");
        assert_eq!(r.ns.as_deref(), Some("127.0.0.1:5001"));
        // The prefix alone is a repository name on the default upstream.
        let r = route("/v2/local/manifests/v1", None).unwrap();
        assert_eq!(r.canonical(), "docker.io/library/local");
        assert_eq!(
            route("/v2/a/manifests/v1", Some("ns=quay.io")),
            Err(RouteError::NoUpstream {
                registry: "quay.io".into()
            })
        );
    }

    #[test]
    fn endpoints() {
        let r = route("/v2/a/b/tags/list", Some("n=10&last=v1")).unwrap();
        assert_eq!(
            r.endpoint,
            Endpoint::TagsList {
                n: Some(10),
                last: Some("v1".into())
            }
        );
        let r = route(&format!("/v2/a/referrers/{D}"), Some("artifactType=x%2Fy")).unwrap();
        assert!(matches!(
            r.endpoint,
            Endpoint::Referrers { artifact_type: Some(ref t), .. } if t == "x/y"
        ));
        // A repository may contain endpoint words as components.
        let r = route("/v2/blobs/manifests/manifests/v1", None).unwrap();
        assert_eq!(r.repository, "blobs/manifests");
    }

    #[test]
    fn malformed_input() {
        let cases: &[(&str, Option<&str>, RouteError)] = &[
            (
                "/v2/A/manifests/v1",
                None,
                InvalidReference::Name("A".into()).into(),
            ),
            (
                "/v2/a//b/manifests/v1",
                None,
                InvalidReference::Name("a//b".into()).into(),
            ),
            (
                "/v2/../manifests/v1",
                None,
                InvalidReference::Name("..".into()).into(),
            ),
            (
                "/v2/a/manifests/-bad",
                None,
                InvalidReference::Tag("-bad".into()).into(),
            ),
            (
                "/v2/a/manifests/sha256:1",
                None,
                InvalidReference::Digest("sha256:1".into()).into(),
            ),
            (
                "/v2/a/blobs/v1",
                None,
                InvalidReference::Digest("v1".into()).into(),
            ),
            (
                "/v2/a/tags/list",
                Some("n=-1"),
                RouteError::BadQuery("n=\"-1\" is not a count".into()),
            ),
            (
                "/v2/a/tags/list",
                Some("last=%2F"),
                InvalidReference::Tag("/".into()).into(),
            ),
            ("/v2/_catalog", None, RouteError::NotFound),
            ("/v2/a/b/c", None, RouteError::NotFound),
            ("/v3/a/manifests/x", None, RouteError::NotFound),
        ];
        for (path, query, want) in cases {
            assert_eq!(route(path, *query).as_ref().err(), Some(want), "{path}");
        }
    }
}
