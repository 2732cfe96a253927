//! The admission policy, in Binary Authorization's vocabulary, and its
//! evaluation. Pure: no I/O, so every mode and combination is unit-tested.
//!
//! - [`PolicyDoc`] / [`AttestorDoc`]: the YAML as written, owned by
//!   [`crate::config::policy`] (BinAuthz field names and enum values; an
//!   exported BinAuthz policy loads unchanged).
//! - [`Policy`]: the compiled form: patterns parsed, rules ordered by
//!   specificity, keys parsed. Built once per (re)load.
//! - [`Policy::rule_for`] picks the rule for a canonical name;
//!   [`evaluate`] turns the rule and the per-attestor evidence into a
//!   [`Decision`].

pub mod attestation;
pub mod pattern;

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::config::policy::{AttestorDoc, GlobalMode, PolicyDoc, RuleDoc};
/// The rule vocabulary, shared by the written and the compiled policy.
pub use crate::config::policy::{EnforcementMode, EvaluationMode, SignedIdentity};
use crate::crypto::{self, PublicKey};
pub use pattern::{canonical_pattern, Pattern, PatternIndex};

/// Which rule decided.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleSource {
    Allowlist(String),
    Default,
    Repository(String),
    /// No `policy:` configured: everything is served.
    NoPolicy,
    /// A signature or attestation artifact (never runnable).
    Artifact,
}

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleSource::Allowlist(p) => write!(f, "admission allowlist pattern {p}"),
            RuleSource::Default => f.write_str("default admission rule"),
            RuleSource::Repository(p) => write!(f, "repository admission rule {p}"),
            RuleSource::NoPolicy => f.write_str("no policy configured (ALWAYS_ALLOW)"),
            RuleSource::Artifact => f.write_str("signature artifact exemption"),
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub source: RuleSource,
    pub evaluation: EvaluationMode,
    pub enforcement: EnforcementMode,
    pub attestors: Vec<String>,
    pub signed_identity: SignedIdentity,
    /// Refuse evidence whose signed content names no repository.
    pub require_named_identity: bool,
}

/// A compiled attestor key.
#[derive(Debug)]
pub struct AttestorKey {
    /// The key id (`publicKeyId` in BinAuthz attestations); generated from
    /// the key's digest when the config gives none.
    pub id: String,
    pub key: PublicKey,
}

/// A compiled attestor.
#[derive(Debug)]
pub struct Attestor {
    pub name: String,
    pub keys: Vec<AttestorKey>,
    pub signature_repository: Option<String>,
    /// Required attestations; empty: a signature suffices.
    pub attestations: Vec<attestation::Requirement>,
}

/// The compiled policy.
#[derive(Debug)]
pub struct Policy {
    /// Changes whenever the policy or any key changes; part of every
    /// verdict cache key.
    pub revision: String,
    /// In the order written: the first match exempts.
    allowlist: Vec<Pattern>,
    allowlist_index: PatternIndex,
    default_rule: Rule,
    /// Most specific first.
    repository_rules: Vec<(Pattern, Rule)>,
    /// `repository_rules` by literal prefix, so a lookup tries only the
    /// rules that can match.
    repository_index: PatternIndex,
    pub attestors: HashMap<String, Attestor>,
    /// Human notes about accepted-but-ignored BinAuthz fields.
    pub ignored: Vec<String>,
    /// Name patterns read in their canonical form, as written → as read
    /// (`docker.io/nginx` → `docker.io/library/nginx`), for `check`.
    pub rewritten: Vec<String>,
    /// Every name pattern (canonical) with the field it came from.
    patterns: Vec<(String, String)>,
    /// Whether a `policy:` was configured at all.
    pub configured: bool,
}

/// What a policy load rejected, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        field: field.into(),
        message: message.into(),
    }
}

/// `projects/<p>/attestors/<name>` → `<name>`.
pub fn attestor_short_name(name: &str) -> &str {
    name.rsplit_once("/attestors/")
        .map(|(_, n)| n)
        .unwrap_or(name)
}

