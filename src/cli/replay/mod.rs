//! `portcullis policy replay`: re-evaluates the pulls recorded in an audit
//! trail against a candidate policy and reports what would change.
//!
//! - Only manifest records are replayed (blob decisions follow from their
//!   manifests), each image (`reference`, `digest`) once, from its latest
//!   record. Signature-artifact exemptions are skipped: no policy applies
//!   to them.
//! - **Live** (default): each manifest is fetched by digest from the
//!   candidate's upstream for its registry and evaluated by
//!   [`Verifier::explain`](crate::verify::Verifier::explain), signatures
//!   looked up afresh. Upstream failures are reported as errors, never as
//!   verdicts.
//! - **Offline**: no network. The candidate's rule is applied to the
//!   evidence recorded at pull time: a signature recorded as valid with key
//!   `K` satisfies any candidate attestor holding a key with id `K` (keys
//!   are the trust anchors, whatever the attestor is called); recorded
//!   failures carry over as they were. Limits: signatures recorded as
//!   `unknown-key` are not re-checked against new keys, a changed
//!   `signedIdentity` is not re-applied, and attestors the recorded rule
//!   did not require have no recorded evidence (the report says so).
//! - A child manifest admitted because its index was admitted is served
//!   under the candidate when its index is; otherwise it is evaluated on
//!   its own.
//!
//! "Denied" means the verdict `deny` (not served); `allow`, `exempt`,
//! `dryrun-deny` and `breakglass` were served.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue};

use crate::audit::record::{DecisionRecord, EvidenceRecord, RecordedVerdict, Subject};
use crate::cli::image::ACCEPT_ALL;
use crate::config::Config;
use crate::oci::{Digest, Reference};
use crate::policy::{
    self, attestation::SIGNATURE_PREDICATE_TYPE, Check, Decision, EvaluationMode, Evidence,
    EvidenceKind, Policy, Rule, RuleSource, Verdict,
};
use crate::routing::{Endpoint, Route};
use crate::serve::{manifest, App};

/// Live lookups in flight at once.
const LIVE_CONCURRENCY: usize = 8;

/// How to replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Use only the evidence recorded in the audit trail; no network.
    pub offline: bool,
}

/// One image whose fate changes under the candidate policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Canonical `<registry>/<repository>`.
    pub reference: String,
    pub digest: String,
    /// The tag it was pulled by, when it was pulled by tag.
    pub tag: Option<String>,
    /// As recorded (`allow`, `exempt`, `deny`, `dryrun-deny`, `breakglass`).
    pub old_verdict: String,
    /// Under the candidate (`allow`, `exempt`, `deny`, `dryrun-deny`).
    pub new_verdict: String,
    pub old_rule: String,
    pub new_rule: String,
    /// Why the candidate decides as it does, in one line.
    pub reason: String,
}

impl Change {
    /// `<reference>[:<tag>]@<digest>`.
    pub fn image(&self) -> String {
        match &self.tag {
            Some(tag) => format!("{}:{tag}@{}", self.reference, self.digest),
            None => format!("{}@{}", self.reference, self.digest),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "reference": self.reference,
            "digest": self.digest,
            "tag": self.tag,
            "old_verdict": self.old_verdict,
            "new_verdict": self.new_verdict,
            "old_rule": self.old_rule,
            "new_rule": self.new_rule,
            "reason": self.reason,
        })
    }
}

/// What replaying an audit trail against a candidate policy found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Images re-evaluated (`newly_denied + newly_allowed + unchanged`).
    pub replayed: usize,
    /// Records not replayed: blob decisions, earlier records of an image
    /// recorded again later, signature-artifact exemptions.
    pub skipped: usize,
    /// Served before, denied under the candidate; sorted by new rule, then
    /// image.
    pub newly_denied: Vec<Change>,
    /// Denied before, served under the candidate; sorted likewise.
    pub newly_allowed: Vec<Change>,
    /// Served before and now, or denied before and now.
    pub unchanged: usize,
    /// Unreadable records (with their line numbers) and images that could
    /// not be evaluated (upstream errors): neither is a verdict.
    pub errors: Vec<String>,
}

impl ReplayReport {
    /// The report for people: totals, then the newly denied grouped by the
    /// rule that now applies, then the newly allowed likewise, then errors.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "replayed {} image(s): {} newly denied, {} newly allowed, {} unchanged \
             ({} record(s) skipped, {} error(s))",
            self.replayed,
            self.newly_denied.len(),
            self.newly_allowed.len(),
            self.unchanged,
            self.skipped,
            self.errors.len()
        );
        for (title, changes) in [
            ("newly denied", &self.newly_denied),
            ("newly allowed", &self.newly_allowed),
        ] {
            let _ = writeln!(out);
            if changes.is_empty() {
                let _ = writeln!(out, "{title}: none");
                continue;
            }
            let _ = writeln!(out, "{title} ({}):", changes.len());
            for (rule, group) in group_by_rule(changes) {
                let _ = writeln!(out, "  {rule} ({}):", group.len());
                for c in group {
                    let _ = writeln!(out, "    {}", c.image());
                    let _ = writeln!(
                        out,
                        "      was {} by {}, now {}",
                        c.old_verdict, c.old_rule, c.new_verdict
                    );
                    let _ = writeln!(out, "      why: {}", c.reason);
                }
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "errors ({}):", self.errors.len());
            for e in &self.errors {
                let _ = writeln!(out, "  {e}");
            }
        }
        out
    }

    /// The report as data (`--json`).
    pub fn to_json(&self) -> serde_json::Value {
        let by_rule = |changes: &[Change]| {
            group_by_rule(changes)
                .into_iter()
                .map(|(rule, group)| (rule.to_owned(), serde_json::Value::from(group.len())))
                .collect::<serde_json::Map<_, _>>()
        };
        serde_json::json!({
            "replayed": self.replayed,
            "skipped": self.skipped,
            "unchanged": self.unchanged,
            "newly_denied": self.newly_denied.iter().map(Change::to_json).collect::<Vec<_>>(),
            "newly_allowed": self.newly_allowed.iter().map(Change::to_json).collect::<Vec<_>>(),
            "newly_denied_by_rule": by_rule(&self.newly_denied),
            "newly_allowed_by_rule": by_rule(&self.newly_allowed),
            "errors": self.errors,
        })
    }
}

