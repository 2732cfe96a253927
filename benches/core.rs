//! Criterion micro-benchmarks for issue 6 (run by `bench/run.sh`, or
//! `cargo bench --bench core`):
//!
//! - `policy/*`: a policy with 10,000 repository rules: `Policy::compile`,
//!   and `rule_for` + `evaluate` for a name matched by a rule and for a
//!   name no rule matches (the default rule: every rule is tried);
//! - `p256/*`: one ECDSA P-256 SHA-256 verification of a cosign
//!   simple-signing payload through `portcullis::crypto::PublicKey::verify`,
//!   and the same with `ring` (the alternative already in the tree);
//! - `verdict_cache/*`: a warm `Verifier::admit` (the public path a warm
//!   manifest request takes: cache key, verdict lookup, admitted-content
//!   epoch check), `Verifier::blob_allowed` for a blob of an admitted
//!   image, and for comparison a bare moka lookup on the key shape the
//!   verdict cache used before it was replaced (three `Arc<str>` and an
//!   index, formatted per request);
//! - `sha256/*`: sha2 (what the proxy uses) and ring over 1 MiB.
//!
//! `PORTCULLIS_BENCH_VERDICTS=N cargo bench --bench core` instead fills the
//! verdict cache with N admitted images (a config and a layer each)
//! through `Verifier::admit` and prints the resident memory it took
//! (`verdict_rss ...` line), then exits (`cache.maxEntries` is N + N/8,
//! or `PORTCULLIS_BENCH_MAX_ENTRIES`); `PORTCULLIS_BENCH_MOKA=N` does the
//! same for a bare moka cache (`moka_rss ...`), to show what moka alone
//! would cost: with `PORTCULLIS_BENCH_MOKA_KEY=compact` its keys are the
//! verdict cache's 36 bytes of `Copy` data and its values one shared
//! `Arc`; otherwise the old key shape (three `Arc<str>` and an index).
//! `PORTCULLIS_BENCH_DECISIONS=N` prints what N per-image
//! REQUIRE_ATTESTATION decisions (one verified signature each) take
//! (`decision_rss ...`): the verdict cache holds one per such image.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use http::{HeaderValue, Method};
use p256::ecdsa::signature::Signer;
use p256::pkcs8::{EncodePublicKey, LineEnding};
use portcullis::breakglass::Attempt;
use portcullis::config::Config;
use portcullis::config::{AttestorDoc, PolicyDoc};
use portcullis::crypto::{Algorithm, PublicKey};
use portcullis::oci::manifest::Manifest;
use portcullis::oci::Digest;
use portcullis::oci::Reference;
use portcullis::policy::{self, Check, Evidence, EvidenceKind, Policy};
use portcullis::routing::{Route, Routed, Router};
use portcullis::upstream::Upstream;
use portcullis::verify::{Outcome, Verifier};
use sha2::Digest as _;

const RULES: usize = 10_000;
const ATTESTOR: &str = "built-by-ci";

fn key_pair() -> (p256::ecdsa::SigningKey, String) {
    let signing = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    (signing, pem)
}

fn indent(text: &str, by: usize) -> String {
    text.lines().map(|l| format!("{:by$}{l}\n", "")).collect()
}

/// `policy:` with `rules` repository rules (a third literal, a third `*`,
/// a third `**`) and `attestors:`, as YAML documents.
fn policy_yaml(rules: usize, pem: &str) -> (String, String) {
    let mut policy = String::from(
        "defaultAdmissionRule:\n  evaluationMode: REQUIRE_ATTESTATION\n  \
         enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n  requireAttestationsBy: [built-by-ci]\n\
         repositoryAdmissionRules:\n",
    );
    for i in 0..rules {
        let pattern = match i % 3 {
            0 => format!("registry.example/team{i}/app"),
            1 => format!("registry.example/team{i}/*"),
            _ => format!("registry.example/team{i}/**"),
        };
        policy.push_str(&format!(
            "  \"{pattern}\": {{evaluationMode: REQUIRE_ATTESTATION, requireAttestationsBy: [{ATTESTOR}]}}\n"
        ));
    }
    let attestors = format!(
        "- name: {ATTESTOR}\n  publicKeys:\n    - id: k1\n      pkixPublicKey:\n        publicKeyPem: |\n{}        signatureAlgorithm: ECDSA_P256_SHA256\n",
        indent(pem, 10)
    );
    (policy, attestors)
}

