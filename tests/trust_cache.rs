//! The verdict cache, counted at the upstream: single-flight for concurrent
//! cold pulls, no signature lookup on a cache hit, and upstream errors
//! during the lookup failing closed without being cached as denials; and
//! the signature payload round trip saved when cosign's default payload
//! hashes to the signature layer's digest.
//!
//! The image and its signature are real (pushed to a real registry and
//! signed there by `portcullis sign`), then copied into the in-process fake
//! upstream, which counts requests and can fail on demand. The proxy's
//! upstream keeps the real registry's name (`registry:`, which patterns and
//! the signed identity use) but is reached at the fake's URL.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::content::{self, PushedImage};
use common::fake::{self, Fake};
use common::http;
use common::registry::Registry;
use common::trust::{self, TrustConfig};
use common::Proxy;

const REPO: &str = "demo/app";

struct Env {
    _reg: Registry,
    _keys: tempfile::TempDir,
    fake: Fake,
    img: PushedImage,
    /// Path of the `.sig` manifest of `img` at the upstream.
    sig_path: String,
    /// Paths of the signature payload blobs.
    payload_paths: Vec<String>,
    proxy: Proxy,
}

impl Env {
    /// Requests the fake received for the `.sig` manifest.
    fn sig_lookups(&self) -> usize {
        self.fake.hits(&self.sig_path)
    }

    /// Requests the fake received for signature payload blobs.
    fn payload_fetches(&self) -> usize {
        self.payload_paths.iter().map(|p| self.fake.hits(p)).sum()
    }
}

/// An image signed by `portcullis sign` (cosign's payload) with
/// `annotations` (none: cosign's default payload, `"optional":null`).
fn env_signed_with(annotations: &[&str]) -> Env {
    env_configured(annotations, "")
}

/// [`env_signed_with`], with `extra` appended to the proxy's config.
fn env_configured(annotations: &[&str], extra: &str) -> Env {
    let reg = Registry::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let ci = trust::keygen(keys.path(), "ci");
    let img = content::push_image(
        &reg.url(),
        REPO,
        Some("v1"),
        common::host_arch(),
        71,
        &[30_000],
    );
    trust::sign(
        &reg.url(),
        &format!("{}/{REPO}:v1", reg.host()),
        REPO,
        &img.digest,
        &ci,
        annotations,
    );
    let fake = Fake::start();
    trust::copy_to_fake(&reg.url(), REPO, "v1", Some("v1"), &fake);
    let tag = trust::sig_tag(&img.digest);
    let (_, sig) = trust::copy_to_fake(&reg.url(), REPO, &tag, Some(&tag), &fake);
    let payload_paths = trust::manifest_blobs(&sig)
        .into_iter()
        .skip(1)
        .map(|d| format!("/v2/{REPO}/blobs/{d}"))
        .collect();
    let yaml = TrustConfig::new(&reg.host(), &fake.url(), &[("ci-2026", &ci)]).yaml();
    let proxy = Proxy::start(&format!("{yaml}{extra}"));
    Env {
        _reg: reg,
        _keys: keys,
        fake,
        img,
        sig_path: format!("/v2/{REPO}/manifests/{tag}"),
        payload_paths,
        proxy,
    }
}

fn env() -> Env {
    env_signed_with(&[])
}

fn get_manifest(proxy: &Proxy, reference: &str) -> http::Response {
    trust::get_manifest_via(proxy, REPO, reference)
}

fn assert_served(r: &http::Response, img: &PushedImage, what: &str) {
    assert_eq!(r.status, 200, "{what}: HTTP {} {}", r.status, r.text());
    assert!(
        r.body == img.manifest,
        "{what}: other bytes than the image's manifest"
    );
}

#[test]
fn concurrent_cold_pulls_of_one_digest_cause_one_signature_lookup() {
    let env = env();
    assert_eq!(env.sig_lookups(), 0, "nothing looked up before the pulls");
    let n = 200;
    let barrier = Arc::new(Barrier::new(n));
    let url = format!("{}/v2/{REPO}/manifests/{}", env.proxy.url(), env.img.digest);
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                barrier.wait();
                http::request("GET", &url, &[("Accept", trust::MANIFEST_ACCEPT)], &[])
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let r = t
            .join()
            .expect("thread")
            .unwrap_or_else(|e| panic!("pull {i}: {e}"));
        assert_served(&r, &env.img, &format!("concurrent pull {i}"));
    }
    assert_eq!(
        env.sig_lookups(),
        1,
        "{n} concurrent cold pulls of one digest must look its signature up exactly once"
    );
}

#[test]
fn default_cosign_payload_is_recognised_by_digest_not_fetched() {
    // cosign's default payload is predictable: the proxy checks its guess
    // against the layer digest and skips the payload round trip.
    let env = env();
    assert_eq!(env.payload_paths.len(), 1, "one signature layer");
    assert_served(&get_manifest(&env.proxy, "v1"), &env.img, "cold pull");
    assert_eq!(env.sig_lookups(), 1, "the cold pull looks the signature up");
    assert_eq!(
        env.payload_fetches(),
        0,
        "the default payload was fetched although its digest is known"
    );

    // With annotations the payload is not the default one: it is fetched
    // (and the image is admitted as before).
    let annotated = env_signed_with(&["team=payments"]);
    assert_served(
        &get_manifest(&annotated.proxy, "v1"),
        &annotated.img,
        "cold pull, annotated signature",
    );
    assert_eq!(
        annotated.payload_fetches(),
        1,
        "an annotated payload must be fetched"
    );
}

