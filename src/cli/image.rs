//! An image named on the command line: `registry/repository[:tag|@digest]`
//! parsed into an [`ImageRef`], and resolved at its configured upstream
//! for the commands that evaluate evidence (`verify`, `attestations list`).

use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue};

use crate::app::Prepared;
use crate::oci::{validate_name, Digest, Reference};
use crate::routing::{Endpoint, Route};
use crate::serve::{manifest, App};

pub use crate::oci::media::ACCEPT_ALL;

/// An image reference `registry/repository[:tag|@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub reference: Reference,
}

impl ImageRef {
    /// Parses a fully qualified reference; the tag defaults to `latest`.
    pub fn parse(text: &str) -> Result<ImageRef, String> {
        let (registry, rest) = text
            .split_once('/')
            .filter(|(r, _)| r.contains('.') || r.contains(':') || *r == "localhost")
            .ok_or_else(|| {
                format!(
                    "{text:?}: give a fully qualified reference, e.g. 127.0.0.1:5001/demo/app:v1"
                )
            })?;
        let (name, reference) = if let Some((name, digest)) = rest.split_once('@') {
            let digest: Digest = digest.parse().map_err(|e| format!("{e}"))?;
            (name, Reference::Digest(digest))
        } else {
            let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
            match rest[last_slash..].find(':') {
                Some(colon) => {
                    let (name, tag) = rest.split_at(last_slash + colon);
                    (
                        name,
                        Reference::parse(&tag[1..]).map_err(|e| e.to_string())?,
                    )
                }
                None => (rest, Reference::Tag("latest".into())),
            }
        };
        validate_name(name).map_err(|e| e.to_string())?;
        let repository = if registry == "docker.io" && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_owned()
        };
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository,
            reference,
        })
    }

    pub fn canonical(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// Where cosign artifacts live when they do not live next to the image:
/// `COSIGN_REPOSITORY`, read as cosign reads it (go-containerregistry's
/// `name.NewRepository`): `registry/path`, or a path alone on Docker Hub
/// (`library/` added to a single component). No tag, no digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryRef {
    pub registry: String,
    pub repository: String,
}

/// The variable cosign reads the signature repository from.
pub const COSIGN_REPOSITORY_ENV: &str = "COSIGN_REPOSITORY";

impl RepositoryRef {
    /// Parses a `COSIGN_REPOSITORY` value.
    pub fn parse(text: &str) -> Result<RepositoryRef, String> {
        let bad = |why: &str| format!("{COSIGN_REPOSITORY_ENV}={text:?}: {why}");
        if text.contains('@') {
            return Err(bad("a repository, not a digest reference"));
        }
        let (registry, path) = match text.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, rest)
            }
            _ => ("docker.io", text),
        };
        if path.contains(':') {
            return Err(bad("a repository, not a tagged reference"));
        }
        validate_name(path).map_err(|e| bad(&e.to_string()))?;
        let docker_hub =
            registry == "docker.io" || crate::oci::DOCKER_HUB_ALIASES.contains(&registry);
        let (registry, repository) = if docker_hub {
            let path = if path.contains('/') {
                path.to_owned()
            } else {
                format!("library/{path}")
            };
            ("docker.io".to_owned(), path)
        } else {
            (registry.to_owned(), path.to_owned())
        };
        Ok(RepositoryRef {
            registry,
            repository,
        })
    }

    /// `COSIGN_REPOSITORY` from the environment: `None` when unset or
    /// empty (as cosign treats it).
    pub fn from_env() -> Result<Option<RepositoryRef>, String> {
        match std::env::var(COSIGN_REPOSITORY_ENV) {
            Ok(value) if value.is_empty() => Ok(None),
            Ok(value) => RepositoryRef::parse(&value).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{COSIGN_REPOSITORY_ENV} is not valid UTF-8"))
            }
        }
    }

    /// `<registry>/<repository>`.
    pub fn canonical(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// An image resolved at its upstream, for the one-shot commands that
/// evaluate evidence (`verify`, `attestations list`).
pub struct Resolved {
    pub app: App,
    pub image: ImageRef,
    pub route: Route,
    pub manifest: crate::oci::manifest::Manifest,
}

impl Resolved {
    /// `<registry>/<repository>@<digest>`.
    pub fn name(&self) -> String {
        format!("{}@{}", self.image.canonical(), self.manifest.digest())
    }
}

/// Fetches `reference`'s manifest from its configured upstream.
pub async fn resolve_upstream(prepared: Prepared, reference: &str) -> Result<Resolved, String> {
    let image = ImageRef::parse(reference)?;
    let upstream_index = prepared
        .config
        .upstreams
        .iter()
        .position(|u| u.registry == image.registry)
        .ok_or_else(|| format!("no upstream is configured for registry {}", image.registry))?;
    let app = crate::app::build_quiet(prepared).map_err(|e| e.to_string())?;
    let route = Route {
        endpoint: Endpoint::Manifest(image.reference.clone()),
        upstream: upstream_index,
        registry: image.registry.clone(),
        repository: image.repository.clone(),
        client_name: image.repository.clone(),
        ns: None,
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(ACCEPT_ALL));
    let upstream = Arc::clone(&app.upstreams()[upstream_index]);
    let manifest = manifest::fetch(&upstream, &route, &image.reference, &headers)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Resolved {
        app,
        image,
        route,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = ImageRef::parse("127.0.0.1:5001/demo/app:v1").unwrap();
        assert_eq!(r.canonical(), "127.0.0.1:5001/demo/app");
        assert_eq!(r.reference, Reference::Tag("v1".into()));
        let r = ImageRef::parse("localhost:5000/app").unwrap();
        assert_eq!(r.reference, Reference::Tag("latest".into()));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("ghcr.io/o/r@{d}")).unwrap();
        assert_eq!(r.reference, Reference::Digest(d.parse().unwrap()));
        assert_eq!(
            ImageRef::parse("docker.io/nginx").unwrap().canonical(),
            "docker.io/library/nginx"
        );
        assert!(ImageRef::parse("nginx:latest").is_err());
        assert!(ImageRef::parse("r.io/UP/x").is_err());
    }

    #[test]
    fn cosign_repositories() {
        let r = |t: &str| RepositoryRef::parse(t).map(|r| r.canonical());
        assert_eq!(
            r("127.0.0.1:5001/sigs/app").unwrap(),
            "127.0.0.1:5001/sigs/app"
        );
        assert_eq!(r("localhost/sigs").unwrap(), "localhost/sigs");
        assert_eq!(r("ghcr.io/o/sigs").unwrap(), "ghcr.io/o/sigs");
        // A path alone is on Docker Hub, as go-containerregistry reads it.
        assert_eq!(r("myorg/sigs").unwrap(), "docker.io/myorg/sigs");
        assert_eq!(r("sigs").unwrap(), "docker.io/library/sigs");
        assert_eq!(r("index.docker.io/o/s").unwrap(), "docker.io/o/s");
        for bad in [
            "",
            "r.io/sigs:v1",
            "r.io/sigs@sha256:00",
            "r.io/UPPER",
            "r.io/",
            "r.io//x",
            "r.io/a b",
        ] {
            let e = r(bad).unwrap_err();
            assert!(e.starts_with("COSIGN_REPOSITORY="), "{bad:?}: {e}");
        }
    }
}
