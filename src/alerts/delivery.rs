//! Delivering one lane of one webhook: POSTing each alert's body (signed
//! when the webhook has a secret, [`super::signing`]), in order, retrying transient failures (connection errors, timeouts, 5xx,
//! 429 with its `Retry-After`) with exponential backoff, giving up on the
//! others, and counting and logging (rate-limited) what failed.
//!
//! May use: `crate::upstream` (the HTTP client), `crate::audit::record`,
//! `crate::config::alerts`, and its siblings. Must never use: the layers
//! above alerts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use tokio::sync::mpsc;

use super::format::{dropped_body, json_body_coalesced, reload_body, slack_body_coalesced};
use super::signing::{SigningKey, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use super::webhook::{Alert, DropNotices, Lane};
use super::{RateLimit, Shared};
use crate::audit::record::rfc3339;
use crate::config::alerts::AlertFormat;
use crate::upstream::client::{self, HttpClient};

/// First retry delay; doubled after each retry.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between two attempts (also caps `Retry-After`).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Largest response body read (and discarded) from a webhook.
const MAX_RESPONSE: usize = 64 * 1024;

const USER_AGENT: &str = concat!("portcullis/", env!("CARGO_PKG_VERSION"));

/// The client every lane of every webhook shares: the per-attempt
/// timeout bounds connecting, so none is set here.
pub(super) fn build_client() -> Result<HttpClient, String> {
    client::build(&client::Options {
        ca_file: None,
        connect_timeout: None,
        tcp_keepalive: None,
        pool_idle_timeout: Duration::from_secs(60),
        max_idle_per_host: 2,
    })
    .map_err(|e| format!("alerts: TLS setup: {e}"))
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
pub(super) struct Delivery {
    pub(super) uri: Uri,
    pub(super) target: String,
    pub(super) lane: Lane,
    pub(super) format: AlertFormat,
    pub(super) timeout: Duration,
    /// Signs each attempt's body, when the webhook has a secret.
    pub(super) signing: Option<Arc<SigningKey>>,
    pub(super) max_retries: u32,
    pub(super) client: HttpClient,
    pub(super) shared: Arc<Shared>,
    pub(super) drops: Arc<DropNotices>,
    /// Shared by the webhook's two lanes.
    pub(super) failed_log: Arc<RateLimit>,
}

impl Delivery {
    pub(super) async fn run(self, mut rx: mpsc::Receiver<Alert>) {
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
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        if let Some(key) = &self.signing {
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            request = request
                .header(TIMESTAMP_HEADER, timestamp)
                .header(SIGNATURE_HEADER, key.sign(timestamp, &body));
        }
        let request = request.body(Full::new(body));
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
            let _ = crate::upstream::read_bounded(response.into_body(), MAX_RESPONSE).await;
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
}
