//! `portcullis attest` end to end: provenance attested with the CLI into a
//! real registry is enforced by the "built by our CI" rule when skopeo pulls
//! through the proxy; attestations accumulate as layers of the `.att`
//! manifest like cosign's; and the DSSE signature verifies with an
//! independent implementation (OpenSSL, over PAE computed here).

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use common::clients::{run_unchecked, SKOPEO};
use common::content;
use common::registry::Registry;
use common::trust::{self, KeyPair, TrustConfig};
use common::Proxy;
use serde_json::{json, Value};

const BUILDER: &str = "https://ci.example.com/builder@v1";
const SLSA_V1: &str = "https://slsa.dev/provenance/v1";
const IN_TOTO: &str = "application/vnd.in-toto+json";

/// A SLSA v1 provenance predicate: built by `builder` from `source`.
fn provenance(builder: &str, source: &str, invocation: &str) -> Value {
    json!({
        "buildDefinition": {
            "buildType": "https://ci.example.com/build/v1",
            "externalParameters": {"source": source},
        },
        "runDetails": {
            "builder": {"id": builder},
            "metadata": {"invocationId": invocation},
        },
    })
}

/// Writes `predicate` to `DIR/NAME.json`.
fn predicate_file(dir: &Path, name: &str, predicate: &Value) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(predicate).unwrap()).unwrap();
    path
}

/// `portcullis attest REF --key K --predicate P [--type T] --insecure`,
/// whatever the outcome.
fn attest(
    reference: &str,
    key: &KeyPair,
    predicate: &Path,
    predicate_type: Option<&str>,
) -> Output {
    let mut cmd = Command::new(trust::PORTCULLIS);
    cmd.arg("attest")
        .arg(reference)
        .arg("--key")
        .arg(&key.key)
        .arg("--predicate")
        .arg(predicate)
        .arg("--insecure");
    if let Some(t) = predicate_type {
        cmd.arg("--type").arg(t);
    }
    run_unchecked(&mut cmd, &format!("portcullis attest {reference}"))
}

