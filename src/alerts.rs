//! Alerts: webhooks told about denials, dry-run would-denials, break-glass
//! uses and failed policy reloads.
//!
//! ```yaml
//! alerts:
//!   queueSize: 1000        # per webhook, denials and dry runs; a full queue drops (counted)
//!   maxRetries: 5          # on connection errors, timeouts, 5xx and 429
//!   coalesce: 60s          # repeats of one denial within this window: one alert with a count
//!   webhooks:
//!     - url: https://hooks.slack.com/services/T000/B000/XXXX
//!       format: slack      # or json (the default)
//!       on: [deny, breakglass, reload]   # default [deny]
//!       timeout: 5s        # per attempt (connect + response)
//!       coalesce: 5m       # optional, overrides alerts.coalesce for this webhook
//! ```
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
//! [`DROP_NOTICE_INTERVAL`]. Each task delivers its lane in order, retrying
//! transient failures with exponential backoff; a slow or failing webhook
//! never delays another one or the request path.
//!
//! Webhook URLs often carry a token (Slack's do, in the path), so they are
//! never logged or printed in full: only `scheme://host[:port]`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Notify;

use crate::audit::record::{rfc3339, DecisionRecord, RecordedVerdict};
use crate::config::alerts::{parse_webhook_url, redact_url, AlertEvent, AlertFormat, AlertsConfig};

/// Capacity of each webhook's urgent lane (break-glass uses, failed
/// reloads, drop notices). Denials never enter it.
pub const URGENT_QUEUE_SIZE: usize = 256;
/// Most coalescing windows open at once per webhook; past it, a denial of
/// an image without a window is alerted on its own.
pub const MAX_COALESCE_WINDOWS: usize = 4096;
/// At most one drop notice per webhook per this interval (the first drop
/// after a quiet interval is noticed at once).
pub const DROP_NOTICE_INTERVAL: Duration = Duration::from_secs(10);
/// First retry delay; doubled after each retry.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between two attempts (also caps `Retry-After`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Largest response body read (and discarded) from a webhook.
const MAX_RESPONSE: usize = 64 * 1024;
/// At most one "dropped" / "failed" warning per this interval (per webhook
/// for failures); the suppressed count is reported with the next one.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Longest reload error put in an alert.
const MAX_RELOAD_ERROR: usize = 2000;
/// Longest reason / justification put in a Slack message (Slack caps a
/// section's text at 3000 characters).
const MAX_SLACK_FIELD: usize = 1500;

const USER_AGENT: &str = concat!("portcullis/", env!("CARGO_PKG_VERSION"));

/// The event a verdict raises, if any: allow and exempt never alert.
pub fn event_for(verdict: RecordedVerdict) -> Option<AlertEvent> {
    match verdict {
        RecordedVerdict::Deny => Some(AlertEvent::Deny),
        RecordedVerdict::DryrunDeny => Some(AlertEvent::Dryrun),
        RecordedVerdict::Breakglass => Some(AlertEvent::Breakglass),
        RecordedVerdict::Allow | RecordedVerdict::Exempt => None,
    }
}

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

/// What a coalesced alert stands for: `count` decisions like its record,
/// the first of them at `first_time` (the record is the last one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coalesced {
    pub count: u64,
    pub first_time: String,
}

#[derive(Serialize)]
struct JsonAlert<'a> {
    event: AlertEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_time: Option<&'a str>,
    record: &'a DecisionRecord,
}

/// The body for `format: json`: `{"event": "deny", "record": {...}}`.
pub fn json_body(event: AlertEvent, record: &DecisionRecord) -> serde_json::Result<Vec<u8>> {
    json_body_coalesced(event, record, None)
}

/// [`json_body`], with `count` and `first_time` for a coalesced alert:
/// `{"event": "deny", "count": 1499, "first_time": "...", "record": {...}}`.
pub fn json_body_coalesced(
    event: AlertEvent,
    record: &DecisionRecord,
    coalesced: Option<&Coalesced>,
) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&JsonAlert {
        event,
        count: coalesced.map(|c| c.count),
        first_time: coalesced.map(|c| c.first_time.as_str()),
        record,
    })
}

