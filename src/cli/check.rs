//! `portcullis check`: validates a configuration and its policy, and
//! prints their summary and the policy's warnings.

use std::path::Path;

use super::{CliError, Exit, Outcome};
use crate::config::ConfigError;

/// Runs `portcullis check`: exit 1 when the configuration or its policy
/// is invalid, 2 when the file cannot be read.
pub fn run(config: Option<&Path>) -> Outcome {
    let prepared = super::load(config).map_err(|e| match e {
        ConfigError::Read { .. } => CliError::error(e.to_string()),
        _ => CliError::invalid(e.to_string()),
    })?;
    print!(
        "configuration is valid\n{}{}",
        prepared.config.summary(),
        crate::app::policy_summary(&prepared.policy)
    );
    for warning in prepared.policy_warnings() {
        eprintln!("warning: {warning}");
    }
    Ok(Exit::Ok)
}
