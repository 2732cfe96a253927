//! Simple-signing payloads (cosign's and containers/image's signed
//! claims), as interpreted once their signature verified, under every
//! `signedIdentity` rule; and the repository normalization they use.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::policy::SignedIdentity;
use portcullis::verify::formats::simple_signing::{
    check_payload, identity_matches, normalize_repository, Subject,
};

const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fuzz_target!(|data: &[u8]| {
    let identities = [
        SignedIdentity::MatchRepository,
        SignedIdentity::ExactRepository("docker.io/library/busybox".into()),
        SignedIdentity::RemapIdentity {
            prefix: "docker.io/library".into(),
            signed_prefix: "quay.io/mirror".into(),
        },
        SignedIdentity::Ignore,
    ];
    let subject = Subject {
        name: "docker.io/library/busybox",
        digest: DIGEST,
    };
    for identity in &identities {
        let _ = check_payload(data, &subject, identity, "key");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = normalize_repository(text);
        for identity in &identities {
            let _ = identity_matches(text, "docker.io/library/busybox", identity);
            let _ = identity_matches("docker.io/library/busybox:latest", text, identity);
        }
    }
});
