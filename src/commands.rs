//! The one-shot commands: `keygen`, `sign` and `verify`. `main.rs` parses
//! the command line and calls these.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, Config, Timeouts, UpstreamConfig};
use crate::oci::{validate_name, Digest, Reference};
use crate::policy::{Decision, Verdict};
use crate::routing::{Endpoint, Route};
use crate::serve::{manifest, App, MAX_MANIFEST_BYTES};
use crate::upstream::{Access, Upstream};
use crate::verify::cosign::{SIGNATURE_ANNOTATION, SIMPLE_SIGNING};

/// The Accept header a runtime sends: every manifest type.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

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

/// `portcullis keygen`: a P-256 key pair, private key PKCS#8 PEM (mode
/// 0600), public key SPKI PEM.
pub fn keygen(key: &Path, public: &Path) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let secret = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let private_pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("encoding the private key: {e}"))?;
    let public_pem = secret
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| format!("encoding the public key: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key)
        .map_err(|e| format!("cannot create {}: {e}", key.display()))?;
    file.write_all(private_pem.as_bytes())
        .map_err(|e| format!("writing {}: {e}", key.display()))?;
    std::fs::write(public, public_pem.as_bytes())
        .map_err(|e| format!("writing {}: {e}", public.display()))?;
    Ok(())
}

/// Options for reaching a registry from the command line.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    pub username: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
    pub ca_file: Option<std::path::PathBuf>,
}

