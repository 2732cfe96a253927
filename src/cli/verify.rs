//! `portcullis verify`: the policy's decision for an image, evaluated
//! against the live upstream the way the proxy does, explained.

use std::path::Path;

use super::explain::explain;
use super::image::resolve_upstream;
use super::{Exit, Outcome};
use crate::app::Prepared;
use crate::policy::Decision;

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
