//! One audit record per decision: what was asked, by whom, which rule
//! applied, what the evidence showed, and what happened.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::policy::{AttestorResult, Check, Decision, Verdict};

/// Who asked, as the serving layer saw it.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub request_id: u64,
    pub addr: Option<SocketAddr>,
    pub user_agent: Option<String>,
    /// The authenticated identity, when the client authenticated.
    pub identity: Option<String>,
}

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    Manifest,
    Blob,
}

/// The verdict as recorded (and as used in metrics labels and alerts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordedVerdict {
    Allow,
    Exempt,
    Deny,
    DryrunDeny,
    /// Denied by policy, served because a client used break-glass.
    Breakglass,
}

impl RecordedVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordedVerdict::Allow => "allow",
            RecordedVerdict::Exempt => "exempt",
            RecordedVerdict::Deny => "deny",
            RecordedVerdict::DryrunDeny => "dryrun-deny",
            RecordedVerdict::Breakglass => "breakglass",
        }
    }
}

impl From<&Verdict> for RecordedVerdict {
    fn from(v: &Verdict) -> Self {
        match v {
            Verdict::Allow => RecordedVerdict::Allow,
            Verdict::Exempt => RecordedVerdict::Exempt,
            Verdict::Deny => RecordedVerdict::Deny,
            Verdict::DryRunDeny => RecordedVerdict::DryrunDeny,
        }
    }
}

/// One piece of evidence as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceRecord {
    /// `sig-tag`, `att-tag`, `referrer` or `store` (absent in records
    /// written before evidence kinds existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub source: String,
    /// The signed in-toto predicate type, for verified attestations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
    /// Unverified context, e.g. transparency-log entries of a bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `valid`, `unknown-key`, `other-digest`, `other-repository`, `malformed`.
    pub result: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// For keyless evidence that verified: the certificate's identity,
    /// issuer, log index and integrated time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyless: Option<crate::policy::KeylessSigner>,
}

/// One attestor's outcome as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestorRecord {
    pub name: String,
    pub satisfied: bool,
    pub summary: String,
    pub evidence: Vec<EvidenceRecord>,
}

/// A decision record: one JSON line in the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub request_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Who is answerable for the pull: the break-glass credential's name
    /// when glass was broken, else the authenticated client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The identity the client authenticated as (`clientAuth`), whatever
    /// else happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_identity: Option<String>,
    pub subject: Subject,
    /// Canonical `<registry>/<repository>`.
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub digest: String,
    pub rule: String,
    pub evaluation_mode: String,
    pub enforcement_mode: String,
    pub verdict: RecordedVerdict,
    /// Bounded category for metrics and filters (see [`reason_category`]).
    pub reason_category: String,
    pub reason: String,
    pub attestors: Vec<AttestorRecord>,
    pub cache_hit: bool,
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_justification: Option<String>,
    /// The replica that decided, when one is named (`state.replica`, or
    /// any fleet): the fleet's decision list mixes replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// The upstream could not be reached and the image was served from
    /// the content store, verified again under the current policy: why
    /// the upstream was not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
}

/// A small, fixed vocabulary for why a decision went the way it did.
pub fn reason_category(decision: &Decision) -> &'static str {
    if decision.reason.starts_with("blob is not part") {
        return "blob-not-admitted";
    }
    match decision.verdict {
        Verdict::Allow | Verdict::Exempt => return "ok",
        Verdict::Deny | Verdict::DryRunDeny => {}
    }
    if decision.reason.starts_with("ALWAYS_DENY") {
        return "always-deny";
    }
    let failing = decision.attestors.iter().filter(|a| !a.satisfied);
    let mut worst = "no-signatures";
    for a in failing {
        for e in &a.evidence {
            let c = check_name(&e.check);
            // Report the most informative failure seen.
            let rank = |c: &str| match c {
                "condition-failed" => 6,
                "other-predicate" => 5,
                "other-digest" => 4,
                "other-repository" => 3,
                "unknown-key" => 2,
                "malformed" => 1,
                _ => 0,
            };
            if rank(c) > rank(worst) {
                worst = c;
            }
        }
    }
    worst
}

fn check_name(check: &Check) -> &'static str {
    match check {
        Check::Valid { .. } => "valid",
        Check::UnknownKey => "unknown-key",
        Check::OtherDigest { .. } => "other-digest",
        Check::OtherRepository { .. } => "other-repository",
        Check::Malformed { .. } => "malformed",
        Check::OtherPredicate { .. } => "other-predicate",
        Check::ConditionFailed { .. } => "condition-failed",
        Check::Unsupported { .. } => "unsupported",
        Check::Unverified { .. } => "unverified",
    }
}

impl DecisionRecord {
    /// The record of a decision as it was applied, stamped with the time
    /// it was made; a break-glass serve records who broke the glass and
    /// why, as part of the decision (never patched in afterwards).
    pub fn of(decided: &super::Decided) -> DecisionRecord {
        let client = &decided.client;
        let decision = &decided.decision;
        let break_glass = decided.break_glass.as_ref();
        DecisionRecord {
            time: rfc3339(decided.at),
            request_id: client.request_id,
            client_addr: client.addr.map(|a| a.to_string()),
            user_agent: client.user_agent.clone(),
            identity: match break_glass {
                Some(used) => Some(used.identity().to_owned()),
                None => client.identity.clone(),
            },
            client_identity: client.identity.clone(),
            subject: decided.subject,
            reference: decided.reference.clone(),
            tag: decided.tag.clone(),
            digest: decided.digest.to_string(),
            rule: decision.rule.to_string(),
            evaluation_mode: decision.evaluation.to_string(),
            enforcement_mode: decision.enforcement.to_string(),
            verdict: decided.verdict(),
            reason_category: reason_category(decision).to_owned(),
            reason: decided.message(),
            attestors: decision.attestors.iter().map(attestor_record).collect(),
            cache_hit: decided.cache_hit,
            latency_ms: decided.latency.as_secs_f64() * 1000.0,
            break_glass_justification: break_glass.map(|used| used.justification().to_owned()),
            replica: decided.replica.as_deref().map(str::to_owned),
            stale: decided.stale.as_deref().map(str::to_owned),
        }
    }
}

fn attestor_record(a: &AttestorResult) -> AttestorRecord {
    AttestorRecord {
        name: a.name.clone(),
        satisfied: a.satisfied,
        summary: a.summary(),
        evidence: a
            .evidence
            .iter()
            .map(|e| EvidenceRecord {
                kind: Some(e.kind.as_str().to_owned()),
                source: e.source.clone(),
                predicate_type: e.predicate_type.clone(),
                note: e.note.clone(),
                result: check_name(&e.check).to_owned(),
                detail: e.check.describe(),
                key_id: match &e.check {
                    Check::Valid { key_id } => Some(key_id.clone()),
                    _ => None,
                },
                keyless: e.keyless.clone(),
            })
            .collect(),
    }
}

/// Formats a time as RFC 3339 UTC with milliseconds, without a date crate.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        let at = |secs: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_798_502_400), "2026-12-29T00:00:00.000Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59.000Z");
    }
}
