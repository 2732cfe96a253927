//! Upstream faults and pull-path behaviour a real registry cannot be made to
//! show, driven through the real `portcullis` binary against the in-process
//! fake upstream (`tests/common/fake.rs`).

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::fake::{
    assert_oci_error, pseudo_random, raw_exchange, sha256_digest, Fake, FakeConfig, Kind, Upstream,
    OCI_EMPTY_INDEX, OCI_INDEX, OCI_MANIFEST,
};
use common::http::{self, Response};
use common::{free_port, Proxy};

const REPO: &str = "team/app";
const MIB: usize = 1024 * 1024;

fn get(proxy: &Proxy, target: &str, headers: &[(&str, &str)]) -> Response {
    http::request("GET", &format!("{}{target}", proxy.url()), headers, &[])
        .unwrap_or_else(|e| panic!("GET {target}: {e}\n--- proxy log ---\n{}", proxy.logs()))
}

fn head(proxy: &Proxy, target: &str, headers: &[(&str, &str)]) -> Response {
    http::request("HEAD", &format!("{}{target}", proxy.url()), headers, &[])
        .unwrap_or_else(|e| panic!("HEAD {target}: {e}"))
}

fn accept_manifest() -> (&'static str, &'static str) {
    ("Accept", "application/vnd.oci.image.manifest.v1+json")
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(body)))
}

/// Result of a GET whose body may be cut off.
enum BodyOutcome {
    /// Non-2xx status: nothing was served.
    Refused(u16),
    /// 2xx, and the body read ended with an error after this many bytes.
    Aborted(usize),
    /// 2xx and the body read ended cleanly with these bytes.
    Complete(Vec<u8>),
}

impl BodyOutcome {
    fn describe(&self) -> String {
        match self {
            BodyOutcome::Refused(s) => format!("refused with HTTP {s}"),
            BodyOutcome::Aborted(n) => format!("200, body cut off after {n} bytes"),
            BodyOutcome::Complete(b) => format!("200, complete body of {} bytes", b.len()),
        }
    }
}

fn get_body_outcome(proxy: &Proxy, target: &str) -> BodyOutcome {
    get_body_outcome_with(proxy, target, &[])
}

fn get_body_outcome_with(proxy: &Proxy, target: &str, headers: &[(&str, &str)]) -> BodyOutcome {
    let r = match http::request_streaming("GET", &format!("{}{target}", proxy.url()), headers, None)
    {
        Ok(r) => r,
        // The connection was closed before a status line: the client got
        // nothing at all (e.g. a small corrupt blob whose only chunk was
        // withheld before the headers were flushed).
        Err(e) => {
            eprintln!("GET {target}: no response: {e}");
            return BodyOutcome::Aborted(0);
        }
    };
    if !(200..300).contains(&r.status) {
        return BodyOutcome::Refused(r.status);
    }
    let mut body = r.body;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match body.read(&mut buf) {
            Ok(0) => return BodyOutcome::Complete(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return BodyOutcome::Aborted(got.len()),
        }
    }
}

// ---------------------------------------------------------------------------

/// The fake itself behaves like a registry (so failures below are the
/// proxy's): exact bytes, digests, ranges, faults, redirect, token flow.
#[test]
fn fake_upstream_self_check() {
    let fake = Fake::start();
    let img = fake.put_image(REPO, Some("v1"), 1, 100_000);
    let u = |t: &str| format!("{}{t}", fake.url());

    let r = http::get(&u("/v2/")).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "{}"));
    let r = http::get(&u(&format!("/v2/{REPO}/manifests/v1"))).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, img.manifest);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.manifest_digest.as_str())
    );
    let r = http::head(&u(&format!("/v2/{REPO}/blobs/{}", img.layer_digest))).unwrap();
    assert_eq!(r.header("content-length"), Some("100000"));
    let r = http::request(
        "GET",
        &u(&format!("/v2/{REPO}/blobs/{}", img.layer_digest)),
        &[("Range", "bytes=10-19")],
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, img.layer[10..20]);
    let r = http::request(
        "GET",
        &u(&format!("/v2/{REPO}/blobs/{}", img.layer_digest)),
        &[("Range", "bytes=100000-")],
        &[],
    )
    .unwrap();
    assert_eq!(
        (r.status, r.header("content-range")),
        (416, Some("bytes */100000"))
    );

    fake.set(|c| c.wrong_manifest_digest = true);
    let r = http::get(&u(&format!("/v2/{REPO}/manifests/{}", img.manifest_digest))).unwrap();
    assert_ne!(sha256_digest(&r.body), img.manifest_digest);
    fake.set(|c| {
        c.wrong_manifest_digest = false;
        c.corrupt_blob = true;
    });
    let r = http::get(&u(&format!("/v2/{REPO}/blobs/{}", img.layer_digest))).unwrap();
    assert_eq!(r.body.len(), img.layer.len());
    assert_ne!(sha256_digest(&r.body), img.layer_digest);
    fake.set(|c| {
        c.corrupt_blob = false;
        c.drop_connection_mid_blob = true;
    });
    assert!(http::get(&u(&format!("/v2/{REPO}/blobs/{}", img.layer_digest))).is_err());
    fake.set(|c| {
        c.drop_connection_mid_blob = false;
        c.redirect_blobs = true;
    });
    let r = http::get(&u(&format!("/v2/{REPO}/blobs/{}", img.layer_digest))).unwrap();
    assert_eq!(r.status, 307);
    let loc = r.header("location").unwrap().to_string();
    assert!(
        !loc.starts_with(&fake.url()),
        "storage must be another host: {loc}"
    );
    let r = http::get(&loc).unwrap();
    assert_eq!(r.body, img.layer);
    assert_eq!(fake.storage_requests().len(), 1);

    fake.set(|c| {
        c.redirect_blobs = false;
        c.require_token = Some(Default::default());
    });
    let r = http::get(&u(&format!("/v2/{REPO}/manifests/v1"))).unwrap();
    assert_eq!(r.status, 401);
    let ch = r.header("www-authenticate").unwrap();
    assert!(ch.contains("scope=\"repository:team/app:pull\""), "{ch}");
    let r = http::get(&u(
        "/token?service=fake-registry&scope=repository:team/app:pull",
    ))
    .unwrap();
    let tok = json(&r.body)["token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {tok}");
    let r = http::request(
        "GET",
        &u(&format!("/v2/{REPO}/manifests/v1")),
        &[("Authorization", &bearer)],
        &[],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(fake.token_hits(), 1);
}

