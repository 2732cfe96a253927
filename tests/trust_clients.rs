//! Trust enforcement with real components: a real distribution registry,
//! keys and signatures made by `portcullis keygen` / `portcullis sign`, the
//! proxy enforcing a Binary Authorization-style policy, and skopeo, podman
//! and containerd (`ctr`) pulling through it.
//!
//! Each test has its own registry, proxy and clients, so they run in
//! parallel.

mod common;

use std::time::Duration;

use common::clients::{Containerd, Podman};
use common::content;
use common::fake::raw_exchange;
use common::http;
use common::registry::Registry;
use common::trust::{self, get_manifest_via, Case, KeyPair, TrustConfig};
use common::Proxy;

/// A registry, the attestor's key (`ci`) and a key it does not know.
struct Env {
    reg: Registry,
    _keys: tempfile::TempDir,
    ci: KeyPair,
    other: KeyPair,
}

fn env() -> Env {
    let reg = Registry::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let ci = trust::keygen(keys.path(), "ci");
    let other = trust::keygen(keys.path(), "other");
    Env {
        reg,
        _keys: keys,
        ci,
        other,
    }
}

fn proxy(env: &Env) -> Proxy {
    Proxy::start(&TrustConfig::new(&env.reg.host(), &env.reg.url(), &[("ci-2026", &env.ci)]).yaml())
}

/// Pushes a host-arch image to `repo:v1` and returns its digest.
fn push(env: &Env, repo: &str, seed: u64) -> content::PushedImage {
    content::push_image(
        &env.reg.url(),
        repo,
        Some("v1"),
        common::host_arch(),
        seed,
        &[50_000, 3000],
    )
}

#[test]
fn signed_image_pulls_with_skopeo_podman_and_ctr() {
    let env = env();
    let img = push(&env, "demo/signed", 11);
    trust::sign(
        &env.reg.url(),
        &format!("{}/demo/signed:v1", env.reg.host()),
        "demo/signed",
        &img.digest,
        &env.ci,
        &["build=42"],
    );
    let proxy = proxy(&env);
    let reference = format!("{}/demo/signed:v1", proxy.host());

    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("img");
    let out = trust::skopeo_copy(&reference, &dest);
    trust::assert_succeeded(&out, "skopeo copy of a signed image");
    assert_eq!(trust::dir_manifest_digest(&dest), img.digest, "skopeo");

    let podman = Podman::new();
    let out = trust::podman_pull(&podman, &reference);
    trust::assert_succeeded(&out, "podman pull of a signed image");
    assert_eq!(podman.inspect(&reference).digest, img.digest, "podman");

    let ctr = Containerd::start();
    let out = trust::ctr_pull(&ctr, &reference, None);
    trust::assert_succeeded(&out, "ctr pull of a signed image");
    assert_eq!(ctr.image_target(&reference), img.digest, "containerd");
}

/// Prepares `case`, then checks the proxy's 403 `DENIED` and that skopeo,
/// podman and ctr all fail showing why.
fn denied_in_every_client(case: Case) {
    let env = env();
    let p = trust::prepare_case(case, &env.reg.host(), &env.ci, &env.other, 21);
    // Control: the registry itself serves the image.
    assert!(trust::get_manifest(&env.reg.url(), &p.repo, &p.tag).is_ok());
    let proxy = proxy(&env);

    let msg = trust::assert_denied(
        &get_manifest_via(&proxy, &p.repo, &p.tag),
        p.failure,
        &format!("{case:?}: GET manifest by tag"),
    );
    eprintln!("{case:?}: proxy says: {msg}");
    trust::assert_denied(
        &get_manifest_via(&proxy, &p.repo, &p.digest),
        p.failure,
        &format!("{case:?}: GET manifest by digest"),
    );

    let reference = format!("{}/{}:{}", proxy.host(), p.repo, p.tag);
    let mut words: Vec<&str> = trust::DENIAL_WORDS.to_vec();
    words.push(p.failure);

    let dir = tempfile::tempdir().expect("tempdir");
    let out = trust::skopeo_copy(&reference, &dir.path().join("img"));
    trust::assert_failed_saying(&out, &words, &format!("{case:?}: skopeo copy"));

    let podman = Podman::new();
    let out = trust::podman_pull(&podman, &reference);
    trust::assert_failed_saying(&out, &words, &format!("{case:?}: podman pull"));

    // containerd resolves with HEAD and prints only the status line: the
    // reason phrase carries the short form.
    let ctr = Containerd::start();
    let out = trust::ctr_pull(&ctr, &reference, None);
    trust::assert_failed_saying(
        &out,
        &["denied by policy"],
        &format!("{case:?}: ctr images pull"),
    );
}