/// The body for `format: slack`: a one-line `text` (used by notifications
/// and clients without blocks) and `blocks`: a section with the reason and
/// a context line with rule, client and time.
pub fn slack_body(event: AlertEvent, record: &DecisionRecord) -> serde_json::Value {
    slack_body_coalesced(event, record, None)
}

/// [`slack_body`], saying how often the decision repeated for a coalesced
/// alert.
pub fn slack_body_coalesced(
    event: AlertEvent,
    record: &DecisionRecord,
    coalesced: Option<&Coalesced>,
) -> serde_json::Value {
    let image = slack_escape(&image_name(record));
    let repeated = coalesced
        .map(|c| format!(" ({} times since {})", c.count, slack_escape(&c.first_time)))
        .unwrap_or_default();
    let reason = slack_escape(&truncate(short_reason(record), MAX_SLACK_FIELD));
    let (emoji, headline) = match event {
        AlertEvent::Deny => (":no_entry:", "Portcullis denied"),
        AlertEvent::Dryrun => (":warning:", "Portcullis would deny (dry run, served)"),
        AlertEvent::Breakglass => (
            ":rotating_light:",
            "Portcullis break-glass: served despite denial",
        ),
        AlertEvent::Reload => (":x:", "Portcullis policy reload failed"),
    };
    let justification = record
        .break_glass_justification
        .as_deref()
        .map(|j| slack_escape(&truncate(j, MAX_SLACK_FIELD)));
    let mut text = format!("{emoji} {headline} {image}{repeated} — {reason}");
    let mut section = format!("{emoji} *{headline}* `{image}`{repeated}\n{reason}");
    if let Some(j) = &justification {
        text.push_str(&format!(" — justification: {j}"));
        section.push_str(&format!("\n*Justification:* {j}"));
    }
    let client = slack_escape(&client_name(record));
    let rule = slack_escape(&record.rule);
    let time = slack_escape(&record.time);
    serde_json::json!({
        "text": text,
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": section},
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": format!("*Rule:* {rule}")},
                    {"type": "mrkdwn", "text": format!("*Client:* {client}")},
                    {"type": "mrkdwn", "text": format!("*Time:* {time}")},
                ],
            },
        ],
    })
}

/// A policy reload that failed: the previous policy stays in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadFailure {
    /// When (RFC 3339).
    pub time: String,
    /// What triggered the reload (`SIGHUP`, `file change`).
    pub trigger: String,
    /// The revision that stays in force.
    pub kept_revision: String,
    /// Why the new configuration did not load.
    pub error: String,
}

/// The body of a failed-reload alert: `{"event": "reload", "time", "trigger",
/// "kept_revision", "error"}`, or a Slack message.
pub fn reload_body(format: AlertFormat, failure: &ReloadFailure) -> serde_json::Result<Vec<u8>> {
    match format {
        AlertFormat::Json => {
            let mut value = serde_json::to_value(failure)?;
            if let Some(map) = value.as_object_mut() {
                map.insert("event".into(), serde_json::Value::from("reload"));
            }
            serde_json::to_vec(&value)
        }
        AlertFormat::Slack => {
            let error = slack_escape(&truncate(&failure.error, MAX_SLACK_FIELD));
            let kept = slack_escape(&failure.kept_revision);
            serde_json::to_vec(&serde_json::json!({
                "text": format!(
                    ":x: Portcullis policy reload failed; revision {kept} stays in force — {error}"
                ),
            }))
        }
    }
}

/// The body of a drop notice: `{"event": "dropped", "time", "count"}`, or a
/// Slack message. `count` alerts for this webhook were dropped since the
/// previous notice.
pub fn dropped_body(format: AlertFormat, count: u64, time: &str) -> serde_json::Result<Vec<u8>> {
    match format {
        AlertFormat::Json => serde_json::to_vec(&serde_json::json!({
            "event": "dropped",
            "time": time,
            "count": count,
        })),
        AlertFormat::Slack => serde_json::to_vec(&serde_json::json!({
            "text": format!(
                ":warning: Portcullis dropped {count} alert(s) for this webhook: its queue \
                 was full (portcullis_alerts_dropped_total counts every drop)"
            ),
        })),
    }
}

