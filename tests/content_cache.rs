//! The content store (`cache.content`): verified blobs on disk.
//!
//! With a real distribution registry (its access log counts what it was
//! asked) and real clients:
//! - a second and third skopeo pull make no upstream blob request, and
//!   bring the same bytes;
//! - 20 concurrent cold GETs of one 128 MiB blob make one upstream fetch;
//! - ranges and HEADs of a stored blob are answered from disk.
//!
//! With the in-process fake upstream, for faults a registry cannot show:
//! - wrong or cut-off upstream bytes are never stored, and the next pull
//!   fetches again;
//! - kill -9 during a download leaves no visible file, and a new process
//!   on the same store pulls normally;
//! - eviction keeps the store under `maxSize`, least recently used first;
//! - `verifyOnRead` catches a flipped bit, never serves it, and refetches;
//! - a leading client that stops reading does not hold up the others, and
//!   still gets every byte when it reads again;
//! - a download still trickling in after `timeouts.download` is dropped:
//!   nothing stored, no client gets a complete body.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::clients;
use common::content::{self, sha256_reader};
use common::fake::{pseudo_random, Fake, FakeConfig};
use common::http;
use common::proxy::single_upstream_config;
use common::registry::Registry;
use common::Proxy;

const REPO: &str = "team/app";

/// `config` with a content store at `store` (and `extra` settings).
fn with_store(config: &str, store: &Path, extra: &str) -> String {
    format!(
        "{config}cache:\n  content:\n    path: {}\n    maxSize: 1GiB\n{extra}",
        store.display()
    )
}

/// Starts the proxy with an admin listener; its URL (for `/metrics`).
fn start_with_admin(config: &str) -> (Proxy, String) {
    let admin = format!("127.0.0.1:{}", common::free_port());
    let config = format!("{config}admin: {{listen: {admin}}}\n");
    let proxy = Proxy::start_with_health(&config, &format!("http://{admin}/healthz"));
    (proxy, format!("http://{admin}"))
}

/// Upstream GETs of blobs of `name` in the registry's access log.
///
/// Read once the log has settled (no new line for 300 ms, 5 s at most):
/// the registry writes a request's line after its response is complete,
/// which can be after the proxy, and its client, had every byte.
fn upstream_blob_gets(reg: &Registry, name: &str, digest: Option<&str>) -> usize {
    let needle = match digest {
        Some(d) => format!("\"GET /v2/{name}/blobs/{d} "),
        None => format!("\"GET /v2/{name}/blobs/"),
    };
    let count = || reg.logs().matches(&needle).count();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = count();
    let mut unchanged_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = count();
        if now != last {
            last = now;
            unchanged_since = Instant::now();
        } else if unchanged_since.elapsed() >= Duration::from_millis(300)
            || Instant::now() >= deadline
        {
            return now;
        }
    }
}

/// The files in the store's `blobs/sha256` and `tmp` directories.
fn store_files(store: &Path) -> (Vec<String>, Vec<String>) {
    let list = |dir: PathBuf| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    (
        list(store.join("blobs").join("sha256")),
        list(store.join("tmp")),
    )
}

