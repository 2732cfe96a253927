//! Evidence beyond cosign's tags, end to end with a real distribution
//! registry and real clients:
//!
//! - Binary Authorization occurrences (the JSON `gcloud container binauthz
//!   attestations list --format=json` prints), signed with OpenSSL,
//!   imported with `portcullis attestations import` into the attestation
//!   store, admit an image the registry holds no signature for — picked
//!   up without a restart;
//! - sigstore bundles (cosign v3's format) attached as OCI 1.1 referrers
//!   admit an image: through the `sha256-<hex>` tag-schema fallback on
//!   distribution (which has no referrers API), and through the referrers
//!   API on an upstream that has one.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use common::content::{self, sha256_digest};
use common::fake::Fake;
use common::registry::Registry;
use common::trust::pull_v1 as pull;
use common::trust::{self, KeyPair, PORTCULLIS};
use common::Proxy;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const KMS_KEY_ID: &str = "//cloudkms.googleapis.com/v1/projects/demo/locations/global/keyRings/binauthz/cryptoKeys/ci/cryptoKeyVersions/1";
const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
const SLSA_V1: &str = "https://slsa.dev/provenance/v1";
const BUILDER: &str = "https://ci.example.com/builder@v1";

fn pem_block(pem: &str, indent: usize) -> String {
    pem.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(indent)))
        .collect()
}