/// `<reference>[:<tag>]@<digest>`.
fn image_name(record: &DecisionRecord) -> String {
    match &record.tag {
        Some(tag) => format!("{}:{}@{}", record.reference, tag, record.digest),
        None => format!("{}@{}", record.reference, record.digest),
    }
}

/// The reason from the rule on (`default admission rule: attestor …`):
/// the recorded message names the image first, which the alert already
/// shows. Falls back to the whole message.
fn short_reason(record: &DecisionRecord) -> &str {
    if !record.rule.is_empty() {
        let needle = format!("by {}", record.rule);
        if let Some(at) = record.reason.find(&needle) {
            return &record.reason[at + 3..];
        }
    }
    &record.reason
}

/// `identity (addr)`, `addr`, `identity` or `unknown`.
fn client_name(record: &DecisionRecord) -> String {
    match (&record.identity, &record.client_addr) {
        (Some(id), Some(addr)) => format!("{id} ({addr})"),
        (Some(id), None) => id.clone(),
        (None, Some(addr)) => addr.clone(),
        (None, None) => "unknown".into(),
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped; unescaped, a client's
/// text (a break-glass justification) could inject `<!channel>` or links.
fn slack_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// The alerter
// ---------------------------------------------------------------------------

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

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

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

/// Which of a webhook's two queues an alert goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Denials and dry-run would-denials (coalesced).
    Normal,
    /// Break-glass uses, failed reloads, drop notices: never behind a denial.
    Urgent,
}

impl Lane {
    fn as_str(self) -> &'static str {
        match self {
            Lane::Normal => "normal",
            Lane::Urgent => "urgent",
        }
    }
}

/// One thing to deliver.
enum Alert {
    /// A decision; with `coalesced`, the last of `count` like it.
    Decision {
        event: AlertEvent,
        record: Arc<DecisionRecord>,
        coalesced: Option<Coalesced>,
    },
    Reload(Arc<ReloadFailure>),
    /// "Alerts were dropped": the count is read when it is delivered.
    Dropped,
}

impl Alert {
    fn name(&self) -> &'static str {
        match self {
            Alert::Decision { event, .. } => event.as_str(),
            Alert::Reload(_) => AlertEvent::Reload.as_str(),
            Alert::Dropped => "dropped",
        }
    }

    /// The request the alert is about, for logs.
    fn request_id(&self) -> Option<u64> {
        match self {
            Alert::Decision { record, .. } => Some(record.request_id),
            _ => None,
        }
    }

    /// How many decisions the alert stands for, for logs.
    fn count(&self) -> u64 {
        match self {
            Alert::Decision {
                coalesced: Some(c), ..
            } => c.count,
            _ => 1,
        }
    }
}

/// Per webhook: alerts dropped and not yet told in a drop notice.
#[derive(Default)]
struct DropNotices {
    unreported: AtomicU64,
    /// A notice is on the urgent lane, not yet delivered.
    queued: AtomicBool,
    /// When the last notice was queued (ms since start; 0: never).
    last_ms: AtomicU64,
}

/// What identifies "the same denial": the event, the image and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WindowKey {
    event: AlertEvent,
    reference: String,
    digest: String,
    rule: String,
}

/// One open coalescing window.
struct Window {
    opened_ms: u64,
    /// Decisions folded in since the window opened.
    repeats: u64,
    first_time: String,
    last: Option<Arc<DecisionRecord>>,
}

impl Window {
    fn new(opened_ms: u64) -> Window {
        Window {
            opened_ms,
            repeats: 0,
            first_time: String::new(),
            last: None,
        }
    }

    fn fold(&mut self, record: &Arc<DecisionRecord>) {
        if self.repeats == 0 {
            self.first_time = record.time.clone();
        }
        self.repeats += 1;
        self.last = Some(Arc::clone(record));
    }

    /// The alert for the repeats folded in so far, if any; the window is
    /// then empty.
    fn take_summary(&mut self, event: AlertEvent) -> Option<Alert> {
        let repeats = std::mem::take(&mut self.repeats);
        let record = self.last.take()?;
        (repeats > 0).then(|| Alert::Decision {
            event,
            record,
            coalesced: Some(Coalesced {
                count: repeats,
                first_time: std::mem::take(&mut self.first_time),
            }),
        })
    }
}

