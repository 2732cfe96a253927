//! Writing cosign artifacts for an image, shared by `sign` and `attest`
//! (and `verify --key` resolves with it): the registry client the
//! command-line options describe, resolving the image, where its
//! artifacts live (next to it, or in `COSIGN_REPOSITORY`), and appending
//! a layer to its `sha256-<hex>.sig` / `.att` manifest (blob uploads and
//! the manifest push). The signing key is the `signing_key` module's.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use p256::ecdsa::signature::Signer as _;
use serde::{Deserialize, Serialize};

use super::image::{ImageRef, RepositoryRef, ACCEPT_ALL};
use crate::config::{AuthConfig, Timeouts, UpstreamConfig};
use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::oci::{Digest, Reference};
use crate::upstream::credentials::docker_config;
use crate::upstream::{Access, Upstream};

/// Options for reaching a registry from the command line (`--insecure`,
/// `--username`, `--password-file`, `--ca-file`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryOptions {
    /// Talk plain HTTP to the registry.
    #[arg(long, visible_alias = "allow-insecure-registry")]
    pub insecure: bool,
    /// User name for the registry (with --password-file).
    #[arg(long)]
    pub username: Option<String>,
    /// File holding the registry password (with --username).
    #[arg(long)]
    pub password_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) to trust for the registry's TLS certificate.
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// A token endpoint on another host that may receive the credentials
    /// (e.g. https://auth.docker.io/token); repeatable. Without it,
    /// credentials go only to token endpoints on the registry's own origin.
    #[arg(long = "token-realm")]
    pub token_realms: Vec<String>,
}

/// A client for `registry`. Credentials: `--username` with
/// `--password-file`; without them, the first docker config that has an
/// entry for the registry, looked up as podman and docker do
/// ([`docker_config::cli_search_paths`]: `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json`,
/// `~/.docker/config.json`), resolved as the proxy resolves
/// `auth.dockerConfig`; with none, anonymous.
pub(super) fn registry_client(
    registry: &str,
    options: &RegistryOptions,
) -> Result<Upstream, String> {
    let scheme = if options.insecure { "http" } else { "https" };
    let auth = match (&options.username, &options.password_file) {
        (Some(username), Some(password_file)) => Some(AuthConfig {
            username: Some(username.clone()),
            password_file: Some(password_file.clone()),
            docker_config: None,
            token_realms: options.token_realms.clone(),
        }),
        (None, None) => {
            let paths = docker_config::cli_search_paths(&|name| std::env::var(name).ok());
            docker_config::first_with_entry(&paths, registry)?.map(|path| AuthConfig {
                username: None,
                password_file: None,
                docker_config: Some(path),
                token_realms: options.token_realms.clone(),
            })
        }
        _ => return Err("--username and --password-file go together".into()),
    };
    let config = UpstreamConfig {
        registry: registry.to_owned(),
        url: Some(if registry == "docker.io" {
            "https://registry-1.docker.io".to_owned()
        } else {
            format!("{scheme}://{registry}")
        }),
        prefix: None,
        default: true,
        required: false,
        auth,
        ca_file: options.ca_file.clone(),
    };
    Upstream::new(&config, Timeouts::default()).map_err(|e| e.to_string())
}

#[derive(Serialize, Deserialize, Clone)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    size: u64,
    digest: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct SigManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// An image resolved at its registry: what `sign` and `attest` write
/// artifacts for, and where they go.
pub(super) struct Target {
    pub(super) image: ImageRef,
    /// The digest of the manifest the registry returned for the reference.
    pub(super) digest: Digest,
    /// Where its `.sig` / `.att` artifacts live.
    pub(super) artifacts: ArtifactRepository,
}

/// A repository holding cosign artifacts, and the client that reaches it.
pub(super) struct ArtifactRepository {
    pub(super) registry: Upstream,
    pub(super) name: RepositoryRef,
}

impl ArtifactRepository {
    /// Where the `sha256-<hex>.<suffix>` artifact of `digest` is:
    /// `<registry>/<repository>:<tag>`.
    pub(super) fn location(&self, digest: &Digest, suffix: &str) -> String {
        format!("{}:{}", self.name.canonical(), artifact_tag(digest, suffix))
    }
}

/// cosign's tag for an artifact of `digest`: `sha256-<hex>.<suffix>`.
fn artifact_tag(digest: &Digest, suffix: &str) -> String {
    format!("{}.{suffix}", digest.tag_form())
}

/// Resolves `reference` at its registry (a tag to the digest of the
/// manifest it points at; a digest is checked against the bytes returned).
/// Its artifacts live in `cosign_repository` when given (another
/// repository, maybe on another registry: its own client), else next to
/// it. Credentials (`--username`) go to the image's registry only.
pub(super) async fn resolve(
    reference: &str,
    options: &RegistryOptions,
    cosign_repository: Option<&RepositoryRef>,
) -> Result<Target, String> {
    let image = ImageRef::parse(reference)?;
    let registry = registry_client(&image.registry, options)?;
    let (bytes, _) = get_manifest(
        &registry,
        &image.repository,
        &image.reference.to_string(),
        ACCEPT_ALL,
    )
    .await?
    .ok_or_else(|| format!("{reference}: manifest not found"))?;
    let digest = match &image.reference {
        Reference::Digest(d) if d.same_algorithm_of(&bytes) != *d => {
            return Err(format!(
                "{reference}: registry returned content with another digest"
            ))
        }
        Reference::Digest(d) => d.clone(),
        Reference::Tag(_) => Digest::sha256_of(&bytes),
    };
    let artifacts = match cosign_repository {
        None => ArtifactRepository {
            registry,
            name: RepositoryRef {
                registry: image.registry.clone(),
                repository: image.repository.clone(),
            },
        },
        Some(other) if other.registry == image.registry => ArtifactRepository {
            registry,
            name: other.clone(),
        },
        Some(other) => {
            let elsewhere = RegistryOptions {
                username: None,
                password_file: None,
                ..options.clone()
            };
            ArtifactRepository {
                registry: registry_client(&other.registry, &elsewhere)?,
                name: other.clone(),
            }
        }
    };
    Ok(Target {
        image,
        digest,
        artifacts,
    })
}

