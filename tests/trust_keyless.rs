//! Keyless trust with real components: a Sigstore of the test's own (a
//! Fulcio-like CA, a CT log key, a Rekor-like log key, and the
//! `trusted_root.json` naming them, `common::sigstore`), images in a real
//! distribution registry signed keyless the way `cosign sign` leaves them
//! (a `.sig` layer with the certificate and the Rekor bundle as
//! annotations), and skopeo, podman and containerd (`ctr`) pulling through
//! a proxy whose attestor is "the release workflow of acme/app, as GitHub
//! Actions vouched for it".
//!
//! Right identity → pulls. Wrong identity, wrong issuer, an expired
//! certificate with no valid signing time, a missing or forged log entry,
//! a certificate without an SCT, an untrusted CA → denied, the denial
//! naming the check that failed.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::clients::{Containerd, Podman};
use common::content;
use common::registry::Registry;
use common::sigstore::{self, Issue, TestSigstore};
use common::trust::{self, get_manifest_via};
use common::Proxy;

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const WORKFLOW: &str = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.0.0";

/// The proxy's configuration: one attestor, keyless, trusting `root`;
/// `extra` continues the attestor (more identities, `attestations:`).
fn config(registry: &Registry, root: &Path, extra: &str) -> String {
    let r = registry.host();
    format!(
        "listen: {{listen}}\n\
         upstreams:\n\
         \x20 - registry: {r}\n\
         \x20   url: {url}\n\
         \x20   default: true\n\
         policy:\n\
         \x20 defaultAdmissionRule:\n\
         \x20   evaluationMode: REQUIRE_ATTESTATION\n\
         \x20   enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n\
         \x20   requireAttestationsBy: [acme-release]\n\
         attestors:\n\
         \x20 - name: acme-release\n\
         \x20   keyless:\n\
         \x20     trustedRoot: {root}\n\
         \x20     identities:\n\
         \x20       - issuer: {ISSUER}\n\
         \x20         subjectRegExp: https://github\\.com/acme/app/\\.github/workflows/release\\.yml@refs/tags/v.*\n\
         {extra}\
         cache: {{allowTtl: 10m, denyTtl: 30s, maxEntries: 100000}}\n",
        url = registry.url(),
        root = root.display(),
    )
}

struct Env {
    reg: Registry,
    ours: TestSigstore,
    dir: tempfile::TempDir,
    root: PathBuf,
}

fn env() -> Env {
    let reg = Registry::start();
    let ours = TestSigstore::new("ours");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("trusted_root.json");
    std::fs::write(&root, ours.trusted_root()).expect("write the trusted root");
    Env {
        reg,
        ours,
        dir,
        root,
    }
}

/// Pushes an image to `repo:v1`; its digest.
fn push(env: &Env, repo: &str, seed: u64) -> String {
    content::push_image(
        &env.reg.url(),
        repo,
        Some("v1"),
        common::host_arch(),
        seed,
        &[40_000, 2000],
    )
    .digest
}

/// Pushes an image to `repo:v1` and signs it keyless as `issue` says,
/// logged (when `integrated` is given) by the Sigstore `by`.
fn push_signed(
    env: &Env,
    repo: &str,
    seed: u64,
    by: &TestSigstore,
    issue: &Issue,
    integrated: Option<SystemTime>,
) -> String {
    let digest = push(env, repo, seed);
    let reference = format!("{}/{repo}", env.reg.host());
    let signature = sigstore::sign_keyless(by, &reference, &digest, issue, integrated);
    push_signature(&env.reg.url(), repo, &digest, &signature);
    digest
}

/// Pushes `signature` as the `.sig` of `digest` in `repo`, laid out as
/// cosign lays it out.
fn push_signature(
    registry_url: &str,
    repo: &str,
    digest: &str,
    signature: &sigstore::KeylessSignature,
) {
    push_cosign(
        registry_url,
        repo,
        digest,
        "sig",
        sigstore::SIMPLE_SIGNING,
        signature,
    );
}

