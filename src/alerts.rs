//! Alerts: webhooks told about denials, dry-run would-denials and
//! break-glass uses.
//!
//! ```yaml
//! alerts:
//!   queueSize: 1000        # per webhook; a full queue drops (counted)
//!   maxRetries: 5          # on connection errors, timeouts, 5xx and 429
//!   webhooks:
//!     - url: https://hooks.slack.com/services/T000/B000/XXXX
//!       format: slack      # or json (the default)
//!       on: [deny, breakglass]   # default [deny]
//!       timeout: 5s        # per attempt (connect + response)
//! ```
//!
//! [`Alerter::notify`] never waits: a record is matched against each
//! webhook's filter and put on that webhook's bounded queue, or dropped
//! (counted in [`AlertStats::dropped`] and logged, rate-limited) when the
//! queue is full. One task per webhook delivers its queue in order, retrying
//! transient failures with exponential backoff; a slow or failing webhook
//! never delays another one or the request path.
//!
//! Webhook URLs often carry a token (Slack's do, in the path), so they are
//! never logged or printed in full: only `scheme://host[:port]`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::audit::record::{DecisionRecord, RecordedVerdict};

/// Default capacity of each webhook's queue.
pub const DEFAULT_QUEUE_SIZE: usize = 1000;
/// Default number of retries after the first attempt.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// Default per-attempt timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry delay; doubled after each retry.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between two attempts (also caps `Retry-After`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Largest response body read (and discarded) from a webhook.
const MAX_RESPONSE: usize = 64 * 1024;
/// At most one "dropped" / "failed" warning per this interval (per webhook
/// for failures); the suppressed count is reported with the next one.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Longest reason / justification put in a Slack message (Slack caps a
/// section's text at 3000 characters).
const MAX_SLACK_FIELD: usize = 1500;

const USER_AGENT: &str = concat!("portcullis/", env!("CARGO_PKG_VERSION"));

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// The `alerts:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AlertsConfig {
    /// Where alerts go.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Capacity of each webhook's queue; past it alerts are dropped.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Retries after the first attempt, on connection errors, timeouts,
    /// 5xx and 429.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhooks: Vec::new(),
            queue_size: DEFAULT_QUEUE_SIZE,
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }
}

/// One webhook.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the alert is POSTed to. May hold a
    /// token, so it is only ever shown as `scheme://host[:port]`.
    pub url: String,
    /// Body format.
    #[serde(default)]
    pub format: AlertFormat,
    /// Which decisions are sent.
    #[serde(default = "default_on")]
    pub on: Vec<AlertEvent>,
    /// Per-attempt timeout (connect, send, response).
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact_url(&self.url))
            .field("format", &self.format)
            .field("on", &self.on)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// `{"event": "...", "record": <the audit record>}`.
    #[default]
    Json,
    /// Slack incoming-webhook message: `{"text": "...", "blocks": [...]}`.
    Slack,
}

/// What an alert is about; also a webhook's filter vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertEvent {
    /// A pull denied by policy (verdict `deny`).
    Deny,
    /// A dry-run would-deny (verdict `dryrun-deny`), served anyway.
    Dryrun,
    /// A denied pull served because the client used break-glass.
    Breakglass,
}

impl AlertEvent {
    /// The event a verdict raises, if any: allow and exempt never alert.
    pub fn for_verdict(verdict: RecordedVerdict) -> Option<AlertEvent> {
        match verdict {
            RecordedVerdict::Deny => Some(AlertEvent::Deny),
            RecordedVerdict::DryrunDeny => Some(AlertEvent::Dryrun),
            RecordedVerdict::Breakglass => Some(AlertEvent::Breakglass),
            RecordedVerdict::Allow | RecordedVerdict::Exempt => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::Deny => "deny",
            AlertEvent::Dryrun => "dryrun",
            AlertEvent::Breakglass => "breakglass",
        }
    }
}

fn default_queue_size() -> usize {
    DEFAULT_QUEUE_SIZE
}

fn default_max_retries() -> u32 {
    DEFAULT_MAX_RETRIES
}

fn default_on() -> Vec<AlertEvent> {
    vec![AlertEvent::Deny]
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    crate::config::parse_duration(&text).map_err(serde::de::Error::custom)
}

