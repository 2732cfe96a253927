use super::*;
use crate::config::Config;
use crate::oci::manifest::Manifest;
use crate::oci::Digest;
use crate::policy::{Decision, EvaluationMode, Policy, RuleSource, Verdict};
use crate::routing::{Routed, Router};
use bytes::Bytes;
use http::{HeaderValue, Method};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Env {
    verifier: Verifier,
    upstreams: Vec<Arc<Upstream>>,
    router: Router,
    config: Config,
}

/// A proxy configuration for `registry.example` at `url` with `policy`
/// (YAML, indented under `policy:`) and an attestor `ci`.
fn config(url: &str, policy: &str) -> Config {
    let signing = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("pem");
    let pem: String = pem.lines().map(|l| format!("            {l}\n")).collect();
    let yaml = format!(
        "listen: 127.0.0.1:0\n\
         upstreams:\n  - registry: registry.example\n    url: {url}\n    default: true\n\
         policy:\n{policy}\
         attestors:\n  - name: ci\n    publicKeys:\n      - id: k1\n        pkixPublicKey:\n          publicKeyPem: |\n{pem}          signatureAlgorithm: ECDSA_P256_SHA256\n\
         cache: {{allowTtl: 10m, denyTtl: 30s, maxEntries: 1000}}\n"
    );
    Config::from_yaml(&yaml, Path::new(".")).expect("config")
}

/// The inline policy of a [`config`], compiled.
fn compile(config: &Config) -> Policy {
    let doc = config.policy.as_ref().expect("an inline policy");
    Policy::compile(doc, &config.attestors).expect("policy")
}

const REQUIRE: &str = "  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    \
                       requireAttestationsBy: [ci]\n";
const ALLOW: &str = "  defaultAdmissionRule:\n    evaluationMode: ALWAYS_ALLOW\n";

fn env(url: &str, policy: &str, content_capacity: usize) -> Env {
    let config = config(url, policy);
    let upstreams = vec![Arc::new(
        Upstream::new(&config.upstreams[0], config.timeouts).expect("upstream"),
    )];
    let verifier = Verifier::with_content_capacity(
        compile(&config),
        config.cache.clone(),
        upstreams.clone(),
        content_capacity,
    );
    Env {
        verifier,
        upstreams,
        router: Router::new(&config),
        config,
    }
}

impl Env {
    fn route(&self, digest: &Digest) -> Route {
        match self
            .router
            .route(
                &Method::GET,
                &format!("/v2/demo/app/manifests/{digest}"),
                None,
            )
            .expect("route")
        {
            Routed::Repository(r) => r,
            Routed::Base => panic!("not a repository route"),
        }
    }

    async fn admit(&self, manifest: &Manifest) -> (Arc<Decision>, bool) {
        let route = self.route(manifest.digest());
        match self
            .verifier
            .admit_fetched(&route, manifest.clone(), None)
            .await
            .expect("admit")
        {
            Outcome::Admitted(a) => (a.decision, a.cache_hit),
            Outcome::Denied(d) => (d.decision, d.cache_hit),
        }
    }

    async fn blob_allowed(&self, digest: &str) -> bool {
        let digest: Digest = digest.parse().expect("digest");
        let route = self.route(&digest);
        self.verifier.blob_allowed(&route, &digest).is_ok()
    }

    /// Caches `decision` for `manifest` as an earlier verification
    /// would have, its content registered in an epoch long gone.
    fn cache(&self, manifest: &Manifest, decision: Verdict) {
        let state = self.verifier.state();
        let key = state
            .scope(&self.route(manifest.digest()))
            .key_of(manifest.digest());
        let decision = Arc::new(Decision {
            verdict: decision,
            rule: RuleSource::Default,
            evaluation: EvaluationMode::RequireAttestation,
            enforcement: EnforcementMode::EnforcedBlockAndAuditLog,
            attestors: Vec::new(),
            reason: "attestor ci: verified".into(),
        });
        let stale = self.verifier.content.epoch().wrapping_sub(7);
        self.verifier.verdicts.insert(&key, decision, stale);
    }
}