fn portcullis(args: &[&str], config: &Path) -> Output {
    Command::new(PORTCULLIS)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

// ------------------------------------------------ Binary Authorization

/// The payload exactly as `gcloud container binauthz
/// create-signature-payload` writes it: pretty, sorted, newline-terminated.
fn binauthz_payload(repository: &str, digest: &str) -> String {
    format!(
        "{{\n  \"critical\": {{\n    \"identity\": {{\n      \"docker-reference\": \"{repository}\"\n    }},\n    \
         \"image\": {{\n      \"docker-manifest-digest\": \"{digest}\"\n    }},\n    \
         \"type\": \"Google cloud binauthz container signature\"\n  }}\n}}\n"
    )
}

/// An occurrence as `gcloud … attestations list --format=json` prints it,
/// the signature in URL-safe base64 as gcloud shows KMS signatures.
fn occurrence(
    dir: &Path,
    key: &KeyPair,
    key_id: &str,
    repository: &str,
    digest: &str,
) -> serde_json::Value {
    let payload = binauthz_payload(repository, digest);
    let signature = trust::openssl_sign(dir, key, payload.as_bytes());
    serde_json::json!({
        "attestation": {
            "serializedPayload": B64.encode(payload.as_bytes()),
            "signatures": [{
                "publicKeyId": key_id,
                "signature": base64::engine::general_purpose::URL_SAFE.encode(signature),
            }],
        },
        "createTime": "2026-11-29T10:00:00.000000Z",
        "kind": "ATTESTATION",
        "name": format!("projects/demo/occurrences/{}", &digest[7..19]),
        "noteName": "projects/demo/notes/built-by-ci",
        "resourceUri": format!("https://{repository}@{digest}"),
        "updateTime": "2026-11-29T10:00:00.000000Z",
    })
}

fn binauthz_config(registry: &Registry, key: &KeyPair, store: &Path) -> String {
    format!(
        "listen: {{listen}}\nupstreams:\n  - registry: {host}\n    url: {url}\n\
         policy:\n  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    \
         enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n    requireAttestationsBy: [built-by-ci]\n\
         attestors:\n  - name: built-by-ci\n    publicKeys:\n      - id: \"{KMS_KEY_ID}\"\n        pkixPublicKey:\n          \
         signatureAlgorithm: ECDSA_P256_SHA256\n          publicKeyPem: |\n{pem}\
         attestationStore:\n  path: {store}\n\
         cache: {{allowTtl: 10m, denyTtl: 10m}}\n",
        host = registry.host(),
        url = registry.url(),
        pem = pem_block(&key.pem, 12),
        store = store.display(),
    )
}

#[test]
fn binauthz_occurrences_imported_into_the_store_admit_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("attestations");
    let registry = Registry::start();
    let ci = trust::keygen(dir.path(), "ci");
    let other = trust::keygen(dir.path(), "other");
    let repo = "demo/gke-app";
    let image = content::push_image(
        &registry.url(),
        repo,
        Some("v1"),
        common::host_arch(),
        41,
        &[256],
    );
    let reference = format!("{}/{repo}", registry.host());

    let proxy = Proxy::start(&binauthz_config(&registry, &ci, &store));
    let config = proxy.config_path();
    // No signature anywhere yet: denied (and the denial is cached).
    let denied = pull(&proxy, repo);
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert!(
        denied.text().contains("no signatures found"),
        "{}",
        denied.text()
    );

    // Invalid occurrences are refused, and nothing is written.
    let list = dir.path().join("gcloud.json");
    let forged = occurrence(dir.path(), &other, KMS_KEY_ID, &reference, &image.digest);
    let mut tampered = occurrence(dir.path(), &ci, KMS_KEY_ID, &reference, &image.digest);
    let other_digest = format!("sha256:{}", "e".repeat(64));
    tampered["attestation"]["serializedPayload"] = B64
        .encode(binauthz_payload(&reference, &other_digest))
        .into();
    let good = occurrence(dir.path(), &ci, KMS_KEY_ID, &reference, &image.digest);
    for (bad, why) in [
        (&forged, "verifies with no configured attestor key"),
        // The payload was changed after signing: its signature no longer
        // verifies with the attestor key that made it.
        (&tampered, "verifies with no configured attestor key"),
    ] {
        std::fs::write(
            &list,
            serde_json::to_vec_pretty(&serde_json::json!([good, bad])).unwrap(),
        )
        .unwrap();
        let out = portcullis(&["attestations", "import", list.to_str().unwrap()], &config);
        let text = trust::output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("nothing imported"), "{text}");
        assert!(text.contains("occurrence 2"), "{text}");
        assert!(text.contains(why), "{text}");
        let written = std::fs::read_dir(&store).map(|d| d.count()).unwrap_or(0);
        assert_eq!(written, 0, "a refused import wrote files");
    }

    // The valid list is imported ...
    std::fs::write(
        &list,
        serde_json::to_vec_pretty(&serde_json::json!([good])).unwrap(),
    )
    .unwrap();
    let out = portcullis(&["attestations", "import", list.to_str().unwrap()], &config);
    let text = trust::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&image.digest), "{text}");

    // ... and admits the image at the running proxy, without a restart.
    assert!(
        trust::wait_until(Duration::from_secs(10), || pull(&proxy, repo).status == 200),
        "the imported occurrence was not picked up:\n{}",
        proxy.logs()
    );
    let pulled = dir.path().join("pulled");
    let out = trust::skopeo_copy(&format!("{}/{repo}:v1", proxy.host()), &pulled);
    trust::assert_succeeded(&out, "skopeo copy through the proxy");
    assert_eq!(trust::dir_manifest_digest(&pulled), image.digest);

    // `verify` and `attestations list` say where the evidence came from.
    let out = portcullis(&["verify", &format!("{reference}:v1")], &config);
    let text = trust::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("[store]"), "{text}");
    assert!(text.contains(KMS_KEY_ID), "{text}");
    let out = portcullis(
        &["attestations", "list", &format!("{reference}:v1")],
        &config,
    );
    let text = trust::output_text(&out);
    eprintln!("--- portcullis attestations list:\n{text}");
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("[store]") && text.contains("binauthz-occurrence"),
        "{text}"
    );
    assert!(text.contains("✓ built-by-ci"), "{text}");
}

// ------------------------------------------------------ sigstore bundles

/// An in-toto Statement v1 about `digest`, as cosign v3 writes it.
fn statement(digest: &str, predicate_type: &str, predicate: Option<serde_json::Value>) -> Vec<u8> {
    let mut s = serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"digest": {"sha256": digest.trim_start_matches("sha256:")}, "annotations": {}}],
        "predicateType": predicate_type,
    });
    if let Some(p) = predicate {
        s["predicate"] = p;
    }
    serde_json::to_vec(&s).unwrap()
}

