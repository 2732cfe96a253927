//! What happens after a decision: the one place that records it.
//!
//! [`Observer::record`] takes a [`DecisionRecord`] and fans it out to the
//! metrics, the audit trail writer (bounded queue, off the request path),
//! the in-memory list of recent decisions behind `/-/api/decisions` and the
//! dashboard, and the webhook alerter.

pub mod record;
pub mod writer;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use record::{Client, DecisionRecord, RecordedVerdict, Subject};

use crate::metrics::Metrics;

/// Where decisions go to become alerts (the webhook alerter).
pub trait AlertSink: Send + Sync {
    /// Queues an alert for `record` if it warrants one; never blocks.
    fn notify(&self, record: &DecisionRecord);
    /// (sent, failed, dropped), for metrics.
    fn counts(&self) -> (u64, u64, u64);
}

/// Recent decisions kept for the dashboard and the API.
pub const RECENT_DECISIONS: usize = 10_000;
/// Most records one API call returns.
pub const MAX_QUERY_LIMIT: usize = 1_000;

struct Entry {
    at: u64,
    record: Arc<DecisionRecord>,
}

impl AlertSink for crate::alerts::Alerter {
    fn notify(&self, record: &DecisionRecord) {
        crate::alerts::Alerter::notify(self, record);
    }

    fn counts(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.stats();
        (
            s.sent.load(Relaxed),
            s.failed.load(Relaxed),
            s.dropped.load(Relaxed),
        )
    }
}

/// Fans decisions out to metrics, audit trail, recent list and alerts.
pub struct Observer {
    pub metrics: Arc<Metrics>,
    audit: Option<writer::AuditSink>,
    alerter: Option<Box<dyn AlertSink>>,
    recent: Mutex<VecDeque<Entry>>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").finish_non_exhaustive()
    }
}

/// Filters for [`Observer::recent`].
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub verdict: Option<String>,
    /// Substring of the canonical reference.
    pub repository: Option<String>,
    pub rule: Option<String>,
    pub limit: usize,
}

/// Counts for the dashboard's chart and top list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Per minute, oldest first: `[unix minute, served, denied]`.
    pub per_minute: Vec<(u64, u64, u64)>,
    /// Most-denied repositories among recent decisions.
    pub top_denied: Vec<(String, u64)>,
    pub total: u64,
    pub denied: u64,
}

impl Observer {
    pub fn new(
        metrics: Arc<Metrics>,
        audit: Option<writer::AuditSink>,
        alerter: Option<Box<dyn AlertSink>>,
    ) -> Observer {
        Observer {
            metrics,
            audit,
            alerter,
            recent: Mutex::new(VecDeque::with_capacity(1024)),
        }
    }

    /// Records one decision everywhere it needs to go.
    pub async fn record(&self, record: DecisionRecord) {
        self.metrics.decision(
            record.verdict.as_str(),
            &record.rule,
            &record.reason_category,
        );
        if let Some(alerter) = &self.alerter {
            alerter.notify(&record);
        }
        let record = Arc::new(record);
        {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut recent = match self.recent.lock() {
                Ok(r) => r,
                Err(p) => p.into_inner(),
            };
            if recent.len() >= RECENT_DECISIONS {
                recent.pop_front();
            }
            recent.push_back(Entry {
                at: now,
                record: Arc::clone(&record),
            });
        }
        if let Some(audit) = &self.audit {
            audit.send((*record).clone()).await;
        }
    }

    /// Recent decisions matching `query`, newest first.
    pub fn recent(&self, query: &Query) -> Vec<Arc<DecisionRecord>> {
        let limit = query.limit.clamp(1, MAX_QUERY_LIMIT);
        let recent = match self.recent.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        recent
            .iter()
            .rev()
            .map(|e| &e.record)
            .filter(|r| {
                query
                    .verdict
                    .as_deref()
                    .is_none_or(|v| r.verdict.as_str() == v)
                    && query
                        .repository
                        .as_deref()
                        .is_none_or(|s| r.reference.contains(s))
                    && query.rule.as_deref().is_none_or(|rule| r.rule == rule)
            })
            .take(limit)
            .cloned()
            .collect()
    }

    /// Per-minute counts over the last `minutes`, and the most-denied
    /// repositories among recent decisions.
    pub fn summary(&self, minutes: u64) -> Summary {
        let now_minute = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() / 60)
            .unwrap_or(0);
        let first = now_minute.saturating_sub(minutes.saturating_sub(1));
        let mut buckets: Vec<(u64, u64, u64)> = (first..=now_minute).map(|m| (m, 0, 0)).collect();
        let mut denied_by_repo: HashMap<&str, u64> = HashMap::new();
        let recent = match self.recent.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        let mut total = 0;
        let mut denied = 0;
        for e in recent.iter() {
            total += 1;
            let is_denied = e.record.verdict == RecordedVerdict::Deny;
            if is_denied {
                denied += 1;
                *denied_by_repo
                    .entry(e.record.reference.as_str())
                    .or_default() += 1;
            }
            let minute = e.at / 60;
            if minute >= first {
                if let Some(b) = buckets.get_mut((minute - first) as usize) {
                    if is_denied {
                        b.2 += 1;
                    } else {
                        b.1 += 1;
                    }
                }
            }
        }
        let mut top: Vec<(String, u64)> = denied_by_repo
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(10);
        Summary {
            per_minute: buckets,
            top_denied: top,
            total,
            denied,
        }
    }

    /// Audit writer counters (written, dropped), for metrics.
    pub fn audit_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        self.audit
            .as_ref()
            .map(|a| {
                (
                    a.stats.written.load(Ordering::Relaxed),
                    a.stats.dropped.load(Ordering::Relaxed),
                )
            })
            .unwrap_or((0, 0))
    }

    /// Alert counters (sent, failed, dropped), for metrics.
    pub fn alert_counts(&self) -> (u64, u64, u64) {
        self.alerter
            .as_ref()
            .map(|a| a.counts())
            .unwrap_or((0, 0, 0))
    }
}
