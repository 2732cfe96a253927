//! What a manifest is, decided once from its bytes and its `Content-Type`,
//! the way container runtimes decide it (containers/image's
//! `ValidateUnambiguousManifestFormat` is the model):
//!
//! - the bytes are read with [`Strict`]: colliding keys anywhere are
//!   refused, and fields are found case-insensitively, as Go finds them;
//! - the kind comes from the `Content-Type` when it names a manifest
//!   type, else from the `mediaType` field, else from the fields present;
//!   a `mediaType` field that names another type than the `Content-Type`
//!   is refused;
//! - the kinds are mutually exclusive: an image manifest has `config` and
//!   `layers` and no `manifests`, `fsLayers` or `history`; an index has
//!   `manifests` and none of the others; a schema 1 manifest has
//!   `fsLayers` and no `config`, `layers` or `manifests`. A field counts as
//!   present whatever its value (`"config": null` included).
//!
//! Signature and attestation artifacts are image manifests; whether one
//! is *evidence* is decided by the verifier from how it was reached, never
//! from the manifest's own labels.

use bytes::Bytes;
use http::HeaderValue;

use super::json::{Ambiguous, Strict};
use super::{media, Digest};

/// Docker schema 1 media types (signed and unsigned).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The three shapes a manifest can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image manifest (OCI or Docker schema 2): config and layers.
    Image,
    /// An image index or Docker manifest list: child manifests.
    Index,
    /// Docker schema 1: layers as `fsLayers`, no config.
    Schema1,
}

impl Kind {
    fn of_media_type(media_type: &str) -> Option<Kind> {
        match media_type {
            media::OCI_MANIFEST | media::DOCKER_MANIFEST => Some(Kind::Image),
            media::OCI_INDEX | media::DOCKER_LIST => Some(Kind::Index),
            DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => Some(Kind::Schema1),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Image => "image manifest",
            Kind::Index => "image index",
            Kind::Schema1 => "schema 1 manifest",
        }
    }
}

/// A content descriptor as a runtime reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// The one reading of a manifest.
#[derive(Debug, Clone)]
pub struct Reading {
    pub kind: Kind,
    /// Image manifests: the config descriptor.
    pub config: Option<Descriptor>,
    /// Image manifests: layers; schema 1: the `fsLayers` blobs.
    pub layers: Vec<Descriptor>,
    /// Indexes: the child manifests.
    pub children: Vec<Descriptor>,
    /// OCI 1.1 `subject`: the manifest this one refers to.
    pub subject: Option<Descriptor>,
}