/// A key-based sigstore bundle v0.3 whose DSSE envelope OpenSSL signed.
fn bundle(dir: &Path, key: &KeyPair, statement: &[u8]) -> Vec<u8> {
    let (envelope, signature) = trust::openssl_dsse(dir, key, statement);
    let der = B64
        .decode(
            key.pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let hint = B64.encode(sha2_digest(&der));
    serde_json::to_vec(&serde_json::json!({
        "mediaType": BUNDLE_V03,
        "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": []},
        // protojson: no keyid when empty.
        "dsseEnvelope": {
            "payload": envelope["payload"],
            "payloadType": envelope["payloadType"],
            "signatures": [{"sig": signature}],
        },
    }))
    .unwrap()
}

fn sha2_digest(bytes: &[u8]) -> Vec<u8> {
    let hex = sha256_digest(bytes);
    (0..32)
        .map(|i| u8::from_str_radix(&hex[7 + 2 * i..9 + 2 * i], 16).unwrap())
        .collect()
}

fn bundle_config(registry_host: &str, url: &str, signer: &KeyPair, ci: &KeyPair) -> String {
    format!(
        "listen: {{listen}}\nupstreams:\n  - registry: {registry_host}\n    url: {url}\n\
         policy:\n  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    \
         enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n    requireAttestationsBy: [release-signer]\n  \
         repositoryAdmissionRules:\n    \"{registry_host}/built/**\":\n      evaluationMode: REQUIRE_ATTESTATION\n      \
         enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n      requireAttestationsBy: [built-by-ci]\n\
         attestors:\n  - name: release-signer\n    publicKeys:\n      - id: release\n        pkixPublicKey:\n          \
         signatureAlgorithm: ECDSA_P256_SHA256\n          publicKeyPem: |\n{signer_pem}\
         \x20 - name: built-by-ci\n    publicKeys:\n      - id: ci\n        pkixPublicKey:\n          \
         signatureAlgorithm: ECDSA_P256_SHA256\n          publicKeyPem: |\n{ci_pem}\
         \x20   attestations:\n      - predicateType: {SLSA_V1}\n        conditions:\n          \
         - {{path: /runDetails/builder/id, equals: \"{BUILDER}\"}}\n",
        signer_pem = pem_block(&signer.pem, 12),
        ci_pem = pem_block(&ci.pem, 12),
    )
}

fn provenance(builder: &str) -> serde_json::Value {
    serde_json::json!({
        "buildDefinition": {"buildType": "https://ci.example.com/build/v1", "externalParameters": {}},
        "runDetails": {"builder": {"id": builder}},
    })
}

