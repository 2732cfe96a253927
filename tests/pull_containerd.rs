//! containerd (`ctr images pull`, a private containerd per pull) pulls through
//! the proxy from a real distribution registry: the image target digest is
//! the pushed one and every content blob is byte-identical to a direct pull
//! into another containerd. Also: a `hosts.toml` mirror setup, where
//! containerd adds `?ns=<registry>` and the proxy routes on it.

mod common;

use common::clients::{write_mirror_hosts_toml, Containerd};
use common::content::{self, sha256_digest, PushedImage};
use common::http;
use common::proxy::single_upstream_config;
use common::registry::Registry;
use common::Proxy;

fn start() -> (Registry, Proxy) {
    let reg = Registry::start();
    let proxy = Proxy::start(&single_upstream_config(&reg.host()));
    (reg, proxy)
}

/// Every digest the pulled content store must hold for `img`.
fn image_digests(img: &PushedImage) -> Vec<String> {
    let mut v = vec![img.digest.clone()];
    v.extend(img.blobs().into_iter().map(|b| b.digest));
    v
}

/// Asserts `a` and `b` hold the same set of blobs, that it includes
/// `expected`, and that each blob is byte-identical in both and hashes to
/// its digest.
fn assert_content_identical(a: &Containerd, b: &Containerd, expected: &[String]) {
    let da = a.content_digests();
    let db = b.content_digests();
    assert_eq!(da, db, "content stores differ (proxy vs direct)");
    for d in expected {
        assert!(da.contains(d), "content store lacks {d}: {da:?}");
    }
    for d in &da {
        let ba = a.content_get(d);
        let bb = b.content_get(d);
        assert!(ba == bb, "blob {d} differs between proxy and direct pulls");
        assert_eq!(
            &sha256_digest(&ba),
            d,
            "blob {d} does not hash to its digest"
        );
    }
    eprintln!("{} blobs byte-identical (proxy vs direct)", da.len());
}

/// Pulls `name_tag` via the proxy into one containerd and directly into
/// another; checks target digests and content.
fn pull_both(
    reg: &Registry,
    proxy: &Proxy,
    name_tag: &str,
    target: &str,
    expected: &[String],
    all_platforms: bool,
) {
    let via_proxy = Containerd::start();
    let direct = Containerd::start();
    let pref = format!("{}/{name_tag}", proxy.host());
    let dref = format!("{}/{name_tag}", reg.host());
    via_proxy.pull_plain_http(&pref, all_platforms);
    direct.pull_plain_http(&dref, all_platforms);
    assert_eq!(via_proxy.image_target(&pref), target, "target via proxy");
    assert_eq!(direct.image_target(&dref), target, "target direct");
    assert_content_identical(&via_proxy, &direct, expected);
}

#[test]
fn containerd_pulls_single_arch_image_identical_to_direct() {
    let (reg, proxy) = start();
    let img = content::push_image(
        &reg.url(),
        "test/single",
        Some("v1"),
        common::host_arch(),
        31,
        &[100_000, 3000],
    );
    pull_both(
        &reg,
        &proxy,
        "test/single:v1",
        &img.digest,
        &image_digests(&img),
        false,
    );
}

#[test]
fn containerd_pulls_multiarch_index_identical_to_direct() {
    let (reg, proxy) = start();
    let idx = content::push_multiarch(&reg.url(), "test/multi", "v1", 32, 200_000);
    let mut expected = vec![idx.digest.clone()];
    for img in &idx.images {
        expected.extend(image_digests(img));
    }
    // --all-platforms: fetch both platforms' manifests, configs and layers.
    pull_both(&reg, &proxy, "test/multi:v1", &idx.digest, &expected, true);
}

#[test]
fn containerd_pulls_64mib_layer_image_identical_to_direct() {
    let (reg, proxy) = start();
    let img = content::push_image(
        &reg.url(),
        "test/big",
        Some("v1"),
        common::host_arch(),
        33,
        &[64 * content::MIB],
    );
    pull_both(
        &reg,
        &proxy,
        "test/big:v1",
        &img.digest,
        &image_digests(&img),
        false,
    );
}

/// `hosts.toml` mirror: containerd pulls `<registry-host>/name:tag`, the
/// registry's own endpoint (`server`) is a closed port, and the only mirror
/// is the proxy. The proxy's default upstream is dead too, so only `?ns=`
/// routing can reach the registry.
#[test]
fn containerd_pulls_through_hosts_toml_mirror_with_ns_routing() {
    let reg = Registry::start();
    let dead = "127.0.0.1:1"; // nothing listens on port 1
    let proxy = Proxy::start(&format!(
        "listen: {{listen}}\n\
         upstreams:\n  \
           - registry: dead.invalid\n    \
             url: http://{dead}\n    \
             default: true\n  \
           - registry: {host}\n    \
             url: http://{host}\n",
        host = reg.host()
    ));
    let img = content::push_image(
        &reg.url(),
        "test/single",
        Some("v1"),
        common::host_arch(),
        34,
        &[100_000, 3000],
    );
    let idx = content::push_multiarch(&reg.url(), "test/multi", "v1", 35, 50_000);

    // Routing control: without ns the request goes to the dead default
    // upstream; with ns it reaches the registry.
    let path = format!("{}/v2/test/single/manifests/v1", proxy.url());
    let accept = [("Accept", content::OCI_MANIFEST)];
    let no_ns = http::request("GET", &path, &accept, &[]).expect("GET via proxy");
    assert_ne!(
        no_ns.status, 200,
        "without ?ns= the dead default upstream must not serve"
    );
    let with_ns = http::request("GET", &format!("{path}?ns={}", reg.host()), &accept, &[])
        .expect("GET via proxy");
    assert_eq!(with_ns.status, 200, "GET with ?ns=: {}", with_ns.text());
    assert_eq!(with_ns.body, img.manifest);

    let hosts = tempfile::tempdir().expect("tempdir");
    // Control: with the closed server and no mirror the pull must fail, so
    // the successful pull below can only have come through the mirror.
    write_mirror_hosts_toml(
        hosts.path(),
        &reg.host(),
        &format!("http://{dead}"),
        "http://127.0.0.1:1",
    );
    let control = Containerd::start();
    let out = common::clients::run_unchecked(
        control
            .ctr()
            .args(["images", "pull", "--snapshotter", "native", "--hosts-dir"])
            .arg(hosts.path())
            .arg(format!("{}/test/single:v1", reg.host())),
        "control pull",
    );
    assert!(
        !out.status.success(),
        "pull without a working mirror unexpectedly succeeded"
    );

    write_mirror_hosts_toml(
        hosts.path(),
        &reg.host(),
        &format!("http://{dead}"),
        &proxy.url(),
    );
    let ctr = Containerd::start();
    let single_ref = format!("{}/test/single:v1", reg.host());
    ctr.pull_with_hosts_dir(&single_ref, hosts.path(), false);
    assert_eq!(ctr.image_target(&single_ref), img.digest);
    let multi_ref = format!("{}/test/multi:v1", reg.host());
    ctr.pull_with_hosts_dir(&multi_ref, hosts.path(), true);
    assert_eq!(ctr.image_target(&multi_ref), idx.digest);

    let mut expected = image_digests(&img);
    expected.push(idx.digest.clone());
    for i in &idx.images {
        expected.extend(image_digests(i));
    }
    expected.sort();
    let have = ctr.content_digests();
    assert_eq!(
        have, expected,
        "content store holds exactly the pushed blobs"
    );
    for d in &have {
        assert_eq!(&sha256_digest(&ctr.content_get(d)), d);
    }
}
