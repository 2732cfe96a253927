//! `portcullis sign`: a cosign-compatible signature (simple signing)
//! appended to an image's `sha256-<hex>.sig` manifest at its registry.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;

use super::registry::{
    append_layer, read_signing_key, resolve, sign_base64, ArtifactLayer, RegistryOptions,
};
use super::{Exit, Outcome};
use crate::oci::Digest;
use crate::verify::formats::simple_signing::cosign_payload;
use crate::verify::sources::cosign::{SIGNATURE_ANNOTATION, SIMPLE_SIGNING};

/// Runs `portcullis sign`.
pub fn run(
    reference: &str,
    key: &Path,
    annotations: &[(String, String)],
    options: &RegistryOptions,
) -> Outcome {
    let digest = super::block_on(sign(reference, key, annotations, options))?;
    println!("signed {reference} ({digest})");
    Ok(Exit::Ok)
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
