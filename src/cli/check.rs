//! `portcullis check`: validates a configuration and its policy, and
//! prints their summary and the policy's warnings.

use std::path::Path;
use std::process::ExitCode;

/// Runs `portcullis check`.
pub fn run(config: Option<&Path>) -> ExitCode {
    match super::load(config) {
        Ok(config) => match config.compile_policy() {
            Ok(policy) => {
                print!(
                    "configuration is valid\n{}{}",
                    config.summary(),
                    policy.summary()
                );
                for warning in config.policy_warnings(&policy) {
                    eprintln!("warning: {warning}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