/// Pushes `signature` as cosign's `sha256-<hex>.<suffix>` artifact of
/// `digest` in `repo`, its layer of type `layer_type`.
fn push_cosign(
    registry_url: &str,
    repo: &str,
    digest: &str,
    suffix: &str,
    layer_type: &str,
    signature: &sigstore::KeylessSignature,
) {
    let config = content::push_blob(registry_url, repo, b"{}");
    let layer = content::push_blob(registry_url, repo, &signature.payload);
    let manifest = sigstore::cosign_manifest(
        layer_type,
        signature,
        (&config.digest, config.size),
        (&layer.digest, layer.size),
    );
    let tag = format!("{}.{suffix}", digest.replace(':', "-"));
    content::push_manifest(
        registry_url,
        repo,
        &tag,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).expect("JSON"),
    );
}

#[test]
fn keyless_signed_image_pulls_with_skopeo_podman_and_ctr() {
    let env = env();
    let digest = push_signed(
        &env,
        "acme/app",
        1,
        &env.ours,
        &Issue::now(WORKFLOW, ISSUER),
        Some(SystemTime::now()),
    );
    let admin = format!("127.0.0.1:{}", common::free_port());
    let proxy = Proxy::start_with_health(
        &(config(&env.reg, &env.root, "") + &format!("admin: {{listen: {admin}}}\n")),
        &format!("http://{admin}/healthz"),
    );
    let reference = format!("{}/acme/app:v1", proxy.host());

    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("img");
    let out = trust::skopeo_copy(&reference, &dest);
    trust::assert_succeeded(&out, "skopeo copy of a keyless-signed image");
    assert_eq!(trust::dir_manifest_digest(&dest), digest, "skopeo");

    let podman = Podman::new();
    let out = trust::podman_pull(&podman, &reference);
    trust::assert_succeeded(&out, "podman pull of a keyless-signed image");
    assert_eq!(podman.inspect(&reference).digest, digest, "podman");

    let ctr = Containerd::start();
    let out = trust::ctr_pull(&ctr, &reference, None);
    trust::assert_succeeded(&out, "ctr pull of a keyless-signed image");
    assert_eq!(ctr.image_target(&reference), digest, "containerd");

    // The decision shows who signed and where it was logged.
    let audit = http_get(&format!("http://{admin}/-/api/decisions"));
    for shown in [WORKFLOW, ISSUER, "\"logIndex\":4242"] {
        assert!(audit.contains(shown), "the decisions show {shown}: {audit}");
    }
}

fn http_get(url: &str) -> String {
    let r = common::http::request("GET", url, &[], &[]).expect("GET");
    assert_eq!(r.status, 200, "{url}: {}", r.text());
    r.text()
}

