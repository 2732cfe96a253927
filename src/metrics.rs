//! Prometheus metrics, exposed at `GET /metrics` (admin listener) in the
//! OpenMetrics text format.
//!
//! Label cardinality is bounded by construction: verdicts, reason
//! categories, endpoints and build facts are fixed vocabularies; a rule is
//! a short identifier ([`RuleSource::id`], never its pattern: that is in
//! `portcullis_rule_info`, one series per rule of the policy in force);
//! upstreams come from the configuration; statuses are HTTP status codes
//! (three digits). No digest, tag, repository or path is ever a label.
//!
//! May use: `crate::policy` (rule names), `crate::config`, `crate::oci`.
//! Must never use: routing, upstream, verify, audit, alerts and the layers
//! above them (they report into it; at scrape time they hand over a
//! [`Snapshot`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::policy::{Policy, RuleSource};

/// One upstream's round-trip metrics. Each labelled series is looked up
/// once, on first use, so reporting a response is an atomic add: no label
/// copies or family lookups per request.
#[derive(Debug)]
pub struct UpstreamMetrics {
    metrics: Arc<Metrics>,
    upstream: String,
    seconds: OnceLock<Histogram>,
    /// Responses by status class, indexed by `status / 100`.
    classes: [OnceLock<Counter>; 10],
    up: OnceLock<Gauge>,
}

