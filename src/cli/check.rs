//! `portcullis check`: validates a configuration and its policy, and
//! prints their summary and the policy's warnings.

use std::path::Path;

use super::{CliError, Exit, Outcome};
use crate::config::ConfigError;

/// Runs `portcullis check`: exit 1 when the configuration or its policy
/// is invalid (or, with `strict`, when anything in it is ignored or can
/// never apply), 2 when the file cannot be read.
pub fn run(config: Option<&Path>, strict: bool) -> Outcome {
    let prepared = super::load(config).map_err(|e| match e {
        ConfigError::Read { .. } => CliError::error(e.to_string()),
        _ => CliError::invalid(e.to_string()),
    })?;
    print!(
        "configuration is valid\n{}{}",
        prepared.config.summary(),
        crate::app::policy_summary(&prepared.policy)
    );
    let warnings = prepared.policy_warnings();
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    let ignored = &prepared.policy.ignored;
    if strict && !(warnings.is_empty() && ignored.is_empty()) {
        return Err(CliError::invalid(format!(
            "--strict: {} ignored field(s) and {} warning(s); see above",
            ignored.len(),
            warnings.len()
        )));
    }
    Ok(Exit::Ok)
}