/// Every way keyless evidence can fail, each in its own repository of one
/// registry, against one proxy: denied, naming the check.
#[test]
fn keyless_failures_are_denied_naming_the_check() {
    let env = env();
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let right = Issue::now(WORKFLOW, ISSUER);
    // A CA the trusted root does not hold, with our CT and Rekor keys: only
    // the chain is wrong.
    let mut rogue = TestSigstore::new("rogue");
    rogue.ct_key = env.ours.ct_key.clone();
    rogue.rekor_key = env.ours.rekor_key.clone();
    // A forger claiming our Rekor's log ID, signing with another key.
    let mut forger = TestSigstore::new("ours");
    forger.rekor_key = sigstore::key("forger rekor");
    forger.claimed_log_id = Some(env.ours.rekor_log_id());

    let expired = Issue {
        not_before: now - 3 * hour,
        not_after: now - 3 * hour + Duration::from_secs(600),
        ..right.clone()
    };
    let cases: Vec<(&str, &TestSigstore, Issue, Option<SystemTime>, &str)> = vec![
        (
            "wrong-subject",
            &env.ours,
            Issue::now(
                "https://github.com/acme/app/.github/workflows/pr.yml@refs/pull/7/merge",
                ISSUER,
            ),
            Some(now),
            "which no expected identity matches (subject",
        ),
        (
            "wrong-issuer",
            &env.ours,
            Issue::now(WORKFLOW, "https://token.actions.example.com"),
            Some(now),
            "which no expected identity matches (issuer",
        ),
        (
            "expired",
            &env.ours,
            expired.clone(),
            Some(now),
            "the signing time lies outside the certificate's validity",
        ),
        (
            "expired-unlogged",
            &env.ours,
            expired,
            None,
            "no transparency log entry",
        ),
        (
            "unlogged",
            &env.ours,
            right.clone(),
            None,
            "no transparency log entry",
        ),
        (
            "forged-log-entry",
            &forger,
            right.clone(),
            Some(now),
            "signed entry timestamp",
        ),
        (
            "no-sct",
            &env.ours,
            Issue {
                sct: false,
                ..right.clone()
            },
            Some(now),
            "the certificate carries no SCT",
        ),
        (
            "untrusted-ca",
            &rogue,
            right.clone(),
            Some(now),
            "does not chain to a trusted certificate authority",
        ),
    ];
    for (i, (repo, by, issue, integrated, _)) in cases.iter().enumerate() {
        push_signed(
            &env,
            &format!("acme/{repo}"),
            10 + i as u64,
            by,
            issue,
            *integrated,
        );
    }
    let proxy = Proxy::start(&config(&env.reg, &env.root, ""));
    for (repo, _, _, _, says) in &cases {
        let repo = format!("acme/{repo}");
        let r = get_manifest_via(&proxy, &repo, "v1");
        let message = trust::assert_denied_keyless(&r, says, &repo);
        eprintln!("{repo}: {message}");
    }

    // The clients show it too.
    let reference = format!("{}/acme/wrong-issuer:v1", proxy.host());
    let words = ["attestor acme-release", "keyless verification failed"];
    let dir = tempfile::tempdir().expect("tempdir");
    let out = trust::skopeo_copy(&reference, &dir.path().join("img"));
    trust::assert_failed_saying(&out, &words, "skopeo copy, wrong issuer");
    let podman = Podman::new();
    let out = trust::podman_pull(&podman, &reference);
    trust::assert_failed_saying(&out, &words, "podman pull, wrong issuer");
    let ctr = Containerd::start();
    let out = trust::ctr_pull(&ctr, &reference, None);
    trust::assert_failed_saying(&out, &["denied by policy"], "ctr pull, wrong issuer");
    drop(env.dir);
}

/// An identity added to the attestor admits what it signs; the trusted
/// root is read from the file, so the same signature under the public-good
/// root (the default) does not verify.
#[test]
fn identities_and_trusted_roots_are_the_attestors() {
    let env = env();
    let pr = "https://github.com/acme/app/.github/workflows/pr.yml@refs/heads/main";
    push_signed(
        &env,
        "acme/pr",
        30,
        &env.ours,
        &Issue::now(pr, ISSUER),
        Some(SystemTime::now()),
    );
    let extra = format!(
        "\x20       - issuer: {ISSUER}\n\
         \x20         subject: {pr}\n"
    );
    let proxy = Proxy::start(&config(&env.reg, &env.root, &extra));
    let r = get_manifest_via(&proxy, "acme/pr", "v1");
    assert_eq!(r.status, 200, "a second identity admits: {}", r.text());
    drop(proxy);

    // `check` shows who the attestor trusts, and under which root; a
    // relative `trustedRoot` is the config file's, like every path in it
    // (the test runs from the crate root, where there is no such file).
    let file = env.dir.path().join("portcullis.yaml");
    std::fs::write(
        &file,
        config(&env.reg, Path::new("trusted_root.json"), &extra).replace("{listen}", "127.0.0.1:0"),
    )
    .expect("write the config");
    let out = std::process::Command::new(trust::PORTCULLIS)
        .arg("check")
        .arg("--config")
        .arg(&file)
        .output()
        .expect("portcullis check");
    let text = trust::output_text(&out);
    assert!(out.status.success(), "{text}");
    for shown in [
        "attestor acme-release: keyless subject /^(?:https://github\\.com/acme/app/",
        &format!("or subject \"{pr}\" from issuer \"{ISSUER}\""),
        &format!("under {}", env.root.display()),
    ] {
        assert!(text.contains(shown), "check shows {shown:?}: {text}");
    }

    let public_good = config(&env.reg, &env.root, &extra)
        .replace(&format!("      trustedRoot: {}\n", env.root.display()), "");
    assert!(!public_good.contains("trustedRoot"));
    let proxy = Proxy::start(&public_good);
    let r = get_manifest_via(&proxy, "acme/pr", "v1");
    trust::assert_denied_keyless(
        &r,
        "the entry is in a log the trusted root does not know",
        "acme/pr",
    );
}

