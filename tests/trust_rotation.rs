//! Key rotation: an attestor with two keys admits images signed by either;
//! removing a key from the running proxy's config (picked up by the file
//! watcher, or by SIGHUP) denies images signed only by it, even though
//! their allow verdicts were cached. A pull under way across the change
//! gets the blobs of an image the new policy still admits, and only those.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::clients;
use common::content;
use common::registry::Registry;
use common::trust::{self, pull_v1, KeyPair, TrustConfig};
use common::Proxy;

/// How long a reload may take to show (the watcher polls every ~1 s).
const RELOAD_WAIT: Duration = Duration::from_secs(15);

struct Env {
    reg: Registry,
    _keys: tempfile::TempDir,
    /// The key `demo/old` is signed with.
    k_old: KeyPair,
    /// Config with both keys, and with `ci-2025` only.
    both: TrustConfig,
    old_only: TrustConfig,
    proxy: Proxy,
}

/// `demo/old:v1` signed with key `ci-2025`, `demo/new:v1` with `ci-2026`;
/// the proxy starts with both keys, and both images are admitted (so
/// their allow verdicts are cached).
fn env() -> Env {
    let reg = Registry::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let k_old = trust::keygen(keys.path(), "old");
    let k_new = trust::keygen(keys.path(), "new");
    let push_signed = |repo: &str, seed: u64, key: &KeyPair| {
        let img = content::push_image(
            &reg.url(),
            repo,
            Some("v1"),
            common::host_arch(),
            seed,
            &[5000],
        );
        trust::sign(
            &reg.url(),
            &format!("{}/{repo}:v1", reg.host()),
            repo,
            &img.digest,
            key,
            &[],
        );
    };
    push_signed("demo/old", 81, &k_old);
    push_signed("demo/new", 82, &k_new);
    let both = TrustConfig::new(
        &reg.host(),
        &reg.url(),
        &[("ci-2025", &k_old), ("ci-2026", &k_new)],
    );
    let old_only = TrustConfig::new(&reg.host(), &reg.url(), &[("ci-2025", &k_old)]);
    let proxy = Proxy::start(&both.yaml());
    for repo in ["demo/old", "demo/new"] {
        assert_eq!(
            status(&proxy, repo),
            200,
            "{repo} with both keys configured"
        );
    }
    Env {
        reg,
        _keys: keys,
        k_old,
        both,
        old_only,
        proxy,
    }
}

fn status(proxy: &Proxy, repo: &str) -> u16 {
    pull_v1(proxy, repo).status
}

/// The config text `Proxy::start` wrote (with `{listen}` filled in) turned
/// into `new`'s, with the same listen address.
fn rewritten(path: &Path, new: &TrustConfig) -> String {
    let current = std::fs::read_to_string(path).expect("read proxy config");
    let listen = current
        .lines()
        .find_map(|l| l.strip_prefix("listen: "))
        .expect("listen line")
        .to_string();
    new.yaml().replace("{listen}", &listen)
}

fn assert_rotated(env: &Env) {
    trust::assert_denied(
        &pull_v1(&env.proxy, "demo/new"),
        "by unknown key or altered",
        "image signed only by the removed key",
    );
    assert_eq!(
        status(&env.proxy, "demo/old"),
        200,
        "image signed by the remaining key"
    );
}

#[test]
fn removing_a_key_from_the_config_file_denies_images_signed_only_by_it() {
    let env = env();
    let path = env.proxy.config_path();
    let text = rewritten(&path, &env.old_only);
    assert!(!text.contains("ci-2026") && env.both.yaml().contains("ci-2026"));
    std::fs::write(&path, text).expect("rewrite proxy config");

    let reloaded = trust::wait_until(RELOAD_WAIT, || status(&env.proxy, "demo/new") == 403);
    assert!(
        reloaded,
        "demo/new (signed by the removed key) still not denied {RELOAD_WAIT:?} after the config file changed\n{}",
        env.proxy.logs()
    );
    assert_rotated(&env);
    assert!(
        env.proxy
            .logs()
            .lines()
            .any(|l| l.contains("policy reloaded") && l.contains("file change")),
        "no file-change reload in the proxy log"
    );
}

