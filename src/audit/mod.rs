//! What happens after a decision: the one place that records it.
//!
//! [`Observer::record`] takes a [`DecisionRecord`] and fans it out to the
//! metrics, the audit trail writer (bounded queue, off the request path),
//! the in-memory list of recent decisions behind `/-/api/decisions` and the
//! dashboard, and the webhook alerter.
//!
//! The serving layer hands a decision over as a [`Decided`]: a few cheap
//! clones, no formatting. [`Observer::decided`] counts it in the metrics
//! at once and builds the full [`DecisionRecord`] (timestamp text, rule and
//! reason strings, evidence) only when something consumes it right away
//! (the audit trail, or an alert for its verdict); otherwise the recent
//! list keeps the [`Decided`] and builds the record the first time the
//! API or the dashboard reads it. A warm, allowed pull thus formats no
//! strings for auditing.
//!
//! May use: `oci`, `config`, `policy`, `metrics`, `breakglass`. Must never
//! use: alerts (it only knows the [`AlertSink`] it is given), verify,
//! serve or anything above.

pub mod record;
pub mod writer;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use record::{Client, DecisionRecord, RecordedVerdict, Subject};

use crate::breakglass::Use;
use crate::fleet::Shared;
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::policy::Decision;

/// Alert delivery counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertCounts {
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Decisions folded into a coalesced alert.
    pub coalesced: u64,
}

/// Where decisions go to become alerts (the webhook alerter).
pub trait AlertSink: Send + Sync {
    /// Queues an alert for `record` if it warrants one; never blocks.
    fn notify(&self, record: &DecisionRecord);
    /// Delivery counters, for metrics.
    fn counts(&self) -> AlertCounts;
    /// A policy reload (triggered by `trigger`) failed with `error`;
    /// `kept_revision` stays in force. Never blocks.
    fn reload_failed(&self, trigger: &str, kept_revision: &str, error: &str) {
        let _ = (trigger, kept_revision, error);
    }
    /// Whether a record with `verdict` can raise an alert at all; when not,
    /// [`AlertSink::notify`] is not called for it (and the record need not
    /// be built for the alerter).
    fn wants(&self, verdict: RecordedVerdict) -> bool {
        let _ = verdict;
        true
    }
}

/// A decision as the serving layer applied it: everything a
/// [`DecisionRecord`] is made of, unformatted.
#[derive(Debug, Clone)]
pub struct Decided {
    pub at: SystemTime,
    pub client: Client,
    pub subject: Subject,
    /// Canonical `<registry>/<repository>`.
    pub reference: String,
    pub tag: Option<String>,
    pub digest: Digest,
    pub decision: Arc<Decision>,
    pub cache_hit: bool,
    pub latency: Duration,
    /// Served by break-glass over `decision` (a denial): who and why.
    pub break_glass: Option<Use>,
    /// The replica that decided, in a fleet (`state.replica`).
    pub replica: Option<Arc<str>>,
    /// Served from the content store because the upstream could not be
    /// reached: why.
    pub stale: Option<Arc<str>>,
}

impl Decided {
    /// `image <reference>@<digest>` or `blob <reference>@<digest>`: what
    /// [`Decision::message`] names.
    pub fn subject_text(&self) -> String {
        let kind = match self.subject {
            Subject::Manifest => "image",
            Subject::Blob => "blob",
        };
        format!("{kind} {}@{}", self.reference, self.digest)
    }

    pub fn verdict(&self) -> RecordedVerdict {
        match self.break_glass {
            Some(_) => RecordedVerdict::Breakglass,
            None => (&self.decision.verdict).into(),
        }
    }

    /// What the client is told, and the record says, about the decision.
    pub fn message(&self) -> String {
        let message = self.decision.message(&self.subject_text());
        match &self.break_glass {
            Some(used) => format!(
                "{message} — served by break-glass ({}: {})",
                used.identity(),
                used.justification()
            ),
            None => message,
        }
    }

    /// The full record ([`DecisionRecord::of`]).
    pub fn to_record(&self) -> DecisionRecord {
        DecisionRecord::of(self)
    }
}

/// Recent decisions kept for the dashboard and the API.
pub const RECENT_DECISIONS: usize = 10_000;
/// Most records one API call returns.
pub const MAX_QUERY_LIMIT: usize = 1_000;

struct Entry {
    at: u64,
    record: Arc<Recent>,
}

