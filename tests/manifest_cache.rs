//! Manifest caching: by-digest manifests are immutable and served from
//! memory once fetched; tag resolution goes upstream on every request
//! unless `cache.tagTtl` says otherwise.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::time::{Duration, Instant};

use common::fake::{Fake, Kind};
use common::Proxy;

const ACCEPT: (&str, &str) = ("Accept", "application/vnd.oci.image.manifest.v1+json");

fn get(proxy: &Proxy, path: &str) -> common::http::Response {
    let r =
        common::http::request("GET", &format!("{}{path}", proxy.url()), &[ACCEPT], &[]).unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r
}

#[test]
fn warm_by_digest_requests_touch_no_upstream() {
    let fake = Fake::start();
    let image = fake.put_image("demo/app", Some("v1"), 1, 100);
    let proxy = Proxy::start(&fake.proxy_config());
    let path = format!("/v2/demo/app/manifests/{}", image.manifest_digest);
    let first = get(&proxy, &path);
    assert_eq!(first.body, image.manifest);
    let before = fake.count(Kind::Manifest);
    for _ in 0..5 {
        let again = get(&proxy, &path);
        assert_eq!(again.body, image.manifest, "cached bytes differ");
        assert_eq!(
            again.header("docker-content-digest"),
            Some(image.manifest_digest.as_str())
        );
    }
    assert_eq!(
        fake.count(Kind::Manifest),
        before,
        "a warm by-digest GET went upstream"
    );
}

#[test]
fn tags_are_resolved_upstream_every_time_by_default() {
    let fake = Fake::start();
    fake.put_image("demo/app", Some("v1"), 1, 100);
    let proxy = Proxy::start(&fake.proxy_config());
    get(&proxy, "/v2/demo/app/manifests/v1");
    get(&proxy, "/v2/demo/app/manifests/v1");
    assert_eq!(fake.hits("/v2/demo/app/manifests/v1"), 2);
    // A moved tag is seen at once.
    let moved = fake.put_image("demo/app", Some("v1"), 2, 100);
    assert_eq!(
        get(&proxy, "/v2/demo/app/manifests/v1").body,
        moved.manifest
    );
}

#[test]
fn tag_ttl_reuses_a_resolution_for_that_long() {
    let fake = Fake::start();
    let image = fake.put_image("demo/app", Some("v1"), 1, 100);
    let config = fake.proxy_config() + "cache: {tagTtl: 3s}\n";
    let proxy = Proxy::start(&config);
    let start = Instant::now();
    assert_eq!(
        get(&proxy, "/v2/demo/app/manifests/v1").body,
        image.manifest
    );
    get(&proxy, "/v2/demo/app/manifests/v1");
    let hits_within_ttl = fake.hits("/v2/demo/app/manifests/v1");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "two local requests took seconds"
    );
    assert_eq!(
        hits_within_ttl, 1,
        "second request within the TTL went upstream"
    );
    std::thread::sleep(Duration::from_millis(3200).saturating_sub(start.elapsed()));
    get(&proxy, "/v2/demo/app/manifests/v1");
    assert_eq!(
        fake.hits("/v2/demo/app/manifests/v1"),
        hits_within_ttl + 1,
        "after the TTL the tag must be resolved again"
    );
}