impl UpstreamMetrics {
    pub fn new(metrics: Arc<Metrics>, upstream: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            metrics,
            upstream: upstream.to_owned(),
            seconds: OnceLock::new(),
            classes: Default::default(),
            up: OnceLock::new(),
        }
    }

    /// Whether the upstream is reachable, as last seen: by a readiness
    /// check, or by a request that got an answer (1) or none (0). The
    /// series exists once the upstream has been checked or used.
    pub fn up(&self, reachable: bool) {
        self.up
            .get_or_init(|| {
                self.metrics
                    .upstream_up
                    .get_or_create(&UpstreamLabels {
                        upstream: self.upstream.clone(),
                    })
                    .clone()
            })
            .set(i64::from(reachable));
    }

    /// One round trip: its status code, or the transport error kind
    /// (`timeout`, `connect-error`, `protocol-error`), and its duration.
    pub fn response(&self, status: Result<u16, &'static str>, took: Duration) {
        self.seconds
            .get_or_init(|| {
                self.metrics
                    .upstream_seconds
                    .get_or_create(&UpstreamLabels {
                        upstream: self.upstream.clone(),
                    })
                    .clone()
            })
            .observe(took.as_secs_f64());
        match status {
            Ok(code) => {
                let class = usize::from(code / 100).min(9);
                self.classes[class]
                    .get_or_init(|| {
                        self.metrics
                            .upstream_responses(&self.upstream, format!("{class}xx"))
                    })
                    .inc();
            }
            Err(kind) => {
                self.metrics
                    .upstream_responses(&self.upstream, kind.to_owned())
                    .inc();
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    verdict: String,
    rule: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleInfoLabels {
    rule: String,
    kind: &'static str,
    /// The name pattern; empty for the default rule and the exemptions.
    pattern: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    os: &'static str,
    arch: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

/// What a request was for, as `portcullis_requests_total` counts it: a
/// fixed vocabulary, never the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/<name>/manifests/<reference>`
    Manifest,
    /// `/v2/<name>/blobs/<digest>`
    Blob,
    /// `/v2/<name>/tags/list`
    Tags,
    /// `/v2/<name>/referrers/<digest>`
    Referrers,
    /// `/v2/`
    Base,
    /// `/healthz`, `/readyz`
    Health,
    /// The admin listener's `/metrics`, `/-/ui`, `/-/api/…`
    Admin,
    /// Anything else (answered 404 or 405).
    Other,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Manifest => "manifest",
            Endpoint::Blob => "blob",
            Endpoint::Tags => "tags",
            Endpoint::Referrers => "referrers",
            Endpoint::Base => "base",
            Endpoint::Health => "health",
            Endpoint::Admin => "admin",
            Endpoint::Other => "other",
        }
    }

    /// The endpoint of a registry-API path, by its shape alone (routing
    /// proper, with validation, happens later): `/v2/…/manifests/x` is a
    /// manifest request whether or not the name is valid.
    pub fn of_registry_path(path: &str) -> Endpoint {
        if path == "/v2" || path == "/v2/" {
            return Endpoint::Base;
        }
        if path == "/healthz" || path == "/readyz" {
            return Endpoint::Health;
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Endpoint::Other;
        };
        let mut segments = rest.rsplitn(3, '/');
        let last = segments.next();
        let kind = segments.next();
        // A name before the kind is required.
        if segments.next().is_none_or(str::is_empty) {
            return Endpoint::Other;
        }
        match (kind, last) {
            (Some("manifests"), Some(_)) => Endpoint::Manifest,
            (Some("blobs"), Some(_)) => Endpoint::Blob,
            (Some("tags"), Some("list")) => Endpoint::Tags,
            (Some("referrers"), Some(_)) => Endpoint::Referrers,
            _ => Endpoint::Other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamStatusLabels {
    upstream: String,
    /// HTTP status class (`2xx`…`5xx`) or a transport error kind.
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    revision: String,
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms … ~8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// The counters one (verdict, reason) pair of a rule increments.
struct DecisionCounters {
    verdict: &'static str,
    reason: &'static str,
    decisions: Counter,
    dryrun_would_deny: Option<Counter>,
}

/// Every metric Portcullis exports.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    /// Handles on `decisions` (and `dryrun_would_deny`) by rule, so that
    /// counting a decision allocates no label strings once its labels have
    /// been seen.
    decision_counters: RwLock<HashMap<RuleSource, Vec<DecisionCounters>>>,
    dryrun_would_deny: Family<RuleLabels, Counter>,
    verification_seconds: Histogram,
    requests: Family<RequestLabels, Counter>,
    upstream_seconds: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    upstream_responses: Family<UpstreamStatusLabels, Counter>,
    upstream_up: Family<UpstreamLabels, Gauge>,
    bytes_served: Counter,
    in_flight: Gauge,
    policy_revision: Family<RevisionLabels, Gauge>,
    rule_info: Family<RuleInfoLabels, Gauge>,
    reloads: Family<ResultLabels, Counter>,
    last_reload_success: Gauge,
    readmissions: Family<ResultLabels, Counter>,
    /// Read from other components at scrape time.
    scraped: ScrapedFamilies,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Values other components own, copied into the registry at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Snapshot {
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_entries: u64,
    pub signature_lookups: u64,
    pub audit_written: u64,
    pub audit_dropped: u64,
    pub audit_errors: u64,
    pub alerts_sent: u64,
    pub alerts_failed: u64,
    pub alerts_dropped: u64,
    pub alerts_coalesced: u64,
    /// The fleet's shared state (zero without one).
    pub redis_errors: u64,
    pub redis_fallbacks: u64,
    pub fleet_hits: u64,
    pub fleet_decisions_dropped: u64,
    /// The content store (zero without one).
    pub content: ContentSnapshot,
}

/// The content store's counters and sizes (`cache.content`).
#[derive(Debug, Default, Clone, Copy)]
pub struct ContentSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub bytes_from_store: u64,
    pub bytes_downloaded: u64,
    pub evictions: u64,
    pub errors: u64,
    pub mismatches: u64,
    pub corrupt: u64,
    pub tags_unchanged: u64,
    pub tags_changed: u64,
    pub downloads: u64,
    pub stored_bytes: u64,
    pub stored_blobs: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` under `name` and returns it (a handle on the same
/// series).
fn register<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

/// Decisions and verification time: what the request path counts.
struct DecisionFamilies {
    decisions: Family<DecisionLabels, Counter>,
    dryrun_would_deny: Family<RuleLabels, Counter>,
    verification_seconds: Histogram,
}

impl DecisionFamilies {
    fn register(r: &mut Registry) -> DecisionFamilies {
        DecisionFamilies {
            decisions: register(
                r,
                "decisions",
                "Admission decisions by verdict, rule and reason category",
                Family::default(),
            ),
            dryrun_would_deny: register(
                r,
                "dryrun_would_deny",
                "Images served under a dry-run rule that would have denied them",
                Family::default(),
            ),
            verification_seconds: register(
                r,
                "verification_duration_seconds",
                "Time a request waited for a new verdict (cache misses only; by digest it includes the manifest fetch, which the evidence lookups overlap)",
                seconds_histogram(),
            ),
        }
    }
}

/// Upstream round trips and what is served to clients.
struct TrafficFamilies {
    requests: Family<RequestLabels, Counter>,
    upstream_seconds: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    upstream_responses: Family<UpstreamStatusLabels, Counter>,
    upstream_up: Family<UpstreamLabels, Gauge>,
    bytes_served: Counter,
    in_flight: Gauge,
}

impl TrafficFamilies {
    fn register(r: &mut Registry) -> TrafficFamilies {
        TrafficFamilies {
            requests: register(
                r,
                "requests",
                "Requests answered, by endpoint (manifest, blob, tags, referrers, base, health, admin, other) and HTTP status code",
                Family::default(),
            ),
            upstream_seconds: register(
                r,
                "upstream_request_duration_seconds",
                "Upstream round trips until response headers",
                Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            ),
            upstream_responses: register(
                r,
                "upstream_responses",
                "Upstream responses by status class, and transport errors",
                Family::default(),
            ),
            upstream_up: register(
                r,
                "upstream_up",
                "1 if the upstream answered its last readiness check or request, 0 if it could not be reached",
                Family::default(),
            ),
            bytes_served: register(
                r,
                "served_bytes",
                "Response body bytes sent to clients",
                Counter::default(),
            ),
            in_flight: register(
                r,
                "in_flight_requests",
                "Requests being served",
                Gauge::default(),
            ),
        }
    }
}

/// The policy in force and its reloads.
struct PolicyFamilies {
    policy_revision: Family<RevisionLabels, Gauge>,
    rule_info: Family<RuleInfoLabels, Gauge>,
    reloads: Family<ResultLabels, Counter>,
    last_reload_success: Gauge,
    readmissions: Family<ResultLabels, Counter>,
}

/// The results of a re-admission ([`Metrics::readmission`]).
const READMISSION_RESULTS: [&str; 3] = ["admitted", "denied", "failed"];

impl PolicyFamilies {
    fn register(r: &mut Registry) -> PolicyFamilies {
        let families = PolicyFamilies {
            policy_revision: register(
                r,
                "policy_revision_info",
                "The policy revision in force (value 1)",
                Family::default(),
            ),
            rule_info: register(
                r,
                "rule_info",
                "The rules of the policy in force (value 1): the rule id other metrics' rule label holds, the kind of rule and its name pattern",
                Family::default(),
            ),
            reloads: register(
                r,
                "policy_reloads",
                "Policy reload attempts by result",
                Family::default(),
            ),
            last_reload_success: register(
                r,
                "policy_last_reload_success",
                "1 if the last policy reload succeeded (or none was attempted), 0 if it failed",
                Gauge::default(),
            ),
            readmissions: register(
                r,
                "blob_readmissions",
                "Blobs of pulls begun before a policy or evidence change whose image was verified again, by result (admitted: the blob was served; denied: the image is denied now; failed: it could not be checked again)",
                Family::default(),
            ),
        };
        families.last_reload_success.set(1);
        // Both results exist from the start at 0, so that the first
        // failure is an increase a rule can see.
        for result in ["success", "failure"] {
            let _series = families.reloads.get_or_create(&ResultLabels {
                result: result.to_owned(),
            });
        }
        for result in READMISSION_RESULTS {
            let _series = families.readmissions.get_or_create(&ResultLabels {
                result: result.to_owned(),
            });
        }
        families
    }
}

/// Counters other components own (verdict cache, audit writer, alerter),
/// copied in at scrape time ([`Metrics::encode`]).
struct ScrapedFamilies {
    cache_hits: Counter<u64, AtomicU64>,
    cache_misses: Counter<u64, AtomicU64>,
    cache_entries: Gauge<i64, AtomicI64>,
    signature_lookups: Counter<u64, AtomicU64>,
    audit_written: Counter<u64, AtomicU64>,
    audit_dropped: Counter<u64, AtomicU64>,
    audit_errors: Counter<u64, AtomicU64>,
    alerts_sent: Counter<u64, AtomicU64>,
    alerts_failed: Counter<u64, AtomicU64>,
    alerts_dropped: Counter<u64, AtomicU64>,
    alerts_coalesced: Counter<u64, AtomicU64>,
    redis_errors: Counter<u64, AtomicU64>,
    redis_fallbacks: Counter<u64, AtomicU64>,
    fleet_hits: Counter<u64, AtomicU64>,
    fleet_decisions_dropped: Counter<u64, AtomicU64>,
    content: ContentFamilies,
}

/// `portcullis_content_cache_*`: the content store.
struct ContentFamilies {
    hits: Counter<u64, AtomicU64>,
    misses: Counter<u64, AtomicU64>,
    bytes: Family<SourceLabels, Counter<u64, AtomicU64>>,
    revalidations: Family<ResultLabels, Counter<u64, AtomicU64>>,
    evictions: Counter<u64, AtomicU64>,
    errors: Counter<u64, AtomicU64>,
    mismatches: Counter<u64, AtomicU64>,
    corrupt: Counter<u64, AtomicU64>,
    downloads: Gauge<i64, AtomicI64>,
    stored_bytes: Gauge<i64, AtomicI64>,
    stored_blobs: Gauge<i64, AtomicI64>,
    /// Counted as it happens (not scraped).
    stale_serves: Counter<u64, AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

impl ContentFamilies {
    fn register(r: &mut Registry) -> ContentFamilies {
        let mut counter = |name: &str, help: &str| register(r, name, help, Counter::default());
        let hits = counter(
            "content_cache_hits",
            "Blob requests answered from the content store (cache.content)",
        );
        let misses = counter(
            "content_cache_misses",
            "Blob requests the content store did not hold (downloaded once, or sent upstream)",
        );
        let evictions = counter(
            "content_cache_evictions",
            "Blobs evicted from the content store to stay under cache.content.maxSize",
        );
        let errors = counter(
            "content_cache_errors",
            "Content store disk errors (each makes it step aside for 30 s: plain proxying)",
        );
        let mismatches = counter(
            "content_cache_download_mismatches",
            "Downloads whose bytes did not hash to their digest (never stored)",
        );
        let stale_serves = counter(
            "stale_serves",
            "Images served while their upstream could not be reached, from the content store, admitted under the current policy on evidence kept there",
        );
        let corrupt = counter(
            "content_cache_corrupt",
            "Stored blobs found changed on disk (verifyOnRead, cache gc --verify) and removed",
        );
        let bytes = register(
            r,
            "content_cache_bytes",
            "Blob bytes by source: from the store to clients, or downloaded from upstreams into it",
            Family::default(),
        );
        let revalidations = register(
            r,
            "content_cache_tag_revalidations",
            "Tag requests checked with a HEAD at the upstream: unchanged (the stored manifest served, no GET) or changed (fetched again)",
            Family::default(),
        );
        let mut gauge = |name: &str, help: &str| register(r, name, help, Gauge::default());
        ContentFamilies {
            hits,
            misses,
            bytes,
            revalidations,
            evictions,
            errors,
            mismatches,
            corrupt,
            stale_serves,
            downloads: gauge(
                "content_cache_downloads_in_flight",
                "Downloads into the content store in flight",
            ),
            stored_bytes: gauge(
                "content_cache_stored_bytes",
                "Bytes the content store holds",
            ),
            stored_blobs: gauge(
                "content_cache_stored_blobs",
                "Blobs the content store holds",
            ),
        }
    }
}

impl ScrapedFamilies {
    fn register(r: &mut Registry) -> ScrapedFamilies {
        let mut counter = |name: &str, help: &str| register(r, name, help, Counter::default());
        let cache_hits = counter("verdict_cache_hits", "Verdict cache hits");
        let cache_misses = counter("verdict_cache_misses", "Verdict cache misses");
        let cache_entries = register(
            r,
            "verdict_cache_entries",
            "Verdicts currently cached",
            Gauge::default(),
        );
        let mut counter = |name: &str, help: &str| register(r, name, help, Counter::default());
        ScrapedFamilies {
            cache_hits,
            cache_misses,
            cache_entries,
            signature_lookups: counter(
                "signature_lookups",
                "Signature manifests fetched from upstreams",
            ),
            audit_written: counter("audit_records_written", "Audit records written"),
            audit_dropped: counter(
                "audit_records_dropped",
                "Audit records dropped because the queue was full (onFull: drop)",
            ),
            audit_errors: counter(
                "audit_write_errors",
                "Audit trail write, flush, fsync or rotation failures (each is also logged)",
            ),
            alerts_sent: counter("alerts_sent", "Webhook alerts delivered"),
            alerts_failed: counter("alerts_failed", "Webhook alerts that failed after retries"),
            alerts_dropped: counter(
                "alerts_dropped",
                "Webhook alerts dropped because the webhook's queue (lane) was full",
            ),
            alerts_coalesced: counter(
                "alerts_coalesced",
                "Denials and dry-run would-denials folded into a coalesced alert (one alert with a count) instead of sent on their own",
            ),
            redis_errors: counter(
                "redis_errors",
                "Round trips to the fleet's Redis (state.redis) that failed or timed out",
            ),
            redis_fallbacks: counter(
                "redis_fallbacks",
                "Requests answered without the fleet's Redis because it failed: verdicts computed here, blobs refused as unprovable, decision lists of this replica only",
            ),
            fleet_hits: counter(
                "fleet_shared_hits",
                "Verdicts and admitted content found in the fleet's Redis (another replica's verification reused)",
            ),
            fleet_decisions_dropped: counter(
                "fleet_decisions_dropped",
                "Decision records not appended to the fleet's stream (queue full or Redis failing); the audit trail keeps them",
            ),
            content: ContentFamilies::register(r),
        }
    }
}

impl Metrics {
    /// Every family, registered in the order the exposition lists them.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let build: Family<BuildLabels, Gauge> = register(
            &mut registry,
            "build_info",
            "The running build (value 1): its version, operating system and architecture",
            Family::default(),
        );
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                os: std::env::consts::OS,
                arch: std::env::consts::ARCH,
            })
            .set(1);
        let DecisionFamilies {
            decisions,
            dryrun_would_deny,
            verification_seconds,
        } = DecisionFamilies::register(&mut registry);
        let TrafficFamilies {
            requests,
            upstream_seconds,
            upstream_responses,
            upstream_up,
            bytes_served,
            in_flight,
        } = TrafficFamilies::register(&mut registry);
        let PolicyFamilies {
            policy_revision,
            rule_info,
            reloads,
            last_reload_success,
            readmissions,
        } = PolicyFamilies::register(&mut registry);
        let scraped = ScrapedFamilies::register(&mut registry);
        Metrics {
            registry,
            decisions,
            decision_counters: RwLock::new(HashMap::new()),
            dryrun_would_deny,
            verification_seconds,
            requests,
            upstream_seconds,
            upstream_responses,
            upstream_up,
            bytes_served,
            in_flight,
            policy_revision,
            rule_info,
            reloads,
            last_reload_success,
            readmissions,
            scraped,
        }
    }

    /// Counts a decision under `rule` (labelled with [`RuleSource::id`]),
    /// and a dry-run would-deny in `portcullis_dryrun_would_deny_total`,
    /// with the label strings made only the first time this (verdict,
    /// rule, reason) is seen.
    pub fn decision_of(&self, verdict: &'static str, rule: &RuleSource, reason: &'static str) {
        let counted = |counters: &[DecisionCounters]| {
            let c = counters
                .iter()
                .find(|c| c.verdict == verdict && c.reason == reason)?;
            c.decisions.inc();
            if let Some(d) = &c.dryrun_would_deny {
                d.inc();
            }
            Some(())
        };
        {
            let map = match self.decision_counters.read() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            if map.get(rule).and_then(|c| counted(c)).is_some() {
                return;
            }
        }
        let rule_text = rule.id();
        let decisions = self
            .decisions
            .get_or_create(&DecisionLabels {
                verdict: verdict.to_owned(),
                rule: rule_text.clone(),
                reason: reason.to_owned(),
            })
            .clone();
        let dryrun_would_deny = (verdict == "dryrun-deny").then(|| {
            self.dryrun_would_deny
                .get_or_create(&RuleLabels { rule: rule_text })
                .clone()
        });
        let mut map = match self.decision_counters.write() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let counters = map.entry(rule.clone()).or_default();
        // Another thread may have added the same counters meanwhile.
        if counted(counters).is_none() {
            let c = DecisionCounters {
                verdict,
                reason,
                decisions,
                dryrun_would_deny,
            };
            c.decisions.inc();
            if let Some(d) = &c.dryrun_would_deny {
                d.inc();
            }
            counters.push(c);
        }
    }

    pub fn verification(&self, took: Duration) {
        self.verification_seconds.observe(took.as_secs_f64());
    }

    /// The counter of `upstream`'s responses of `status` (a class such
    /// as `2xx`, or a transport error kind).
    fn upstream_responses(&self, upstream: &str, status: String) -> Counter {
        self.upstream_responses
            .get_or_create(&UpstreamStatusLabels {
                upstream: upstream.to_owned(),
                status,
            })
            .clone()
    }

    /// An image served from the content store because its upstream could
    /// not be reached.
    pub fn stale_serve(&self) {
        self.scraped.content.stale_serves.inc();
    }

    pub fn served_bytes(&self, n: u64) {
        self.bytes_served.inc_by(n);
    }

    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    pub fn request_finished(&self) {
        self.in_flight.dec();
    }

    /// Records the policy in force after a (re)load: its revision, and its
    /// rules in `portcullis_rule_info` (one series per rule, replacing the
    /// previous policy's).
    pub fn policy_loaded(&self, policy: &Policy) {
        self.policy_revision.clear();
        self.policy_revision
            .get_or_create(&RevisionLabels {
                revision: policy.revision.clone(),
            })
            .set(1);
        self.rule_info.clear();
        for source in policy.rule_sources() {
            self.rule_info
                .get_or_create(&RuleInfoLabels {
                    rule: source.id(),
                    kind: source.kind(),
                    pattern: source.pattern().unwrap_or_default().to_owned(),
                })
                .set(1);
        }
    }

    /// One request answered: its endpoint and status code.
    pub fn request(&self, endpoint: Endpoint, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.as_str(),
                status,
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
        self.last_reload_success.set(i64::from(ok));
    }

    /// One blob of a pull begun before a policy or evidence change whose
    /// image was verified again: `admitted`, `denied` or `failed`.
    pub fn readmission(&self, result: &'static str) {
        debug_assert!(READMISSION_RESULTS.contains(&result));
        self.readmissions
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The text exposition, with `snapshot` copied in first.
    pub fn encode(&self, snapshot: Snapshot) -> String {
        let set = |c: &Counter<u64, AtomicU64>, v: u64| {
            let now = c.get();
            if v > now {
                c.inc_by(v - now);
            }
        };
        let m = &self.scraped;
        set(&m.cache_hits, snapshot.cache_hits);
        set(&m.cache_misses, snapshot.cache_misses);
        set(&m.signature_lookups, snapshot.signature_lookups);
        set(&m.audit_written, snapshot.audit_written);
        set(&m.audit_dropped, snapshot.audit_dropped);
        set(&m.audit_errors, snapshot.audit_errors);
        set(&m.alerts_sent, snapshot.alerts_sent);
        set(&m.alerts_failed, snapshot.alerts_failed);
        set(&m.alerts_dropped, snapshot.alerts_dropped);
        set(&m.alerts_coalesced, snapshot.alerts_coalesced);
        set(&m.redis_errors, snapshot.redis_errors);
        set(&m.redis_fallbacks, snapshot.redis_fallbacks);
        set(&m.fleet_hits, snapshot.fleet_hits);
        set(&m.fleet_decisions_dropped, snapshot.fleet_decisions_dropped);
        m.cache_entries
            .set(i64::try_from(snapshot.cache_entries).unwrap_or(i64::MAX));
        let (c, s) = (&m.content, &snapshot.content);
        set(&c.hits, s.hits);
        set(&c.misses, s.misses);
        set(&c.evictions, s.evictions);
        set(&c.errors, s.errors);
        set(&c.mismatches, s.mismatches);
        set(&c.corrupt, s.corrupt);
        set(
            &c.bytes.get_or_create(&SourceLabels { source: "store" }),
            s.bytes_from_store,
        );
        set(
            &c.bytes.get_or_create(&SourceLabels { source: "upstream" }),
            s.bytes_downloaded,
        );
        for (result, value) in [("unchanged", s.tags_unchanged), ("changed", s.tags_changed)] {
            set(
                &c.revalidations.get_or_create(&ResultLabels {
                    result: result.to_owned(),
                }),
                value,
            );
        }
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        c.downloads.set(gauge(s.downloads));
        c.stored_bytes.set(gauge(s.stored_bytes));
        c.stored_blobs.set(gauge(s.stored_blobs));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("encoding metrics failed: {e}");
        }
        out
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_classified_by_path_shape() {
        let e = Endpoint::of_registry_path;
        assert_eq!(e("/v2/"), Endpoint::Base);
        assert_eq!(e("/v2"), Endpoint::Base);
        assert_eq!(e("/v2/library/nginx/manifests/latest"), Endpoint::Manifest);
        assert_eq!(e("/v2/a/b/c/manifests/sha256:ab"), Endpoint::Manifest);
        assert_eq!(e("/v2/a/blobs/sha256:ab"), Endpoint::Blob);
        assert_eq!(e("/v2/a/tags/list"), Endpoint::Tags);
        assert_eq!(e("/v2/a/referrers/sha256:ab"), Endpoint::Referrers);
        assert_eq!(e("/healthz"), Endpoint::Health);
        assert_eq!(e("/readyz"), Endpoint::Health);
        for other in [
            "/v2/manifests/x",
            "/v2//manifests/x",
            "/v2/a/tags/x",
            "/v2/a/blobs/uploads/",
            "/v2/_catalog",
            "/metrics",
            "/",
        ] {
            assert_eq!(e(other), Endpoint::Other, "{other}");
        }
    }

    #[test]
    fn exposition_names_follow_conventions() {
        let m = Arc::new(Metrics::new());
        let dry = RuleSource::Repository("r/**".into());
        m.decision_of("deny", &RuleSource::Default, "no-signatures");
        m.decision_of("dryrun-deny", &dry, "unknown-key");
        m.decision_of("dryrun-deny", &dry, "unknown-key");
        m.request(Endpoint::Manifest, 403);
        m.request(Endpoint::Manifest, 403);
        m.request(Endpoint::of_registry_path("/v2/a/b/blobs/sha256:x"), 200);
        let upstream = UpstreamMetrics::new(Arc::clone(&m), "r.io");
        upstream.response(Ok(404), Duration::from_millis(3));
        upstream.response(Ok(410), Duration::from_millis(3));
        upstream.response(Ok(200), Duration::from_millis(3));
        upstream.response(Err("timeout"), Duration::from_secs(1));
        upstream.up(false);
        let other = UpstreamMetrics::new(Arc::clone(&m), "s.io");
        other.up(false);
        other.up(true);
        let doc: crate::config::policy::PolicyDoc = serde_yaml_ng::from_str(
            "defaultAdmissionRule: {evaluationMode: ALWAYS_DENY}\n\
             repositoryAdmissionRules:\n  \"r/**\": {evaluationMode: ALWAYS_ALLOW}\n",
        )
        .unwrap();
        let policy = Policy::compile(&doc, &[]).unwrap();
        m.policy_loaded(&policy);
        m.reload(false);
        let text = m.encode(Snapshot {
            cache_hits: 3,
            cache_entries: 2,
            ..Snapshot::default()
        });
        for want in [
            r#"portcullis_decisions_total{verdict="deny",rule="default",reason="no-signatures"} 1"#,
            &format!(
                r#"portcullis_decisions_total{{verdict="dryrun-deny",rule="{}",reason="unknown-key"}} 2"#,
                dry.id()
            ),
            &format!(
                r#"portcullis_dryrun_would_deny_total{{rule="{}"}} 2"#,
                dry.id()
            ),
            &format!(
                r#"portcullis_rule_info{{rule="{}",kind="repository",pattern="r/**"}} 1"#,
                dry.id()
            ),
            r#"portcullis_rule_info{rule="default",kind="default",pattern=""} 1"#,
            r#"portcullis_requests_total{endpoint="manifest",status="403"} 2"#,
            r#"portcullis_requests_total{endpoint="blob",status="200"} 1"#,
            &format!(
                r#"portcullis_build_info{{version="{}",os="{}",arch="{}"}} 1"#,
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH
            ),
            r#"portcullis_upstream_responses_total{upstream="r.io",status="4xx"} 2"#,
            r#"portcullis_upstream_responses_total{upstream="r.io",status="2xx"} 1"#,
            r#"portcullis_upstream_request_duration_seconds_count{upstream="r.io"} 4"#,
            r#"portcullis_upstream_responses_total{upstream="r.io",status="timeout"} 1"#,
            r#"portcullis_upstream_up{upstream="r.io"} 0"#,
            r#"portcullis_upstream_up{upstream="s.io"} 1"#,
            "# TYPE portcullis_upstream_up gauge",
            &format!(
                r#"portcullis_policy_revision_info{{revision="{}"}} 1"#,
                policy.revision
            ),
            r#"portcullis_policy_reloads_total{result="failure"} 1"#,
            r#"portcullis_policy_reloads_total{result="success"} 0"#,
            "portcullis_policy_last_reload_success 0",
            "portcullis_verdict_cache_hits_total 3",
            "portcullis_verdict_cache_entries 2",
            "# TYPE portcullis_verification_duration_seconds histogram",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // No label holds a pattern or other free text but rule_info's.
        for line in text.lines().filter(|l| l.contains("rule=\"")) {
            assert!(
                line.starts_with("portcullis_rule_info") || !line.contains("r/**"),
                "{line}"
            );
        }
        // A reload replaces the rules listed.
        m.policy_loaded(&Policy::allow_all());
        let text = m.encode(Snapshot::default());
        assert!(!text.contains("r/**"), "{text}");
        assert!(text
            .contains(r#"portcullis_rule_info{rule="no-policy",kind="no-policy",pattern=""} 1"#));
        // Snapshots are cumulative, never double counted.
        let text = m.encode(Snapshot {
            cache_hits: 3,
            ..Snapshot::default()
        });
        assert!(
            text.contains("portcullis_verdict_cache_hits_total 3"),
            "{text}"
        );
    }
}