/// GET /v2/, a manifest by tag and by digest, and a blob come back with the
/// exact upstream bytes and the headers clients rely on; an unknown
/// manifest is a 404 MANIFEST_UNKNOWN envelope.
#[test]
fn pull_path_serves_exact_bytes_with_headers() {
    let fake = Fake::start();
    let img = fake.put_image(REPO, Some("v1"), 2, 300_000);
    let proxy = Proxy::start(&fake.proxy_config());

    let r = get(&proxy, "/v2/", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r.body), serde_json::json!({}));

    for reference in ["v1", img.manifest_digest.as_str()] {
        let r = get(
            &proxy,
            &format!("/v2/{REPO}/manifests/{reference}"),
            &[accept_manifest()],
        );
        assert_eq!(r.status, 200, "manifest {reference}: {}", r.text());
        assert_eq!(r.body, img.manifest, "manifest {reference}: bytes differ");
        assert_eq!(
            r.header("docker-content-digest"),
            Some(img.manifest_digest.as_str())
        );
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(
            r.header("content-length"),
            Some(img.manifest.len().to_string().as_str())
        );
    }

    let r = get(
        &proxy,
        &format!("/v2/{REPO}/blobs/{}", img.layer_digest),
        &[],
    );
    assert_eq!(r.status, 200);
    assert!(r.body == img.layer, "blob bytes differ");
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.layer_digest.as_str())
    );

    let r = get(
        &proxy,
        &format!("/v2/{REPO}/manifests/nope"),
        &[accept_manifest()],
    );
    assert_oci_error(&r, 404, Some("MANIFEST_UNKNOWN"), "unknown tag");
    let missing = sha256_digest(b"not stored");
    let r = get(&proxy, &format!("/v2/{REPO}/blobs/{missing}"), &[]);
    assert_oci_error(&r, 404, Some("BLOB_UNKNOWN"), "unknown blob");
}

/// HEAD on a manifest (by tag and by digest) gives Content-Length,
/// Docker-Content-Digest and Content-Type, and not a single body byte; so
/// does HEAD on a blob.
#[test]
fn head_manifest_has_length_and_digest_and_no_body() {
    let fake = Fake::start();
    let img = fake.put_image(REPO, Some("v1"), 3, 1000);
    let proxy = Proxy::start(&fake.proxy_config());

    let m = (
        img.manifest.len(),
        img.manifest_digest.as_str(),
        OCI_MANIFEST,
    );
    let b = (
        img.layer.len(),
        img.layer_digest.as_str(),
        "application/octet-stream",
    );
    let cases = [
        ("manifests", "v1", m),
        ("manifests", img.manifest_digest.as_str(), m),
        ("blobs", img.layer_digest.as_str(), b),
    ];
    for (endpoint, reference, (len, digest, content_type)) in cases {
        let what = format!("HEAD {endpoint}/{reference}");
        let req = format!(
            "HEAD /v2/{REPO}/{endpoint}/{reference} HTTP/1.1\r\nHost: {}\r\nAccept: {OCI_MANIFEST}\r\nConnection: close\r\n\r\n",
            proxy.host()
        );
        let (bytes, timed_out) = raw_exchange(proxy.addr, &req, Duration::from_secs(10));
        assert!(!timed_out, "{what}: proxy did not close the connection");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let end = text
            .find("\r\n\r\n")
            .unwrap_or_else(|| panic!("{what}: no header end in {text:?}"));
        let (head_part, rest) = (&text[..end], &text[end + 4..]);
        assert!(head_part.starts_with("HTTP/1.1 200"), "{what}: {head_part}");
        let header = |name: &str| {
            head_part.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        assert_eq!(
            header("content-length"),
            Some(len.to_string()),
            "{what}: Content-Length"
        );
        assert_eq!(
            header("docker-content-digest").as_deref(),
            Some(digest),
            "{what}: Docker-Content-Digest"
        );
        assert_eq!(
            header("content-type").as_deref(),
            Some(content_type),
            "{what}: Content-Type"
        );
        assert!(rest.is_empty(), "{what}: body bytes sent: {rest:?}");
    }
}

/// A manifest requested by digest whose upstream bytes hash to something
/// else is refused with 502 and none of its bytes are served.
#[test]
fn manifest_with_wrong_digest_is_refused_with_502() {
    let fake = Fake::with_config(FakeConfig {
        wrong_manifest_digest: true,
        ..Default::default()
    });
    let img = fake.put_image(REPO, Some("v1"), 4, 1000);
    let proxy = Proxy::start(&fake.proxy_config());

    let target = format!("/v2/{REPO}/manifests/{}", img.manifest_digest);
    let r = get(&proxy, &target, &[accept_manifest()]);
    assert_oci_error(&r, 502, None, "GET manifest with wrong digest");
    let text = r.text();
    assert!(
        !text.contains("schemaVersion") && !r.body.ends_with(b"\n\n"),
        "manifest bytes leaked into the error response: {text}"
    );
    assert!(
        r.header("docker-content-digest") != Some(img.manifest_digest.as_str()),
        "error response claims the requested digest"
    );
    assert!(
        fake.count(Kind::Manifest) >= 1,
        "the proxy never asked the upstream"
    );

    // Control: the same manifest with honest bytes is served.
    fake.set(|c| c.wrong_manifest_digest = false);
    let r = get(&proxy, &target, &[accept_manifest()]);
    assert_eq!(r.status, 200, "honest manifest refused: {}", r.text());
    assert_eq!(r.body, img.manifest);
}

/// Manifest size limit: exactly 4 MiB is served, one byte more is 400
/// MANIFEST_INVALID, with or without an upstream Content-Length.
#[test]
fn manifest_over_4_mib_is_manifest_invalid() {
    const LIMIT: usize = 4 * MIB;
    let fake = Fake::start();
    let manifest_of = |size: usize| -> Vec<u8> {
        let mut pad = String::new();
        loop {
            let m = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                           "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                           "size": 2},
                "layers": [],
                "annotations": {"pad": pad},
            }))
            .unwrap();
            if m.len() >= size {
                assert_eq!(m.len(), size);
                return m;
            }
            pad.push_str(&"x".repeat(size - m.len()));
        }
    };
    let exact = manifest_of(LIMIT);
    let over = manifest_of(LIMIT + 1);
    let exact_digest = fake.put_manifest(REPO, Some("exact"), OCI_MANIFEST, &exact);
    fake.put_manifest(REPO, Some("over"), OCI_MANIFEST, &over);
    fake.put_manifest(REPO, Some("exact-chunked"), OCI_MANIFEST, &exact);
    let over_digest = fake.put_manifest(REPO, Some("over-chunked"), OCI_MANIFEST, &over);
    let proxy = Proxy::start(&fake.proxy_config());

    let r = get(
        &proxy,
        &format!("/v2/{REPO}/manifests/exact"),
        &[accept_manifest()],
    );
    assert_eq!(
        r.status,
        200,
        "4 MiB manifest: {}",
        &r.text()[..r.text().len().min(300)]
    );
    assert!(r.body == exact);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(exact_digest.as_str())
    );

    let r = get(
        &proxy,
        &format!("/v2/{REPO}/manifests/over"),
        &[accept_manifest()],
    );
    assert_oci_error(
        &r,
        400,
        Some("MANIFEST_INVALID"),
        "4 MiB + 1 manifest (Content-Length)",
    );

    fake.set(|c| c.chunked_manifests = true);
    let r = get(
        &proxy,
        &format!("/v2/{REPO}/manifests/exact-chunked"),
        &[accept_manifest()],
    );
    assert_eq!(r.status, 200, "4 MiB chunked manifest");
    assert!(r.body == exact);
    let r = get(
        &proxy,
        &format!("/v2/{REPO}/manifests/over-chunked"),
        &[accept_manifest()],
    );
    assert_oci_error(
        &r,
        400,
        Some("MANIFEST_INVALID"),
        "4 MiB + 1 manifest (chunked)",
    );
    let r = get(
        &proxy,
        &format!("/v2/{REPO}/manifests/{over_digest}"),
        &[accept_manifest()],
    );
    assert_oci_error(
        &r,
        400,
        Some("MANIFEST_INVALID"),
        "4 MiB + 1 manifest by digest (chunked)",
    );
}