/// Waits up to `wait` for `check`.
fn eventually(wait: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET `url`, the body read to its end: `Ok(bytes)` if complete,
/// `Err(description)` if refused or cut off.
fn get_whole(url: &str) -> Result<Vec<u8>, String> {
    let r =
        http::request_streaming("GET", url, &[], None).map_err(|e| format!("no response: {e}"))?;
    if r.status != 200 {
        let mut text = String::new();
        let mut body = r.body;
        let _ = body.read_to_string(&mut text);
        return Err(format!("HTTP {}: {text}", r.status));
    }
    let mut body = r.body;
    let mut got = Vec::new();
    body.read_to_end(&mut got)
        .map_err(|e| format!("cut off after {} bytes: {e}", got.len()))?;
    Ok(got)
}

#[test]
fn repeat_pulls_come_from_the_store_not_the_upstream() {
    let reg = Registry::start_with_access_log();
    let image = content::push_image(
        &reg.url(),
        REPO,
        Some("v1"),
        common::host_arch(),
        301,
        &[300_000, 40_000],
    );
    let store = tempfile::tempdir().expect("tempdir");
    let (proxy, admin) = start_with_admin(&with_store(
        &single_upstream_config(&reg.host()),
        store.path(),
        "",
    ));
    let reference = format!("{}/{REPO}:v1", proxy.host());
    let direct = tempfile::tempdir().expect("tempdir");
    clients::skopeo_copy_to_dir(&format!("{}/{REPO}:v1", reg.host()), direct.path(), false);
    let before = upstream_blob_gets(&reg, REPO, None);
    let mut pulls = Vec::new();
    let mut fetched = Vec::new();
    for _ in 0..3 {
        let dest = tempfile::tempdir().expect("tempdir");
        clients::skopeo_copy_to_dir(&reference, dest.path(), false);
        let files = clients::assert_dirs_identical(direct.path(), dest.path());
        assert!(files >= 3, "only {files} files pulled");
        fetched.push(upstream_blob_gets(&reg, REPO, None) - before);
        pulls.push(dest);
    }
    eprintln!("upstream blob GETs after each pull through the store: {fetched:?}");
    let blobs = image.blobs().len();
    assert_eq!(
        fetched,
        vec![blobs, blobs, blobs],
        "the first pull fetches each blob once; the second and third fetch none"
    );
    let (stored, tmp) = store_files(store.path());
    for blob in image.blobs() {
        let hex = blob.digest.trim_start_matches("sha256:");
        assert!(
            stored.iter().any(|f| f == hex),
            "{} not stored",
            blob.digest
        );
    }
    assert!(tmp.is_empty(), "files left in tmp/: {tmp:?}");
    let metrics = http::get(&format!("{admin}/metrics")).expect("metrics");
    let text = metrics.text();
    let hits = metric(&text, "portcullis_content_cache_hits_total");
    assert!(
        hits >= 2.0 * blobs as f64,
        "content cache hits {hits}, expected at least {}",
        2 * blobs
    );
}

/// The value of an unlabelled sample in a Prometheus exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[test]
fn twenty_concurrent_cold_pulls_of_one_blob_fetch_it_once() {
    const SIZE: u64 = 128 * 1024 * 1024;
    let reg = Registry::start_with_access_log();
    let image = content::push_image(
        &reg.url(),
        REPO,
        Some("big"),
        common::host_arch(),
        302,
        &[SIZE],
    );
    let store = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(&with_store(
        &single_upstream_config(&reg.host()),
        store.path(),
        "",
    ));
    let manifest = http::request(
        "GET",
        &format!("{}/v2/{REPO}/manifests/big", proxy.url()),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        &[],
    )
    .expect("manifest");
    assert_eq!(manifest.status, 200, "manifest: {}", manifest.text());
    let layer = image.layers[0].1.clone();
    let url = format!("{}/v2/{REPO}/blobs/{}", proxy.url(), layer.digest);
    let started = Instant::now();
    let pulls: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || -> Result<(String, u64), String> {
                let r = http::request_streaming("GET", &url, &[], None)
                    .map_err(|e| format!("no response: {e}"))?;
                if r.status != 200 {
                    return Err(format!("HTTP {}", r.status));
                }
                sha256_reader(r.body).map_err(|e| format!("cut off: {e}"))
            })
        })
        .collect();
    for (i, pull) in pulls.into_iter().enumerate() {
        let (digest, len) = pull
            .join()
            .expect("pull thread")
            .unwrap_or_else(|e| panic!("pull {i}: {e}\n--- proxy log ---\n{}", proxy.logs()));
        assert_eq!(
            (digest.as_str(), len),
            (layer.digest.as_str(), layer.size),
            "pull {i}"
        );
    }
    let fetches = upstream_blob_gets(&reg, REPO, Some(&layer.digest));
    eprintln!(
        "20 concurrent pulls of a 128 MiB blob took {:?}; upstream fetches: {fetches}",
        started.elapsed()
    );
    assert_eq!(fetches, 1, "upstream fetches of the blob");
    // Clients get the last byte once the digest matched; the file is
    // renamed into place after it is flushed to disk.
    let hex = layer.digest.trim_start_matches("sha256:").to_owned();
    assert!(
        eventually(Duration::from_secs(10), || store_files(store.path())
            .0
            .contains(&hex)),
        "the blob was never stored"
    );
}

#[test]
fn ranges_and_heads_of_a_stored_blob_are_answered_from_disk() {
    let reg = Registry::start_with_access_log();
    let image = content::push_image(
        &reg.url(),
        REPO,
        Some("v1"),
        common::host_arch(),
        303,
        &[200_000],
    );
    let store = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(&with_store(
        &single_upstream_config(&reg.host()),
        store.path(),
        "",
    ));
    let layer = image.layers[0].1.clone();
    let url = format!("{}/v2/{REPO}/blobs/{}", proxy.url(), layer.digest);
    let whole = get_whole(&url).expect("first GET");
    let fetched = upstream_blob_gets(&reg, REPO, Some(&layer.digest));
    assert_eq!(fetched, 1);

    let r = http::request("GET", &url, &[("Range", "bytes=10-19")], &[]).expect("range");
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body, whole[10..20]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-19/{}", whole.len()).as_str())
    );
    let r = http::request("GET", &url, &[("Range", "bytes=-5")], &[]).expect("suffix");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, whole[whole.len() - 5..]);
    let r = http::request("GET", &url, &[("Range", "bytes=999999999-")], &[]).expect("past");
    assert_eq!(r.status, 416, "a range past the end: {}", r.text());
    let r = http::head(&url).expect("head");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(whole.len().to_string().as_str())
    );
    assert_eq!(
        r.header("docker-content-digest"),
        Some(layer.digest.as_str())
    );
    assert_eq!(
        upstream_blob_gets(&reg, REPO, Some(&layer.digest)),
        fetched,
        "ranges and HEAD went to the upstream"
    );
    assert!(
        !reg.logs()
            .contains(&format!("\"HEAD /v2/{REPO}/blobs/{}", layer.digest)),
        "HEAD went to the upstream"
    );
}

