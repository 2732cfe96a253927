//! The trust boundary under attack: an attacker who can push to an
//! upstream repository tries to get unsigned, runnable content through
//! Portcullis by making it look like evidence, by making a manifest read
//! differently by Portcullis and by the runtime, or by riding on someone
//! else's break-glass admission. Real distribution registry, real clients
//! (skopeo, podman); every attack must fail, and the refusal must be a
//! decision in the audit trail.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::clients::Podman;
use common::content::{self, sha256_digest, PushedImage, TarLayer};
use common::fake::{OCI_INDEX, OCI_MANIFEST};
use common::fixtures::SIMPLE_SIGNING;
use common::http;
use common::registry::Registry;
use common::trust::{self, KeyPair, TrustConfig, MANIFEST_ACCEPT};
use common::Proxy;

const DSSE: &str = "application/vnd.dsse.envelope.v1+json";

struct Env {
    reg: Registry,
    dir: tempfile::TempDir,
    ci: KeyPair,
    /// `demo/app:signed`, signed by the attestor.
    signed: PushedImage,
    /// `demo/app:unsigned`, runnable, never signed.
    unsigned: PushedImage,
}

fn env() -> Env {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let ci = trust::keygen(dir.path(), "ci");
    let arch = common::host_arch();
    let signed = content::push_image(&reg.url(), "demo/app", Some("signed"), arch, 1, &[4096]);
    let unsigned = content::push_image(&reg.url(), "demo/app", Some("unsigned"), arch, 2, &[4096]);
    trust::sign(
        &reg.url(),
        &format!("{}/demo/app:signed", reg.host()),
        "demo/app",
        &signed.digest,
        &ci,
        &[],
    );
    Env {
        reg,
        dir,
        ci,
        signed,
        unsigned,
    }
}

impl Env {
    /// A proxy whose default rule is `mode`, with an audit trail and
    /// `extra` configuration.
    fn proxy(&self, mode: &str, extra: &str) -> Proxy {
        let mut config = TrustConfig::new(&self.reg.host(), &self.reg.url(), &[("ci", &self.ci)]);
        config.default_mode = mode.into();
        Proxy::start(
            &(config.yaml()
                + &format!(
                    "audit: {{path: {}, fsync: always}}\n",
                    self.audit_path().display()
                )
                + extra),
        )
    }

    fn audit_path(&self) -> std::path::PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The audit record for `digest` (waiting for it to be written).
    fn decision_for(&self, digest: &str) -> Value {
        let mut found = None;
        trust::wait_until(Duration::from_secs(5), || {
            found = self
                .audit()
                .into_iter()
                .find(|r| r["digest"] == digest && r["subject"] == "manifest");
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no audit record for {digest}: {:?}", self.audit()))
    }

    fn push(&self, reference: &str, media_type: &str, manifest: &[u8]) -> Result<String, String> {
        let url = format!("{}/v2/demo/app/manifests/{reference}", self.reg.url());
        let r = http::request("PUT", &url, &[("Content-Type", media_type)], manifest).unwrap();
        if r.status == 201 {
            Ok(sha256_digest(manifest))
        } else {
            Err(format!("HTTP {} {}", r.status, r.text()))
        }
    }

    /// The real `.sig` manifest of the signed image.
    fn signature_manifest(&self) -> Value {
        let (_, bytes) = trust::get_manifest(
            &self.reg.url(),
            "demo/app",
            &trust::sig_tag(&self.signed.digest),
        )
        .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }
}

fn get(proxy: &Proxy, path: &str) -> http::Response {
    http::request(
        "GET",
        &format!("{}/v2/demo/app/{path}", proxy.url()),
        &[("Accept", MANIFEST_ACCEPT)],
        &[],
    )
    .unwrap()
}

fn att_tag(digest: &str) -> String {
    format!("{}.att", digest.replace(':', "-"))
}

/// A runnable image whose config reads as inert to an exact-case,
/// first-duplicate JSON reader but as linux/amd64 with an entrypoint to a
/// Go runtime, and whose tar.gz layer is labelled `layer_type`.
fn disguised_image(env: &Env, layer_type: &str) -> Vec<u8> {
    let layer = TarLayer::new(77, 2048);
    let blob = content::push_layer(&env.reg.url(), "demo/app", &layer);
    let arch = common::host_arch();
    let config = format!(
        r#"{{"architecture":"","Architecture":"{arch}","os":"","OS":"linux","config":{{"Entrypoint":null,"entrypoint":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        blob.digest
    );
    let config = content::push_blob(&env.reg.url(), "demo/app", config.as_bytes());
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": layer_type, "digest": blob.digest, "size": blob.size}],
    }))
    .unwrap()
}