/// A blob whose streamed bytes do not match its digest never reaches the
/// client complete: the response is cut off (or refused outright).
#[test]
fn corrupted_blob_is_never_delivered_complete() {
    let fake = Fake::start();
    let good = pseudo_random(5, 2 * MIB + 123);
    let bad = pseudo_random(6, 2 * MIB + 123);
    let small_bad = pseudo_random(7, 100);
    let good_digest = fake.put_blob(REPO, &good);
    let bad_digest = fake.put_blob(REPO, &bad);
    let small_bad_digest = fake.put_blob(REPO, &small_bad);
    let proxy = Proxy::start(&fake.proxy_config());

    // Control: an intact blob arrives whole.
    match get_body_outcome(&proxy, &format!("/v2/{REPO}/blobs/{good_digest}")) {
        BodyOutcome::Complete(b) => assert!(b == good, "intact blob: bytes differ"),
        BodyOutcome::Aborted(n) => panic!("intact blob aborted after {n} bytes"),
        BodyOutcome::Refused(s) => panic!("intact blob refused with {s}"),
    }

    fake.set(|c| c.corrupt_blob = true);
    for (digest, len) in [
        (&bad_digest, bad.len()),
        (&small_bad_digest, small_bad.len()),
    ] {
        let outcome = get_body_outcome(&proxy, &format!("/v2/{REPO}/blobs/{digest}"));
        eprintln!("GET blob {digest}: {}", outcome.describe());
        match outcome {
            BodyOutcome::Complete(b) => panic!(
                "corrupted blob of {len} bytes was delivered as a complete body of {} bytes",
                b.len()
            ),
            BodyOutcome::Aborted(n) => assert!(n < len, "aborted only after the whole body"),
            BodyOutcome::Refused(_) => {}
        }
    }
}

/// An upstream that answers `206 Partial Content` to a blob request that
/// had no `Range` is lying about what it sends: the proxy fails closed
/// with an OCI error and serves nothing, corrupt or not.
#[test]
fn upstream_206_to_a_request_without_range_is_refused() {
    let fake = Fake::with_config(FakeConfig {
        partial_without_range: true,
        ..Default::default()
    });
    let blob = pseudo_random(31, 300_000);
    let digest = fake.put_blob(REPO, &blob);
    let proxy = Proxy::start(&fake.proxy_config());
    let target = format!("/v2/{REPO}/blobs/{digest}");
    for corrupt in [true, false] {
        fake.set(|c| c.corrupt_blob = corrupt);
        let r = get(&proxy, &target, &[]);
        let what = format!("206 without Range (corrupt body: {corrupt})");
        assert_oci_error(&r, 502, None, &what);
        assert!(
            r.text().contains("206"),
            "{what}: the error should say what the upstream did: {}",
            r.text()
        );
    }
    // A client that asked for a range still gets it from this upstream.
    let r = get(&proxy, &target, &[("Range", "bytes=10-19")]);
    assert_eq!((r.status, &r.body[..]), (206, &blob[10..20]));
}

