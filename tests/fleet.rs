//! A fleet: two or three `portcullis serve` processes on one configuration
//! (only `listen` and the replica name differ), sharing state through a
//! real `redis-server`, in front of a real distribution registry holding
//! images signed by `portcullis sign`.
//!
//! - what one replica admitted, the others serve: a manifest through A,
//!   its layers through B and C, an index through A and its children and
//!   their layers through B and C; a denied image's blobs through any
//!   replica are refused; without Redis the same split pull fails (the
//!   problem this solves);
//! - a reload on one replica reaches the others within a second (the
//!   policy file is rewritten so that no file watcher can notice: only
//!   the fleet's announcement can);
//! - a split pull across a reload: manifests through A before it, blobs
//!   through B after it, served when the new policy still admits the
//!   image (B verifies the manifest the fleet names again), refused when
//!   it does not;
//! - Redis stopped: nothing unverified is served, what a replica admitted
//!   itself still works, other blobs fail closed naming Redis, manifests
//!   are verified locally, `/readyz` says why; Redis back (empty): normal
//!   service without a restart;
//! - skopeo and ctr pull through nginx round-robin over two replicas;
//! - the decision list shows the whole fleet, each record naming its
//!   replica.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::clients::{self, Containerd};
use common::content::{self, sha256_digest, PushedImage, PushedIndex};
use common::http;
use common::nginx::Nginx;
use common::redis::Redis;
use common::registry::Registry;
use common::trust::{self, KeyPair, ATTESTOR};
use common::Proxy;

const SIGNED: &str = "team/signed";
const UNSIGNED: &str = "team/unsigned";
const MULTI: &str = "team/multi";

/// The registry, its images, the key, and the policy file every replica
/// reads.
struct Upstream {
    reg: Registry,
    dir: tempfile::TempDir,
    signed: PushedImage,
    unsigned: PushedImage,
    multi: PushedIndex,
}

impl Upstream {
    fn start() -> Upstream {
        let reg = Registry::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let key = trust::keygen(dir.path(), "ci");
        let arch = common::host_arch();
        let signed =
            content::push_image(&reg.url(), SIGNED, Some("v1"), arch, 91, &[40_000, 9_000]);
        let unsigned = content::push_image(&reg.url(), UNSIGNED, Some("v1"), arch, 92, &[30_000]);
        let multi = content::push_multiarch(&reg.url(), MULTI, "v1", 93, 20_000);
        let host = reg.host();
        trust::sign(
            &reg.url(),
            &format!("{host}/{SIGNED}:v1"),
            SIGNED,
            &signed.digest,
            &key,
            &[],
        );
        trust::sign(
            &reg.url(),
            &format!("{host}/{MULTI}:v1"),
            MULTI,
            &multi.digest,
            &key,
            &[],
        );
        write_policy(&dir.path().join("policy.yaml"), &key, "REQUIRE_ATTESTATION");
        Upstream {
            reg,
            dir,
            signed,
            unsigned,
            multi,
        }
    }

    /// The CI key pair `start` made.
    fn key(&self) -> KeyPair {
        let public = self.dir.path().join("ci.pub");
        KeyPair {
            key: self.dir.path().join("ci.key"),
            pem: std::fs::read_to_string(&public).expect("ci.pub"),
            public,
        }
    }

    fn policy_path(&self) -> std::path::PathBuf {
        self.dir.path().join("policy.yaml")
    }

    /// One replica's config: `redis` (a URL) or none.
    fn config(&self, replica: &str, redis: Option<&str>) -> String {
        let host = self.reg.host();
        let state = match redis {
            Some(url) => format!(
                "state:\n  replica: {replica}\n  redis:\n    url: {url}\n    timeout: 300ms\n"
            ),
            None => format!("state:\n  replica: {replica}\n"),
        };
        format!(
            "listen: {{listen}}\n\
             upstreams:\n  - registry: {host}\n    url: {url}\n    default: true\n\
             policyFile: {policy}\n\
             cache: {{allowTtl: 10m, denyTtl: 30s}}\n\
             {state}",
            url = self.reg.url(),
            policy = self.policy_path().display(),
        )
    }
}

