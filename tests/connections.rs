//! Client connections and what they may hold (issue 11, class 7
//! "Connections and deadlines"; issue 19, findings 1 and 5), against the
//! real binary:
//!
//! - connections that send nothing, half an HTTP/2 preface, a preface and
//!   no request, or go quiet after a request are closed within
//!   `timeouts.handshake` / `timeouts.idle`, over plain HTTP and TLS;
//! - thousands of idle sockets from one address do not lock out another
//!   (`limits.connectionsPerClient`);
//! - HTTP/2 clients that open hundreds of blob streams with a zero flow
//!   control window and never read hold at most
//!   `limits.upstreamFetchesPerConnection` upstream connections each, have
//!   their streams reset after `timeouts.clientStall`, and a legitimate
//!   pull meanwhile succeeds (plain and TLS); an HTTP/1.1 client that stops
//!   reading is disconnected and its upstream connection released;
//! - the upstream fetch caps answer 429 (per connection) and 503 (in
//!   total) when no slot comes free.
//!
//! The HTTP/2 client is `tests/h2/client.py` on Python's `h2` (Debian's
//! python3-h2, which scripts/test.sh installs), driving a raw socket so
//! that it can hold a zero window or stop half-way through a preface.
//! Upstream connections are counted at the in-process fake upstream;
//! memory is the proxy's VmRSS / VmHWM from /proc.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::certs::Certs;
use common::fake::{assert_oci_error, pseudo_random, Fake, Upstream};
use common::http;
use common::proxy::proc_status_kib;
use common::{free_port, Proxy};

const PYTHON: &str = "/usr/bin/python3";
const MIB: usize = 1024 * 1024;

fn client_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/h2/client.py")
}

/// Runs `tests/h2/client.py` with `args`; its JSON report.
fn h2_client(args: &[String]) -> serde_json::Value {
    let out = Command::new(PYTHON)
        .arg(client_script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client.py {args:?} failed ({}): {stderr}\n(it needs Debian's python3-h2: \
         apt-get install python3-h2, which scripts/test.sh does)",
        out.status
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client.py {args:?}: not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A proxy of `fake` with `extra` config; over TLS (with an admin listener
/// to check health on) when `certs` is given.
fn start_proxy(fake: &Fake, extra: &str, certs: Option<&Certs>) -> Proxy {
    let base = common::fake::proxy_yaml(
        &[Upstream::new(&fake.host(), &fake.url()).with_default()],
        None,
    );
    match certs {
        None => Proxy::start(&format!("{base}{extra}")),
        Some(certs) => {
            let admin = format!("127.0.0.1:{}", free_port());
            Proxy::start_with_health(
                &format!(
                    "{base}{extra}tls: {{cert: {}, key: {}}}\nadmin: {{listen: {admin}}}\n",
                    certs.path("cert.pem").display(),
                    certs.path("key.pem").display()
                ),
                &format!("http://{admin}/healthz"),
            )
        }
    }
}

/// Seconds from now until the peer closes `stream` (EOF or reset), or
/// `None` if it is still open after `wait`.
fn seconds_until_closed(stream: &mut TcpStream, wait: Duration) -> Option<f64> {
    let start = Instant::now();
    let mut buf = [0u8; 65536];
    while start.elapsed() < wait {
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed().as_secs_f64()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed().as_secs_f64()),
        }
    }
    None
}

/// `what` was closed `closed` seconds in, `expected` being the deadline:
/// not before it (so it was the deadline that closed it) and not much
/// after.
fn assert_closed_at(what: &str, closed: Option<f64>, expected: f64) {
    eprintln!("{what}: closed after {closed:?} s (deadline {expected} s)");
    let closed = closed.unwrap_or_else(|| panic!("{what}: still open (deadline {expected} s)"));
    // Slack for a loaded machine (the tests share two cores with builds).
    assert!(
        closed >= expected - 0.35 && closed <= expected + 2.5,
        "{what}: closed after {closed:.2} s, deadline {expected} s"
    );
}

fn json_secs(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get(key).and_then(serde_json::Value::as_f64)
}

const SHORT_DEADLINES: &str = "timeouts: {handshake: 1s, idle: 2s}\n";

/// Plain HTTP: a silent socket, half an HTTP/2 preface, half an HTTP/1.1
/// request, a full HTTP/2 preface without a request (h2c) are closed at
/// `timeouts.handshake`; HTTP/1.1 keep-alive and HTTP/2 connections that
/// served a request and went quiet at `timeouts.idle` (HTTP/2 with a
/// GOAWAY first).
#[test]
fn idle_and_half_open_connections_are_closed_within_the_timeouts() {
    let fake = Fake::start();
    let proxy = start_proxy(&fake, SHORT_DEADLINES, None);
    let addr = proxy.addr;
    let raw = |what: &'static str, send: &'static [u8]| {
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(send).expect("write");
            (what, seconds_until_closed(&mut s, Duration::from_secs(8)))
        })
    };
    let raw_cases = vec![
        raw("silent socket", b""),
        raw("half an HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        raw(
            "half an HTTP/1.1 request",
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\n",
        ),
    ];
    let keep_alive = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"{}") {
            let n = s.read(&mut buf).expect("read response");
            assert!(n > 0, "closed before the response");
            got.extend_from_slice(&buf[..n]);
        }
        seconds_until_closed(&mut s, Duration::from_secs(8))
    });
    let port = addr.port().to_string();
    let preface = h2_client(&args(&["idle", "--port", &port, "--mode", "preface"]));
    assert_closed_at(
        "h2c preface, no request",
        json_secs(&preface, "closed"),
        1.0,
    );
    let request = h2_client(&args(&["idle", "--port", &port, "--mode", "request"]));
    assert_closed_at("h2c after a request", json_secs(&request, "closed"), 2.0);
    let goaway = json_secs(&request, "goaway");
    assert!(
        goaway.is_some_and(|g| (1.65..=4.5).contains(&g)),
        "h2c after a request: GOAWAY at {goaway:?} s, idle timeout 2 s"
    );
    for case in raw_cases {
        let (what, closed) = case.join().expect("thread");
        assert_closed_at(what, closed, 1.0);
    }
    let closed = keep_alive.join().expect("thread");
    assert_closed_at("HTTP/1.1 keep-alive after a request", closed, 2.0);
}