fn digest_text(n: u64) -> String {
    format!("sha256:{n:064x}")
}

/// An image manifest with config `n` and layer `n + 1`.
fn image(n: u64) -> Manifest {
    let text = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
         \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{}\",\"size\":2}},\
         \"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"{}\",\"size\":3}}]}}",
        digest_text(n),
        digest_text(n + 1)
    );
    let bytes = Bytes::from(text);
    Manifest::new(
        bytes,
        HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
    )
}

fn index(children: &[&Manifest]) -> Manifest {
    let listed: Vec<String> = children
        .iter()
        .map(|m| {
            format!(
                "{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"{}\",\"size\":{}}}",
                m.digest(),
                m.bytes().len()
            )
        })
        .collect();
    let text = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{}]}}",
        listed.join(",")
    );
    let bytes = Bytes::from(text);
    Manifest::new(
        bytes,
        HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
    )
}

/// An upstream answering 404 to everything, once `open` is sent
/// `true`; counts the requests it received.
async fn gated_upstream() -> (String, tokio::sync::watch::Sender<bool>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (open, gate) = tokio::sync::watch::channel(false);
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut gate = gate.clone();
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                    if !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    request.clear();
                    counted.fetch_add(1, Ordering::SeqCst);
                    if gate.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
                    if socket.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, open, requests)
}