impl AlertsConfig {
    /// Checks what serde cannot: URLs, non-empty filters, non-zero sizes.
    /// Errors name the offending field (`alerts.webhooks[1].url: ...`) and
    /// never include a URL's path or query.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_size == 0 {
            return Err("alerts.queueSize: must be at least 1".into());
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            let at = format!("alerts.webhooks[{i}]");
            parse_webhook_url(&w.url).map_err(|e| format!("{at}.url: {e}"))?;
            if w.on.is_empty() {
                return Err(format!(
                    "{at}.on: must name at least one of deny, dryrun, breakglass"
                ));
            }
            if w.timeout.is_zero() {
                return Err(format!("{at}.timeout: must be more than 0"));
            }
        }
        Ok(())
    }
}

/// Parses a webhook URL: absolute `http` or `https`, with a host, without
/// user-info. Errors do not repeat the URL.
fn parse_webhook_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| "not a valid URL (expected http://… or https://…)".to_owned())?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("must be an http:// or https:// URL".into()),
    }
    let Some(authority) = uri.authority() else {
        return Err("must name a host".into());
    };
    if authority.as_str().contains('@') {
        return Err("user-info (user:password@) is not supported in webhook URLs".into());
    }
    if authority.host().is_empty() {
        return Err("must name a host".into());
    }
    Ok(uri)
}

/// `scheme://host[:port]` of a URL, for logs; `<invalid url>` otherwise.
pub fn redact_url(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => match uri.port_u16() {
                Some(port) => format!("{scheme}://{host}:{port}"),
                None => format!("{scheme}://{host}"),
            },
            _ => "<invalid url>".into(),
        },
        Err(_) => "<invalid url>".into(),
    }
}

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct JsonAlert<'a> {
    event: AlertEvent,
    record: &'a DecisionRecord,
}

/// The body for `format: json`: `{"event": "deny", "record": {...}}`.
pub fn json_body(event: AlertEvent, record: &DecisionRecord) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&JsonAlert { event, record })
}

