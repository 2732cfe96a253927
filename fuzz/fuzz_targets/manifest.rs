//! Manifests, indexes and artifacts as an upstream serves them: the one
//! reading ([`portcullis::oci::manifest::read`], with the unambiguous-JSON
//! rules of `oci::json`) under every content type, and how an artifact's
//! layers and config are judged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::oci::json::Strict;
use portcullis::oci::manifest::{self, Kind};
use portcullis::oci::{Digest, Reference};
use portcullis::routing::{Endpoint, Route};
use portcullis::verify::{config_is_inert, content_is, relation};

const CONTENT_TYPES: &[&str] = &[
    "",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
    "text/plain",
];

const EVIDENCE_TYPES: &[&str] = &[
    "application/vnd.dev.cosign.simplesigning.v1+json",
    "application/vnd.dsse.envelope.v1+json",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.in-toto+json",
];

fuzz_target!(|data: &[u8]| {
    // A first byte picks the content type; the rest is the body.
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(pick) % CONTENT_TYPES.len()];
    let strict = Strict::parse(bytes);
    for ct in [
        content_type,
        "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
    ] {
        if let Ok(reading) = manifest::read(bytes, ct) {
            // A reading exists only for a document with no colliding keys.
            assert!(strict.is_ok(), "read() accepted what Strict refuses");
            let _ = reading.kind.name();
            if reading.kind == Kind::Index {
                assert!(reading.layers.is_empty() && reading.config.is_none());
            }
            let digest = Digest::sha256_of(bytes);
            for endpoint in [
                Endpoint::Manifest(Reference::Digest(digest.clone())),
                Endpoint::Manifest(Reference::Tag(format!("sha256-{}.sig", "a".repeat(64)))),
                Endpoint::Manifest(Reference::Tag(format!("{}.att", digest.tag_form()))),
            ] {
                let route = Route {
                    endpoint,
                    upstream: 0,
                    registry: "docker.io".into(),
                    repository: "library/x".into(),
                    client_name: "x".into(),
                    ns: None,
                };
                if let Ok(Some(subject)) = relation(&route, &digest, &reading) {
                    assert_ne!(subject, digest, "a manifest cannot be its own subject");
                }
            }
        }
    }
    let _ = config_is_inert(bytes);
    let _ = content_is(
        EVIDENCE_TYPES[usize::from(pick) % EVIDENCE_TYPES.len()],
        bytes,
    );
});
