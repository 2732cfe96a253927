//! skopeo pulls through the proxy from a real distribution registry and gets
//! exactly the bytes a direct pull gets: `skopeo copy ... dir:` via the proxy
//! and directly, then every file is compared byte for byte (and checked
//! against what was pushed).

mod common;

use std::path::Path;

use common::clients::{assert_dirs_identical, skopeo_copy_to_dir};
use common::content::{self, sha256_reader, PushedImage};
use common::proxy::single_upstream_config;
use common::registry::Registry;
use common::Proxy;

fn start() -> (Registry, Proxy) {
    let reg = Registry::start();
    let proxy = Proxy::start(&single_upstream_config(&reg.host()));
    (reg, proxy)
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

/// The `dir:` layout holds the exact pushed manifest and every blob.
fn assert_dir_holds_image(dir: &Path, img: &PushedImage, manifest_file: &str) {
    let manifest = std::fs::read(dir.join(manifest_file)).expect("read manifest");
    assert_eq!(
        manifest, img.manifest,
        "{manifest_file} is not the pushed manifest"
    );
    let config = std::fs::read(dir.join(hex(&img.config_digest))).expect("read config");
    assert_eq!(
        config, img.config,
        "config blob differs from the pushed one"
    );
    for (_, blob) in &img.layers {
        let f = std::fs::File::open(dir.join(hex(&blob.digest))).expect("open layer");
        let (d, n) = sha256_reader(f).expect("hash layer");
        assert_eq!((d.as_str(), n), (blob.digest.as_str(), blob.size));
    }
}

fn copy_both(reg: &Registry, proxy: &Proxy, name_tag: &str, all: bool) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    skopeo_copy_to_dir(
        &format!("{}/{name_tag}", reg.host()),
        &tmp.path().join("direct"),
        all,
    );
    skopeo_copy_to_dir(
        &format!("{}/{name_tag}", proxy.host()),
        &tmp.path().join("proxy"),
        all,
    );
    let n = assert_dirs_identical(&tmp.path().join("direct"), &tmp.path().join("proxy"));
    eprintln!("{name_tag}: {n} files byte-identical (direct vs proxy)");
    tmp
}

#[test]
fn skopeo_pulls_single_arch_image_identical_to_direct() {
    let (reg, proxy) = start();
    let img = content::push_image(
        &reg.url(),
        "test/single",
        Some("v1"),
        common::host_arch(),
        11,
        &[100_000, 3000],
    );
    let tmp = copy_both(&reg, &proxy, "test/single:v1", false);
    assert_dir_holds_image(&tmp.path().join("proxy"), &img, "manifest.json");
}

#[test]
fn skopeo_pulls_multiarch_index_identical_to_direct() {
    let (reg, proxy) = start();
    let idx = content::push_multiarch(&reg.url(), "test/multi", "v1", 12, 200_000);
    let tmp = copy_both(&reg, &proxy, "test/multi:v1", true);
    let dir = tmp.path().join("proxy");
    let index = std::fs::read(dir.join("manifest.json")).expect("read index");
    assert_eq!(index, idx.manifest, "manifest.json is not the pushed index");
    assert_eq!(idx.images.len(), 2);
    for img in &idx.images {
        assert_dir_holds_image(&dir, img, &format!("{}.manifest.json", hex(&img.digest)));
    }
}

#[test]
fn skopeo_pulls_64mib_layer_image_identical_to_direct() {
    let (reg, proxy) = start();
    let img = content::push_image(
        &reg.url(),
        "test/big",
        Some("v1"),
        common::host_arch(),
        13,
        &[64 * content::MIB],
    );
    assert!(img.layers[0].1.size >= 64 * content::MIB);
    let tmp = copy_both(&reg, &proxy, "test/big:v1", false);
    assert_dir_holds_image(&tmp.path().join("proxy"), &img, "manifest.json");
}
