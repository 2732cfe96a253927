//! Alerts: webhooks told about denials, dry-run would-denials, break-glass
//! uses and failed policy reloads.
//!
//! Configured by `alerts:` ([`crate::config::alerts`], which shows an
//! example).
//!
//! [`Alerter::notify`] never waits. Each webhook has two lanes, each a
//! bounded queue delivered by its own task:
//!
//! - the **normal lane** carries denials and dry-run would-denials. The
//!   first denial of an image (reference and digest) by a rule is queued at
//!   once; repeats within the coalescing window are only counted, and when
//!   the window ends one alert carries their number (`count`) and the time
//!   of the first (`first_time`). A full queue drops the alert.
//! - the **urgent lane** carries break-glass uses, failed reloads and drop
//!   notices. Denials never enter it, so however many denials arrive, they
//!   cannot fill it or delay it: its task never waits behind a denial's
//!   delivery or retries.
//!
//! Every drop is counted ([`AlertStats::dropped`], exported as
//! `portcullis_alerts_dropped_total`) and logged (rate-limited), and the
//! webhook that lost alerts is sent a drop notice on its urgent lane
//! (`{"event": "dropped", "count": N}`), at most one per
//! [`webhook::DROP_NOTICE_INTERVAL`]. Each task delivers its lane in order, retrying
//! transient failures with exponential backoff; a slow or failing webhook
//! never delays another one or the request path.
//!
//! Webhook URLs often carry a token (Slack's do, in the path), so they are
//! never logged or printed in full: only `scheme://host[:port]`. A webhook
//! with `signingSecretFile` gets every body signed ([`signing`]:
//! HMAC-SHA256 over a timestamp and the body); the secret is never logged
//! or printed.
//!
//! Layout: this file holds the [`Alerter`] (configuration to running
//! lanes, [`Alerter::notify`], flushing) and its counters; [`format`](mod@format) the
//! bodies, [`coalesce`] the coalescing windows, [`webhook`] a webhook's
//! two lanes and drop notices, [`delivery`] a lane's delivery and retries,
//! [`signing`] the bodies' signatures.
//!
//! May use: `crate::upstream` (the HTTP client), `crate::audit` (the
//! record an alert carries; the alerter is audit's [`AlertSink`]),
//! `crate::config`. Must never use: serve, admin, server,
//! reload, app, cli. Audit never uses alerts: it only knows the
//! [`AlertSink`] it is given.

pub mod coalesce;
pub mod delivery;
pub mod format;
pub mod signing;
pub mod webhook;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::sync::Notify;

use crate::audit::record::{rfc3339, DecisionRecord, RecordedVerdict};
use crate::audit::{AlertCounts, AlertSink};
use crate::config::alerts::{parse_webhook_url, redact_url, AlertEvent, AlertsConfig};
use coalesce::Coalescer;
use delivery::{build_client, Delivery};
use format::{truncate, ReloadFailure};
use signing::SigningKey;
use webhook::{Alert, DropNotices, Lane, Webhook};

/// Capacity of each webhook's urgent lane (break-glass uses, failed
/// reloads, drop notices). Denials never enter it.
pub const URGENT_QUEUE_SIZE: usize = 256;
/// At most one "dropped" / "failed" warning per this interval (per webhook
/// for failures); the suppressed count is reported with the next one.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Longest reload error put in an alert.
const MAX_RELOAD_ERROR: usize = 2000;

/// The event a verdict raises, if any: allow and exempt never alert.
pub fn event_for(verdict: RecordedVerdict) -> Option<AlertEvent> {
    match verdict {
        RecordedVerdict::Deny => Some(AlertEvent::Deny),
        RecordedVerdict::DryrunDeny => Some(AlertEvent::Dryrun),
        RecordedVerdict::Breakglass => Some(AlertEvent::Breakglass),
        RecordedVerdict::Allow | RecordedVerdict::Exempt => None,
    }
}

/// Delivery counters, per alert (one record sent to two webhooks counts
/// twice). Read by the metrics layer.
#[derive(Debug, Default)]
pub struct AlertStats {
    /// Alerts a webhook accepted (2xx), drop notices included.
    pub sent: AtomicU64,
    /// Alerts given up on: a non-retryable response, or retries exhausted.
    pub failed: AtomicU64,
    /// Alerts dropped because a webhook's lane was full.
    pub dropped: AtomicU64,
    /// Decisions folded into a coalesced alert instead of sent on their own.
    pub coalesced: AtomicU64,
    /// Retry attempts made (not alerts).
    pub retried: AtomicU64,
}

