//! The one-shot commands: `keygen`, `sign`, `attest` and `verify`.
//! `main.rs` parses the command line and calls these.

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
use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::oci::{validate_name, Algorithm, Digest, Reference};
use crate::policy::{Decision, Verdict};
use crate::routing::{Endpoint, Route};
use crate::serve::{manifest, App};
use crate::upstream::{Access, Upstream};
use crate::verify::cosign::{
    DSSE_ENVELOPE, MAX_ENVELOPE_BYTES, SIGNATURE_ANNOTATION, SIMPLE_SIGNING,
};
use crate::verify::dsse::{pae, IN_TOTO_PAYLOAD_TYPE};
use crate::verify::simple_signing::cosign_payload;

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

/// Options for reaching a registry from the command line (`--insecure`,
/// `--username`, `--password-file`, `--ca-file`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryOptions {
    /// Talk plain HTTP to the registry.
    #[arg(long)]
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

fn registry_client(registry: &str, options: &RegistryOptions) -> Result<Upstream, String> {
    let scheme = if options.insecure { "http" } else { "https" };
    let auth = match (&options.username, &options.password_file) {
        (Some(username), Some(password_file)) => Some(AuthConfig {
            username: username.clone(),
            password_file: password_file.clone(),
            token_realms: options.token_realms.clone(),
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

/// An image resolved at its registry: what `sign` and `attest` write next
/// to.
struct Target {
    image: ImageRef,
    registry: Upstream,
    /// The digest of the manifest the registry returned for the reference.
    digest: Digest,
}

/// Resolves `reference` at its registry (a tag to the digest of the
/// manifest it points at; a digest is checked against the bytes returned).
async fn resolve(reference: &str, options: &RegistryOptions) -> Result<Target, String> {
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
    Ok(Target {
        image,
        registry,
        digest,
    })
}

/// Reads a P-256 private key (PKCS#8 PEM, as `keygen` writes it).
fn read_signing_key(path: &Path) -> Result<p256::ecdsa::SigningKey, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    p256::ecdsa::SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| format!("{} is not a P-256 PKCS#8 private key: {e}", path.display()))
}

/// A P-256 signature over `message` (SHA-256, RFC 6979, so signing the same
/// message twice gives the same signature), ASN.1 DER, base64: what cosign
/// writes.
fn sign_base64(key: &p256::ecdsa::SigningKey, message: &[u8]) -> String {
    let signature: p256::ecdsa::Signature = key.sign(message);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
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
    let key = read_signing_key(key_path)?;
    let target = resolve(reference, options).await?;
    let optional = if annotations.is_empty() {
        "null".to_owned()
    } else {
        let map: BTreeMap<&str, &str> = annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        serde_json::to_string(&map).map_err(|e| e.to_string())?
    };
    let payload = cosign_payload(
        &target.image.canonical(),
        &target.digest.to_string(),
        &optional,
    );
    let layer = ArtifactLayer {
        media_type: SIMPLE_SIGNING,
        annotations: BTreeMap::from([(
            SIGNATURE_ANNOTATION.to_owned(),
            sign_base64(&key, payload.as_bytes()),
        )]),
        content: Bytes::from(payload),
    };
    append_layer(&target, "sig", layer).await?;
    Ok(target.digest)
}

/// cosign's `--type` shorthands and the predicate types they stand for
/// (`cosign attest --type`).
pub const PREDICATE_TYPE_SHORTHANDS: [(&str, &str); 10] = [
    ("custom", "https://cosign.sigstore.dev/attestation/v1"),
    ("slsaprovenance", "https://slsa.dev/provenance/v0.2"),
    ("slsaprovenance02", "https://slsa.dev/provenance/v0.2"),
    ("slsaprovenance1", "https://slsa.dev/provenance/v1"),
    ("spdx", "https://spdx.dev/Document"),
    ("spdxjson", "https://spdx.dev/Document"),
    ("cyclonedx", "https://cyclonedx.org/bom"),
    ("vuln", "https://cosign.sigstore.dev/attestation/vuln/v1"),
    ("openvex", "https://openvex.dev/ns"),
    ("link", "https://in-toto.io/Link/v1"),
];

/// The statement type `cosign attest` writes (in-toto Statement v0.1).
const STATEMENT_V01: &str = "https://in-toto.io/Statement/v0.1";

/// The predicate type `--type` names: a shorthand of
/// [`PREDICATE_TYPE_SHORTHANDS`], or a URI, taken as is (as cosign does).
pub fn predicate_type_uri(text: &str) -> Result<String, String> {
    if let Some((_, uri)) = PREDICATE_TYPE_SHORTHANDS.iter().find(|(s, _)| *s == text) {
        return Ok((*uri).to_owned());
    }
    // RFC 3986: scheme ":" hier-part, the scheme a letter then letters,
    // digits, "+", "-" or "."; no spaces anywhere.
    let is_uri = text.split_once(':').is_some_and(|(scheme, rest)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !rest.is_empty()
    }) && !text.chars().any(|c| c.is_whitespace() || c.is_control());
    if is_uri {
        return Ok(text.to_owned());
    }
    let shorthands: Vec<&str> = PREDICATE_TYPE_SHORTHANDS.iter().map(|(s, _)| *s).collect();
    Err(format!(
        "--type {text:?} is neither a predicate type URI (e.g. https://slsa.dev/provenance/v1) \
         nor one of cosign's shorthands: {}",
        shorthands.join(", ")
    ))
}

/// Reads a predicate: a file holding one JSON object.
fn read_predicate(path: &Path) -> Result<serde_json::Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("predicate {} is not valid JSON: {e}", path.display()))?;
    if !value.is_object() {
        let kind = match value {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::Object(_) => "an object",
        };
        return Err(format!(
            "predicate {} is {kind}; an in-toto predicate is a JSON object",
            path.display()
        ));
    }
    Ok(value)
}