/// What an upstream can do with real keyless signatures of the right
/// identity: move one to another image, or put a right certificate on a
/// signature made with another key. Neither is served.
#[test]
fn a_right_signature_moved_or_a_right_certificate_borrowed_is_denied() {
    let env = env();
    let now = Some(SystemTime::now());
    let right = Issue::now(WORKFLOW, ISSUER);
    let signed = push_signed(&env, "acme/signed", 40, &env.ours, &right, now);

    // The signed image's signature, as the .sig of another image.
    let other = push(&env, "acme/signed", 41);
    let reference = format!("{}/acme/signed", env.reg.host());
    let moved = sigstore::sign_keyless(&env.ours, &reference, &signed, &right, now);
    push_signature(&env.reg.url(), "acme/signed", &other, &moved);

    // A signature by an attacker's key, with a right certificate (and its
    // log entry) copied from a real signature.
    let borrowed_digest = push(&env, "acme/borrowed", 42);
    let reference = format!("{}/acme/borrowed", env.reg.host());
    let real = sigstore::sign_keyless(&env.ours, &reference, &borrowed_digest, &right, now);
    let mut forged = sigstore::sign_keyless(
        &env.ours,
        &reference,
        &borrowed_digest,
        &Issue::now("mallory@example.com", ISSUER),
        now,
    );
    for annotation in [
        sigstore::CERTIFICATE_ANNOTATION,
        sigstore::BUNDLE_ANNOTATION,
    ] {
        forged.annotations[annotation] = real.annotations[annotation].clone();
    }
    push_signature(&env.reg.url(), "acme/borrowed", &borrowed_digest, &forged);

    let proxy = Proxy::start(&config(&env.reg, &env.root, ""));
    let r = get_manifest_via(&proxy, "acme/signed", &signed);
    assert_eq!(r.status, 200, "the signed image itself: {}", r.text());
    let r = get_manifest_via(&proxy, "acme/signed", &other);
    common::fake::assert_oci_error(&r, 403, Some("DENIED"), "a moved signature");
    let text = r.text();
    assert!(
        text.contains("1 for another digest") && text.contains(&signed),
        "a moved signature names the digest it signs: {text}"
    );
    let r = get_manifest_via(&proxy, "acme/borrowed", "v1");
    trust::assert_denied_keyless(
        &r,
        "the signature does not verify over the artifact",
        "a borrowed certificate",
    );
}

const SLSA_V1: &str = "https://slsa.dev/provenance/v1";
const BUILDER: &str = "https://github.com/acme/app/.github/workflows/release.yml@refs/tags/v1.0.0";