fn bench_policy(c: &mut Criterion) {
    let (_, pem) = key_pair();
    let (policy_text, attestor_text) = policy_yaml(RULES, &pem);
    let doc: PolicyDoc = serde_yaml_ng::from_str(&policy_text).expect("policy yaml");
    let attestors: Vec<AttestorDoc> = serde_yaml_ng::from_str(&attestor_text).expect("attestors");
    let compiled = Policy::compile(&doc, &attestors).expect("compile");
    let evidence: HashMap<String, Vec<Evidence>> = HashMap::from([(
        ATTESTOR.to_owned(),
        vec![Evidence::new(
            EvidenceKind::SigTag,
            "registry.example/team5000/app:sha256-0.sig layer 0",
            Check::Valid {
                key_id: "k1".into(),
            },
        )],
    )]);
    let mut g = c.benchmark_group("policy");
    g.sample_size(10);
    g.bench_function("compile_10k_rules", |b| {
        b.iter(|| Policy::compile(black_box(&doc), black_box(&attestors)).expect("compile"))
    });
    g.sample_size(50);
    for (label, name) in [
        (
            "rule_for_evaluate_10k/matched",
            "registry.example/team5001/api",
        ),
        (
            "rule_for_evaluate_10k/default",
            "registry.example/elsewhere/app",
        ),
    ] {
        g.bench_function(label, |b| {
            b.iter(|| {
                let rule = compiled.rule_for(black_box(name));
                policy::evaluate(&rule, black_box(&evidence))
            })
        });
    }
    g.finish();
}

fn bench_p256(c: &mut Criterion) {
    let (signing, pem) = key_pair();
    // A cosign simple-signing payload of the usual size.
    let payload = format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"registry.example/demo/app\"}},\
         \"image\":{{\"docker-manifest-digest\":\"sha256:{}\"}},\"type\":\"cosign container image signature\"}},\
         \"optional\":null}}",
        "ab".repeat(32)
    );
    let signature: p256::ecdsa::Signature = signing.sign(payload.as_bytes());
    let der = signature.to_der();
    let key = PublicKey::from_pem(&pem, Algorithm::parse("ECDSA_P256_SHA256").expect("alg"))
        .expect("key");
    assert!(key.verify(payload.as_bytes(), der.as_bytes()));
    let point = signing.verifying_key().to_encoded_point(false);
    let ring_key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        point.as_bytes().to_vec(),
    );
    assert!(ring_key.verify(payload.as_bytes(), der.as_bytes()).is_ok());
    let mut g = c.benchmark_group("p256");
    g.bench_function("verify_portcullis_p256crate", |b| {
        b.iter(|| key.verify(black_box(payload.as_bytes()), black_box(der.as_bytes())))
    });
    g.bench_function("verify_ring", |b| {
        b.iter(|| {
            ring_key
                .verify(black_box(payload.as_bytes()), black_box(der.as_bytes()))
                .is_ok()
        })
    });
    g.finish();
}

/// A verifier with a configured policy whose `registry.example/hot/**`
/// rule is ALWAYS_ALLOW, so verdicts are cached without any upstream.
struct Hot {
    verifier: Verifier,
    router: Router,
}

fn hot_verifier(max_entries: u64) -> Hot {
    let (_, pem) = key_pair();
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         upstreams:\n  - registry: registry.example\n    url: http://127.0.0.1:9\n    default: true\n\
         policy:\n  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    \
         requireAttestationsBy: [{ATTESTOR}]\n  repositoryAdmissionRules:\n    \
         \"registry.example/hot/**\": {{evaluationMode: ALWAYS_ALLOW}}\n\
         attestors:\n  - name: {ATTESTOR}\n    publicKeys:\n      - id: k1\n        pkixPublicKey:\n          publicKeyPem: |\n{}          signatureAlgorithm: ECDSA_P256_SHA256\n\
         cache: {{allowTtl: 1h, denyTtl: 30s, maxEntries: {max_entries}}}\n",
        indent(&pem, 12)
    );
    let config = Config::from_yaml(&yaml, Path::new(".")).expect("config");
    let policy = portcullis::app::compile_policy(&config).expect("policy");
    let upstreams = vec![Arc::new(
        Upstream::new(&config.upstreams[0], config.timeouts).expect("upstream"),
    )];
    Hot {
        verifier: Verifier::new(policy, config.cache.clone(), upstreams),
        router: Router::new(&config),
    }
}

fn image_manifest(n: u64) -> Manifest {
    let text = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:{:064x}\",\"size\":123}},\
         \"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:{:064x}\",\"size\":4567}}]}}",
        n,
        n + (1 << 62)
    );
    let bytes = bytes::Bytes::from(text);
    Manifest::new(
        bytes,
        HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
    )
}

fn route(router: &Router, digest: &Digest) -> Route {
    match router
        .route(
            &Method::GET,
            &format!("/v2/hot/app/manifests/{digest}"),
            None,
        )
        .expect("route")
    {
        Routed::Repository(r) => r,
        Routed::Base => panic!("not a repository route"),
    }
}