/// The same over TLS (issue 19, finding 5): no TLS handshake, a TLS
/// handshake and nothing more, half a preface, a preface without a
/// request: closed at `timeouts.handshake` (counted from accept); a
/// request and then silence: GOAWAY and close at `timeouts.idle`.
#[test]
fn idle_and_half_open_tls_connections_are_closed_within_the_timeouts() {
    let fake = Fake::start();
    let certs = Certs::new();
    let proxy = start_proxy(&fake, SHORT_DEADLINES, Some(&certs));
    let port = proxy.addr.port().to_string();
    let ca = certs.path("ca.pem").display().to_string();
    let run = |extra: &[&str]| {
        let mut a = args(&["idle", "--port", &port, "--tls", &ca]);
        a.extend(args(extra));
        std::thread::spawn(move || h2_client(&a))
    };
    let cases = vec![
        ("TCP, no TLS handshake", run(&["--no-handshake"]), 1.0),
        (
            "TLS, nothing after the handshake",
            run(&["--mode", "silent"]),
            1.0,
        ),
        (
            "TLS, half an HTTP/2 preface",
            run(&["--mode", "partial-preface"]),
            1.0,
        ),
        (
            "TLS, preface and no request",
            run(&["--mode", "preface"]),
            1.0,
        ),
        (
            "TLS, a request, then silence",
            run(&["--mode", "request"]),
            2.0,
        ),
    ];
    for (what, report, deadline) in cases {
        let report = report.join().expect("thread");
        // The handshake deadline runs from accept, which was a moment
        // before the client's clock started for the TLS cases.
        assert_closed_at(what, json_secs(&report, "closed"), deadline);
        if deadline == 2.0 {
            let goaway = json_secs(&report, "goaway");
            assert!(
                goaway.is_some_and(|g| (1.65..=4.5).contains(&g)),
                "{what}: GOAWAY at {goaway:?} s"
            );
        }
    }
}