#[test]
fn a_runnable_image_labelled_as_a_signature_is_not_served_under_any_rule() {
    let env = env();
    let manifest = disguised_image(&env, SIMPLE_SIGNING);
    let digest = env.push("disguised", OCI_MANIFEST, &manifest).unwrap();
    let layer = serde_json::from_slice::<Value>(&manifest).unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    for mode in ["REQUIRE_ATTESTATION", "ALWAYS_DENY"] {
        let proxy = env.proxy(mode, "");
        let r = get(&proxy, "manifests/disguised");
        assert_eq!(r.status, 403, "{mode}: {}", r.text());
        assert_eq!(get(&proxy, &format!("blobs/{layer}")).status, 403, "{mode}");
        let podman = Podman::new();
        let out = trust::podman_pull(&podman, &format!("{}/demo/app:disguised", proxy.host()));
        trust::assert_failed_saying(&out, &["denied"], &format!("{mode}: podman pull"));
        let dir = tempfile::tempdir().unwrap();
        let out = trust::skopeo_copy(
            &format!("{}/demo/app:disguised", proxy.host()),
            &dir.path().join("img"),
        );
        trust::assert_failed_saying(&out, &["denied"], &format!("{mode}: skopeo copy"));
        let record = env.decision_for(&digest);
        assert_eq!(record["verdict"], "deny", "{mode}: {record}");
        drop(proxy);
        std::fs::remove_file(env.audit_path()).unwrap();
    }
}

#[test]
fn a_disguised_image_attached_as_evidence_of_a_signed_image_is_refused() {
    let env = env();
    let proxy = env.proxy("REQUIRE_ATTESTATION", "");
    // Under the signed image's `.att` tag: reached as evidence of an
    // admitted image, but its layer is a tar.gz, not a DSSE envelope.
    let manifest = disguised_image(&env, DSSE);
    let tag = att_tag(&env.signed.digest);
    let digest = env.push(&tag, OCI_MANIFEST, &manifest).unwrap();
    let r = get(&proxy, &format!("manifests/{tag}"));
    assert_eq!(r.status, 403, "{}", r.text());
    let record = env.decision_for(&digest);
    let reason = record["reason"].as_str().unwrap();
    assert!(
        reason.contains("no signatures found")
            && reason.contains("not served as evidence: its config"),
        "{reason}"
    );
    let podman = Podman::new();
    let out = trust::podman_pull(&podman, &format!("{}/demo/app:{tag}", proxy.host()));
    trust::assert_failed_saying(&out, &["denied"], "podman pull of the disguised .att");
}