/// State shared by [`Alerter`], its delivery tasks and its ticker.
struct Shared {
    stats: Arc<AlertStats>,
    /// Alerts queued or being delivered.
    pending: AtomicU64,
    /// Signalled whenever `pending` reaches zero.
    idle: Notify,
    /// Drops on normal lanes, and on urgent lanes: separately, so a flood
    /// of dropped denials never hides a dropped break-glass alert.
    dropped_log: RateLimit,
    urgent_dropped_log: RateLimit,
    started: Instant,
}

impl Shared {
    fn finish_one(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What the alerter and its ticker share.
struct Inner {
    webhooks: Vec<Webhook>,
    shared: Arc<Shared>,
}

impl Inner {
    fn tick(&self, close: bool) {
        let now_ms = self.shared.now_ms();
        for w in &self.webhooks {
            w.tick(&self.shared, now_ms, close);
        }
    }
}

/// Sends alerts to the configured webhooks. Dropping it closes the queues;
/// the delivery tasks finish what was queued, then exit.
pub struct Alerter {
    inner: Arc<Inner>,
}

impl fmt::Debug for Alerter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alerter")
            .field(
                "webhooks",
                &self
                    .inner
                    .webhooks
                    .iter()
                    .map(|w| &w.target)
                    .collect::<Vec<_>>(),
            )
            .field("stats", &self.inner.shared.stats)
            .finish()
    }
}