#[derive(Serialize)]
struct Statement<'a> {
    #[serde(rename = "_type")]
    statement_type: &'a str,
    #[serde(rename = "predicateType")]
    predicate_type: &'a str,
    subject: [StatementSubject<'a>; 1],
    predicate: &'a serde_json::Value,
}

#[derive(Serialize)]
struct StatementSubject<'a> {
    name: &'a str,
    digest: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "payloadType")]
    payload_type: &'a str,
    payload: String,
    signatures: [EnvelopeSignature; 1],
}

#[derive(Serialize)]
struct EnvelopeSignature {
    keyid: &'static str,
    sig: String,
}

/// `portcullis attest`: resolves `reference` at its registry, signs an
/// in-toto statement about its digest carrying the predicate in
/// `predicate_path` (a DSSE envelope over PAE), and appends it to the
/// image's `sha256-<hex>.att` manifest, as `cosign attest --key` does.
/// `predicate_type` is a URI or a cosign shorthand
/// ([`predicate_type_uri`]). Returns the attested digest.
pub async fn attest(
    reference: &str,
    key_path: &Path,
    predicate_path: &Path,
    predicate_type: &str,
    options: &RegistryOptions,
) -> Result<Digest, String> {
    let predicate_type = predicate_type_uri(predicate_type)?;
    let key = read_signing_key(key_path)?;
    let predicate = read_predicate(predicate_path)?;
    let target = resolve(reference, options).await?;
    if target.digest.algorithm() != Algorithm::Sha256 {
        return Err(format!(
            "{reference}: an attestation names its image by sha256 digest; \
             give a tag or the sha256 digest instead of {}",
            target.digest
        ));
    }
    let name = target.image.canonical();
    let statement = Statement {
        statement_type: STATEMENT_V01,
        predicate_type: &predicate_type,
        subject: [StatementSubject {
            name: &name,
            digest: BTreeMap::from([("sha256", target.digest.hex())]),
        }],
        predicate: &predicate,
    };
    let payload = serde_json::to_vec(&statement).map_err(|e| e.to_string())?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let envelope = Envelope {
        payload_type: IN_TOTO_PAYLOAD_TYPE,
        payload: b64.encode(&payload),
        signatures: [EnvelopeSignature {
            keyid: "",
            sig: sign_base64(&key, &pae(IN_TOTO_PAYLOAD_TYPE, &payload)),
        }],
    };
    let envelope = serde_json::to_vec(&envelope).map_err(|e| e.to_string())?;
    if envelope.len() > MAX_ENVELOPE_BYTES {
        return Err(format!(
            "the attestation would be {} bytes; Portcullis reads envelopes of up to {MAX_ENVELOPE_BYTES} bytes",
            envelope.len()
        ));
    }
    let layer = ArtifactLayer {
        media_type: DSSE_ENVELOPE,
        content: Bytes::from(envelope),
        annotations: BTreeMap::from([
            (SIGNATURE_ANNOTATION.to_owned(), String::new()),
            ("predicateType".to_owned(), predicate_type),
        ]),
    };
    append_layer(&target, "att", layer).await?;
    Ok(target.digest)
}

