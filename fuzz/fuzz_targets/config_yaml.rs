//! The YAML configuration and policy files: `Config::from_yaml` with its
//! validation, the `policyFile` document, and the policy compiled from it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portcullis::config::policy::parse_policy_file;
use portcullis::config::Config;
use portcullis::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // No file is read: paths are resolved against a directory that does
    // not exist, and nothing below `from_yaml` opens them.
    let _ = Config::from_yaml(text, Path::new("/nonexistent-fuzz-base"));
    if let Ok((doc, attestors)) = parse_policy_file(Path::new("policy.yaml"), text) {
        let _ = Policy::compile(&doc, &attestors);
    }
    let _ = portcullis::config::duration::parse(text);
    let _ = portcullis::config::size::parse(text);
});
