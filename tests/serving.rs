//! The serving side: HTTPS with HTTP/2, an upstream behind a private CA
//! (`caFile`), graceful shutdown on SIGTERM, `/readyz`, `portcullis check`
//! and JSON request logs.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::Certs;
use common::clients::{run, run_unchecked, skopeo_copy_to_dir};
use common::content;
use common::fake::{Fake, FakeConfig};
use common::proxy::single_upstream_config;
use common::registry::Registry;
use common::trust::{get_blob, pull_v1};
use common::{free_port, Proxy};

/// A proxy serving HTTPS, started by hand (the shared helper polls plain
/// HTTP).
struct TlsProxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> std::process::Output {
    run_unchecked(Command::new("curl").args(args), "curl")
}

fn start_tls_proxy(certs: &Certs, registry_host: &str) -> TlsProxy {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "listen: 127.0.0.1:{port}\ntls: {{cert: {}, key: {}}}\nupstreams:\n  - registry: {registry_host}\n    url: http://{registry_host}\n",
        certs.path("cert.pem").display(),
        certs.path("key.pem").display()
    );
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proxy = TlsProxy {
        child,
        port,
        _dir: dir,
    };
    let url = format!("https://127.0.0.1:{port}/healthz");
    let ca = certs.path("ca.pem");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = curl(&["-sf", "--cacert", ca.to_str().unwrap(), &url]);
        if out.status.success() {
            return proxy;
        }
        assert!(Instant::now() < deadline, "TLS proxy did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn https_with_http2_and_an_upstream_behind_a_private_ca() {
    let certs = Certs::new();
    let registry = Registry::start();
    let image = content::push_image(
        &registry.url(),
        "demo/app",
        Some("v1"),
        common::host_arch(),
        7,
        &[1024],
    );
    let front = start_tls_proxy(&certs, &registry.host());
    let ca = certs.path("ca.pem");

    // The client side speaks HTTP/2 over TLS (ALPN) and HTTP/1.1.
    let base = format!("https://127.0.0.1:{}/v2/", front.port);
    let out = curl(&[
        "-s",
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &base,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    let out = curl(&[
        "-s",
        "--http1.1",
        "--cacert",
        ca.to_str().unwrap(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &base,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.1 200");

    // A second proxy uses the first as an HTTPS upstream trusted through
    // caFile, and skopeo pulls the image through both, byte for byte.
    let chained = Proxy::start(&format!(
        "listen: {{listen}}\nupstreams:\n  - registry: {}\n    url: https://127.0.0.1:{}\n    caFile: {}\n",
        registry.host(),
        front.port,
        ca.display()
    ));
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("img");
    skopeo_copy_to_dir(&format!("{}/demo/app:v1", chained.host()), &dest, false);
    assert_eq!(
        std::fs::read(dest.join("manifest.json")).unwrap(),
        image.manifest
    );

    // Without the CA the upstream's certificate is not trusted: fail closed.
    let untrusting = Proxy::start(&format!(
        "listen: {{listen}}\nupstreams:\n  - registry: {}\n    url: https://127.0.0.1:{}\n",
        registry.host(),
        front.port
    ));
    let r = common::http::get(&format!("{}/v2/demo/app/manifests/v1", untrusting.url())).unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("UNAVAILABLE"), "{}", r.text());
}

fn wait_for_exit(child_pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{child_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{child_pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    // A live but slow upstream: 16 chunks of 64 KiB, 100 ms apart.
    let fake = Fake::with_config(FakeConfig {
        blob_chunk_delay: Some(Duration::from_millis(100)),
        ..FakeConfig::default()
    });
    let image = fake.put_image("slow/app", Some("v1"), 3, 1024 * 1024);
    let proxy = Proxy::start(&format!(
        "listen: {{listen}}\nupstreams:\n  - registry: {}\n    url: {}\ntimeouts: {{shutdown: 20s}}\n",
        fake.host(),
        fake.url()
    ));
    let url = format!("{}/v2/slow/app/blobs/{}", proxy.url(), image.layer_digest);
    let mut response = common::http::request_streaming("GET", &url, &[], None).unwrap();
    assert_eq!(response.status, 200);
    let mut first = [0u8; 1024];
    response.body.read_exact(&mut first).unwrap();

    // SIGTERM mid-stream.
    run(
        Command::new("kill").args(["-TERM", &proxy.pid().to_string()]),
        "kill -TERM",
    );
    // New connections are refused promptly…
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::http::get(&format!("{}/healthz", proxy.url())).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // …while the in-flight blob completes with the right bytes.
    let mut rest = Vec::new();
    response.body.read_to_end(&mut rest).unwrap();
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    assert_eq!(
        all, image.layer,
        "the in-flight blob was cut short by shutdown"
    );
    assert!(
        wait_for_exit(proxy.pid(), Duration::from_secs(10)),
        "proxy did not exit after finishing its requests"
    );
    assert!(proxy.logs().contains("SIGTERM received"));
}

#[test]
fn readyz_reports_upstream_reachability() {
    let registry = Registry::start();
    let proxy = Proxy::start(&single_upstream_config(&registry.host()));
    let r = common::http::get(&format!("{}/readyz", proxy.url())).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("reachable"), "{}", r.text());

    let dead = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(&single_upstream_config(&dead));
    let r = common::http::get(&format!("{}/readyz", proxy.url())).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    // Liveness is independent of upstreams.
    let r = common::http::get(&format!("{}/healthz", proxy.url())).unwrap();
    assert_eq!(r.status, 200);
}

/// Two upstreams: `registry` (the default) and `dead` (prefix `dead`, a
/// port nobody listens on), with an admin listener for `/readyz` and
/// `/metrics`. Returns the proxy and the admin base URL.
fn two_upstream_proxy(registry: &Registry, dead: &str, dead_required: bool) -> (Proxy, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let live = registry.host();
    let config = format!(
        "listen: {{listen}}\n\
         admin: {{listen: {admin}}}\n\
         upstreams:\n  \
           - registry: {live}\n    url: http://{live}\n    default: true\n  \
           - registry: {dead}\n    url: http://{dead}\n    prefix: dead\n    required: {dead_required}\n"
    );
    let proxy = Proxy::start_with_health(&config, &format!("http://{admin}/healthz"));
    (proxy, format!("http://{admin}"))
}

fn readyz(admin: &str, query: &str) -> (u16, serde_json::Value) {
    let r = common::http::get(&format!("{admin}/readyz{query}")).unwrap();
    let body = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()));
    (r.status, body)
}

fn metrics(admin: &str) -> String {
    common::http::get(&format!("{admin}/metrics"))
        .unwrap()
        .text()
}

#[test]
fn readyz_is_per_upstream_and_required_upstreams_decide() {
    let registry = Registry::start();
    let image = content::push_image(
        &registry.url(),
        "demo/app",
        Some("v1"),
        common::host_arch(),
        13,
        &[512],
    );
    let live = registry.host();
    let dead = format!("127.0.0.1:{}", free_port());
    let up =
        |host: &str, value: u8| format!("portcullis_upstream_up{{upstream=\"{host}\"}} {value}");

    // Neither is required: one reachable upstream is enough.
    let (proxy, admin) = two_upstream_proxy(&registry, &dead, false);
    // Requests report the upstream's state before any readiness check.
    let manifest = pull_v1(&proxy, "demo/app");
    assert_eq!(manifest.status, 200, "{}", manifest.text());
    assert_eq!(manifest.body, image.manifest);
    let config = get_blob(&proxy.url(), "demo/app", &image.config_digest);
    assert_eq!(config, image.config);
    let failed = pull_v1(&proxy, "dead/demo/app");
    assert_eq!(failed.status, 502, "{}", failed.text());
    let text = metrics(&admin);
    assert!(text.contains(&up(&live, 1)), "{text}");
    assert!(text.contains(&up(&dead, 0)), "{text}");

    let (status, body) = readyz(&admin, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({
            "ready": true,
            "upstreams": {live.as_str(): "reachable", dead.as_str(): "unreachable"},
        })
    );
    let (status, body) = readyz(&admin, "?verbose");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upstreams"][&live]["status"], "reachable", "{body}");
    assert_eq!(body["upstreams"][&live]["required"], false, "{body}");
    assert!(body["upstreams"][&live].get("error").is_none(), "{body}");
    assert_eq!(body["upstreams"][&dead]["status"], "unreachable", "{body}");
    assert_eq!(body["upstreams"][&dead]["required"], false, "{body}");
    let error = body["upstreams"][&dead]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains(&dead), "{body}");
    drop(proxy);

    // The dead one required: not ready, though the other serves pulls.
    let (proxy, admin) = two_upstream_proxy(&registry, &dead, true);
    let (status, body) = readyz(&admin, "");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(
        body["reason"],
        format!("required upstream {dead} is unreachable"),
        "{body}"
    );
    assert_eq!(body["upstreams"][&dead], "unreachable", "{body}");
    let (status, body) = readyz(&admin, "?verbose");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["upstreams"][&live]["status"], "reachable", "{body}");
    assert_eq!(body["upstreams"][&live]["required"], false, "{body}");
    assert_eq!(body["upstreams"][&dead]["status"], "unreachable", "{body}");
    assert_eq!(body["upstreams"][&dead]["required"], true, "{body}");
    assert!(body["upstreams"][&dead]["error"].is_string(), "{body}");
    // Readiness checks set the gauge too.
    let text = metrics(&admin);
    assert!(text.contains(&up(&live, 1)), "{text}");
    assert!(text.contains(&up(&dead, 0)), "{text}");
    let manifest = pull_v1(&proxy, "demo/app");
    assert_eq!(manifest.status, 200, "{}", manifest.text());
    // Liveness is independent of upstreams.
    let r = common::http::get(&format!("{admin}/healthz")).unwrap();
    assert_eq!(r.status, 200);
}

fn check(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, config).unwrap();
    run_unchecked(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check", "--config"])
            .arg(&path),
        "portcullis check",
    )
}