#[test]
fn wrong_or_cut_off_upstream_bytes_are_never_stored() {
    let fake = Fake::start();
    let good = pseudo_random(304, 3 * 1024 * 1024 + 7);
    let digest = fake.put_blob(REPO, &good);
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let store = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(&with_store(&fake.proxy_config(), store.path(), ""));
    let url = format!("{}{path}", proxy.url());
    let hex = digest.trim_start_matches("sha256:").to_owned();

    for fault in ["corrupt", "drop"] {
        fake.set(|c| {
            c.corrupt_blob = fault == "corrupt";
            c.drop_connection_mid_blob = fault == "drop";
        });
        match get_whole(&url) {
            Ok(body) => panic!(
                "{fault}: a complete body of {} bytes was served",
                body.len()
            ),
            Err(e) => eprintln!("{fault}: {e}"),
        }
        assert!(
            eventually(Duration::from_secs(5), || {
                let (stored, tmp) = store_files(store.path());
                !stored.contains(&hex) && tmp.is_empty()
            }),
            "{fault}: the store kept something: {:?}",
            store_files(store.path())
        );
    }
    fake.set(|c| *c = FakeConfig::default());
    let before = fake.hits(&path);
    let body = get_whole(&url).expect("intact upstream");
    assert!(body == good, "bytes differ");
    assert_eq!(fake.hits(&path), before + 1, "the intact blob was fetched");
    assert!(eventually(Duration::from_secs(5), || store_files(
        store.path()
    )
    .0
    .contains(&hex)));
    let body = get_whole(&url).expect("from the store");
    assert!(body == good, "stored bytes differ");
    assert_eq!(
        fake.hits(&path),
        before + 1,
        "a stored blob was fetched again"
    );
}

/// A fake upstream holding one 4 MiB blob (from `seed`) that it sends in
/// 64 KiB chunks, `delay` before each: the upstream, the blob, its path
/// and its hex digest.
fn slow_upstream(delay: Duration, seed: u64) -> (Fake, Vec<u8>, String, String) {
    let fake = Fake::with_config(FakeConfig {
        blob_chunk_delay: Some(delay),
        ..FakeConfig::default()
    });
    let blob = pseudo_random(seed, 4 * 1024 * 1024);
    let digest = fake.put_blob(REPO, &blob);
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let hex = digest.trim_start_matches("sha256:").to_owned();
    (fake, blob, path, hex)
}

#[test]
fn kill_9_during_a_download_leaves_nothing_visible_and_the_next_pull_works() {
    let (fake, blob, path, hex) = slow_upstream(Duration::from_millis(20), 305);
    let store = tempfile::tempdir().expect("tempdir");
    let config = with_store(&fake.proxy_config(), store.path(), "");
    let proxy = Proxy::start(&config);
    let url = format!("{}{path}", proxy.url());
    let reader = std::thread::spawn(move || get_whole(&url));
    assert!(
        eventually(Duration::from_secs(10), || {
            let (_, tmp) = store_files(store.path());
            tmp.iter().any(|f| {
                std::fs::metadata(store.path().join("tmp").join(f))
                    .map(|m| m.len() > 0)
                    .unwrap_or(false)
            })
        }),
        "the download never started"
    );
    let killed = Command::new("kill")
        .args(["-9", &proxy.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let outcome = reader.join().expect("reader");
    assert!(outcome.is_err(), "the killed proxy served the whole blob");
    let (stored, _) = store_files(store.path());
    assert!(
        !stored.contains(&hex),
        "a partial download is visible in blobs/"
    );
    drop(proxy);

    fake.set(|c| c.blob_chunk_delay = None);
    let proxy = Proxy::start(&config);
    let (_, tmp) = store_files(store.path());
    assert!(tmp.is_empty(), "tmp/ not emptied at startup: {tmp:?}");
    let body = get_whole(&format!("{}{path}", proxy.url())).expect("pull after restart");
    assert!(body == blob, "bytes differ after restart");
    assert!(eventually(Duration::from_secs(5), || store_files(
        store.path()
    )
    .0
    .contains(&hex)));
}

#[test]
fn a_leader_that_stops_reading_does_not_hold_up_the_download_others_follow() {
    // Larger than the socket buffers between the proxy and a client that
    // reads nothing, so the leader's queue fills and it is let go.
    const SIZE: usize = 48 * 1024 * 1024;
    let fake = Fake::start();
    let blob = pseudo_random(306, SIZE);
    let digest = fake.put_blob(REPO, &blob);
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let hex = digest.trim_start_matches("sha256:").to_owned();
    let store = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(&with_store(&fake.proxy_config(), store.path(), ""));
    let url = format!("{}{path}", proxy.url());

    // The leader: headers read, then not a byte of the body for now.
    let leader = http::request_streaming("GET", &url, &[], None).expect("leader");
    assert_eq!(leader.status, 200);
    assert!(
        eventually(Duration::from_secs(10), || !store_files(store.path())
            .1
            .is_empty()),
        "the leader's download never started"
    );
    // A follower gets the whole blob while the leader still reads nothing.
    let started = Instant::now();
    let follower = get_whole(&url).expect("follower");
    assert!(follower == blob, "the follower's bytes differ");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the follower waited {:?} for a leader that reads nothing",
        started.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(10), || store_files(store.path())
            .0
            .contains(&hex)),
        "the blob was not stored while its leader read nothing"
    );
    // The leader reads again: every byte, in order, from the file.
    let mut got = Vec::new();
    let mut body = leader.body;
    body.read_to_end(&mut got).expect("the leader's body");
    assert!(
        got == blob,
        "the leader's bytes differ ({} read)",
        got.len()
    );
    assert_eq!(fake.hits(&path), 1, "upstream fetches of the blob");
}

