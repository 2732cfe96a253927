//! Faults under load (issue 17, part 4): a real distribution registry, real
//! `portcullis serve` processes, and client threads pulling a signed and an
//! unsigned image in a loop while a fault is injected. Each test counts what
//! the clients got before, during and after the fault, prints the figures,
//! and asserts that nothing unverified was served at any moment:
//!
//! - the proxy killed with SIGKILL and restarted on the same configuration
//!   and ports: clients retry and succeed; the audit trail holds whole
//!   lines, a line torn by the kill stays on a line of its own, and the new
//!   process verifies again (a denied image stays denied);
//! - the upstream registry killed and restarted on the same port and
//!   storage: OCI 5xx errors while it is down (a signed image's manifest
//!   is never denied for it, no byte of the unsigned image is served),
//!   normal service after it is back without restarting the proxy;
//! - the content store's disk (a 64 MiB tmpfs, maxSize 1 GiB) filling up
//!   under concurrent pulls of 96 MiB of layers: every pull still gets the
//!   right bytes, nothing partial or corrupt is stored, and the disk error
//!   is logged and counted;
//! - the disk failing in the middle of a download (a 16 MiB tmpfs, a
//!   32 MiB layer from an upstream that sends no `Content-Length` — nginx
//!   in front of the registry with a body filter —, so no space is
//!   allocated ahead): the pull leading the download still gets every
//!   byte, checked, and nothing is stored;
//! - Redis killed and restarted under a fleet of two replicas: while it is
//!   down a blob only the other replica admitted is refused (fail closed)
//!   and nothing else changes; after it is back the replicas share again
//!   without a restart.
//!
//! The figures each run measured on a 2-core machine are in
//! `docs/reliability.md` ("Faults under load").

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::content::{self, sha256_reader};
use common::fake::oci_errors;
use common::http;
use common::redis::Redis;
use common::registry::Registry;
use common::trust::{self, KeyPair, TrustConfig, MANIFEST_ACCEPT};
use common::Proxy;

/// Every request of the load is bounded by this (connect, each read and
/// write).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Client threads pulling at once.
const THREADS: usize = 4;

/// How long a client waits before pulling again after a pull that got no
/// answer, a cut-off body or a 5xx.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

// ------------------------------------------------------------- images

/// An image in the registry, tagged `v1`, and whether the attestor signed
/// it.
#[derive(Debug, Clone)]
struct Image {
    repo: String,
    manifest: Vec<u8>,
    /// Config first, then layers.
    blobs: Vec<String>,
    signed: bool,
}

/// Pushes `repo:v1` with layers of `layers` bytes (from `seed`) and signs
/// it with `key` when `signed`.
fn push(
    reg: &Registry,
    key: &KeyPair,
    repo: &str,
    seed: u64,
    layers: &[u64],
    signed: bool,
) -> Image {
    let arch = common::host_arch();
    let pushed = content::push_image(&reg.url(), repo, Some("v1"), arch, seed, layers);
    if signed {
        let reference = format!("{}/{repo}:v1", reg.host());
        trust::sign(&reg.url(), &reference, repo, &pushed.digest, key, &[]);
    }
    Image {
        repo: repo.to_owned(),
        blobs: pushed.blobs().into_iter().map(|b| b.digest).collect(),
        manifest: pushed.manifest,
        signed,
    }
}

// ------------------------------------------------------ what was served

/// What one request got.
#[derive(Debug, Clone)]
enum Got {
    /// `200` with exactly the bytes asked for.
    Served,
    /// An error status with its OCI code and message.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// No response at all (connection refused or reset, a timeout).
    NoAnswer(String),
    /// `200`, then the body ended early: the client cannot take it.
    CutOff(String),
    /// `200` with other bytes than asked for: never acceptable.
    WrongBytes(String),
}