#[test]
fn a_fake_artifact_listing_an_unsigned_images_blobs_does_not_make_them_servable() {
    let env = env();
    let proxy = env.proxy("REQUIRE_ATTESTATION", "");
    let u = &env.unsigned;
    let fake = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": u.config_digest, "size": u.config.len()},
        "layers": u.layers.iter().map(|(_, b)| json!({"mediaType": DSSE, "digest": b.digest, "size": b.size})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let tag = att_tag(&env.signed.digest);
    env.push(&tag, OCI_MANIFEST, &fake).unwrap();
    assert_eq!(get(&proxy, &format!("manifests/{tag}")).status, 403);
    for blob in u.blobs() {
        let r = get(&proxy, &format!("blobs/{}", blob.digest));
        assert_eq!(r.status, 403, "blob {} of the unsigned image", blob.digest);
    }
    assert_eq!(get(&proxy, "manifests/unsigned").status, 403);
}

#[test]
fn real_signatures_are_served_as_evidence_of_admitted_images_only() {
    let env = env();
    let sig_tag = trust::sig_tag(&env.signed.digest);
    let sig = env.signature_manifest();
    let payload = sig["layers"][0]["digest"].as_str().unwrap().to_owned();
    {
        let proxy = env.proxy("REQUIRE_ATTESTATION", "");
        // What `cosign verify` reads through the proxy.
        let r = get(&proxy, &format!("manifests/{sig_tag}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(get(&proxy, &format!("blobs/{payload}")).status, 200);
        let record = env.decision_for(&sha256_digest(&r.body));
        assert_eq!(record["verdict"], "exempt", "{record}");
        // The same signature copied as evidence of the unsigned image:
        // its subject is denied, so it is not served.
        let copied = serde_json::to_vec(&sig).unwrap();
        let unsigned_tag = trust::sig_tag(&env.unsigned.digest);
        env.push(&unsigned_tag, OCI_MANIFEST, &copied).unwrap();
        let r = get(&proxy, &format!("manifests/{unsigned_tag}"));
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("not admitted"), "{}", r.text());
    }
    std::fs::remove_file(env.audit_path()).unwrap();
    // ALWAYS_DENY serves nothing, evidence included.
    let proxy = env.proxy("ALWAYS_DENY", "");
    assert_eq!(get(&proxy, &format!("manifests/{sig_tag}")).status, 403);
    assert_eq!(get(&proxy, &format!("blobs/{payload}")).status, 403);
}

#[test]
fn ambiguous_manifests_are_refused_and_admit_nothing() {
    let env = env();
    let proxy = env.proxy("REQUIRE_ATTESTATION", "");
    let sig = env.signature_manifest();
    let child = json!({"mediaType": OCI_MANIFEST, "digest": env.unsigned.digest, "size": env.unsigned.manifest.len()});
    // Read by serde-style exact keys as a signature artifact (inert config,
    // signature layers), by Go (last duplicate wins, case-insensitive) as
    // an index of the unsigned image.
    let both = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","config":{},"layers":{},"Config":null,"Layers":null,"manifests":[{child}]}}"#,
        sig["config"], sig["layers"]
    );
    let case_only = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","Config":null,"Layers":null,"manifests":[{child}]}}"#
    );
    let mut accepted = 0;
    for (name, body) in [("both", both), ("case-only", case_only)] {
        let tag = format!("ambiguous-{name}");
        let Ok(digest) = env.push(&tag, OCI_INDEX, body.as_bytes()) else {
            continue;
        };
        accepted += 1;
        let r = get(&proxy, &format!("manifests/{tag}"));
        assert_eq!(r.status, 403, "{name}: {}", r.text());
        assert!(
            r.text().contains("ambiguous manifest"),
            "{name}: {}",
            r.text()
        );
        let record = env.decision_for(&digest);
        assert_eq!(record["verdict"], "deny", "{name}: {record}");
        let podman = Podman::new();
        let out = trust::podman_pull(&podman, &format!("{}/demo/app:{tag}", proxy.host()));
        trust::assert_failed_saying(&out, &["denied"], &format!("{name}: podman pull"));
        let dir = tempfile::tempdir().unwrap();
        let out = trust::skopeo_copy(
            &format!("{}/demo/app:{tag}", proxy.host()),
            &dir.path().join("img"),
        );
        trust::assert_failed_saying(&out, &["denied"], &format!("{name}: skopeo copy"));
        // The unsigned child was not admitted by it.
        assert_eq!(
            get(&proxy, &format!("manifests/{}", env.unsigned.digest)).status,
            403
        );
        assert_eq!(get(&proxy, "manifests/unsigned").status, 403);
    }
    assert!(
        accepted > 0,
        "the registry accepted none of the ambiguous manifests"
    );
}

#[test]
fn a_break_glass_index_admits_its_children_for_break_glass_requests_only() {
    let env = env();
    let token_file = env.dir.path().join("glass.token");
    std::fs::write(&token_file, "glass-7d1c9e5b2a4f8e60\n").unwrap();
    let multi = content::push_multiarch(&env.reg.url(), "demo/app", "multi", 9, 1024);
    let proxy = env.proxy(
        "REQUIRE_ATTESTATION",
        &format!(
            "breakGlass:\n  enabled: true\n  credentials:\n    - name: oncall\n      tokenFile: {}\n",
            token_file.display()
        ),
    );
    let glass = ("X-Portcullis-Break-Glass", "glass-7d1c9e5b2a4f8e60 INC-7");
    let with_glass = |path: &str| {
        http::request(
            "GET",
            &format!("{}/v2/demo/app/{path}", proxy.url()),
            &[("Accept", MANIFEST_ACCEPT), glass],
            &[],
        )
        .unwrap()
    };
    assert_eq!(get(&proxy, "manifests/multi").status, 403);
    assert_eq!(with_glass("manifests/multi").status, 200);
    let child = &multi.images[0];
    // Anonymous: the child and its blobs stay denied.
    assert_eq!(
        get(&proxy, &format!("manifests/{}", child.digest)).status,
        403
    );
    assert_eq!(get(&proxy, "manifests/multi").status, 403);
    // With the credential: the child (itself a break-glass pull) and its
    // blobs are served.
    assert_eq!(
        with_glass(&format!("manifests/{}", child.digest)).status,
        200
    );
    for blob in child.blobs() {
        assert_eq!(get(&proxy, &format!("blobs/{}", blob.digest)).status, 403);
        assert_eq!(with_glass(&format!("blobs/{}", blob.digest)).status, 200);
    }
}