/// One recent decision: a record, or a [`Decided`] whose record is built
/// on first read.
// Always behind an `Arc`; a built record is the large one anyway.
#[allow(clippy::large_enum_variant)]
enum Recent {
    Record(Arc<DecisionRecord>),
    Decided(Decided, OnceLock<Arc<DecisionRecord>>),
}

impl Recent {
    fn verdict(&self) -> RecordedVerdict {
        match self {
            Recent::Record(r) => r.verdict,
            Recent::Decided(d, _) => d.verdict(),
        }
    }

    fn reference(&self) -> &str {
        match self {
            Recent::Record(r) => &r.reference,
            Recent::Decided(d, _) => &d.reference,
        }
    }

    /// Whether the record's `rule` is `rule` (without building it).
    fn rule_is(&self, rule: &str) -> bool {
        match self {
            Recent::Record(r) => r.rule == rule,
            Recent::Decided(d, _) => d.decision.rule.to_string() == rule,
        }
    }

    fn record(&self) -> Arc<DecisionRecord> {
        match self {
            Recent::Record(r) => Arc::clone(r),
            Recent::Decided(d, built) => Arc::clone(built.get_or_init(|| Arc::new(d.to_record()))),
        }
    }
}

/// Fans decisions out to metrics, audit trail, recent list and alerts.
pub struct Observer {
    pub metrics: Arc<Metrics>,
    audit: Option<writer::AuditSink>,
    alerter: Option<Box<dyn AlertSink>>,
    recent: Mutex<VecDeque<Entry>>,
    /// This replica's name, stamped on its records, when one is given.
    replica: Option<Arc<str>>,
    /// The fleet's decision stream, when configured.
    fleet: Option<Arc<Shared>>,
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
            replica: None,
            fleet: None,
        }
    }

    /// Names this replica in its records and, with `fleet`, appends them to
    /// the fleet's decision stream and lists the fleet's decisions.
    pub fn with_fleet(mut self, replica: Option<String>, fleet: Option<Arc<Shared>>) -> Observer {
        self.replica = replica.map(Arc::from);
        self.fleet = fleet;
        self
    }

    /// This replica's name, when one is given.
    pub fn replica(&self) -> Option<Arc<str>> {
        self.replica.clone()
    }

    /// The fleet's shared state, when configured.
    pub fn fleet(&self) -> Option<&Arc<Shared>> {
        self.fleet.as_ref()
    }

    /// Whether a decision goes to the fleet's stream: every one but an
    /// allow repeated from the verdict cache (the routine warm path; each
    /// replica's audit trail and metrics count those).
    fn streams(&self, verdict: RecordedVerdict, cache_hit: bool) -> bool {
        self.fleet.is_some()
            && !(cache_hit && matches!(verdict, RecordedVerdict::Allow | RecordedVerdict::Exempt))
    }

    /// Sends a built record everywhere but metrics (which
    /// [`Observer::decided`] counts, by rule id): the alerter, the fleet's
    /// stream, the recent list and the audit trail.
    async fn deliver(&self, record: DecisionRecord) {
        if let Some(alerter) = &self.alerter {
            if alerter.wants(record.verdict) {
                alerter.notify(&record);
            }
        }
        if let Some(fleet) = &self.fleet {
            if self.streams(record.verdict, record.cache_hit) {
                if let Ok(json) = serde_json::to_string(&record) {
                    fleet.push_decision(json);
                }
            }
        }
        let record = Arc::new(record);
        self.remember(SystemTime::now(), Recent::Record(Arc::clone(&record)));
        if let Some(audit) = &self.audit {
            audit.send((*record).clone()).await;
        }
    }

    /// Records one decision everywhere it needs to go, building its
    /// [`DecisionRecord`] only if the audit trail or an alert needs it now
    /// (else when the recent list is first read).
    pub async fn decided(&self, decided: Decided) {
        let verdict = decided.verdict();
        self.metrics.decision_of(
            verdict.as_str(),
            &decided.decision.rule,
            record::reason_category(&decided.decision),
        );
        let eager = self.audit.is_some()
            || self.alerter.as_ref().is_some_and(|a| a.wants(verdict))
            || self.streams(verdict, decided.cache_hit);
        if eager {
            return self.deliver(decided.to_record()).await;
        }
        self.remember(decided.at, Recent::Decided(decided, OnceLock::new()));
    }

    fn remember(&self, at: SystemTime, entry: Recent) {
        let at = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let entry = Entry {
            at,
            record: Arc::new(entry),
        };
        // The evicted entry is dropped after the lock is released.
        let _evicted = {
            let mut recent = match self.recent.lock() {
                Ok(r) => r,
                Err(p) => p.into_inner(),
            };
            let evicted = if recent.len() >= RECENT_DECISIONS {
                recent.pop_front()
            } else {
                None
            };
            recent.push_back(entry);
            evicted
        };
    }

    /// Recent decisions of the whole fleet matching `query`, newest first,
    /// from the fleet's stream (every decision but allows repeated from a
    /// verdict cache). Without a fleet, or when Redis cannot answer, this
    /// replica's own list, with why in the second value.
    pub async fn recent_fleet(&self, query: &Query) -> (Vec<Arc<DecisionRecord>>, Option<String>) {
        let Some(fleet) = &self.fleet else {
            return (self.recent(query), None);
        };
        let limit = query.limit.clamp(1, MAX_QUERY_LIMIT);
        let filtered =
            query.verdict.is_some() || query.repository.is_some() || query.rule.is_some();
        let count = if filtered { RECENT_DECISIONS } else { limit };
        match fleet.recent(count).await {
            Ok(lines) => {
                let records = lines
                    .iter()
                    .filter_map(|line| serde_json::from_str::<DecisionRecord>(line).ok())
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
                    .map(Arc::new)
                    .collect();
                (records, None)
            }
            Err(e) => {
                fleet.fell_back();
                (
                    self.recent(query),
                    Some(format!("this replica's decisions only: {e}")),
                )
            }
        }
    }

    /// Recent decisions matching `query`, newest first.
    pub fn recent(&self, query: &Query) -> Vec<Arc<DecisionRecord>> {
        let limit = query.limit.clamp(1, MAX_QUERY_LIMIT);
        // Filter on what needs no record under the lock; build records
        // (on the first read of a decision) outside it.
        let candidates: Vec<Arc<Recent>> = {
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
                        .is_none_or(|v| r.verdict().as_str() == v)
                        && query
                            .repository
                            .as_deref()
                            .is_none_or(|s| r.reference().contains(s))
                })
                .take(if query.rule.is_some() {
                    usize::MAX
                } else {
                    limit
                })
                .cloned()
                .collect()
        };
        candidates
            .iter()
            .filter(|r| query.rule.as_deref().is_none_or(|rule| r.rule_is(rule)))
            .take(limit)
            .map(|r| r.record())
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
            let is_denied = e.record.verdict() == RecordedVerdict::Deny;
            if is_denied {
                denied += 1;
                *denied_by_repo.entry(e.record.reference()).or_default() += 1;
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
    pub fn audit_counts(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering;
        self.audit
            .as_ref()
            .map(|a| {
                (
                    a.stats.written.load(Ordering::Relaxed),
                    a.stats.dropped.load(Ordering::Relaxed),
                    a.stats.errors.load(Ordering::Relaxed),
                )
            })
            .unwrap_or((0, 0, 0))
    }

    /// Alert counters, for metrics.
    pub fn alert_counts(&self) -> AlertCounts {
        self.alerter
            .as_ref()
            .map(|a| a.counts())
            .unwrap_or_default()
    }

    /// Tells the alerter that a policy reload failed (the previous policy,
    /// `kept_revision`, stays in force).
    pub fn reload_failed(&self, trigger: &str, kept_revision: &str, error: &str) {
        if let Some(alerter) = &self.alerter {
            alerter.reload_failed(trigger, kept_revision, error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{EnforcementMode, EvaluationMode, RuleSource, Verdict};

    fn decided(n: u64, verdict: Verdict, rule: RuleSource, reference: &str) -> Decided {
        Decided {
            at: UNIX_EPOCH + Duration::from_millis(1_798_502_400_123 + n),
            client: Client {
                request_id: n,
                addr: Some(([127, 0, 0, 1], 4000).into()),
                user_agent: Some("containerd/2.0".into()),
                identity: None,
            },
            subject: Subject::Manifest,
            reference: reference.into(),
            tag: n.is_multiple_of(2).then(|| "v1".to_owned()),
            digest: Digest::sha256_of(&n.to_be_bytes()),
            decision: Arc::new(Decision {
                verdict,
                rule,
                evaluation: EvaluationMode::RequireAttestation,
                enforcement: EnforcementMode::EnforcedBlockAndAuditLog,
                attestors: Vec::new(),
                reason: "attestor ci: no valid signature (no signatures found)".into(),
            }),
            cache_hit: n > 1,
            latency: Duration::from_micros(250),
            break_glass: None,
            replica: None,
            stale: None,
        }
    }

    /// Records kept as [`Decided`] read back exactly as the records built
    /// at once, filter the same, and count in metrics and the summary.
    #[tokio::test]
    async fn deferred_records_read_back_like_built_ones() {
        let metrics = Arc::new(Metrics::new());
        let observer = Observer::new(Arc::clone(&metrics), None, None);
        let all = [
            decided(1, Verdict::Allow, RuleSource::Default, "r.io/demo/app"),
            decided(2, Verdict::Deny, RuleSource::Default, "r.io/demo/web"),
            decided(
                3,
                Verdict::DryRunDeny,
                RuleSource::Repository("r.io/dry/**".into()),
                "r.io/dry/app",
            ),
            decided(4, Verdict::Allow, RuleSource::Default, "r.io/demo/app"),
        ];
        for d in &all {
            observer.decided(d.clone()).await;
        }
        // A record built at once sits among them as before (delivered
        // as an eager observer does, after counting it).
        let built = decided(5, Verdict::Deny, RuleSource::Default, "r.io/other/x");
        metrics.decision_of("deny", &RuleSource::Default, "no-signatures");
        observer.deliver(built.to_record()).await;

        let want = |ns: &[u64]| -> Vec<DecisionRecord> {
            ns.iter()
                .map(|&n| {
                    all.iter()
                        .chain([&built])
                        .find(|d| d.client.request_id == n)
                        .unwrap_or_else(|| panic!("no decision {n}"))
                        .to_record()
                })
                .collect()
        };
        let got = |q: Query| -> Vec<DecisionRecord> {
            observer.recent(&q).iter().map(|r| (**r).clone()).collect()
        };
        let query = |f: fn(&mut Query)| {
            let mut q = Query {
                limit: 100,
                ..Query::default()
            };
            f(&mut q);
            q
        };
        assert_eq!(got(query(|_| {})), want(&[5, 4, 3, 2, 1]));
        assert_eq!(
            got(query(|q| q.limit = 2)),
            want(&[5, 4]),
            "limit, newest first"
        );
        assert_eq!(
            got(query(|q| q.verdict = Some("deny".into()))),
            want(&[5, 2])
        );
        assert_eq!(
            got(query(|q| q.repository = Some("demo/".into()))),
            want(&[4, 2, 1])
        );
        assert_eq!(
            got(query(
                |q| q.rule = Some("repository admission rule r.io/dry/**".into())
            )),
            want(&[3])
        );
        assert_eq!(
            got(query(|q| {
                q.rule = Some("default admission rule".into());
                q.limit = 3;
            })),
            want(&[5, 4, 2])
        );
        let first = want(&[1]).remove(0);
        assert_eq!(first.time, "2026-12-29T00:00:00.124Z");
        assert_eq!(
            first.reason,
            format!(
                "image r.io/demo/app@{} allowed by default admission rule: \
                 attestor ci: no valid signature (no signatures found)",
                all[0].digest
            )
        );
        // Built once, then shared.
        let again = observer.recent(&query(|_| {}));
        assert!(Arc::ptr_eq(&again[1], &observer.recent(&query(|_| {}))[1]));

        let summary = observer.summary(1);
        assert_eq!((summary.total, summary.denied), (5, 2));
        assert_eq!(
            summary.top_denied,
            vec![
                ("r.io/demo/web".to_owned(), 1),
                ("r.io/other/x".to_owned(), 1)
            ]
        );

        let text = metrics.encode(crate::metrics::Snapshot::default());
        let dry = RuleSource::Repository("r.io/dry/**".into()).id();
        for line in [
            r#"portcullis_decisions_total{verdict="allow",rule="default",reason="ok"} 2"#,
            r#"portcullis_decisions_total{verdict="deny",rule="default",reason="no-signatures"} 2"#,
            &format!(
                r#"portcullis_decisions_total{{verdict="dryrun-deny",rule="{dry}",reason="no-signatures"}} 1"#
            ),
            &format!(r#"portcullis_dryrun_would_deny_total{{rule="{dry}"}} 1"#),
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