/// Raises this process's open-file limit (and so the proxy's, which
/// inherits it) to at least `want`, up to the hard limit, with util-linux'
/// `prlimit`.
fn raise_open_files(want: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("no 'Max open files' in /proc/self/limits");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    let soft: u64 = soft.parse().unwrap_or(u64::MAX);
    let hard: u64 = hard.parse().unwrap_or(u64::MAX);
    if soft >= want {
        return;
    }
    assert!(
        hard >= want,
        "this test needs {want} open files; the hard limit is {hard} (raise it, e.g. ulimit -Hn)"
    );
    let pid = std::process::id().to_string();
    let limit = format!("--nofile={hard}:{hard}");
    common::clients::run(
        Command::new("prlimit").args(["--pid", &pid, &limit]),
        "prlimit",
    );
}

/// 4,200 idle sockets from 127.0.0.1 (more than the 4,096 connections the
/// proxy takes in total) do not lock out a pull from 127.0.0.2: one
/// address gets `limits.connectionsPerClient` (256) connections, and the
/// rest are closed at once (issue 11, class 7).
#[test]
fn thousands_of_idle_sockets_from_one_address_do_not_lock_out_another() {
    const IDLE: usize = 4200;
    raise_open_files(3 * IDLE as u64);
    let fake = Fake::start();
    let img = fake.put_image("team/app", Some("v1"), 5, 100_000);
    // Default limits. Opening 4,200 sockets can take longer than the
    // 10 s handshake timeout on a loaded two-core runner, which would close
    // the first ones for a reason this test is not about: the timeouts are
    // raised so the sockets stay open unless the proxy refuses them.
    let proxy = start_proxy(&fake, "timeouts: {handshake: 120s, idle: 120s}\n", None);
    let started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            TcpStream::connect_timeout(&proxy.addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("idle socket {i}: {e}"))
        })
        .collect();
    eprintln!(
        "{IDLE} idle sockets from 127.0.0.1 in {:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));

    let other: IpAddr = "127.0.0.2".parse().expect("ip");
    let get = |target: &str, accept: &[(&str, &str)]| {
        http::request_from(other, "GET", &format!("{}{target}", proxy.url()), accept)
            .unwrap_or_else(|e| panic!("GET {target} from 127.0.0.2 during the flood: {e}"))
    };
    let r = get(
        "/v2/team/app/manifests/v1",
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    );
    assert_eq!(r.status, 200, "manifest from 127.0.0.2: {}", r.text());
    assert!(r.body == img.manifest, "manifest bytes differ");
    for (digest, bytes) in [
        (&img.config_digest, &img.config),
        (&img.layer_digest, &img.layer),
    ] {
        let r = get(&format!("/v2/team/app/blobs/{digest}"), &[]);
        assert_eq!(r.status, 200, "blob {digest} from 127.0.0.2: {}", r.text());
        assert!(r.body == *bytes, "blob {digest}: bytes differ");
    }

    // The proxy kept 256 of the flood's sockets and closed the others.
    let deadline = Instant::now() + Duration::from_secs(5);
    let closed = loop {
        let mut closed = 0;
        for s in &mut idle {
            s.set_nonblocking(true).expect("nonblocking");
            let mut buf = [0u8; 1];
            match s.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => closed += 1,
            }
        }
        if closed >= IDLE - 256 || Instant::now() >= deadline {
            break closed;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("the proxy closed {closed} of {IDLE} idle sockets from one address at once");
    assert_eq!(
        closed,
        IDLE - 256,
        "one address should keep exactly limits.connectionsPerClient (256) connections"
    );
}

const ATTACKERS: usize = 2;
const STREAMS: usize = 200;
const PER_CONNECTION: u64 = 8;
const STALL_SECS: f64 = 3.0;
const HOLD_SECS: f64 = 8.0;

/// Issue 19, finding 1: two HTTP/2 connections each open 200 streams for
/// a 16 MiB blob with a zero window and never read.
fn zero_window_attack(tls: bool) {
    let fake = Fake::start();
    let big = pseudo_random(77, 16 * MIB);
    let big_digest = fake.put_blob("team/big", &big);
    let img = fake.put_image("team/app", Some("v1"), 6, 300_000);
    let certs = tls.then(Certs::new);
    let proxy = start_proxy(
        &fake,
        "timeouts: {connect: 2s, read: 10s, clientStall: 3s}\n\
         limits: {upstreamFetchesPerConnection: 8, upstreamFetches: 64}\n",
        certs.as_ref(),
    );
    let pid = proxy.pid();
    let rss_before = proc_status_kib(pid, "VmRSS");
    let port = proxy.addr.port().to_string();
    let path = format!("/v2/team/big/blobs/{big_digest}");
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| {
            let mut a = args(&[
                "stall",
                "--port",
                &port,
                "--path",
                &path,
                "--streams",
                &STREAMS.to_string(),
                "--hold",
                &HOLD_SECS.to_string(),
            ]);
            if let Some(certs) = &certs {
                a.extend(args(&[
                    "--tls",
                    &certs.path("ca.pem").display().to_string(),
                ]));
            }
            std::thread::spawn(move || h2_client(&a))
        })
        .collect();

    // Upstream connections, sampled every 20 ms while the attack lasts.
    let fake = std::sync::Arc::new(fake);
    let sampler = {
        let fake = std::sync::Arc::clone(&fake);
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs_f64(HOLD_SECS - 0.5);
            let mut samples = Vec::new();
            while Instant::now() < until {
                samples.push(fake.open_connections());
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let during = fake.open_connections();
    let rss_during = proc_status_kib(pid, "VmRSS");

    // A legitimate pull meanwhile (its own connection; plain HTTP/1.1
    // unless the proxy serves TLS, then curl over HTTP/2).
    let legit_started = Instant::now();
    match &certs {
        None => {
            let r = http::request(
                "GET",
                &format!("{}/v2/team/app/manifests/v1", proxy.url()),
                &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
                &[],
            )
            .expect("legitimate manifest GET");
            assert_eq!(r.status, 200, "legitimate manifest: {}", r.text());
            assert!(r.body == img.manifest, "manifest bytes differ");
            for (digest, bytes) in [
                (&img.config_digest, &img.config),
                (&img.layer_digest, &img.layer),
            ] {
                let r = http::get(&format!("{}/v2/team/app/blobs/{digest}", proxy.url()))
                    .expect("legitimate blob GET");
                assert_eq!(r.status, 200, "legitimate blob {digest}: {}", r.text());
                assert!(r.body == *bytes, "legitimate blob {digest}: bytes differ");
            }
        }
        Some(certs) => {
            let ca = certs.path("ca.pem");
            let base = format!("https://127.0.0.1:{port}/v2/team/app");
            for (target, want) in [
                ("manifests/v1".to_string(), &img.manifest),
                (format!("blobs/{}", img.config_digest), &img.config),
                (format!("blobs/{}", img.layer_digest), &img.layer),
            ] {
                let out = Command::new("curl")
                    .args(["-sf", "--http2", "--max-time", "20", "--cacert"])
                    .arg(&ca)
                    .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
                    .arg(format!("{base}/{target}"))
                    .output()
                    .expect("run curl");
                assert!(
                    out.status.success(),
                    "legitimate GET {target} over TLS: curl {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(out.stdout == *want, "legitimate GET {target}: bytes differ");
            }
        }
    }
    let legit = legit_started.elapsed();

    let reports: Vec<serde_json::Value> = attackers
        .into_iter()
        .map(|a| a.join().expect("attacker thread"))
        .collect();
    let mut samples = sampler.join().expect("sampler");
    samples.sort_unstable();
    let typical = samples[samples.len() * 9 / 10];
    let most_sampled = samples.last().copied().unwrap_or(0);
    // The attackers hung up: their upstream fetches end with them.
    let released =
        common::trust::wait_until(Duration::from_secs(3), || fake.open_connections() <= 4);
    let after = fake.open_connections();
    let peak = fake.peak_connections();
    let rss_peak = proc_status_kib(pid, "VmHWM");
    let mut started_streams = 0;
    let mut reset_streams = 0;
    let mut slowest_reset: f64 = 0.0;
    for (i, report) in reports.iter().enumerate() {
        let streams = report["streams"].as_array().expect("streams");
        for s in streams {
            let Some(headers) = s["headers"].as_f64() else {
                continue;
            };
            assert_eq!(s["status"], 200, "attacker {i} stream {}: {s}", s["id"]);
            assert_eq!(s["data"], 0, "a zero window let data through: {s}");
            started_streams += 1;
            match s["reset"].as_f64() {
                Some(reset) => {
                    reset_streams += 1;
                    slowest_reset = slowest_reset.max(reset - headers);
                }
                None => assert!(
                    headers > HOLD_SECS - STALL_SECS - 1.5,
                    "attacker {i} stream {} (headers at {headers:.2} s) was never reset: {s}",
                    s["id"]
                ),
            }
        }
    }
    let kind = if tls { "TLS" } else { "h2c" };
    eprintln!(
        "{kind} zero-window attack ({ATTACKERS} connections x {STREAMS} streams): upstream \
         connections {during} at 1.5 s, 90th percentile {typical} and most {most_sampled} of {} \
         samples, instantaneous peak {peak}, \
         {after} after; {started_streams} streams started, {reset_streams} reset, the slowest \
         {slowest_reset:.2} s after its headers; proxy RSS {:.1} MiB before, {:.1} MiB during, \
         peak {:.1} MiB; legitimate pull {legit:?}",
        samples.len(),
        rss_before as f64 / 1024.0,
        rss_during as f64 / 1024.0,
        rss_peak as f64 / 1024.0
    );
    // The attack holds `cap` upstream connections (plus the legitimate
    // pull's), sampled every 20 ms. When a batch of stalled streams is
    // reset, the next batch takes their slots at once while the old sockets
    // are still being torn down (the proxy drops an upstream body; hyper
    // closes its connection on its own task; the fake notices the reset),
    // so for a few milliseconds both batches are open. The instantaneous
    // count the fake keeps at accept time therefore depends on teardown
    // scheduling on a loaded two-core runner (20-46 measured in twelve
    // runs, never above 17 in 1,500 samples): it is bounded here only
    // against the uncapped proxy's hundreds (one upstream connection per
    // stream, `ATTACKERS x STREAMS`).
    let cap = ATTACKERS as u64 * PER_CONNECTION;
    assert!(
        during <= cap + 2 && typical <= cap + 2 && most_sampled <= 2 * cap + 2,
        "upstream connections: {during} at 1.5 s, 90th percentile {typical}, most sampled \
         {most_sampled}; cap {cap} (limits.upstreamFetchesPerConnection x connections)"
    );
    assert!(
        peak < (ATTACKERS * STREAMS) as u64 / 4,
        "upstream connections peaked at {peak}: the cap of {cap} did not hold"
    );
    assert!(
        started_streams >= 2 * cap as usize,
        "only {started_streams} streams started: slots freed by resets were not reused"
    );
    assert!(
        reset_streams >= cap as usize,
        "only {reset_streams} streams reset"
    );
    assert!(
        slowest_reset <= STALL_SECS + 1.5,
        "a stalled stream was reset only {slowest_reset:.2} s after its headers (clientStall 3 s)"
    );
    assert!(
        released,
        "{after} upstream connections still open after the attackers left"
    );
    // A ceiling, not the measure of the fix (the upstream connections
    // above are): measured 19-25 MiB over the idle proxy with the caps,
    // 34 MiB without them, much of an upstream connection's cost being
    // kernel socket buffers that RSS does not show. On the 2-core Debian
    // builders of 2026-12-06 the same attack measured 38-41 MiB over idle
    // over TLS, for the commit that set 40 MiB as well as later ones (the
    // allocator's arenas differ from machine to machine), so the ceiling
    // leaves room for that; a proxy that buffered a window per stream
    // (400 streams) would still exceed it by far.
    assert!(
        rss_peak < rss_before + 48 * 1024,
        "proxy peak RSS {rss_peak} KiB, {rss_before} KiB before the attack"
    );
}

#[test]
fn h2c_clients_that_stop_reading_are_reset_and_release_upstream_connections() {
    zero_window_attack(false);
}

#[test]
fn tls_h2_clients_that_stop_reading_are_reset_and_release_upstream_connections() {
    zero_window_attack(true);
}

/// Sends `GET target` on a fresh connection and reads nothing.
fn request_without_reading(addr: SocketAddr, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(s, "GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("write request");
    s
}

/// An HTTP/1.1 client that stops reading a 32 MiB blob: disconnected
/// `timeouts.clientStall` after it last accepted bytes, and the upstream
/// connection behind it released (issue 19, finding 1).
#[test]
fn http1_client_that_stops_reading_is_disconnected_and_the_upstream_released() {
    let fake = Fake::start();
    let big = pseudo_random(78, 32 * MIB);
    let digest = fake.put_blob("team/big", &big);
    let proxy = start_proxy(&fake, "timeouts: {read: 10s, clientStall: 2s}\n", None);
    let mut s = request_without_reading(proxy.addr, &format!("/v2/team/big/blobs/{digest}"));
    assert!(
        common::trust::wait_until(Duration::from_secs(5), || fake.open_connections() >= 1),
        "the blob fetch never reached the upstream"
    );
    let started = Instant::now();
    let released =
        common::trust::wait_until(Duration::from_secs(8), || fake.open_connections() == 0);
    let took = started.elapsed();
    eprintln!("HTTP/1.1 client stopped reading: upstream connection released after {took:?}");
    assert!(
        released,
        "the upstream connection is still open after {took:?}"
    );
    // The client's connection was closed too: whatever sits in the socket
    // buffers, then the end.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set_read_timeout");
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the proxy kept the stalled connection open ({got} bytes read)")
            }
            Err(_) => break,
        }
    }
    assert!(got < big.len(), "the whole blob arrived ({got} bytes)");
    assert!(
        took < Duration::from_secs(6),
        "released after {took:?}, clientStall 2 s"
    );
}

/// The upstream fetch caps: past `limits.upstreamFetches` a blob request
/// waits `timeouts.read` for a slot and then gets `503 UNAVAILABLE` with
/// `Retry-After`; past `limits.upstreamFetchesPerConnection` an HTTP/2
/// stream gets `429 TOOMANYREQUESTS`. Slots come back when the streams
/// holding them end.
#[test]
fn upstream_fetch_caps_answer_503_in_total_and_429_per_connection() {
    let fake = Fake::start();
    let big = pseudo_random(79, 16 * MIB);
    let digest = fake.put_blob("team/big", &big);
    let small = pseudo_random(80, 1000);
    let small_digest = fake.put_blob("team/big", &small);
    let proxy = start_proxy(
        &fake,
        "timeouts: {read: 2s, clientStall: 30s}\n\
         limits: {upstreamFetches: 2, upstreamFetchesPerConnection: 1}\n",
        None,
    );
    let target = format!("/v2/team/big/blobs/{digest}");
    let holders: Vec<TcpStream> = (0..2)
        .map(|_| request_without_reading(proxy.addr, &target))
        .collect();
    assert!(
        common::trust::wait_until(Duration::from_secs(5), || fake.open_connections() >= 2),
        "the two fetches never reached the upstream"
    );
    let started = Instant::now();
    let r =
        http::get(&format!("{}/v2/team/big/blobs/{small_digest}", proxy.url())).expect("third GET");
    let took = started.elapsed();
    assert_oci_error(
        &r,
        503,
        Some("UNAVAILABLE"),
        "a third concurrent blob fetch",
    );
    assert!(r.text().contains("limits.upstreamFetches"), "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "503 after {took:?}; it waits timeouts.read (2 s) for a slot"
    );
    assert_eq!(
        fake.peak_connections(),
        2,
        "the cap let a third fetch through"
    );
    drop(holders);
    assert!(
        common::trust::wait_until(Duration::from_secs(3), || fake.open_connections() == 0),
        "upstream connections still open after the clients left"
    );
    let r = http::get(&format!("{}/v2/team/big/blobs/{small_digest}", proxy.url()))
        .expect("GET after the slots came back");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == small);

    // One slot per connection: of three HTTP/2 streams, one fetches (and
    // holds its slot: window 0), the other two wait 2 s and get 429.
    let port = proxy.addr.port().to_string();
    let report = h2_client(&args(&[
        "stall",
        "--port",
        &port,
        "--path",
        &target,
        "--streams",
        "3",
        "--hold",
        "4",
    ]));
    let mut statuses: Vec<_> = report["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| s["status"].as_u64())
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        vec![Some(200), Some(429), Some(429)],
        "one slot per connection: {report}"
    );
}