async fn admit(hot: &Hot, route: &Route, manifest: &Manifest) -> bool {
    let reference = Reference::Digest(manifest.digest().clone());
    let fetch = async { Ok::<_, ()>(manifest.clone()) };
    match hot
        .verifier
        .admit(route, &reference, fetch, &Attempt::None)
        .await
        .expect("admit")
    {
        Outcome::Admitted(a) => a.cache_hit(),
        Outcome::Denied(_) => panic!("denied"),
    }
}

fn bench_verdict_cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let hot = hot_verifier(100_000);
    let manifest = image_manifest(1);
    let route = route(&hot.router, manifest.digest());
    rt.block_on(admit(&hot, &route, &manifest));
    assert!(
        rt.block_on(admit(&hot, &route, &manifest)),
        "second admit is a cache hit"
    );

    // The same key shape as the verdict cache's private key.
    type Key = (Arc<str>, usize, Arc<str>, Arc<str>);
    let cache: moka::future::Cache<Key, Arc<String>> =
        moka::future::Cache::builder().max_capacity(100_000).build();
    let key: Key = (
        "abcdef012345".into(),
        0,
        "hot/app".into(),
        manifest.digest().to_string().into(),
    );
    rt.block_on(cache.insert(key.clone(), Arc::new("decision".into())));

    let mut g = c.benchmark_group("verdict_cache");
    g.bench_function("verifier_admit_hit", |b| {
        b.iter(|| rt.block_on(admit(&hot, black_box(&route), black_box(&manifest))))
    });
    let layer: Digest = format!("sha256:{:064x}", 1 + (1u64 << 62))
        .parse()
        .expect("digest");
    assert!(rt
        .block_on(hot.verifier.permit_blob(&route, &layer, &Attempt::None))
        .is_ok());
    g.bench_function("verifier_blob_allowed_hit", |b| {
        b.iter(|| {
            rt.block_on(hot.verifier.permit_blob(
                black_box(&route),
                black_box(&layer),
                &Attempt::None,
            ))
        })
    });
    g.bench_function("moka_get_same_key_shape", |b| {
        b.iter(|| {
            rt.block_on(async {
                let k: Key = (
                    "abcdef012345".into(),
                    0,
                    "hot/app".into(),
                    manifest.digest().to_string().into(),
                );
                cache.get(black_box(&k)).await
            })
        })
    });
    g.finish();
}

fn bench_sha256(c: &mut Criterion) {
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("sha2_1MiB", |b| {
        b.iter(|| sha2::Sha256::digest(black_box(&data)))
    });
    g.bench_function("ring_1MiB", |b| {
        b.iter(|| ring::digest::digest(&ring::digest::SHA256, black_box(&data)))
    });
    g.finish();
}