/// A layer for a cosign artifact manifest: its blob and how to describe it.
struct ArtifactLayer {
    media_type: &'static str,
    content: Bytes,
    annotations: BTreeMap<String, String>,
}

/// What an existing `.sig` / `.att` manifest may be stored as.
const ARTIFACT_ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Appends `layer` to the `sha256-<hex>.<suffix>` manifest of `target`
/// (`sig` for signatures, `att` for attestations), as cosign does: existing
/// layers are kept, a layer already there (same content and annotations) is
/// not added twice, and the config lists one `diff_id` per layer.
async fn append_layer(target: &Target, suffix: &str, layer: ArtifactLayer) -> Result<(), String> {
    let registry = &target.registry;
    let repo = target.image.repository.as_str();
    let tag = format!("{}.{suffix}", target.digest.tag_form());
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
        return Ok(());
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
            "pushing {repo}:{tag}: registry answered {}",
            response.status()
        ));
    }
    Ok(())
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
    let resolved = resolve_upstream(config, reference).await?;
    let decision = resolved
        .app
        .verifier
        .explain(&resolved.route, &resolved.manifest)
        .await
        .map_err(|e| format!("cannot verify {reference}: {e}"))?;
    let name = resolved.name();
    Ok((
        decision.clone(),
        explain(&decision, &name, &resolved.image.reference),
    ))
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
pub async fn resolve_upstream(config: &Config, reference: &str) -> Result<Resolved, String> {
    let image = ImageRef::parse(reference)?;
    let app = crate::app::build_quiet(config).map_err(|e| e.to_string())?;
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
                "  no evidence was found for this digest (looked in the cosign sha256-<hex>.{} tag, \
                 the referrers and the attestation store)",
                if a.wants_attestation { "att" } else { "sig" }
            );
        }
        for e in &a.evidence {
            let _ = write!(out, "  - [{}] {}", e.kind, e.source);
            if let Some(p) = &e.predicate_type {
                let _ = write!(out, " (predicate {p})");
            }
            let _ = writeln!(out, ": {}", e.check.describe());
            if let Some(note) = &e.note {
                let _ = writeln!(out, "    {note}");
            }
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
    fn predicate_types_are_cosign_shorthands_or_uris() {
        assert_eq!(
            predicate_type_uri("custom").unwrap(),
            "https://cosign.sigstore.dev/attestation/v1"
        );
        assert_eq!(
            predicate_type_uri("slsaprovenance").unwrap(),
            "https://slsa.dev/provenance/v0.2"
        );
        assert_eq!(
            predicate_type_uri("slsaprovenance1").unwrap(),
            "https://slsa.dev/provenance/v1"
        );
        assert_eq!(
            predicate_type_uri("spdxjson").unwrap(),
            "https://spdx.dev/Document"
        );
        assert_eq!(
            predicate_type_uri("https://example.com/p/v1").unwrap(),
            "https://example.com/p/v1"
        );
        assert_eq!(
            predicate_type_uri("urn:example:predicate").unwrap(),
            "urn:example:predicate"
        );
        for bad in [
            "",
            "slsa",
            "SLSAProvenance1",
            "1http://x",
            "https:",
            "a b:c",
        ] {
            let e = predicate_type_uri(bad).unwrap_err();
            assert!(e.contains("slsaprovenance1"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn predicates_must_be_json_objects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, "{\"builder\": {\"id\": \"ci\"}}\n").unwrap();
        assert_eq!(read_predicate(&path).unwrap()["builder"]["id"], "ci");
        std::fs::write(&path, "{\"builder\": ").unwrap();
        let e = read_predicate(&path).unwrap_err();
        assert!(
            e.contains("is not valid JSON") && e.contains("line 1"),
            "{e}"
        );
        std::fs::write(&path, "[1]").unwrap();
        let e = read_predicate(&path).unwrap_err();
        assert!(e.contains("is an array"), "{e}");
        let e = read_predicate(&dir.path().join("missing.json")).unwrap_err();
        assert!(e.starts_with("cannot read"), "{e}");
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
