//! `portcullis verify`: the policy's decision for an image, evaluated
//! against the live upstream the way the proxy does, explained.

use super::explain::explain;
use super::image::resolve_upstream;
use crate::config::Config;
use crate::policy::Decision;

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
