//! Binary Authorization material as gcloud prints it, loaded unchanged:
//! a policy export (`gcloud container binauthz policy export`) with
//! cluster-scoped rules, and an attestor as `gcloud container binauthz
//! attestors describe` shows it (keys under `userOwnedGrafeasNote`, full
//! resource names, `keyId`), its key also given as a mounted file. The
//! same export serves several clusters: `cluster:` picks this instance's
//! rule. Checked with `portcullis check` (and `--strict`) and through the
//! proxy against a real registry.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::clients;
use common::content;
use common::registry::Registry;
use common::trust::{self, get_manifest_via, KeyPair};
use common::Proxy;

/// The export, as gcloud writes it (keys sorted, quoted etag).
const POLICY_EXPORT: &str = r#"admissionWhitelistPatterns:
- namePattern: gcr.io/google_containers/*
clusterAdmissionRules:
  us-central1-a.staging:
    enforcementMode: DRYRUN_AUDIT_LOG_ONLY
    evaluationMode: REQUIRE_ATTESTATION
    requireAttestationsBy:
    - projects/acme/attestors/built-by-ci
  us-east1-b.frozen:
    enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG
    evaluationMode: ALWAYS_DENY
defaultAdmissionRule:
  enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG
  evaluationMode: REQUIRE_ATTESTATION
  requireAttestationsBy:
  - projects/acme/attestors/built-by-ci
etag: '"B1bQd0mn1k1i"'
globalPolicyEvaluationMode: ENABLE
name: projects/acme/policy
updateTime: '2026-11-30T10:00:00.123456Z'
"#;

/// `attestors describe` output for the attestor holding `pem`, indented
/// as one item of a YAML list; with `key_file`, the key is given by file
/// (a mounted secret) with a `keyId` instead of inline with an `id`.
fn describe(pem: &str, key_file: Option<&Path>) -> String {
    let key = match key_file {
        None => format!(
            "    - id: ni:///sha-256;ci-key-1\n      pkixPublicKey:\n        publicKeyPem: |\n{}\n        signatureAlgorithm: ECDSA_P256_SHA256\n",
            pem.lines()
                .map(|l| format!("          {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        Some(path) => format!(
            "    - pkixPublicKey:\n        publicKeyFile: {}\n        signatureAlgorithm: ECDSA_P256_SHA256\n        keyId: //cloudkms.googleapis.com/v1/projects/acme/locations/global/keyRings/ci/cryptoKeys/signer/cryptoKeyVersions/1\n",
            path.display()
        ),
    };
    format!(
        "- description: Images built by our CI\n  etag: '\"Xq1w2e3r4t5y\"'\n  name: projects/acme/attestors/built-by-ci\n  updateTime: '2026-11-30T09:00:00.654321Z'\n  userOwnedGrafeasNote:\n    delegationServiceAccountEmail: service-123@gcp-sa-binaryauthorization.iam.gserviceaccount.com\n    noteReference: projects/acme/notes/built-by-ci\n    publicKeys:\n{key}"
    )
}

struct Env {
    reg: Registry,
    dir: tempfile::TempDir,
    ci: KeyPair,
    policy: PathBuf,
    signed: String,
}

fn env() -> Env {
    let reg = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ci = trust::keygen(dir.path(), "ci");
    let img = content::push_image(
        &reg.url(),
        "acme/app",
        Some("v1"),
        common::host_arch(),
        31,
        &[9000],
    );
    trust::sign(
        &reg.url(),
        &format!("{}/acme/app:v1", reg.host()),
        "acme/app",
        &img.digest,
        &ci,
        &[],
    );
    content::push_image(
        &reg.url(),
        "acme/unsigned",
        Some("v1"),
        common::host_arch(),
        32,
        &[9000],
    );
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY_EXPORT).expect("write policy");
    Env {
        reg,
        dir,
        ci,
        policy,
        signed: img.digest,
    }
}

impl Env {
    /// A config using the export as it is, the attestor as `describe`
    /// printed it, and `extra` top-level YAML.
    fn config(&self, key_file: Option<&Path>, extra: &str) -> String {
        format!(
            "listen: {{listen}}\nupstreams:\n  - registry: {r}\n    url: {u}\n    default: true\npolicyFile: {p}\nattestors:\n{a}{extra}",
            r = self.reg.host(),
            u = self.reg.url(),
            p = self.policy.display(),
            a = describe(&self.ci.pem, key_file),
        )
    }

    fn check(&self, yaml: &str, strict: bool) -> std::process::Output {
        let path = self.dir.path().join("check.yaml");
        std::fs::write(&path, yaml.replace("{listen}", "127.0.0.1:5999")).expect("write");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(["check", "--config"]).arg(&path);
        if strict {
            cmd.arg("--strict");
        }
        clients::run_unchecked(&mut cmd, "portcullis check")
    }
}

#[test]
fn gcloud_exports_load_unchanged_and_check_reports_what_does_not_apply() {
    let env = env();
    let out = env.check(&env.config(None, ""), false);
    trust::assert_succeeded(&out, "check of the gcloud export and describe output");
    let text = trust::output_text(&out);
    for ignored in [
        "clusterAdmissionRules[\"us-central1-a.staging\"] applies to cluster",
        "clusterAdmissionRules[\"us-east1-b.frozen\"] applies to cluster",
        "userOwnedGrafeasNote.noteReference",
        "delegationServiceAccountEmail",
        "globalPolicyEvaluationMode",
    ] {
        assert!(
            text.contains(ignored),
            "check does not report {ignored:?}\n{text}"
        );
    }
    assert!(
        text.contains("attestor built-by-ci: keys ni:///sha-256;ci-key-1"),
        "{text}"
    );
    let strict = env.check(&env.config(None, ""), true);
    assert_eq!(
        strict.status.code(),
        Some(1),
        "{}",
        trust::output_text(&strict)
    );
    assert!(trust::output_text(&strict).contains("--strict"));

    // For the frozen cluster, its rule is the one that applies; the
    // staging rule is still reported.
    let frozen = env.check(&env.config(None, "cluster: us-east1-b.frozen\n"), false);
    let text = trust::output_text(&frozen);
    assert!(text.contains("cluster: us-east1-b.frozen"), "{text}");
    assert!(text.contains("default rule: ALWAYS_DENY"), "{text}");
    assert!(
        !text.contains("\"us-east1-b.frozen\"] applies to cluster"),
        "{text}"
    );
}

#[test]
fn one_export_serves_several_clusters_each_under_its_own_rule() {
    let env = env();
    let accept = |proxy: &Proxy, repo: &str| get_manifest_via(proxy, repo, "v1");

    // No cluster: the default rule (REQUIRE_ATTESTATION by the describe-
    // shaped attestor, named by its full resource name in the policy).
    let default = Proxy::start(&env.config(None, ""));
    let r = accept(&default, "acme/app");
    assert_eq!(
        r.status,
        200,
        "signed image under the default rule: {}",
        r.text()
    );
    trust::assert_denied(
        &accept(&default, "acme/unsigned"),
        "no signatures",
        "unsigned image",
    );

    // The frozen cluster: ALWAYS_DENY, naming its rule.
    let frozen = Proxy::start(&env.config(None, "cluster: us-east1-b.frozen\n"));
    let r = accept(&frozen, "acme/app");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text()
            .contains("cluster admission rule us-east1-b.frozen"),
        "the denial names the cluster rule: {}",
        r.text()
    );

    // Staging: the same requirement in dry run: the unsigned image is
    // served, and recorded as a would-be denial.
    let admin = format!("127.0.0.1:{}", common::free_port());
    let staging = Proxy::start_with_health(
        &env.config(
            None,
            &format!("cluster: us-central1-a.staging\nadmin: {{listen: {admin}}}\n"),
        ),
        &format!("http://{admin}/healthz"),
    );
    let r = accept(&staging, "acme/unsigned");
    assert_eq!(r.status, 200, "dry run serves: {}", r.text());
    let api = common::http::get(&format!("http://{admin}/-/api/decisions")).expect("decisions");
    let v: serde_json::Value = serde_json::from_slice(&api.body).expect("json");
    let decision = v["decisions"]
        .as_array()
        .and_then(|d| {
            d.iter().find(|d| {
                d["reference"]
                    .as_str()
                    .is_some_and(|r| r.ends_with("acme/unsigned"))
            })
        })
        .cloned()
        .unwrap_or_else(|| panic!("no decision for acme/unsigned: {v}"));
    assert_eq!(decision["verdict"], "dryrun-deny", "{decision}");
    assert_eq!(
        decision["rule"], "cluster admission rule us-central1-a.staging",
        "{decision}"
    );
}

#[test]
fn a_mounted_key_file_with_a_key_id_verifies_and_a_bad_one_is_named() {
    let env = env();
    let key_file = env.dir.path().join("ci.pub");
    std::fs::write(&key_file, &env.ci.pem).expect("write key file");
    let proxy = Proxy::start(&env.config(Some(&key_file), ""));
    let r = get_manifest_via(&proxy, "acme/app", "v1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        proxy.logs().contains(&env.signed),
        "the decision names the served digest"
    );

    let missing = env.dir.path().join("gone.pub");
    let out = env.check(&env.config(Some(&missing), ""), false);
    trust::assert_failed_saying(
        &out,
        &[
            "userOwnedGrafeasNote.publicKeys[0].pkixPublicKey.publicKeyFile",
            "gone.pub",
        ],
        "a missing key file",
    );
    let garbage = env.dir.path().join("garbage.pub");
    std::fs::write(&garbage, "not a key\n").expect("write");
    let out = env.check(&env.config(Some(&garbage), ""), false);
    trust::assert_failed_saying(
        &out,
        &["publicKeyFile", "garbage.pub"],
        "a key file that holds no key",
    );
}

#[test]
fn an_allowlist_entry_pinned_to_a_digest_exempts_exactly_that_image() {
    let env = env();
    let host = env.reg.host();
    let pinned = content::push_image(
        &env.reg.url(),
        "vendor/agent",
        Some("v1"),
        common::host_arch(),
        41,
        &[12_000],
    );
    let moved = content::push_image(
        &env.reg.url(),
        "vendor/agent",
        Some("v2"),
        common::host_arch(),
        42,
        &[12_000],
    );
    let policy = env.dir.path().join("pinned.yaml");
    std::fs::write(
        &policy,
        POLICY_EXPORT.replace(
            "- namePattern: gcr.io/google_containers/*\n",
            &format!(
                "- namePattern: gcr.io/google_containers/*\n- namePattern: {host}/vendor/*@{}\n",
                pinned.digest
            ),
        ),
    )
    .expect("write policy");
    let config = env.config(None, "").replace(
        &env.policy.display().to_string(),
        &policy.display().to_string(),
    );
    let proxy = Proxy::start(&config);

    // The pinned digest pulls whole with a real client, unsigned as it is.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = trust::skopeo_copy(
        &format!("{}/vendor/agent:v1", proxy.host()),
        &dir.path().join("v1"),
    );
    trust::assert_succeeded(&out, "skopeo pull of the pinned image");
    assert_eq!(
        trust::dir_manifest_digest(&dir.path().join("v1")),
        pinned.digest
    );
    // Any other content of the same repository is judged by the rules.
    trust::assert_denied(
        &get_manifest_via(&proxy, "vendor/agent", "v2"),
        "no signatures",
        "another digest in the pinned repository",
    );
    assert_ne!(moved.digest, pinned.digest);
    // The tag moved onto other content: the exemption does not follow it.
    content::push_image(
        &env.reg.url(),
        "vendor/agent",
        Some("v1"),
        common::host_arch(),
        43,
        &[12_000],
    );
    trust::assert_denied(
        &get_manifest_via(&proxy, "vendor/agent", "v1"),
        "no signatures",
        "the pinned tag after it moved",
    );

    // A tag in an allowlist entry is refused, saying what to write.
    std::fs::write(
        &policy,
        POLICY_EXPORT.replace(
            "- namePattern: gcr.io/google_containers/*\n",
            &format!("- namePattern: {host}/vendor/agent:v1\n"),
        ),
    )
    .expect("write policy");
    let out = env.check(&config, false);
    trust::assert_failed_saying(
        &out,
        &[
            "admissionWhitelistPatterns[0]",
            "names a tag",
            "@sha256:<digest>",
        ],
        "an allowlist entry with a tag",
    );
}

/// The 1-based number of the first line of `text` containing `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the text"))
        + 1
}

#[test]
fn check_names_the_file_field_and_line_of_a_policy_error() {
    let env = env();
    // In the exported policy file: an allowlist entry with a tag, in a
    // list written at its key's indentation as gcloud writes it.
    let export = POLICY_EXPORT.replace(
        "gcr.io/google_containers/*",
        "gcr.io/google_containers/pause:3.9",
    );
    std::fs::write(&env.policy, &export).expect("write policy");
    let out = env.check(&env.config(None, ""), false);
    let at = format!(
        "{} line {}: admissionWhitelistPatterns[0]",
        env.policy.display(),
        line_with(&export, "pause:3.9")
    );
    trust::assert_failed_saying(&out, &[&at, "names a tag"], "a tag in the allowlist");

    // In the config, after the policy file's attestors: the attestor as
    // `describe` printed it, with an algorithm Binary Authorization lacks.
    std::fs::write(&env.policy, POLICY_EXPORT).expect("write policy");
    let config = env
        .config(None, "")
        .replace("ECDSA_P256_SHA256", "ECDSA_P521_SHA512");
    let out = env.check(&config, false);
    let at = format!(
        "line {}: attestors[0].userOwnedGrafeasNote.publicKeys[0].pkixPublicKey.signatureAlgorithm",
        line_with(&config, "ECDSA_P521_SHA512")
    );
    trust::assert_failed_saying(&out, &[&at, "ECDSA_P521_SHA512"], "an unknown algorithm");

    // An inline policy naming an attestor nobody defined.
    let config = format!(
        "listen: {{listen}}\nupstreams:\n  - registry: {r}\n    url: {u}\n    default: true\npolicy:\n  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n    requireAttestationsBy:\n    - projects/acme/attestors/nobody\n",
        r = env.reg.host(),
        u = env.reg.url(),
    );
    let out = env.check(&config, false);
    let at = format!(
        "line {}: policy.defaultAdmissionRule.requireAttestationsBy",
        line_with(&config, "requireAttestationsBy")
    );
    trust::assert_failed_saying(&out, &[&at, "nobody"], "an undefined attestor");
}
