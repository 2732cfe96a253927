//! `portcullis sign`: a cosign-compatible signature (simple signing)
//! appended to an image's `sha256-<hex>.sig` manifest at its registry, or
//! in `COSIGN_REPOSITORY` when that is set.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;

use super::image::RepositoryRef;
use super::registry::{append_layer, resolve, sign_base64, ArtifactLayer, RegistryOptions};
use super::signing_key::read_signing_key;
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
    let cosign_repository = RepositoryRef::from_env().map_err(super::CliError::error)?;
    let (digest, location) = super::block_on(sign(
        reference,
        key,
        annotations,
        options,
        cosign_repository.as_ref(),
    ))?;
    println!("signed {reference} ({digest})");
    println!("signature: {location}");
    Ok(Exit::Ok)
}

/// `portcullis sign`: resolves `reference` at its registry and appends a
/// cosign-compatible signature to its `sha256-<hex>.sig` manifest (in
/// `cosign_repository` when given), as `cosign sign --key` does. The key
/// is read (and decrypted) before the registry is contacted. Returns the
/// signed digest and where the signature is.
pub async fn sign(
    reference: &str,
    key_path: &Path,
    annotations: &[(String, String)],
    options: &RegistryOptions,
    cosign_repository: Option<&RepositoryRef>,
) -> Result<(Digest, String), String> {
    let key = read_signing_key(key_path)?;
    let target = resolve(reference, options, cosign_repository).await?;
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
    let location = append_layer(&target, "sig", layer).await?;
    Ok((target.digest, location))
}
