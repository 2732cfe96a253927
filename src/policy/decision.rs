//! What evaluating a rule produces: the check of each piece of evidence
//! ([`Check`], [`Evidence`]), each attestor's result, the [`Verdict`] and
//! the [`Decision`] with its reason. Pure: [`evaluate`] turns a rule and
//! the per-attestor evidence into a decision.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{attestation, EnforcementMode, EvaluationMode, Policy, Rule, RuleSource};

/// The result of checking one piece of evidence (one signature) for one
/// attestor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// Verified with the attestor's key `key_id`, and binds this image.
    Valid { key_id: String },
    /// Does not verify with any of the attestor's keys: another key, or an
    /// altered payload.
    UnknownKey,
    /// Verified, but signs another digest.
    OtherDigest { signed: String },
    /// Verified, but names another repository.
    OtherRepository { signed: String },
    /// Unusable: undecodable signature, payload not in the expected form,
    /// unknown critical fields…
    Malformed { reason: String },
    /// A valid attestation, but of another predicate type than required.
    OtherPredicate { signed: String },
    /// A valid attestation of the required type whose predicate fails a
    /// condition.
    ConditionFailed { reason: String },
    /// Evidence of a kind Portcullis cannot verify (keyless bundles, PGP
    /// attestations): never satisfies an attestor.
    Unsupported { reason: String },
    /// Keyless evidence whose verification failed: `reason` names the
    /// check (certificate chain, SCT, log entry, signing time, identity).
    Unverified { reason: String },
}

impl Check {
    fn category(&self) -> &'static str {
        match self {
            Check::Valid { .. } => "valid",
            Check::UnknownKey => "by unknown key or altered",
            Check::OtherDigest { .. } => "for another digest",
            Check::OtherRepository { .. } => "for another repository",
            Check::Malformed { .. } => "malformed",
            Check::OtherPredicate { .. } => "of another predicate type",
            Check::ConditionFailed { .. } => "failing a condition",
            Check::Unsupported { .. } => "unsupported",
            Check::Unverified { .. } => "failing keyless verification",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Check::Valid { key_id } => format!("valid, verified with key {key_id}"),
            Check::UnknownKey => {
                "does not verify with any of the attestor's keys (signed by another key, or the payload was altered)".into()
            }
            Check::OtherDigest { signed } => format!("valid signature, but for another digest ({signed})"),
            Check::OtherRepository { signed } => {
                format!("valid signature, but for another repository ({signed})")
            }
            Check::Malformed { reason } => format!("malformed: {reason}"),
            Check::OtherPredicate { signed } => {
                format!("valid attestation, but of predicate type {signed}")
            }
            Check::ConditionFailed { reason } => {
                format!("valid attestation, but a condition fails: {reason}")
            }
            Check::Unsupported { reason } => format!("not verifiable: {reason}"),
            Check::Unverified { reason } => format!("keyless verification failed: {reason}"),
        }
    }
}

/// Where a piece of evidence was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EvidenceKind {
    /// A cosign `sha256-<hex>.sig` tag (simple signing).
    SigTag,
    /// A cosign `sha256-<hex>.att` tag (DSSE envelopes).
    AttTag,
    /// An OCI 1.1 referrer (sigstore bundle), through the referrers API
    /// or its `sha256-<hex>` tag fallback.
    Referrer,
    /// The local attestation store (`attestationStore`).
    Store,
}

impl EvidenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceKind::SigTag => "sig-tag",
            EvidenceKind::AttTag => "att-tag",
            EvidenceKind::Referrer => "referrer",
            EvidenceKind::Store => "store",
        }
    }

    pub fn parse(text: &str) -> Option<EvidenceKind> {
        [
            EvidenceKind::SigTag,
            EvidenceKind::AttTag,
            EvidenceKind::Referrer,
            EvidenceKind::Store,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

impl fmt::Display for EvidenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One signature or attestation looked at, where it came from, and what
/// it showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub kind: EvidenceKind,
    /// Where it was found, e.g. `127.0.0.1:5001/demo/app:sha256-….sig layer 2`.
    pub source: String,
    /// The signed in-toto `predicateType`, for attestations whose
    /// signature verified.
    pub predicate_type: Option<String>,
    /// What else is worth knowing, unverified (e.g. a bundle's
    /// transparency-log entries, recorded but not required).
    pub note: Option<String>,
    pub check: Check,
    /// Who signed, for keyless evidence that verified: the certificate's
    /// identity and the log entry that vouched for the signing time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyless: Option<KeylessSigner>,
}

/// The verified signer of keyless evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeylessSigner {
    /// The key id evidence it signed carries: `keyless:<subject>`.
    pub key_id: String,
    /// The certificate's subject (an email address, a workflow URI ...).
    pub subject: String,
    /// The OIDC issuer that vouched for it.
    pub issuer: String,
    /// SHA-256 of the signing certificate (DER), lowercase hex.
    pub certificate_sha256: String,
    /// The transparency log entry: its index, and its integrated time
    /// (seconds since the epoch; Rekor v2 logs have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_index: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrated_time: Option<i64>,
}

