//! The proxy run in-process: the library's composition root
//! ([`portcullis::app::prepare`], [`portcullis::app::build_quiet`]) and
//! [`portcullis::server::run`] on a listener bound to port 0, stopped by
//! a shutdown future — no binary, no child process. These tests pin the
//! routing and the one error mapping ([`portcullis::serve`]'s edge): for
//! each kind of failure, by source (client, upstream, policy), the status,
//! the OCI error code in the envelope and, where one is set, the reason
//! phrase a client sees. The spawned-binary suites cover real clients and
//! the command line.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::fake::{Fake, FakeConfig};
use common::http;
use portcullis::config::Config;
use portcullis::server::{self, Connections, Listeners, Settings};

/// A proxy running on its own runtime thread; dropping it shuts it down
/// and waits for the server to return.
struct InProcess {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    fn start(yaml: &str) -> InProcess {
        let config = Config::from_yaml(yaml, Path::new("/")).unwrap();
        let prepared = portcullis::app::prepare(config).unwrap();
        let connections = Connections {
            timeouts: prepared.config.timeouts,
            limits: prepared.config.limits,
        };
        let app = Arc::new(portcullis::app::build_quiet(prepared).unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, addr) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let registry = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                bound.send(registry.local_addr().unwrap()).unwrap();
                let listeners = Listeners {
                    registry,
                    admin: None,
                };
                let settings = Settings {
                    tls: None,
                    admin_token: None,
                    connections,
                };
                server::run(listeners, app, settings, async {
                    let _ = stopped.await;
                })
                .await;
            });
        });
        let addr = addr.recv_timeout(Duration::from_secs(10)).unwrap();
        InProcess {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn get(&self, path: &str) -> http::Response {
        http::get(&self.url(path)).unwrap()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The first OCI error code in a response's envelope.
fn code(response: &http::Response) -> String {
    let doc: serde_json::Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not an OCI error envelope ({e}): {}", response.text()));
    doc["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code: {}", response.text()))
        .to_owned()
}

fn assert_error(response: &http::Response, status: u16, expected: &str, what: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text());
    assert_eq!(code(response), expected, "{what}: {}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{what}"
    );
}