/// What [`Coalescer::offer`] decided.
struct Offer {
    /// An earlier window's repeats, to send first.
    summary: Option<Alert>,
    /// Send this decision now (`false`: it was folded into a window).
    send: bool,
}

/// One webhook's coalescing windows.
struct Coalescer {
    window_ms: u64,
    windows: Mutex<HashMap<WindowKey, Window>>,
}

impl Coalescer {
    fn new(window: Duration) -> Coalescer {
        Coalescer {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<WindowKey, Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first decision of a key opens a window and is sent at once;
    /// the ones after it within the window are folded in. A window whose
    /// time is up with repeats in it is summarised and opens again.
    fn offer(&self, event: AlertEvent, record: &Arc<DecisionRecord>, now_ms: u64) -> Offer {
        let key = WindowKey {
            event,
            reference: record.reference.clone(),
            digest: record.digest.clone(),
            rule: record.rule.clone(),
        };
        let mut windows = self.windows();
        if let Some(w) = windows.get_mut(&key) {
            if now_ms < w.opened_ms.saturating_add(self.window_ms) {
                w.fold(record);
                return Offer {
                    summary: None,
                    send: false,
                };
            }
            // Time is up and the ticker has not been by yet.
            let summary = w.take_summary(event);
            *w = Window::new(now_ms);
            let send = summary.is_none();
            if !send {
                w.fold(record);
            }
            return Offer { summary, send };
        }
        if windows.len() < MAX_COALESCE_WINDOWS {
            windows.insert(key, Window::new(now_ms));
        }
        Offer {
            summary: None,
            send: true,
        }
    }

    /// Summaries of the windows whose time is up; those with repeats open
    /// again (a steady stream of one denial is one alert per window), the
    /// others close.
    fn sweep(&self, now_ms: u64) -> Vec<Alert> {
        let mut out = Vec::new();
        self.windows().retain(|key, w| {
            if now_ms < w.opened_ms.saturating_add(self.window_ms) {
                return true;
            }
            match w.take_summary(key.event) {
                Some(summary) => {
                    out.push(summary);
                    *w = Window::new(now_ms);
                    true
                }
                None => false,
            }
        });
        out
    }

    /// Closes every window now, with the summaries of those with repeats.
    fn close_all(&self) -> Vec<Alert> {
        self.windows()
            .drain()
            .filter_map(|(key, mut w)| w.take_summary(key.event))
            .collect()
    }
}

/// One configured webhook: its filter, its two lanes, its windows.
struct Webhook {
    events: Vec<AlertEvent>,
    target: String,
    normal: mpsc::Sender<Alert>,
    urgent: mpsc::Sender<Alert>,
    /// `None` when coalescing is off for this webhook.
    coalescer: Option<Coalescer>,
    drops: Arc<DropNotices>,
}

impl Webhook {
    /// Queues `alert` on `lane`, or drops it (counted, logged, noticed).
    fn enqueue(&self, shared: &Shared, lane: Lane, alert: Alert, now_ms: u64) {
        shared.pending.fetch_add(1, Ordering::AcqRel);
        let tx = match lane {
            Lane::Normal => &self.normal,
            Lane::Urgent => &self.urgent,
        };
        let alert = match tx.try_send(alert) {
            Ok(()) => return,
            Err(TrySendError::Full(a) | TrySendError::Closed(a)) => a,
        };
        shared.finish_one();
        let dropped = shared.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let log = match lane {
            Lane::Normal => &shared.dropped_log,
            Lane::Urgent => &shared.urgent_dropped_log,
        };
        if let Some(suppressed) = log.check(now_ms) {
            tracing::warn!(
                webhook = %self.target,
                lane = lane.as_str(),
                event = alert.name(),
                request_id = alert.request_id(),
                decisions = alert.count(),
                dropped_total = dropped,
                suppressed,
                "alert dropped: webhook queue full"
            );
        }
        self.drops.unreported.fetch_add(1, Ordering::AcqRel);
        self.notice_drops(shared, now_ms, false);
    }

    /// Queues a drop notice on the urgent lane if alerts were dropped and
    /// none is queued, at most one per [`DROP_NOTICE_INTERVAL`] (unless
    /// `now`). A notice that does not fit is tried again later.
    fn notice_drops(&self, shared: &Shared, now_ms: u64, now: bool) {
        let d = &self.drops;
        if d.unreported.load(Ordering::Acquire) == 0 {
            return;
        }
        let last = d.last_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(DROP_NOTICE_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if !now && last != 0 && now_ms < last.saturating_add(interval) {
            return;
        }
        if d.queued
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        d.last_ms.store(now_ms.max(1), Ordering::Relaxed);
        shared.pending.fetch_add(1, Ordering::AcqRel);
        if self.urgent.try_send(Alert::Dropped).is_err() {
            shared.finish_one();
            d.queued.store(false, Ordering::Release);
        }
    }

    /// Queues the summaries of the windows whose time is up (all of them
    /// with `close`), and a drop notice if one is due.
    fn tick(&self, shared: &Shared, now_ms: u64, close: bool) {
        if let Some(c) = &self.coalescer {
            let summaries = if close {
                c.close_all()
            } else {
                c.sweep(now_ms)
            };
            for summary in summaries {
                self.enqueue(shared, Lane::Normal, summary, now_ms);
            }
        }
        self.notice_drops(shared, now_ms, close);
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

fn build_client() -> Result<HttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("alerts: TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(2)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
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

/// How one attempt went.
enum Attempt {
    Delivered,
    /// Worth retrying: connection error, timeout, 5xx, 429 (with the
    /// server's `Retry-After`, if any).
    Transient(String, Option<Duration>),
    /// Not worth retrying: other 4xx, 3xx, an unbuildable request.
    Permanent(String),
}

/// One lane's delivery task for one webhook.
struct Delivery {
    uri: Uri,
    target: String,
    lane: Lane,
    format: AlertFormat,
    timeout: Duration,
    max_retries: u32,
    client: HttpClient,
    shared: Arc<Shared>,
    drops: Arc<DropNotices>,
    /// Shared by the webhook's two lanes.
    failed_log: Arc<RateLimit>,
}

impl Delivery {
    async fn run(self, mut rx: mpsc::Receiver<Alert>) {
        while let Some(alert) = rx.recv().await {
            self.deliver(&alert).await;
            self.shared.finish_one();
        }
    }

    fn body(&self, alert: &Alert) -> Option<serde_json::Result<Vec<u8>>> {
        Some(match alert {
            Alert::Decision {
                event,
                record,
                coalesced,
            } => match self.format {
                AlertFormat::Json => json_body_coalesced(*event, record, coalesced.as_ref()),
                AlertFormat::Slack => {
                    serde_json::to_vec(&slack_body_coalesced(*event, record, coalesced.as_ref()))
                }
            },
            Alert::Reload(failure) => reload_body(self.format, failure),
            Alert::Dropped => {
                // Drops after this point are told in the next notice.
                let count = self.drops.unreported.swap(0, Ordering::AcqRel);
                self.drops.queued.store(false, Ordering::Release);
                if count == 0 {
                    return None;
                }
                dropped_body(self.format, count, &rfc3339(SystemTime::now()))
            }
        })
    }

    async fn deliver(&self, alert: &Alert) {
        let body = match self.body(alert) {
            None => return,
            Some(Ok(b)) => Bytes::from(b),
            Some(Err(e)) => return self.failed(alert, &format!("encoding: {e}"), 0),
        };
        let stats = &self.shared.stats;
        let mut backoff = INITIAL_BACKOFF;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.attempt(body.clone()).await {
                Attempt::Delivered => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        webhook = %self.target,
                        lane = self.lane.as_str(),
                        event = alert.name(),
                        request_id = alert.request_id(),
                        attempts = attempt,
                        "alert delivered"
                    );
                    return;
                }
                Attempt::Permanent(why) => return self.failed(alert, &why, attempt),
                Attempt::Transient(why, retry_after) => {
                    if attempt > self.max_retries {
                        return self.failed(alert, &why, attempt);
                    }
                    let wait = retry_after.map_or(backoff, |r| r.max(backoff).min(MAX_BACKOFF));
                    tracing::debug!(
                        webhook = %self.target,
                        lane = self.lane.as_str(),
                        attempt,
                        error = %why,
                        retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "alert delivery failed; retrying"
                    );
                    stats.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn failed(&self, alert: &Alert, why: &str, attempts: u32) {
        let failed = self.shared.stats.failed.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(suppressed) = self.failed_log.check(self.shared.now_ms()) {
            tracing::warn!(
                webhook = %self.target,
                lane = self.lane.as_str(),
                event = alert.name(),
                request_id = alert.request_id(),
                attempts,
                error = %why,
                failed_total = failed,
                suppressed,
                "alert delivery failed"
            );
        }
    }

    async fn attempt(&self, body: Bytes) -> Attempt {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header(header::USER_AGENT, HeaderValue::from_static(USER_AGENT))
            .body(Full::new(body));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Attempt::Permanent(format!("building request: {e}")),
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // Read (and discard) the body so the connection can be reused;
            // its errors do not change the outcome the status gave.
            let _ = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Attempt::Transient(format!("timed out after {:?}", self.timeout), None),
            Ok(Err(e)) => Attempt::Transient(connection_error(&e), None),
            Ok(Ok((status, retry_after))) => classify(status, retry_after),
        }
    }
}

/// Whether a status means delivered, retry, or give up.
fn classify(status: StatusCode, retry_after: Option<Duration>) -> Attempt {
    if status.is_success() {
        Attempt::Delivered
    } else if status.is_server_error() {
        Attempt::Transient(format!("HTTP {status}"), None)
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        Attempt::Transient(format!("HTTP {status}"), retry_after)
    } else {
        Attempt::Permanent(format!("HTTP {status}"))
    }
}

/// A client error as text, with its sources (hyper-util's top-level
/// message alone is just "client error (Connect)"), without the URL.
fn connection_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{AttestorRecord, Subject};

    fn record(verdict: RecordedVerdict) -> DecisionRecord {
        DecisionRecord {
            time: "2026-05-09T07:30:00.000Z".into(),
            request_id: 7,
            client_addr: Some("10.0.0.9:41234".into()),
            user_agent: Some("containerd/2.0".into()),
            identity: None,
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
    fn json_body_shape() {
        let r = record(RecordedVerdict::Deny);
        let body: serde_json::Value =
            serde_json::from_slice(&json_body(AlertEvent::Deny, &r).unwrap()).unwrap();
        assert_eq!(body["event"], "deny");
        assert_eq!(body["record"], serde_json::to_value(&r).unwrap());
        assert_eq!(body["record"]["verdict"], "deny");
        let body: serde_json::Value = serde_json::from_slice(
            &json_body(AlertEvent::Dryrun, &record(RecordedVerdict::DryrunDeny)).unwrap(),
        )
        .unwrap();
        assert_eq!(body["event"], "dryrun");
        assert_eq!(body["record"]["verdict"], "dryrun-deny");
    }

    #[test]
    fn slack_body_shape() {
        let r = record(RecordedVerdict::Deny);
        let body = slack_body(AlertEvent::Deny, &r);
        assert_eq!(
            body["text"],
            ":no_entry: Portcullis denied 127.0.0.1:5001/demo/app@sha256:abc — default \
             admission rule: attestor built-by-ci: no valid signature (no signatures found)"
        );
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0]["type"], "section");
        assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
        let section = blocks[0]["text"]["text"].as_str().unwrap();
        assert!(section.contains("`127.0.0.1:5001/demo/app@sha256:abc`"));
        assert!(section.contains("attestor built-by-ci: no valid signature"));
        assert_eq!(blocks[1]["type"], "context");
        let context: Vec<&str> = blocks[1]["elements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            context,
            [
                "*Rule:* default admission rule",
                "*Client:* 10.0.0.9:41234",
                "*Time:* 2026-05-09T07:30:00.000Z"
            ]
        );
    }

    #[test]
    fn slack_body_dryrun_and_breakglass() {
        let mut r = record(RecordedVerdict::DryrunDeny);
        r.tag = Some("v1".into());
        r.reason = "image x would be denied by default admission rule (dry run, served): \
                    attestor a: no valid signature"
            .into();
        let body = slack_body(AlertEvent::Dryrun, &r);
        let text = body["text"].as_str().unwrap();
        assert!(text.starts_with(":warning: Portcullis would deny (dry run, served) "));
        assert!(text.contains("127.0.0.1:5001/demo/app:v1@sha256:abc"));
        assert!(text.ends_with(
            "— default admission rule (dry run, served): attestor a: no valid signature"
        ));

        let mut r = record(RecordedVerdict::Breakglass);
        r.identity = Some("alice".into());
        r.break_glass_justification = Some("INC-42 <!channel> & fix".into());
        let body = slack_body(AlertEvent::Breakglass, &r);
        let text = body["text"].as_str().unwrap();
        assert!(text.starts_with(":rotating_light: Portcullis break-glass"));
        // Client text is escaped: no mention injection.
        assert!(text.ends_with("justification: INC-42 &lt;!channel&gt; &amp; fix"));
        assert!(!body.to_string().contains("<!channel>"));
        assert_eq!(
            body["blocks"][1]["elements"][1]["text"],
            "*Client:* alice (10.0.0.9:41234)"
        );
    }

    #[test]
    fn reason_falls_back_and_truncates() {
        let mut r = record(RecordedVerdict::Deny);
        r.reason = "blob not admitted".into();
        assert_eq!(short_reason(&r), "blob not admitted");
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("ab", 3), "ab");
        assert_eq!(truncate("ééé", 2), "éé…");
    }

    #[test]
    fn statuses_classify() {
        let kind = |s: u16| match classify(StatusCode::from_u16(s).unwrap(), None) {
            Attempt::Delivered => "ok",
            Attempt::Transient(..) => "retry",
            Attempt::Permanent(_) => "fail",
        };
        assert_eq!(kind(200), "ok");
        assert_eq!(kind(204), "ok");
        assert_eq!(kind(500), "retry");
        assert_eq!(kind(503), "retry");
        assert_eq!(kind(429), "retry");
        assert_eq!(kind(400), "fail");
        assert_eq!(kind(404), "fail");
        assert_eq!(kind(301), "fail");
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

    fn arc(verdict: RecordedVerdict, time: &str, request_id: u64) -> Arc<DecisionRecord> {
        let mut r = record(verdict);
        r.time = time.into();
        r.request_id = request_id;
        Arc::new(r)
    }

    /// Only what a summary says: (event, count, first time, last request).
    fn summary(alert: &Alert) -> (AlertEvent, u64, String, u64) {
        match alert {
            Alert::Decision {
                event,
                record,
                coalesced: Some(c),
            } => (*event, c.count, c.first_time.clone(), record.request_id),
            _ => panic!("not a coalesced decision"),
        }
    }

    #[test]
    fn repeats_within_a_window_are_folded_and_summarised() {
        let c = Coalescer::new(Duration::from_millis(100));
        let deny = AlertEvent::Deny;
        // The first is sent, the repeats within the window are not.
        let first = c.offer(deny, &arc(RecordedVerdict::Deny, "t0", 0), 0);
        assert!(first.send && first.summary.is_none());
        for i in 1..=5 {
            let o = c.offer(
                deny,
                &arc(RecordedVerdict::Deny, &format!("t{i}"), i),
                10 * i,
            );
            assert!(!o.send && o.summary.is_none(), "repeat {i}");
        }
        // Another image, rule or event is another window.
        let mut other = record(RecordedVerdict::Deny);
        other.digest = "sha256:other".into();
        assert!(c.offer(deny, &Arc::new(other), 20).send);
        let mut other = record(RecordedVerdict::Deny);
        other.rule = "repository admission rule r/**".into();
        assert!(c.offer(deny, &Arc::new(other), 20).send);
        assert!(
            c.offer(
                AlertEvent::Dryrun,
                &arc(RecordedVerdict::DryrunDeny, "d", 9),
                20
            )
            .send
        );
        // Nothing is due before the window ends.
        assert!(c.sweep(99).is_empty());
        // At its end, one summary with the count, the first repeat's time
        // and the last repeat's record; the window opens again.
        let due = c.sweep(120);
        assert_eq!(due.len(), 1);
        assert_eq!(summary(&due[0]), (deny, 5, "t1".to_owned(), 5));
        // The windows without repeats closed; the one with repeats is open.
        assert_eq!(c.windows().len(), 1);
        let o = c.offer(deny, &arc(RecordedVerdict::Deny, "t6", 6), 150);
        assert!(!o.send, "a steady stream stays coalesced");
        // A window whose time is up before the ticker came by is
        // summarised by the next decision, which starts the next window.
        let o = c.offer(deny, &arc(RecordedVerdict::Deny, "t7", 7), 250);
        assert!(!o.send);
        assert_eq!(
            summary(o.summary.as_ref().unwrap()),
            (deny, 1, "t6".to_owned(), 6)
        );
        // close_all ends everything, with what was folded.
        let closed = c.close_all();
        assert_eq!(closed.len(), 1);
        assert_eq!(summary(&closed[0]), (deny, 1, "t7".to_owned(), 7));
        assert!(c.windows().is_empty());
        // After a quiet window, the next decision is sent at once again.
        assert!(
            c.offer(deny, &arc(RecordedVerdict::Deny, "t8", 8), 400)
                .send
        );
        assert!(c.sweep(500).is_empty());
        assert!(c.windows().is_empty());
    }

    #[test]
    fn coalescing_windows_are_bounded() {
        let c = Coalescer::new(Duration::from_secs(60));
        for i in 0..MAX_COALESCE_WINDOWS + 10 {
            let mut r = record(RecordedVerdict::Deny);
            r.digest = format!("sha256:{i}");
            assert!(c.offer(AlertEvent::Deny, &Arc::new(r), 0).send);
        }
        assert_eq!(c.windows().len(), MAX_COALESCE_WINDOWS);
        // Past the bound, a repeat is sent on its own rather than lost.
        let mut r = record(RecordedVerdict::Deny);
        r.digest = format!("sha256:{}", MAX_COALESCE_WINDOWS + 1);
        assert!(c.offer(AlertEvent::Deny, &Arc::new(r), 1).send);
    }

    #[test]
    fn coalesced_bodies_carry_the_count() {
        let r = record(RecordedVerdict::Deny);
        let c = Coalesced {
            count: 41,
            first_time: "2026-05-09T07:29:00.000Z".into(),
        };
        let body: serde_json::Value =
            serde_json::from_slice(&json_body_coalesced(AlertEvent::Deny, &r, Some(&c)).unwrap())
                .unwrap();
        assert_eq!(body["event"], "deny");
        assert_eq!(body["count"], 41);
        assert_eq!(body["first_time"], "2026-05-09T07:29:00.000Z");
        assert_eq!(body["record"], serde_json::to_value(&r).unwrap());
        let slack = slack_body_coalesced(AlertEvent::Deny, &r, Some(&c));
        assert!(slack["text"]
            .as_str()
            .unwrap()
            .contains("@sha256:abc (41 times since 2026-05-09T07:29:00.000Z) — "));

        let failure = ReloadFailure {
            time: "t".into(),
            trigger: "SIGHUP".into(),
            kept_revision: "abc123".into(),
            error: "policy.repositoryAdmissionRules[\"x:v1\"]: <bad>".into(),
        };
        let body: serde_json::Value =
            serde_json::from_slice(&reload_body(AlertFormat::Json, &failure).unwrap()).unwrap();
        assert_eq!(body["event"], "reload");
        assert_eq!(body["kept_revision"], "abc123");
        assert_eq!(body["trigger"], "SIGHUP");
        let slack: serde_json::Value =
            serde_json::from_slice(&reload_body(AlertFormat::Slack, &failure).unwrap()).unwrap();
        let text = slack["text"].as_str().unwrap();
        assert!(text.contains("revision abc123 stays in force") && text.contains("&lt;bad&gt;"));

        let body: serde_json::Value =
            serde_json::from_slice(&dropped_body(AlertFormat::Json, 7, "t").unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"event": "dropped", "time": "t", "count": 7})
        );
    }

    #[test]
    fn start_needs_a_runtime() {
        let e = Alerter::start(&AlertsConfig::default()).unwrap_err();
        assert!(e.contains("runtime"), "{e}");
    }
}