#[test]
fn unsigned_image_is_denied_in_every_client() {
    denied_in_every_client(Case::Unsigned);
}

#[test]
fn wrong_key_signature_is_denied_in_every_client() {
    denied_in_every_client(Case::WrongKey);
}

#[test]
fn replayed_digest_signature_is_denied_in_every_client() {
    denied_in_every_client(Case::ReplayedDigest);
}

#[test]
fn wrong_repository_signature_is_denied_in_every_client() {
    denied_in_every_client(Case::WrongRepository);
}

#[test]
fn tampered_payload_signature_is_denied_in_every_client() {
    denied_in_every_client(Case::TamperedPayload);
}

#[test]
fn head_of_denied_manifest_and_blobs_of_denied_image_are_refused() {
    let env = env();
    let unsigned = push(&env, "demo/unsigned", 31);
    let signed = push(&env, "demo/signed", 32);
    trust::sign(
        &env.reg.url(),
        &format!("{}/demo/signed:v1", env.reg.host()),
        "demo/signed",
        &signed.digest,
        &env.ci,
        &[],
    );
    let proxy = proxy(&env);

    // Blobs of the unsigned image, before anything asked for its manifest.
    let blob_denied = |digest: &str, what: &str| {
        let r = http::get(&format!("{}/v2/demo/unsigned/blobs/{digest}", proxy.url()))
            .expect("GET blob");
        common::fake::assert_oci_error(&r, 403, Some("DENIED"), what);
        let msg = &common::fake::oci_errors(&r.body).expect("errors")[0].1;
        assert!(
            msg.contains("blob is not part of an admitted image"),
            "{what}: {msg:?}"
        );
    };
    for b in unsigned.blobs() {
        blob_denied(&b.digest, "blob of an unsigned image, cold");
    }

    // HEAD on the denied manifest, by tag and by digest.
    for reference in ["v1", unsigned.digest.as_str()] {
        let r = http::request(
            "HEAD",
            &format!("{}/v2/demo/unsigned/manifests/{reference}", proxy.url()),
            &[("Accept", trust::MANIFEST_ACCEPT)],
            &[],
        )
        .expect("HEAD");
        assert_eq!(r.status, 403, "HEAD demo/unsigned:{reference}");
    }
    // The reason phrase of that 403 carries the short reason.
    let (raw, _) = raw_exchange(
        proxy.addr,
        &format!(
            "HEAD /v2/demo/unsigned/manifests/v1 HTTP/1.1\r\nHost: {}\r\nAccept: {}\r\nConnection: close\r\n\r\n",
            proxy.host(),
            trust::MANIFEST_ACCEPT
        ),
        Duration::from_secs(10),
    );
    let raw = String::from_utf8_lossy(&raw);
    let status_line = raw.lines().next().unwrap_or_default();
    assert!(
        status_line.starts_with("HTTP/1.1 403 ") && status_line.contains("denied by policy"),
        "HEAD status line: {status_line:?}"
    );

    // After a (denied) GET of its manifest, its blobs are still refused.
    trust::assert_denied(
        &get_manifest_via(&proxy, "demo/unsigned", "v1"),
        "no signatures found",
        "GET unsigned manifest",
    );
    for b in unsigned.blobs() {
        blob_denied(
            &b.digest,
            "blob of an unsigned image after its manifest was denied",
        );
    }

    // The signed image: HEAD and GET pass, then its blobs are served.
    let r = http::request(
        "HEAD",
        &format!("{}/v2/demo/signed/manifests/v1", proxy.url()),
        &[("Accept", trust::MANIFEST_ACCEPT)],
        &[],
    )
    .expect("HEAD");
    assert_eq!(r.status, 200, "HEAD of the signed manifest");
    let r = get_manifest_via(&proxy, "demo/signed", "v1");
    assert_eq!(r.status, 200, "GET signed manifest: {}", r.text());
    assert_eq!(r.body, signed.manifest, "signed manifest bytes");
    let config = trust::get_blob(&proxy.url(), "demo/signed", &signed.config_digest);
    assert_eq!(config, signed.config, "config blob");
    for (layer, blob) in &signed.layers {
        let bytes = trust::get_blob(&proxy.url(), "demo/signed", &blob.digest);
        assert!(bytes == layer.bytes(), "layer {} differs", blob.digest);
    }
}