impl fmt::Display for KeylessSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (issuer {})", self.subject, self.issuer)?;
        if let Some(index) = self.log_index {
            write!(f, ", log index {index}")?;
        }
        if let Some(at) = self.integrated_time {
            write!(f, ", integrated at {at}")?;
        }
        Ok(())
    }
}

impl Evidence {
    pub fn new(kind: EvidenceKind, source: impl Into<String>, check: Check) -> Evidence {
        Evidence {
            kind,
            source: source.into(),
            predicate_type: None,
            note: None,
            check,
            keyless: None,
        }
    }

    pub fn with_keyless(mut self, signer: Option<KeylessSigner>) -> Evidence {
        self.keyless = signer;
        self
    }

    pub fn with_note(mut self, note: Option<String>) -> Evidence {
        self.note = note;
        self
    }

    pub fn with_predicate_type(mut self, predicate_type: Option<String>) -> Evidence {
        self.predicate_type = predicate_type;
        self
    }
}

/// How one attestor fared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestorResult {
    pub name: String,
    pub satisfied: bool,
    pub evidence: Vec<Evidence>,
    /// The attestor requires attestations (`.att`), not signatures.
    pub wants_attestation: bool,
}

impl AttestorResult {
    /// `no valid signature (3 checked: 1 by unknown key or altered, 2 for another digest)`.
    pub fn summary(&self) -> String {
        if self.satisfied {
            let valid = self
                .evidence
                .iter()
                .find(|e| matches!(e.check, Check::Valid { .. }));
            let key = valid.and_then(|e| match &e.check {
                Check::Valid { key_id } => Some(key_id.as_str()),
                _ => None,
            });
            // Say so when what counted binds the digest but no repository.
            let unbound = valid
                .and_then(|e| e.note.as_deref())
                .is_some_and(|n| n.contains(UNNAMED_NOTE));
            return format!(
                "verified (key {}){}",
                key.unwrap_or("?"),
                if unbound {
                    format!("; {UNNAMED_NOTE}")
                } else {
                    String::new()
                }
            );
        }
        if self.evidence.is_empty() {
            return if self.wants_attestation {
                "no valid attestation (no attestations found)".into()
            } else {
                "no valid signature (no signatures found)".into()
            };
        }
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for e in &self.evidence {
            let c = e.check.category();
            match counts.iter_mut().find(|(k, _)| *k == c) {
                Some((_, n)) => *n += 1,
                None => counts.push((c, 1)),
            }
        }
        let parts: Vec<String> = counts.iter().map(|(c, n)| format!("{n} {c}")).collect();
        let attestation = self.wants_attestation
            || self.evidence.iter().any(|e| {
                matches!(
                    e.check,
                    Check::OtherPredicate { .. } | Check::ConditionFailed { .. }
                ) || e
                    .predicate_type
                    .as_deref()
                    .is_some_and(|p| p != attestation::SIGNATURE_PREDICATE_TYPE)
            });
        let mut text = format!(
            "no valid {} ({} checked: {})",
            if attestation {
                "attestation"
            } else {
                "signature"
            },
            self.evidence.len(),
            parts.join(", ")
        );
        if let Some(reason) = self.evidence.iter().find_map(|e| match &e.check {
            Check::ConditionFailed { reason } => Some(reason),
            _ => None,
        }) {
            text.push_str(&format!("; condition failed: {reason}"));
        }
        // The first failing keyless check, so the client sees which.
        if let Some(reason) = self.evidence.iter().find_map(|e| match &e.check {
            Check::Unverified { reason } => Some(reason),
            _ => None,
        }) {
            text.push_str(&format!("; keyless verification failed: {reason}"));
        }
        text
    }
}

/// The policy's answer for one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Served: the rule allows it, or its attestors are satisfied.
    Allow,
    /// Served because it is exempt (allowlist) or no policy is configured.
    Exempt,
    /// Not served.
    Deny,
    /// Served under a dry-run rule that would have denied it.
    DryRunDeny,
}

/// A decision with everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub rule: RuleSource,
    pub evaluation: EvaluationMode,
    pub enforcement: EnforcementMode,
    pub attestors: Vec<AttestorResult>,
    /// Why, in one line (without the image name).
    pub reason: String,
}

impl Decision {
    /// Whether the image may be served.
    pub fn serves(&self) -> bool {
        self.verdict != Verdict::Deny
    }

    /// The denial message, in Binary Authorization's words.
    /// `subject` names what was decided on: `image <name>@<digest>` or
    /// `blob <name>@<digest>`.
    pub fn message(&self, subject: &str) -> String {
        match self.verdict {
            Verdict::Deny => format!("{subject} denied by {}: {}", self.rule, self.reason),
            Verdict::DryRunDeny => format!(
                "{subject} would be denied by {} (dry run, served): {}",
                self.rule, self.reason
            ),
            Verdict::Allow | Verdict::Exempt => {
                format!("{subject} allowed by {}: {}", self.rule, self.reason)
            }
        }
    }