/// The policy file: `mode` for every image, by the CI key. Written with a
/// fixed length whatever the mode, so a rewrite can keep size and mtime.
fn write_policy(path: &Path, key: &KeyPair, mode: &str) {
    let mut text = format!(
        "policy:\n  defaultAdmissionRule:\n    evaluationMode: {mode:<20}\n    \
         enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n    requireAttestationsBy: [{ATTESTOR}]\n\
         attestors:\n  - name: {ATTESTOR}\n    publicKeys:\n      - id: ci\n        \
         pkixPublicKey:\n          signatureAlgorithm: ECDSA_P256_SHA256\n          publicKeyPem: |\n"
    );
    for line in key.pem.lines() {
        text.push_str(&format!("            {line}\n"));
    }
    std::fs::write(path, text).expect("write policy");
}

/// A replica and its admin listener (`/metrics`, `/-/api`, `/readyz`).
struct Replica {
    proxy: Proxy,
    admin: String,
}

impl std::ops::Deref for Replica {
    type Target = Proxy;
    fn deref(&self) -> &Proxy {
        &self.proxy
    }
}

impl Replica {
    fn start(config: &str) -> Replica {
        let admin = format!("http://127.0.0.1:{}", common::free_port());
        let listen = admin.trim_start_matches("http://");
        let proxy = Proxy::start_with_health(
            &format!("{config}admin: {{listen: {listen}}}\n"),
            &format!("{admin}/healthz"),
        );
        Replica { proxy, admin }
    }

    fn admin_get(&self, path: &str) -> http::Response {
        let url = format!("{}{path}", self.admin);
        http::get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }
}

fn replicas(up: &Upstream, redis: &Redis, names: &[&str]) -> Vec<Replica> {
    names
        .iter()
        .map(|n| Replica::start(&up.config(n, Some(&redis.url()))))
        .collect()
}