/// A `206` whose `Content-Range` is not exactly the range requested is an
/// upstream error, never passed on.
#[test]
fn upstream_206_with_another_range_is_refused() {
    let fake = Fake::with_config(FakeConfig {
        shifted_ranges: true,
        ..Default::default()
    });
    let blob = pseudo_random(32, 100_000);
    let digest = fake.put_blob(REPO, &blob);
    let proxy = Proxy::start(&fake.proxy_config());
    let target = format!("/v2/{REPO}/blobs/{digest}");
    for range in ["bytes=10-19", "bytes=99990-", "bytes=-10", "bytes=0-"] {
        let r = get(&proxy, &target, &[("Range", range)]);
        assert_oci_error(&r, 502, None, &format!("shifted answer to Range {range}"));
    }
    fake.set(|c| c.shifted_ranges = false);
    let r = get(&proxy, &target, &[("Range", "bytes=-10")]);
    assert_eq!(r.status, 206, "control: an honest answer passes");
    assert_eq!(r.header("content-range"), Some("bytes 99990-99999/100000"));
    assert_eq!(r.body, blob[99_990..]);
}

/// `Range: bytes=0-` asks for the whole blob: it is hashed like a full
/// body, and a corrupt one never reaches the client complete. (A true part
/// of a blob cannot be checked on its own: it passes at its exact length,
/// and the client checks the assembled blob.)
#[test]
fn a_whole_blob_asked_for_by_range_is_verified() {
    let fake = Fake::start();
    let blob = pseudo_random(33, 2 * MIB + 7);
    let digest = fake.put_blob(REPO, &blob);
    let proxy = Proxy::start(&fake.proxy_config());
    let target = format!("/v2/{REPO}/blobs/{digest}");
    let range = [("Range", "bytes=0-")];

    match get_body_outcome_with(&proxy, &target, &range) {
        BodyOutcome::Complete(b) => assert!(b == blob, "intact bytes=0-: bytes differ"),
        other => panic!("intact bytes=0-: {}", other.describe()),
    }
    fake.set(|c| c.corrupt_ranges = true);
    let outcome = get_body_outcome_with(&proxy, &target, &range);
    eprintln!("corrupt bytes=0-: {}", outcome.describe());
    match outcome {
        BodyOutcome::Complete(b) => panic!(
            "a corrupt blob asked for with bytes=0- was delivered complete ({} bytes)",
            b.len()
        ),
        BodyOutcome::Aborted(n) => assert!(n < blob.len(), "aborted only after the whole body"),
        BodyOutcome::Refused(_) => {}
    }
    let r = get(&proxy, &target, &[("Range", "bytes=10-19")]);
    assert_eq!(
        (r.status, r.body.len()),
        (206, 10),
        "a part passes at its exact length"
    );
}

/// An upstream that drops the connection half-way through a blob: the
/// client's body is cut off too, never presented as complete.
#[test]
fn upstream_dropping_mid_blob_cuts_the_client_off() {
    let fake = Fake::with_config(FakeConfig {
        drop_connection_mid_blob: true,
        ..Default::default()
    });
    let blob = pseudo_random(8, MIB + 7);
    let digest = fake.put_blob(REPO, &blob);
    let proxy = Proxy::start(&fake.proxy_config());
    let started = Instant::now();
    let outcome = get_body_outcome(&proxy, &format!("/v2/{REPO}/blobs/{digest}"));
    eprintln!("GET blob {digest}: {}", outcome.describe());
    match outcome {
        BodyOutcome::Complete(b) => {
            panic!(
                "half a blob was delivered as a complete body of {} bytes",
                b.len()
            )
        }
        BodyOutcome::Aborted(n) => assert!(n < blob.len()),
        BodyOutcome::Refused(_) => {}
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

/// An upstream that goes silent half-way through a blob: the idle read
/// timeout ends the client's response (cut off) instead of hanging.
#[test]
fn upstream_stalling_mid_blob_is_cut_off_by_read_timeout() {
    let fake = Fake::with_config(FakeConfig {
        stall_mid_blob: true,
        ..Default::default()
    });
    let blob = pseudo_random(9, MIB + 7);
    let digest = fake.put_blob(REPO, &blob);
    let cfg = common::fake::proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url()).with_default()],
        Some(("2s", "2s")),
    );
    let proxy = Proxy::start(&cfg);
    let started = Instant::now();
    let outcome = get_body_outcome(&proxy, &format!("/v2/{REPO}/blobs/{digest}"));
    eprintln!("GET blob {digest}: {}", outcome.describe());
    match outcome {
        BodyOutcome::Complete(b) => {
            panic!("stalled blob delivered as complete ({} bytes)", b.len())
        }
        BodyOutcome::Aborted(n) => assert!(n < blob.len()),
        BodyOutcome::Refused(s) => assert!(s >= 500, "stalled blob answered {s}"),
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "a stalled upstream kept the client waiting {took:?} (read timeout is 2s)"
    );
}

fn assert_redirect_followed_without_credentials(
    fake: &Fake,
    proxy: &Proxy,
    layer: &[u8],
    digest: &str,
) {
    let r = get(proxy, &format!("/v2/{REPO}/blobs/{digest}"), &[]);
    assert_eq!(r.status, 200, "redirected blob: {}", r.text());
    assert!(r.body == layer, "redirected blob: bytes differ");

    let r = head(proxy, &format!("/v2/{REPO}/blobs/{digest}"), &[]);
    assert_eq!(r.status, 200, "HEAD redirected blob");
    assert_eq!(
        r.header("content-length"),
        Some(layer.len().to_string().as_str()),
        "HEAD redirected blob: Content-Length"
    );

    let blob_reqs: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.kind == Kind::Blob)
        .collect();
    assert!(!blob_reqs.is_empty(), "registry never asked for the blob");
    assert!(
        blob_reqs
            .iter()
            .any(|r| r.header("authorization").is_some()),
        "the proxy never authenticated to the registry, so the test proves nothing"
    );
    let storage = fake.storage_requests();
    assert!(
        !storage.is_empty(),
        "the proxy never followed the 307 to {}",
        fake.storage_url()
    );
    for s in &storage {
        assert!(
            s.header("authorization").is_none(),
            "Authorization forwarded to the storage host {}: {:?}",
            fake.storage_url(),
            s.header("authorization")
        );
        assert_eq!(
            s.query.as_deref(),
            Some("sig=fake"),
            "redirect query not kept"
        );
    }
}