fn registry_client(registry: &str, options: &RegistryOptions) -> Result<Upstream, String> {
    let scheme = if options.insecure { "http" } else { "https" };
    let auth = match (&options.username, &options.password_file) {
        (Some(username), Some(password_file)) => Some(AuthConfig {
            username: username.clone(),
            password_file: password_file.clone(),
        }),
        (None, None) => None,
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

/// `portcullis sign`: resolves `reference` at its registry and appends a
/// cosign-compatible signature to its `sha256-<hex>.sig` manifest, as
/// `cosign sign --key` does. Returns the signed digest.
pub async fn sign(
    reference: &str,
    key_path: &Path,
    annotations: &[(String, String)],
    options: &RegistryOptions,
) -> Result<Digest, String> {
    let image = ImageRef::parse(reference)?;
    let key_pem = std::fs::read_to_string(key_path)
        .map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&key_pem).map_err(|e| {
        format!(
            "{} is not a P-256 PKCS#8 private key: {e}",
            key_path.display()
        )
    })?;
    let registry = registry_client(&image.registry, options)?;
    let repo = image.repository.as_str();
    let (bytes, _) = get_manifest(&registry, repo, &image.reference.to_string(), ACCEPT_ALL)
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
    let optional = if annotations.is_empty() {
        "null".to_owned()
    } else {
        let map: BTreeMap<&str, &str> = annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        serde_json::to_string(&map).map_err(|e| e.to_string())?
    };
    let identity = serde_json::to_string(&image.canonical()).map_err(|e| e.to_string())?;
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":{identity}}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":{optional}}}"#
    );
    let signature: p256::ecdsa::Signature = key.sign(payload.as_bytes());
    let signature_b64 =
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
    let payload_digest = Digest::sha256_of(payload.as_bytes());

    let sig_tag = format!("{}.sig", digest.tag_form());
    let existing = get_manifest(
        &registry,
        repo,
        &sig_tag,
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
    )
    .await?;
    let mut layers = match existing {
        Some((bytes, _)) => {
            let m: SigManifest = serde_json::from_slice(&bytes)
                .map_err(|e| format!("existing {sig_tag} is not a signature manifest: {e}"))?;
            m.layers
        }
        None => Vec::new(),
    };
    let mut layer_annotations = BTreeMap::new();
    layer_annotations.insert(SIGNATURE_ANNOTATION.to_owned(), signature_b64);
    let layer = Descriptor {
        media_type: SIMPLE_SIGNING.to_owned(),
        size: payload.len() as u64,
        digest: payload_digest.to_string(),
        annotations: layer_annotations,
    };
    if layers
        .iter()
        .any(|l| l.digest == layer.digest && l.annotations == layer.annotations)
    {
        return Ok(digest);
    }
    layers.push(layer);
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let history = vec![r#"{"created":"0001-01-01T00:00:00Z"}"#; layers.len()].join(",");
    let config = format!(
        r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{history}],"os":"","rootfs":{{"type":"layers","diff_ids":{}}},"config":{{}}}}"#,
        serde_json::to_string(&diff_ids).map_err(|e| e.to_string())?
    );
    upload_blob(&registry, repo, Bytes::from(payload)).await?;
    let config_digest = upload_blob(&registry, repo, Bytes::from(config.clone())).await?;
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
    let path = format!("/v2/{repo}/manifests/{sig_tag}");
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
            "pushing {sig_tag}: registry answered {}",
            response.status()
        ));
    }
    Ok(digest)
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
    let bytes = Limited::new(response.into_body(), MAX_MANIFEST_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading {repo}:{reference}: {e}"))?
        .to_bytes();
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

/// `portcullis verify`: evaluates the policy for `reference` against the
/// live upstream. Returns the decision and its explanation.
pub async fn verify(config: &Config, reference: &str) -> Result<(Decision, String), String> {
    let image = ImageRef::parse(reference)?;
    let app = App::new(config).map_err(|e| e.to_string())?;
    let upstream_index = config
        .upstreams
        .iter()
        .position(|u| u.registry == image.registry)
        .ok_or_else(|| format!("no upstream is configured for registry {}", image.registry))?;
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
    let upstream = Arc::clone(&app.upstreams[upstream_index]);
    let fetched = manifest::fetch(&upstream, &route, &image.reference, &headers)
        .await
        .map_err(|e| e.to_string())?;
    let decision = app
        .verifier
        .explain(&app.upstreams, &route, &fetched)
        .await
        .map_err(|e| format!("cannot verify {reference}: {e}"))?;
    let name = format!("{}@{}", image.canonical(), fetched.digest);
    Ok((
        decision.clone(),
        explain(&decision, &name, &image.reference),
    ))
}

/// A decision in words, for people.
pub fn explain(decision: &Decision, image: &str, requested: &Reference) -> String {
    let mut out = String::new();
    let verdict = match decision.verdict {
        Verdict::Allow => "ALLOW",
        Verdict::Exempt => "ALLOW (exempt)",
        Verdict::Deny => "DENY",
        Verdict::DryRunDeny => "ALLOW (dry run: would deny)",
    };
    let _ = writeln!(out, "image:    {image}");
    if let Reference::Tag(tag) = requested {
        let _ = writeln!(out, "          (tag {tag} resolved at the registry)");
    }
    let _ = writeln!(
        out,
        "rule:     {} ({}, {})",
        decision.rule, decision.evaluation, decision.enforcement
    );
    let _ = writeln!(out, "verdict:  {verdict}");
    let _ = writeln!(
        out,
        "why:      {}",
        decision.message(&format!("image {image}"))
    );
    for a in &decision.attestors {
        let _ = writeln!(
            out,
            "attestor {}: {}",
            a.name,
            if a.satisfied {
                "satisfied"
            } else {
                "NOT satisfied"
            }
        );
        if a.evidence.is_empty() {
            let _ = writeln!(
                out,
                "  no signatures were found for this digest (looked for the cosign sha256-<hex>.sig tag)"
            );
        }
        for e in &a.evidence {
            let _ = writeln!(out, "  - {}: {}", e.source, e.check.describe());
        }
    }
    out
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
    fn keygen_writes_private_key_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        let public = dir.path().join("k.pub");
        keygen(&key, &public).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let pem = std::fs::read_to_string(&public).unwrap();
        assert!(crate::crypto::PublicKey::from_pem(
            &pem,
            crate::crypto::Algorithm::EcdsaP256Sha256
        )
        .is_ok());
        assert!(keygen(&key, &public).is_err(), "never overwrite a key");
    }
}
