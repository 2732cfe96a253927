//! podman (root, vfs storage, no systemd) pulls through the proxy from a real
//! distribution registry. Each pull goes into its own fresh store; the image
//! ID (config digest) and image digest must equal the direct pull's and the
//! pushed ones.

mod common;

use common::clients::{Podman, PodmanImage};
use common::content::{self, PushedImage};
use common::proxy::single_upstream_config;
use common::registry::Registry;
use common::Proxy;

fn start() -> (Registry, Proxy) {
    let reg = Registry::start();
    let proxy = Proxy::start(&single_upstream_config(&reg.host()));
    (reg, proxy)
}

/// Pulls `host/name_tag` into a fresh podman store and inspects it.
fn pull_fresh(host: &str, name_tag: &str) -> PodmanImage {
    let podman = Podman::new();
    let reference = format!("{host}/{name_tag}");
    let id = podman.pull(&reference);
    let img = podman.inspect(&reference);
    assert_eq!(id, img.id, "podman pull printed another ID than inspect");
    img
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

/// Pulls via proxy and directly; both must name exactly `manifest_digest`
/// (what the tag points to) and `image`'s config as the image ID.
fn assert_pull_identical(
    reg: &Registry,
    proxy: &Proxy,
    name_tag: &str,
    manifest_digest: &str,
    image: &PushedImage,
) {
    let via_proxy = pull_fresh(&proxy.host(), name_tag);
    let direct = pull_fresh(&reg.host(), name_tag);
    eprintln!("{name_tag}: proxy {via_proxy:?}\n{name_tag}: direct {direct:?}");
    assert_eq!(via_proxy.digest, manifest_digest, "digest via proxy");
    assert_eq!(direct.digest, manifest_digest, "digest direct");
    assert_eq!(
        via_proxy.id,
        hex(&image.config_digest),
        "image ID via proxy"
    );
    assert_eq!(direct.id, via_proxy.id, "image ID direct vs proxy");
    assert_eq!(via_proxy.architecture, image.arch);
    let (repo, _) = name_tag.split_once(':').expect("name:tag");
    let want = format!("{}/{repo}@{}", proxy.host(), image.digest);
    assert!(
        via_proxy.repo_digests.contains(&want),
        "RepoDigests {:?} lacks {want}",
        via_proxy.repo_digests
    );
}

#[test]
fn podman_pulls_single_arch_image_identical_to_direct() {
    let (reg, proxy) = start();
    let img = content::push_image(
        &reg.url(),
        "test/single",
        Some("v1"),
        common::host_arch(),
        21,
        &[100_000, 3000],
    );
    assert_pull_identical(&reg, &proxy, "test/single:v1", &img.digest, &img);
}

#[test]
fn podman_pulls_multiarch_index_identical_to_direct() {
    let (reg, proxy) = start();
    let idx = content::push_multiarch(&reg.url(), "test/multi", "v1", 22, 200_000);
    let native = idx
        .images
        .iter()
        .find(|i| i.arch == common::host_arch())
        .expect("index has the host platform");
    // podman records the index digest as the image digest and resolves the
    // host platform's instance from it.
    assert_pull_identical(&reg, &proxy, "test/multi:v1", &idx.digest, native);
}

#[test]
fn podman_pulls_64mib_layer_image_identical_to_direct() {
    let (reg, proxy) = start();
    let img = content::push_image(
        &reg.url(),
        "test/big",
        Some("v1"),
        common::host_arch(),
        23,
        &[64 * content::MIB],
    );
    assert_pull_identical(&reg, &proxy, "test/big:v1", &img.digest, &img);
}