/// The status line as sent (its reason phrase included).
fn status_line(addr: SocketAddr, path: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

fn with_policy(yaml: String, policy: &str) -> String {
    format!("{}{policy}", yaml.replace("{listen}", "127.0.0.1:0"))
}

const ALLOW_ALL: &str = "";
const DENY_ALL: &str = "policy:\n  defaultAdmissionRule:\n    evaluationMode: ALWAYS_DENY\n    enforcementMode: ENFORCED_BLOCK_AND_AUDIT_LOG\n";

#[test]
fn routing_answers_the_base_endpoint_and_refuses_what_is_not_a_pull() {
    let fake = Fake::start();
    let proxy = InProcess::start(&with_policy(fake.proxy_config(), ALLOW_ALL));

    let base = proxy.get("/v2/");
    assert_eq!(base.status, 200, "{}", base.text());
    assert_eq!(
        base.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    assert_error(&proxy.get("/v2/_catalog"), 404, "UNSUPPORTED", "catalog");
    // Outside the registry API (health endpoints aside): a plain 404.
    assert_eq!(proxy.get("/v3/a/manifests/x").status, 404, "not /v2/");
    let put = http::request("PUT", &proxy.url("/v2/lib/app/manifests/v1"), &[], b"{}").unwrap();
    assert_error(&put, 405, "UNSUPPORTED", "a push");
    let delete = http::request(
        "DELETE",
        &proxy.url("/v2/lib/app/blobs/sha256:00"),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(delete.status, 405, "a delete: {}", delete.text());

    // Client errors never reach the upstream.
    let before = fake.request_count();
    assert_error(
        &proxy.get("/v2/Lib/App/manifests/v1"),
        400,
        "NAME_INVALID",
        "upper-case name",
    );
    assert_error(
        &proxy.get("/v2/lib//app/manifests/v1"),
        400,
        "NAME_INVALID",
        "empty component",
    );
    assert_error(
        &proxy.get("/v2/lib/app/manifests/sha256:xyz"),
        400,
        "DIGEST_INVALID",
        "bad digest",
    );
    assert_error(
        &proxy.get(&format!("/v2/lib/app/manifests/{}", "t".repeat(200))),
        400,
        "TAG_INVALID",
        "tag over 128 characters",
    );
    assert_eq!(
        fake.request_count(),
        before,
        "malformed requests reached the upstream"
    );
}

#[test]
fn upstream_failures_map_by_kind() {
    let fake = Fake::start();
    let image = fake.put_image("lib/app", Some("v1"), 7, 1024);
    let proxy = InProcess::start(&with_policy(fake.proxy_config(), ALLOW_ALL));

    // Passed through: the upstream's own answer for what it does not have.
    assert_error(
        &proxy.get("/v2/lib/app/manifests/missing"),
        404,
        "MANIFEST_UNKNOWN",
        "unknown tag",
    );
    // Served when all is well, with the digest the bytes have.
    let ok = proxy.get("/v2/lib/app/manifests/v1");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        ok.header("docker-content-digest"),
        Some(image.manifest_digest.as_str())
    );

    // Bytes that do not hash to the requested digest: the upstream's fault.
    fake.set(|c| c.wrong_manifest_digest = true);
    assert_error(
        &proxy.get(&format!("/v2/lib/app/manifests/{}", image.manifest_digest)),
        502,
        "MANIFEST_INVALID",
        "digest mismatch",
    );
}

#[test]
fn an_unreachable_or_silent_upstream_is_a_gateway_error() {
    // Nothing listens on a port just freed.
    let closed = common::free_port();
    let yaml = format!(
        "listen: 127.0.0.1:0\nupstreams:\n  - registry: gone.test\n    url: http://127.0.0.1:{closed}\n    default: true\n"
    );
    let proxy = InProcess::start(&yaml);
    assert_error(
        &proxy.get("/v2/lib/app/manifests/v1"),
        502,
        "UNAVAILABLE",
        "connection refused",
    );

    let silent = Fake::with_config(FakeConfig {
        never_respond: true,
        ..FakeConfig::default()
    });
    let yaml = format!(
        "{}timeouts: {{connect: 2s, read: 1s}}\n",
        silent.proxy_config().replace("{listen}", "127.0.0.1:0")
    );
    let proxy = InProcess::start(&yaml);
    let started = std::time::Instant::now();
    assert_error(
        &proxy.get("/v2/lib/app/manifests/v1"),
        504,
        "UNAVAILABLE",
        "no answer",
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the read timeout did not bound the wait: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_policy_denial_is_403_denied_with_the_rule_in_the_reason_phrase() {
    let fake = Fake::start();
    let image = fake.put_image("lib/app", Some("v1"), 9, 1024);
    let proxy = InProcess::start(&with_policy(fake.proxy_config(), DENY_ALL));

    let denied = proxy.get("/v2/lib/app/manifests/v1");
    assert_error(&denied, 403, "DENIED", "denied image");
    assert!(
        denied.text().contains("ALWAYS_DENY"),
        "the message names the rule: {}",
        denied.text()
    );
    let line = status_line(proxy.addr, "/v2/lib/app/manifests/v1");
    assert!(
        line.starts_with("HTTP/1.1 403 Forbidden: ") && line.contains("ALWAYS_DENY"),
        "reason phrase: {line}"
    );

    // A blob of a denied image is no more servable than the image.
    let blob = proxy.get(&format!("/v2/lib/app/blobs/{}", image.layer_digest));
    assert_error(&blob, 403, "DENIED", "blob of a denied image");
    assert!(
        fake.hits(&format!("/v2/lib/app/blobs/{}", image.layer_digest)) == 0,
        "a refused blob was fetched from the upstream"
    );
}
