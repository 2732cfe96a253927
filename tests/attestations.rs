//! SLSA provenance attestations (cosign `.att`, DSSE over in-toto) signed by
//! an independent implementation (OpenSSL signs the DSSE PAE), stored in a
//! real registry, enforced by the "built by our CI" rule through the proxy.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use common::clients::run;
use common::content::{self, sha256_digest};
use common::registry::Registry;
use common::trust::{self, KeyPair, MANIFEST_ACCEPT};
use common::Proxy;

const BUILDER: &str = "https://ci.example.com/builder@v1";
const SLSA_V1: &str = "https://slsa.dev/provenance/v1";

/// A SLSA v1 statement about `digest`, built by `builder` from `source`.
fn statement(digest: &str, builder: &str, source: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "app", "digest": {"sha256": digest.trim_start_matches("sha256:")}}],
        "predicateType": SLSA_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": "https://ci.example.com/build/v1",
                "externalParameters": {"source": source},
            },
            "runDetails": {"builder": {"id": builder}},
        },
    }))
    .unwrap()
}

/// A DSSE envelope over `payload`, signed with OpenSSL (not Portcullis).
fn openssl_envelope(dir: &Path, key: &KeyPair, payload: &[u8]) -> Vec<u8> {
    let payload_type = "application/vnd.in-toto+json";
    let mut pae = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    pae.extend_from_slice(payload);
    let pae_file = dir.join("pae.bin");
    let sig_file = dir.join("pae.sig");
    std::fs::write(&pae_file, &pae).unwrap();
    run(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&key.key)
            .arg("-out")
            .arg(&sig_file)
            .arg(&pae_file),
        "openssl dgst -sign",
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::to_vec(&serde_json::json!({
        "payloadType": payload_type,
        "payload": b64.encode(payload),
        "signatures": [{"keyid": "", "sig": b64.encode(std::fs::read(&sig_file).unwrap())}],
    }))
    .unwrap()
}

/// Stores `envelope` as cosign does: `sha256-<hex>.att`, one DSSE layer.
fn push_attestation(registry: &Registry, repo: &str, digest: &str, envelope: &[u8]) {
    let layer = content::push_blob(&registry.url(), repo, envelope);
    let config = format!(
        r#"{{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{{"created":"0001-01-01T00:00:00Z"}}],"os":"","rootfs":{{"type":"layers","diff_ids":["{}"]}},"config":{{}}}}"#,
        layer.digest
    );
    let config_blob = content::push_blob(&registry.url(), repo, config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_blob.digest},
        "layers": [{
            "mediaType": "application/vnd.dsse.envelope.v1+json",
            "size": envelope.len(),
            "digest": layer.digest,
            "annotations": {"dev.cosignproject.cosign/signature": "", "predicateType": SLSA_V1},
        }],
    });
    content::push_manifest(
        &registry.url(),
        repo,
        &format!("{}.att", digest.replace(':', "-")),
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
}

fn config(registry: &Registry, key: &KeyPair) -> String {
    let mut pem = String::new();
    for line in key.pem.lines() {
        pem.push_str(&format!("            {line}\n"));
    }
    format!(
        "listen: {{listen}}\nupstreams:\n  - registry: {host}\n    url: {url}\n\
         policy:\n  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    \
         enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n    requireAttestationsBy: [built-by-ci]\n\
         attestors:\n  - name: built-by-ci\n    publicKeys:\n      - id: ci\n        pkixPublicKey:\n          \
         signatureAlgorithm: ECDSA_P256_SHA256\n          publicKeyPem: |\n{pem}\
         \x20   attestations:\n      - predicateType: {SLSA_V1}\n        conditions:\n          \
         - {{path: /runDetails/builder/id, in: [\"{BUILDER}\"]}}\n          \
         - {{path: /buildDefinition/externalParameters/source, matches: \"git\\\\+https://git.example.com/team/.*\"}}\n",
        host = registry.host(),
        url = registry.url(),
    )
}

fn pull(proxy: &Proxy, repo: &str) -> common::http::Response {
    common::http::request(
        "GET",
        &format!("{}/v2/{repo}/manifests/v1", proxy.url()),
        &[("Accept", MANIFEST_ACCEPT)],
        &[],
    )
    .unwrap()
}

#[test]
fn built_by_ci_provenance_rule() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let key = trust::keygen(dir.path(), "ci");
    let good_source = "git+https://git.example.com/team/app";
    let mut digests = Vec::new();
    for (i, repo) in [
        "good/app",
        "evil/app",
        "replayed/app",
        "edited/app",
        "bare/app",
    ]
    .iter()
    .enumerate()
    {
        let img = content::push_image(
            &registry.url(),
            repo,
            Some("v1"),
            "amd64",
            10 + i as u64,
            &[64],
        );
        digests.push(img.digest);
    }
    // Provenance from our builder.
    let good = openssl_envelope(
        dir.path(),
        &key,
        &statement(&digests[0], BUILDER, good_source),
    );
    push_attestation(&registry, "good/app", &digests[0], &good);
    // Provenance from another builder, properly signed.
    let evil = openssl_envelope(
        dir.path(),
        &key,
        &statement(&digests[1], "https://evil.example/builder", good_source),
    );
    push_attestation(&registry, "evil/app", &digests[1], &evil);
    // Good provenance for another digest, replayed.
    push_attestation(&registry, "replayed/app", &digests[2], &good);
    // Provenance whose predicate was edited after signing.
    let honest = statement(&digests[3], "https://evil.example/builder", good_source);
    let signed = openssl_envelope(dir.path(), &key, &honest);
    let mut envelope: serde_json::Value = serde_json::from_slice(&signed).unwrap();
    let edited = String::from_utf8(honest)
        .unwrap()
        .replace("https://evil.example/builder", BUILDER);
    envelope["payload"] = base64::engine::general_purpose::STANDARD
        .encode(edited)
        .into();
    push_attestation(
        &registry,
        "edited/app",
        &digests[3],
        envelope.to_string().as_bytes(),
    );
    // A plain signature is not provenance.
    trust::sign(
        &registry.url(),
        &format!("{}/bare/app:v1", registry.host()),
        "bare/app",
        &digests[4],
        &key,
        &[],
    );

    let proxy = Proxy::start(&config(&registry, &key));
    let ok = pull(&proxy, "good/app");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(sha256_digest(&ok.body), digests[0]);

    let cases = [
        ("evil/app", "condition failed: /runDetails/builder/id"),
        ("replayed/app", "for another digest"),
        ("edited/app", "by unknown key or altered"),
        ("bare/app", "no attestations found"),
    ];
    for (repo, why) in cases {
        let r = pull(&proxy, repo);
        assert_eq!(r.status, 403, "{repo}: {}", r.text());
        let text = r.text();
        assert!(text.contains("attestor built-by-ci"), "{repo}: {text}");
        assert!(text.contains(why), "{repo}: expected {why:?} in {text}");
    }
    // The explanation names the failed condition for operators too.
    let out = Command::new(trust::PORTCULLIS)
        .arg("verify")
        .arg(format!("{}/evil/app:v1", registry.host()))
        .arg("--config")
        .arg(proxy.config_path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("evil.example/builder"), "{text}");
}