/// Upstream 307s to blob storage on another host are followed by the proxy,
/// and the upstream Basic credentials are not sent there.
#[test]
fn blob_redirect_followed_without_forwarding_basic_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "redirect-pass\n").unwrap();
    let fake = Fake::with_config(FakeConfig {
        require_basic: Some(("ruser".into(), "redirect-pass".into())),
        redirect_blobs: true,
        ..Default::default()
    });
    let layer = pseudo_random(10, 700_000);
    let digest = fake.put_blob(REPO, &layer);
    let cfg = common::fake::proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url())
            .with_default()
            .auth("ruser", &pw)],
        None,
    );
    let proxy = Proxy::start(&cfg);
    assert_redirect_followed_without_credentials(&fake, &proxy, &layer, &digest);
}

/// Same with a bearer token: the token is not sent to the storage host.
#[test]
fn blob_redirect_followed_without_forwarding_bearer_token() {
    let fake = Fake::with_config(FakeConfig {
        require_token: Some(Default::default()),
        redirect_blobs: true,
        ..Default::default()
    });
    let layer = pseudo_random(11, 700_000);
    let digest = fake.put_blob(REPO, &layer);
    let proxy = Proxy::start(&fake.proxy_config());
    assert_redirect_followed_without_credentials(&fake, &proxy, &layer, &digest);
}

/// An upstream on a closed port: 502 with an OCI error, promptly.
#[test]
fn unreachable_upstream_answers_502() {
    let dead = format!("127.0.0.1:{}", free_port());
    let cfg = common::fake::proxy_yaml(
        &[Upstream::new(&dead, &format!("http://{dead}")).with_default()],
        Some(("2s", "3s")),
    );
    let proxy = Proxy::start(&cfg);
    let digest = sha256_digest(b"x");
    for target in [
        format!("/v2/{REPO}/manifests/latest"),
        format!("/v2/{REPO}/blobs/{digest}"),
        format!("/v2/{REPO}/tags/list"),
    ] {
        let started = Instant::now();
        let r = get(&proxy, &target, &[accept_manifest()]);
        assert_oci_error(
            &r,
            502,
            None,
            &format!("GET {target} with the upstream down"),
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "GET {target} took {:?}",
            started.elapsed()
        );
    }
}

/// An upstream that accepts connections but never answers: 504 with an OCI
/// error within the configured read timeout (plus slack), never a hang.
#[test]
fn never_responding_upstream_answers_504_within_read_timeout() {
    let fake = Fake::with_config(FakeConfig {
        never_respond: true,
        ..Default::default()
    });
    let cfg = common::fake::proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url()).with_default()],
        Some(("2s", "2s")),
    );
    let proxy = Proxy::start(&cfg);
    let digest = sha256_digest(b"y");
    for target in [
        format!("/v2/{REPO}/manifests/latest"),
        format!("/v2/{REPO}/blobs/{digest}"),
    ] {
        let started = Instant::now();
        let r = get(&proxy, &target, &[accept_manifest()]);
        let took = started.elapsed();
        assert_oci_error(
            &r,
            504,
            None,
            &format!("GET {target} with a silent upstream"),
        );
        assert!(
            took < Duration::from_secs(8),
            "GET {target}: 504 took {took:?} with a 2s read timeout"
        );
    }
    assert!(
        fake.count(Kind::Manifest) >= 1,
        "the request never reached the fake"
    );
}

fn referrers_index(subject: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": sha256_digest(subject.as_bytes()),
            "size": 738,
            "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "annotations": {"dev.sigstore.bundle.predicateType": "https://slsa.dev/provenance/v1"},
        }],
    }))
    .expect("serialize index")
}