/// Like [`attest`], but must succeed and print the attested digest.
fn attest_ok(
    reference: &str,
    key: &KeyPair,
    predicate: &Path,
    predicate_type: Option<&str>,
    digest: &str,
) {
    let out = attest(reference, key, predicate, predicate_type);
    trust::assert_succeeded(&out, &format!("portcullis attest {reference}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("attested {reference} ({digest})")),
        "attest should print the attested digest: {stdout}"
    );
}

/// The `.att` manifest of `digest`, straight from the registry.
fn att_manifest(registry: &Registry, repo: &str, digest: &str) -> Value {
    let tag = format!("{}.att", digest.replace(':', "-"));
    let (content_type, bytes) = trust::get_manifest(&registry.url(), repo, &tag)
        .unwrap_or_else(|s| panic!("{repo}:{tag}: HTTP {s}"));
    assert_eq!(content_type, "application/vnd.oci.image.manifest.v1+json");
    serde_json::from_slice(&bytes).unwrap()
}

/// The trust tests' configuration ([`TrustConfig`]), its `built-by-ci`
/// attestor requiring SLSA v1 provenance from `BUILDER`, signed by `key`
/// (the rule of tests/attestations.rs).
fn config(registry: &Registry, key: &KeyPair) -> String {
    let yaml = TrustConfig::new(&registry.host(), &registry.url(), &[("ci", key)]).yaml();
    let attestations = format!(
        "    attestations:\n      - predicateType: {SLSA_V1}\n        conditions:\n          \
         - {{path: /runDetails/builder/id, in: [\"{BUILDER}\"]}}\n"
    );
    // The attestor is the last entry before the top-level `cache:`.
    assert!(yaml.contains("\ncache:"), "{yaml}");
    yaml.replacen("\ncache:", &format!("\n{attestations}cache:"), 1)
}

#[test]
fn attested_provenance_is_enforced_through_the_proxy() {
    common::clients::require_tool(SKOPEO, "skopeo");
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let key = trust::keygen(dir.path(), "ci");
    let arch = common::host_arch();
    let good = content::push_image(&registry.url(), "good/app", Some("v1"), arch, 1, &[512]);
    let evil = content::push_image(&registry.url(), "evil/app", Some("v1"), arch, 2, &[512]);
    let source = "git+https://git.example.com/team/app";

    let ours = predicate_file(dir.path(), "ours", &provenance(BUILDER, source, "1"));
    let theirs = predicate_file(
        dir.path(),
        "theirs",
        &provenance("https://evil.example/builder", source, "1"),
    );
    let good_ref = format!("{}/good/app:v1", registry.host());
    let evil_ref = format!("{}/evil/app:v1", registry.host());
    attest_ok(&good_ref, &key, &ours, Some(SLSA_V1), &good.digest);
    // The shorthand names the same predicate type.
    attest_ok(
        &evil_ref,
        &key,
        &theirs,
        Some("slsaprovenance1"),
        &evil.digest,
    );

    let proxy = Proxy::start(&config(&registry, &key));
    trust::assert_builder_condition_enforced(
        &proxy.host(),
        dir.path(),
        "good/app",
        &good.digest,
        "evil/app",
    );
}

#[test]
fn attestations_append_like_cosign_and_verify_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let key = trust::keygen(dir.path(), "ci");
    let other = trust::keygen(dir.path(), "other");
    let img = content::push_image(&registry.url(), "demo/app", Some("v1"), "amd64", 3, &[256]);
    let reference = format!("{}/demo/app:v1", registry.host());
    let source = "git+https://git.example.com/team/app";
    let first = provenance(BUILDER, source, "1");
    let second = provenance(BUILDER, source, "2");
    let first_file = predicate_file(dir.path(), "first", &first);
    let second_file = predicate_file(dir.path(), "second", &second);

    attest_ok(&reference, &key, &first_file, Some(SLSA_V1), &img.digest);
    assert_eq!(
        att_manifest(&registry, "demo/app", &img.digest)["layers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Another predicate appends a layer; by digest works as by tag.
    let by_digest = format!("{}/demo/app@{}", registry.host(), img.digest);
    attest_ok(&by_digest, &key, &second_file, Some(SLSA_V1), &img.digest);
    // The same statement again (RFC 6979: the same envelope) adds nothing.
    attest_ok(&reference, &key, &first_file, Some(SLSA_V1), &img.digest);

    let manifest = att_manifest(&registry, "demo/app", &img.digest);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        2,
        "attestations accumulate as layers: {manifest}"
    );
    let config = trust::get_blob(
        &registry.url(),
        "demo/app",
        manifest["config"]["digest"].as_str().unwrap(),
    );
    let config: Value = serde_json::from_slice(&config).unwrap();
    let diff_ids: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    assert_eq!(
        config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        diff_ids,
        "the config lists each layer, as cosign's does"
    );

    for (layer, predicate) in layers.iter().zip([&first, &second]) {
        // cosign's layer layout (formats.md §2).
        assert_eq!(layer["mediaType"], "application/vnd.dsse.envelope.v1+json");
        assert_eq!(
            layer["annotations"],
            json!({"dev.cosignproject.cosign/signature": "", "predicateType": SLSA_V1})
        );
        let bytes = trust::get_blob(
            &registry.url(),
            "demo/app",
            layer["digest"].as_str().unwrap(),
        );
        assert_eq!(layer["size"], bytes.len());
        let envelope: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(envelope["payloadType"], IN_TOTO);
        let signatures = envelope["signatures"].as_array().unwrap();
        assert_eq!(signatures.len(), 1, "{envelope}");
        assert_eq!(signatures[0]["keyid"], "", "cosign's key-based keyid");
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = b64.decode(envelope["payload"].as_str().unwrap()).unwrap();
        let statement: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            statement,
            json!({
                "_type": "https://in-toto.io/Statement/v0.1",
                "predicateType": SLSA_V1,
                "subject": [{
                    "name": format!("{}/demo/app", registry.host()),
                    "digest": {"sha256": img.digest.trim_start_matches("sha256:")},
                }],
                "predicate": predicate,
            })
        );

        // PAE per the DSSE spec, built here, and OpenSSL checks the
        // signature over it.
        let mut pae = format!("DSSEv1 {} {IN_TOTO} {} ", IN_TOTO.len(), payload.len()).into_bytes();
        pae.extend_from_slice(&payload);
        let pae_file = dir.path().join("pae.bin");
        let sig_file = dir.path().join("pae.sig");
        std::fs::write(&pae_file, &pae).unwrap();
        std::fs::write(
            &sig_file,
            b64.decode(signatures[0]["sig"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        let verify = |public: &Path| {
            run_unchecked(
                Command::new("openssl")
                    .args(["dgst", "-sha256", "-verify"])
                    .arg(public)
                    .arg("-signature")
                    .arg(&sig_file)
                    .arg(&pae_file),
                "openssl dgst -verify",
            )
        };
        let out = verify(&key.public);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK"),
            "OpenSSL rejected a portcullis DSSE signature: {}",
            trust::output_text(&out)
        );
        assert!(
            !verify(&other.public).status.success(),
            "verified with the wrong key"
        );
        // The signature is over PAE, not over the bare payload.
        std::fs::write(&pae_file, &payload).unwrap();
        assert!(
            !verify(&key.public).status.success(),
            "the signature must cover PAE, not the payload alone"
        );
    }
}

#[test]
fn attest_refuses_bad_predicates_and_types_before_pushing() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let key = trust::keygen(dir.path(), "ci");
    let img = content::push_image(&registry.url(), "demo/app", Some("v1"), "amd64", 4, &[64]);
    let reference = format!("{}/demo/app:v1", registry.host());

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"runDetails\": {\"builder\": }}").unwrap();
    let array = dir.path().join("array.json");
    std::fs::write(&array, "[1, 2]").unwrap();
    let good = predicate_file(dir.path(), "good", &provenance(BUILDER, "git+x", "1"));
    let cases: [(&Path, Option<&str>, &[&str]); 4] = [
        (
            &broken,
            Some(SLSA_V1),
            &[
                "predicate",
                "broken.json",
                "is not valid JSON",
                "line 1 column",
            ],
        ),
        (
            &array,
            Some(SLSA_V1),
            &["array.json", "is an array", "JSON object"],
        ),
        (
            &good,
            Some("slsa-provenance"),
            &["--type \"slsa-provenance\"", "slsaprovenance1"],
        ),
        (
            &dir.path().join("missing.json"),
            None,
            &["cannot read", "missing.json"],
        ),
    ];
    for (predicate, predicate_type, words) in cases {
        let out = attest(&reference, &key, predicate, predicate_type);
        trust::assert_failed_saying(&out, words, &format!("attest {}", predicate.display()));
    }
    assert_eq!(
        trust::get_manifest(
            &registry.url(),
            "demo/app",
            &format!("{}.att", img.digest.replace(':', "-"))
        )
        .err(),
        Some(404),
        "nothing may be pushed for a refused attestation"
    );

    // Without --type, the predicate type is cosign's default, `custom`.
    attest_ok(&reference, &key, &good, None, &img.digest);
    let manifest = att_manifest(&registry, "demo/app", &img.digest);
    assert_eq!(
        manifest["layers"][0]["annotations"]["predicateType"],
        "https://cosign.sigstore.dev/attestation/v1"
    );
}