impl Got {
    /// `200`, `403 DENIED`, `502 UNAVAILABLE`, `no answer`, ...
    fn class(&self) -> String {
        match self {
            Got::Served => "200".into(),
            Got::Refused { status, code, .. } => format!("{status} {code}"),
            Got::NoAnswer(_) => "no answer".into(),
            Got::CutOff(_) => "cut off".into(),
            Got::WrongBytes(_) => "WRONG BYTES".into(),
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Got::Served => Some(200),
            Got::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// What a client retries: no answer, a cut-off body, a 5xx.
    fn worth_a_retry(&self) -> bool {
        matches!(self, Got::NoAnswer(_) | Got::CutOff(_)) || self.status().is_some_and(|s| s >= 500)
    }

    fn is_denied(&self) -> bool {
        matches!(self, Got::Refused { status: 403, code, .. } if code == "DENIED")
    }

    fn message(&self) -> &str {
        match self {
            Got::Refused { message, .. } => message,
            Got::NoAnswer(m) | Got::CutOff(m) | Got::WrongBytes(m) => m,
            Got::Served => "",
        }
    }
}

/// An error response's OCI code and message.
fn refused(status: u16, body: &[u8]) -> Got {
    let (code, message) = match oci_errors(body) {
        Ok(errors) => errors[0].clone(),
        // Not an OCI error envelope: kept as the code, so it shows.
        Err(e) => (format!("NOT-OCI ({e})"), String::new()),
    };
    Got::Refused {
        status,
        code,
        message,
    }
}

/// GET a manifest by tag; `Served` only with exactly the pushed bytes.
fn get_manifest(base: &str, image: &Image) -> Got {
    let url = format!("{base}/v2/{}/manifests/v1", image.repo);
    let r = match http::request_streaming_timeout(
        "GET",
        &url,
        &[("Accept", MANIFEST_ACCEPT)],
        REQUEST_TIMEOUT,
    ) {
        Ok(r) => r,
        Err(e) => return Got::NoAnswer(e.to_string()),
    };
    let status = r.status;
    let mut body = Vec::new();
    let read = r.body.take(16 << 20).read_to_end(&mut body);
    match (status, read) {
        (200, Ok(_)) if body == image.manifest => Got::Served,
        (200, Ok(_)) => Got::WrongBytes(format!(
            "manifest of {}: {} bytes that are not the pushed manifest",
            image.repo,
            body.len()
        )),
        (200, Err(e)) => Got::CutOff(e.to_string()),
        (_, _) => refused(status, &body),
    }
}

/// GET a blob; `Served` only when the whole body hashed to `digest`.
fn get_blob(base: &str, image: &Image, digest: &str) -> Got {
    let url = format!("{base}/v2/{}/blobs/{digest}", image.repo);
    let r = match http::request_streaming_timeout("GET", &url, &[], REQUEST_TIMEOUT) {
        Ok(r) => r,
        Err(e) => return Got::NoAnswer(e.to_string()),
    };
    if r.status != 200 {
        let mut body = Vec::new();
        let _ = r.body.take(1 << 20).read_to_end(&mut body);
        return refused(r.status, &body);
    }
    match sha256_reader(r.body) {
        Ok((got, _)) if got == digest => Got::Served,
        Ok((got, len)) => Got::WrongBytes(format!(
            "blob {digest} of {}: {len} bytes hashing to {got}",
            image.repo
        )),
        Err(e) => Got::CutOff(e.to_string()),
    }
}

// ------------------------------------------------------------ the load

/// Where the fault is, as the clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Before,
    During,
    After,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Before,
            1 => Phase::During,
            _ => Phase::After,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    Manifest,
    Blob,
}

/// One request of the load.
#[derive(Debug, Clone)]
struct Record {
    thread: usize,
    /// Index into the test's images.
    image: usize,
    subject: Subject,
    /// The replica (index into the test's bases) asked.
    via: usize,
    start: Instant,
    end: Instant,
    got: Got,
}

/// The requests that started at or after `from` and ended by `to`.
fn window(records: &[Record], from: Instant, to: Instant) -> Vec<&Record> {
    records
        .iter()
        .filter(|r| r.start >= from && r.end <= to)
        .collect()
}

/// The requests that ended before `to`.
fn ended_before(records: &[Record], to: Instant) -> impl Iterator<Item = &Record> {
    records.iter().filter(move |r| r.end < to)
}

/// One pull: the manifest from one base, its blobs from another (the
/// same one unless the test splits pulls across replicas).
#[derive(Debug, Clone, Copy)]
struct Pull {
    image: usize,
    manifest_via: usize,
    blobs_via: usize,
}

type Planner = dyn Fn(usize, u64, Phase) -> Pull + Send + Sync;

/// Client threads pulling in a loop until stopped (on drop too, so a
/// failed assertion never leaves them running).
struct Load {
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `THREADS` clients; client `t`'s `n`th pull is `plan(t, n, phase)`.
    /// Every pull asks for the manifest and then for every blob of the
    /// image, whatever the manifest's answer (a client that knows the
    /// digests tries anyway). After a pull in which any request got no
    /// answer, a cut-off body or a 5xx, the client waits
    /// [`RETRY_BACKOFF`] before pulling again, as clients back off.
    fn start(images: &[Image], bases: &[String], plan: Arc<Planner>) -> Load {
        let phase = Arc::new(AtomicU8::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..THREADS)
            .map(|t| {
                let images = images.to_vec();
                let bases = bases.to_vec();
                let plan = Arc::clone(&plan);
                let (phase, stop, records) =
                    (Arc::clone(&phase), Arc::clone(&stop), Arc::clone(&records));
                std::thread::spawn(move || {
                    let now = || Phase::from_u8(phase.load(Ordering::SeqCst));
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let pull = plan(t, n, now());
                        let image = &images[pull.image];
                        let mut requests = vec![(Subject::Manifest, None, pull.manifest_via)];
                        requests.extend(
                            image
                                .blobs
                                .iter()
                                .map(|d| (Subject::Blob, Some(d.as_str()), pull.blobs_via)),
                        );
                        let mut retry = false;
                        for (subject, digest, via) in requests {
                            let start = Instant::now();
                            let got = match digest {
                                None => get_manifest(&bases[via], image),
                                Some(d) => get_blob(&bases[via], image, d),
                            };
                            retry |= got.worth_a_retry();
                            let record = Record {
                                thread: t,
                                image: pull.image,
                                subject,
                                via,
                                start,
                                end: Instant::now(),
                                got,
                            };
                            records.lock().expect("records").push(record);
                        }
                        if retry {
                            std::thread::sleep(RETRY_BACKOFF);
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            phase,
            stop,
            records,
            threads,
        }
    }

    fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    fn records(&self) -> Vec<Record> {
        self.records.lock().expect("records").clone()
    }

    /// Waits until every request that started after `since` for the last
    /// `quiet` went as `normal` says (and there were some), at most
    /// `bound`. The time from `since` to the end of the last request that
    /// did not, if it recovered.
    fn recovered(
        &self,
        since: Instant,
        normal: impl Fn(&Record) -> bool,
        quiet: Duration,
        bound: Duration,
    ) -> Option<Duration> {
        let deadline = since + bound;
        loop {
            let records = self.records();
            let after: Vec<&Record> = records.iter().filter(|r| r.start >= since).collect();
            let last_bad = after
                .iter()
                .filter(|r| !normal(r))
                .map(|r| r.end)
                .max()
                .unwrap_or(since);
            let good_since = after
                .iter()
                .filter(|r| r.start > last_bad && normal(r))
                .count();
            if Instant::now() >= last_bad + quiet && good_since >= 2 * THREADS {
                return Some(last_bad - since);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the clients and returns every record.
    fn finish(mut self) -> Vec<Record> {
        self.halt();
        self.records()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A signed image served with its bytes, an unsigned one refused `403
/// DENIED`: service as it should be.
fn normal(images: &[Image], r: &Record) -> bool {
    if images[r.image].signed {
        matches!(r.got, Got::Served)
    } else {
        r.got.is_denied()
    }
}

/// What must never happen, at any moment of any fault: other bytes than
/// asked for, or any byte of the unsigned image.
fn assert_nothing_unverified(test: &str, images: &[Image], records: &[Record]) {
    let bad: Vec<String> = records
        .iter()
        .filter(|r| {
            matches!(r.got, Got::WrongBytes(_))
                || (!images[r.image].signed && matches!(r.got, Got::Served))
        })
        .map(|r| format!("{r:?}"))
        .collect();
    assert!(
        bad.is_empty(),
        "[{test}] {} requests were served what must never be served:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// When the fault began and when its cause was removed (the restart
/// began).
#[derive(Debug, Clone, Copy)]
struct Fault {
    began: Instant,
    ended: Instant,
}

impl Fault {
    /// `before` (ended before the fault), `during` (started and ended
    /// within it), `after` (started after it), or `across` (in flight
    /// at one of its edges).
    fn phase_of(&self, r: &Record) -> &'static str {
        if r.end < self.began {
            "before"
        } else if r.start >= self.began && r.end <= self.ended {
            "during"
        } else if r.start >= self.ended {
            "after"
        } else {
            "across"
        }
    }
}

/// Prints, per phase of `fault` (if any), how many requests for which
/// image got what, and returns the counts.
fn report(
    test: &str,
    images: &[Image],
    records: &[Record],
    fault: Option<Fault>,
) -> BTreeMap<String, usize> {
    let phase_of = |r: &Record| fault.map_or("load", |f| f.phase_of(r));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in records {
        let phase = phase_of(r);
        let repo = &images[r.image].repo;
        let subject = match r.subject {
            Subject::Manifest => "manifest",
            Subject::Blob => "blob",
        };
        *counts
            .entry(format!(
                "{phase:<7} {repo:<14} {subject:<8} {}",
                r.got.class()
            ))
            .or_default() += 1;
    }
    let mut per_phase: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records {
        *per_phase.entry(phase_of(r)).or_default() += 1;
    }
    eprintln!("[{test}] requests per phase: {per_phase:?}");
    for (k, n) in &counts {
        eprintln!("[{test}]   {k:<50} {n:>6}");
    }
    counts
}

/// `fault` took this long to recover from, or panics with what happened
/// since `since`.
fn expect_recovery(
    test: &str,
    load: &Load,
    since: Instant,
    normal: impl Fn(&Record) -> bool,
    bound: Duration,
) -> Duration {
    match load.recovered(since, &normal, Duration::from_secs(2), bound) {
        Some(took) => took,
        None => {
            let records = load.records();
            let bad: Vec<String> = records
                .iter()
                .filter(|r| r.start >= since && !normal(r))
                .rev()
                .take(10)
                .map(|r| format!("{r:?}"))
                .collect();
            panic!(
                "[{test}] service did not recover within {bound:?}; the last requests that failed:\n{}",
                bad.join("\n")
            )
        }
    }
}

/// The value of an unlabelled sample in a Prometheus exposition (0 if
/// absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A proxy (or replica) with an admin listener: the proxy and the admin
/// base URL.
fn start_with_admin(config: &str) -> (Proxy, String) {
    let admin = format!("127.0.0.1:{}", common::free_port());
    let proxy = Proxy::start_with_health(
        &format!("{config}admin: {{listen: {admin}}}\n"),
        &format!("http://{admin}/healthz"),
    );
    (proxy, format!("http://{admin}"))
}

fn get_text(url: &str) -> String {
    http::get(url)
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
}

// ---------------------------------------------- 1. kill -9 and restart

/// The audit trail, line by line: `(complete lines, what follows the last
/// newline)`.
fn audit_lines(bytes: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let complete = bytes[..end]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    (complete, &bytes[end..])
}

/// Parses one audit line and checks its verdict against the image it
/// names: an allow only for the signed image, a deny only for the
/// unsigned one.
fn audit_record(line: &[u8], registry: &str, images: &[Image]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_else(|e| {
        panic!(
            "an audit line does not parse ({e}): {:?}",
            String::from_utf8_lossy(line)
        )
    });
    let reference = v["reference"].as_str().expect("reference");
    let image = images
        .iter()
        .find(|i| reference == format!("{registry}/{}", i.repo))
        .unwrap_or_else(|| panic!("an audit record names another image: {v}"));
    let expected = if image.signed { "allow" } else { "deny" };
    assert_eq!(
        v["verdict"], expected,
        "wrong verdict in the audit trail: {v}"
    );
    v
}

#[test]
fn kill_9_mid_load_then_restart_clients_retry_and_verdicts_are_recomputed() {
    const TEST: &str = "kill -9";
    let reg = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = trust::keygen(dir.path(), "ci");
    let images = vec![
        push(&reg, &key, "team/signed", 401, &[1_500_000, 20_000], true),
        push(&reg, &key, "team/unsigned", 402, &[300_000], false),
    ];
    let audit = dir.path().join("audit.jsonl");
    let config = format!(
        "{}audit: {{path: {}}}\n",
        TrustConfig::new(&reg.host(), &reg.url(), &[("ci", &key)]).yaml(),
        audit.display()
    );
    let mut proxy = Proxy::start(&config);
    let plan: Arc<Planner> = Arc::new(|t: usize, n: u64, _: Phase| Pull {
        image: (t + n as usize) % 2,
        manifest_via: 0,
        blobs_via: 0,
    });
    let load = Load::start(&images, &[proxy.url()], plan);
    std::thread::sleep(Duration::from_secs(2));

    // SIGKILL mid-load: no graceful shutdown, requests in flight are cut.
    let killed = Instant::now();
    proxy.kill_9();
    let dead = Instant::now();
    load.set(Phase::During);
    let at_kill = std::fs::read(&audit).expect("audit file");
    let (lines, tail) = audit_lines(&at_kill);
    for line in &lines {
        audit_record(line, &reg.host(), &images);
    }
    assert!(
        lines.len() > 10,
        "too few decisions before the kill: {}",
        lines.len()
    );
    // The writer appends each record with one write(2); a SIGKILL between
    // two pages of it can leave part of a line at the end (all the kernel
    // promises). The kill rarely lands there, so the torn write is made
    // here when it did not happen: half of the last line, no newline.
    let torn: Vec<u8> = if tail.is_empty() {
        let last = lines.last().expect("a line");
        let half = last[..last.len() / 2].to_vec();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&audit)
            .expect("open audit");
        std::io::Write::write_all(&mut file, &half).expect("tear the last line");
        half
    } else {
        eprintln!("[{TEST}] the kill itself tore the last audit line");
        tail.to_vec()
    };
    let restart_at = at_kill.len() - tail.len() + torn.len();
    // Down for a second: clients get connection refused, and try again.
    std::thread::sleep(Duration::from_secs(1));
    load.set(Phase::After);
    let restarting = Instant::now();
    proxy.restart();
    let up = Instant::now();
    let took = expect_recovery(
        TEST,
        &load,
        up,
        |r| normal(&images, r),
        Duration::from_secs(15),
    );
    // Every client pulled the signed image again, whole.
    assert!(
        trust::wait_until(Duration::from_secs(15), || {
            let records = load.records();
            (0..THREADS).all(|t| {
                records
                    .iter()
                    .filter(|r| {
                        r.thread == t
                            && r.start >= up
                            && images[r.image].signed
                            && r.subject == Subject::Manifest
                            && matches!(r.got, Got::Served)
                    })
                    .count()
                    >= 2
            })
        }),
        "a client did not pull the signed image again after the restart"
    );
    let records = load.finish();

    let counts = report(
        TEST,
        &images,
        &records,
        Some(Fault {
            began: killed,
            ended: restarting,
        }),
    );
    assert_nothing_unverified(TEST, &images, &records);
    let first_after = records
        .iter()
        .filter(|r| r.start >= restarting && matches!(r.got, Got::Served))
        .map(|r| r.end)
        .min()
        .expect("a pull served after the restart");
    let retried = records
        .iter()
        .filter(|r| r.start >= killed && matches!(r.got, Got::NoAnswer(_)))
        .count();
    eprintln!(
        "[{TEST}] down {:?} (kill → restart began), restart to healthy {:?}, \
         kill to first byte-exact pull {:?}; {retried} requests got no answer and were retried; \
         abnormal answers after healthy for {took:?}",
        restarting - killed,
        up - restarting,
        first_after - killed,
    );
    // Before the kill: normal service.
    for r in ended_before(&records, killed) {
        assert!(normal(&images, r), "before the kill: {r:?}");
    }
    // While nothing listens: no answer at all.
    for r in window(&records, dead, restarting) {
        assert!(
            matches!(r.got, Got::NoAnswer(_)),
            "an answer while the proxy was dead: {r:?}"
        );
    }
    assert!(retried > 0, "no client noticed the proxy was gone");
    // Once the restarted process is healthy: normal service at once.
    for r in records.iter().filter(|r| r.start >= up) {
        assert!(normal(&images, r), "after the restart: {r:?}");
    }
    assert!(
        counts
            .keys()
            .any(|k| k.starts_with("after") && k.contains("team/unsigned")),
        "the unsigned image was not asked for after the restart"
    );

    // The audit trail: the first process's whole lines, the torn line on
    // a line of its own, then the second process's whole lines. Every
    // record's verdict matches its image.
    let text = std::fs::read(&audit).expect("audit file");
    assert_eq!(
        &text[..restart_at],
        &[&at_kill[..at_kill.len() - tail.len()], &torn[..]].concat()[..],
        "the restarted proxy changed what the first one wrote"
    );
    let (after, tail) = audit_lines(&text[restart_at..]);
    assert!(
        tail.is_empty(),
        "the trail ends in part of a line after a clean run: {:?}",
        String::from_utf8_lossy(tail)
    );
    assert_eq!(
        text.get(restart_at),
        Some(&b'\n'),
        "the torn line was not ended before the restarted proxy's records: {:?}",
        String::from_utf8_lossy(
            &text[restart_at.saturating_sub(200)..(restart_at + 200).min(text.len())]
        )
    );
    // A pull whose manifest the killed process served asks the new one
    // for its blobs, which it has not admitted yet: refused ("blob is not
    // part of an admitted image", fail closed) until the signed image's
    // manifest is admitted again. Only such refusals, and only before that
    // admission, are not wrong verdicts; the client retries the pull.
    // Unlike a reload (where the process remembers which manifest admitted
    // the blob and verifies it again: trust_rotation, soak), a process
    // started after kill -9 remembers nothing of its predecessor's pulls
    // (a fleet's replicas find them in Redis).
    let signed_ref = images
        .iter()
        .find(|i| i.signed)
        .map(|i| format!("{}/{}", reg.host(), i.repo))
        .expect("a signed image");
    let mut readmitted = false;
    let mut crossed = 0;
    let mut records_after: Vec<serde_json::Value> = Vec::new();
    for line in &after {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!(
                "an audit line does not parse ({e}): {:?}",
                String::from_utf8_lossy(line)
            )
        });
        let of_signed = v["reference"] == signed_ref.as_str();
        if of_signed && v["subject"] == "manifest" && v["verdict"] == "allow" {
            readmitted = true;
        }
        if of_signed
            && !readmitted
            && v["subject"] == "blob"
            && v["verdict"] == "deny"
            && v["reason_category"] == "blob-not-admitted"
        {
            crossed += 1;
            records_after.push(v);
            continue;
        }
        records_after.push(audit_record(line, &reg.host(), &images));
    }
    eprintln!("[{TEST}] {crossed} blob request(s) of pulls begun before the kill refused until the signed manifest was admitted again");
    // Verdicts were computed again by the new process, not remembered.
    for image in &images {
        let reference = format!("{}/{}", reg.host(), image.repo);
        let fresh = records_after
            .iter()
            .filter(|v| {
                v["reference"] == reference.as_str()
                    && v["subject"] == "manifest"
                    && v["cache_hit"] == false
            })
            .count();
        assert!(
            fresh >= 1,
            "no fresh verification of {} after the restart",
            image.repo
        );
    }
    eprintln!(
        "[{TEST}] audit: {} whole lines before the kill, 1 torn line ({} bytes) kept on its own, {} whole lines after",
        lines.len(),
        torn.len(),
        records_after.len()
    );
}

// ------------------------------------------- 2. the upstream restarted

#[test]
fn the_upstream_restarted_mid_load_answers_5xx_never_a_wrong_verdict_and_recovers() {
    const TEST: &str = "upstream restart";
    let mut reg = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = trust::keygen(dir.path(), "ci");
    let images = vec![
        push(&reg, &key, "team/signed", 411, &[2_000_000, 20_000], true),
        push(&reg, &key, "team/unsigned", 412, &[300_000], false),
        // Asked for only from the outage on: what the outage did to its
        // first pulls must not leave a denial behind.
        push(&reg, &key, "team/fresh", 413, &[200_000], true),
    ];
    let config = TrustConfig::new(&reg.host(), &reg.url(), &[("ci", &key)]).yaml();
    let proxy = Proxy::start(&config);
    let plan: Arc<Planner> = Arc::new(|t: usize, n: u64, phase: Phase| Pull {
        image: match phase {
            Phase::Before => (t + n as usize) % 2,
            _ => (t + n as usize) % 3,
        },
        manifest_via: 0,
        blobs_via: 0,
    });
    let load = Load::start(&images, &[proxy.url()], plan);
    std::thread::sleep(Duration::from_secs(2));

    let stopped = Instant::now();
    reg.stop(); // SIGKILL: transfers in flight are cut
    let dead = Instant::now();
    load.set(Phase::During);
    std::thread::sleep(Duration::from_secs(2));
    load.set(Phase::After);
    let restarting = Instant::now();
    reg.restart();
    let up = Instant::now();
    let took = expect_recovery(
        TEST,
        &load,
        up,
        |r| normal(&images, r),
        Duration::from_secs(15),
    );
    let records = load.finish();

    report(
        TEST,
        &images,
        &records,
        Some(Fault {
            began: stopped,
            ended: restarting,
        }),
    );
    assert_nothing_unverified(TEST, &images, &records);
    eprintln!(
        "[{TEST}] registry down {:?}, its restart took {:?}; abnormal answers for {took:?} after it answered again, \
         without restarting the proxy",
        restarting - stopped,
        up - restarting
    );
    for r in ended_before(&records, stopped) {
        assert!(normal(&images, r), "before the outage: {r:?}");
    }
    let during = window(&records, dead, restarting);
    assert!(during.len() > 10, "too few requests during the outage");
    for r in &during {
        let image = &images[r.image];
        let gateway = matches!(r.got.status(), Some(502..=504));
        // The OCI envelope: a code (not "NOT-OCI") and a message.
        if let Got::Refused { code, .. } = &r.got {
            assert!(!code.starts_with("NOT-OCI"), "not an OCI error: {r:?}");
        }
        let ok = match (image.signed, r.subject, image.repo.as_str()) {
            // A signed image is never refused for the outage: a gateway
            // error, the client may retry.
            (true, Subject::Manifest, _) => gateway,
            (true, Subject::Blob, "team/signed") => gateway,
            // The fresh image's blobs: nothing admitted them (its
            // manifest could not be fetched), so they are refused.
            (true, Subject::Blob, _) => gateway || r.got.is_denied(),
            (false, Subject::Manifest, _) => gateway || r.got.is_denied(),
            (false, Subject::Blob, _) => r.got.is_denied(),
        };
        assert!(ok, "during the outage: {r:?}");
    }
    // After: the fresh image, first verified at the outage, is served.
    assert!(
        records.iter().any(|r| r.start >= up
            && images[r.image].repo == "team/fresh"
            && r.subject == Subject::Blob
            && matches!(r.got, Got::Served)),
        "the image first asked for during the outage was not served after it"
    );
}

// ------------------------------------- 3. the content store's disk full

/// A tmpfs mounted for the test, unmounted on drop (even on a panic).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// A new temporary directory with a `size` tmpfs mounted at its
    /// `disk/`. Bound as `let (dir, disk) = …`, the tmpfs is dropped
    /// (unmounted) before the directory is removed.
    fn in_tempdir(size: &str) -> (tempfile::TempDir, Tmpfs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).expect("mkdir");
        let disk = Tmpfs::mount(&mount, size);
        (dir, disk)
    }

    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let uid = Command::new("id").arg("-u").output().expect("run id -u");
        let uid = String::from_utf8_lossy(&uid.stdout).trim().to_owned();
        assert_eq!(
            uid, "0",
            "this test mounts a {size} tmpfs as the content store's disk and needs root \
             (CI and scripts/test.sh run as root); it is never skipped"
        );
        let options = format!("size={size},mode=0700");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options.as_str(), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs -o size={size} tmpfs {} failed: {}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(&self.dir)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("could not unmount the tmpfs at {}", self.dir.display());
        }
    }
}

/// Bytes used on the filesystem holding `dir` (`df`).
fn used_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=used", "-B1"])
        .arg(dir)
        .output()
        .expect("run df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

#[test]
fn the_content_stores_disk_filling_up_under_load_degrades_to_proxying_and_stores_nothing_partial() {
    const TEST: &str = "disk full";
    const TMPFS: u64 = 64 * 1024 * 1024;
    let (dir, disk) = Tmpfs::in_tempdir("64m");
    let mount = disk.dir.clone();
    let store = mount.join("content");
    let reg = Registry::start();
    let key = trust::keygen(dir.path(), "ci");
    // Six signed images of two 8 MiB layers: 96 MiB, half again the disk.
    let mut images: Vec<Image> = (0..6)
        .map(|i| {
            let repo = format!("team/big-{i}");
            push(&reg, &key, &repo, 420 + 2 * i, &[8 << 20, 8 << 20], true)
        })
        .collect();
    images.push(push(&reg, &key, "team/unsigned", 440, &[300_000], false));
    let mut config = TrustConfig::new(&reg.host(), &reg.url(), &[("ci", &key)]);
    config.cache = format!(
        "{{allowTtl: 10m, denyTtl: 30s, content: {{path: {}, maxSize: 1GiB}}}}",
        store.display()
    );
    let (proxy, admin) = start_with_admin(&config.yaml());
    let count = images.len();
    // Each client goes through every image twice, from its own starting
    // point: the first pulls lead downloads, later ones follow them or
    // find the store full.
    let plan: Arc<Planner> = Arc::new(move |t: usize, n: u64, _: Phase| Pull {
        image: (2 * t + n as usize) % count,
        manifest_via: 0,
        blobs_via: 0,
    });
    let started = Instant::now();
    let load = Load::start(&images, &[proxy.url()], plan);
    let enough = trust::wait_until(Duration::from_secs(60), || {
        let records = load.records();
        (0..THREADS).all(|t| {
            records
                .iter()
                .filter(|r| r.thread == t && r.subject == Subject::Manifest)
                .count()
                >= 2 * count
        })
    });
    let records = load.finish();
    let took = started.elapsed();
    assert!(
        enough,
        "the clients did not pull every image twice within 60 s"
    );

    report(TEST, &images, &records, None);
    assert_nothing_unverified(TEST, &images, &records);
    // Every pull succeeded with the right bytes; the unsigned image was
    // refused.
    for r in &records {
        assert!(normal(&images, r), "with the store's disk full: {r:?}");
    }
    // Nothing partial: tmp/ empties, and every stored blob hashes to its
    // name; no byte of the unsigned image is stored.
    assert!(
        trust::wait_until(Duration::from_secs(10), || std::fs::read_dir(
            store.join("tmp")
        )
        .map(|d| d.count() == 0)
        .unwrap_or(false)),
        "files left in tmp/: {:?}",
        std::fs::read_dir(store.join("tmp")).map(|d| d.count())
    );
    let blobs = store.join("blobs").join("sha256");
    let mut stored = 0u64;
    let mut stored_layers = 0usize;
    for entry in std::fs::read_dir(&blobs).expect("blobs dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let file = std::fs::File::open(entry.path()).expect("open stored blob");
        let (digest, len) = sha256_reader(file).expect("read stored blob");
        assert_eq!(
            digest,
            format!("sha256:{name}"),
            "a stored file does not hash to its name ({len} bytes)"
        );
        stored += len;
        stored_layers += usize::from(len == (8 << 20) + 1536);
    }
    let unsigned = &images[count - 1];
    for d in &unsigned.blobs {
        assert!(
            !blobs.join(d.trim_start_matches("sha256:")).exists(),
            "a blob of the unsigned image was stored"
        );
    }
    let layers = 2 * (count - 1);
    assert!(stored_layers > 0, "the store kept no layer at all");
    assert!(
        stored_layers < layers,
        "all {layers} layers were stored on a {TMPFS}-byte disk: it never filled"
    );
    assert!(stored <= TMPFS);
    // The disk error is counted and logged.
    let metrics = get_text(&format!("{admin}/metrics"));
    let errors = metric(&metrics, "portcullis_content_cache_errors_total");
    assert!(errors >= 1.0, "no content store error counted:\n{metrics}");
    let logs = proxy.logs();
    assert!(
        logs.contains("content store:") && logs.contains("os error 28"),
        "the proxy did not log the full disk (ENOSPC)"
    );
    eprintln!(
        "[{TEST}] {} requests in {took:?}, all served byte-exact or refused as policy says; \
         {stored_layers} of {layers} layers stored ({stored} bytes on a {TMPFS}-byte tmpfs, df says {} used), \
         portcullis_content_cache_errors_total {errors}",
        records.len(),
        used_bytes(&mount)
    );
}

/// The disk fails while a download is written: an upstream that sends no
/// `Content-Length` (nginx in front of the registry, with a body filter),
/// so the store cannot allocate the blob's space ahead, and a tmpfs
/// smaller than the layer. The write fails with ENOSPC halfway; the
/// download goes on for the pull leading it, which gets every byte, and
/// only once they matched the digest; nothing is stored, and the next pull
/// works too.
#[test]
fn a_disk_failing_mid_download_still_gives_the_leading_pull_every_byte_and_stores_nothing() {
    const TEST: &str = "disk failing mid-download";
    const LAYER: u64 = 32 << 20;
    let (dir, disk) = Tmpfs::in_tempdir("16m");
    let store = disk.dir.join("content");
    let reg = Registry::start();
    let key = trust::keygen(dir.path(), "ci");
    let image = push(&reg, &key, "team/big", 470, &[LAYER], true);
    // A body filter drops the length (nginx then sends the body chunked);
    // this one replaces a string no blob here contains, so the bytes pass
    // unchanged (the pulls check their digests).
    let chunked = common::nginx::Nginx::proxy(
        &[reg.host()],
        "      sub_filter_types *;\n      sub_filter_once on;\n      \
         sub_filter portcullis-test-string-in-no-blob x;\n",
    );
    let layer = &image.blobs[1];
    let r = http::get(&format!("{}/v2/team/big/blobs/{layer}", chunked.url())).expect("GET");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-length").is_none(),
        "nginx still sends Content-Length: the store would allocate ahead and fail before the download"
    );
    let mut config = TrustConfig::new(&reg.host(), &chunked.url(), &[("ci", &key)]);
    config.cache = format!(
        "{{allowTtl: 10m, denyTtl: 30s, content: {{path: {}, maxSize: 1GiB}}}}",
        store.display()
    );
    let (proxy, admin) = start_with_admin(&config.yaml());
    for round in ["first", "second"] {
        let dest = dir.path().join(format!("pull-{round}"));
        let out = trust::skopeo_copy(&format!("{}/team/big:v1", proxy.host()), &dest);
        trust::assert_succeeded(&out, &format!("{round} skopeo pull with the disk failing"));
        let file = std::fs::File::open(dest.join(layer.trim_start_matches("sha256:")))
            .expect("the pulled layer");
        let (digest, len) = sha256_reader(file).expect("read the pulled layer");
        assert_eq!(
            (digest.as_str(), len),
            (layer.as_str(), LAYER + 1536),
            "{round} pull's layer"
        );
    }
    let logs = proxy.logs();
    assert!(
        logs.contains("goes on for the request leading it") && logs.contains("os error 28"),
        "the disk did not fail during the download (no ENOSPC while writing):\n{logs}"
    );
    assert!(
        !store
            .join("blobs")
            .join("sha256")
            .join(layer.trim_start_matches("sha256:"))
            .exists(),
        "the layer was stored although the disk failed while writing it"
    );
    assert!(
        trust::wait_until(Duration::from_secs(10), || std::fs::read_dir(
            store.join("tmp")
        )
        .map(|d| d.count() == 0)
        .unwrap_or(false)),
        "files left in tmp/"
    );
    let metrics = get_text(&format!("{admin}/metrics"));
    let errors = metric(&metrics, "portcullis_content_cache_errors_total");
    assert!(errors >= 1.0, "no content store error counted:\n{metrics}");
    eprintln!("[{TEST}] two skopeo pulls of a 32 MiB layer, byte-exact, over a 16 MiB disk that failed mid-download; {errors} store error(s) counted");
}

// ------------------------------------------- 4. Redis killed (fleet)

#[test]
fn redis_killed_mid_load_fails_closed_and_the_fleet_recovers_without_a_restart() {
    const TEST: &str = "redis kill";
    let reg = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = trust::keygen(dir.path(), "ci");
    let images = vec![
        push(&reg, &key, "team/signed", 451, &[200_000, 20_000], true),
        push(&reg, &key, "team/unsigned", 452, &[100_000], false),
        // Asked for only from the outage on, its manifest only through A.
        push(&reg, &key, "team/fresh", 453, &[150_000], true),
    ];
    let mut redis = Redis::start();
    let replica = |name: &str| {
        start_with_admin(&format!(
            "{}state:\n  replica: {name}\n  redis:\n    url: {}\n    timeout: 300ms\n",
            TrustConfig::new(&reg.host(), &reg.url(), &[("ci", &key)]).yaml(),
            redis.url()
        ))
    };
    let (a, _a_admin) = replica("a");
    let (b, b_admin) = replica("b");
    let redis_state = |admin: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&get_text(&format!("{admin}/readyz?verbose"))).expect("readyz");
        v["state"]["redis"].as_str().unwrap_or_default().to_owned()
    };
    // Clients 0-2 split every pull: the manifest through A, the blobs
    // through B (B serves them only if Redis says A admitted them).
    // Client 3 pulls whole through A.
    let plan: Arc<Planner> = Arc::new(|t: usize, n: u64, phase: Phase| {
        let image = match phase {
            Phase::Before => (t + n as usize) % 2,
            _ => (t + n as usize) % 3,
        };
        Pull {
            image,
            manifest_via: 0,
            blobs_via: usize::from(t != 3),
        }
    });
    let load = Load::start(&images, &[a.url(), b.url()], plan);
    std::thread::sleep(Duration::from_secs(2));

    let killed = Instant::now();
    redis.stop(); // SIGKILL
    let dead = Instant::now();
    load.set(Phase::During);
    assert!(
        trust::wait_until(Duration::from_secs(5), || redis_state(&b_admin)
            .starts_with("degraded")),
        "B's /readyz does not report the Redis outage: {}",
        redis_state(&b_admin)
    );
    std::thread::sleep(Duration::from_secs(3));
    load.set(Phase::After);
    let restarting = Instant::now();
    redis.restart(); // empty: it kept nothing
    let up = Instant::now();
    let took = expect_recovery(
        TEST,
        &load,
        up,
        |r| normal(&images, r),
        Duration::from_secs(15),
    );
    let records = load.finish();

    report(
        TEST,
        &images,
        &records,
        Some(Fault {
            began: killed,
            ended: restarting,
        }),
    );
    assert_nothing_unverified(TEST, &images, &records);
    for r in ended_before(&records, killed) {
        assert!(normal(&images, r), "before the outage: {r:?}");
    }
    let during = window(&records, dead, restarting);
    let mut fail_closed = 0;
    for r in &during {
        let image = &images[r.image];
        let shared_state = r.got.is_denied() && r.got.message().contains("shared state");
        let ok = match (image.signed, r.subject, r.via) {
            // Manifests are verified by the replica itself: no change.
            (_, Subject::Manifest, _) => normal(&images, r),
            // A's own admissions: no change.
            (_, Subject::Blob, 0) => normal(&images, r),
            // Through B: what B learnt before the outage it still serves;
            // what only A admitted during it (the fresh image) B cannot
            // prove: refused, naming the shared state.
            (true, Subject::Blob, _) if image.repo == "team/fresh" => shared_state,
            (true, Subject::Blob, _) => matches!(r.got, Got::Served) || shared_state,
            (false, Subject::Blob, _) => r.got.is_denied(),
        };
        assert!(ok, "during the Redis outage: {r:?}");
        // Blobs of signed images that B would serve with Redis up.
        fail_closed += usize::from(shared_state && image.signed);
    }
    assert!(
        fail_closed > 0,
        "no blob of a signed image was refused for want of the shared state during the outage \
         ({} requests)",
        during.len()
    );
    assert!(
        trust::wait_until(Duration::from_secs(5), || redis_state(&b_admin)
            == "reachable"),
        "B's /readyz does not see Redis back: {}",
        redis_state(&b_admin)
    );
    let metrics = get_text(&format!("{b_admin}/metrics"));
    let (errors, fallbacks) = (
        metric(&metrics, "portcullis_redis_errors_total"),
        metric(&metrics, "portcullis_redis_fallbacks_total"),
    );
    assert!(errors > 0.0 && fallbacks > 0.0, "{metrics}");
    // After: the fresh image, admitted by A during the outage, is served
    // by B again without a restart of either replica.
    assert!(
        records.iter().any(|r| r.start >= up
            && images[r.image].repo == "team/fresh"
            && r.via == 1
            && r.subject == Subject::Blob
            && matches!(r.got, Got::Served)),
        "B never served the fresh image's blobs after Redis came back"
    );
    eprintln!(
        "[{TEST}] Redis down {:?}; {fail_closed} requests for blobs of signed images refused for want \
         of the shared state (fail closed), out of {} requests during the outage; Redis restart {:?}; \
         abnormal answers for {took:?} after it answered again, neither replica restarted; \
         B: redis errors {errors}, fallbacks {fallbacks}",
        restarting - killed,
        during.len(),
        up - restarting,
    );
}