impl Alerter {
    /// Validates the configuration and starts, on the current tokio
    /// runtime (an error outside one), two delivery tasks per webhook (one
    /// per lane) and one ticker that ends coalescing windows and sends
    /// drop notices.
    pub fn start(config: &AlertsConfig) -> Result<Alerter, String> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "alerts: no tokio runtime to run delivery on".to_owned())?;
        let client = build_client()?;
        let shared = Arc::new(Shared {
            stats: Arc::new(AlertStats::default()),
            pending: AtomicU64::new(0),
            idle: Notify::new(),
            dropped_log: RateLimit::default(),
            urgent_dropped_log: RateLimit::default(),
            started: Instant::now(),
        });
        let mut webhooks = Vec::with_capacity(config.webhooks.len());
        let mut shortest_window: Option<Duration> = None;
        for (i, w) in config.webhooks.iter().enumerate() {
            let uri =
                parse_webhook_url(&w.url).map_err(|e| format!("alerts.webhooks[{i}].url: {e}"))?;
            let target = redact_url(&w.url);
            let signing = match &w.signing_secret_file {
                Some(path) => {
                    Some(Arc::new(SigningKey::from_file(path).map_err(|e| {
                        format!("alerts.webhooks[{i}].signingSecretFile: {e}")
                    })?))
                }
                None => None,
            };
            let window = w.coalesce.unwrap_or(config.coalesce);
            let coalescer = (!window.is_zero()).then(|| {
                shortest_window = Some(shortest_window.map_or(window, |s| s.min(window)));
                Coalescer::new(window)
            });
            let drops = Arc::new(DropNotices::default());
            let failed_log = Arc::new(RateLimit::default());
            let (normal, normal_rx) = mpsc::channel(config.queue_size);
            let (urgent, urgent_rx) = mpsc::channel(URGENT_QUEUE_SIZE);
            for (lane, rx) in [(Lane::Normal, normal_rx), (Lane::Urgent, urgent_rx)] {
                let delivery = Delivery {
                    uri: uri.clone(),
                    target: target.clone(),
                    lane,
                    format: w.format,
                    timeout: w.timeout,
                    signing: signing.clone(),
                    max_retries: config.max_retries,
                    client: client.clone(),
                    shared: Arc::clone(&shared),
                    drops: Arc::clone(&drops),
                    failed_log: Arc::clone(&failed_log),
                };
                runtime.spawn(delivery.run(rx));
            }
            webhooks.push(Webhook {
                events: w.on.clone(),
                target,
                normal,
                urgent,
                coalescer,
                drops,
            });
        }
        let inner = Arc::new(Inner { webhooks, shared });
        // Windows end within a quarter of the shortest one (at most a
        // second late); drop notices are looked at every second at most.
        let every = shortest_window
            .map_or(Duration::from_secs(1), |w| w / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        runtime.spawn(ticker(Arc::downgrade(&inner), every));
        Ok(Alerter { inner })
    }

    /// Queues an alert for every webhook whose filter matches the record's
    /// verdict. Never waits: a full lane drops the alert (counted, logged,
    /// noticed). Break-glass uses go on the urgent lane; denials and dry
    /// runs on the normal lane, repeats folded into a coalesced alert.
    pub fn notify(&self, record: &DecisionRecord) {
        let Some(event) = event_for(record.verdict) else {
            return;
        };
        let shared = &self.inner.shared;
        let now_ms = shared.now_ms();
        let mut shared_record: Option<Arc<DecisionRecord>> = None;
        for w in self
            .inner
            .webhooks
            .iter()
            .filter(|w| w.events.contains(&event))
        {
            let record = Arc::clone(shared_record.get_or_insert_with(|| Arc::new(record.clone())));
            if event.urgent() {
                let alert = Alert::Decision {
                    event,
                    record,
                    coalesced: None,
                };
                w.enqueue(shared, Lane::Urgent, alert, now_ms);
                continue;
            }
            let send = match &w.coalescer {
                None => true,
                Some(c) => {
                    let offer = c.offer(event, &record, now_ms);
                    if let Some(summary) = offer.summary {
                        w.enqueue(shared, Lane::Normal, summary, now_ms);
                    }
                    offer.send
                }
            };
            if send {
                let alert = Alert::Decision {
                    event,
                    record,
                    coalesced: None,
                };
                w.enqueue(shared, Lane::Normal, alert, now_ms);
            } else {
                shared.stats.coalesced.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Tells the webhooks that asked for `reload` that a policy reload
    /// failed and `kept_revision` stays in force. On the urgent lane.
    pub fn notify_reload_failed(&self, trigger: &str, kept_revision: &str, error: &str) {
        let shared = &self.inner.shared;
        let now_ms = shared.now_ms();
        let failure = Arc::new(ReloadFailure {
            time: rfc3339(SystemTime::now()),
            trigger: trigger.to_owned(),
            kept_revision: kept_revision.to_owned(),
            error: truncate(error, MAX_RELOAD_ERROR),
        });
        for w in self
            .inner
            .webhooks
            .iter()
            .filter(|w| w.events.contains(&AlertEvent::Reload))
        {
            let alert = Alert::Reload(Arc::clone(&failure));
            w.enqueue(shared, Lane::Urgent, alert, now_ms);
        }
    }

    /// The delivery counters (shared; live).
    pub fn stats(&self) -> Arc<AlertStats> {
        Arc::clone(&self.inner.shared.stats)
    }

    /// Ends every coalescing window now (queueing the summaries of those
    /// with repeats) and queues any drop notice due, then waits until
    /// every queued alert has been delivered or given up on, at most
    /// `timeout`. Returns whether the queues drained (for graceful
    /// shutdown and tests).
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.inner.tick(true);
        let shared = &self.inner.shared;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if shared.pending.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return shared.pending.load(Ordering::Acquire) == 0;
            }
        }
    }
}

/// Ends coalescing windows and sends due drop notices every `every`, until
/// the [`Alerter`] is dropped.
async fn ticker(inner: Weak<Inner>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.tick(false);
    }
}