/// The referrers API is passed through (query included).
#[test]
fn referrers_pass_through() {
    let fake = Fake::start();
    let img = fake.put_image(REPO, Some("v1"), 12, 10);
    let index = referrers_index(&img.manifest_digest);
    fake.put_referrers(REPO, &img.manifest_digest, &index);
    let proxy = Proxy::start(&fake.proxy_config());

    let target = format!(
        "/v2/{REPO}/referrers/{}?artifactType=application%2Fvnd.dev.sigstore.bundle.v0.3%2Bjson",
        img.manifest_digest
    );
    let r = get(&proxy, &target, &[("Accept", OCI_INDEX)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    assert_eq!(json(&r.body), json(&index));
    let up: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.kind == Kind::Referrers)
        .collect();
    assert_eq!(up.len(), 1, "referrers requests upstream: {up:?}");
    assert_eq!(
        up[0].query_param("artifactType").as_deref(),
        Some("application/vnd.dev.sigstore.bundle.v0.3+json"),
        "artifactType filter not passed upstream"
    );
}

/// Upstream without the referrers API (404): the proxy answers with the
/// index stored under the tag-schema fallback tag `sha256-<hex>`. The fake
/// is strict about Accept, as distribution is, so the fallback fetch must
/// ask for an index.
#[test]
fn referrers_fall_back_to_tag_schema_index() {
    let fake = Fake::with_config(FakeConfig {
        no_referrers_api: true,
        strict_accept: true,
        ..Default::default()
    });
    let img = fake.put_image(REPO, Some("v1"), 13, 10);
    let index = referrers_index(&img.manifest_digest);
    let hex = img.manifest_digest.strip_prefix("sha256:").unwrap();
    fake.put_manifest(REPO, Some(&format!("sha256-{hex}")), OCI_INDEX, &index);
    let proxy = Proxy::start(&fake.proxy_config());

    let r = get(
        &proxy,
        &format!("/v2/{REPO}/referrers/{}", img.manifest_digest),
        &[("Accept", OCI_INDEX)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    assert_eq!(json(&r.body), json(&index), "fallback index not served");
    assert!(
        fake.hits(&format!("/v2/{REPO}/manifests/sha256-{hex}")) >= 1,
        "the fallback tag was never fetched"
    );
}

/// Upstream without the referrers API and without a fallback tag: an empty
/// OCI index, not a 404.
#[test]
fn referrers_fall_back_to_empty_index() {
    let fake = Fake::with_config(FakeConfig {
        no_referrers_api: true,
        ..Default::default()
    });
    let img = fake.put_image(REPO, Some("v1"), 14, 10);
    let proxy = Proxy::start(&fake.proxy_config());

    let r = get(
        &proxy,
        &format!("/v2/{REPO}/referrers/{}", img.manifest_digest),
        &[("Accept", OCI_INDEX)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    assert_eq!(json(&r.body), json(OCI_EMPTY_INDEX.as_bytes()));
    assert!(
        fake.count(Kind::Referrers) >= 1,
        "the referrers API was never tried"
    );
}

/// Extracts the target of `Link: <...>; rel="next"`, checks it points at
/// the proxy (relative, or absolute with the proxy's host) and returns the
/// path+query.
fn next_link(proxy: &Proxy, upstream: &Fake, r: &Response) -> Option<String> {
    let link = r.header("link")?;
    assert!(
        link.contains("rel=\"next\""),
        "Link without rel=\"next\": {link}"
    );
    let start = link.find('<').expect("Link has <") + 1;
    let end = link.find('>').expect("Link has >");
    let target = &link[start..end];
    assert!(
        !target.contains(&upstream.host()),
        "Link points at the upstream, not the proxy: {link}"
    );
    if let Some(rest) = target.strip_prefix("http://") {
        let (host, path) = rest.split_at(rest.find('/').expect("path in Link"));
        assert_eq!(
            host,
            proxy.host(),
            "absolute Link to a foreign host: {link}"
        );
        Some(path.to_string())
    } else {
        assert!(target.starts_with('/'), "Link target is not a path: {link}");
        Some(target.to_string())
    }
}

fn tags_of(r: &Response) -> Vec<String> {
    json(&r.body)["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("no tags array: {}", r.text()))
        .iter()
        .map(|t| t.as_str().expect("tag is a string").to_string())
        .collect()
}

/// `tags/list` pagination through a `prefix` upstream: the upstream's Link
/// (`/v2/team/app/tags/list?...`) is rewritten to the client-visible
/// `/v2/local/team/app/tags/list?...`, and following it walks every tag.
#[test]
fn tags_list_pagination_link_is_rewritten_for_prefix() {
    let fake = Fake::start();
    let all: Vec<String> = (1..=7).map(|i| format!("t{i:02}")).collect();
    fake.put_tags(REPO, &all.iter().map(String::as_str).collect::<Vec<_>>());
    let cfg = common::fake::proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url())
            .with_default()
            .prefix("local")],
        None,
    );
    let proxy = Proxy::start(&cfg);

    let mut target = format!("/v2/local/{REPO}/tags/list?n=3");
    let mut pages = Vec::new();
    loop {
        let r = get(&proxy, &target, &[]);
        assert_eq!(r.status, 200, "GET {target}: {}", r.text());
        pages.push(tags_of(&r));
        match next_link(&proxy, &fake, &r) {
            Some(next) => {
                assert!(
                    next.starts_with(&format!("/v2/local/{REPO}/tags/list?")),
                    "Link not rewritten to the client-visible path: {next}"
                );
                assert!(pages.len() < 10, "pagination does not terminate");
                target = next;
            }
            None => break,
        }
    }
    assert_eq!(
        pages,
        vec![
            vec!["t01", "t02", "t03"],
            vec!["t04", "t05", "t06"],
            vec!["t07"]
        ]
    );
    let up: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.kind == Kind::TagsList)
        .collect();
    assert_eq!(up.len(), 3);
    assert!(up.iter().all(|r| r.path == format!("/v2/{REPO}/tags/list")));
    assert_eq!(up[1].query_param("last").as_deref(), Some("t03"));
    assert_eq!(up[1].query_param("n").as_deref(), Some("3"));
}

/// An upstream that paginates on its own with absolute Link URLs
/// (`http://upstream/v2/...`): the client gets a Link back to the proxy.
#[test]
fn tags_list_absolute_upstream_link_is_rewritten() {
    let fake = Fake::with_config(FakeConfig {
        tags_page_size: Some(2),
        absolute_links: true,
        ..Default::default()
    });
    let all = ["a", "b", "c", "d", "e"];
    fake.put_tags(REPO, &all);
    let proxy = Proxy::start(&fake.proxy_config());

    let mut target = format!("/v2/{REPO}/tags/list");
    let mut seen = Vec::new();
    for _ in 0..10 {
        let r = get(&proxy, &target, &[]);
        assert_eq!(r.status, 200, "GET {target}: {}", r.text());
        seen.extend(tags_of(&r));
        match next_link(&proxy, &fake, &r) {
            Some(next) => {
                assert!(
                    next.starts_with(&format!("/v2/{REPO}/tags/list?")),
                    "{next}"
                );
                target = next;
            }
            None => break,
        }
    }
    assert_eq!(seen, all);
}

/// The client's Accept header reaches the upstream byte for byte (GET and
/// HEAD), so index/list negotiation is the client's.
#[test]
fn accept_header_passed_upstream_unchanged() {
    let fake = Fake::start();
    fake.put_image(REPO, Some("v1"), 15, 10);
    let proxy = Proxy::start(&fake.proxy_config());

    let ggcr = "application/vnd.docker.distribution.manifest.v1+json,application/vnd.docker.distribution.manifest.v1+prettyjws,application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.oci.image.index.v1+json";
    let other =
        "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json;q=0.5";
    let single = |m: &'static str, a: &'static str| (m, vec![a]);
    // containers/image (podman, skopeo) sends one Accept line per type.
    let lines = vec![
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ];
    let cases = [
        single("GET", ggcr),
        single("HEAD", ggcr),
        single("GET", other),
        ("GET", lines.clone()),
        ("HEAD", lines),
    ];
    for (method, accept) in cases {
        let mark = fake.request_count();
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("Accept", *a)).collect();
        let r = http::request(
            method,
            &format!("{}/v2/{REPO}/manifests/v1", proxy.url()),
            &headers,
            &[],
        )
        .unwrap();
        assert_eq!(r.status, 200, "{method} with Accept {accept:?}");
        let up: Vec<_> = fake
            .requests_since(mark)
            .into_iter()
            .filter(|r| r.kind == Kind::Manifest)
            .collect();
        assert!(
            !up.is_empty(),
            "{method}: no manifest request reached the upstream"
        );
        for u in &up {
            let seen = u.header_all("accept");
            if accept.len() == 1 {
                assert_eq!(
                    seen, accept,
                    "{method}: upstream {} {} saw a different Accept",
                    u.method, u.path
                );
            } else {
                // Several lines may be forwarded as they are or joined with
                // commas (RFC 9110 §5.3); the list must be the same.
                let split = |v: &[&str]| -> Vec<String> {
                    v.iter()
                        .flat_map(|l| l.split(','))
                        .map(|t| t.trim().to_string())
                        .collect()
                };
                assert_eq!(
                    split(&seen),
                    split(&accept),
                    "{method}: upstream {} {} saw a different Accept list",
                    u.method,
                    u.path
                );
            }
        }
    }
}

/// A slow but live upstream is not cut off: a response that starts within
/// the read timeout is served, and a blob whose chunks arrive with gaps
/// shorter than the read timeout (but take longer than it in total) is
/// delivered whole, since the read timeout is an idle timeout.
#[test]
fn slow_but_live_upstream_is_not_timed_out() {
    let fake = Fake::with_config(FakeConfig {
        response_delay: Some(Duration::from_millis(800)),
        blob_chunk_delay: Some(Duration::from_millis(600)),
        ..Default::default()
    });
    // 6 chunks of 64 KiB: about 4.4 s in total, never more than 0.8 s idle.
    let img = fake.put_image(REPO, Some("v1"), 19, 6 * 64 * 1024);
    let cfg = common::fake::proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url()).with_default()],
        Some(("2s", "2s")),
    );
    let proxy = Proxy::start(&cfg);

    let r = get(
        &proxy,
        &format!("/v2/{REPO}/manifests/v1"),
        &[accept_manifest()],
    );
    assert_eq!(r.status, 200, "slow manifest: {}", r.text());
    assert_eq!(r.body, img.manifest);

    let started = Instant::now();
    let target = format!("/v2/{REPO}/blobs/{}", img.layer_digest);
    let outcome = get_body_outcome(&proxy, &target);
    let took = started.elapsed();
    match outcome {
        BodyOutcome::Complete(b) => assert!(b == img.layer, "trickled blob: bytes differ"),
        other => panic!(
            "a blob trickling in with 0.6 s gaps (read timeout 2 s) was not delivered: {} after {took:?}",
            other.describe()
        ),
    }
    assert!(
        took > Duration::from_secs(2),
        "the transfer took only {took:?}, so it did not outlast the read timeout"
    );
}

