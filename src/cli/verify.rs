//! `portcullis verify`: the policy's decision for an image, evaluated
//! against the live upstream the way the proxy does, explained; or, with
//! `--key` and no configuration, the image's cosign signatures checked
//! with one public key, as `cosign verify --key` does.

use std::path::Path;
use std::sync::Arc;

use super::explain::explain;
use super::image::{resolve_upstream, RepositoryRef};
use super::registry::{resolve, RegistryOptions};
use super::{CliError, Exit, Outcome};
use crate::app::Prepared;
use crate::config::{Limits, Timeouts};
use crate::crypto::PublicKey;
use crate::policy::{Attestor, AttestorKey, Check, Decision, SignedIdentity};
use crate::verify::budget::EvidenceLimits;
use crate::verify::formats::simple_signing::{self, likely_payloads, Subject};
use crate::verify::sources::cosign;

/// Runs `portcullis verify`: exit 0 when the image would be served, 1
/// when it would be denied, 2 when it could not be evaluated.
pub fn run(reference: &str, config: Option<&Path>) -> Outcome {
    let prepared = super::configuration(config)?;
    let (decision, text) = super::block_on(verify(prepared, reference))?;
    print!("{text}");
    Ok(if decision.serves() {
        Exit::Ok
    } else {
        Exit::Denied
    })
}

/// `portcullis verify`: evaluates the policy for `reference` against the
/// live upstream. Returns the decision and its explanation.
pub async fn verify(prepared: Prepared, reference: &str) -> Result<(Decision, String), String> {
    let resolved = resolve_upstream(prepared, reference).await?;
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

/// Largest public key file read (an RSA-4096 SPKI PEM is ~800 bytes).
const MAX_PUBLIC_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Runs `portcullis verify <ref> --key PUB`, as `cosign verify --key`
/// does without a transparency log: no configuration; the image resolved
/// at its registry; its `sha256-<hex>.sig` (in `COSIGN_REPOSITORY` when
/// set) checked with the key. Exit 0 when a signature verifies and binds
/// the image, 1 when none does, 2 when it could not be checked.
pub fn run_key(reference: &str, key: &Path, options: &RegistryOptions) -> Outcome {
    let cosign_repository = RepositoryRef::from_env().map_err(CliError::error)?;
    let public = read_public_key(key).map_err(CliError::error)?;
    let key_id = key
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| key.display().to_string());
    let key = AttestorKey {
        id: key_id,
        key: public,
    };
    let (verified, text) = super::block_on(verify_key(
        reference,
        key,
        options,
        cosign_repository.as_ref(),
    ))?;
    print!("{text}");
    Ok(if verified { Exit::Ok } else { Exit::Denied })
}

/// Reads a cosign public key (`cosign.pub`: SPKI PEM), bounded.
fn read_public_key(path: &Path) -> Result<PublicKey, String> {
    use std::io::Read as _;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_PUBLIC_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_PUBLIC_KEY_FILE_BYTES {
        return Err(format!(
            "{}: larger than {MAX_PUBLIC_KEY_FILE_BYTES} bytes; not a public key",
            path.display()
        ));
    }
    PublicKey::from_cosign_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `portcullis verify --key`: resolves `reference` at its registry and
/// checks every simple-signing signature stored for exactly that digest
/// with `key`, with the proxy's own code ([`cosign::signatures`] fetches,
/// bounded; [`simple_signing::check`] verifies the signature over the
/// payload bytes, then the payload's digest, type and repository).
/// Returns whether one verified, and the report.
pub async fn verify_key(
    reference: &str,
    key: AttestorKey,
    options: &RegistryOptions,
    cosign_repository: Option<&RepositoryRef>,
) -> Result<(bool, String), String> {
    let target = resolve(reference, options, cosign_repository).await?;
    let name = target.image.canonical();
    let digest = target.digest.to_string();
    let location = target.artifacts.location(&target.digest, "sig");
    let algorithm = key.key.algorithm().name();
    let attestor = Attestor {
        name: key.id.clone(),
        keys: vec![key],
        signature_repository: None,
        attestations: Vec::new(),
        keyless: None,
    };
    let timeouts = Timeouts::default();
    let budget = EvidenceLimits::new(&Limits::default()).budget();
    let likely = likely_payloads(&name, &digest);
    let repository = target.artifacts.name.repository.clone();
    let upstream = Arc::new(target.artifacts.registry);
    let found = tokio::time::timeout(
        timeouts.evidence,
        cosign::signatures(upstream, &budget, &repository, &target.digest, &likely),
    )
    .await
    .map_err(|_| {
        format!(
            "looking up {location}: timed out after {:?}",
            timeouts.evidence
        )
    })?
    .map_err(|e| format!("cannot verify {reference}: {e}"))?;
    let subject = Subject {
        name: &name,
        digest: &digest,
    };
    let checks: Vec<(String, Check)> = found
        .into_iter()
        .map(|(source, candidate)| {
            let check = match candidate {
                Ok(candidate) => simple_signing::check(
                    &candidate,
                    &attestor,
                    &subject,
                    &SignedIdentity::MatchRepository,
                ),
                Err(reason) => Check::Malformed { reason },
            };
            (source, check)
        })
        .collect();
    let verified = checks.iter().any(|(_, c)| matches!(c, Check::Valid { .. }));
    let mut out = format!(
        "{} {name}@{digest}\n  key: {} ({algorithm})\n  signatures: {location}\n",
        if verified { "VERIFIED" } else { "NOT VERIFIED" },
        attestor.name,
    );
    if checks.is_empty() {
        out.push_str("  no signature found\n");
    }
    for (source, check) in &checks {
        out.push_str(&format!("  {source}: {}\n", check.describe()));
    }
    out.push_str(
        "  transparency log: not checked (the key alone decides, as with \
         cosign verify --insecure-ignore-tlog)\n",
    );
    Ok((verified, out))
}