/// Opening a content store of 100,000 blobs: the startup index rebuild
/// (one directory read and a stat per file; warm page cache).
fn bench_store_open(c: &mut Criterion) {
    use portcullis::config::cache::ContentConfig;
    use portcullis::store::ContentStore;
    const BLOBS: u32 = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    for i in 0..BLOBS {
        let digest = Digest::sha256_of(&i.to_le_bytes());
        std::fs::write(blobs.join(digest.hex()), i.to_le_bytes()).expect("write blob");
    }
    let config = ContentConfig {
        path: dir.path().to_path_buf(),
        max_size: u64::MAX / 2,
        verify_on_read: false,
    };
    let mut g = c.benchmark_group("content_store");
    g.sample_size(10);
    g.bench_function("open_100k_blobs", |b| {
        b.iter(|| {
            let store = ContentStore::open(&config).expect("open");
            assert_eq!(store.usage().0, u64::from(BLOBS));
        })
    });
    g.finish();
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Fills the verdict cache with `n` admitted images; prints the RSS it took.
fn verdict_rss(n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Shards fill unevenly and a full shard evicts an eighth of itself:
    // an eighth more room keeps all `n` cached.
    let max_entries = std::env::var("PORTCULLIS_BENCH_MAX_ENTRIES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(n + n / 8)
        .max(1);
    let hot = hot_verifier(max_entries);
    let before = rss_kib();
    let started = std::time::Instant::now();
    rt.block_on(async {
        for i in 0..n {
            let manifest = image_manifest(i);
            let route = route(&hot.router, manifest.digest());
            admit(&hot, &route, &manifest).await;
        }
    });
    let cached = rt.block_on(hot.verifier.cached_verdicts());
    let after = rss_kib();
    println!(
        "verdict_rss entries={n} max_entries={max_entries} cached={cached} rss_delta_kib={} rss_total_kib={after} fill_seconds={:.2}",
        after.saturating_sub(before),
        started.elapsed().as_secs_f64()
    );
}

/// What a REQUIRE_ATTESTATION verdict's own decision costs (those are per
/// image, unlike the shared decisions of evidence-free rules that
/// [`verdict_rss`] measures): `n` decisions with one verified `.sig`
/// signature each, as `policy::evaluate` makes them; prints the RSS they
/// took (`decision_rss ...` line).
fn decision_rss(n: u64) {
    let (_, pem) = key_pair();
    let (policy_text, attestor_text) = policy_yaml(1, &pem);
    let doc: PolicyDoc = serde_yaml_ng::from_str(&policy_text).expect("policy yaml");
    let attestors: Vec<AttestorDoc> = serde_yaml_ng::from_str(&attestor_text).expect("attestors");
    let compiled = Policy::compile(&doc, &attestors).expect("compile");
    let rule = compiled.rule_for("registry.example/team0/app");
    let before = rss_kib();
    let decisions: Vec<Arc<policy::Decision>> = (0..n)
        .map(|i| {
            let evidence = HashMap::from([(
                ATTESTOR.to_owned(),
                vec![Evidence::new(
                    EvidenceKind::SigTag,
                    format!("registry.example/team0/app:sha256-{i:064x}.sig layer 1"),
                    Check::Valid {
                        key_id: "k1".into(),
                    },
                )],
            )]);
            Arc::new(policy::evaluate(&rule, &evidence))
        })
        .collect();
    let after = rss_kib();
    let delta = after.saturating_sub(before);
    println!(
        "decision_rss entries={n} rss_delta_kib={delta} bytes_each={} reason={:?}",
        delta * 1024 / n.max(1),
        decisions.first().map(|d| d.reason.as_str()).unwrap_or("")
    );
}

/// For comparison with [`verdict_rss`]: a bare moka cache with `n` entries
/// and a TTL; prints the RSS it took (`moka_rss ...` line). Keys of the old
/// verdict-cache shape (three `Arc<str>` and an index) with an `Arc`
/// value each, or with `compact` a 36-byte `Copy` key and one shared value.
fn moka_rss(n: u64, compact: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before = rss_kib();
    let cached = if compact {
        type Key = (u32, [u8; 32]);
        let cache: moka::future::Cache<Key, Arc<u64>> = moka::future::Cache::builder()
            .max_capacity(n.max(1))
            .time_to_live(Duration::from_secs(3600))
            .build();
        let shared = Arc::new(0);
        rt.block_on(async {
            for i in 0..n {
                let id: [u8; 32] = sha2::Sha256::digest(i.to_le_bytes()).into();
                cache.insert((1, id), Arc::clone(&shared)).await;
            }
            cache.run_pending_tasks().await;
        });
        cache.entry_count()
    } else {
        type Key = (Arc<str>, usize, Arc<str>, Arc<str>);
        let cache: moka::future::Cache<Key, Arc<u64>> = moka::future::Cache::builder()
            .max_capacity(n.max(1))
            .time_to_live(Duration::from_secs(3600))
            .build();
        rt.block_on(async {
            for i in 0..n {
                let key: Key = (
                    "abcdef012345".into(),
                    0,
                    "hot/app".into(),
                    format!("sha256:{i:064x}").into(),
                );
                cache.insert(key, Arc::new(i)).await;
            }
            cache.run_pending_tasks().await;
        });
        cache.entry_count()
    };
    let after = rss_kib();
    println!(
        "moka_rss entries={n} key={} cached={cached} rss_delta_kib={}",
        if compact { "compact" } else { "strings" },
        after.saturating_sub(before)
    );
}

fn config() -> Criterion {
    let seconds = |var: &str, default: f64| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(default)
    };
    Criterion::default()
        .warm_up_time(Duration::from_secs_f64(seconds("BENCH_WARMUP_S", 1.0)))
        .measurement_time(Duration::from_secs_f64(seconds("BENCH_MEASURE_S", 2.0)))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_policy, bench_p256, bench_verdict_cache, bench_sha256, bench_store_open
}

fn main() {
    if let Some(n) = std::env::var("PORTCULLIS_BENCH_VERDICTS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        verdict_rss(n);
        return;
    }
    if let Some(n) = std::env::var("PORTCULLIS_BENCH_DECISIONS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        decision_rss(n);
        return;
    }
    if let Some(n) = std::env::var("PORTCULLIS_BENCH_MOKA")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let compact = std::env::var("PORTCULLIS_BENCH_MOKA_KEY").is_ok_and(|k| k == "compact");
        moka_rss(n, compact);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