/// An upstream that trickles every manifest (one byte every 400 ms, so
/// the 5 s idle read timeout never fires and a manifest takes minutes):
/// `504 UNAVAILABLE` naming `timeouts.manifest` within that deadline, by
/// tag and by digest, instead of a pull that hangs (issue 11, class 7).
#[test]
fn trickling_manifest_answers_504_within_the_manifest_deadline() {
    let fake = Fake::with_config(FakeConfig {
        trickle_manifests: Some((String::new(), Duration::from_millis(400))),
        ..Default::default()
    });
    let img = fake.put_image(REPO, Some("v1"), 23, 1000);
    let cfg = format!(
        "{}timeouts: {{connect: 2s, read: 5s, manifest: 3s}}\n",
        common::fake::proxy_yaml(
            &[Upstream::new(&fake.host(), &fake.url()).with_default()],
            None
        )
    );
    let proxy = Proxy::start(&cfg);
    for reference in ["v1", img.manifest_digest.as_str()] {
        let started = Instant::now();
        let r = get(
            &proxy,
            &format!("/v2/{REPO}/manifests/{reference}"),
            &[accept_manifest()],
        );
        let took = started.elapsed();
        eprintln!(
            "trickled manifest {reference}: HTTP {} after {took:?}",
            r.status
        );
        assert_oci_error(
            &r,
            504,
            Some("UNAVAILABLE"),
            &format!("GET manifest {reference} from a trickling upstream"),
        );
        assert!(
            r.text().contains("timeouts.manifest"),
            "the error names the deadline: {}",
            r.text()
        );
        assert!(
            took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
            "GET manifest {reference}: 504 after {took:?} with a 3 s manifest deadline"
        );
    }
    // Nothing stuck behind it: with the upstream answering normally, the
    // manifest is served.
    fake.set(|c| c.trickle_manifests = None);
    let r = get(
        &proxy,
        &format!("/v2/{REPO}/manifests/v1"),
        &[accept_manifest()],
    );
    assert_eq!(r.status, 200, "after the trickle: {}", r.text());
    assert_eq!(r.body, img.manifest);
}