/// The body for `format: slack`: a one-line `text` (used by notifications
/// and clients without blocks) and `blocks`: a section with the reason and
/// a context line with rule, client and time.
pub fn slack_body(event: AlertEvent, record: &DecisionRecord) -> serde_json::Value {
    let image = slack_escape(&image_name(record));
    let reason = slack_escape(&truncate(short_reason(record), MAX_SLACK_FIELD));
    let (emoji, headline) = match event {
        AlertEvent::Deny => (":no_entry:", "Portcullis denied"),
        AlertEvent::Dryrun => (":warning:", "Portcullis would deny (dry run, served)"),
        AlertEvent::Breakglass => (
            ":rotating_light:",
            "Portcullis break-glass: served despite denial",
        ),
    };
    let justification = record
        .break_glass_justification
        .as_deref()
        .map(|j| slack_escape(&truncate(j, MAX_SLACK_FIELD)));
    let mut text = format!("{emoji} {headline} {image} — {reason}");
    let mut section = format!("{emoji} *{headline}* `{image}`\n{reason}");
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
    /// Alerts a webhook accepted (2xx).
    pub sent: AtomicU64,
    /// Alerts given up on: a non-retryable response, or retries exhausted.
    pub failed: AtomicU64,
    /// Alerts dropped because the webhook's queue was full.
    pub dropped: AtomicU64,
    /// Retry attempts made (not alerts).
    pub retried: AtomicU64,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// State shared by [`Alerter`] and its delivery tasks.
struct Shared {
    stats: Arc<AlertStats>,
    /// Alerts queued or being delivered.
    pending: AtomicU64,
    /// Signalled whenever `pending` reaches zero.
    idle: Notify,
    dropped_log: RateLimit,
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

struct Queue {
    events: Vec<AlertEvent>,
    tx: mpsc::Sender<(AlertEvent, Arc<DecisionRecord>)>,
    target: String,
}

/// Sends alerts to the configured webhooks. Dropping it closes the queues;
/// the delivery tasks finish what was queued, then exit.
pub struct Alerter {
    queues: Vec<Queue>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Alerter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alerter")
            .field(
                "webhooks",
                &self.queues.iter().map(|q| &q.target).collect::<Vec<_>>(),
            )
            .field("stats", &self.shared.stats)
            .finish()
    }
}

impl Alerter {
    /// Validates the configuration and starts one delivery task per webhook
    /// on the current tokio runtime (an error outside one).
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
            started: Instant::now(),
        });
        let mut queues = Vec::with_capacity(config.webhooks.len());
        for (i, w) in config.webhooks.iter().enumerate() {
            let uri =
                parse_webhook_url(&w.url).map_err(|e| format!("alerts.webhooks[{i}].url: {e}"))?;
            let target = redact_url(&w.url);
            let (tx, rx) = mpsc::channel(config.queue_size);
            let delivery = Delivery {
                uri,
                target: target.clone(),
                format: w.format,
                timeout: w.timeout,
                max_retries: config.max_retries,
                client: client.clone(),
                shared: Arc::clone(&shared),
                failed_log: RateLimit::default(),
            };
            runtime.spawn(delivery.run(rx));
            queues.push(Queue {
                events: w.on.clone(),
                tx,
                target,
            });
        }
        Ok(Alerter { queues, shared })
    }

    /// Queues an alert for every webhook whose filter matches the record's
    /// verdict. Never waits: a full queue drops the alert (counted, logged).
    pub fn notify(&self, record: &DecisionRecord) {
        let Some(event) = AlertEvent::for_verdict(record.verdict) else {
            return;
        };
        let mut shared_record: Option<Arc<DecisionRecord>> = None;
        for q in self.queues.iter().filter(|q| q.events.contains(&event)) {
            let record = Arc::clone(shared_record.get_or_insert_with(|| Arc::new(record.clone())));
            self.shared.pending.fetch_add(1, Ordering::AcqRel);
            if q.tx.try_send((event, record)).is_err() {
                self.shared.finish_one();
                let dropped = self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(suppressed) = self.shared.dropped_log.check(self.shared.now_ms()) {
                    tracing::warn!(
                        webhook = %q.target,
                        event = event.as_str(),
                        dropped_total = dropped,
                        suppressed,
                        "alert dropped: webhook queue full"
                    );
                }
            }
        }
    }

    /// The delivery counters (shared; live).
    pub fn stats(&self) -> Arc<AlertStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Waits until every queued alert has been delivered or given up on,
    /// at most `timeout`. Returns whether the queues drained (for graceful
    /// shutdown and tests).
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.shared.pending.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.shared.pending.load(Ordering::Acquire) == 0;
            }
        }
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

/// One webhook's delivery task.
struct Delivery {
    uri: Uri,
    target: String,
    format: AlertFormat,
    timeout: Duration,
    max_retries: u32,
    client: HttpClient,
    shared: Arc<Shared>,
    failed_log: RateLimit,
}

impl Delivery {
    async fn run(self, mut rx: mpsc::Receiver<(AlertEvent, Arc<DecisionRecord>)>) {
        while let Some((event, record)) = rx.recv().await {
            self.deliver(event, &record).await;
            self.shared.finish_one();
        }
    }