/// Why a manifest has no single reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("ambiguous manifest: {0}")]
    Ambiguous(#[from] Ambiguous),
    #[error("ambiguous manifest: {0}")]
    Conflict(String),
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

/// Largest manifest accepted from an upstream (the distribution spec's
/// recommended limit; registries reject larger pushes too).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A manifest's bytes exactly as an upstream sent them, with their digest
/// and media type. The digest is computed here, from the bytes, so a
/// `Manifest` cannot carry a digest its bytes do not have; the fields are
/// private so nothing can change one part without the other.
#[derive(Debug, Clone)]
pub struct Manifest {
    bytes: Bytes,
    digest: Digest,
    media_type: HeaderValue,
    /// `Docker-Content-Digest` and `ETag`, made once with the manifest
    /// (it is served many times from the cache).
    digest_header: Option<HeaderValue>,
    etag: Option<HeaderValue>,
    /// Why these bytes came from the content store instead of the
    /// upstream (it could not be reached); `None` for a live answer.
    offline: Option<std::sync::Arc<str>>,
}

/// The bytes of a manifest requested by digest hash to another digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("content for {requested} has digest {actual}")]
pub struct DigestMismatch {
    pub requested: Digest,
    pub actual: Digest,
}

impl Manifest {
    /// A manifest fetched by tag: its digest is the SHA-256 of `bytes`.
    pub fn new(bytes: Bytes, media_type: HeaderValue) -> Manifest {
        let digest = Digest::sha256_of(&bytes);
        Manifest::with_digest(bytes, digest, media_type)
    }

    /// A manifest fetched by `requested` digest: its bytes must hash to it
    /// (with the digest's own algorithm).
    pub fn by_digest(
        bytes: Bytes,
        requested: &Digest,
        media_type: HeaderValue,
    ) -> Result<Manifest, DigestMismatch> {
        let actual = requested.same_algorithm_of(&bytes);
        if &actual != requested {
            return Err(DigestMismatch {
                requested: requested.clone(),
                actual,
            });
        }
        Ok(Manifest::with_digest(bytes, actual, media_type))
    }

    fn with_digest(bytes: Bytes, digest: Digest, media_type: HeaderValue) -> Manifest {
        let digest_header = HeaderValue::from_str(&digest.to_string()).ok();
        let etag = digest_header
            .as_ref()
            .and_then(|_| HeaderValue::from_str(&format!("\"{digest}\"")).ok());
        Manifest {
            bytes,
            digest,
            media_type,
            digest_header,
            etag,
            offline: None,
        }
    }

    /// The same manifest, noted as answered from the content store
    /// because the upstream could not be reached (`why`).
    pub fn answered_offline(mut self, why: Option<std::sync::Arc<str>>) -> Manifest {
        self.offline = why;
        self
    }

    /// Why the manifest came from the content store, if it did.
    pub fn offline(&self) -> Option<&std::sync::Arc<str>> {
        self.offline.as_ref()
    }

    /// The bytes, as received.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The digest of [`Manifest::bytes`].
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The `Content-Type` it was served with (or its `mediaType` field).
    pub fn media_type(&self) -> &HeaderValue {
        &self.media_type
    }

    /// `Docker-Content-Digest` as a header value.
    pub fn digest_header(&self) -> Option<&HeaderValue> {
        self.digest_header.as_ref()
    }

    /// `ETag` as a header value (the quoted digest).
    pub fn etag(&self) -> Option<&HeaderValue> {
        self.etag.as_ref()
    }

    /// The one reading of this manifest ([`read`]).
    pub fn read(&self) -> Result<Reading, Unreadable> {
        read(&self.bytes, self.media_type.to_str().unwrap_or(""))
    }
}

/// A media type without parameters, lowercased.
pub fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Reads `bytes`, served with `content_type`.
pub fn read(bytes: &[u8], content_type: &str) -> Result<Reading, Unreadable> {
    let doc = Strict::parse(bytes)?;
    if !doc.is_object() {
        return Err(Unreadable::Invalid("not a JSON object".into()));
    }
    let declared = match doc.get("mediaType") {
        None | Some(Strict::Null) => None,
        Some(Strict::String(s)) => Some(essence(s)),
        Some(_) => return Err(Unreadable::Invalid("mediaType is not a string".into())),
    };
    let served = essence(content_type);
    let kind = match (Kind::of_media_type(&served), declared.as_deref()) {
        (Some(kind), Some(field)) if !field.is_empty() && field != served => {
            return Err(Unreadable::Conflict(format!(
                "served as {served} but its mediaType is {field} ({})",
                kind.name()
            )))
        }
        (Some(kind), _) => kind,
        (None, Some(field)) if !field.is_empty() => Kind::of_media_type(field)
            .ok_or_else(|| Unreadable::Invalid(format!("unsupported media type {field}")))?,
        (None, _) => guess(&doc)?,
    };
    let present = |field: &str| doc.has(field);
    let forbidden: &[&str] = match kind {
        Kind::Image => &["manifests", "fsLayers", "history"],
        Kind::Index => &["config", "layers", "fsLayers", "history"],
        Kind::Schema1 => &["config", "layers", "manifests"],
    };
    let clashing: Vec<&str> = forbidden.iter().copied().filter(|f| present(f)).collect();
    if !clashing.is_empty() {
        return Err(Unreadable::Conflict(format!(
            "an {} must not have {}",
            kind.name(),
            clashing.join(", ")
        )));
    }
    let subject = match doc.get("subject") {
        None | Some(Strict::Null) => None,
        Some(d) => Some(descriptor(d, "subject")?),
    };
    let mut reading = Reading {
        kind,
        config: None,
        layers: Vec::new(),
        children: Vec::new(),
        subject,
    };
    match kind {
        Kind::Image => {
            // A manifest without a config is no runnable image; it is
            // still verified like any other (and evidence needs one).
            reading.config = match doc.get("config") {
                None | Some(Strict::Null) => None,
                Some(config) => Some(descriptor(config, "config")?),
            };
            reading.layers = descriptors(doc.get("layers"), "layers")?;
        }
        Kind::Index => reading.children = descriptors(doc.get("manifests"), "manifests")?,
        Kind::Schema1 => {
            let Some(layers) = doc.get("fsLayers").and_then(Strict::as_array) else {
                return Err(Unreadable::Invalid(
                    "schema 1 manifest without fsLayers".into(),
                ));
            };
            for layer in layers {
                let digest = layer
                    .get("blobSum")
                    .and_then(Strict::as_str)
                    .and_then(|d| d.parse::<Digest>().ok())
                    .ok_or_else(|| {
                        Unreadable::Invalid("fsLayers entry without a valid blobSum".into())
                    })?;
                reading.layers.push(Descriptor {
                    media_type: String::new(),
                    digest,
                    size: 0,
                });
            }
        }
    }
    Ok(reading)
}

/// The kind of a manifest whose type neither the `Content-Type` nor the
/// `mediaType` field says, from its fields (as containers/image guesses).
fn guess(doc: &Strict) -> Result<Kind, Unreadable> {
    if doc.get("schemaVersion").and_then(Strict::as_u64) == Some(1) {
        return Ok(Kind::Schema1);
    }
    match (doc.has("manifests"), doc.has("config")) {
        (true, false) => Ok(Kind::Index),
        (false, true) => Ok(Kind::Image),
        (true, true) => Err(Unreadable::Conflict("has both manifests and config".into())),
        (false, false) => Err(Unreadable::Invalid(
            "neither its Content-Type, its mediaType nor its fields say what it is".into(),
        )),
    }
}

fn descriptors(value: Option<&Strict>, field: &str) -> Result<Vec<Descriptor>, Unreadable> {
    match value {
        None | Some(Strict::Null) => Ok(Vec::new()),
        Some(Strict::Array(items)) => items.iter().map(|d| descriptor(d, field)).collect(),
        Some(_) => Err(Unreadable::Invalid(format!("{field} is not a list"))),
    }
}

fn descriptor(value: &Strict, field: &str) -> Result<Descriptor, Unreadable> {
    if !value.is_object() {
        return Err(Unreadable::Invalid(format!("{field}: not a descriptor")));
    }
    let digest = value
        .get("digest")
        .and_then(Strict::as_str)
        .ok_or_else(|| Unreadable::Invalid(format!("{field}: descriptor without a digest")))?;
    let digest = digest
        .parse::<Digest>()
        .map_err(|_| Unreadable::Invalid(format!("{field}: invalid digest {digest:?}")))?;
    let size = match value.get("size") {
        None | Some(Strict::Null) => 0,
        Some(s) => s
            .as_u64()
            .ok_or_else(|| Unreadable::Invalid(format!("{field}: invalid size")))?,
    };
    let media_type = match value.get("mediaType") {
        None | Some(Strict::Null) => String::new(),
        Some(Strict::String(s)) => s.clone(),
        Some(_) => {
            return Err(Unreadable::Invalid(format!(
                "{field}: mediaType is not a string"
            )))
        }
    };
    Ok(Descriptor {
        media_type,
        digest,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":3}}]{extra}}}"#,
            media::OCI_MANIFEST
        )
    }

    #[test]
    fn an_image_manifest_reads_as_one() {
        let r = read(image("").as_bytes(), media::OCI_MANIFEST).expect("reads");
        assert_eq!(r.kind, Kind::Image);
        assert_eq!(r.config.expect("config").digest.to_string(), D1);
        assert_eq!(r.layers.len(), 1);
        assert!(r.children.is_empty());
    }

    #[test]
    fn an_index_reads_as_one_whatever_the_case_of_its_keys() {
        let bytes = format!(
            r#"{{"schemaVersion":2,"Manifests":[{{"mediaType":"{}","Digest":"{D1}","size":5}}]}}"#,
            media::OCI_MANIFEST
        );
        let r = read(bytes.as_bytes(), media::OCI_INDEX).expect("reads");
        assert_eq!(r.kind, Kind::Index);
        assert_eq!(r.children[0].digest.to_string(), D1);
    }

    #[test]
    fn a_manifest_that_is_both_artifact_and_index_is_refused() {
        // What distribution 2.8 accepts: Go reads "Config"/"Layers" as the
        // image fields, and the index's manifests beside them.
        let bytes = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","Config":null,"Layers":null,"manifests":[{{"mediaType":"{}","digest":"{D1}","size":5}}]}}"#,
            media::OCI_INDEX,
            media::OCI_MANIFEST
        );
        for ct in [
            media::OCI_INDEX,
            media::OCI_MANIFEST,
            "application/json",
            "",
        ] {
            let err = read(bytes.as_bytes(), ct).expect_err(ct);
            assert!(
                err.to_string().starts_with("ambiguous manifest"),
                "{ct}: {err}"
            );
        }
        let image_with_children = image(&format!(r#","manifests":[{{"digest":"{D1}"}}]"#));
        assert!(read(image_with_children.as_bytes(), media::OCI_MANIFEST).is_err());
    }

    #[test]
    fn the_media_type_field_must_agree_with_the_content_type() {
        let err = read(image("").as_bytes(), media::OCI_INDEX).expect_err("disagrees");
        assert!(matches!(err, Unreadable::Conflict(_)), "{err}");
        // No usable Content-Type: the field decides.
        assert_eq!(
            read(image("").as_bytes(), "application/octet-stream")
                .expect("reads")
                .kind,
            Kind::Image
        );
        // Parameters and case do not matter.
        let ct = "Application/VND.OCI.image.manifest.v1+json; charset=utf-8";
        assert_eq!(
            read(image("").as_bytes(), ct).expect("reads").kind,
            Kind::Image
        );
    }

    #[test]
    fn colliding_keys_are_refused() {
        let doubled = image(&format!(r#","LAYERS":[{{"digest":"{D1}"}}]"#));
        let err = read(doubled.as_bytes(), media::OCI_MANIFEST).expect_err("collides");
        assert!(
            matches!(err, Unreadable::Ambiguous(Ambiguous::Collision { .. })),
            "{err}"
        );
    }

    #[test]
    fn schema1_blobs_are_its_fs_layers() {
        let bytes = format!(
            r#"{{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[{{"blobSum":"{D2}"}}],"history":[]}}"#
        );
        let r = read(bytes.as_bytes(), DOCKER_SCHEMA1_SIGNED).expect("reads");
        assert_eq!(r.kind, Kind::Schema1);
        assert_eq!(r.layers[0].digest.to_string(), D2);
    }

    #[test]
    fn subjects_are_read() {
        let with_subject = image(&format!(
            r#","subject":{{"mediaType":"{}","digest":"{D2}","size":9}}"#,
            media::OCI_MANIFEST
        ));
        let r = read(with_subject.as_bytes(), media::OCI_MANIFEST).expect("reads");
        assert_eq!(r.subject.expect("subject").digest.to_string(), D2);
    }
}