/// Bodies the proxy reads whole besides manifests, trickled one byte
/// every 300 ms: a tag list is cut off by `timeouts.manifest` (504), a
/// token response by `timeouts.read` (504 for the blob that needed it),
/// and an error body after 10 s (the 404 is answered without the
/// upstream's message). None of them holds its request.
#[test]
fn trickling_listings_tokens_and_error_bodies_are_cut_off() {
    let every = Duration::from_millis(300);
    let fake = Fake::with_config(FakeConfig {
        trickle_responses: Some((vec![Kind::TagsList, Kind::Blob], every)),
        ..Default::default()
    });
    fake.put_tags(REPO, &["a", "b", "c"]);
    let authed = Fake::with_config(FakeConfig {
        require_token: Some(Default::default()),
        trickle_responses: Some((vec![Kind::Token], every)),
        ..Default::default()
    });
    let blob = authed.put_blob(REPO, b"layer");
    let yaml = |f: &Fake| {
        format!(
            "{}timeouts: {{connect: 2s, read: 2s, manifest: 3s}}\n",
            common::fake::proxy_yaml(&[Upstream::new(&f.host(), &f.url()).with_default()], None)
        )
    };
    let proxy = Proxy::start(&yaml(&fake));
    let authed_proxy = Proxy::start(&yaml(&authed));
    let timed = |proxy: &Proxy, target: String| {
        let url = format!("{}{target}", proxy.url());
        std::thread::spawn(move || {
            let started = Instant::now();
            let r = http::get(&url).expect("GET");
            (r, started.elapsed())
        })
    };
    let tags = timed(&proxy, format!("/v2/{REPO}/tags/list"));
    let token = timed(&authed_proxy, format!("/v2/{REPO}/blobs/{blob}"));
    let missing = timed(
        &proxy,
        format!("/v2/{REPO}/blobs/{}", sha256_digest(b"none")),
    );

    let (r, took) = tags.join().expect("thread");
    eprintln!("trickled tag list: HTTP {} after {took:?}", r.status);
    assert_oci_error(&r, 504, Some("UNAVAILABLE"), "trickled tag list");
    assert!(r.text().contains("timeouts.manifest"), "{}", r.text());
    assert!(
        took < Duration::from_secs(6),
        "tag list: 504 after {took:?}"
    );

    let (r, took) = token.join().expect("thread");
    eprintln!("trickled token: HTTP {} after {took:?}", r.status);
    assert_oci_error(&r, 504, Some("UNAVAILABLE"), "blob behind a trickled token");
    assert!(r.text().contains("timeouts.read"), "{}", r.text());
    assert!(took < Duration::from_secs(6), "token: 504 after {took:?}");

    let (r, took) = missing.join().expect("thread");
    eprintln!("trickled error body: HTTP {} after {took:?}", r.status);
    assert_oci_error(
        &r,
        404,
        Some("BLOB_UNKNOWN"),
        "blob whose 404 body trickles",
    );
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(14),
        "404 after {took:?}; the error body is waited for 10 s"
    );
}

/// Blob storage that redirects to itself forever: the proxy gives up with a
/// 5xx OCI error (502 expected) promptly instead of looping or hanging.
#[test]
fn endless_blob_redirects_end_in_an_error() {
    let fake = Fake::with_config(FakeConfig {
        redirect_blobs: true,
        redirect_loop: true,
        ..Default::default()
    });
    let layer = pseudo_random(20, 1000);
    let digest = fake.put_blob(REPO, &layer);
    let proxy = Proxy::start(&fake.proxy_config());
    let started = Instant::now();
    let r = get(&proxy, &format!("/v2/{REPO}/blobs/{digest}"), &[]);
    let took = started.elapsed();
    assert_oci_error(&r, 502, None, "endless redirects");
    assert!(
        took < Duration::from_secs(10),
        "gave up only after {took:?}"
    );
    let hops = fake.storage_requests().len();
    assert!(
        (1..=50).contains(&hops),
        "{hops} requests to storage: the redirect was not followed, or followed without a bound"
    );
}

/// With an upstream whose registry is docker.io, single-component names get
/// `library/`; names with a slash and explicit `library/` names are kept.
/// Another registry's single-component names are left alone.
#[test]
fn docker_hub_names_are_normalised() {
    let hub = Fake::start();
    let nginx = hub.put_image("library/nginx", Some("latest"), 16, 1000);
    hub.put_image("someuser/app", Some("v1"), 17, 10);
    hub.put_tags("library/nginx", &["1", "2", "3"]);
    let cfg = common::fake::proxy_yaml(
        &[Upstream::new("docker.io", &hub.url()).with_default()],
        None,
    );
    let proxy = Proxy::start(&cfg);

    let r = get(&proxy, "/v2/nginx/manifests/latest", &[accept_manifest()]);
    assert_eq!(r.status, 200, "nginx: {}", r.text());
    assert_eq!(r.body, nginx.manifest);
    assert!(hub.hits("/v2/library/nginx/manifests/latest") >= 1);
    assert_eq!(
        hub.hits("/v2/nginx/manifests/latest"),
        0,
        "name not normalised"
    );

    let r = get(
        &proxy,
        &format!("/v2/nginx/blobs/{}", nginx.layer_digest),
        &[],
    );
    assert_eq!(r.status, 200, "nginx blob");
    assert!(hub.hits(&format!("/v2/library/nginx/blobs/{}", nginx.layer_digest)) >= 1);

    let r = get(
        &proxy,
        "/v2/library/nginx/manifests/latest",
        &[accept_manifest()],
    );
    assert_eq!(r.status, 200, "library/nginx");
    assert_eq!(hub.hits("/v2/library/library/nginx/manifests/latest"), 0);

    let r = get(
        &proxy,
        "/v2/someuser/app/manifests/v1",
        &[accept_manifest()],
    );
    assert_eq!(r.status, 200, "someuser/app");
    assert!(hub.hits("/v2/someuser/app/manifests/v1") >= 1);
    assert_eq!(hub.hits("/v2/library/someuser/app/manifests/v1"), 0);

    let r = get(&proxy, "/v2/nginx/tags/list?n=2", &[]);
    assert_eq!(r.status, 200, "nginx tags");
    assert_eq!(tags_of(&r), ["1", "2"]);
    let next = next_link(&proxy, &hub, &r).expect("Link for the next page");
    let r = get(&proxy, &next, &[]);
    assert_eq!(r.status, 200, "following {next}");
    assert_eq!(tags_of(&r), ["3", "latest"]);

    // Not docker.io: no library/ prefix.
    let other = Fake::start();
    other.put_image("nginx", Some("latest"), 18, 10);
    let proxy2 = Proxy::start(&other.proxy_config());
    let r = get(&proxy2, "/v2/nginx/manifests/latest", &[accept_manifest()]);
    assert_eq!(r.status, 200, "nginx on a non-Hub upstream");
    assert_eq!(other.hits("/v2/library/nginx/manifests/latest"), 0);
}