    async fn deliver(&self, event: AlertEvent, record: &DecisionRecord) {
        let body = match self.format {
            AlertFormat::Json => json_body(event, record),
            AlertFormat::Slack => serde_json::to_vec(&slack_body(event, record)),
        };
        let body = match body {
            Ok(b) => Bytes::from(b),
            Err(e) => return self.failed(event, record, &format!("encoding: {e}"), 0),
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
                        event = event.as_str(),
                        request_id = record.request_id,
                        attempts = attempt,
                        "alert delivered"
                    );
                    return;
                }
                Attempt::Permanent(why) => return self.failed(event, record, &why, attempt),
                Attempt::Transient(why, retry_after) => {
                    if attempt > self.max_retries {
                        return self.failed(event, record, &why, attempt);
                    }
                    let wait = retry_after.map_or(backoff, |r| r.max(backoff).min(MAX_BACKOFF));
                    tracing::debug!(
                        webhook = %self.target,
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

    fn failed(&self, event: AlertEvent, record: &DecisionRecord, why: &str, attempts: u32) {
        let failed = self.shared.stats.failed.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(suppressed) = self.failed_log.check(self.shared.now_ms()) {
            tracing::warn!(
                webhook = %self.target,
                event = event.as_str(),
                request_id = record.request_id,
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
        assert_eq!(
            AlertEvent::for_verdict(RecordedVerdict::Deny),
            Some(AlertEvent::Deny)
        );
        assert_eq!(
            AlertEvent::for_verdict(RecordedVerdict::DryrunDeny),
            Some(AlertEvent::Dryrun)
        );
        assert_eq!(
            AlertEvent::for_verdict(RecordedVerdict::Breakglass),
            Some(AlertEvent::Breakglass)
        );
        assert_eq!(AlertEvent::for_verdict(RecordedVerdict::Allow), None);
        assert_eq!(AlertEvent::for_verdict(RecordedVerdict::Exempt), None);
    }

    #[test]
    fn config_defaults() {
        let c = parse("webhooks:\n  - url: https://hooks.example/x\n").unwrap();
        assert_eq!(c.queue_size, DEFAULT_QUEUE_SIZE);
        assert_eq!(c.max_retries, DEFAULT_MAX_RETRIES);
        let w = &c.webhooks[0];
        assert_eq!(w.format, AlertFormat::Json);
        assert_eq!(w.on, vec![AlertEvent::Deny]);
        assert_eq!(w.timeout, Duration::from_secs(5));
        assert_eq!(parse("{}").unwrap(), AlertsConfig::default());
    }

    #[test]
    fn config_full() {
        let c = parse(
            "queueSize: 10\nmaxRetries: 2\nwebhooks:\n  - url: http://127.0.0.1:9/hook\n    \
             format: slack\n    on: [dryrun, breakglass]\n    timeout: 250ms\n",
        )
        .unwrap();
        assert_eq!(c.queue_size, 10);
        assert_eq!(c.max_retries, 2);
        let w = &c.webhooks[0];
        assert_eq!(w.format, AlertFormat::Slack);
        assert_eq!(w.on, vec![AlertEvent::Dryrun, AlertEvent::Breakglass]);
        assert_eq!(w.timeout, Duration::from_millis(250));
    }

    #[test]
    fn config_rejects() {
        let bad = |yaml: &str, want: &str| {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml:?}: {e}");
        };
        bad("webhooks:\n  - url: ftp://h/x\n", "webhooks[0].url");
        bad("webhooks:\n  - url: /relative\n", "webhooks[0].url");
        bad("webhooks:\n  - url: 'not a url'\n", "webhooks[0].url");
        bad("webhooks:\n  - url: https://u:p@h/x\n", "user-info");
        bad(
            "webhooks:\n  - url: https://h/x\n    on: [allow]\n",
            "unknown variant",
        );
        bad(
            "webhooks:\n  - url: https://h/x\n    on: []\n",
            "webhooks[0].on",
        );
        bad(
            "webhooks:\n  - url: https://h/x\n    format: xml\n",
            "unknown variant",
        );
        bad(
            "webhooks:\n  - url: https://h/x\n    timeout: 0s\n",
            "timeout",
        );
        bad(
            "webhooks:\n  - url: https://h/x\n    timeout: 5\n",
            "invalid duration",
        );
        bad(
            "webhooks:\n  - url: https://h/x\n    extra: 1\n",
            "unknown field",
        );
        bad("queueSize: 0\n", "queueSize");
        bad("webhook: []\n", "unknown field");
        // Errors never echo the URL (it may hold a token).
        let e = parse("webhooks:\n  - url: ftp://h/T0KEN\n").unwrap_err();
        assert!(!e.contains("T0KEN"), "{e}");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T0/B0/SECRET"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/hook?token=SECRET"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(redact_url("::"), "<invalid url>");
        let c = parse("webhooks:\n  - url: https://h.example/SECRET\n").unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("SECRET") && debug.contains("https://h.example"));
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
        assert_eq!(alerter.shared.pending.load(Ordering::Relaxed), 0);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        assert!(alerter.flush(Duration::from_millis(1)).await);
        // Current-thread runtime: the task has not run, so the queue of
        // one takes one alert and the rest are dropped.
        for _ in 0..4 {
            alerter.notify(&record(RecordedVerdict::DryrunDeny));
        }
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
        assert!(alerter.flush(Duration::from_secs(10)).await);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
        assert_eq!(stats.sent.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn start_needs_a_runtime() {
        let e = Alerter::start(&AlertsConfig::default()).unwrap_err();
        assert!(e.contains("runtime"), "{e}");
    }
}