#[test]
fn check_names_field_and_line_and_says_when_nothing_is_enforced() {
    let out = check("listen: 127.0.0.1:5000\nupstreams:\n  - registry: r.io\n    passwd: x\n");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4") && err.contains("passwd"), "{err}");

    let out =
        check("listen: 127.0.0.1:5000\nupstreams:\n  - registry: r.io\n    url: ftp://r.io\n");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstreams[0].url") && err.contains("line 4"),
        "{err}"
    );

    let out = check("listen: 127.0.0.1:5000\nupstreams:\n  - registry: r.io\n");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("upstream r.io: https://r.io"), "{text}");
    assert!(
        text.contains("NONE"),
        "no policy must be said loudly: {text}"
    );
}

#[test]
fn json_logs_carry_method_reference_status_and_duration() {
    let registry = Registry::start();
    content::push_image(&registry.url(), "demo/app", Some("v1"), "amd64", 1, &[10]);
    let proxy = Proxy::start(&single_upstream_config(&registry.host()));
    let r = common::http::request(
        "GET",
        &format!("{}/v2/demo/app/manifests/v1", proxy.url()),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let want = format!("{}/demo/app", registry.host());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = proxy.logs();
        let line = logs.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == "response" && v["span"]["reference"] == want.as_str()).then_some(v)
        });
        if let Some(v) = line {
            assert_eq!(v["status"], 200);
            assert_eq!(v["span"]["method"], "GET");
            assert!(v["duration_ms"].as_f64().is_some(), "{v}");
            assert!(v["bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no JSON response line for {want}:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Honest ranges from a real distribution registry pass through the proxy
/// byte for byte with the registry's `Content-Range`; `bytes=0-` (which
/// distribution answers `206` covering the whole blob) arrives whole and
/// verified; a request without `Range` is a plain `200`.
#[test]
fn honest_ranges_from_a_real_registry_pass() {
    let registry = Registry::start();
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let pushed = content::push_blob(&registry.url(), "ranges/app", &blob);
    let proxy = Proxy::start(&single_upstream_config(&registry.host()));
    let url = format!("{}/v2/ranges/app/blobs/{}", proxy.url(), pushed.digest);
    let size = blob.len();
    for (range, first, last) in [
        ("bytes=0-9", 0, 9),
        ("bytes=99990-", 99_990, size - 1),
        ("bytes=-10", size - 10, size - 1),
        ("bytes=10-99999999", 10, size - 1),
        ("bytes=0-", 0, size - 1),
    ] {
        let r = common::http::request("GET", &url, &[("Range", range)], &[]).unwrap();
        assert_eq!(
            r.status,
            206,
            "Range {range}: {}\n{}",
            r.text(),
            proxy.logs()
        );
        let want = format!("bytes {first}-{last}/{size}");
        assert_eq!(r.header("content-range"), Some(want.as_str()), "{range}");
        assert_eq!(r.body, blob[first..=last], "Range {range}: bytes differ");
    }
    let r = common::http::get(&url).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-range"), None);
    assert_eq!(r.body, blob);
}