/// A P-256 signature over `message` (SHA-256, RFC 6979, so signing the same
/// message twice gives the same signature), ASN.1 DER, base64: what cosign
/// writes.
pub(super) fn sign_base64(key: &p256::ecdsa::SigningKey, message: &[u8]) -> String {
    let signature: p256::ecdsa::Signature = key.sign(message);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

/// A layer for a cosign artifact manifest: its blob and how to describe it.
pub(super) struct ArtifactLayer {
    pub(super) media_type: &'static str,
    pub(super) content: Bytes,
    pub(super) annotations: BTreeMap<String, String>,
}

/// What an existing `.sig` / `.att` manifest may be stored as.
const ARTIFACT_ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Appends `layer` to the `sha256-<hex>.<suffix>` manifest of `target`
/// (`sig` for signatures, `att` for attestations) in its artifact
/// repository, as cosign does: existing layers are kept, a layer already
/// there (same content and annotations) is not added twice, and the config
/// lists one `diff_id` per layer. Returns where the artifact is.
pub(super) async fn append_layer(
    target: &Target,
    suffix: &str,
    layer: ArtifactLayer,
) -> Result<String, String> {
    let registry = &target.artifacts.registry;
    let repo = target.artifacts.name.repository.as_str();
    let tag = artifact_tag(&target.digest, suffix);
    let location = target.artifacts.location(&target.digest, suffix);
    let existing = get_manifest(registry, repo, &tag, ARTIFACT_ACCEPT).await?;
    let mut layers = match existing {
        Some((bytes, _)) => {
            let m: SigManifest = serde_json::from_slice(&bytes).map_err(|e| {
                format!("existing {repo}:{tag} is not a cosign .{suffix} manifest: {e}")
            })?;
            m.layers
        }
        None => Vec::new(),
    };
    let descriptor = Descriptor {
        media_type: layer.media_type.to_owned(),
        size: layer.content.len() as u64,
        digest: Digest::sha256_of(&layer.content).to_string(),
        annotations: layer.annotations,
    };
    if layers.iter().any(|l| {
        l.media_type == descriptor.media_type
            && l.digest == descriptor.digest
            && l.annotations == descriptor.annotations
    }) {
        return Ok(location);
    }
    layers.push(descriptor);
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let history = vec![r#"{"created":"0001-01-01T00:00:00Z"}"#; layers.len()].join(",");
    let config = format!(
        r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{history}],"os":"","rootfs":{{"type":"layers","diff_ids":{}}},"config":{{}}}}"#,
        serde_json::to_string(&diff_ids).map_err(|e| e.to_string())?
    );
    upload_blob(registry, repo, layer.content).await?;
    let config_digest = upload_blob(registry, repo, Bytes::from(config.clone())).await?;
    let manifest = SigManifest {
        schema_version: 2,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        config: Descriptor {
            media_type: "application/vnd.oci.image.config.v1+json".into(),
            size: config.len() as u64,
            digest: config_digest.to_string(),
            annotations: BTreeMap::new(),
        },
        layers,
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
    );
    let path = format!("/v2/{repo}/manifests/{tag}");
    let response = registry
        .request(
            Method::PUT,
            &path,
            repo,
            &headers,
            Bytes::from(body),
            Access::Push,
        )
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != StatusCode::CREATED {
        return Err(format!(
            "pushing {location}: registry answered {}",
            response.status()
        ));
    }
    Ok(location)
}

async fn get_manifest(
    registry: &Upstream,
    repo: &str,
    reference: &str,
    accept: &'static str,
) -> Result<Option<(Bytes, Option<HeaderValue>)>, String> {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
    let response = registry
        .fetch(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            repo,
            &headers,
        )
        .await
        .map_err(|e| e.to_string())?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        s => return Err(format!("{repo}:{reference}: registry answered {s}")),
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = crate::upstream::read_bounded(response.into_body(), MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| format!("reading {repo}:{reference}: {e}"))?;
    Ok(Some((bytes, content_type)))
}

/// Monolithic upload: POST to start, PUT with the content and digest.
async fn upload_blob(registry: &Upstream, repo: &str, content: Bytes) -> Result<Digest, String> {
    let digest = Digest::sha256_of(&content);
    let start = registry
        .request(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            repo,
            &HeaderMap::new(),
            Bytes::new(),
            Access::Push,
        )
        .await
        .map_err(|e| e.to_string())?;
    if start.status() != StatusCode::ACCEPTED {
        return Err(format!(
            "starting an upload to {repo}: registry answered {}",
            start.status()
        ));
    }
    let location = start
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| registry.same_host_path(l))
        .ok_or("registry gave no usable upload location")?;
    let separator = if location.contains('?') { '&' } else { '?' };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let done = registry
        .request(
            Method::PUT,
            &format!("{location}{separator}digest={digest}"),
            repo,
            &headers,
            content,
            Access::Push,
        )
        .await
        .map_err(|e| e.to_string())?;
    if done.status() != StatusCode::CREATED {
        return Err(format!(
            "uploading {digest}: registry answered {}",
            done.status()
        ));
    }
    Ok(digest)
}