    /// A short form for the HTTP/1.1 reason phrase, which is all containerd
    /// and kubelet show of a HEAD denial.
    pub fn short_reason(&self) -> String {
        let failing: Vec<String> = self
            .attestors
            .iter()
            .filter(|a| !a.satisfied)
            .map(|a| {
                let short = match (a.evidence.is_empty(), a.wants_attestation) {
                    (true, false) => "no signatures found",
                    (true, true) => "no attestations found",
                    (false, false) => "no valid signature",
                    (false, true) => "no valid attestation",
                };
                format!("attestor {}: {short}", a.name)
            })
            .collect();
        if failing.is_empty() {
            format!("denied by policy: {}", self.reason)
        } else {
            format!("denied by policy: {}", failing.join("; "))
        }
    }
}

/// Evaluates `rule` given each required attestor's evidence (pure).
/// Attestors are ANDed; within one attestor any valid evidence suffices.
/// An attestor with no entry in `evidence` has no evidence.
/// How evidence whose signed content names no repository is noted (and
/// how a decision that rests on it says so).
pub const UNNAMED_NOTE: &str = "the signed content names no repository: bound by digest only";

/// A refusal by `rule` for a reason found before any evidence was weighed
/// (an ambiguous manifest, evidence beyond limits): `Deny`, or
/// `DryRunDeny` (served, logged) under a dry-run rule.
pub fn refuse(rule: &Rule, reason: String) -> Decision {
    Decision {
        verdict: match rule.enforcement {
            EnforcementMode::EnforcedBlockAndAuditLog => Verdict::Deny,
            EnforcementMode::DryrunAuditLogOnly => Verdict::DryRunDeny,
        },
        rule: rule.source.clone(),
        evaluation: rule.evaluation,
        enforcement: rule.enforcement,
        attestors: Vec::new(),
        reason,
    }
}

pub fn evaluate(rule: &Rule, evidence: &HashMap<String, Vec<Evidence>>) -> Decision {
    evaluate_with(rule, evidence, |_| false)
}

/// [`evaluate`], knowing from `policy` which attestors require
/// attestations rather than signatures (for the wording of reasons).
pub fn evaluate_in(
    policy: &Policy,
    rule: &Rule,
    evidence: &HashMap<String, Vec<Evidence>>,
) -> Decision {
    evaluate_with(rule, evidence, |name| {
        policy
            .attestors
            .get(name)
            .is_some_and(|a| !a.attestations.is_empty())
    })
}

fn evaluate_with(
    rule: &Rule,
    evidence: &HashMap<String, Vec<Evidence>>,
    wants_attestation: impl Fn(&str) -> bool,
) -> Decision {
    let decide = |denied: bool, attestors: Vec<AttestorResult>, reason: String| {
        let verdict = match (denied, rule.enforcement) {
            (false, _)
                if matches!(rule.source, RuleSource::Allowlist(_) | RuleSource::NoPolicy) =>
            {
                Verdict::Exempt
            }
            (false, _) => Verdict::Allow,
            (true, EnforcementMode::EnforcedBlockAndAuditLog) => Verdict::Deny,
            (true, EnforcementMode::DryrunAuditLogOnly) => Verdict::DryRunDeny,
        };
        Decision {
            verdict,
            rule: rule.source.clone(),
            evaluation: rule.evaluation,
            enforcement: rule.enforcement,
            attestors,
            reason,
        }
    };
    match rule.evaluation {
        EvaluationMode::AlwaysAllow => decide(false, Vec::new(), "ALWAYS_ALLOW".into()),
        EvaluationMode::AlwaysDeny => decide(
            true,
            Vec::new(),
            "ALWAYS_DENY: no image may be pulled from here".into(),
        ),
        EvaluationMode::RequireAttestation => {
            let results: Vec<AttestorResult> = rule
                .attestors
                .iter()
                .map(|name| {
                    let evidence = evidence.get(name).cloned().unwrap_or_default();
                    let satisfied = evidence
                        .iter()
                        .any(|e| matches!(e.check, Check::Valid { .. }));
                    AttestorResult {
                        name: name.clone(),
                        satisfied,
                        evidence,
                        wants_attestation: wants_attestation(name),
                    }
                })
                .collect();
            // An empty attestor list never satisfies (compile rejects it too).
            let all = !results.is_empty() && results.iter().all(|r| r.satisfied);
            let reason = results
                .iter()
                .filter(|r| all || !r.satisfied)
                .map(|r| format!("attestor {}: {}", r.name, r.summary()))
                .collect::<Vec<_>>()
                .join("; ");
            let reason = if reason.is_empty() {
                "no attestors required".to_owned()
            } else {
                reason
            };
            decide(!all, results, reason)
        }
    }
}
