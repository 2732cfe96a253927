//! Bounded evidence work: an upstream that lists one 4 MiB blob as every
//! layer of many referrers and of an `.att` manifest cannot make cold
//! verifications read it more than once each, nor grow the proxy's
//! memory past a bound; evidence that needs more than the per-verification
//! budget denies the image with "evidence exceeds limits". Real
//! distribution registry; peak RSS read from /proc.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use serde_json::json;

use common::content::{self, sha256_digest};
use common::registry::Registry;
use common::trust::{self, pull_v1 as pull};
use common::Proxy;

const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Just under the 4 MiB an envelope or bundle may have.
const BIG: usize = 4 * 1024 * 1024 - 4096;

/// A blob of `len` bytes of JSON-looking filler, distinct per `seed`.
fn filler(seed: u8, len: usize) -> Vec<u8> {
    let mut v = vec![b' '; len];
    v[0] = b'{';
    v[1] = b'"';
    v[2] = b'a' + seed;
    v[3] = b'"';
    v[4] = b':';
    v[5] = b'1';
    v[len - 1] = b'}';
    v
}

fn manifest(
    config: &content::Blob,
    layers: &[serde_json::Value],
    extra: serde_json::Value,
) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.digest, "size": config.size},
        "layers": layers,
    });
    if let Some(obj) = extra.as_object() {
        for (k, v) in obj {
            m[k] = v.clone();
        }
    }
    serde_json::to_vec(&m).unwrap()
}

/// Attaches to `image` in `repo`: 32 referrers with 8 bundle layers each
/// and an `.att` manifest with 64 envelope layers, every layer `blobs[i %
/// blobs.len()]`.
fn amplify(url: &str, repo: &str, image: &content::PushedImage, blobs: &[content::Blob]) {
    let empty = content::push_blob(url, repo, b"{}");
    let layer = |i: usize, media_type: &str| {
        let b = &blobs[i % blobs.len()];
        json!({"mediaType": media_type, "digest": b.digest, "size": b.size})
    };
    let mut descriptors = Vec::new();
    for r in 0..32 {
        let layers: Vec<_> = (0..8).map(|i| layer(r * 8 + i, BUNDLE_V03)).collect();
        let m = manifest(
            &empty,
            &layers,
            json!({
                "artifactType": BUNDLE_V03,
                "annotations": {"n": r.to_string()},
                "subject": {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": image.manifest.len()},
            }),
        );
        let digest = content::push_manifest(url, repo, &sha256_digest(&m), OCI_MANIFEST, &m);
        descriptors.push(json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": m.len(), "artifactType": BUNDLE_V03}));
    }
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}),
    )
    .unwrap();
    content::push_manifest(
        url,
        repo,
        &image.digest.replace(':', "-"),
        OCI_INDEX,
        &index,
    );
    let layers: Vec<_> = (0..64).map(|i| layer(i, DSSE)).collect();
    let att = manifest(&empty, &layers, json!({}));
    content::push_manifest(
        url,
        repo,
        &format!("{}.att", image.digest.replace(':', "-")),
        OCI_MANIFEST,
        &att,
    );
}

fn config(registry: &Registry, pem: &str) -> String {
    let pem: String = pem.lines().map(|l| format!("            {l}\n")).collect();
    format!(
        "listen: {{listen}}\nupstreams:\n  - registry: {host}\n    url: {url}\n\
         policy:\n  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    requireAttestationsBy: [built-by-ci]\n\
         attestors:\n  - name: built-by-ci\n    publicKeys:\n      - id: ci\n        pkixPublicKey:\n          \
         signatureAlgorithm: ECDSA_P256_SHA256\n          publicKeyPem: |\n{pem}\
         \x20   attestations:\n      - predicateType: https://slsa.dev/provenance/v1\n",
        host = registry.host(),
        url = registry.url(),
    )
}

/// `VmHWM` (peak resident set) of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn evidence_amplification_is_bounded_in_bytes_fetches_and_memory() {
    let registry = Registry::start_with_access_log();
    let url = registry.url();
    let keys = tempfile::tempdir().unwrap();
    let key = trust::keygen(keys.path(), "ci");
    let arch = common::host_arch();
    // Three images, each with 32 × 8 bundle layers and 64 `.att` layers
    // listing one 4 MiB blob (the same blob for all three).
    let mut images = Vec::new();
    for i in 0..3 {
        let repo = format!("amp/app{i}");
        let image = content::push_image(&url, &repo, Some("v1"), arch, 200 + i, &[256]);
        let big = content::push_blob(&url, &repo, &filler(0, BIG));
        amplify(&url, &repo, &image, &[big]);
        images.push((repo, image));
    }
    // A fourth whose `.att` lists three distinct 4 MiB envelopes: more
    // than the 8 MiB one verification may read.
    let over = "amp/over".to_owned();
    let over_image = content::push_image(&url, &over, Some("v1"), arch, 300, &[256]);
    let blobs: Vec<_> = (1..4)
        .map(|s| content::push_blob(&url, &over, &filler(s, BIG)))
        .collect();
    amplify(&url, &over, &over_image, &blobs);

    let proxy = Proxy::start(&config(&registry, &key.pem));
    let before = peak_rss_kib(proxy.pid());
    let proxy_ref = &proxy;
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = images
            .iter()
            .map(|(repo, _)| s.spawn(move || pull(proxy_ref, repo)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (r, (repo, _)) in results.iter().zip(&images) {
        // The filler is no envelope: denied, after reading it once.
        assert_eq!(r.status, 403, "{repo}: {}", r.text());
        assert!(
            r.text().contains("no valid attestation"),
            "{repo}: {}",
            r.text()
        );
    }
    let r = pull(&proxy, &over);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("evidence exceeds limits"), "{}", r.text());

    let peak = peak_rss_kib(proxy.pid());
    eprintln!("peak RSS: {before} KiB at start, {peak} KiB after the attack");
    assert!(
        peak < 256 * 1024,
        "peak RSS {peak} KiB under the evidence-amplification attack (limit 256 MiB)"
    );
    // The limit is the configured one: at 2 MiB, one 4 MiB envelope is
    // already too much.
    let strict =
        Proxy::start(&(config(&registry, &key.pem) + "limits: {evidenceBytes: 2097152}\n"));
    let r = pull(&strict, &images[0].0);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("evidence exceeds limits"), "{}", r.text());
    drop(strict);
    // Each verification fetched the big blob once (three images), however
    // many layers list it (the strict proxy refused before fetching it).
    let logs = registry.logs();
    for (repo, _) in &images {
        let big = sha256_digest(&filler(0, BIG));
        let fetches = logs
            .lines()
            .filter(|l| l.contains(&format!("\"GET /v2/{repo}/blobs/{big} ")))
            .count();
        assert_eq!(
            fetches, 1,
            "{repo}: the 4 MiB blob was fetched {fetches} times"
        );
    }
}