#[test]
fn referrer_bundles_admit_images_through_the_tag_schema_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let signer = trust::keygen(dir.path(), "release");
    let ci = trust::keygen(dir.path(), "ci");
    let stranger = trust::keygen(dir.path(), "stranger");
    let arch = common::host_arch();
    let url = registry.url();

    // (repository, key, statement kind) → expected outcome.
    let cases: [(&str, &KeyPair, Option<&str>, Option<&str>); 5] = [
        ("signed/app", &signer, None, None),
        (
            "forged/app",
            &stranger,
            None,
            Some("by unknown key or altered"),
        ),
        ("built/app", &ci, Some(BUILDER), None),
        (
            "built/elsewhere",
            &ci,
            Some("https://evil.example/builder"),
            Some("condition failed: /runDetails/builder/id"),
        ),
        (
            "unsigned/app",
            &signer,
            Some("-"),
            Some("no signatures found"),
        ),
    ];
    let mut digests = Vec::new();
    for (i, (repo, key, builder, _)) in cases.iter().enumerate() {
        let image = content::push_image(&url, repo, Some("v1"), arch, 60 + i as u64, &[128]);
        let (_, manifest) = trust::get_manifest(&url, repo, "v1").unwrap();
        digests.push(image.digest.clone());
        if *builder == Some("-") {
            continue;
        }
        let statement = match builder {
            None => statement(&image.digest, SIGN_PREDICATE, None),
            Some(b) => statement(&image.digest, SLSA_V1, Some(provenance(b))),
        };
        let predicate = if builder.is_some() {
            SLSA_V1
        } else {
            SIGN_PREDICATE
        };
        let bundle = bundle(dir.path(), key, &statement);
        let mut push = |bytes: &[u8]| content::push_blob(&url, repo, bytes).digest;
        let (manifest_bytes, descriptor) =
            trust::referrer(&mut push, &image.digest, manifest.len(), &bundle, predicate);
        let pushed = content::push_manifest(
            &url,
            repo,
            &sha256_digest(&manifest_bytes),
            "application/vnd.oci.image.manifest.v1+json",
            &manifest_bytes,
        );
        assert_eq!(
            Some(&pushed),
            descriptor["digest"].as_str().map(str::to_owned).as_ref()
        );
        // distribution 2.8 has no referrers API: the index goes under the
        // referrers tag, as clients do for such registries.
        content::push_manifest(
            &url,
            repo,
            &image.digest.replace(':', "-"),
            "application/vnd.oci.image.index.v1+json",
            &trust::index(&[descriptor]),
        );
    }
    let no_api =
        common::http::get(&format!("{url}/v2/signed/app/referrers/{}", digests[0])).unwrap();
    assert_eq!(
        no_api.status, 404,
        "this registry has a referrers API; the fallback is not exercised"
    );

    let proxy = Proxy::start(&bundle_config(&registry.host(), &url, &signer, &ci));
    for (i, (repo, _, _, denial)) in cases.iter().enumerate() {
        let r = pull(&proxy, repo);
        match denial {
            None => {
                assert_eq!(r.status, 200, "{repo}: {}", r.text());
                assert_eq!(sha256_digest(&r.body), digests[i], "{repo}");
            }
            Some(why) => {
                assert_eq!(r.status, 403, "{repo}: {}", r.text());
                assert!(
                    r.text().contains(why),
                    "{repo}: expected {why:?} in {}",
                    r.text()
                );
            }
        }
    }
    // Real clients pull the admitted images.
    for repo in ["signed/app", "built/app"] {
        let pulled = dir.path().join(repo.replace('/', "-"));
        let out = trust::skopeo_copy(&format!("{}/{repo}:v1", proxy.host()), &pulled);
        trust::assert_succeeded(&out, &format!("skopeo copy {repo}"));
    }
    // The evidence is recorded as a referrer with its signed predicate type.
    let out = portcullis(
        &["verify", &format!("{}/built/app:v1", registry.host())],
        &proxy.config_path(),
    );
    let text = trust::output_text(&out);
    eprintln!("--- portcullis verify:\n{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("[referrer]"), "{text}");
    assert!(text.contains(SLSA_V1), "{text}");
}

#[test]
fn referrer_bundles_are_read_through_the_referrers_api() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let signer = trust::keygen(dir.path(), "release");
    let ci = trust::keygen(dir.path(), "ci");
    let repo = "signed/app";
    let image = content::push_image(
        &registry.url(),
        repo,
        Some("v1"),
        common::host_arch(),
        77,
        &[64],
    );
    // An upstream with the referrers API (distribution has none), serving
    // the same image.
    let fake = Fake::start();
    let (_, manifest) = trust::copy_to_fake(&registry.url(), repo, "v1", Some("v1"), &fake);
    let bundle = bundle(
        dir.path(),
        &signer,
        &statement(&image.digest, SIGN_PREDICATE, None),
    );
    let mut push = |bytes: &[u8]| fake.put_blob(repo, bytes);
    let (referrer_manifest, descriptor) = trust::referrer(
        &mut push,
        &image.digest,
        manifest.len(),
        &bundle,
        SIGN_PREDICATE,
    );
    fake.put_manifest(
        repo,
        None,
        "application/vnd.oci.image.manifest.v1+json",
        &referrer_manifest,
    );
    fake.put_referrers(repo, &image.digest, &trust::index(&[descriptor]));

    let proxy = Proxy::start(&bundle_config(&registry.host(), &fake.url(), &signer, &ci));
    let r = pull(&proxy, repo);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sha256_digest(&r.body), image.digest);
    assert!(
        fake.hits(&format!("/v2/{repo}/referrers/{}", image.digest)) >= 1,
        "the referrers API was not asked"
    );
    assert_eq!(
        fake.hits(&format!(
            "/v2/{repo}/manifests/{}",
            image.digest.replace(':', "-")
        )),
        0,
        "the tag fallback was read although the API answered"
    );
}