#[test]
fn signature_lookup_for_a_digest_runs_while_its_manifest_is_fetched() {
    // Every upstream answer takes 1.5 s: a `.sig` request that reaches the
    // upstream within 1.2 s of the pull was sent before the manifest came
    // back, i.e. alongside its fetch.
    let env = env();
    env.fake
        .set(|c| c.response_delay = Some(Duration::from_millis(1500)));
    let url = format!("{}/v2/{REPO}/manifests/{}", env.proxy.url(), env.img.digest);
    let pull = std::thread::spawn(move || {
        http::request("GET", &url, &[("Accept", trust::MANIFEST_ACCEPT)], &[])
    });
    let overlapped = trust::wait_until(Duration::from_millis(1200), || env.sig_lookups() == 1);
    let r = pull.join().expect("thread").expect("GET by digest");
    assert_served(&r, &env.img, "cold pull by digest, slow upstream");
    assert!(
        overlapped,
        "the signature lookup waited for the manifest: requests seen {:?}",
        env.fake
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(env.sig_lookups(), 1, "one signature lookup");
}

#[test]
fn verdict_cache_hit_does_no_signature_lookup() {
    // Annotated: the payload is fetched, so its fetches can be counted.
    let env = env_signed_with(&["team=payments"]);
    assert_served(
        &get_manifest(&env.proxy, "v1"),
        &env.img,
        "first pull (by tag)",
    );
    assert_eq!(
        env.sig_lookups(),
        1,
        "the first pull looks the signature up"
    );
    let payloads = env.payload_fetches();
    assert_eq!(payloads, 1, "the first pull fetches the signature payload");

    // Every later pull of the same digest, by digest or by tag, GET or HEAD,
    // from a raw client or skopeo, is a verdict-cache hit.
    assert_served(
        &get_manifest(&env.proxy, &env.img.digest),
        &env.img,
        "second pull (by digest)",
    );
    assert_served(
        &get_manifest(&env.proxy, "v1"),
        &env.img,
        "third pull (by tag)",
    );
    let head = http::request(
        "HEAD",
        &format!("{}/v2/{REPO}/manifests/v1", env.proxy.url()),
        &[("Accept", trust::MANIFEST_ACCEPT)],
        &[],
    )
    .expect("HEAD");
    assert_eq!(head.status, 200, "HEAD after the verdict was cached");
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("img");
    let out = trust::skopeo_copy(&format!("{}/{REPO}:v1", env.proxy.host()), &dest);
    trust::assert_succeeded(&out, "skopeo copy after the verdict was cached");
    assert_eq!(trust::dir_manifest_digest(&dest), env.img.digest);
    assert!(
        std::fs::read(dest.join("manifest.json")).expect("read") == env.img.manifest,
        "skopeo got other manifest bytes"
    );

    assert_eq!(
        env.sig_lookups(),
        1,
        "a verdict-cache hit looked the signature up again"
    );
    assert_eq!(
        env.payload_fetches(),
        payloads,
        "a verdict-cache hit fetched the signature payload again"
    );
}

#[test]
fn signature_lookup_error_fails_closed_and_is_not_cached_as_denial() {
    let env = env();
    env.fake
        .set(|c| c.fail_manifests_ending_with = Some(".sig".into()));

    let r = get_manifest(&env.proxy, "v1");
    assert_ne!(r.status, 200, "served although the signature lookup failed");
    assert!(
        r.body != env.img.manifest,
        "the manifest leaked in the error"
    );
    fake::assert_oci_error(&r, 502, None, "signature lookup answered 500");
    assert!(
        env.sig_lookups() >= 1,
        "the proxy never looked the signature up"
    );
    // Nothing was admitted, so the image's layer is not served either.
    let layer = &env.img.layers[0].1.digest;
    let r = http::get(&format!("{}/v2/{REPO}/blobs/{layer}", env.proxy.url())).expect("GET blob");
    fake::assert_oci_error(&r, 403, Some("DENIED"), "layer of a not-admitted image");

    // The fault clears: the very next pull is admitted (the failure was not
    // cached as a denial for denyTtl = 30 s).
    env.fake.set(|c| c.fail_manifests_ending_with = None);
    let before = env.sig_lookups();
    assert_served(
        &get_manifest(&env.proxy, "v1"),
        &env.img,
        "first pull after the upstream recovered",
    );
    assert_eq!(
        env.sig_lookups(),
        before + 1,
        "the pull after recovery must look the signature up afresh"
    );
    let r = http::get(&format!("{}/v2/{REPO}/blobs/{layer}", env.proxy.url())).expect("GET blob");
    assert_eq!(
        r.status,
        200,
        "layer after the image was admitted: {}",
        r.text()
    );
}

/// One byte every 400 ms: never silent for the 5 s read timeout the
/// deadline tests configure, and a `.sig` manifest of a few hundred bytes
/// takes minutes.
const TRICKLE: Duration = Duration::from_millis(400);

/// Fetches `reference` in a thread; the response and when it came.
fn pull_in_thread(
    proxy: &Proxy,
    reference: &str,
) -> std::thread::JoinHandle<(http::Response, Instant)> {
    let url = format!("{}/v2/{REPO}/manifests/{reference}", proxy.url());
    std::thread::spawn(move || {
        let r = http::request("GET", &url, &[("Accept", trust::MANIFEST_ACCEPT)], &[])
            .expect("GET manifest via proxy");
        (r, Instant::now())
    })
}

/// An upstream that trickles the `.sig` manifest (issue 11, class 7): the
/// evidence lookup ends at `timeouts.evidence` with a 504, for the pull
/// that started it and for a second pull joined to the same verification
/// (which does not start a lookup of its own); the timeout is not cached
/// as a denial.
#[test]
fn trickling_signature_lookup_answers_504_within_the_evidence_deadline() {
    let env = env_configured(&[], "timeouts: {connect: 2s, read: 5s, evidence: 3s}\n");
    env.fake
        .set(|c| c.trickle_manifests = Some((".sig".into(), TRICKLE)));
    let started = Instant::now();
    let first = pull_in_thread(&env.proxy, "v1");
    assert!(
        trust::wait_until(Duration::from_secs(2), || env.sig_lookups() == 1),
        "the first pull never looked the signature up"
    );
    // By digest: the same verification key, so it joins the running one.
    let joined_at = Instant::now();
    let second = pull_in_thread(&env.proxy, &env.img.digest);
    let (r1, end1) = first.join().expect("first pull");
    let (r2, end2) = second.join().expect("second pull");
    for (r, what) in [(&r1, "first pull"), (&r2, "joined pull")] {
        fake::assert_oci_error(r, 504, Some("UNAVAILABLE"), what);
        assert!(
            r.text().contains("timeouts.evidence"),
            "{what}: the error names the deadline: {}",
            r.text()
        );
        assert!(r.body != env.img.manifest, "{what}: the manifest leaked");
    }
    let (took1, took2) = (end1 - started, end2 - joined_at);
    eprintln!("trickled evidence: 504 after {took1:?} (first), {took2:?} (joined)");
    assert!(
        took1 >= Duration::from_millis(2900) && took1 < Duration::from_secs(6),
        "first pull: 504 after {took1:?}, evidence deadline 3 s"
    );
    assert!(
        took2 < Duration::from_secs(4),
        "joined pull: 504 after {took2:?}; it should end with the verification it joined"
    );
    assert_eq!(
        env.sig_lookups(),
        1,
        "the joined pull started a lookup of its own"
    );

    // Not cached as a denial: with the upstream answering normally, the
    // next pull verifies afresh and is served.
    env.fake.set(|c| c.trickle_manifests = None);
    assert_served(
        &get_manifest(&env.proxy, "v1"),
        &env.img,
        "pull after the trickle stopped",
    );
    assert_eq!(env.sig_lookups(), 2, "a fresh lookup after the timeout");
}

/// `timeouts.verification` bounds the whole verification even when each
/// evidence lookup is allowed longer: 504 at the verification deadline,
/// for both pulls joined to it.
#[test]
fn trickling_signature_lookup_answers_504_within_the_verification_deadline() {
    let env = env_configured(
        &[],
        "timeouts: {connect: 2s, read: 5s, evidence: 30s, verification: 3s}\n",
    );
    env.fake
        .set(|c| c.trickle_manifests = Some((".sig".into(), TRICKLE)));
    let started = Instant::now();
    let first = pull_in_thread(&env.proxy, &env.img.digest);
    assert!(
        trust::wait_until(Duration::from_secs(2), || env.sig_lookups() == 1),
        "the first pull never looked the signature up"
    );
    let second = pull_in_thread(&env.proxy, "v1");
    let (r1, end1) = first.join().expect("first pull");
    let (r2, end2) = second.join().expect("second pull");
    for (r, what) in [(&r1, "first pull"), (&r2, "joined pull")] {
        fake::assert_oci_error(r, 504, Some("UNAVAILABLE"), what);
        assert!(
            r.text().contains("timeouts.verification"),
            "{what}: the error names the deadline: {}",
            r.text()
        );
    }
    let (took1, took2) = (end1 - started, end2 - started);
    eprintln!("trickled verification: 504 after {took1:?} (first), {took2:?} (joined)");
    assert!(
        took1 >= Duration::from_millis(2900) && took1 < Duration::from_secs(6),
        "first pull: 504 after {took1:?}, verification deadline 3 s"
    );
    assert!(
        took2 < Duration::from_secs(6),
        "joined pull: 504 after {took2:?} from the first pull's start"
    );
    assert_eq!(env.sig_lookups(), 1, "the joined pull looked up on its own");
}