#[test]
fn dry_run_rule_serves_unsigned_image_and_logs_would_be_denied() {
    let env = env();
    let img = push(&env, "dry/app", 41);
    let proxy = proxy(&env);
    let reference = format!("{}/dry/app:v1", proxy.host());

    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("img");
    let out = trust::skopeo_copy(&reference, &dest);
    trust::assert_succeeded(
        &out,
        "skopeo copy of an unsigned image under a dry-run rule",
    );
    assert_eq!(trust::dir_manifest_digest(&dest), img.digest);

    let logged = trust::wait_until(Duration::from_secs(10), || {
        proxy
            .logs()
            .lines()
            .any(|l| l.contains("would be denied") && l.contains("dry/app"))
    });
    assert!(
        logged,
        "no \"would be denied\" record for dry/app in the proxy log:\n{}",
        proxy.logs()
    );
}

#[test]
fn allowlisted_and_always_allow_images_pull_unsigned() {
    let env = env();
    let base = push(&env, "base/os", 51);
    let sandbox = push(&env, "sandbox/team/tool", 52);
    push(&env, "demo/app", 53);
    let proxy = proxy(&env);

    for (repo, img) in [("base/os", &base), ("sandbox/team/tool", &sandbox)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("img");
        let out = trust::skopeo_copy(&format!("{}/{repo}:v1", proxy.host()), &dest);
        trust::assert_succeeded(&out, &format!("skopeo copy of unsigned {repo}"));
        assert_eq!(trust::dir_manifest_digest(&dest), img.digest, "{repo}");
    }
    // Control: the policy is in force for an unsigned image elsewhere.
    trust::assert_denied(
        &get_manifest_via(&proxy, "demo/app", "v1"),
        "no signatures found",
        "unsigned demo/app (control)",
    );
}

/// Pushes a linux/amd64 + linux/arm64 index to `demo/multi:v1`, signs the
/// index digest (only) and starts the proxy.
fn signed_index(env: &Env) -> (content::PushedIndex, Proxy) {
    let idx = content::push_multiarch(&env.reg.url(), "demo/multi", "v1", 61, 20_000);
    trust::sign(
        &env.reg.url(),
        &format!("{}/demo/multi:v1", env.reg.host()),
        "demo/multi",
        &idx.digest,
        &env.ci,
        &[],
    );
    let proxy = proxy(env);
    (idx, proxy)
}

fn child(idx: &content::PushedIndex, host: bool) -> &content::PushedImage {
    idx.images
        .iter()
        .find(|i| (i.arch == common::host_arch()) == host)
        .expect("child manifest")
}

#[test]
fn signed_multiarch_index_pulls_on_containerd_and_unlisted_child_is_denied() {
    let env = env();
    let (idx, proxy) = signed_index(&env);
    let other_child = child(&idx, false);
    let host_child = child(&idx, true);

    // Before its index was pulled, an unsigned child asked for by digest
    // needs its own signature.
    trust::assert_denied(
        &get_manifest_via(&proxy, "demo/multi", &other_child.digest),
        "no signatures found",
        "child manifest by digest before its index was pulled",
    );

    // The signed index pulls; its (unsigned) host child is admitted because
    // the admitted index lists it.
    let ctr = Containerd::start();
    let reference = format!("{}/demo/multi:v1", proxy.host());
    let platform = format!("linux/{}", common::host_arch());
    let out = trust::ctr_pull(&ctr, &reference, Some(&platform));
    trust::assert_succeeded(&out, "ctr pull of a signed index");
    assert_eq!(ctr.image_target(&reference), idx.digest);
    assert!(
        ctr.content_digests().contains(&host_child.digest),
        "containerd did not fetch the host child manifest"
    );
}

#[test]
fn child_denied_before_its_index_is_admitted_once_the_index_is() {
    let env = env();
    let (idx, proxy) = signed_index(&env);
    let host_child = child(&idx, true);
    let other_child = child(&idx, false);

    // Both children are asked for directly first: denied (unsigned, no
    // admitted index lists them yet).
    for c in [host_child, other_child] {
        trust::assert_denied(
            &get_manifest_via(&proxy, "demo/multi", &c.digest),
            "no signatures found",
            &format!("{} child by digest before its index", c.arch),
        );
    }

    // Then the signed index is pulled: containerd fetches the host child by
    // digest, which the admitted index lists, so the pull must succeed.
    let ctr = Containerd::start();
    let reference = format!("{}/demo/multi:v1", proxy.host());
    let platform = format!("linux/{}", common::host_arch());
    let out = trust::ctr_pull(&ctr, &reference, Some(&platform));
    trust::assert_succeeded(
        &out,
        "ctr pull of a signed index whose child was denied (by digest) just before",
    );
    assert_eq!(ctr.image_target(&reference), idx.digest);

    // And the other child, listed by the admitted index, is now served.
    let r = get_manifest_via(&proxy, "demo/multi", &other_child.digest);
    assert_eq!(
        r.status,
        200,
        "child listed by an admitted index, denied before the index was pulled: {}",
        r.text()
    );
    assert_eq!(r.body, other_child.manifest);
}