fn group_by_rule(changes: &[Change]) -> BTreeMap<&str, Vec<&Change>> {
    let mut groups: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
    for c in changes {
        groups.entry(c.new_rule.as_str()).or_default().push(c);
    }
    groups
}

/// Runs `portcullis policy replay`: the report as text, or as JSON with
/// `json`.
pub fn run(audit: &Path, config: &Path, options: ReplayOptions, json: bool) -> ExitCode {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let result = crate::cli::runtime().and_then(|rt| rt.block_on(replay(audit, &config, options)));
    match result {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.render());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Replays the audit trail at `audit` against `config`'s policy.
///
/// Fails only when the audit file cannot be read or the candidate policy
/// does not compile; bad records and upstream failures land in
/// [`ReplayReport::errors`].
pub async fn replay(
    audit: &Path,
    config: &Config,
    options: ReplayOptions,
) -> Result<ReplayReport, String> {
    let bytes = tokio::fs::read(audit)
        .await
        .map_err(|e| format!("cannot read audit file {}: {e}", audit.display()))?;
    let policy = config
        .compile_policy()
        .map_err(|e| format!("invalid candidate policy: {e}"))?;
    let parsed = parse_audit(&bytes);
    let mut errors = parsed.errors;

    let evaluated = if options.offline {
        offline_decisions(&policy, &parsed.images)
    } else {
        let app = Arc::new(
            crate::app::build_quiet(config).map_err(|e| format!("invalid candidate: {e}"))?,
        );
        live_decisions(&app, config, &parsed.images, &mut errors).await
    };

    let mut report = ReplayReport {
        skipped: parsed.skipped,
        ..ReplayReport::default()
    };
    for (image, decision) in parsed.images.iter().zip(evaluated) {
        let Some(decision) = decision else {
            continue;
        };
        report.replayed += 1;
        match classify(image, decision) {
            Diff::NewlyDenied(c) => report.newly_denied.push(c),
            Diff::NewlyAllowed(c) => report.newly_allowed.push(c),
            Diff::Unchanged => report.unchanged += 1,
        }
    }
    let order = |a: &Change, b: &Change| {
        (a.new_rule.as_str(), a.image()).cmp(&(b.new_rule.as_str(), b.image()))
    };
    report.newly_denied.sort_by(order);
    report.newly_allowed.sort_by(order);
    report.errors = errors;
    Ok(report)
}

// ---------------------------------------------------------------- parsing

/// One image to replay: its latest manifest record.
#[derive(Debug, Clone)]
struct Image {
    record: DecisionRecord,
    /// The latest tag it was pulled by (a later pull by digest keeps it).
    tag: Option<String>,
}

impl Image {
    fn name(&self) -> String {
        format!("{}@{}", self.record.reference, self.record.digest)
    }
}

#[derive(Debug, Default)]
struct Parsed {
    /// In order of first appearance.
    images: Vec<Image>,
    skipped: usize,
    errors: Vec<String>,
}

/// Reads JSON lines: blank lines ignored, bad lines reported by number,
/// manifest records deduplicated by (reference, digest), latest kept.
fn parse_audit(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = n + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: DecisionRecord = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => {
                parsed
                    .errors
                    .push(format!("line {number}: not an audit record: {e}"));
                continue;
            }
        };
        if record.subject != Subject::Manifest || record.rule == RuleSource::Artifact.to_string() {
            parsed.skipped += 1;
            continue;
        }
        let key = (record.reference.clone(), record.digest.clone());
        match index.get(&key) {
            Some(&i) => {
                parsed.skipped += 1;
                let existing = &mut parsed.images[i];
                // RFC 3339 UTC with fixed precision sorts as text; equal
                // times keep file order.
                if record.time >= existing.record.time {
                    let tag = record.tag.clone().or_else(|| existing.tag.take());
                    *existing = Image { record, tag };
                } else if existing.tag.is_none() {
                    existing.tag = record.tag;
                }
            }
            None => {
                index.insert(key, parsed.images.len());
                let tag = record.tag.clone();
                parsed.images.push(Image { record, tag });
            }
        }
    }
    parsed
}

// --------------------------------------------------------------- deciding

/// The candidate's decision for one image, with what the explanation
/// needs beyond the decision itself.
#[derive(Debug, Clone)]
struct Evaluated {
    decision: Decision,
    /// Required attestors for which nothing was recorded (offline).
    unrecorded: Vec<String>,
    /// Extra explanation (index inheritance, offline limits).
    notes: Vec<String>,
}