#[test]
fn a_download_past_timeouts_download_is_dropped_and_nothing_is_stored() {
    // 64 chunks of 64 KiB, one every 50 ms: live (never silent for
    // `timeouts.read`), but 3.2 s in all, past `timeouts.download`.
    let (fake, blob, path, hex) = slow_upstream(Duration::from_millis(50), 307);
    let store = tempfile::tempdir().expect("tempdir");
    let proxy = Proxy::start(&with_store(
        &fake.proxy_config(),
        store.path(),
        "timeouts: {download: 1s}\n",
    ));
    let url = format!("{}{path}", proxy.url());
    let started = Instant::now();
    match get_whole(&url) {
        Ok(body) => panic!("a complete body of {} bytes was served", body.len()),
        Err(e) => eprintln!("cut off: {e}"),
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2800),
        "the download ran {took:?}, past timeouts.download (1 s)"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            let (stored, tmp) = store_files(store.path());
            !stored.contains(&hex) && tmp.is_empty()
        }),
        "the store kept something: {:?}",
        store_files(store.path())
    );
    assert!(
        proxy.logs().contains("timeouts.download"),
        "the log does not say which limit cut the download"
    );
    // Not remembered as failed: a faster upstream is fetched again.
    fake.set(|c| c.blob_chunk_delay = None);
    let body = get_whole(&url).expect("after the upstream sped up");
    assert!(body == blob, "bytes differ");
}

