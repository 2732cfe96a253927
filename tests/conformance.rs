//! Conformance against the third-party signature fixtures in
//! `tests/fixtures` (copied from the team's fixture sets): every case of
//!
//! 1. `containers-image/sigstore`, served the way cosign stores it in a
//!    registry (`synthesized-registry-views`),
//! 2. `connaisseur/cosign`, the recorded registry of
//!    `docker.io/securesystemsengineering/testimage` (single signature and
//!    3-signer accumulation),
//! 3. `wire-captures/cosign-v3.0.4-classic-signature`,
//!
//! gives the result its README states when pulled through the real
//! `portcullis` binary in front of the in-process fake upstream (a real
//! registry cannot hold these image manifests: their layers are not in the
//! fixtures).
//!
//! Keyless cases (Fulcio certificates, Rekor entries) are verified under
//! keyless attestors with the embedded Sigstore public-good trusted root.
//! Where a README case depends on something Portcullis deliberately does
//! not have (containers/image's `matchExact`, Rekor SET checks for
//! key-signed signatures, connaisseur's signature thresholds), the test checks
//! the closest Portcullis equivalent and says, next to the assertion, what
//! the README expects and why Portcullis answers what it does.
//!
//! Everything (fake upstream, proxy process) is started per test and torn
//! down on drop, so tests run in parallel.

mod common;

use common::fake::{assert_oci_error, sha256_digest, Fake};
use common::fixtures::{
    self, connaisseur_key, containers_image_key, policy_config, put_connaisseur, put_sig_manifest,
    run_verify, spki_pem_of_certificate, Attestor, Key, SigLayer, View, ACCEPT_ALL,
};
use common::http::{self, Response};
use common::Proxy;

/// The registry the containers-image fixtures were signed for.
const CI_REGISTRY: &str = "192.168.64.2:5000";
/// The repository their cosign signatures name.
const CI_REPO: &str = "cosign-signed-single-sample";
/// The image every cosign-made containers-image signature signs.
const CI_IMAGE_DIGEST: &str =
    "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn get_manifest(proxy: &Proxy, repo: &str, reference: &str) -> Response {
    manifest_request(proxy, "GET", repo, reference)
}

fn manifest_request(proxy: &Proxy, method: &str, repo: &str, reference: &str) -> Response {
    http::request(
        method,
        &format!("{}/v2/{repo}/manifests/{reference}", proxy.url()),
        &[("Accept", ACCEPT_ALL)],
        &[],
    )
    .unwrap_or_else(|e| panic!("{method} {repo}:{reference} through the proxy: {e}"))
}

/// Asserts the proxy served exactly `bytes` (status 200, digest header).
fn assert_served(r: &Response, bytes: &[u8], what: &str) {
    assert_eq!(
        r.status,
        200,
        "{what}: expected the image to be served; got {} {}",
        r.status,
        r.text()
    );
    assert_eq!(
        r.body, bytes,
        "{what}: served bytes differ from the upstream's"
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(sha256_digest(bytes).as_str()),
        "{what}: Docker-Content-Digest"
    );
}

/// A 403 `DENIED` answer: its message and detail.
struct Denial {
    message: String,
    detail: serde_json::Value,
}