fn blob(proxy: &Proxy, repo: &str, digest: &str) -> http::Response {
    let url = format!("{}/v2/{repo}/blobs/{digest}", proxy.url());
    http::get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// A blob served with exactly the bytes its digest names.
fn assert_blob_served(proxy: &Proxy, repo: &str, digest: &str, what: &str) {
    let r = blob(proxy, repo, digest);
    assert_eq!(r.status, 200, "{what}: HTTP {} {}", r.status, r.text());
    assert_eq!(
        sha256_digest(&r.body),
        digest,
        "{what}: other bytes than the digest names"
    );
}

fn assert_blob_refused(proxy: &Proxy, repo: &str, digest: &str, what: &str) -> String {
    let r = blob(proxy, repo, digest);
    assert_eq!(r.status, 403, "{what}: HTTP {} {}", r.status, r.text());
    assert!(r.text().contains("DENIED"), "{what}: {}", r.text());
    r.text()
}

fn manifest(proxy: &Proxy, repo: &str, reference: &str) -> http::Response {
    trust::get_manifest_via(proxy, repo, reference)
}

fn blobs_of(img: &PushedImage) -> Vec<String> {
    trust::manifest_blobs(&img.manifest)
}

#[test]
fn what_one_replica_admitted_the_others_serve_and_nothing_else() {
    let up = Upstream::start();
    let redis = Redis::start();
    let fleet = replicas(&up, &redis, &["a", "b", "c"]);
    let (a, b, c) = (&fleet[0], &fleet[1], &fleet[2]);

    // A single image: manifest through A, config and layers through B and C.
    let r = manifest(a, SIGNED, "v1");
    assert_eq!(r.status, 200, "signed image through A: {}", r.text());
    assert_eq!(
        r.body, up.signed.manifest,
        "A served other bytes than the manifest"
    );
    for (i, d) in blobs_of(&up.signed).iter().enumerate() {
        let replica = if i % 2 == 0 { b } else { c };
        assert_blob_served(
            replica,
            SIGNED,
            d,
            &format!("blob {i} of the image A admitted"),
        );
    }

    // An index: through A; each child through B, its blobs through C.
    let r = manifest(a, MULTI, "v1");
    assert_eq!(r.status, 200, "signed index through A: {}", r.text());
    for child in &up.multi.images {
        let r = manifest(b, MULTI, &child.digest);
        assert_eq!(
            r.status,
            200,
            "child {} through B: {}",
            child.arch,
            r.text()
        );
        assert_eq!(
            r.body, child.manifest,
            "B served other bytes for child {}",
            child.arch
        );
        for d in blobs_of(child) {
            assert_blob_served(
                c,
                MULTI,
                &d,
                &format!("blob of child {} through C", child.arch),
            );
        }
    }

    // A denied image: its manifest is refused, and so are its blobs,
    // through every replica.
    let r = manifest(a, UNSIGNED, "v1");
    assert_eq!(r.status, 403, "unsigned image through A: {}", r.text());
    for proxy in [a, b, c] {
        for d in blobs_of(&up.unsigned) {
            assert_blob_refused(proxy, UNSIGNED, &d, "blob of the denied image");
        }
    }
    // The signed image's blobs are not servable under another repository.
    let d = &blobs_of(&up.signed)[1];
    assert_blob_refused(
        b,
        UNSIGNED,
        d,
        "an admitted blob asked for under a denied repository",
    );

    // What Redis holds was written after verifications, under one revision.
    let keys = redis.keys("portcullis:v1:*:b:*");
    assert!(
        keys.len() >= blobs_of(&up.signed).len(),
        "admitted blobs are not in Redis: {keys:?}"
    );

    // The decision list is the fleet's: A's decisions, read through C.
    let r = c.admin_get("/-/api/decisions?limit=100");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("decisions json");
    assert_eq!(v["scope"], "fleet", "{v}");
    let replicas: Vec<&str> = v["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .filter_map(|d| d["replica"].as_str())
        .collect();
    assert!(
        replicas.contains(&"a"),
        "C does not list A's decisions: {v}"
    );
    assert!(
        replicas.contains(&"b"),
        "C does not list B's decisions: {v}"
    );
    let denial = v["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .find(|d| {
            d["verdict"] == "deny"
                && d["subject"] == "manifest"
                && d["reference"]
                    .as_str()
                    .is_some_and(|r| r.ends_with(UNSIGNED))
        });
    assert!(
        denial.is_some_and(|d| d["replica"] == "a"),
        "A's denial is not in C's list: {v}"
    );
}

#[test]
fn without_shared_state_a_split_pull_is_refused() {
    // The problem the fleet solves, and proof the test above can fail:
    // two replicas with no Redis do not know each other's admissions.
    let up = Upstream::start();
    let a = Replica::start(&up.config("a", None));
    let b = Replica::start(&up.config("b", None));
    let r = manifest(&a, SIGNED, "v1");
    assert_eq!(r.status, 200, "{}", r.text());
    let d = &blobs_of(&up.signed)[0];
    let text = assert_blob_refused(&b, SIGNED, d, "a blob B never saw admitted, without Redis");
    assert!(text.contains("not part of an admitted image"), "{text}");
}

#[test]
fn a_reload_on_one_replica_changes_the_verdict_on_the_other_within_a_second() {
    let up = Upstream::start();
    let redis = Redis::start();
    let fleet = replicas(&up, &redis, &["a", "b"]);
    let (a, b) = (&fleet[0], &fleet[1]);
    for p in [a, b] {
        let r = manifest(p, SIGNED, "v1");
        assert_eq!(r.status, 200, "before the reload: {}", r.text());
    }
    // ALWAYS_DENY, written with the same length and the old mtime: no
    // replica's file watcher can tell, only a SIGHUP (on A) reloads.
    let path = up.policy_path();
    let before = std::fs::metadata(&path).expect("stat policy");
    let key = up.key();
    write_policy(&path, &key, "ALWAYS_DENY");
    let mtime = before
        .modified()
        .expect("mtime")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("epoch");
    clients::run(
        Command::new("touch")
            .arg("-m")
            .arg("-d")
            .arg(format!("@{}.{:09}", mtime.as_secs(), mtime.subsec_nanos()))
            .arg(&path),
        "touch -d",
    );
    let after = std::fs::metadata(&path).expect("stat policy");
    assert_eq!(after.len(), before.len(), "the rewrite changed the size");
    assert_eq!(
        after.modified().ok(),
        before.modified().ok(),
        "the rewrite changed the mtime"
    );
    // Let a file-watch tick pass: it must not reload anything.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        manifest(b, SIGNED, "v1").status,
        200,
        "B reloaded without being told"
    );

    let hup = Instant::now();
    clients::run(
        Command::new("kill").arg("-HUP").arg(a.pid().to_string()),
        "kill -HUP",
    );
    let mut denied_on_b = None;
    while hup.elapsed() < Duration::from_secs(5) {
        if manifest(b, SIGNED, "v1").status == 403 {
            denied_on_b = Some(hup.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = denied_on_b.expect("B still serves the image 5 s after A reloaded");
    assert!(
        took <= Duration::from_secs(1),
        "B changed its verdict after {took:?}, not within a second"
    );
    assert_eq!(
        manifest(a, SIGNED, "v1").status,
        403,
        "A itself did not reload"
    );
    assert!(
        b.logs().contains("another replica reloaded"),
        "B's reload was not the fleet's announcement:\n{}",
        b.logs()
    );
}

/// A split pull that spans a reload: A admitted the manifests under the
/// old policy, B is asked for their blobs under the new one. B never saw
/// the manifests; the fleet names them (the blob's manifest, and the
/// index listing a child), B verifies them again under the new policy,
/// and serves the blobs only while it still admits them.
#[test]
fn a_split_pull_across_a_reload_gets_its_blobs_while_the_new_policy_admits_the_image() {
    let up = Upstream::start();
    let redis = Redis::start();
    let fleet = replicas(&up, &redis, &["a", "b"]);
    let (a, b) = (&fleet[0], &fleet[1]);
    let key = up.key();
    let child = &up.multi.images[0];
    let pull_manifests = || {
        for (repo, reference) in [
            (SIGNED, "v1"),
            (MULTI, "v1"),
            (MULTI, child.digest.as_str()),
        ] {
            let r = manifest(a, repo, reference);
            assert_eq!(r.status, 200, "{repo}:{reference} through A: {}", r.text());
        }
    };
    // Waits until both replicas run a policy revision other than `before`.
    let reloaded = |before: &[String; 2]| {
        let ok = trust::wait_until(Duration::from_secs(10), || {
            [a, b]
                .iter()
                .zip(before)
                .all(|(p, old)| revision(p).as_ref() != Some(old))
        });
        assert!(
            ok,
            "the replicas did not reload\nA:\n{}\nB:\n{}",
            a.logs(),
            b.logs()
        );
    };

    // The same rule under another revision: the image is still admitted.
    pull_manifests();
    let before = [a, b].map(|p| revision(p).expect("revision"));
    let path = up.policy_path();
    let text = std::fs::read_to_string(&path).expect("read policy");
    let other = text.replacen(
        "policy:\n",
        "policy:\n  admissionWhitelistPatterns:\n    - namePattern: elsewhere.example/*\n",
        1,
    );
    assert_ne!(other, text);
    std::fs::write(&path, other).expect("rewrite policy");
    reloaded(&before);
    for d in blobs_of(&up.signed) {
        assert_blob_served(
            b,
            SIGNED,
            &d,
            "blob of the signed image through B after the reload",
        );
    }
    for d in blobs_of(child) {
        assert_blob_served(
            b,
            MULTI,
            &d,
            "blob of the index's child through B after the reload",
        );
    }
    let readmitted = |result: &str| {
        let metrics = b.admin_get("/metrics").text();
        counter(
            &metrics,
            &format!("portcullis_blob_readmissions_total{{result=\"{result}\"}}"),
        )
    };
    // One an image: its first blob admits it again, and then its other
    // blobs are admitted already.
    let images = 2.0;
    assert_eq!(readmitted("admitted"), images, "B's re-admissions, counted");
    assert_eq!(readmitted("denied"), 0.0);

    // Now a policy that denies everything: the same split pull is refused.
    pull_manifests();
    let before = [a, b].map(|p| revision(p).expect("revision"));
    write_policy(&path, &key, "ALWAYS_DENY");
    reloaded(&before);
    for d in blobs_of(&up.signed) {
        let text = assert_blob_refused(b, SIGNED, &d, "blob of the signed image under ALWAYS_DENY");
        assert!(
            text.contains("which the current policy denies"),
            "the refusal does not say the image is denied now: {text}"
        );
    }
    assert_blob_refused(
        b,
        MULTI,
        &blobs_of(child)[0],
        "blob of the child under ALWAYS_DENY",
    );
    // A denied image admits nothing: each of its blobs asks again.
    assert_eq!(
        readmitted("denied"),
        (blobs_of(&up.signed).len() + 1) as f64,
        "B's refused re-admissions, counted"
    );
    assert_eq!(
        readmitted("admitted"),
        images,
        "nothing admitted under ALWAYS_DENY"
    );
}

/// The policy revision a replica enforces (`portcullis_policy_revision_info`).
fn revision(p: &Replica) -> Option<String> {
    let metrics = p.admin_get("/metrics").text();
    metrics
        .lines()
        .find(|l| l.starts_with("portcullis_policy_revision_info{"))
        .and_then(|l| l.split("revision=\"").nth(1))
        .and_then(|r| r.split('"').next())
        .map(str::to_owned)
}

#[test]
fn redis_down_fails_closed_and_redis_back_restores_service() {
    let up = Upstream::start();
    let mut redis = Redis::start();
    let fleet = replicas(&up, &redis, &["a", "b"]);
    let (a, b) = (&fleet[0], &fleet[1]);
    let blobs = blobs_of(&up.signed);
    // A admits and pulls the signed image whole.
    assert_eq!(manifest(a, SIGNED, "v1").status, 200);
    for d in &blobs {
        assert_blob_served(a, SIGNED, d, "before the outage, through A");
    }

    redis.stop();
    // A still serves what it admitted itself (manifest and blobs).
    assert_eq!(
        manifest(a, SIGNED, "v1").status,
        200,
        "A's own admission during the outage"
    );
    for d in &blobs {
        assert_blob_served(a, SIGNED, d, "A's own admitted blob during the outage");
    }
    // B cannot prove the blobs admitted: refused, saying why.
    for d in &blobs {
        let text = assert_blob_refused(b, SIGNED, d, "a blob only Redis could vouch for");
        assert!(
            text.contains("shared state"),
            "the refusal does not name the shared state: {text}"
        );
    }
    // Nothing unverified: the denied image stays denied everywhere, and B
    // verifies manifests by itself (the signed one passes, the other not).
    assert_eq!(manifest(b, UNSIGNED, "v1").status, 403);
    for d in blobs_of(&up.unsigned) {
        assert_blob_refused(a, UNSIGNED, &d, "denied image's blob during the outage");
        assert_blob_refused(b, UNSIGNED, &d, "denied image's blob during the outage");
    }
    let r = manifest(b, SIGNED, "v1");
    assert_eq!(r.status, 200, "B verifying on its own: {}", r.text());
    // /readyz stays 200 (one replica's Redis trouble must not empty the
    // Service) and says why it is degraded.
    let r = b.admin_get("/readyz?verbose");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("readyz json");
    let state = v["state"]["redis"].as_str().unwrap_or_default().to_owned();
    assert!(
        state.starts_with("degraded"),
        "readyz does not report the outage: {v}"
    );
    let metrics = b.admin_get("/metrics").text();
    assert!(
        counter(&metrics, "portcullis_redis_errors_total") > 0.0,
        "{metrics}"
    );
    assert!(
        counter(&metrics, "portcullis_redis_fallbacks_total") > 0.0,
        "{metrics}"
    );

    // Redis back, empty: no restart of the replicas.
    redis.restart();
    let back = trust::wait_until(Duration::from_secs(10), || {
        serde_json::from_slice::<serde_json::Value>(&b.admin_get("/readyz?verbose").body)
            .ok()
            .is_some_and(|v| v["state"]["redis"] == "reachable")
    });
    assert!(back, "B does not see Redis back");
    // The next manifest request through A shares its admission again;
    // then B serves the blobs.
    assert!(
        trust::wait_until(Duration::from_secs(10), || {
            manifest(a, SIGNED, "v1").status == 200
                && blobs.iter().all(|d| blob(b, SIGNED, d).status == 200)
        }),
        "after Redis came back, B still cannot serve what A admitted"
    );
    for d in &blobs {
        assert_blob_served(b, SIGNED, d, "after the outage, through B");
    }
}

#[test]
fn skopeo_and_ctr_pull_through_a_round_robin_of_two_replicas() {
    let up = Upstream::start();
    let redis = Redis::start();
    let fleet = replicas(&up, &redis, &["a", "b"]);
    let lb = round_robin(&[&fleet[0], &fleet[1]]);
    let host = lb.host();

    // skopeo: every blob of the image, through alternating replicas.
    let dest = tempfile::tempdir().expect("tempdir");
    let out = trust::skopeo_copy(&format!("{host}/{SIGNED}:v1"), &dest.path().join("img"));
    trust::assert_succeeded(&out, "skopeo copy through the round robin");
    let got = trust::dir_manifest_digest(&dest.path().join("img"));
    assert_eq!(got, up.signed.digest, "skopeo got another manifest");
    // The unsigned image is refused through the same balancer.
    let out = trust::skopeo_copy(&format!("{host}/{UNSIGNED}:v1"), &dest.path().join("no"));
    assert!(!out.status.success(), "skopeo pulled the unsigned image");

    // ctr (containerd): the index, its children and layers.
    let ctr = Containerd::start();
    let out = trust::ctr_pull(&ctr, &format!("{host}/{MULTI}:v1"), None);
    trust::assert_succeeded(&out, "ctr pull through the round robin");

    // Both replicas served the pulls.
    for (name, p) in [("a", &fleet[0]), ("b", &fleet[1])] {
        let metrics = p.admin_get("/metrics").text();
        assert!(
            served_bytes(&metrics) > 0.0,
            "replica {name} served nothing: the balancer did not alternate\n{metrics}"
        );
    }
}

/// nginx on a free port, balancing requests round-robin over replicas.
fn round_robin(replicas: &[&Replica]) -> Nginx {
    let servers: Vec<String> = replicas.iter().map(|p| p.host()).collect();
    Nginx::proxy(&servers, "")
}

/// The value of an unlabelled counter in a text exposition.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Response bytes a replica served.
fn served_bytes(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_served_bytes_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_password_protected_redis_is_used_with_password_file_and_refused_without() {
    let up = Upstream::start();
    let redis = Redis::start_with_password("s3cret-fleet-password-0123");
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    std::fs::write(&good, "s3cret-fleet-password-0123\n").expect("write password");
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "not-the-password").expect("write password");
    let with = |name: &str, file: &Path| {
        let config = up.config(name, Some(&redis.url())).replace(
            "    timeout: 300ms\n",
            &format!("    timeout: 300ms\n    passwordFile: {}\n", file.display()),
        );
        Replica::start(&config)
    };
    let a = with("a", &good);
    let b = with("b", &good);
    let wrong = with("c", &bad);
    assert_eq!(manifest(&a, SIGNED, "v1").status, 200);
    for d in blobs_of(&up.signed) {
        assert_blob_served(
            &b,
            SIGNED,
            &d,
            "through B, sharing through the password-protected Redis",
        );
        let text = assert_blob_refused(
            &wrong,
            SIGNED,
            &d,
            "through a replica with the wrong password",
        );
        assert!(text.contains("shared state"), "{text}");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&wrong.admin_get("/readyz").body).expect("readyz json");
    assert!(
        v["state"]["redis"]
            .as_str()
            .is_some_and(|s| s.starts_with("degraded")),
        "{v}"
    );
    // The password never reaches the logs.
    for r in [&a, &b, &wrong] {
        assert!(
            !r.logs().contains("s3cret-fleet-password"),
            "the password was logged"
        );
        assert!(
            !r.logs().contains("not-the-password"),
            "the password was logged"
        );
    }
}

#[test]
fn a_break_glass_admission_on_one_replica_serves_its_blobs_on_another_only_with_the_credential() {
    let up = Upstream::start();
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("oncall.token");
    std::fs::write(&token, "glass-5e0c1d9a7b3f2468\n").expect("write token");
    let glass = format!(
        "breakGlass:\n  enabled: true\n  credentials:\n    - name: oncall\n      tokenFile: {}\n",
        token.display()
    );
    let fleet: Vec<Replica> = ["a", "b"]
        .iter()
        .map(|n| Replica::start(&format!("{}{glass}", up.config(n, Some(&redis.url())))))
        .collect();
    let (a, b) = (&fleet[0], &fleet[1]);
    let header = (
        "X-Portcullis-Break-Glass",
        "glass-5e0c1d9a7b3f2468 INC-7 rollback",
    );
    let get = |p: &Replica, path: &str, with: bool| {
        let mut headers = vec![("Accept", trust::MANIFEST_ACCEPT)];
        if with {
            headers.push(header);
        }
        http::request("GET", &format!("{}{path}", p.url()), &headers, &[]).expect("GET")
    };
    // The unsigned image, admitted by break-glass through A.
    let r = get(a, &format!("/v2/{UNSIGNED}/manifests/v1"), true);
    assert_eq!(r.status, 200, "break-glass through A: {}", r.text());
    for d in blobs_of(&up.unsigned) {
        let path = format!("/v2/{UNSIGNED}/blobs/{d}");
        // B serves its blobs to a request with the credential...
        let r = get(b, &path, true);
        assert_eq!(r.status, 200, "break-glass blob through B: {}", r.text());
        assert_eq!(sha256_digest(&r.body), d);
        // ...and to nobody else.
        let r = get(b, &path, false);
        assert_eq!(
            r.status,
            403,
            "a break-glass blob without the credential: {}",
            r.text()
        );
    }
}
