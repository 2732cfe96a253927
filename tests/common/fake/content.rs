//! What the fake serves: the in-memory store, the images tests put in it,
//! and the digest, manifest and pseudo-random byte helpers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;

use bytes::Bytes;

use super::{lock, Fake};
use crate::common::content::RandomReader;

// The media types and the digest are the ones the image builder uses.
pub use crate::common::content::{
    sha256_digest, OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR as OCI_LAYER, OCI_MANIFEST,
};

pub const OCI_EMPTY_INDEX: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;

/// A manifest as stored: its bytes and the media type it is served as.
#[derive(Clone)]
pub(super) struct StoredManifest {
    pub(super) media_type: String,
    pub(super) bytes: Bytes,
}

/// Everything the fake holds, by repository.
#[derive(Default)]
pub(super) struct Store {
    /// (repo, tag or digest) → manifest
    pub(super) manifests: HashMap<(String, String), StoredManifest>,
    /// (repo, digest) → bytes
    pub(super) blobs: HashMap<(String, String), Bytes>,
    /// repo → tags
    pub(super) tags: BTreeMap<String, BTreeSet<String>>,
    /// (repo, subject digest) → referrers index bytes
    pub(super) referrers: HashMap<(String, String), Bytes>,
}

/// A simple image stored in the fake: config blob, one layer, a manifest.
#[derive(Clone, Debug)]
pub struct FakeImage {
    pub repo: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layer: Vec<u8>,
    pub layer_digest: String,
}

/// Deterministic pseudo-random bytes (xorshift), for blob content: the
/// image builder's [`RandomReader`] stream, held in memory.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    RandomReader::new(seed, len as u64)
        .read_to_end(&mut out)
        .expect("read pseudo-random bytes");
    out
}

/// An OCI image manifest referencing `config` and `layers` (digest, size).
pub fn image_manifest(config: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, s)| serde_json::json!({"mediaType": OCI_LAYER, "digest": d, "size": s}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.0, "size": config.1},
        "layers": layers,
    }))
    .expect("serialize manifest")
}

/// Filling the store.
impl Fake {
    /// Stores a blob in `repo`; returns its digest.
    pub fn put_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        lock(&self.shared.store).blobs.insert(
            (repo.to_string(), digest.clone()),
            Bytes::copy_from_slice(bytes),
        );
        digest
    }

    /// Stores a manifest under its digest and, if given, a tag; returns the
    /// digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let digest = sha256_digest(bytes);
        let m = StoredManifest {
            media_type: media_type.to_string(),
            bytes: Bytes::copy_from_slice(bytes),
        };
        let mut store = lock(&self.shared.store);
        store
            .manifests
            .insert((repo.to_string(), digest.clone()), m.clone());
        if let Some(tag) = tag {
            store
                .manifests
                .insert((repo.to_string(), tag.to_string()), m);
            store
                .tags
                .entry(repo.to_string())
                .or_default()
                .insert(tag.to_string());
        }
        digest
    }

    /// Adds tags to the tag list of `repo` without manifests behind them.
    pub fn put_tags(&self, repo: &str, tags: &[&str]) {
        let mut store = lock(&self.shared.store);
        let set = store.tags.entry(repo.to_string()).or_default();
        for t in tags {
            set.insert(t.to_string());
        }
    }

    /// Sets what the referrers API answers for `subject` in `repo`.
    pub fn put_referrers(&self, repo: &str, subject: &str, index: &[u8]) {
        lock(&self.shared.store).referrers.insert(
            (repo.to_string(), subject.to_string()),
            Bytes::copy_from_slice(index),
        );
    }

    /// Stores a small image (config, one layer of `layer_len` pseudo-random
    /// bytes, an OCI manifest) in `repo` under `tag`.
    pub fn put_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        seed: u64,
        layer_len: usize,
    ) -> FakeImage {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"seed":{seed}}}"#
        )
        .into_bytes();
        let layer = pseudo_random(seed, layer_len);
        let config_digest = self.put_blob(repo, &config);
        let layer_digest = self.put_blob(repo, &layer);
        let manifest = image_manifest(
            (&config_digest, config.len()),
            &[(&layer_digest, layer.len())],
        );
        let manifest_digest = self.put_manifest(repo, tag, OCI_MANIFEST, &manifest);
        FakeImage {
            repo: repo.to_string(),
            manifest,
            manifest_digest,
            config,
            config_digest,
            layer,
            layer_digest,
        }
    }
}