#[test]
fn bundles_are_bound_to_the_repository_their_signed_statement_names() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let signer = trust::keygen(dir.path(), "release");
    let ci = trust::keygen(dir.path(), "ci");
    let arch = common::host_arch();
    let url = registry.url();
    let host = registry.host();
    // The same image in four repositories (same seed, same digest).
    let repos = ["team/app", "copy/app", "anon/app", "strict/app"];
    let mut image = None;
    for repo in repos {
        image = Some(content::push_image(
            &url,
            repo,
            Some("v1"),
            arch,
            90,
            &[256],
        ));
    }
    let image = image.unwrap();
    let size = image.manifest.len();
    // cosign v3's signature statement names the repository it signed.
    let named = serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": format!("{host}/team/app"), "digest": {"sha256": image.digest.trim_start_matches("sha256:")}}],
        "predicateType": SIGN_PREDICATE,
    }))
    .unwrap();
    let named = bundle(dir.path(), &signer, &named);
    // Made for team/app, and copied with the image into copy/app.
    trust::attach_bundle(
        &url,
        "team/app",
        &image.digest,
        size,
        &named,
        SIGN_PREDICATE,
    );
    trust::attach_bundle(
        &url,
        "copy/app",
        &image.digest,
        size,
        &named,
        SIGN_PREDICATE,
    );
    // A statement that names no repository binds the digest only.
    let unnamed = bundle(
        dir.path(),
        &signer,
        &statement(&image.digest, SIGN_PREDICATE, None),
    );
    trust::attach_bundle(
        &url,
        "anon/app",
        &image.digest,
        size,
        &unnamed,
        SIGN_PREDICATE,
    );
    trust::attach_bundle(
        &url,
        "strict/app",
        &image.digest,
        size,
        &unnamed,
        SIGN_PREDICATE,
    );

    let config = bundle_config(&host, &url, &signer, &ci).replace(
        "  repositoryAdmissionRules:\n",
        &format!(
            "  repositoryAdmissionRules:\n    \"{host}/strict/**\":\n      evaluationMode: REQUIRE_ATTESTATION\n      \
             requireAttestationsBy: [release-signer]\n      requireNamedIdentity: true\n"
        ),
    );
    let proxy = Proxy::start(&config);
    let r = pull(&proxy, "team/app");
    assert_eq!(
        r.status,
        200,
        "the repository it was made for: {}",
        r.text()
    );
    let r = pull(&proxy, "copy/app");
    assert_eq!(
        r.status,
        403,
        "copied into another repository: {}",
        r.text()
    );
    assert!(
        r.text().contains("for another repository")
            && r.text().contains(&format!("{host}/team/app")),
        "{}",
        r.text()
    );
    // Digest-only evidence counts, and the decision says what it binds.
    let r = pull(&proxy, "anon/app");
    assert_eq!(r.status, 200, "{}", r.text());
    let out = portcullis(
        &["verify", &format!("{host}/anon/app:v1")],
        &proxy.config_path(),
    );
    let text = trust::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("names no repository"), "{text}");
    // Unless the rule requires a named identity.
    let r = pull(&proxy, "strict/app");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("requireNamedIdentity"), "{}", r.text());
}