/// "SLSA provenance whose builder is our workflow, signed by our
/// workflow's identity" as one attestor: cosign v3 keyless attestation
/// bundles (DSSE, a Rekor `dsse` entry with an inclusion proof and a
/// signed checkpoint) attached as OCI referrers through the referrers tag
/// fallback of a real registry.
#[test]
fn keyless_provenance_bundles_through_referrers_meet_conditions_and_identity() {
    let env = env();
    let now = SystemTime::now();
    let right = Issue::now(WORKFLOW, ISSUER);
    let statement = |digest: &str, repo: &str, builder: &str| {
        serde_json::to_vec(&serde_json::json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": format!("{}/{repo}", env.reg.host()), "digest": {"sha256": digest.trim_start_matches("sha256:")}}],
            "predicateType": SLSA_V1,
            "predicate": {
                "buildDefinition": {"buildType": "https://actions.github.io/buildtypes/workflow/v1", "externalParameters": {}},
                "runDetails": {"builder": {"id": builder}}
            }
        }))
        .expect("JSON")
    };
    let cases = [
        ("acme/built", BUILDER, &right, None),
        (
            "acme/other-builder",
            "https://ci.example.com/builder",
            &right,
            Some("condition failed: /runDetails/builder/id"),
        ),
        (
            "acme/other-signer",
            BUILDER,
            &Issue::now(
                "https://github.com/acme/app/.github/workflows/pr.yml@refs/heads/x",
                ISSUER,
            ),
            Some("keyless verification failed: the certificate was issued to"),
        ),
    ];
    for (i, (repo, builder, issue, _)) in cases.iter().enumerate() {
        let image = content::push_image(
            &env.reg.url(),
            repo,
            Some("v1"),
            common::host_arch(),
            50 + i as u64,
            &[3000],
        );
        let bundle = env
            .ours
            .attest_keyless(&statement(&image.digest, repo, builder), issue, now);
        trust::attach_bundle(
            &env.reg.url(),
            repo,
            &image.digest,
            image.manifest.len(),
            &bundle,
            SLSA_V1,
        );
    }
    let attestations = format!(
        "\x20   attestations:\n\
         \x20     - predicateType: {SLSA_V1}\n\
         \x20       conditions:\n\
         \x20         - {{path: /runDetails/builder/id, equals: \"{BUILDER}\"}}\n"
    );
    let proxy = Proxy::start(&config(&env.reg, &env.root, &attestations));
    for (repo, _, _, denied) in &cases {
        let r = get_manifest_via(&proxy, repo, "v1");
        match denied {
            None => assert_eq!(r.status, 200, "{repo}: {}", r.text()),
            Some(says) => {
                common::fake::assert_oci_error(&r, 403, Some("DENIED"), repo);
                assert!(
                    r.text().contains(says),
                    "{repo}: wanted {says:?}: {}",
                    r.text()
                );
            }
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("img");
    let out = trust::skopeo_copy(&format!("{}/acme/built:v1", proxy.host()), &dest);
    trust::assert_succeeded(&out, "skopeo copy of an image with keyless provenance");
}

/// cosign's real keyless attestation bundle (`tests/fixtures/cosign`,
/// Fulcio certificate for cody@soyland.com, Rekor `dsse` entry with an
/// inclusion proof and checkpoint) is about go-containerregistry's
/// `empty.Image`, whose manifest and config are rebuilt here byte for
/// byte: pushed to a real registry as `127.0.0.1:60943/repo` (the name
/// the statement gives), with the bundle as its referrer, it is admitted
/// under its identity and refused under another.
#[test]
fn cosigns_real_keyless_attestation_bundle_admits_its_image_through_the_proxy() {
    const SUBJECT: &str = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4";
    const PREDICATE: &str = "https://cosign.sigstore.dev/attestation/v1";
    let reg = Registry::start();
    let config_json = br#"{"architecture":"","created":"0001-01-01T00:00:00Z","os":"","rootfs":{"type":"layers","diff_ids":null},"config":{}}"#;
    let config = content::push_blob(&reg.url(), "repo", config_json);
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.docker.distribution.manifest.v2+json\",\
         \"config\":{{\"mediaType\":\"application/vnd.docker.container.image.v1+json\",\"size\":{},\"digest\":\"{}\"}},\
         \"layers\":[]}}",
        config.size, config.digest
    );
    let digest = content::push_manifest(
        &reg.url(),
        "repo",
        "v1",
        "application/vnd.docker.distribution.manifest.v2+json",
        manifest.as_bytes(),
    );
    assert_eq!(digest, SUBJECT, "go-containerregistry's empty.Image");
    let dir = "cosign/oci-attestation-bundle";
    let bundle = common::fixtures::read(&format!("{dir}/oci-attestation.sigstore.json"));
    trust::attach_bundle(
        &reg.url(),
        "repo",
        SUBJECT,
        manifest.len(),
        &bundle,
        PREDICATE,
    );
    let root = common::fixtures::root()
        .join(dir)
        .join("trusted_root_pgi.json");
    let config = |subject: &str| {
        format!(
            "listen: {{listen}}\n\
             upstreams:\n  - registry: 127.0.0.1:60943\n    url: {url}\n    default: true\n\
             policy:\n  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    \
             enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n    requireAttestationsBy: [cosign-ci]\n\
             attestors:\n  - name: cosign-ci\n    keyless:\n      trustedRoot: {root}\n      \
             identities: [{{issuer: https://github.com/login/oauth, subject: {subject}}}]\n    \
             attestations: [{{predicateType: {PREDICATE}}}]\n",
            url = reg.url(),
            root = root.display(),
        )
    };
    let proxy = Proxy::start(&config("cody@soyland.com"));
    let r = get_manifest_via(&proxy, "repo", "v1");
    assert_eq!(r.status, 200, "right identity: {}", r.text());
    assert_eq!(r.body, manifest.as_bytes());
    drop(proxy);
    let proxy = Proxy::start(&config("someone@soyland.com"));
    let r = get_manifest_via(&proxy, "repo", "v1");
    common::fake::assert_oci_error(&r, 403, Some("DENIED"), "wrong identity");
    assert!(
        r.text().contains(
            "keyless verification failed: the certificate was issued to \\\"cody@soyland.com\\\""
        ),
        "{}",
        r.text()
    );
}