#[test]
fn sighup_reloads_a_removed_key_and_denies_images_signed_only_by_it() {
    let env = env();
    let path = env.proxy.config_path();
    // Replace the file with one of the same length and modification time,
    // so the file watcher (which compares both) cannot notice: only SIGHUP
    // can make the proxy read it.
    let meta = std::fs::metadata(&path).expect("stat config");
    let mut text = rewritten(&path, &env.old_only);
    let pad = (meta.len() as usize)
        .checked_sub(text.len() + 3)
        .expect("the new config is shorter");
    text.push_str(&format!("# {}\n", "x".repeat(pad)));
    assert_eq!(text.len() as u64, meta.len());
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, &text).expect("write new config");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&tmp)
        .expect("open new config")
        .set_modified(meta.modified().expect("mtime"))
        .expect("set mtime");
    std::fs::rename(&tmp, &path).expect("replace config");

    clients::run(
        Command::new("kill")
            .arg("-HUP")
            .arg(env.proxy.pid().to_string()),
        "kill -HUP portcullis",
    );
    let reloaded = trust::wait_until(RELOAD_WAIT, || status(&env.proxy, "demo/new") == 403);
    assert!(
        reloaded,
        "demo/new (signed by the removed key) still not denied {RELOAD_WAIT:?} after SIGHUP\n{}",
        env.proxy.logs()
    );
    assert_rotated(&env);
    let logs = env.proxy.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("policy reloaded") && l.contains("SIGHUP")),
        "no SIGHUP reload in the proxy log:\n{logs}"
    );
    assert!(
        !logs.contains("file change"),
        "the file watcher reloaded too, so this test did not isolate SIGHUP:\n{logs}"
    );
}

/// The blob `digest` of `repo` through the proxy, whatever the status.
fn blob_via(proxy: &Proxy, repo: &str, digest: &str) -> common::http::Response {
    let url = format!("{}/v2/{repo}/blobs/{digest}", proxy.url());
    common::http::get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// A pull under way when the policy changes: its manifests were admitted
/// before the reload, its blobs are asked for after it (as a runtime does,
/// seconds apart). Each blob's image is verified again under the new
/// policy: the blobs of an image it still admits are served (a single
/// image, and a platform image of a signed index: index → child → blob),
/// those of an image it denies are refused saying so, and a blob no
/// admitted image lists stays refused.
#[test]
fn a_pull_spanning_a_key_rotation_gets_the_blobs_of_images_still_admitted_and_only_those() {
    let env = env();
    let proxy = &env.proxy;
    let host = env.reg.host();
    let multi = content::push_multiarch(&env.reg.url(), "demo/multi", "v1", 83, 3000);
    trust::sign(
        &env.reg.url(),
        &format!("{host}/demo/multi:v1"),
        "demo/multi",
        &multi.digest,
        &env.k_old,
        &[],
    );
    let stray = content::push_blob(&env.reg.url(), "demo/old", b"listed by no manifest");

    // The manifest phase of three pulls, before the reload.
    let old = pull_v1(proxy, "demo/old");
    assert_eq!(
        old.status,
        200,
        "demo/old before the reload: {}",
        old.text()
    );
    let new = pull_v1(proxy, "demo/new");
    assert_eq!(
        new.status,
        200,
        "demo/new before the reload: {}",
        new.text()
    );
    assert_eq!(pull_v1(proxy, "demo/multi").status, 200, "the signed index");
    let child = &multi.images[0];
    let r = trust::get_manifest_via(proxy, "demo/multi", &child.digest);
    assert_eq!(r.status, 200, "child of the signed index: {}", r.text());

    // The reload: `ci-2026` removed (waited for through demo/new's
    // manifest only, so nothing re-admits the other two images).
    let path = proxy.config_path();
    std::fs::write(&path, rewritten(&path, &env.old_only)).expect("rewrite proxy config");
    let reloaded = trust::wait_until(RELOAD_WAIT, || status(proxy, "demo/new") == 403);
    assert!(reloaded, "the reload did not happen\n{}", proxy.logs());

    // The blob phase, after it.
    for digest in trust::manifest_blobs(&old.body) {
        let r = blob_via(proxy, "demo/old", &digest);
        assert_eq!(
            r.status,
            200,
            "blob {digest} of demo/old (still admitted) after the reload: {}\n{}",
            r.text(),
            proxy.logs()
        );
        assert_eq!(content::sha256_digest(&r.body), digest, "served bytes");
    }
    let layer = &child.layers[0].1.digest;
    let r = blob_via(proxy, "demo/multi", layer);
    assert_eq!(
        r.status,
        200,
        "layer of the signed index's platform image after the reload: {}",
        r.text()
    );
    assert_eq!(&content::sha256_digest(&r.body), layer);
    for digest in trust::manifest_blobs(&new.body) {
        let r = blob_via(proxy, "demo/new", &digest);
        assert_eq!(
            r.status, 403,
            "blob {digest} of demo/new (signed only by the removed key)"
        );
        let text = r.text();
        assert!(
            text.contains("which the current policy denies"),
            "the refusal does not say the image is denied now: {text}"
        );
    }
    let r = blob_via(proxy, "demo/old", &stray.digest);
    assert_eq!(
        r.status,
        403,
        "a blob no admitted image lists: {}",
        r.text()
    );
    assert!(
        r.text().contains("not part of an admitted image"),
        "{}",
        r.text()
    );
    let logs = proxy.logs();
    assert!(
        logs.contains("admitted again under the current policy"),
        "no re-admission logged:\n{logs}"
    );
}