#[test]
fn eviction_keeps_the_store_under_max_size_least_recently_used_first() {
    let fake = Fake::start();
    let blobs: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            let bytes = pseudo_random(310 + i, 300_000);
            (fake.put_blob(REPO, &bytes), bytes)
        })
        .collect();
    let store = tempfile::tempdir().expect("tempdir");
    let config = fake.proxy_config()
        + &format!(
            "cache:\n  content:\n    path: {}\n    maxSize: 1MiB\n",
            store.path().display()
        );
    let proxy = Proxy::start(&config);
    let get = |digest: &str| {
        let body = get_whole(&format!("{}/v2/{REPO}/blobs/{digest}", proxy.url()))
            .unwrap_or_else(|e| panic!("GET {digest}: {e}"));
        // The download is recorded just after its last byte is sent.
        std::thread::sleep(Duration::from_millis(100));
        body
    };
    for (digest, bytes) in &blobs[..3] {
        assert!(get(digest) == *bytes);
    }
    // The first is used again: the second is now the least recent.
    assert!(get(&blobs[0].0) == blobs[0].1);
    for (digest, bytes) in &blobs[3..] {
        assert!(get(digest) == *bytes);
    }
    let (stored, tmp) = store_files(store.path());
    let total: u64 = stored
        .iter()
        .map(|f| {
            std::fs::metadata(store.path().join("blobs/sha256").join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    eprintln!(
        "store after 6 x 300 kB with maxSize 1MiB: {} files, {total} bytes",
        stored.len()
    );
    assert!(total <= 1024 * 1024, "{total} bytes stored");
    assert!(tmp.is_empty());
    let has = |i: usize| stored.contains(&blobs[i].0.trim_start_matches("sha256:").to_owned());
    assert!(has(5) && has(4) && has(3), "the newest blobs were evicted");
    assert!(!has(1), "the least recently used blob is still stored");
    let path = format!("/v2/{REPO}/blobs/{}", blobs[1].0);
    let before = fake.hits(&path);
    assert!(get(&blobs[1].0) == blobs[1].1);
    assert_eq!(
        fake.hits(&path),
        before + 1,
        "an evicted blob is fetched again"
    );
}

#[test]
fn verify_on_read_catches_a_flipped_bit_and_fetches_again() {
    let fake = Fake::start();
    let blob = pseudo_random(320, 2 * 1024 * 1024 + 11);
    let digest = fake.put_blob(REPO, &blob);
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let hex = digest.trim_start_matches("sha256:").to_owned();
    let store = tempfile::tempdir().expect("tempdir");
    let (proxy, admin) = start_with_admin(&with_store(
        &fake.proxy_config(),
        store.path(),
        "    verifyOnRead: true\n",
    ));
    let url = format!("{}{path}", proxy.url());
    assert!(get_whole(&url).expect("first GET") == blob);
    let file = store.path().join("blobs/sha256").join(&hex);
    assert!(eventually(Duration::from_secs(5), || file.exists()));
    let mut bytes = std::fs::read(&file).expect("stored file");
    bytes[1_000_000] ^= 0x01;
    std::fs::write(&file, &bytes).expect("flip a bit");

    let hits = fake.hits(&path);
    match get_whole(&url) {
        Ok(body) => panic!(
            "a corrupt stored blob was served complete ({} bytes, {})",
            body.len(),
            if body == blob {
                "the right bytes"
            } else {
                "wrong bytes"
            }
        ),
        Err(e) => eprintln!("corrupt stored blob: {e}"),
    }
    assert_eq!(fake.hits(&path), hits, "the corrupt read went upstream");
    assert!(
        eventually(Duration::from_secs(5), || !file.exists()),
        "the corrupt file is still in the store"
    );
    assert!(proxy.logs().contains("no longer matches its digest"));
    assert!(get_whole(&url).expect("after removal") == blob);
    assert_eq!(
        fake.hits(&path),
        hits + 1,
        "fetched again from the upstream"
    );
    let metrics = http::get(&format!("{admin}/metrics")).expect("metrics");
    assert_eq!(
        metric(&metrics.text(), "portcullis_content_cache_corrupt_total"),
        1.0
    );
}

/// The upstream stopped after a verified pull: skopeo, podman and ctr still
/// pull that image (verified again, offline, from the evidence kept in the
/// store, by a fresh process with no verdict in memory), each such serve
/// audited and counted; an image never pulled through the proxy fails
/// closed saying so; and after the key is removed from the policy the kept
/// image is refused too.
#[test]
fn with_the_upstream_down_only_what_the_current_policy_admits_is_served_from_the_store() {
    use common::trust::{self, TrustConfig};
    let reg = Registry::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let key = trust::keygen(keys.path(), "ci");
    let other_key = trust::keygen(keys.path(), "other");
    let arch = common::host_arch();
    let host = reg.host();
    let pulled = content::push_image(&reg.url(), "team/pulled", Some("v1"), arch, 330, &[60_000]);
    let never = content::push_image(&reg.url(), "team/never", Some("v1"), arch, 331, &[50_000]);
    for (repo, image) in [("team/pulled", &pulled), ("team/never", &never)] {
        let reference = format!("{host}/{repo}:v1");
        trust::sign(&reg.url(), &reference, repo, &image.digest, &key, &[]);
    }
    let store = tempfile::tempdir().expect("tempdir");
    let audit = tempfile::tempdir().expect("tempdir");
    let audit_file = audit.path().join("audit.jsonl");
    let with_store = |key: &trust::KeyPair| {
        let mut trust = TrustConfig::new(&host, &reg.url(), &[("ci", key)]);
        trust.cache = format!(
            "{{allowTtl: 10m, denyTtl: 30s, content: {{path: {}, maxSize: 1GiB}}}}",
            store.path().display()
        );
        format!(
            "{}audit: {{path: {}}}\n",
            trust.yaml(),
            audit_file.display()
        )
    };
    let direct = tempfile::tempdir().expect("tempdir");
    clients::skopeo_copy_to_dir(&format!("{host}/team/pulled:v1"), direct.path(), false);

    // Online: one verified pull through the proxy.
    {
        let (proxy, _) = start_with_admin(&with_store(&key));
        let dest = tempfile::tempdir().expect("tempdir");
        clients::skopeo_copy_to_dir(
            &format!("{}/team/pulled:v1", proxy.host()),
            dest.path(),
            false,
        );
        clients::assert_dirs_identical(direct.path(), dest.path());
    }

    // The upstream goes away; a fresh proxy (no verdicts in memory).
    let killed = Command::new("kill")
        .args(["-9", &reg.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let (proxy, admin) = start_with_admin(&with_store(&key));
    let reference = format!("{}/team/pulled:v1", proxy.host());
    let dest = tempfile::tempdir().expect("tempdir");
    clients::skopeo_copy_to_dir(&reference, dest.path(), false);
    clients::assert_dirs_identical(direct.path(), dest.path());
    let podman = clients::Podman::new();
    podman.pull(&reference);
    let containerd = clients::Containerd::start();
    containerd.pull_plain_http(&reference, false);
    assert_eq!(containerd.image_target(&reference), pulled.digest);

    // Never pulled through the proxy: nothing kept, fail closed, saying so.
    let r = http::request(
        "GET",
        &format!("{}/v2/team/never/manifests/v1", proxy.url()),
        &[("Accept", trust::MANIFEST_ACCEPT)],
        &[],
    )
    .expect("GET never-pulled");
    assert!(
        r.status >= 500,
        "never-pulled image: {} {}",
        r.status,
        r.text()
    );
    assert!(
        r.text().contains("never verified through this proxy"),
        "the error does not say why: {}",
        r.text()
    );

    // Each stale serve is audited and counted.
    let metrics = http::get(&format!("{admin}/metrics"))
        .expect("metrics")
        .text();
    let stale = metric(&metrics, "portcullis_stale_serves_total");
    assert!(stale >= 3.0, "stale serves counted: {stale}");
    drop(proxy);
    let audit_text = std::fs::read_to_string(&audit_file).expect("audit file");
    let stale_records: Vec<serde_json::Value> = audit_text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["stale"].is_string())
        .collect();
    assert!(
        stale_records.len() >= 3,
        "stale serves in the audit trail: {}\n{audit_text}",
        stale_records.len()
    );
    for r in &stale_records {
        assert_eq!(r["verdict"], "allow");
        assert_eq!(r["digest"], pulled.digest.as_str());
    }

    // The key is no longer trusted: the kept evidence no longer admits it.
    let (proxy, _) = start_with_admin(&with_store(&other_key));
    let r = http::request(
        "GET",
        &format!("{}/v2/team/pulled/manifests/v1", proxy.url()),
        &[("Accept", trust::MANIFEST_ACCEPT)],
        &[],
    )
    .expect("GET after key change");
    assert_eq!(r.status, 403, "kept image under a new key: {}", r.text());
    let layer = &pulled.layers[0].1.digest;
    let r = http::get(&format!("{}/v2/team/pulled/blobs/{layer}", proxy.url())).expect("blob");
    assert_ne!(r.status, 200, "a blob of the refused image was served");
}

#[test]
fn a_stored_tag_is_revalidated_with_a_head_and_refetched_when_it_moves() {
    let reg = Registry::start_with_access_log();
    let first = content::push_image(
        &reg.url(),
        REPO,
        Some("v1"),
        common::host_arch(),
        305,
        &[1_000],
    );
    let store = tempfile::tempdir().expect("tempdir");
    let (proxy, admin) = start_with_admin(&with_store(
        &single_upstream_config(&reg.host()),
        store.path(),
        "",
    ));
    let url = format!("{}/v2/{REPO}/manifests/v1", proxy.url());
    let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
    let get = || {
        let r = http::request("GET", &url, &accept, &[]).expect("manifest");
        assert_eq!(r.status, 200, "manifest by tag: {}", r.text());
        r
    };
    let tag_requests = |method: &str| {
        reg.logs()
            .matches(&format!("\"{method} /v2/{REPO}/manifests/v1 "))
            .count()
    };
    // The first pull fetches the tag (what it answered is kept once the
    // body was read, in the background); the next two only ask whether it
    // still names the stored manifest.
    let kept = |digest: &str| {
        let answer = store
            .path()
            .join("refs")
            .join(reg.host())
            .join(REPO)
            .join("manifests")
            .join("v1");
        eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(&answer).is_ok_and(|a| a.starts_with(digest))
        })
    };
    for i in 0..3 {
        let r = get();
        assert_eq!(r.body, first.manifest, "the manifest's exact bytes");
        assert_eq!(
            r.header("docker-content-digest"),
            Some(first.digest.as_str())
        );
        if i == 0 {
            assert!(kept(&first.digest), "the tag's answer was never kept");
        }
    }
    let (gets, heads) = (tag_requests("GET"), tag_requests("HEAD"));
    assert_eq!((gets, heads), (1, 2), "upstream GETs and HEADs of the tag");
    let text = http::get(&format!("{admin}/metrics"))
        .expect("metrics")
        .text();
    assert!(
        text.contains("portcullis_content_cache_tag_revalidations_total{result=\"unchanged\"} 2"),
        "{text}"
    );

    // The tag moves: the HEAD names another digest, and the new manifest
    // is fetched and served, never the stored one.
    let second = content::push_image(
        &reg.url(),
        REPO,
        Some("v1"),
        common::host_arch(),
        306,
        &[1_000],
    );
    assert_ne!(first.digest, second.digest);
    let r = get();
    assert_eq!(r.body, second.manifest, "the moved tag's manifest");
    assert_eq!((tag_requests("GET"), tag_requests("HEAD")), (2, 3));
    assert!(
        kept(&second.digest),
        "the moved tag's answer was never kept"
    );
    let r = get();
    assert_eq!(r.body, second.manifest, "and from the store afterwards");
    assert_eq!((tag_requests("GET"), tag_requests("HEAD")), (2, 4));
}

/// Runs `portcullis ARGS`: exit code, stdout, stderr.
fn portcullis(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cache_commands_warm_list_verify_and_purge_the_store() {
    let reg = Registry::start_with_access_log();
    let image = content::push_image(
        &reg.url(),
        REPO,
        Some("v1"),
        common::host_arch(),
        307,
        &[200_000, 30_000],
    );
    content::push_image(
        &reg.url(),
        "team/denied",
        Some("v1"),
        common::host_arch(),
        308,
        &[1_000],
    );
    let store = tempfile::tempdir().expect("tempdir");
    let policy = format!(
        "policy:\n  admissionWhitelistPatterns:\n    - namePattern: {}/{REPO}\n  \
         defaultAdmissionRule: {{evaluationMode: ALWAYS_DENY}}\n",
        reg.host()
    );
    let config = with_store(&single_upstream_config(&reg.host()), store.path(), &policy);
    let (proxy, _admin) = start_with_admin(&config);
    let config_path = proxy.config_path();
    let config_arg = config_path.to_str().expect("utf-8 path");

    // warm: pulls the image through the proxy, which stores every blob.
    let reference = format!("{}/{REPO}:v1", proxy.host());
    let (code, out, err) = portcullis(&["cache", "warm", "--insecure", &reference]);
    assert_eq!(code, 0, "warm: {out}{err}");
    let blobs = image.blobs().len();
    assert!(
        out.contains(&format!("warmed 1 manifests, {blobs} blobs")),
        "{out}"
    );
    // Not a terminal: a plain line per blob, no bar.
    assert!(
        !err.contains('\r'),
        "progress bar drawn off a terminal: {err:?}"
    );
    for blob in image.blobs() {
        assert!(
            err.contains(&blob.digest),
            "no line for {}: {err}",
            blob.digest
        );
    }
    assert!(eventually(Duration::from_secs(5), || {
        let (stored, _) = store_files(store.path());
        image
            .blobs()
            .iter()
            .all(|b| stored.contains(&b.digest.trim_start_matches("sha256:").to_owned()))
    }));
    // Each blob fetched once by warm. The registry writes its access log
    // line after the response, so the last one may land a moment after
    // the store holds the blob: wait for it before counting.
    assert!(
        eventually(Duration::from_secs(5), || upstream_blob_gets(
            &reg, REPO, None
        ) == blobs),
        "warm fetched each blob once: {} upstream blob GETs for {blobs} blobs",
        upstream_blob_gets(&reg, REPO, None)
    );
    let fetched = upstream_blob_gets(&reg, REPO, None);
    let dest = tempfile::tempdir().expect("tempdir");
    clients::skopeo_copy_to_dir(&reference, dest.path(), false);
    assert_eq!(
        upstream_blob_gets(&reg, REPO, None),
        fetched,
        "a pull after warm fetches no blob from the upstream"
    );

    // A denied image: warm says the proxy refused it, exit 1.
    let denied = format!("{}/team/denied:v1", proxy.host());
    let (code, out, err) = portcullis(&["cache", "warm", "--insecure", &denied]);
    assert_eq!(code, 1, "warm of a denied image: {out}{err}");
    assert!(err.contains("refused") && err.contains("403"), "{err}");

    // ls and du.
    let upstream_ref = format!("{}/{REPO}:v1", reg.host());
    let (code, out, err) = portcullis(&["cache", "ls", "-c", config_arg]);
    assert_eq!(code, 0, "ls: {out}{err}");
    assert!(
        out.lines().any(|l| l.starts_with(&upstream_ref)
            && l.contains(&image.digest)
            && l.ends_with("stored")),
        "ls:\n{out}"
    );
    let (code, out, err) = portcullis(&["cache", "du", "-c", config_arg]);
    assert_eq!(code, 0, "du: {out}{err}");
    assert!(out.contains("of maxSize 1.0 GiB"), "du:\n{out}");

    // gc --verify finds a flipped bit, removes the file, exits 1.
    let layer = &image.layers[0].1;
    let path = store
        .path()
        .join("blobs/sha256")
        .join(layer.digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).expect("stored layer");
    bytes[100] ^= 0x10;
    std::fs::write(&path, bytes).expect("flip a bit");
    let (code, out, err) = portcullis(&["cache", "gc", "--verify", "-c", config_arg]);
    assert_eq!(code, 1, "gc --verify with a corrupt blob: {out}{err}");
    assert!(err.contains(&layer.digest), "{err}");
    assert!(out.contains("1 corrupt"), "{out}");
    assert!(!path.exists(), "the corrupt file is still in the store");
    let (code, out, err) = portcullis(&["cache", "gc", "--verify", "-c", config_arg]);
    assert_eq!(code, 0, "gc --verify on a clean store: {out}{err}");

    // purge: the image is gone from the store, so with the upstream down
    // it is no longer served (it was, before the purge).
    drop(reg); // the upstream is down from here on
    let manifest_url = format!("{}/v2/{REPO}/manifests/v1", proxy.url());
    let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
    let before = http::request("GET", &manifest_url, &accept, &[]).expect("manifest");
    assert_eq!(
        before.status,
        200,
        "served from the store: {}",
        before.text()
    );
    let (code, out, err) = portcullis(&["cache", "purge", "-c", config_arg, &upstream_ref]);
    assert_eq!(code, 0, "purge: {out}{err}");
    assert!(out.contains("removed"), "{out}");
    let (_, out, _) = portcullis(&["cache", "ls", "-c", config_arg]);
    assert!(
        !out.contains(&upstream_ref),
        "still listed after purge:\n{out}"
    );
    let after = http::request("GET", &manifest_url, &accept, &[]).expect("manifest");
    assert_eq!(after.status, 502, "after purge: {}", after.text());
    for blob in image.blobs() {
        let r = http::request(
            "GET",
            &format!("{}/v2/{REPO}/blobs/{}", proxy.url(), blob.digest),
            &[],
            &[],
        )
        .expect("blob");
        assert_ne!(r.status, 200, "{} served after purge", blob.digest);
    }
}

/// `cache purge` while Portcullis serves from the store, then a pull: the
/// image is stored again, whole. (The store's index once still listed the
/// purged manifest, so the next pull skipped writing it and kept answers
/// naming a document the store no longer had: the image was then neither
/// served during an outage nor found by the next purge.)
#[test]
fn an_image_purged_while_serving_is_stored_whole_by_the_next_pull() {
    let reg = Registry::start();
    let image = content::push_image(
        &reg.url(),
        REPO,
        Some("v1"),
        common::host_arch(),
        341,
        &[40_000, 7_000],
    );
    let store = tempfile::tempdir().expect("tempdir");
    let config = with_store(&single_upstream_config(&reg.host()), store.path(), "");
    let (proxy, _admin) = start_with_admin(&config);
    let config_path = proxy.config_path();
    let config_arg = config_path.to_str().expect("utf-8 path");
    let upstream_ref = format!("{}/{REPO}:v1", reg.host());
    let reference = format!("{}/{REPO}:v1", proxy.host());
    let direct = tempfile::tempdir().expect("tempdir");
    clients::skopeo_copy_to_dir(&upstream_ref, direct.path(), false);
    let manifest_hex = image.digest.trim_start_matches("sha256:").to_owned();
    let stored_whole = || {
        let (stored, _) = store_files(store.path());
        stored.contains(&manifest_hex)
            && image
                .blobs()
                .iter()
                .all(|b| stored.contains(&b.digest.trim_start_matches("sha256:").to_owned()))
    };

    let mut removed = Vec::new();
    for round in 1..=2 {
        let dest = tempfile::tempdir().expect("tempdir");
        clients::skopeo_copy_to_dir(&reference, dest.path(), false);
        clients::assert_dirs_identical(direct.path(), dest.path());
        assert!(
            eventually(Duration::from_secs(5), stored_whole),
            "round {round}: the store does not hold the manifest and every blob: {:?}",
            store_files(store.path()).0
        );
        if round == 2 {
            break;
        }
        let (code, out, err) = portcullis(&["cache", "purge", "-c", config_arg, &upstream_ref]);
        assert_eq!(code, 0, "purge: {out}{err}");
        removed.push(out);
    }

    // The upstream goes away: the image pulled after the purge is served
    // from the store, manifest included.
    let killed = Command::new("kill")
        .args(["-9", &reg.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let dest = tempfile::tempdir().expect("tempdir");
    clients::skopeo_copy_to_dir(&reference, dest.path(), false);
    clients::assert_dirs_identical(direct.path(), dest.path());

    // And a second purge removes as much as the first.
    let (code, out, err) = portcullis(&["cache", "purge", "-c", config_arg, &upstream_ref]);
    assert_eq!(code, 0, "purge: {out}{err}");
    let blobs = |out: &str| {
        out.split("removed ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
    };
    let first = blobs(&removed[0]);
    assert!(
        first.is_some_and(|n| n > image.blobs().len()),
        "the first purge removed the manifest and every blob: {}",
        removed[0]
    );
    assert_eq!(
        blobs(&out),
        first,
        "second purge: {out}; first: {}",
        removed[0]
    );
}
