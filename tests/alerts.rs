//! Alert webhooks against a local HTTP receiver: JSON and Slack bodies,
//! per-webhook filters, retry with backoff, non-retryable failures, full
//! queues and timeouts, the urgent lane and coalescing. The module is
//! driven directly as a library.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use portcullis::alerts::{AlertStats, Alerter};
use portcullis::audit::record::{AttestorRecord, DecisionRecord, RecordedVerdict, Subject};
use portcullis::config::AlertsConfig;

/// Long enough for any condition below on a loaded CI machine.
const WAIT: Duration = Duration::from_secs(20);

/// One request the receiver saw.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    path: String,
    content_type: Option<String>,
    user_agent: Option<String>,
    body: Bytes,
}

impl Seen {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A tiny webhook receiver on 127.0.0.1:0: records every request, answers
/// with the scripted statuses in order (then `then`), and can hold every
/// response until released.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: watch::Receiver<usize>,
    gate: Arc<Semaphore>,
}

struct Behaviour {
    script: Mutex<VecDeque<u16>>,
    then: u16,
    /// Which requests (by body) wait at the gate.
    hold: fn(&[u8]) -> bool,
    gate: Arc<Semaphore>,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: watch::Sender<usize>,
}

impl Receiver {
    /// Answers `script` in order, then `then` forever.
    async fn start(script: &[u16], then: u16) -> Receiver {
        Self::start_gated(script, then, true).await
    }

    /// `open: false` holds every response until [`Receiver::release`].
    async fn start_gated(script: &[u16], then: u16, open: bool) -> Receiver {
        Self::start_with(script, then, open, |_| true).await
    }

    /// Answers 200, but holds the responses to the requests whose body
    /// `hold` picks until [`Receiver::release`].
    async fn start_holding(hold: fn(&[u8]) -> bool) -> Receiver {
        Self::start_with(&[], 200, false, hold).await
    }