/// Allows one log line per [`LOG_INTERVAL`], counting the ones suppressed.
#[derive(Default)]
struct RateLimit {
    /// Milliseconds (since `Shared::started`) before which logs are
    /// suppressed; 0 before the first log.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// `Some(suppressed since the last log)` when a line may be logged now.
    fn check(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if (next == 0 || now_ms >= next)
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(interval).max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The alerter is where the observer's decisions become alerts.
impl AlertSink for Alerter {
    fn notify(&self, record: &DecisionRecord) {
        Alerter::notify(self, record);
    }

    fn counts(&self) -> AlertCounts {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.stats();
        AlertCounts {
            sent: s.sent.load(Relaxed),
            failed: s.failed.load(Relaxed),
            dropped: s.dropped.load(Relaxed),
            coalesced: s.coalesced.load(Relaxed),
        }
    }

    fn wants(&self, verdict: RecordedVerdict) -> bool {
        event_for(verdict).is_some()
    }

    fn reload_failed(&self, trigger: &str, kept_revision: &str, error: &str) {
        self.notify_reload_failed(trigger, kept_revision, error);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::record::{AttestorRecord, Subject};

    pub(crate) fn record(verdict: RecordedVerdict) -> DecisionRecord {
        DecisionRecord {
            time: "2026-05-09T07:30:00.000Z".into(),
            request_id: 7,
            client_addr: Some("10.0.0.9:41234".into()),
            user_agent: Some("containerd/2.0".into()),
            identity: None,
            client_identity: None,
            subject: Subject::Manifest,
            reference: "127.0.0.1:5001/demo/app".into(),
            tag: None,
            digest: "sha256:abc".into(),
            rule: "default admission rule".into(),
            evaluation_mode: "REQUIRE_ATTESTATION".into(),
            enforcement_mode: "ENFORCED_BLOCK_AND_AUDIT_LOG".into(),
            verdict,
            reason_category: "no-signatures".into(),
            reason: "image 127.0.0.1:5001/demo/app@sha256:abc denied by default admission \
                     rule: attestor built-by-ci: no valid signature (no signatures found)"
                .into(),
            attestors: vec![AttestorRecord {
                name: "built-by-ci".into(),
                satisfied: false,
                summary: "no valid signature (no signatures found)".into(),
                evidence: vec![],
            }],
            cache_hit: false,
            latency_ms: 1.5,
            break_glass_justification: None,
            replica: None,
            stale: None,
        }
    }

    fn parse(yaml: &str) -> Result<AlertsConfig, String> {
        let c: AlertsConfig = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn verdicts_map_to_events() {
        assert_eq!(event_for(RecordedVerdict::Deny), Some(AlertEvent::Deny));
        assert_eq!(
            event_for(RecordedVerdict::DryrunDeny),
            Some(AlertEvent::Dryrun)
        );
        assert_eq!(
            event_for(RecordedVerdict::Breakglass),
            Some(AlertEvent::Breakglass)
        );
        assert_eq!(event_for(RecordedVerdict::Allow), None);
        assert_eq!(event_for(RecordedVerdict::Exempt), None);
    }

    #[test]
    fn rate_limit_suppresses_and_counts() {
        let l = RateLimit::default();
        assert_eq!(l.check(0), Some(0));
        assert_eq!(l.check(5), None);
        assert_eq!(l.check(9_999), None);
        assert_eq!(l.check(10_000), Some(2));
        assert_eq!(l.check(10_001), None);
    }

    #[tokio::test]
    async fn notify_filters_and_drops_without_blocking() {
        // A queue of one to an unroutable port: nothing else is consumed
        // until the first delivery gives up, so the queue fills.
        let c = parse(
            "queueSize: 1\nmaxRetries: 0\nwebhooks:\n  - url: http://127.0.0.1:9/a\n    \
             on: [dryrun]\n    timeout: 10s\n",
        )
        .unwrap();
        let alerter = Alerter::start(&c).unwrap();
        let stats = alerter.stats();
        for _ in 0..5 {
            alerter.notify(&record(RecordedVerdict::Deny));
            alerter.notify(&record(RecordedVerdict::Allow));
            alerter.notify(&record(RecordedVerdict::Breakglass));
        }
        // Nothing matched the filter: nothing queued, nothing dropped.
        assert_eq!(alerter.inner.shared.pending.load(Ordering::Relaxed), 0);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        assert!(alerter.flush(Duration::from_millis(1)).await);
        // Current-thread runtime: the task has not run, so the queue of
        // one takes one alert and the rest are dropped. (Four images: four
        // of one image would be coalesced, not dropped.)
        for i in 0..4 {
            let mut r = record(RecordedVerdict::DryrunDeny);
            r.digest = format!("sha256:{i}");
            alerter.notify(&r);
        }
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(stats.coalesced.load(Ordering::Relaxed), 0);
        assert!(alerter.flush(Duration::from_secs(10)).await);
        // The alert, and the drop notice on the urgent lane, both failed.
        assert_eq!(stats.failed.load(Ordering::Relaxed), 2);
        assert_eq!(stats.sent.load(Ordering::Relaxed), 0);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn start_needs_a_runtime() {
        let e = Alerter::start(&AlertsConfig::default()).unwrap_err();
        assert!(e.contains("runtime"), "{e}");
    }
}