/// cosign v2's keyless `.att`: a DSSE envelope whose certificate and Rekor
/// entry (`dsse`) travel as layer annotations. SLSA provenance with the
/// right builder, signed by the release workflow, admits; the same
/// statement signed by another workflow, or without its log entry, does not.
#[test]
fn keyless_att_layers_meet_conditions_under_the_identity() {
    let env = env();
    let now = SystemTime::now();
    let cases = [
        ("acme/att-ok", Issue::now(WORKFLOW, ISSUER), Some(now), None),
        (
            "acme/att-pr",
            Issue::now(
                "https://github.com/acme/app/.github/workflows/pr.yml@refs/heads/x",
                ISSUER,
            ),
            Some(now),
            Some("which no expected identity matches"),
        ),
        (
            "acme/att-unlogged",
            Issue::now(WORKFLOW, ISSUER),
            None,
            Some("no transparency log entry"),
        ),
    ];
    for (i, (repo, issue, integrated, _)) in cases.iter().enumerate() {
        let digest = push(&env, repo, 70 + i as u64);
        let statement = serde_json::to_vec(&serde_json::json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": format!("{}/{repo}", env.reg.host()), "digest": {"sha256": digest.trim_start_matches("sha256:")}}],
            "predicateType": SLSA_V1,
            "predicate": {"runDetails": {"builder": {"id": BUILDER}}}
        }))
        .expect("JSON");
        let att = env.ours.att_keyless(&statement, issue, *integrated);
        push_cosign(
            &env.reg.url(),
            repo,
            &digest,
            "att",
            sigstore::DSSE_ENVELOPE,
            &att,
        );
    }
    let attestations = format!(
        "\x20   attestations:\n\
         \x20     - predicateType: {SLSA_V1}\n\
         \x20       conditions: [{{path: /runDetails/builder/id, equals: \"{BUILDER}\"}}]\n"
    );
    let proxy = Proxy::start(&config(&env.reg, &env.root, &attestations));
    for (repo, _, _, denied) in &cases {
        let r = get_manifest_via(&proxy, repo, "v1");
        match denied {
            None => assert_eq!(r.status, 200, "{repo}: {}", r.text()),
            Some(says) => {
                trust::assert_denied_keyless(&r, says, repo);
            }
        }
    }
}