impl Denial {
    /// Every evidence `result` string of every attestor in the detail.
    fn evidence(&self) -> Vec<String> {
        self.detail["attestors"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["evidence"].as_array().cloned().unwrap_or_default())
            .map(|e| e["result"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

fn assert_denied(r: &Response, what: &str) -> Denial {
    assert_eq!(
        r.status,
        403,
        "{what}: expected a denial; got {} {}",
        r.status,
        r.text()
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {}", r.text()));
    let err = &v["errors"][0];
    assert_eq!(err["code"], "DENIED", "{what}: {}", r.text());
    Denial {
        message: err["message"].as_str().unwrap_or("").to_string(),
        detail: err["detail"].clone(),
    }
}

/// Asserts a denial whose message contains every one of `parts`.
fn assert_denied_with(r: &Response, parts: &[&str], what: &str) -> Denial {
    let d = assert_denied(r, what);
    for p in parts {
        assert!(
            d.message.contains(p),
            "{what}: denial message lacks {p:?}:\n{}\ndetail: {}",
            d.message,
            d.detail
        );
    }
    d
}

fn p256(id: &str, pem: &str) -> Key {
    Key::p256(id, pem)
}

/// An attestor `cosign-key` holding one containers-image key.
fn ci_attestor(key: &str) -> Attestor {
    Attestor::new("cosign-key", &[p256(key, &containers_image_key(key))])
}

/// Fake + proxy serving the synthesized view of `case` in `repo` (tag
/// `tag`), with attestor `cosign-key` holding containers-image key `key`.
fn ci_setup(case: &str, repo: &str, tag: Option<&str>, key: &str) -> (Fake, Proxy, View) {
    let fake = Fake::start();
    let view = View::load(case);
    view.put(&fake, repo, tag);
    let proxy = Proxy::start(&policy_config(
        CI_REGISTRY,
        &fake,
        &[ci_attestor(key)],
        None,
    ));
    (fake, proxy, view)
}

// ---------------------------------------------------------------------------
// 1. containers-image/sigstore via synthesized-registry-views
// ---------------------------------------------------------------------------

/// `dir-img-cosign-valid` for `192.168.64.2:5000/cosign-signed-single-sample`:
/// VALID (signature by cosign.pub, digest and repository match).
#[test]
fn ci_valid_is_served() {
    let (fake, proxy, view) = ci_setup("dir-img-cosign-valid", CI_REPO, Some("latest"), "cosign");
    let manifest = view.image_manifest.clone().expect("image manifest");
    assert_eq!(view.image_digest().as_deref(), Some(CI_IMAGE_DIGEST));

    let r = get_manifest(&proxy, CI_REPO, CI_IMAGE_DIGEST);
    assert_served(&r, &manifest, "valid, by digest");
    let r = get_manifest(&proxy, CI_REPO, "latest");
    assert_served(&r, &manifest, "valid, by tag");
    let r = manifest_request(&proxy, "HEAD", CI_REPO, "latest");
    assert_eq!(r.status, 200, "HEAD of an admitted image");
    // The signature was looked up where cosign puts it.
    assert!(fake.hits(&format!("/v2/{CI_REPO}/manifests/{}", view.sig_tag)) >= 1);

    // The `.sig` artifact itself is served unverified (exact bytes, and the
    // digest INDEX.tsv records), and so is its payload blob, so that
    // `cosign verify` works through the proxy.
    let r = get_manifest(&proxy, CI_REPO, &view.sig_tag);
    assert_served(&r, &view.sig_manifest, "the .sig manifest");
    assert_eq!(
        sha256_digest(&view.sig_manifest),
        "sha256:4e9e18b27581f5046e09644e683cae2a55187345ca64be139bc2d53e12be04c0"
    );
    for (digest, bytes) in &view.blobs {
        let r = http::get(&format!("{}/v2/{CI_REPO}/blobs/{digest}", proxy.url())).unwrap();
        assert_eq!(r.status, 200, "signature blob {digest}: {}", r.text());
        assert_eq!(&r.body, bytes, "signature blob {digest}");
    }

    let cfg = policy_config(CI_REGISTRY, &fake, &[ci_attestor("cosign")], None);
    let v = run_verify(&cfg, &format!("{CI_REGISTRY}/{CI_REPO}@{CI_IMAGE_DIGEST}"));
    assert_eq!(v.code, Some(0), "verify should allow:\n{}", v.output());
    assert!(v.stdout.contains("ALLOW"), "{}", v.output());
    assert!(
        v.stdout.contains("valid, verified with key cosign"),
        "{}",
        v.output()
    );
}

/// `dir-img-cosign-valid (identity)`: the same image pulled as
/// `testing/manifest:notlatest` is INVALID (docker-reference names another
/// repository).
#[test]
fn ci_valid_under_another_repository_is_denied() {
    let repo = "testing/manifest";
    let (fake, proxy, view) = ci_setup("dir-img-cosign-valid", repo, Some("notlatest"), "cosign");
    let r = get_manifest(&proxy, repo, "notlatest");
    let d = assert_denied_with(
        &r,
        &[
            &format!("image {CI_REGISTRY}/{repo}@{CI_IMAGE_DIGEST}"),
            "denied by default admission rule",
            "attestor cosign-key: no valid signature (1 checked: 1 for another repository)",
        ],
        "valid signature, other repository",
    );
    assert!(
        d.evidence()
            .iter()
            .any(|e| e.contains(&format!("{CI_REGISTRY}/{CI_REPO}"))),
        "evidence names the signed repository: {}",
        d.detail
    );
    let r = manifest_request(&proxy, "HEAD", repo, "notlatest");
    assert_eq!(r.status, 403, "HEAD of a denied image answers 403");
    assert!(r.body.is_empty());
    // The denied image is not served by digest either.
    let r = get_manifest(&proxy, repo, &view.image_digest().unwrap());
    assert_denied(&r, "by digest");

    let cfg = policy_config(CI_REGISTRY, &fake, &[ci_attestor("cosign")], None);
    let v = run_verify(&cfg, &format!("{CI_REGISTRY}/{repo}:notlatest"));
    assert_eq!(v.code, Some(1), "verify should deny:\n{}", v.output());
    assert!(v.stdout.contains("DENY"), "{}", v.output());
    assert!(
        v.stdout.contains(&format!(
            "valid signature, but for another repository ({CI_REGISTRY}/{CI_REPO})"
        )),
        "{}",
        v.output()
    );
}

/// `dir-img-cosign-valid (matchExact)`: containers/image's `matchExact`
/// makes this INVALID because cosign signs the repository without a tag.
/// Portcullis has no `matchExact`: it binds a signature to the digest and
/// the repository and ignores tags by design (tags are mutable; the issue
/// says "tag, if present, ignored"). The closest Portcullis policy is the
/// strictest identity it has, `exactRepository`, and under it the image is
/// served whatever tag it is pulled by. A different `exactRepository` denies.
#[test]
fn ci_valid_match_exact_maps_to_exact_repository() {
    let fake = Fake::start();
    let view = View::load("dir-img-cosign-valid");
    view.put(&fake, CI_REPO, Some("notlatest"));
    let manifest = view.image_manifest.clone().unwrap();
    let exact = format!("{{exactRepository: \"{CI_REGISTRY}/{CI_REPO}\"}}");
    let proxy = Proxy::start(&policy_config(
        CI_REGISTRY,
        &fake,
        &[ci_attestor("cosign")],
        Some(&exact),
    ));
    let r = get_manifest(&proxy, CI_REPO, "notlatest");
    assert_served(&r, &manifest, "exactRepository, pulled by tag");
    drop(proxy);

    let other = format!("{{exactRepository: \"{CI_REGISTRY}/testing/manifest\"}}");
    let proxy = Proxy::start(&policy_config(
        CI_REGISTRY,
        &fake,
        &[ci_attestor("cosign")],
        Some(&other),
    ));
    let r = get_manifest(&proxy, CI_REPO, "notlatest");
    assert_denied_with(
        &r,
        &["1 checked: 1 for another repository"],
        "exactRepository naming another repository",
    );
}

/// `dir-img-cosign-valid-2`: VALID (two valid signatures);
/// `(identity) this/does-not:match`: INVALID, both fail identity.
#[test]
fn ci_valid_2() {
    let (fake, proxy, view) = ci_setup("dir-img-cosign-valid-2", CI_REPO, Some("latest"), "cosign");
    let manifest = view.image_manifest.clone().unwrap();
    let r = get_manifest(&proxy, CI_REPO, "latest");
    assert_served(&r, &manifest, "valid-2");
    let cfg = policy_config(CI_REGISTRY, &fake, &[ci_attestor("cosign")], None);
    let v = run_verify(&cfg, &format!("{CI_REGISTRY}/{CI_REPO}:latest"));
    assert_eq!(v.code, Some(0), "{}", v.output());
    assert_eq!(
        v.stdout.matches("valid, verified with key cosign").count(),
        2,
        "both layers verify:\n{}",
        v.output()
    );

    let other = "this/does-not";
    view.put(&fake, other, Some("match"));
    let r = get_manifest(&proxy, other, "match");
    assert_denied_with(
        &r,
        &["attestor cosign-key: no valid signature (2 checked: 2 for another repository)"],
        "valid-2 under this/does-not:match",
    );
}

/// `dir-img-cosign-mixed`: signature-1 by an unknown key, signature-2 valid
/// → VALID (any valid signature suffices).
#[test]
fn ci_mixed_any_valid_signature_suffices() {
    let (fake, proxy, view) = ci_setup("dir-img-cosign-mixed", CI_REPO, Some("latest"), "cosign");
    let r = get_manifest(&proxy, CI_REPO, "latest");
    assert_served(&r, view.image_manifest.as_ref().unwrap(), "mixed");

    let cfg = policy_config(CI_REGISTRY, &fake, &[ci_attestor("cosign")], None);
    let v = run_verify(&cfg, &format!("{CI_REGISTRY}/{CI_REPO}:latest"));
    assert_eq!(v.code, Some(0), "{}", v.output());
    let layer1 = v
        .stdout
        .lines()
        .find(|l| l.contains("layer 1:"))
        .unwrap_or_else(|| panic!("no layer 1 line:\n{}", v.output()));
    assert!(
        layer1.contains("does not verify with any of the attestor's keys"),
        "{layer1}"
    );
    let layer2 = v
        .stdout
        .lines()
        .find(|l| l.contains("layer 2:"))
        .unwrap_or_else(|| panic!("no layer 2 line:\n{}", v.output()));
    assert!(
        layer2.contains("valid, verified with key cosign"),
        "{layer2}"
    );

    // Without the valid layer (signature-1 alone) the image is denied: the
    // unknown-key signature never counts.
    let fake = Fake::start();
    view.put(&fake, CI_REPO, Some("latest"));
    let s1 = SigLayer::load("containers-image/sigstore/dir-img-cosign-mixed/signature-1");
    put_sig_manifest(&fake, CI_REPO, CI_IMAGE_DIGEST, &[s1]);
    let proxy = Proxy::start(&policy_config(
        CI_REGISTRY,
        &fake,
        &[ci_attestor("cosign")],
        None,
    ));
    let r = get_manifest(&proxy, CI_REPO, "latest");
    assert_denied_with(
        &r,
        &["1 checked: 1 by unknown key or altered"],
        "mixed, signature-1 only",
    );
}

/// `dir-img-cosign-modified-manifest`: the signature verifies but
/// sha256(manifest.json) = d9dcafdb… (INDEX.tsv; the README's "2edc21ff…"
/// does not match the fixture bytes, the binding is what matters) ≠ the
/// signed 634a8f35… → INVALID.
#[test]
fn ci_modified_manifest_is_denied() {
    let (fake, proxy, view) = ci_setup(
        "dir-img-cosign-modified-manifest",
        CI_REPO,
        Some("latest"),
        "cosign",
    );
    let digest = view.image_digest().unwrap();
    assert_eq!(
        digest,
        "sha256:d9dcafdb480aa7c475e91737b96925e45844213dcb0290b4a90017459121f71f"
    );
    let r = get_manifest(&proxy, CI_REPO, "latest");
    let d = assert_denied_with(
        &r,
        &[
            &format!("image {CI_REGISTRY}/{CI_REPO}@{digest}"),
            "attestor cosign-key: no valid signature (1 checked: 1 for another digest)",
        ],
        "modified manifest",
    );
    assert!(
        d.evidence().iter().any(|e| e.contains(CI_IMAGE_DIGEST)),
        "the evidence names the signed digest: {}",
        d.detail
    );
    let r = manifest_request(&proxy, "HEAD", CI_REPO, &digest);
    assert_eq!(r.status, 403);

    let cfg = policy_config(CI_REGISTRY, &fake, &[ci_attestor("cosign")], None);
    let v = run_verify(&cfg, &format!("{CI_REGISTRY}/{CI_REPO}:latest"));
    assert_eq!(v.code, Some(1), "{}", v.output());
    assert!(
        v.stdout.contains(&format!(
            "valid signature, but for another digest ({CI_IMAGE_DIGEST})"
        )),
        "{}",
        v.output()
    );
}

/// `dir-img-cosign-manifest-digest-error`: a broken schema 1 manifest
/// (`"signatures": 1`) → INVALID. containers/image fails because it cannot
/// compute a schema 1 digest (it strips JWS signatures first). Portcullis
/// digests the exact bytes it serves (dc6d2c1a…), so the digest is always
/// computable; the only signature stored for that digest signs 634a8f35…,
/// so the image is denied as "for another digest". Same verdict, different
/// (and for Portcullis the only possible) reason.
#[test]
fn ci_manifest_digest_error_is_denied() {
    let (_fake, proxy, view) = ci_setup(
        "dir-img-cosign-manifest-digest-error",
        CI_REPO,
        Some("latest"),
        "cosign",
    );
    let digest = view.image_digest().unwrap();
    assert_eq!(
        digest,
        "sha256:dc6d2c1a204b02b1ed4d0a9b29f075d24317a37da08041f89a88a2ebffbe46d8"
    );
    for reference in ["latest", digest.as_str()] {
        let r = get_manifest(&proxy, CI_REPO, reference);
        assert_denied_with(
            &r,
            &["1 checked: 1 for another digest"],
            &format!("schema 1 manifest by {reference}"),
        );
    }
}

/// `dir-img-cosign-no-manifest`: the signature exists but the manifest
/// does not → INVALID (nothing to serve).
#[test]
fn ci_no_manifest_is_not_served() {
    let (fake, proxy, view) = ci_setup("dir-img-cosign-no-manifest", CI_REPO, None, "cosign");
    assert!(view.image_manifest.is_none());
    assert_eq!(view.sig_subject(), CI_IMAGE_DIGEST);
    for reference in [CI_IMAGE_DIGEST, "latest"] {
        let r = get_manifest(&proxy, CI_REPO, reference);
        assert_oci_error(
            &r,
            404,
            Some("MANIFEST_UNKNOWN"),
            "manifest missing upstream",
        );
    }
    let cfg = policy_config(CI_REGISTRY, &fake, &[ci_attestor("cosign")], None);
    let v = run_verify(&cfg, &format!("{CI_REGISTRY}/{CI_REPO}@{CI_IMAGE_DIGEST}"));
    assert_eq!(
        v.code,
        Some(2),
        "verify of a missing image is an error:\n{}",
        v.output()
    );
}

/// `dir-img-cosign-other-attachment`: the only layer has media type
/// `text/plain` (with a copied signature annotation) → "no signatures",
/// INVALID. Served under the repository the copied signature would name,
/// so that the only reason left is the media type.
#[test]
fn ci_other_attachment_is_not_a_signature() {
    let (fake, proxy, view) = ci_setup(
        "dir-img-cosign-other-attachment",
        CI_REPO,
        Some("latest"),
        "cosign",
    );
    let r = get_manifest(&proxy, CI_REPO, "latest");
    assert_denied_with(
        &r,
        &["attestor cosign-key: no valid signature (no signatures found)"],
        "text/plain attachment",
    );
    // The non-signature layer's blob was never even fetched.
    let text_layer = "sha256:984f1ead5208ea66abf3f597b3d759b18631417c4dcda4ccc1f8838c94bfd433";
    assert!(view.blobs.iter().any(|(d, _)| d == text_layer));
    assert_eq!(fake.hits(&format!("/v2/{CI_REPO}/blobs/{text_layer}")), 0);
}

/// `dir-img-cosign-valid-with-tag` (skopeo-signed; docker-reference
/// `192.168.64.2:5000/skopeo-signed:tag`, `optional` has creator and
/// timestamp): VALID for `:tag` with matchExact. Portcullis matches the
/// repository and ignores the tag, so `:tag` is VALID as the README says.
///
/// README: `:othertag` is INVALID under containers/image's default policy
/// (tag differs from the signed one). Portcullis ignores tags by design
/// (the signature binds the digest; the issue specifies "tag, if present,
/// ignored"), so the same digest pulled as `:othertag` is served. This is
/// a deliberate semantic difference, not a relaxed assertion. Another
/// repository is still denied.
#[test]
fn ci_valid_with_tag() {
    let repo = "skopeo-signed";
    let (fake, proxy, view) =
        ci_setup("dir-img-cosign-valid-with-tag", repo, Some("tag"), "cosign");
    let manifest = view.image_manifest.clone().unwrap();
    let r = get_manifest(&proxy, repo, "tag");
    assert_served(&r, &manifest, "skopeo-signed:tag");

    fake.put_manifest(repo, Some("othertag"), fixtures::DOCKER_MANIFEST, &manifest);
    let r = get_manifest(&proxy, repo, "othertag");
    assert_served(&r, &manifest, "skopeo-signed:othertag (tags ignored)");

    view.put(&fake, CI_REPO, Some("tag"));
    let r = get_manifest(&proxy, CI_REPO, "tag");
    assert_denied_with(
        &r,
        &["1 checked: 1 for another repository"],
        "skopeo signature, other repository",
    );
}

/// `dir-img-cosign-key-rekor-valid` (`cosign-signed/key-1`): VALID with
/// cosign2.pub; INVALID with cosign.pub (wrong key). README also says
/// INVALID when the *Rekor* key is cosign.pub: Rekor bundles are out of
/// Portcullis' scope (ignored), so with cosign2.pub it is served whatever
/// Rekor key one might have in mind; that README variant has no Portcullis
/// equivalent.
#[test]
fn ci_key_rekor_valid() {
    let repo = "cosign-signed/key-1";
    let (fake, proxy, view) = ci_setup(
        "dir-img-cosign-key-rekor-valid",
        repo,
        Some("latest"),
        "cosign2",
    );
    let r = get_manifest(&proxy, repo, "latest");
    assert_served(
        &r,
        view.image_manifest.as_ref().unwrap(),
        "key-rekor with cosign2.pub",
    );
    drop(proxy);

    for wrong in ["cosign", "rekor"] {
        let proxy = Proxy::start(&policy_config(
            CI_REGISTRY,
            &fake,
            &[ci_attestor(wrong)],
            None,
        ));
        let r = get_manifest(&proxy, repo, "latest");
        assert_denied_with(
            &r,
            &["attestor cosign-key: no valid signature (1 checked: 1 by unknown key or altered)"],
            &format!("key-rekor with {wrong}.pub"),
        );
    }
}

/// `dir-img-cosign-fulcio-rekor-valid` (`cosign-signed/fulcio-rekor-1`):
/// VALID with the Fulcio root, the Rekor key and the e-mail identity
/// (mitr@redhat.com, GitHub's OAuth issuer), the certificate checked at
/// the Rekor entry's integrated time (it expired ten minutes after
/// issue, in 2023); "fails with any plain public key". The Fulcio CA and
/// the Rekor key are Sigstore's public-good ones, so the embedded trusted
/// root is the trust material.
#[test]
fn ci_fulcio_rekor_keyless_verifies_under_its_identity_only() {
    let repo = "cosign-signed/fulcio-rekor-1";
    let fake = Fake::start();
    let view = View::load("dir-img-cosign-fulcio-rekor-valid");
    let manifest = view.image_manifest.clone().expect("image manifest");
    view.put(&fake, repo, Some("latest"));
    let identity = |issuer: &str, subject: &str| {
        Attestor::keyless(
            "fulcio",
            &format!("identities:\n- issuer: {issuer}\n  subject: {subject}\n"),
        )
    };
    let right = identity("https://github.com/login/oauth", "mitr@redhat.com");
    let proxy = Proxy::start(&policy_config(
        CI_REGISTRY,
        &fake,
        std::slice::from_ref(&right),
        None,
    ));
    let r = get_manifest(&proxy, repo, "latest");
    assert_served(&r, &manifest, "keyless signature, right identity");
    drop(proxy);

    for (attestor, says) in [
        (
            identity("https://github.com/login/oauth", "someone@redhat.com"),
            "subject \"mitr@redhat.com\" is not \"someone@redhat.com\"",
        ),
        (
            identity("https://accounts.google.com", "mitr@redhat.com"),
            "issuer \"https://github.com/login/oauth\" is not",
        ),
    ] {
        let proxy = Proxy::start(&policy_config(CI_REGISTRY, &fake, &[attestor], None));
        let r = get_manifest(&proxy, repo, "latest");
        let denial = assert_denied_with(
            &r,
            &["1 checked: 1 failing keyless verification"],
            "keyless signature, wrong identity",
        );
        let evidence = denial.evidence();
        assert!(
            evidence.iter().any(|e| e.contains(says)),
            "the evidence names the identity check: {evidence:?}"
        );
    }
    for key in ["cosign", "cosign2", "rekor"] {
        let proxy = Proxy::start(&policy_config(
            CI_REGISTRY,
            &fake,
            &[ci_attestor(key)],
            None,
        ));
        let r = get_manifest(&proxy, repo, "latest");
        assert_denied_with(
            &r,
            &["1 checked: 1 by unknown key or altered"],
            &format!("keyless signature with {key}.pub"),
        );
    }
}

/// `dir-img-cosign-pki-valid` (`localhost:5000/test`): VALID — an RSA-4096
/// PKCS#1 v1.5 SHA-256 signature by a leaf certificate chaining to a
/// private PKI root. Portcullis has no certificate-chain trust; its
/// equivalent is pinning the leaf's public key as an attestor key
/// (`RSA_SIGN_PKCS1_4096_SHA256`), with which it is VALID. A plain cosign
/// key fails. The image manifest has no layers, which must not make it
/// pass as a signature artifact.
#[test]
fn ci_pki_valid_with_pinned_leaf_key() {
    let registry = "localhost:5000";
    let repo = "test";
    let fake = Fake::start();
    let view = View::load("dir-img-cosign-pki-valid");
    view.put(&fake, repo, Some("latest"));
    let cert = fixtures::read_string(
        "containers-image/sigstore/dir-img-cosign-pki-valid/signature-1.cert.pem",
    );
    let leaf = spki_pem_of_certificate(&cert);
    let attestor = Attestor::new(
        "byo-pki",
        &[Key::new("team-a-leaf", &leaf, "RSA_SIGN_PKCS1_4096_SHA256")],
    );
    let proxy = Proxy::start(&policy_config(
        registry,
        &fake,
        std::slice::from_ref(&attestor),
        None,
    ));
    let r = get_manifest(&proxy, repo, "latest");
    assert_served(
        &r,
        view.image_manifest.as_ref().unwrap(),
        "pki-valid with the leaf key",
    );
    let v = run_verify(
        &policy_config(registry, &fake, &[attestor], None),
        &format!("{registry}/{repo}:latest"),
    );
    assert_eq!(v.code, Some(0), "{}", v.output());
    assert!(
        v.stdout.contains("verified with key team-a-leaf"),
        "{}",
        v.output()
    );
    drop(proxy);

    let proxy = Proxy::start(&policy_config(
        registry,
        &fake,
        &[ci_attestor("cosign")],
        None,
    ));
    let r = get_manifest(&proxy, repo, "latest");
    assert_denied_with(
        &r,
        &["1 checked: 1 by unknown key or altered"],
        "pki-valid with cosign.pub",
    );
}

/// `standalone/internal-valid.signature`: VALID (same as dir-img-cosign-valid);
/// `standalone/unknown-cosign-key.signature`: INVALID (unknown key), and
/// neither cosign.pub nor cosign2.pub verifies it.
#[test]
fn ci_standalone_signatures() {
    let view = View::load("dir-img-cosign-valid");
    let manifest = view.image_manifest.clone().unwrap();
    let base = "containers-image/sigstore/standalone";

    let fake = Fake::start();
    fake.put_manifest(
        CI_REPO,
        Some("latest"),
        fixtures::DOCKER_MANIFEST,
        &manifest,
    );
    let internal = SigLayer::load(&format!("{base}/internal-valid.signature"));
    put_sig_manifest(&fake, CI_REPO, CI_IMAGE_DIGEST, &[internal]);
    let proxy = Proxy::start(&policy_config(
        CI_REGISTRY,
        &fake,
        &[ci_attestor("cosign")],
        None,
    ));
    assert_served(
        &get_manifest(&proxy, CI_REPO, "latest"),
        &manifest,
        "internal-valid",
    );

    let fake = Fake::start();
    fake.put_manifest(
        CI_REPO,
        Some("latest"),
        fixtures::DOCKER_MANIFEST,
        &manifest,
    );
    let unknown = SigLayer::load(&format!("{base}/unknown-cosign-key.signature"));
    put_sig_manifest(&fake, CI_REPO, CI_IMAGE_DIGEST, &[unknown]);
    let attestor = Attestor::new(
        "cosign-key",
        &[
            p256("cosign", &containers_image_key("cosign")),
            p256("cosign2", &containers_image_key("cosign2")),
        ],
    );
    let proxy = Proxy::start(&policy_config(CI_REGISTRY, &fake, &[attestor], None));
    assert_denied_with(
        &get_manifest(&proxy, CI_REPO, "latest"),
        &["1 checked: 1 by unknown key or altered"],
        "unknown-cosign-key",
    );
}

/// The negative variants containers/image derives from a valid signature
/// (README: "build them in your harness"): annotation =
/// base64("invalid signature"), truncated base64, base64 with an extra "=",
/// empty signature, the signature repeated twice, no signature annotation
/// → all INVALID. Plus a tampered payload. Each variant lives in its own
/// repository next to an untouched control; `signedIdentity: ignore` makes
/// the signature bytes the only difference between control and variant.
#[test]
fn ci_derived_negative_variants() {
    let view = View::load("dir-img-cosign-valid");
    let manifest = view.image_manifest.clone().unwrap();
    let valid = SigLayer::load("containers-image/sigstore/dir-img-cosign-valid/signature-1");
    let sig = valid.signature();
    let invalid_b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "invalid signature",
    );
    let mut tampered = valid.clone();
    tampered.payload = String::from_utf8(valid.payload.clone())
        .unwrap()
        .replace(CI_REPO, "cosign-signed-single-samplE")
        .into_bytes();
    assert_ne!(tampered.payload, valid.payload);

    let variants: Vec<(&str, SigLayer)> = vec![
        ("control", valid.clone()),
        (
            "invalid-signature",
            valid.with_signature(Some(&invalid_b64)),
        ),
        (
            "truncated",
            valid.with_signature(Some(&sig[..sig.len() / 2])),
        ),
        (
            "extra-padding",
            valid.with_signature(Some(&format!("{sig}="))),
        ),
        ("empty", valid.with_signature(Some(""))),
        (
            "repeated",
            valid.with_signature(Some(&format!("{sig}{sig}"))),
        ),
        ("no-annotation", valid.with_signature(None)),
        ("tampered-payload", tampered),
    ];
    let fake = Fake::start();
    for (name, layer) in &variants {
        let repo = format!("variants/{name}");
        fake.put_manifest(&repo, Some("latest"), fixtures::DOCKER_MANIFEST, &manifest);
        put_sig_manifest(&fake, &repo, CI_IMAGE_DIGEST, std::slice::from_ref(layer));
    }
    let proxy = Proxy::start(&policy_config(
        CI_REGISTRY,
        &fake,
        &[ci_attestor("cosign")],
        Some("ignore"),
    ));
    for (name, _) in &variants {
        let r = get_manifest(&proxy, &format!("variants/{name}"), "latest");
        if *name == "control" {
            assert_served(&r, &manifest, "control");
            continue;
        }
        let d = assert_denied_with(
            &r,
            &["attestor cosign-key: no valid signature (1 checked: 1 "],
            name,
        );
        let expected = match *name {
            "empty" | "no-annotation" => "malformed",
            "tampered-payload" | "invalid-signature" => "by unknown key or altered",
            // Decoding may fail or yield bytes that do not verify: either
            // way the signature does not count.
            _ => "",
        };
        assert!(d.message.contains(expected), "{name}: {}", d.message);
        assert!(
            !d.message.contains("valid signature,"),
            "{name}: {}",
            d.message
        );
    }
}

// ---------------------------------------------------------------------------
// 2. connaisseur/cosign: recorded registry of securesystemsengineering/testimage
// ---------------------------------------------------------------------------

const CONN_REGISTRY: &str = "docker.io";
const CONN_REPO: &str = "securesystemsengineering/testimage";
const CONN_ALICE: &str = "sha256:071bf7a986f1ca9cb2a1f0bc8392822a7777f90d58f2d2c6f271913e08de7c81";
const CONN_ABC: &str = "sha256:bfec161fecb0a887df7cb85e4da327c65986ccda7060cf3cd92171c6c90d7533";

fn conn_attestor(name: &str) -> Attestor {
    Attestor::new(name, &[p256(name, &connaisseur_key(name))])
}

fn conn_manifest(tag: &str) -> Vec<u8> {
    fixtures::read(&format!("{}/manifests/{tag}.json", fixtures::CONNAISSEUR))
}

fn conn_setup(attestors: &[Attestor]) -> (Fake, Proxy) {
    let fake = Fake::start();
    put_connaisseur(&fake, CONN_REPO);
    let proxy = Proxy::start(&policy_config(CONN_REGISTRY, &fake, attestors, None));
    (fake, proxy)
}

/// `:multi-cosigned-alice` with trust root alice: VALID (digest 071bf7a9…);
/// with bob required: INVALID ("missing required signatures from [bob]").
#[test]
fn connaisseur_single_signature() {
    let manifest = conn_manifest("multi-cosigned-alice");
    let (fake, proxy) = conn_setup(&[conn_attestor("alice")]);
    let r = get_manifest(&proxy, CONN_REPO, "multi-cosigned-alice");
    assert_served(&r, &manifest, "alice image, alice key");
    assert_eq!(r.header("docker-content-digest"), Some(CONN_ALICE));
    let r = get_manifest(&proxy, CONN_REPO, CONN_ALICE);
    assert_served(&r, &manifest, "alice image by digest");
    drop(proxy);

    let proxy = Proxy::start(&policy_config(
        CONN_REGISTRY,
        &fake,
        &[conn_attestor("bob")],
        None,
    ));
    let r = get_manifest(&proxy, CONN_REPO, "multi-cosigned-alice");
    assert_denied_with(
        &r,
        &[
            &format!("image {CONN_REGISTRY}/{CONN_REPO}@{CONN_ALICE}"),
            "attestor bob: no valid signature (1 checked: 1 by unknown key or altered)",
        ],
        "alice image, bob key",
    );
    let cfg = policy_config(CONN_REGISTRY, &fake, &[conn_attestor("bob")], None);
    let v = run_verify(
        &cfg,
        &format!("{CONN_REGISTRY}/{CONN_REPO}:multi-cosigned-alice"),
    );
    assert_eq!(v.code, Some(1), "{}", v.output());
    assert!(
        v.stdout.contains("attestor bob: NOT satisfied"),
        "{}",
        v.output()
    );
    assert!(
        v.stdout
            .contains("does not verify with any of the attestor's keys"),
        "{}",
        v.output()
    );
}

/// `:multi-cosigned-alice-bob-charlie`: one `.sig` with three layers over
/// the same payload, signed by alice, bob and charlie: it verifies with any
/// one of the three keys.
#[test]
fn connaisseur_three_signers_verify_with_any_key() {
    let manifest = conn_manifest("multi-cosigned-alice-bob-charlie");
    let fake = Fake::start();
    put_connaisseur(&fake, CONN_REPO);
    for signer in ["alice", "bob", "charlie"] {
        let cfg = policy_config(CONN_REGISTRY, &fake, &[conn_attestor(signer)], None);
        let proxy = Proxy::start(&cfg);
        let r = get_manifest(&proxy, CONN_REPO, "multi-cosigned-alice-bob-charlie");
        assert_served(&r, &manifest, &format!("3-signer image, {signer} key"));
        assert_eq!(r.header("docker-content-digest"), Some(CONN_ABC));
        if signer == "charlie" {
            // The explanation shows which layer counted: the third.
            let v = run_verify(
                &cfg,
                &format!("{CONN_REGISTRY}/{CONN_REPO}:multi-cosigned-alice-bob-charlie"),
            );
            assert_eq!(v.code, Some(0), "{}", v.output());
            let line = |n: usize| {
                v.stdout
                    .lines()
                    .find(|l| l.contains(&format!("layer {n}:")))
                    .unwrap_or_else(|| panic!("no layer {n}:\n{}", v.output()))
                    .to_string()
            };
            assert!(line(1).contains("does not verify"), "{}", v.output());
            assert!(line(2).contains("does not verify"), "{}", v.output());
            assert!(
                line(3).contains("valid, verified with key charlie"),
                "{}",
                v.output()
            );
        }
    }
}

/// Attestor AND: `[alice, bob]` (two attestors, both required) passes for
/// the 3-signer image and fails for the alice-only image, naming bob.
/// This is connaisseur's "required [alice, bob]" / threshold 2 over
/// {alice, bob}.
#[test]
fn connaisseur_attestors_are_anded() {
    let (_fake, proxy) = conn_setup(&[conn_attestor("alice"), conn_attestor("bob")]);
    let r = get_manifest(&proxy, CONN_REPO, "multi-cosigned-alice-bob-charlie");
    assert_served(
        &r,
        &conn_manifest("multi-cosigned-alice-bob-charlie"),
        "3-signer image, [alice, bob]",
    );
    let r = get_manifest(&proxy, CONN_REPO, "multi-cosigned-alice");
    let d = assert_denied_with(
        &r,
        &["attestor bob: no valid signature (1 checked: 1 by unknown key or altered)"],
        "alice image, [alice, bob]",
    );
    assert!(
        !d.message.contains("attestor alice:"),
        "alice is satisfied and is not a reason: {}",
        d.message
    );
    let attestors = d.detail["attestors"].as_array().expect("attestors").clone();
    let satisfied = |name: &str| {
        attestors
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("attestor {name} in detail: {}", d.detail))["satisfied"]
            .clone()
    };
    assert_eq!(satisfied("alice"), true);
    assert_eq!(satisfied("bob"), false);
}

/// connaisseur: "threshold 3 → INVALID (charlie is not a configured trust
/// root)" with trust roots {alice, bob}. Portcullis has no thresholds; the
/// equivalents are (a) one attestor holding alice's and bob's keys (any of
/// them, = threshold 1: VALID) and (b) three required attestors where the
/// third is a key that did not sign (connaisseur's default.pub standing for
/// "a trust root that is not charlie"): INVALID, naming that attestor.
#[test]
fn connaisseur_threshold_equivalents() {
    let manifest = conn_manifest("multi-cosigned-alice-bob-charlie");
    let either = Attestor::new(
        "alice-or-bob",
        &[
            p256("alice", &connaisseur_key("alice")),
            p256("bob", &connaisseur_key("bob")),
        ],
    );
    let (fake, proxy) = conn_setup(&[either]);
    let r = get_manifest(&proxy, CONN_REPO, "multi-cosigned-alice-bob-charlie");
    assert_served(&r, &manifest, "3-signer image, {alice, bob} any-of");
    drop(proxy);

    let proxy = Proxy::start(&policy_config(
        CONN_REGISTRY,
        &fake,
        &[
            conn_attestor("alice"),
            conn_attestor("bob"),
            conn_attestor("default"),
        ],
        None,
    ));
    let r = get_manifest(&proxy, CONN_REPO, "multi-cosigned-alice-bob-charlie");
    let d = assert_denied_with(
        &r,
        &["attestor default: no valid signature (3 checked: 3 by unknown key or altered)"],
        "3-signer image, [alice, bob, default]",
    );
    assert!(!d.message.contains("attestor alice:"), "{}", d.message);
    assert!(!d.message.contains("attestor bob:"), "{}", d.message);
}

/// `:co-unsigned` ("{}", no `.sig`): INVALID, no signatures found;
/// `:co-nonexistent`: INVALID (image does not exist → not served).
#[test]
fn connaisseur_unsigned_and_nonexistent() {
    let (fake, proxy) = conn_setup(&[conn_attestor("alice"), conn_attestor("bob")]);
    let r = get_manifest(&proxy, CONN_REPO, "co-unsigned");
    let digest = sha256_digest(b"{}");
    assert_denied_with(
        &r,
        &[
            &format!("image {CONN_REGISTRY}/{CONN_REPO}@{digest}"),
            "attestor alice: no valid signature (no signatures found)",
            "attestor bob: no valid signature (no signatures found)",
        ],
        "co-unsigned",
    );
    // It looked for the signature and got a 404.
    assert!(
        fake.hits(&format!(
            "/v2/{CONN_REPO}/manifests/{}.sig",
            digest.replacen(':', "-", 1)
        )) >= 1
    );
    let r = get_manifest(&proxy, CONN_REPO, "co-nonexistent");
    assert_oci_error(&r, 404, Some("MANIFEST_UNKNOWN"), "co-nonexistent");

    let cfg = policy_config(CONN_REGISTRY, &fake, &[conn_attestor("alice")], None);
    let v = run_verify(&cfg, &format!("{CONN_REGISTRY}/{CONN_REPO}:co-unsigned"));
    assert_eq!(v.code, Some(1), "{}", v.output());
    assert!(v.stdout.contains("no evidence was found"), "{}", v.output());
}

fn philipp_keyless() -> Attestor {
    Attestor::keyless(
        "philipp-keyless",
        "identities:\n- issuerRegExp: .*github.*\n  subjectRegExp: .*philipp.*\n",
    )
}

/// `:keyless`: VALID under trust root philipp-keyless (issuer regex
/// `github`, subject regex `philipp`), INVALID under bob-keyless (issuer
/// google, subject bob@gmail.com: "none of the expected identities
/// matched"). Connaisseur's `11_keyless.yaml` trust material is Sigstore's
/// public-good Fulcio root and Rekor and CT keys, which the embedded
/// trusted root holds. Portcullis' regular expressions match the whole
/// value, so connaisseur's substring regexes are written `.*github.*`.
/// With key trust roots (alice, bob) the keyless signature is "by unknown
/// key": the certificate in the annotation is never taken as a key.
#[test]
fn connaisseur_keyless_verifies_under_its_identity_only() {
    let manifest = conn_manifest("keyless");
    let philipp = philipp_keyless();
    // The signature names index.docker.io/phbelitz/rekor-test: the image
    // is served under that repository.
    let repo = "phbelitz/rekor-test";
    let fake = Fake::start();
    put_connaisseur(&fake, repo);
    let proxy = Proxy::start(&policy_config(
        CONN_REGISTRY,
        &fake,
        std::slice::from_ref(&philipp),
        None,
    ));
    let r = get_manifest(&proxy, repo, "keyless");
    assert_served(&r, &manifest, "keyless, philipp-keyless");
    drop(proxy);

    let cfg = policy_config(CONN_REGISTRY, &fake, &[philipp], None);
    let v = run_verify(&cfg, &format!("{CONN_REGISTRY}/{repo}:keyless"));
    assert_eq!(v.code, Some(0), "{}", v.output());
    for shown in [
        "philipp.belitz@securesystems.de",
        "https://github.com/login/oauth",
        "log index",
        "integrated at 1717082297",
    ] {
        assert!(
            v.stdout.contains(shown),
            "verify shows {shown:?}: {}",
            v.output()
        );
    }

    let bob = Attestor::keyless(
        "bob-keyless",
        "identities:\n- issuerRegExp: .*google.*\n  subject: bob@gmail.com\n",
    );
    let proxy = Proxy::start(&policy_config(CONN_REGISTRY, &fake, &[bob], None));
    let r = get_manifest(&proxy, repo, "keyless");
    let denial = assert_denied_with(
        &r,
        &["attestor bob-keyless: no valid signature (1 checked: 1 failing keyless verification)"],
        "keyless, bob-keyless",
    );
    let evidence = denial.evidence();
    assert!(
        evidence
            .iter()
            .any(|e| e.contains("which no expected identity matches")),
        "{evidence:?}"
    );
    drop(proxy);

    // Under its own repository the signature still binds the other one.
    put_connaisseur(&fake, CONN_REPO);
    let proxy = Proxy::start(&policy_config(
        CONN_REGISTRY,
        &fake,
        &[philipp_keyless()],
        None,
    ));
    let r = get_manifest(&proxy, CONN_REPO, "keyless");
    assert_denied_with(
        &r,
        &["1 for another repository"],
        "keyless, another repository",
    );
    drop(proxy);

    let proxy = Proxy::start(&policy_config(
        CONN_REGISTRY,
        &fake,
        &[Attestor::new(
            "alice-or-bob",
            &[
                p256("alice", &connaisseur_key("alice")),
                p256("bob", &connaisseur_key("bob")),
            ],
        )],
        None,
    ));
    let r = get_manifest(&proxy, repo, "keyless");
    assert_denied_with(
        &r,
        &[
            "image docker.io/phbelitz/rekor-test@sha256:31dc72a13a0c34b40eb95419d2b2fd67320c856baf3b72da518023ee8d370aee",
            "attestor alice-or-bob: no valid signature (1 checked: 1 by unknown key or altered)",
        ],
        "keyless with key trust roots",
    );
}

/// The recorded registry served under another repository name: alice's
/// signature names `index.docker.io/securesystemsengineering/testimage`, so
/// it does not count for `docker.io/securesystemsengineering/other`.
#[test]
fn connaisseur_signature_is_bound_to_its_repository() {
    let fake = Fake::start();
    put_connaisseur(&fake, CONN_REPO);
    let other = "securesystemsengineering/other";
    put_connaisseur(&fake, other);
    let proxy = Proxy::start(&policy_config(
        CONN_REGISTRY,
        &fake,
        &[conn_attestor("alice")],
        None,
    ));
    // index.docker.io/… in the payload and docker.io/… in the config are
    // one repository.
    let r = get_manifest(&proxy, CONN_REPO, "multi-cosigned-alice");
    assert_served(
        &r,
        &conn_manifest("multi-cosigned-alice"),
        "original repository",
    );
    let r = get_manifest(&proxy, other, "multi-cosigned-alice");
    let d = assert_denied_with(
        &r,
        &["attestor alice: no valid signature (1 checked: 1 for another repository)"],
        "alice image under another repository",
    );
    assert!(
        d.evidence()
            .iter()
            .any(|e| e.contains("index.docker.io/securesystemsengineering/testimage")),
        "{}",
        d.detail
    );
    let r = get_manifest(&proxy, other, "multi-cosigned-alice-bob-charlie");
    assert_denied_with(
        &r,
        &["(3 checked: 1 for another repository, 2 by unknown key or altered)"],
        "3-signer image under another repository",
    );
}

/// formats.md §8.5: a proxy/mirror changes the registry host, so the
/// recorded signatures (identity `index.docker.io/securesystemsengineering/
/// testimage`) do not name the mirror's repository
/// `mirror.local:5000/sse/testimage`: denied under the default
/// `matchRepository`, admitted with the documented
/// `remapIdentity: {prefix, signedPrefix}` form and with `ignore` (the
/// digest binding still holds in every case).
#[test]
fn connaisseur_mirror_remap_identity() {
    let registry = "mirror.local:5000";
    let repo = "sse/testimage";
    let manifest = conn_manifest("multi-cosigned-alice");
    let fake = Fake::start();
    put_connaisseur(&fake, repo);

    let proxy = Proxy::start(&policy_config(
        registry,
        &fake,
        &[conn_attestor("alice")],
        None,
    ));
    let r = get_manifest(&proxy, repo, "multi-cosigned-alice");
    assert_denied_with(
        &r,
        &["attestor alice: no valid signature (1 checked: 1 for another repository)"],
        "mirror, matchRepository",
    );
    drop(proxy);

    let proxy = Proxy::start(&policy_config(
        registry,
        &fake,
        &[conn_attestor("alice")],
        Some("ignore"),
    ));
    let r = get_manifest(&proxy, repo, "multi-cosigned-alice");
    assert_served(&r, &manifest, "mirror, signedIdentity ignore");
    drop(proxy);

    let remap = format!(
        "{{remapIdentity: {{prefix: \"{registry}/sse/\", signedPrefix: \"docker.io/securesystemsengineering/\"}}}}"
    );
    let proxy = Proxy::start(&policy_config(
        registry,
        &fake,
        &[conn_attestor("alice")],
        Some(&remap),
    ));
    let r = get_manifest(&proxy, repo, "multi-cosigned-alice");
    assert_served(&r, &manifest, "mirror, remapIdentity");
    // Identity remapping never stands in for a signature: the unsigned
    // image is still denied.
    let r = get_manifest(&proxy, repo, "co-unsigned");
    assert_denied_with(
        &r,
        &["no signatures found"],
        "mirror, remapIdentity, unsigned",
    );
}

// ---------------------------------------------------------------------------
// 3. wire-captures/cosign-v3.0.4-classic-signature
// ---------------------------------------------------------------------------

const V3: &str = "wire-captures/cosign-v3.0.4-classic-signature";
const V3_REGISTRY: &str = "localhost:15381";
const V3_REPO: &str = "tobby/fixture";
const V3_SUBJECT: &str = "sha256:f20c43161d73848408ef247f0ec7111b19fe58ffebc0cbcaa0d2c8bda4967268";

/// Stores the captured `.sig` manifest, its payload and its (reconstructed,
/// byte-identical) config under the `.sig` tag of `subject` in `repo`.
fn put_v3_capture(fake: &Fake, repo: &str, subject: &str) -> Vec<u8> {
    let sig = fixtures::read(&format!("{V3}/sig-manifest.json"));
    assert_eq!(sig.len(), 558);
    assert_eq!(
        sha256_digest(&sig),
        "sha256:b6872674fc1bef936d1400f22f94b090f3e3eaf53c1b26362d39f3701cd08053"
    );
    assert_eq!(
        fake.put_blob(repo, &fixtures::read(&format!("{V3}/payload.json"))),
        "sha256:3a29d26a2fc848d25ccf9c2288194ca90599e70ef69087644f186e5e7331f28b"
    );
    assert_eq!(
        fake.put_blob(
            repo,
            &fixtures::read(&format!("{V3}/config.RECONSTRUCTED.json"))
        ),
        "sha256:2122b6ad0794d3fdae43a4b477cf1d95d4a38d3c5f10631e199676039b876e37"
    );
    let tag = format!("{}.sig", subject.replacen(':', "-", 1));
    fake.put_manifest(repo, Some(&tag), common::fake::OCI_MANIFEST, &sig);
    sig
}

/// README: VALID with its cosign.pub, wrong key → INVALID. The subject
/// manifest's bytes (sha256:f20c4316…) were not captured, so no proxy can
/// serve the signed image itself: a manifest is only ever admitted under
/// the digest of the bytes served. The capture is therefore replayed next
/// to a stand-in image in `localhost:15381/tobby/fixture`. With the
/// published key the verdict is "valid signature, but for another digest
/// (sha256:f20c4316…)" — Portcullis reports that category only after the
/// signature has verified with the attestor's key (crypto first, then
/// digest), so this is the VALID signature, correctly not transferred to
/// another image. With another key it is "by unknown key or altered".
#[test]
fn cosign_v3_classic_signature() {
    let fake = Fake::start();
    let standin = fake.put_image(V3_REPO, Some("latest"), 3004, 512);
    let sig = put_v3_capture(&fake, V3_REPO, &standin.manifest_digest);
    // The real location too, so the .sig manifest can be fetched by its
    // real tag.
    put_v3_capture(&fake, V3_REPO, V3_SUBJECT);
    let published = Attestor::new(
        "cosign-key",
        &[p256(
            "tobby",
            &fixtures::read_string(&format!("{V3}/cosign.pub")),
        )],
    );
    let cfg = policy_config(V3_REGISTRY, &fake, std::slice::from_ref(&published), None);
    let proxy = Proxy::start(&cfg);

    let r = get_manifest(&proxy, V3_REPO, "latest");
    let d = assert_denied_with(
        &r,
        &["attestor cosign-key: no valid signature (1 checked: 1 for another digest)"],
        "captured signature replayed on a stand-in image",
    );
    assert!(
        d.evidence()
            .iter()
            .any(|e| e == &format!("valid signature, but for another digest ({V3_SUBJECT})")),
        "{}",
        d.detail
    );
    let v = run_verify(&cfg, &format!("{V3_REGISTRY}/{V3_REPO}:latest"));
    assert_eq!(v.code, Some(1), "{}", v.output());
    assert!(
        v.stdout.contains(&format!(
            "valid signature, but for another digest ({V3_SUBJECT})"
        )),
        "{}",
        v.output()
    );

    // The captured .sig manifest is evidence for an image that is not in
    // the repository (the capture has no subject manifest): evidence is
    // served only for admitted images, so it is refused.
    let tag = format!("{}.sig", V3_SUBJECT.replacen(':', "-", 1));
    let r = get_manifest(&proxy, V3_REPO, &tag);
    assert_denied_with(
        &r,
        &[&format!(
            "the image it is evidence for ({V3_SUBJECT}) is not in the repository"
        )],
        "captured .sig manifest of an absent image",
    );
    // The same bytes as evidence of the stand-in, which they do not sign:
    // the stand-in is denied, so they are not served there either.
    let standin_tag = format!("{}.sig", standin.manifest_digest.replacen(':', "-", 1));
    let r = get_manifest(&proxy, V3_REPO, &standin_tag);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains(&sha256_digest(&sig)), "{}", r.text());
    assert!(r.text().contains("not served as evidence"), "{}", r.text());
    drop(proxy);

    // Another key: the same signature does not verify at all.
    let wrong = Attestor::new(
        "cosign-key",
        &[p256("other", &containers_image_key("cosign"))],
    );
    let cfg = policy_config(V3_REGISTRY, &fake, &[wrong], None);
    let proxy = Proxy::start(&cfg);
    let r = get_manifest(&proxy, V3_REPO, "latest");
    assert_denied_with(
        &r,
        &["attestor cosign-key: no valid signature (1 checked: 1 by unknown key or altered)"],
        "captured signature, wrong key",
    );
    let v = run_verify(&cfg, &format!("{V3_REGISTRY}/{V3_REPO}:latest"));
    assert_eq!(v.code, Some(1), "{}", v.output());
    assert!(
        v.stdout
            .contains("does not verify with any of the attestor's keys"),
        "{}",
        v.output()
    );
}

// ---------------------------------------------------------------------------
// 4. connaisseur/notation: a real referrers tag-schema fallback index
// ---------------------------------------------------------------------------

const NOTATION_DIR: &str = "connaisseur/notation/sse-secure-systems/testimage";
const NOTATION_REPO: &str = "sse-secure-systems/testimage";
const NOTATION_SIGNED: &str =
    "sha256:a136cc4e785798e5e8483047cf621cf0a0300a93d47703a3f066c340c070f5cf";
const NOTATION_SIGNATURE: &str =
    "sha256:d397b30282982b80818b2705f8d542d35158bc59d8bf42549f3e898f23d55a77";

/// notation pushed its signature to a registry without the referrers API,
/// so the image's referrers live in the `sha256-a136cc4e…` tag (the real
/// 485-byte index). Portcullis reads that index for sigstore bundles; the
/// one referrer it lists is a notation signature (`artifactType`
/// `application/vnd.cncf.notary.signature`), which is not a bundle and is
/// not fetched. With a cosign attestor required, the image is denied:
/// no evidence (Portcullis does not verify notation signatures).
#[test]
fn notation_referrers_fallback_index_is_read_and_its_signature_skipped() {
    let fake = Fake::start();
    fake.set(|c| c.no_referrers_api = true);
    for kind in ["manifests", "blobs"] {
        for entry in std::fs::read_dir(fixtures::root().join(NOTATION_DIR).join(kind)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let bytes = fixtures::read(&format!("{NOTATION_DIR}/{kind}/{name}"));
            let reference = name.strip_suffix(".json").unwrap();
            if kind == "blobs" {
                assert_eq!(fake.put_blob(NOTATION_REPO, &bytes), reference);
            } else {
                let media_type = fixtures::manifest_media_type(&bytes);
                fake.put_manifest(NOTATION_REPO, Some(reference), &media_type, &bytes);
            }
        }
    }
    let proxy = Proxy::start(&policy_config(
        CONN_REGISTRY,
        &fake,
        &[conn_attestor("alice")],
        None,
    ));
    let r = get_manifest(&proxy, NOTATION_REPO, "notation-sign");
    assert_denied_with(
        &r,
        &[
            &format!("image {CONN_REGISTRY}/{NOTATION_REPO}@{NOTATION_SIGNED}"),
            "attestor alice: no valid signature (no signatures found)",
        ],
        "notation-signed image, cosign attestor",
    );
    let tag = NOTATION_SIGNED.replacen(':', "-", 1);
    assert!(
        fake.hits(&format!("/v2/{NOTATION_REPO}/referrers/{NOTATION_SIGNED}")) >= 1,
        "the referrers API was not tried first"
    );
    assert!(
        fake.hits(&format!("/v2/{NOTATION_REPO}/manifests/{tag}")) >= 1,
        "the referrers tag was not read after the API's 404"
    );
    assert_eq!(
        fake.hits(&format!(
            "/v2/{NOTATION_REPO}/manifests/{NOTATION_SIGNATURE}"
        )),
        0,
        "a notation signature was fetched as if it could be a sigstore bundle"
    );
    // Having seen there is no referrers API, the next verification goes
    // straight to the referrers tag (one round trip less).
    let api_calls = fake
        .requests()
        .iter()
        .filter(|r| r.path.contains("/referrers/"))
        .count();
    let r = get_manifest(&proxy, NOTATION_REPO, "notation-unsign");
    assert_denied_with(&r, &["no signatures found"], "notation-unsigned image");
    let unsigned = sha256_digest(&fixtures::read(&format!(
        "{NOTATION_DIR}/manifests/notation-unsign.json"
    )));
    assert!(
        fake.hits(&format!(
            "/v2/{NOTATION_REPO}/manifests/{}",
            unsigned.replacen(':', "-", 1)
        )) >= 1,
        "the referrers tag of the second image was not read"
    );
    let api_calls_after = fake
        .requests()
        .iter()
        .filter(|r| r.path.contains("/referrers/"))
        .count();
    assert_eq!(
        api_calls_after, api_calls,
        "the referrers API was asked again right after answering 404"
    );
}