#[tokio::test]
async fn a_verdict_decided_under_an_old_policy_is_never_served_after_a_change() {
    let (url, open, requests) = gated_upstream().await;
    let env = Arc::new(env(&url, REQUIRE, MAX_ADMITTED_CONTENT as usize));
    let manifest = image(1);
    // A cold pull under REQUIRE_ATTESTATION: its signature lookup waits
    // at the upstream.
    let old = {
        let env = Arc::clone(&env);
        let manifest = manifest.clone();
        tokio::spawn(async move { env.admit(&manifest).await })
    };
    for _ in 0..200 {
        if requests.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(requests.load(Ordering::SeqCst) > 0, "no lookup started");
    // The policy changes while that verification runs.
    let allow = compile(&config(&url, ALLOW));
    env.verifier.set_policy(allow);
    // A pull under the new policy neither waits for nor reuses the
    // running verification.
    let (decision, cache_hit) = tokio::time::timeout(Duration::from_secs(5), env.admit(&manifest))
        .await
        .expect("the new generation joined the old verification");
    assert_eq!(decision.verdict, Verdict::Allow);
    assert!(!cache_hit);
    // The old verification finishes: denied under the old policy (no
    // signature), which its own request gets.
    open.send(true).expect("open");
    let (decision, _) = old.await.expect("old admit");
    assert_eq!(decision.verdict, Verdict::Deny, "{}", decision.reason);
    // Its verdict was not stored for the new generation.
    let (decision, cache_hit) = env.admit(&manifest).await;
    assert_eq!(decision.verdict, Verdict::Allow, "{}", decision.reason);
    assert!(cache_hit, "the new generation's own verdict is cached");
}

#[tokio::test]
async fn a_pull_joining_a_verification_whose_manifest_fetch_failed_verifies_on_its_own() {
    let (url, open, requests) = gated_upstream().await;
    let env = Arc::new(env(&url, REQUIRE, MAX_ADMITTED_CONTENT as usize));
    let manifest = image(20);
    // A pull by digest: its evidence lookups start (and wait at the
    // upstream) while its manifest fetch is pending.
    let (fail, failed) = tokio::sync::oneshot::channel::<()>();
    let by_digest = {
        let env = Arc::clone(&env);
        let digest = manifest.digest().clone();
        tokio::spawn(async move {
            let route = env.route(&digest);
            let fetch = async move {
                let _ = failed.await;
                Err::<Manifest, &str>("upstream answered 500")
            };
            env.verifier
                .fetch_and_verify(&route, &digest, fetch)
                .await
                .map(|_| ())
        })
    };
    for _ in 0..200 {
        if requests.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(requests.load(Ordering::SeqCst) > 0, "no lookup started");
    // Another pull of the same digest, which has the manifest (by tag),
    // joins that verification; then the first fetch fails.
    let by_tag = {
        let env = Arc::clone(&env);
        let manifest = manifest.clone();
        tokio::spawn(async move {
            let route = env.route(manifest.digest());
            env.verifier
                .admit_fetched(&route, manifest, None)
                .await
                .map(|o| matches!(o, Outcome::Admitted(_)))
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    fail.send(()).expect("fail the fetch");
    assert_eq!(
        by_digest.await.expect("task").err(),
        Some("upstream answered 500"),
        "the fetching pull gets its own fetch error"
    );
    open.send(true).expect("open");
    // The joined pull is not failed by the other pull's missing
    // manifest: it verifies (no signature upstream: denied).
    let admitted = tokio::time::timeout(Duration::from_secs(10), by_tag)
        .await
        .expect("the joined pull finished")
        .expect("task")
        .expect("verified on its own, not failed with the other fetch");
    assert!(!admitted, "no signature: denied");
}

#[tokio::test]
async fn a_generation_change_drops_verdicts_and_content() {
    let env = env("http://127.0.0.1:9", REQUIRE, MAX_ADMITTED_CONTENT as usize);
    let manifest = image(10);
    env.cache(&manifest, Verdict::Allow);
    assert!(env.admit(&manifest).await.1);
    assert!(env.blob_allowed(&digest_text(10)).await);
    // The attestation store changed (what `refresh_store` does).
    env.verifier.change(None);
    assert!(!env.blob_allowed(&digest_text(10)).await);
    assert_eq!(env.verifier.cached_verdicts().await, 0);
    // The same revision again keeps everything.
    env.cache(&manifest, Verdict::Allow);
    env.admit(&manifest).await;
    env.verifier.set_policy(compile(&env.config));
    assert!(env.blob_allowed(&digest_text(10)).await);
    assert!(env.admit(&manifest).await.1);
}

#[tokio::test]
async fn blobs_of_an_admitted_image_stay_servable_while_its_verdict_is_served() {
    // Room for 8 blobs: 4 per segment, two images each.
    let env = env("http://127.0.0.1:9", REQUIRE, 8);
    let manifest = image(100);
    env.cache(&manifest, Verdict::Allow);
    assert!(!env.blob_allowed(&digest_text(100)).await);
    // A verdict-cache hit registers the content that aged out.
    assert!(env.admit(&manifest).await.1);
    assert!(env.blob_allowed(&digest_text(100)).await);
    assert!(env.blob_allowed(&digest_text(101)).await);
    assert!(
        !env.blob_allowed(&digest_text(102)).await,
        "a blob the image does not list"
    );
    // Other images push it out of the content table (two rotations).
    for n in 0..4 {
        let other = image(1000 + 10 * n);
        env.cache(&other, Verdict::Allow);
        env.admit(&other).await;
    }
    assert!(!env.blob_allowed(&digest_text(100)).await);
    // Its next pull is still a hit, and makes its blobs servable again.
    assert!(env.admit(&manifest).await.1);
    assert!(env.blob_allowed(&digest_text(100)).await);
    assert!(env.blob_allowed(&digest_text(101)).await);
    // A hit with the content current registers nothing again.
    let key = env
        .verifier
        .state()
        .scope(&env.route(manifest.digest()))
        .key_of(manifest.digest());
    let epoch = env.verifier.content.epoch();
    assert!(env.admit(&manifest).await.1);
    assert_eq!(env.verifier.content.epoch(), epoch);
    assert_eq!(
        env.verifier.verdicts.get(&key).map(|h| h.content),
        Some(epoch)
    );
    // A denied image's blobs are not servable.
    let denied = image(200);
    env.cache(&denied, Verdict::Deny);
    assert_eq!(env.admit(&denied).await.0.verdict, Verdict::Deny);
    assert!(!env.blob_allowed(&digest_text(200)).await);
}

#[tokio::test]
async fn an_admitted_index_admits_its_children_and_lifts_their_denials() {
    let env = env("http://127.0.0.1:9", REQUIRE, MAX_ADMITTED_CONTENT as usize);
    let (a, b) = (image(300), image(310));
    let list = index(&[&a, &b]);
    env.cache(&b, Verdict::Deny);
    assert_eq!(env.admit(&b).await.0.verdict, Verdict::Deny);
    env.cache(&list, Verdict::Allow);
    assert!(env.admit(&list).await.1);
    // The children are decided from the index alone (the upstream at
    // 127.0.0.1:9 would fail a lookup), with one shared decision.
    let (da, hit) = env.admit(&a).await;
    assert!(!hit);
    assert_eq!(da.verdict, Verdict::Allow);
    assert_eq!(
        da.reason,
        format!("listed by admitted index {}", list.digest())
    );
    let (db, _) = env.admit(&b).await;
    assert_eq!(db.verdict, Verdict::Allow, "the child's denial was kept");
    assert!(Arc::ptr_eq(&da, &db));
    assert!(env.blob_allowed(&digest_text(301)).await);
}

#[tokio::test]
async fn a_child_verified_while_its_index_is_admitted_is_not_left_denied() {
    let (url, open, requests) = gated_upstream().await;
    let env = Arc::new(env(&url, REQUIRE, MAX_ADMITTED_CONTENT as usize));
    let child = image(500);
    let list = index(&[&child]);
    // The child's own verification starts (and waits at the upstream)
    // before the index is admitted.
    let verifying = {
        let env = Arc::clone(&env);
        let child = child.clone();
        tokio::spawn(async move { env.admit(&child).await })
    };
    for _ in 0..200 {
        if requests.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(requests.load(Ordering::SeqCst) > 0, "no lookup started");
    env.cache(&list, Verdict::Allow);
    assert!(env.admit(&list).await.1);
    // The child has no signature of its own: denied by the rule, but
    // listed by the index admitted meanwhile.
    open.send(true).expect("open");
    let (decision, _) = verifying.await.expect("child admit");
    assert_eq!(decision.verdict, Verdict::Allow, "{}", decision.reason);
    let (decision, hit) = env.admit(&child).await;
    assert!(hit);
    assert_eq!(decision.verdict, Verdict::Allow, "{}", decision.reason);
}

#[tokio::test]
async fn decisions_that_depend_on_the_rule_alone_are_shared() {
    let env = env("http://127.0.0.1:9", ALLOW, MAX_ADMITTED_CONTENT as usize);
    let (first, _) = env.admit(&image(400)).await;
    let (second, hit) = env.admit(&image(410)).await;
    assert!(!hit);
    assert_eq!(second.reason, "ALWAYS_ALLOW");
    assert!(Arc::ptr_eq(&first, &second));
    let unconfigured = Verifier::new(
        Policy::allow_all(),
        CacheConfig::default(),
        env.upstreams.clone(),
    );
    let route = env.route(image(1).digest());
    let decide = |m: Manifest| {
        let unconfigured = &unconfigured;
        let route = &route;
        async move {
            match unconfigured
                .admit_fetched(route, m, None)
                .await
                .expect("admit")
            {
                Outcome::Admitted(a) => a.decision,
                Outcome::Denied(_) => panic!("denied without a policy"),
            }
        }
    };
    let (x, y) = (decide(image(1)).await, decide(image(2)).await);
    assert!(Arc::ptr_eq(&x, &y));
    assert_eq!(x.verdict, Verdict::Exempt);
}
