//! The audit trail as `portcullis policy replay --offline` reads it: JSON
//! lines, deduplicated, each record's recorded evidence turned back into
//! checks and decided under a candidate policy (one attestor with two
//! keys, an exempt pattern, a denied pattern).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;
use portcullis::policy::Policy;

const KEY1: &str = include_str!("../../tests/fixtures/containers-image/keys/cosign.pub");
const KEY2: &str = include_str!("../../tests/fixtures/containers-image/keys/cosign2.pub");

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let mut y = String::from(
            "listen: 127.0.0.1:0\n\
             upstreams:\n  - registry: r.test\n    url: http://127.0.0.1:9\n    default: true\n\
             policy:\n  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    \
             requireAttestationsBy: [builder]\n  repositoryAdmissionRules:\n    \
             \"r.test/sandbox/**\": {evaluationMode: ALWAYS_ALLOW}\n    \
             \"r.test/never/**\": {evaluationMode: ALWAYS_DENY}\n\
             attestors:\n  - name: builder\n    publicKeys:\n",
        );
        for (id, pem) in [("key1", KEY1), ("key2", KEY2)] {
            y.push_str(&format!(
                "      - id: {id}\n        pkixPublicKey:\n          signatureAlgorithm: ECDSA_P256_SHA256\n          publicKeyPem: |\n"
            ));
            for line in pem.lines() {
                y.push_str(&format!("            {line}\n"));
            }
        }
        let config = Config::from_yaml(&y, Path::new(".")).expect("the fuzz policy is valid");
        portcullis::app::compile_policy(&config).expect("the fuzz policy compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let (replayed, skipped, bad) = portcullis::cli::replay::fuzz_offline(data, policy());
    let lines = data.split(|&b| b == b'\n').count();
    assert!(replayed + skipped + bad <= lines);
});
