//! What a replay found: the images whose fate changes ([`Change`]), the
//! report for people and as JSON ([`ReplayReport`]), and how a recorded
//! verdict compares with the candidate's, in one line of why.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::audit::Image;
use super::Evaluated;
use crate::audit::record::{DecisionRecord, RecordedVerdict};
use crate::policy::{Check, Decision, EvaluationMode};

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

#[derive(Debug)]
pub(super) enum Diff {
    NewlyDenied(Change),
    NewlyAllowed(Change),
    Unchanged,
}

/// Compares the recorded verdict with the candidate's.
pub(super) fn classify(image: &Image, evaluated: Evaluated) -> Diff {
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