    async fn start_with(
        script: &[u16],
        then: u16,
        open: bool,
        hold: fn(&[u8]) -> bool,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Arc::new(Semaphore::new(if open {
            Semaphore::MAX_PERMITS
        } else {
            0
        }));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0);
        let behaviour = Arc::new(Behaviour {
            script: Mutex::new(script.iter().copied().collect()),
            then,
            hold,
            gate: Arc::clone(&gate),
            seen: Arc::clone(&seen),
            count: count_tx,
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let behaviour = Arc::clone(&behaviour);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&behaviour), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            seen,
            count,
            gate,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived.
    async fn wait_for(&self, n: usize) {
        let mut count = self.count.clone();
        tokio::time::timeout(WAIT, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("receiver: {n} requests not seen in {WAIT:?}"))
            .unwrap();
    }

    /// Lets held responses (and all later ones) through.
    fn release(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

async fn handle(
    b: Arc<Behaviour>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(hyper::header::CONTENT_TYPE);
    let user_agent = header(hyper::header::USER_AGENT);
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let held = (b.hold)(&body);
    let status = {
        let mut seen = b.seen.lock().unwrap();
        seen.push(Seen {
            at: Instant::now(),
            path,
            content_type,
            user_agent,
            body,
        });
        b.count.send_replace(seen.len());
        b.script.lock().unwrap().pop_front().unwrap_or(b.then)
    };
    // Held here until released (a stalled webhook).
    let _permit = if held {
        Some(b.gate.acquire().await)
    } else {
        None
    };
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    Ok(response)
}

fn record(verdict: RecordedVerdict, request_id: u64) -> DecisionRecord {
    DecisionRecord {
        time: "2026-05-09T07:30:00.000Z".into(),
        request_id,
        client_addr: Some("127.0.0.1:50000".into()),
        user_agent: Some("containerd/2.0".into()),
        identity: None,
        client_identity: None,
        subject: Subject::Manifest,
        reference: "127.0.0.1:5001/demo/app".into(),
        tag: Some("latest".into()),
        digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        rule: "default admission rule".into(),
        evaluation_mode: "REQUIRE_ATTESTATION".into(),
        enforcement_mode: "ENFORCED_BLOCK_AND_AUDIT_LOG".into(),
        verdict,
        reason_category: "no-signatures".into(),
        reason: "image 127.0.0.1:5001/demo/app@sha256:0123 denied by default admission rule: \
                 attestor built-by-ci: no valid signature (no signatures found)"
            .into(),
        attestors: vec![AttestorRecord {
            name: "built-by-ci".into(),
            satisfied: false,
            summary: "no valid signature (no signatures found)".into(),
            evidence: vec![],
        }],
        cache_hit: false,
        latency_ms: 3.25,
        break_glass_justification: match verdict {
            RecordedVerdict::Breakglass => Some("INC-1234: hotfix rollout".into()),
            _ => None,
        },
        replica: None,
        stale: None,
    }
}

fn config(yaml: &str) -> AlertsConfig {
    let c: AlertsConfig = serde_yaml_ng::from_str(yaml).unwrap();
    c.validate().unwrap();
    c
}

/// `(sent, failed, dropped, retried)`.
fn counts(stats: &AlertStats) -> (u64, u64, u64, u64) {
    (
        stats.sent.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        stats.dropped.load(Ordering::Relaxed),
        stats.retried.load(Ordering::Relaxed),
    )
}

async fn flushed(alerter: &Alerter) {
    assert!(
        alerter.flush(WAIT).await,
        "alerts not drained in {WAIT:?}: {:?}",
        alerter.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_body_carries_the_event_and_the_record() {
    let rx = Receiver::start(&[], 200).await;
    let alerter = Alerter::start(&config(&format!(
        "webhooks:\n  - url: {}\n",
        rx.url("/hooks/json?token=s3cret")
    )))
    .unwrap();
    let r = record(RecordedVerdict::Deny, 1);
    alerter.notify(&r);
    flushed(&alerter).await;
    assert_eq!(counts(&alerter.stats()), (1, 0, 0, 0));

    let seen = rx.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/hooks/json");
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    assert!(seen[0]
        .user_agent
        .as_deref()
        .unwrap()
        .starts_with("portcullis/"));
    let body = seen[0].json();
    assert_eq!(body["event"], "deny");
    assert_eq!(body["record"], serde_json::to_value(&r).unwrap());
    assert_eq!(body.as_object().unwrap().len(), 2);
    // The record round-trips as the audit trail's type.
    let back: DecisionRecord = serde_json::from_value(body["record"].clone()).unwrap();
    assert_eq!(back, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_body_is_a_slack_message() {
    let rx = Receiver::start(&[], 200).await;
    let alerter = Alerter::start(&config(&format!(
        "webhooks:\n  - url: {}\n    format: slack\n    on: [deny, breakglass]\n",
        rx.url("/services/T0/B0/XXXX")
    )))
    .unwrap();
    alerter.notify(&record(RecordedVerdict::Deny, 1));
    alerter.notify(&record(RecordedVerdict::Breakglass, 2));
    flushed(&alerter).await;
    assert_eq!(counts(&alerter.stats()), (2, 0, 0, 0));

    let seen = rx.seen();
    assert_eq!(seen.len(), 2);
    // The two go on different lanes (break-glass on the urgent one), so
    // either may arrive first.
    let (deny, glass): (Vec<_>, Vec<_>) = seen
        .iter()
        .map(Seen::json)
        .partition(|b| b["text"].as_str().unwrap().starts_with(":no_entry:"));
    let deny = deny[0].clone();
    assert_eq!(
        deny["text"],
        ":no_entry: Portcullis denied 127.0.0.1:5001/demo/app:latest@sha256:\
         0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef — default admission \
         rule: attestor built-by-ci: no valid signature (no signatures found)"
    );
    let blocks = deny["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0]["type"], "section");
    assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
    assert!(blocks[0]["text"]["text"]
        .as_str()
        .unwrap()
        .contains("no valid signature (no signatures found)"));
    assert_eq!(blocks[1]["type"], "context");
    let context: Vec<&str> = blocks[1]["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "mrkdwn");
            e["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        context,
        [
            "*Rule:* default admission rule",
            "*Client:* 127.0.0.1:50000",
            "*Time:* 2026-05-09T07:30:00.000Z"
        ]
    );
    // No record dump in a Slack message.
    assert!(deny.get("record").is_none());

    let glass = glass[0].clone();
    let text = glass["text"].as_str().unwrap();
    assert!(
        text.starts_with(":rotating_light: Portcullis break-glass"),
        "{text}"
    );
    assert!(
        text.ends_with("justification: INC-1234: hotfix rollout"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_webhook_gets_only_the_events_it_asked_for() {
    let denies = Receiver::start(&[], 200).await;
    let dryruns = Receiver::start(&[], 200).await;
    let both = Receiver::start(&[], 200).await;
    let alerter = Alerter::start(&config(&format!(
        "webhooks:\n  - url: {}\n  - url: {}\n    on: [dryrun]\n  - url: {}\n    \
         on: [breakglass, deny]\n",
        denies.url("/"),
        dryruns.url("/"),
        both.url("/"),
    )))
    .unwrap();
    let verdicts = [
        RecordedVerdict::Allow,
        RecordedVerdict::Deny,
        RecordedVerdict::Exempt,
        RecordedVerdict::DryrunDeny,
        RecordedVerdict::Breakglass,
    ];
    for (i, v) in verdicts.into_iter().enumerate() {
        alerter.notify(&record(v, i as u64));
    }
    flushed(&alerter).await;
    assert_eq!(counts(&alerter.stats()), (4, 0, 0, 0));

    // By request: break-glass goes on the urgent lane, so a webhook may
    // get it before an earlier denial.
    let events = |rx: &Receiver| -> Vec<(String, u64)> {
        let mut events: Vec<(String, u64)> = rx
            .seen()
            .iter()
            .map(|s| {
                let b = s.json();
                (
                    b["event"].as_str().unwrap().to_owned(),
                    b["record"]["request_id"].as_u64().unwrap(),
                )
            })
            .collect();
        events.sort_by_key(|(_, id)| *id);
        events
    };
    assert_eq!(events(&denies), [("deny".to_owned(), 1)]);
    assert_eq!(events(&dryruns), [("dryrun".to_owned(), 3)]);
    assert_eq!(
        events(&both),
        [("deny".to_owned(), 1), ("breakglass".to_owned(), 4)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_with_backoff() {
    let rx = Receiver::start(&[500, 500], 200).await;
    let alerter =
        Alerter::start(&config(&format!("webhooks:\n  - url: {}\n", rx.url("/")))).unwrap();
    let r = record(RecordedVerdict::Deny, 9);
    alerter.notify(&r);
    flushed(&alerter).await;
    assert_eq!(counts(&alerter.stats()), (1, 0, 0, 2));

    let seen = rx.seen();
    assert_eq!(seen.len(), 3, "exactly three attempts");
    // Every attempt carries the same alert.
    assert!(seen.iter().all(|s| s.body == seen[0].body));
    assert_eq!(seen[0].json()["record"]["request_id"], 9);
    // Exponential backoff: 200 ms, then 400 ms.
    let first = seen[1].at - seen[0].at;
    let second = seen[2].at - seen[1].at;
    assert!(first >= Duration::from_millis(200), "{first:?}");
    assert!(second >= Duration::from_millis(400), "{second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_is_retried() {
    let rx = Receiver::start(&[429], 204).await;
    let alerter =
        Alerter::start(&config(&format!("webhooks:\n  - url: {}\n", rx.url("/")))).unwrap();
    alerter.notify(&record(RecordedVerdict::Deny, 1));
    flushed(&alerter).await;
    assert_eq!(counts(&alerter.stats()), (1, 0, 0, 1));
    assert_eq!(rx.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried() {
    let rx = Receiver::start(&[], 400).await;
    let alerter =
        Alerter::start(&config(&format!("webhooks:\n  - url: {}\n", rx.url("/")))).unwrap();
    alerter.notify(&record(RecordedVerdict::Deny, 1));
    flushed(&alerter).await;
    assert_eq!(counts(&alerter.stats()), (0, 1, 0, 0));
    assert_eq!(rx.seen().len(), 1, "one attempt only");

    // The next alert is still attempted (a failure does not stop delivery).
    alerter.notify(&record(RecordedVerdict::Deny, 2));
    flushed(&alerter).await;
    assert_eq!(counts(&alerter.stats()), (0, 2, 0, 0));
    assert_eq!(rx.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out() {
    let rx = Receiver::start(&[], 503).await;
    let alerter = Alerter::start(&config(&format!(
        "maxRetries: 1\nwebhooks:\n  - url: {}\n",
        rx.url("/")
    )))
    .unwrap();
    alerter.notify(&record(RecordedVerdict::Deny, 1));
    flushed(&alerter).await;
    assert_eq!(counts(&alerter.stats()), (0, 1, 0, 1));
    assert_eq!(rx.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_are_retried_then_counted() {
    // A port nothing listens on: bind, note the port, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let alerter = Alerter::start(&config(&format!(
        "maxRetries: 2\nwebhooks:\n  - url: http://127.0.0.1:{port}/hook\n"
    )))
    .unwrap();
    let started = Instant::now();
    alerter.notify(&record(RecordedVerdict::Deny, 1));
    flushed(&alerter).await;
    assert_eq!(counts(&alerter.stats()), (0, 1, 0, 2));
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_webhook_times_out() {
    let rx = Receiver::start_gated(&[], 200, false).await;
    let alerter = Alerter::start(&config(&format!(
        "maxRetries: 0\nwebhooks:\n  - url: {}\n    timeout: 200ms\n",
        rx.url("/")
    )))
    .unwrap();
    alerter.notify(&record(RecordedVerdict::Deny, 1));
    flushed(&alerter).await;
    assert_eq!(counts(&alerter.stats()), (0, 1, 0, 0));
    rx.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let rx = Receiver::start_gated(&[], 200, false).await;
    let alerter = Alerter::start(&config(&format!(
        "queueSize: 2\nwebhooks:\n  - url: {}\n    timeout: 60s\n",
        rx.url("/")
    )))
    .unwrap();
    let stats = alerter.stats();
    // The first alert reaches the receiver and stalls there: the delivery
    // task is busy with it and the queue is empty.
    alerter.notify(&of_image(record(RecordedVerdict::Deny, 0), 0));
    rx.wait_for(1).await;

    // Two more fit in the queue; the other three are dropped at once.
    // (Denials of six images: repeats of one would be coalesced.)
    let started = Instant::now();
    for i in 1..=5 {
        alerter.notify(&of_image(record(RecordedVerdict::Deny, i), i));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "notify must not wait"
    );
    assert_eq!(counts(&stats), (0, 0, 3, 0));
    assert!(!alerter.flush(Duration::from_millis(50)).await);

    rx.release();
    flushed(&alerter).await;
    let seen: Vec<serde_json::Value> = rx.seen().iter().map(Seen::json).collect();
    let ids: Vec<u64> = seen
        .iter()
        .filter(|b| b["event"] == "deny")
        .map(|b| b["record"]["request_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1, 2], "delivered in order, the overflow dropped");
    // The webhook was told, on its urgent lane, of all three drops.
    let notices: Vec<&serde_json::Value> =
        seen.iter().filter(|b| b["event"] == "dropped").collect();
    assert!(!notices.is_empty());
    assert_eq!(
        notices
            .iter()
            .map(|n| n["count"].as_u64().unwrap())
            .sum::<u64>(),
        3
    );
    assert_eq!(counts(&stats), (3 + notices.len() as u64, 0, 3, 0));
}

/// `record` as a denial of another image (its own digest).
fn of_image(mut record: DecisionRecord, image: u64) -> DecisionRecord {
    record.digest = format!("sha256:{image:064x}");
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_and_reload_alerts_overtake_a_stalled_denial_backlog() {
    // The webhook holds its answers to denials: the denial in flight
    // never completes, and the queue behind it never drains.
    let rx = Receiver::start_holding(|body| {
        serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|b| b["event"] == "deny")
    })
    .await;
    let alerter = Alerter::start(&config(&format!(
        "queueSize: 2\ncoalesce: 0s\nwebhooks:\n  - url: {}\n    \
         on: [deny, breakglass, reload]\n    timeout: 60s\n",
        rx.url("/")
    )))
    .unwrap();
    let stats = alerter.stats();
    alerter.notify(&record(RecordedVerdict::Deny, 0));
    rx.wait_for(1).await;
    for i in 1..=2000 {
        alerter.notify(&record(RecordedVerdict::Deny, i));
    }
    assert_eq!(counts(&stats).2, 1998, "two queued, the rest dropped");
    alerter.notify(&record(RecordedVerdict::Breakglass, 5000));
    alerter.notify_reload_failed("SIGHUP", "abc123", "policy: bad");
    // Delivered while the denial is still in flight: the urgent lane has
    // its own task. The first drop's notice went ahead of them.
    rx.wait_for(4).await;
    let events = |rx: &Receiver| -> Vec<String> {
        rx.seen()
            .iter()
            .map(|s| s.json()["event"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(events(&rx), ["deny", "dropped", "breakglass", "reload"]);
    let seen: Vec<serde_json::Value> = rx.seen().iter().map(Seen::json).collect();
    assert_eq!(seen[2]["record"]["request_id"], 5000);
    assert_eq!(seen[3]["kept_revision"], "abc123");
    assert_eq!(seen[3]["trigger"], "SIGHUP");
    assert_eq!(seen[3]["error"], "policy: bad");
    assert!(seen[3]["time"].as_str().unwrap().ends_with('Z'));

    rx.release();
    flushed(&alerter).await;
    let seen: Vec<serde_json::Value> = rx.seen().iter().map(Seen::json).collect();
    let dropped: u64 = seen
        .iter()
        .filter(|b| b["event"] == "dropped")
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(dropped, 1998, "every drop is told");
    assert_eq!(
        seen.iter().filter(|b| b["event"] == "deny").count(),
        3,
        "the one in flight and the two queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_are_coalesced_into_one_alert_with_a_count() {
    let rx = Receiver::start(&[], 200).await;
    let alerter = Alerter::start(&config(&format!(
        "coalesce: 1s\nwebhooks:\n  - url: {}\n    on: [deny, dryrun]\n  \
         - url: {}\n    coalesce: 0s\n",
        rx.url("/coalescing"),
        rx.url("/every")
    )))
    .unwrap();
    let stats = alerter.stats();
    for i in 0..1000 {
        let mut r = record(RecordedVerdict::Deny, i);
        r.time = format!("2026-05-09T07:30:{:02}.{:03}Z", i / 1000, i % 1000);
        alerter.notify(&r);
    }
    alerter.notify(&record(RecordedVerdict::DryrunDeny, 2000));
    // The window ends on its own (the ticker), without a flush.
    rx.wait_for(3 + 1000).await;
    let coalescing: Vec<serde_json::Value> = rx
        .seen()
        .iter()
        .filter(|s| s.path == "/coalescing")
        .map(Seen::json)
        .collect();
    assert_eq!(coalescing.len(), 3, "{coalescing:#?}");
    let denials: Vec<&serde_json::Value> =
        coalescing.iter().filter(|b| b["event"] == "deny").collect();
    assert_eq!(denials.len(), 2);
    assert_eq!(denials[0]["record"]["request_id"], 0);
    assert!(denials[0].get("count").is_none());
    assert_eq!(denials[1]["count"], 999);
    assert_eq!(denials[1]["first_time"], "2026-05-09T07:30:00.001Z");
    assert_eq!(denials[1]["record"]["request_id"], 999);
    assert_eq!(denials[1]["record"]["time"], "2026-05-09T07:30:00.999Z");
    assert_eq!(
        coalescing.iter().filter(|b| b["event"] == "dryrun").count(),
        1
    );
    // The webhook with `coalesce: 0s` got every one.
    assert_eq!(
        rx.seen().iter().filter(|s| s.path == "/every").count(),
        1000
    );
    flushed(&alerter).await;
    assert_eq!(stats.coalesced.load(Ordering::Relaxed), 999);
    assert_eq!(counts(&stats), (1003, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_ends_open_windows() {
    let rx = Receiver::start(&[], 200).await;
    let alerter =
        Alerter::start(&config(&format!("webhooks:\n  - url: {}\n", rx.url("/")))).unwrap();
    for i in 0..5 {
        alerter.notify(&record(RecordedVerdict::Deny, i));
    }
    // The default window is a minute; a flush (as at shutdown) does not
    // wait for it, and loses no count.
    flushed(&alerter).await;
    let counts: Vec<u64> = rx
        .seen()
        .iter()
        .map(|s| s.json()["count"].as_u64().unwrap_or(1))
        .collect();
    assert_eq!(counts, [1, 4]);
}