impl Policy {
    /// The policy used when no `policy:` is configured: serve everything.
    pub fn allow_all() -> Policy {
        Policy {
            revision: "none".into(),
            allowlist: Vec::new(),
            allowlist_index: PatternIndex::default(),
            default_rule: Rule {
                source: RuleSource::NoPolicy,
                evaluation: EvaluationMode::AlwaysAllow,
                enforcement: EnforcementMode::EnforcedBlockAndAuditLog,
                attestors: Vec::new(),
                signed_identity: SignedIdentity::MatchRepository,
                require_named_identity: false,
            },
            repository_rules: Vec::new(),
            repository_index: PatternIndex::default(),
            attestors: HashMap::new(),
            ignored: Vec::new(),
            rewritten: Vec::new(),
            patterns: Vec::new(),
            configured: false,
        }
    }

    /// Compiles a policy and its attestors; every problem names its field.
    pub fn compile(doc: &PolicyDoc, attestor_docs: &[AttestorDoc]) -> Result<Policy, PolicyError> {
        let mut attestors = HashMap::new();
        for (i, a) in attestor_docs.iter().enumerate() {
            let attestor = compile_attestor(a, i)?;
            if attestors.insert(attestor.name.clone(), attestor).is_some() {
                return Err(err(
                    format!("attestors[{i}].name"),
                    format!("attestor {:?} is defined twice", a.name),
                ));
            }
        }
        let compile_rule = |field: &str, source: RuleSource, rule: &RuleDoc| {
            let attestor_names: Vec<String> = rule
                .require_attestations_by
                .iter()
                .map(|n| attestor_short_name(n).to_owned())
                .collect();
            if rule.evaluation_mode == EvaluationMode::RequireAttestation {
                if attestor_names.is_empty() {
                    return Err(err(
                        format!("{field}.requireAttestationsBy"),
                        "REQUIRE_ATTESTATION needs at least one attestor",
                    ));
                }
                for name in &attestor_names {
                    if !attestors.contains_key(name) {
                        return Err(err(
                            format!("{field}.requireAttestationsBy"),
                            format!("attestor {name:?} is not defined under attestors:"),
                        ));
                    }
                }
            }
            if let SignedIdentity::RemapIdentity { prefix, .. } = &rule.signed_identity {
                if prefix.is_empty() {
                    return Err(err(
                        format!("{field}.signedIdentity.remapIdentity.prefix"),
                        "must not be empty",
                    ));
                }
            }
            Ok(Rule {
                source,
                evaluation: rule.evaluation_mode,
                enforcement: rule
                    .enforcement_mode
                    .unwrap_or(EnforcementMode::EnforcedBlockAndAuditLog),
                attestors: attestor_names,
                signed_identity: rule.signed_identity.clone(),
                require_named_identity: rule.require_named_identity,
            })
        };
        let default_rule = compile_rule(
            "policy.defaultAdmissionRule",
            RuleSource::Default,
            &doc.default_admission_rule,
        )?;
        // Requests are matched on canonical names, so patterns are read in
        // canonical form too; one that cannot be is an error, never a rule
        // that silently matches nothing.
        let mut rewritten = Vec::new();
        let mut patterns = Vec::new();
        let mut canonical = |field: &str, written: &str| -> Result<Pattern, PolicyError> {
            let text = canonical_pattern(written).map_err(|m| err(field, m))?;
            if text != written {
                rewritten.push(format!("{field}: {written:?} is read as {text:?}"));
            }
            patterns.push((field.to_owned(), text.clone()));
            Pattern::new(&text).map_err(|m| err(field, m))
        };
        let mut repository_rules: Vec<(Pattern, Rule)> = Vec::new();
        let mut written_as: HashMap<String, &str> = HashMap::new();
        for (key, rule) in &doc.repository_admission_rules {
            let field = format!("policy.repositoryAdmissionRules[{key:?}]");
            let pattern = canonical(&field, key)?;
            if let Some(other) = written_as.insert(pattern.as_str().to_owned(), key) {
                return Err(err(
                    &field,
                    format!(
                        "{key:?} and {other:?} both mean {:?}; keep one rule",
                        pattern.as_str()
                    ),
                ));
            }
            let source = RuleSource::Repository(pattern.as_str().to_owned());
            let rule = compile_rule(&field, source, rule)?;
            repository_rules.push((pattern, rule));
        }
        repository_rules.sort_by(|(a, _), (b, _)| Pattern::specificity_order(a, b));
        let allowlist = doc
            .admission_whitelist_patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                canonical(
                    &format!("policy.admissionWhitelistPatterns[{i}]"),
                    &p.name_pattern,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut ignored = Vec::new();
        if doc.global_policy_evaluation_mode == Some(GlobalMode::Enable) {
            ignored.push(
                "globalPolicyEvaluationMode: ENABLE exempts Google-maintained GKE system images; \
                 Portcullis has no such list and ignores it (list exemptions under admissionWhitelistPatterns)"
                    .to_owned(),
            );
        }
        for (field, value) in [
            ("clusterAdmissionRules", &doc.cluster_admission_rules),
            (
                "kubernetesNamespaceAdmissionRules",
                &doc.kubernetes_namespace_admission_rules,
            ),
            (
                "kubernetesServiceAccountAdmissionRules",
                &doc.kubernetes_service_account_admission_rules,
            ),
            (
                "istioServiceIdentityAdmissionRules",
                &doc.istio_service_identity_admission_rules,
            ),
        ] {
            if value.is_some() {
                ignored.push(format!(
                    "{field} is a Kubernetes/GKE scope with no meaning at pull time: ignored \
                     (use repositoryAdmissionRules to scope rules by image name)"
                ));
            }
        }
        let revision = revision_of(doc, attestor_docs);
        let allowlist_index = PatternIndex::new(&allowlist);
        let repository_index = PatternIndex::new(repository_rules.iter().map(|(p, _)| p));
        Ok(Policy {
            revision,
            allowlist,
            allowlist_index,
            default_rule,
            repository_rules,
            repository_index,
            attestors,
            ignored,
            rewritten,
            patterns,
            configured: true,
        })
    }

    /// Name patterns that can match no image served through upstreams
    /// named `registries`, each with its field and why (for `portcullis
    /// check` and the startup log): a typo in a registry, or a pattern
    /// written for another proxy's upstreams.
    pub fn unreachable_patterns(&self, registries: &[&str]) -> Vec<String> {
        self.patterns
            .iter()
            .filter_map(|(field, text)| {
                pattern::unreachable_reason(text, registries).map(|why| format!("{field}: {why}"))
            })
            .collect()
    }

    /// The rule that applies to `name` (`<registry>/<repository>`): an
    /// allowlist match exempts; else the most specific repository rule;
    /// else the default rule.
    ///
    /// The allowlist's first match in written order, and the first match
    /// in specificity order among the repository rules, found through
    /// their [`PatternIndex`]es: the cost grows with the length of `name`
    /// and the log of the number of rules, not with the number of rules.
    pub fn rule_for(&self, name: &str) -> Rule {
        let allowed = self
            .allowlist_index
            .first_match(name, |i| self.allowlist[i].matches(name));
        if let Some(i) = allowed {
            return Rule {
                source: RuleSource::Allowlist(self.allowlist[i].as_str().to_owned()),
                evaluation: EvaluationMode::AlwaysAllow,
                enforcement: EnforcementMode::EnforcedBlockAndAuditLog,
                attestors: Vec::new(),
                signed_identity: SignedIdentity::Ignore,
                require_named_identity: false,
            };
        }
        self.repository_index
            .first_match(name, |i| self.repository_rules[i].0.matches(name))
            .map(|i| self.repository_rules[i].1.clone())
            .unwrap_or_else(|| self.default_rule.clone())
    }

    /// The policy as data, for `/-/api/policy` and the dashboard.
    pub fn describe(&self) -> serde_json::Value {
        let rule = |r: &Rule| {
            serde_json::json!({
                "scope": r.source.to_string(),
                "evaluationMode": r.evaluation.to_string(),
                "enforcementMode": r.enforcement.to_string(),
                "requireAttestationsBy": r.attestors,
            })
        };
        let mut attestors: Vec<_> = self.attestors.values().collect();
        attestors.sort_by(|a, b| a.name.cmp(&b.name));
        serde_json::json!({
            "configured": self.configured,
            "revision": self.revision,
            "allowlist": self.allowlist.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "repositoryRules": self.repository_rules.iter().map(|(_, r)| rule(r)).collect::<Vec<_>>(),
            "defaultRule": rule(&self.default_rule),
            "attestors": attestors.iter().map(|a| serde_json::json!({
                "name": a.name,
                "keys": a.keys.iter().map(|k| serde_json::json!({
                    "id": k.id,
                    "algorithm": k.key.algorithm().name(),
                })).collect::<Vec<_>>(),
                "signatureRepository": a.signature_repository,
            })).collect::<Vec<_>>(),
            "ignored": self.ignored,
        })
    }

    /// A summary for `portcullis check` and startup logs.
    pub fn summary(&self) -> String {
        if !self.configured {
            return "policy: NONE — every image is served unchecked (ALWAYS_ALLOW). \
                    Add a policy: section to enforce signatures.\n"
                .to_owned();
        }
        let mut out = format!("policy revision {}\n", self.revision);
        for p in &self.allowlist {
            out.push_str(&format!("  allowlist: {}\n", p.as_str()));
        }
        let describe = |r: &Rule| {
            let mut s = format!("{} / {}", r.evaluation, r.enforcement);
            if !r.attestors.is_empty() {
                s.push_str(&format!(" by [{}]", r.attestors.join(", ")));
            }
            s
        };
        for (p, r) in &self.repository_rules {
            out.push_str(&format!("  rule {}: {}\n", p.as_str(), describe(r)));
        }
        out.push_str(&format!(
            "  default rule: {}\n",
            describe(&self.default_rule)
        ));
        let mut names: Vec<_> = self.attestors.keys().collect();
        names.sort();
        for name in names {
            let a = &self.attestors[name];
            let keys: Vec<String> = a
                .keys
                .iter()
                .map(|k| format!("{} ({})", k.id, k.key.algorithm().name()))
                .collect();
            out.push_str(&format!("  attestor {name}: keys {}", keys.join(", ")));
            if let Some(repo) = &a.signature_repository {
                out.push_str(&format!(", signatures in {repo}"));
            }
            out.push('\n');
        }
        for note in &self.ignored {
            out.push_str(&format!("  ignored: {note}\n"));
        }
        for note in &self.rewritten {
            out.push_str(&format!("  canonical name: {note}\n"));
        }
        out
    }
}

fn compile_attestor(doc: &AttestorDoc, index: usize) -> Result<Attestor, PolicyError> {
    let field = format!("attestors[{index}]");
    let name = attestor_short_name(&doc.name).to_owned();
    if name.is_empty() {
        return Err(err(format!("{field}.name"), "must not be empty"));
    }
    if doc.public_keys.is_empty() {
        return Err(err(
            format!("{field}.publicKeys"),
            format!("attestor {name:?} has no public keys"),
        ));
    }
    let mut keys = Vec::new();
    for (k, key) in doc.public_keys.iter().enumerate() {
        let kfield = format!("{field}.publicKeys[{k}]");
        if key.ascii_armored_pgp_public_key.is_some() {
            return Err(err(
                format!("{kfield}.asciiArmoredPgpPublicKey"),
                "PGP attestor keys are not supported; use a pkixPublicKey",
            ));
        }
        let pkix = key
            .pkix_public_key
            .as_ref()
            .ok_or_else(|| err(format!("{kfield}.pkixPublicKey"), "missing"))?;
        let algorithm = crypto::Algorithm::parse(&pkix.signature_algorithm)
            .map_err(|m| err(format!("{kfield}.pkixPublicKey.signatureAlgorithm"), m))?;
        let public = PublicKey::from_pem(&pkix.public_key_pem, algorithm)
            .map_err(|m| err(format!("{kfield}.pkixPublicKey.publicKeyPem"), m))?;
        let id = match &key.id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => {
                let der = crypto::pem_decode(&pkix.public_key_pem)
                    .map(|(_, d)| d)
                    .unwrap_or_default();
                format!("sha256:{}", hex::encode(Sha256::digest(der)))
            }
        };
        keys.push(AttestorKey { id, key: public });
    }
    let attestations = doc
        .attestations
        .iter()
        .enumerate()
        .map(|(i, r)| {
            attestation::Requirement::compile(r)
                .map_err(|m| err(format!("{field}.attestations[{i}]"), m))
        })
        .collect::<Result<_, _>>()?;
    Ok(Attestor {
        name,
        keys,
        signature_repository: doc.signature_repository.clone(),
        attestations,
    })
}

fn revision_of(doc: &PolicyDoc, attestors: &[AttestorDoc]) -> String {
    let text = serde_json::to_vec(&(doc, attestors)).unwrap_or_default();
    hex::encode(&Sha256::digest(text)[..6])
}

/// The result of checking one piece of evidence (one signature) for one
/// attestor.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        }
    }
}

/// Where a piece of evidence was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl Evidence {
    pub fn new(kind: EvidenceKind, source: impl Into<String>, check: Check) -> Evidence {
        Evidence {
            kind,
            source: source.into(),
            predicate_type: None,
            note: None,
            check,
        }
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
        text
    }
}

/// The policy's answer for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

#[cfg(test)]
mod tests;