impl Evaluated {
    fn plain(decision: Decision) -> Evaluated {
        Evaluated {
            decision,
            unrecorded: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// `listed by admitted index <digest>`: the index a child manifest was
/// admitted through, from its recorded reason.
fn admitted_index(record: &DecisionRecord) -> Option<&str> {
    const MARK: &str = "listed by admitted index ";
    if !record.attestors.is_empty() {
        return None;
    }
    let start = record.reason.find(MARK)? + MARK.len();
    record.reason[start..]
        .split_whitespace()
        .next()
        .filter(|d| d.contains(':'))
}

/// The recorded result string as a [`Check`].
fn check_from_record(e: &EvidenceRecord) -> Check {
    // `detail` is `Check::describe`: "…, but for another digest (X)".
    let signed = || {
        e.detail
            .rsplit_once('(')
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .unwrap_or(&e.detail)
            .to_owned()
    };
    match e.result.as_str() {
        "valid" => match &e.key_id {
            Some(key_id) => Check::Valid {
                key_id: key_id.clone(),
            },
            None => Check::Malformed {
                reason: "recorded as valid without a key id".into(),
            },
        },
        "unknown-key" => Check::UnknownKey,
        "other-digest" => Check::OtherDigest { signed: signed() },
        "other-repository" => Check::OtherRepository { signed: signed() },
        "malformed" => Check::Malformed {
            reason: e
                .detail
                .strip_prefix("malformed: ")
                .unwrap_or(&e.detail)
                .to_owned(),
        },
        // A kind this replay does not know: still a failure, described as
        // it was recorded.
        other => Check::Malformed {
            reason: if e.detail.is_empty() {
                format!("unrecognized recorded result {other:?}")
            } else {
                format!("{} (recorded as {other:?})", e.detail)
            },
        },
    }
}

/// Whether recorded evidence is an attestation (rather than a signature).
fn is_attestation(e: &EvidenceRecord) -> bool {
    match (&e.predicate_type, &e.kind) {
        (Some(p), _) => p != SIGNATURE_PREDICATE_TYPE,
        (None, Some(kind)) => kind == EvidenceKind::AttTag.as_str(),
        // Records from before evidence kinds: the source names the tag.
        (None, None) => e.source.contains(".att "),
    }
}

fn evidence_from_record(e: &EvidenceRecord, check: Check) -> Evidence {
    let kind =
        e.kind
            .as_deref()
            .and_then(EvidenceKind::parse)
            .unwrap_or(if e.source.contains(".att ") {
                EvidenceKind::AttTag
            } else {
                EvidenceKind::SigTag
            });
    Evidence::new(kind, e.source.clone(), check).with_predicate_type(e.predicate_type.clone())
}

/// Rebuilds, from what `record` shows, the evidence each attestor `rule`
/// requires would see. Returns the evidence and the required attestors
/// nothing was recorded for.
fn recorded_evidence(
    policy: &Policy,
    rule: &Rule,
    record: &DecisionRecord,
) -> (HashMap<String, Vec<Evidence>>, Vec<String>) {
    let mut evidence: HashMap<String, Vec<Evidence>> = HashMap::new();
    let mut unrecorded = Vec::new();
    if rule.evaluation != EvaluationMode::RequireAttestation {
        return (evidence, unrecorded);
    }
    for name in &rule.attestors {
        let keys: HashSet<&str> = policy
            .attestors
            .get(name)
            .map(|a| a.keys.iter().map(|k| k.id.as_str()).collect())
            .unwrap_or_default();
        // A plain signature (`.sig`) never stands in for a required
        // attestation (`.att`), nor the other way round. (Offline, the
        // conditions of a recorded valid attestation are not re-checked.)
        let wants_attestation = policy
            .attestors
            .get(name)
            .is_some_and(|a| !a.attestations.is_empty());
        let fits = |e: &EvidenceRecord| is_attestation(e) == wants_attestation;
        let mut found: Vec<Evidence> = Vec::new();
        // Signatures verified with a key this attestor holds, whoever
        // checked them at the time.
        for e in record.attestors.iter().flat_map(|a| &a.evidence) {
            if let Check::Valid { key_id } = check_from_record(e) {
                let already = found.iter().any(|f| {
                    f.source == e.source
                        && matches!(&f.check, Check::Valid { key_id: k } if *k == key_id)
                });
                if keys.contains(key_id.as_str()) && !already && fits(e) {
                    found.push(evidence_from_record(e, Check::Valid { key_id }));
                }
            }
        }
        match record.attestors.iter().find(|a| &a.name == name) {
            Some(same) => {
                for e in &same.evidence {
                    let check = match check_from_record(e) {
                        Check::Valid { key_id } if keys.contains(key_id.as_str()) && fits(e) => {
                            continue
                        }
                        Check::Valid { .. } if !fits(e) => Check::Malformed {
                            reason: if wants_attestation {
                                "a signature, but this attestor requires an attestation".into()
                            } else {
                                "an attestation, but this attestor requires a signature".into()
                            },
                        },
                        // Verified then with a key this attestor no longer holds.
                        Check::Valid { .. } => Check::UnknownKey,
                        other => other,
                    };
                    found.push(evidence_from_record(e, check));
                }
            }
            None if found.is_empty() => unrecorded.push(name.clone()),
            None => {}
        }
        evidence.insert(name.clone(), found);
    }
    (evidence, unrecorded)
}

/// The candidate's decision from the record alone.
fn offline_decision(policy: &Policy, record: &DecisionRecord) -> Evaluated {
    let rule = policy.rule_for(&record.reference);
    let (evidence, unrecorded) = recorded_evidence(policy, &rule, record);
    let decision = policy::evaluate_in(policy, &rule, &evidence);
    let mut notes = Vec::new();
    let unknown_kept = decision
        .attestors
        .iter()
        .filter(|a| !a.satisfied)
        .flat_map(|a| &a.evidence)
        .any(|e| e.check == Check::UnknownKey);
    if unknown_kept
        && record
            .attestors
            .iter()
            .flat_map(|a| &a.evidence)
            .any(|e| e.result == "unknown-key")
    {
        notes.push(
            "signatures recorded as unknown-key are not re-checked against the candidate's keys \
             offline (replay without --offline to check them)"
                .to_owned(),
        );
    }
    Evaluated {
        decision,
        unrecorded,
        notes,
    }
}

/// Every image's decision from the records alone; children admitted
/// through an index follow their index when it was recorded too.
fn offline_decisions(policy: &Policy, images: &[Image]) -> Vec<Option<Evaluated>> {
    let own: Vec<Evaluated> = images
        .iter()
        .map(|i| offline_decision(policy, &i.record))
        .collect();
    let by_key: HashMap<(&str, &str), usize> = images
        .iter()
        .enumerate()
        .map(|(n, i)| ((i.record.reference.as_str(), i.record.digest.as_str()), n))
        .collect();
    images
        .iter()
        .zip(&own)
        .map(|(image, mine)| {
            Some(match admitted_index(&image.record) {
                Some(index) => {
                    let index_decision = by_key
                        .get(&(image.record.reference.as_str(), index))
                        .and_then(|&n| own.get(n))
                        .map(|e| &e.decision);
                    let rule = policy.rule_for(&image.record.reference);
                    through_index(&rule, index, index_decision, mine.clone(), true)
                }
                None => mine.clone(),
            })
        })
        .collect()
}

/// A child admitted through an index: served when the index is served
/// under the candidate, else decided on its own (`own`).
fn through_index(
    policy_rule: &Rule,
    index_digest: &str,
    index: Option<&Decision>,
    own: Evaluated,
    offline: bool,
) -> Evaluated {
    match index {
        Some(i) if i.serves() => Evaluated::plain(Decision {
            verdict: Verdict::Allow,
            rule: policy_rule.source.clone(),
            evaluation: policy_rule.evaluation,
            enforcement: policy_rule.enforcement,
            attestors: Vec::new(),
            reason: format!("listed by index {index_digest}, which is served"),
        }),
        Some(_) => {
            let mut own = own;
            own.notes
                .push(format!("its index {index_digest} is denied too"));
            own
        }
        None => {
            let mut own = own;
            if offline {
                own.notes.push(format!(
                    "its index {index_digest} is not in the audit file, so it is judged on its own (offline)"
                ));
            }
            own
        }
    }
}

/// Fetches and evaluates every image against the live upstreams, a few
/// at a time. `None` for images that could not be evaluated (the reason
/// is pushed to `errors`).
async fn live_decisions(
    app: &Arc<App>,
    config: &Config,
    images: &[Image],
    errors: &mut Vec<String>,
) -> Vec<Option<Evaluated>> {
    let policy = app.verifier.policy();
    // Every (reference, digest) to evaluate: the images, and the indexes
    // of children whose index was not recorded itself.
    let mut wanted: Vec<(String, String)> = images
        .iter()
        .map(|i| (i.record.reference.clone(), i.record.digest.clone()))
        .collect();
    let known: HashSet<(String, String)> = wanted.iter().cloned().collect();
    for image in images {
        if let Some(index) = admitted_index(&image.record) {
            let key = (image.record.reference.clone(), index.to_owned());
            if !known.contains(&key) && !wanted.contains(&key) {
                wanted.push(key);
            }
        }
    }
    let results = evaluate_live(app, config, &wanted).await;
    let mut decided: HashMap<(String, String), Decision> = HashMap::new();
    let mut failed: HashMap<(String, String), String> = HashMap::new();
    for (key, result) in wanted.into_iter().zip(results) {
        match result {
            Ok(d) => {
                decided.insert(key, d);
            }
            Err(e) => {
                failed.insert(key, e);
            }
        }
    }
    let mut out = Vec::with_capacity(images.len());
    for image in images {
        let key = (image.record.reference.clone(), image.record.digest.clone());
        let Some(own) = decided.get(&key).cloned() else {
            let why = failed
                .get(&key)
                .cloned()
                .unwrap_or_else(|| "not evaluated".to_owned());
            errors.push(format!("{}: {why}", image.name()));
            out.push(None);
            continue;
        };
        let own = Evaluated::plain(own);
        let evaluated = match admitted_index(&image.record) {
            Some(index) => {
                let index_key = (image.record.reference.clone(), index.to_owned());
                if let Some(e) = failed.get(&index_key) {
                    errors.push(format!(
                        "{}: its index {index}: {e} (judged on its own)",
                        image.name()
                    ));
                }
                let rule = policy.rule_for(&image.record.reference);
                through_index(&rule, index, decided.get(&index_key), own, false)
            }
            None => own,
        };
        out.push(Some(evaluated));
    }
    out
}

/// Runs [`live_one`] for each of `wanted`, at most [`LIVE_CONCURRENCY`] at
/// once; results in the order of `wanted`.
async fn evaluate_live(
    app: &Arc<App>,
    config: &Config,
    wanted: &[(String, String)],
) -> Vec<Result<Decision, String>> {
    let registries: Arc<Vec<String>> = Arc::new(
        config
            .upstreams
            .iter()
            .map(|u| u.registry.clone())
            .collect(),
    );
    let mut results: Vec<Result<Decision, String>> = (0..wanted.len())
        .map(|_| Err("not evaluated".to_owned()))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0;
    loop {
        while tasks.len() < LIVE_CONCURRENCY && next < wanted.len() {
            let (reference, digest) = wanted[next].clone();
            let app = Arc::clone(app);
            let registries = Arc::clone(&registries);
            let i = next;
            tasks.spawn(async move { (i, live_one(&app, &registries, &reference, &digest).await) });
            next += 1;
        }
        match tasks.join_next().await {
            Some(Ok((i, result))) => {
                if let Some(slot) = results.get_mut(i) {
                    *slot = result;
                }
            }
            Some(Err(e)) => {
                // A panicked lookup: its slot keeps "not evaluated".
                tracing::warn!("replay lookup failed: {e}");
            }
            None => break,
        }
    }
    results
}

/// Fetches `reference@digest` from its upstream and evaluates it.
async fn live_one(
    app: &App,
    registries: &[String],
    reference: &str,
    digest: &str,
) -> Result<Decision, String> {
    let (registry, repository) = reference
        .split_once('/')
        .ok_or_else(|| format!("{reference:?} is not <registry>/<repository>"))?;
    let upstream = registries
        .iter()
        .position(|r| r == registry)
        .ok_or_else(|| format!("no upstream is configured for registry {registry}"))?;
    let parsed: Digest = digest
        .parse()
        .map_err(|e| format!("recorded digest {digest:?}: {e}"))?;
    let wanted = Reference::Digest(parsed);
    let route = Route {
        endpoint: Endpoint::Manifest(wanted.clone()),
        upstream,
        registry: registry.to_owned(),
        repository: repository.to_owned(),
        client_name: repository.to_owned(),
        ns: None,
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(ACCEPT_ALL));
    let up = app
        .upstreams()
        .get(upstream)
        .ok_or_else(|| format!("no upstream is configured for registry {registry}"))?;
    let fetched = manifest::fetch(up, &route, &wanted, &headers)
        .await
        .map_err(|e| format!("cannot fetch the manifest: {e}"))?;
    if fetched.digest().to_string() != digest {
        return Err(format!(
            "the upstream answered a manifest with digest {} instead",
            fetched.digest()
        ));
    }
    app.verifier
        .explain(&route, &fetched)
        .await
        .map_err(|e| format!("cannot verify: {e}"))
}

// ---------------------------------------------------------------- diffing

#[derive(Debug)]
enum Diff {
    NewlyDenied(Change),
    NewlyAllowed(Change),
    Unchanged,
}

/// Compares the recorded verdict with the candidate's.
fn classify(image: &Image, evaluated: Evaluated) -> Diff {
    let record = &image.record;
    let was_served = record.verdict != RecordedVerdict::Deny;
    let now_served = evaluated.decision.serves();
    if was_served == now_served {
        return Diff::Unchanged;
    }
    let change = Change {
        reference: record.reference.clone(),
        digest: record.digest.clone(),
        tag: image.tag.clone(),
        old_verdict: record.verdict.as_str().to_owned(),
        new_verdict: RecordedVerdict::from(&evaluated.decision.verdict)
            .as_str()
            .to_owned(),
        old_rule: record.rule.clone(),
        new_rule: evaluated.decision.rule.to_string(),
        reason: explain(record, &evaluated),
    };
    if now_served {
        Diff::NewlyAllowed(change)
    } else {
        Diff::NewlyDenied(change)
    }
}

/// Why the candidate decides as it does: a rule change, the attestors'
/// outcome (with the offline gaps named), keys no longer trusted.
fn explain(record: &DecisionRecord, evaluated: &Evaluated) -> String {
    let d = &evaluated.decision;
    let mut parts = Vec::new();
    let new_rule = d.rule.to_string();
    if new_rule != record.rule {
        parts.push(format!(
            "now under {new_rule} ({}) instead of {}",
            d.evaluation, record.rule
        ));
    }
    if d.evaluation == EvaluationMode::RequireAttestation && !d.attestors.is_empty() {
        let all = d.attestors.iter().all(|a| a.satisfied);
        for a in d.attestors.iter().filter(|a| all || !a.satisfied) {
            if a.evidence.is_empty() && evaluated.unrecorded.contains(&a.name) {
                parts.push(format!(
                    "no recorded evidence for attestor {} (offline)",
                    a.name
                ));
            } else {
                parts.push(format!("attestor {}: {}", a.name, a.summary()));
            }
        }
    } else {
        parts.push(d.reason.clone());
    }
    parts.extend(untrusted_keys(d, record));
    parts.extend(evaluated.notes.iter().cloned());
    parts.join("; ")
}

/// For each unsatisfied attestor, the keys that verified a signature at
/// pull time but do not verify it now: the signature is found again at the
/// same source, and now checks as an unknown key.
fn untrusted_keys(decision: &Decision, record: &DecisionRecord) -> Vec<String> {
    let mut notes = Vec::new();
    for a in decision.attestors.iter().filter(|a| !a.satisfied) {
        let mut keys: Vec<&str> = Vec::new();
        for e in a.evidence.iter().filter(|e| e.check == Check::UnknownKey) {
            let recorded = record
                .attestors
                .iter()
                .flat_map(|r| &r.evidence)
                .filter(|r| r.source == e.source && r.result == "valid")
                .filter_map(|r| r.key_id.as_deref());
            for k in recorded {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        for k in keys {
            notes.push(format!(
                "key {k} is not trusted by attestor {} (it verified this signature when the pull was recorded)",
                a.name
            ));
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::AttestorRecord;

    const R: &str = "r.test";

    fn pem() -> String {
        use p256::pkcs8::{EncodePublicKey as _, LineEnding};
        p256::SecretKey::random(&mut rand_core::OsRng)
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }

    /// A candidate: default REQUIRE_ATTESTATION by `attestors` (name, key
    /// ids), plus `extra_rules` under repositoryAdmissionRules.
    fn policy(default_mode: &str, attestors: &[(&str, &[&str])], extra_rules: &str) -> Policy {
        let names: Vec<&str> = attestors.iter().map(|(n, _)| *n).collect();
        let mut y = format!(
            "listen: 127.0.0.1:0\n\
             upstreams:\n  - registry: {R}\n    url: http://127.0.0.1:9\n    default: true\n\
             policy:\n  defaultAdmissionRule:\n    evaluationMode: {default_mode}\n    \
             requireAttestationsBy: [{}]\n  repositoryAdmissionRules:\n{extra_rules}    \
             \"{R}/never/**\": {{evaluationMode: ALWAYS_DENY}}\nattestors:\n",
            names.join(", ")
        );
        for (name, ids) in attestors {
            y.push_str(&format!("  - name: {name}\n    publicKeys:\n"));
            for id in *ids {
                y.push_str(&format!(
                    "      - id: {id}\n        pkixPublicKey:\n          signatureAlgorithm: ECDSA_P256_SHA256\n          publicKeyPem: |\n"
                ));
                for line in pem().lines() {
                    y.push_str(&format!("            {line}\n"));
                }
            }
        }
        Config::from_yaml(&y, Path::new("."))
            .unwrap_or_else(|e| panic!("{e}\n{y}"))
            .compile_policy()
            .unwrap()
    }

    const SANDBOX: &str = "    \"r.test/sandbox/**\": {evaluationMode: ALWAYS_ALLOW}\n";

    fn evidence(source: &str, result: &str, key: Option<&str>) -> EvidenceRecord {
        EvidenceRecord {
            source: source.into(),
            result: result.into(),
            detail: match result {
                "other-digest" => "valid signature, but for another digest (sha256:0ther)".into(),
                "malformed" => "malformed: not base64".into(),
                _ => String::new(),
            },
            key_id: key.map(str::to_owned),
            kind: None,
            predicate_type: None,
            note: None,
        }
    }

    fn record(repo: &str, digest: &str, verdict: RecordedVerdict, rule: &str) -> DecisionRecord {
        DecisionRecord {
            time: "2026-01-01T00:00:00.000Z".into(),
            request_id: 1,
            client_addr: None,
            user_agent: None,
            identity: None,
            subject: Subject::Manifest,
            reference: format!("{R}/{repo}"),
            tag: Some("v1".into()),
            digest: digest.into(),
            rule: rule.into(),
            evaluation_mode: "REQUIRE_ATTESTATION".into(),
            enforcement_mode: "ENFORCED_BLOCK_AND_AUDIT_LOG".into(),
            verdict,
            reason_category: "ok".into(),
            reason: String::new(),
            attestors: Vec::new(),
            cache_hit: false,
            latency_ms: 1.0,
            break_glass_justification: None,
        }
    }

    fn with_attestor(mut r: DecisionRecord, name: &str, ev: Vec<EvidenceRecord>) -> DecisionRecord {
        r.attestors.push(AttestorRecord {
            name: name.into(),
            satisfied: ev.iter().any(|e| e.result == "valid"),
            summary: String::new(),
            evidence: ev,
        });
        r
    }

    fn image(record: DecisionRecord) -> Image {
        let tag = record.tag.clone();
        Image { record, tag }
    }

    fn offline(policy: &Policy, r: DecisionRecord) -> Diff {
        let e = offline_decision(policy, &r);
        classify(&image(r), e)
    }

    const DEFAULT: &str = "default admission rule";

    #[test]
    fn recorded_results_map_back_to_checks() {
        let c = |result: &str, key: Option<&str>| check_from_record(&evidence("s", result, key));
        assert_eq!(
            c("valid", Some("k1")),
            Check::Valid {
                key_id: "k1".into()
            }
        );
        assert!(matches!(c("valid", None), Check::Malformed { .. }));
        assert_eq!(c("unknown-key", None), Check::UnknownKey);
        assert_eq!(
            c("other-digest", None),
            Check::OtherDigest {
                signed: "sha256:0ther".into()
            }
        );
        assert_eq!(
            c("malformed", None),
            Check::Malformed {
                reason: "not base64".into()
            }
        );
        assert!(matches!(
            c("other-repository", None),
            Check::OtherRepository { .. }
        ));
        assert!(
            matches!(c("from-the-future", None), Check::Malformed { reason } if reason.contains("from-the-future"))
        );
    }

    #[test]
    fn parsing_skips_blobs_and_artifacts_reports_bad_lines_and_keeps_the_latest() {
        let mut first = record("a", "sha256:aa", RecordedVerdict::Deny, DEFAULT);
        first.time = "2026-01-01T00:00:00.000Z".into();
        let mut later = record("a", "sha256:aa", RecordedVerdict::Allow, DEFAULT);
        later.time = "2026-01-02T00:00:00.000Z".into();
        later.tag = None; // pulled by digest: the tag seen before is kept
        let mut blob = record("a", "sha256:b10b", RecordedVerdict::Deny, DEFAULT);
        blob.subject = Subject::Blob;
        let artifact = record(
            "a",
            "sha256:5165",
            RecordedVerdict::Exempt,
            &RuleSource::Artifact.to_string(),
        );
        let line = |r: &DecisionRecord| serde_json::to_string(r).unwrap();
        let text = [
            line(&later),
            String::new(),
            "{not json".into(),
            line(&blob),
            "   ".into(),
            line(&first),
            line(&artifact),
            line(&record("b", "sha256:bb", RecordedVerdict::Allow, DEFAULT)),
        ]
        .join("\n");
        let parsed = parse_audit(text.as_bytes());
        assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
        assert!(
            parsed.errors[0].starts_with("line 3: "),
            "{:?}",
            parsed.errors
        );
        assert_eq!(parsed.skipped, 3, "blob, artifact, superseded record");
        assert_eq!(parsed.images.len(), 2);
        let a = &parsed.images[0];
        assert_eq!(
            a.record.verdict,
            RecordedVerdict::Allow,
            "latest by time wins"
        );
        assert_eq!(a.tag.as_deref(), Some("v1"));
        assert_eq!(parsed.images[1].record.reference, "r.test/b");
    }

    #[test]
    fn a_valid_signature_counts_for_any_attestor_holding_its_key() {
        // Recorded under attestor "old-ci"; the candidate calls it "ci".
        let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1"])], "");
        let r = with_attestor(
            record("a", "sha256:aa", RecordedVerdict::Deny, DEFAULT),
            "old-ci",
            vec![evidence("sig0", "valid", Some("k1"))],
        );
        match offline(&p, r) {
            Diff::NewlyAllowed(c) => {
                assert_eq!(c.new_verdict, "allow");
                assert!(
                    c.reason.contains("attestor ci: verified (key k1)"),
                    "{}",
                    c.reason
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_key_no_longer_held_is_named() {
        let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1"])], "");
        let r = with_attestor(
            record("b", "sha256:bb", RecordedVerdict::Allow, DEFAULT),
            "ci",
            vec![evidence("sig0", "valid", Some("k2"))],
        );
        match offline(&p, r) {
            Diff::NewlyDenied(c) => {
                assert_eq!(
                    (c.old_verdict.as_str(), c.new_verdict.as_str()),
                    ("allow", "deny")
                );
                assert_eq!(c.new_rule, DEFAULT);
                assert!(
                    c.reason.contains("1 by unknown key or altered")
                        && c.reason.contains("key k2 is not trusted by attestor ci"),
                    "{}",
                    c.reason
                );
                assert!(!c.reason.contains("now under"), "same rule: {}", c.reason);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_carry_over_and_unknown_keys_are_not_rechecked_offline() {
        let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1", "k9"])], "");
        let r = with_attestor(
            record("c", "sha256:cc", RecordedVerdict::Deny, DEFAULT),
            "ci",
            vec![
                evidence("sig0", "unknown-key", None),
                evidence("sig1", "other-digest", None),
            ],
        );
        let e = offline_decision(&p, &r);
        assert_eq!(e.decision.verdict, Verdict::Deny);
        let checks: Vec<_> = e.decision.attestors[0]
            .evidence
            .iter()
            .map(|e| &e.check)
            .collect();
        assert_eq!(
            checks,
            [
                &Check::UnknownKey,
                &Check::OtherDigest {
                    signed: "sha256:0ther".into()
                }
            ]
        );
        assert!(
            e.notes.iter().any(|n| n.contains("not re-checked")),
            "{:?}",
            e.notes
        );
        assert!(matches!(classify(&image(r), e), Diff::Unchanged));
    }

    #[test]
    fn an_attestor_not_recorded_has_no_evidence_offline() {
        // Recorded under ALWAYS_ALLOW (no attestors); the candidate drops
        // that rule, so the default applies.
        let sandbox_rule = "repository admission rule r.test/sandbox/**";
        let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1"])], "");
        let r = record(
            "sandbox/d",
            "sha256:dd",
            RecordedVerdict::Allow,
            sandbox_rule,
        );
        match offline(&p, r) {
            Diff::NewlyDenied(c) => {
                assert_eq!(c.old_rule, sandbox_rule);
                assert_eq!(c.new_rule, DEFAULT);
                assert_eq!(
                    c.reason,
                    format!(
                        "now under {DEFAULT} (REQUIRE_ATTESTATION) instead of {sandbox_rule}; \
                         no recorded evidence for attestor ci (offline)"
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        // With the rule kept, nothing changes.
        let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1"])], SANDBOX);
        let r = record(
            "sandbox/d",
            "sha256:dd",
            RecordedVerdict::Allow,
            sandbox_rule,
        );
        assert!(matches!(offline(&p, r), Diff::Unchanged));
    }

    #[test]
    fn served_means_anything_but_deny() {
        let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1"])], "");
        for old in [
            RecordedVerdict::Allow,
            RecordedVerdict::Exempt,
            RecordedVerdict::DryrunDeny,
            RecordedVerdict::Breakglass,
        ] {
            let r = record("never/x", "sha256:ee", old, DEFAULT);
            match offline(&p, r) {
                Diff::NewlyDenied(c) => {
                    assert_eq!(c.old_verdict, old.as_str());
                    assert!(c.reason.contains("ALWAYS_DENY"), "{}", c.reason);
                }
                other => panic!("{old:?}: {other:?}"),
            }
        }
        let r = record("never/x", "sha256:ee", RecordedVerdict::Deny, DEFAULT);
        assert!(matches!(offline(&p, r), Diff::Unchanged));
        // Dry run under the candidate is served: a recorded deny becomes
        // newly allowed, as `dryrun-deny`.
        let p = policy(
            "REQUIRE_ATTESTATION",
            &[("ci", &["k1"])],
            "    \"r.test/dry/**\": {evaluationMode: REQUIRE_ATTESTATION, enforcementMode: DRYRUN_AUDIT_LOG_ONLY, requireAttestationsBy: [ci]}\n",
        );
        let r = record("dry/x", "sha256:ff", RecordedVerdict::Deny, DEFAULT);
        match offline(&p, r) {
            Diff::NewlyAllowed(c) => assert_eq!(c.new_verdict, "dryrun-deny"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn children_follow_their_index() {
        let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k1"])], "");
        let index = with_attestor(
            record("m", "sha256:1dx", RecordedVerdict::Allow, DEFAULT),
            "ci",
            vec![evidence("sig0", "valid", Some("k1"))],
        );
        let mut child = record("m", "sha256:c1", RecordedVerdict::Allow, DEFAULT);
        child.tag = None;
        child.reason = format!(
            "image {R}/m@sha256:c1 allowed by {DEFAULT}: listed by admitted index sha256:1dx"
        );
        assert_eq!(admitted_index(&child), Some("sha256:1dx"));
        let images = vec![image(index.clone()), image(child.clone())];
        let out = offline_decisions(&p, &images);
        let child_decision = &out[1].as_ref().unwrap().decision;
        assert_eq!(child_decision.verdict, Verdict::Allow);
        assert!(child_decision.reason.contains("listed by index sha256:1dx"));

        // The index's key is dropped: both are newly denied.
        let p = policy("REQUIRE_ATTESTATION", &[("ci", &["k2"])], "");
        let out = offline_decisions(&p, &images);
        let e = out[1].clone().unwrap();
        assert!(e
            .notes
            .iter()
            .any(|n| n.contains("index sha256:1dx is denied too")));
        assert!(matches!(classify(&images[1], e), Diff::NewlyDenied(_)));

        // Without its index in the file, the child is judged alone.
        let out = offline_decisions(&p, &[image(child)]);
        let e = out[0].clone().unwrap();
        assert!(
            e.notes.iter().any(|n| n.contains("not in the audit file")),
            "{:?}",
            e.notes
        );
    }

    #[test]
    fn the_report_groups_by_rule() {
        let change = |repo: &str, rule: &str, tag: Option<&str>| Change {
            reference: format!("{R}/{repo}"),
            digest: "sha256:aa".into(),
            tag: tag.map(str::to_owned),
            old_verdict: "allow".into(),
            new_verdict: "deny".into(),
            old_rule: DEFAULT.into(),
            new_rule: rule.into(),
            reason: format!("because {repo}"),
        };
        let report = ReplayReport {
            replayed: 4,
            skipped: 1,
            newly_denied: vec![
                change("x", DEFAULT, Some("v1")),
                change("y", DEFAULT, None),
                change("z", "repository admission rule r.test/z/**", None),
            ],
            newly_allowed: Vec::new(),
            unchanged: 1,
            errors: vec!["line 2: bad".into()],
        };
        let text = report.render();
        assert!(text.starts_with(
            "replayed 4 image(s): 3 newly denied, 0 newly allowed, 1 unchanged (1 record(s) skipped, 1 error(s))\n"
        ), "{text}");
        assert!(text.contains(&format!(
            "newly denied (3):\n  {DEFAULT} (2):\n    r.test/x:v1@sha256:aa\n      was allow by {DEFAULT}, now deny\n      why: because x\n    r.test/y@sha256:aa\n"
        )), "{text}");
        assert!(
            text.contains("  repository admission rule r.test/z/** (1):\n"),
            "{text}"
        );
        assert!(text.contains("\nnewly allowed: none\n"), "{text}");
        assert!(text.ends_with("errors (1):\n  line 2: bad\n"), "{text}");
        let json = report.to_json();
        assert_eq!(json["newly_denied"][0]["tag"], "v1");
        assert_eq!(json["newly_denied"][1]["tag"], serde_json::Value::Null);
        assert_eq!(json["newly_denied_by_rule"][DEFAULT], 2);
        assert_eq!(json["errors"][0], "line 2: bad");
        assert_eq!(json["replayed"], 4);
    }
}
