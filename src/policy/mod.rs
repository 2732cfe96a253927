//! The admission policy, in Binary Authorization's vocabulary, and its
//! evaluation. Pure: no I/O, so every mode and combination is unit-tested.
//!
//! - `PolicyDoc` / `AttestorDoc`: the YAML as written, owned by
//!   [`crate::config::policy`] (BinAuthz field names and enum values; an
//!   exported BinAuthz policy loads unchanged).
//! - [`Policy`]: the compiled form ([`Policy::compile`]): patterns parsed,
//!   rules ordered by specificity, keys parsed. Built once per (re)load.
//! - [`Decision`] and what it is made of: each piece of evidence's
//!   [`Check`], each attestor's result, the [`Verdict`].
//! - [`Policy::rule_for`] picks the rule for a canonical name;
//!   [`evaluate`] turns the rule and the per-attestor evidence into a
//!   [`Decision`].
//!
//! May use: `oci`, `crypto`, `config` (the policy's YAML shape). Must never
//! use: anything that does I/O (upstream, verify, serve, audit) or the
//! layers above them.

pub mod attestation;
mod compile;
mod decision;
pub mod pattern;

use std::collections::HashMap;
use std::fmt;

/// The rule vocabulary, shared by the written and the compiled policy.
pub use crate::config::policy::{EnforcementMode, EvaluationMode, SignedIdentity};
use crate::crypto::PublicKey;
pub use decision::{
    evaluate, evaluate_in, refuse, AttestorResult, Check, Decision, Evidence, EvidenceKind,
    KeylessSigner, Verdict, UNNAMED_NOTE,
};
pub use pattern::{canonical_pattern, Pattern, PatternIndex};

/// Which rule decided.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RuleSource {
    Allowlist(String),
    Default,
    Repository(String),
    /// The `clusterAdmissionRules` entry of this instance's `cluster:`.
    Cluster(String),
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
            RuleSource::Cluster(c) => write!(f, "cluster admission rule {c}"),
            RuleSource::NoPolicy => f.write_str("no policy configured (ALWAYS_ALLOW)"),
            RuleSource::Artifact => f.write_str("signature artifact exemption"),
        }
    }
}

impl RuleSource {
    /// A short identifier of the rule, stable across reloads and replicas,
    /// for metric labels: `default`, `no-policy`, `artifact`, or
    /// `allowlist-<hex>` / `repository-<hex>` / `cluster-<hex>`, the hex
    /// being the first 6 bytes of the SHA-256 of the (canonical) pattern
    /// or the cluster's name. Never free text:
    /// `portcullis_rule_info` maps an id back to its pattern.
    pub fn id(&self) -> String {
        let short = |pattern: &str| {
            use sha2::{Digest as _, Sha256};
            hex::encode(&Sha256::digest(pattern.as_bytes())[..6])
        };
        match self {
            RuleSource::Allowlist(p) => format!("allowlist-{}", short(p)),
            RuleSource::Default => "default".into(),
            RuleSource::Repository(p) => format!("repository-{}", short(p)),
            RuleSource::Cluster(c) => format!("cluster-{}", short(c)),
            RuleSource::NoPolicy => "no-policy".into(),
            RuleSource::Artifact => "artifact".into(),
        }
    }

    /// What kind of rule: `allowlist`, `default`, `repository`,
    /// `cluster`, `no-policy` or `artifact`.
    pub fn kind(&self) -> &'static str {
        match self {
            RuleSource::Allowlist(_) => "allowlist",
            RuleSource::Default => "default",
            RuleSource::Repository(_) => "repository",
            RuleSource::Cluster(_) => "cluster",
            RuleSource::NoPolicy => "no-policy",
            RuleSource::Artifact => "artifact",
        }
    }

    /// The name pattern of an allowlist entry or a repository rule (a
    /// pinned allowlist entry's with its digest), or a cluster rule's
    /// cluster name.
    pub fn pattern(&self) -> Option<&str> {
        match self {
            RuleSource::Allowlist(p) | RuleSource::Repository(p) | RuleSource::Cluster(p) => {
                Some(p)
            }
            RuleSource::Default | RuleSource::NoPolicy | RuleSource::Artifact => None,
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
    /// Keyless signers that count besides the keys.
    pub keyless: Option<Keyless>,
}

/// A compiled `keyless:`: who may sign, under which trust material.
#[derive(Debug)]
pub struct Keyless {
    /// Any one suffices.
    pub identities: Vec<crate::sigstore::IdentityPolicy>,
    pub root: std::sync::Arc<crate::sigstore::TrustedRoot>,
    /// Where the root came from: the file, or the embedded public-good
    /// root.
    pub root_source: String,
    pub require_tlog: bool,
    pub require_sct: bool,
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
    /// Allowlist entries pinned to a digest (`<name pattern>@sha256:…`):
    /// they exempt exactly that content, in the repositories the name
    /// pattern matches. As written, then the digest.
    pinned: Vec<(Pattern, crate::oci::Digest)>,
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
            pinned: Vec::new(),
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

    /// The rule for the image whose manifest digest is `digest` in `name`:
    /// an allowlist entry pinned to that digest exempts it; otherwise
    /// [`Policy::rule_for`]. The verdict stays a function of the name and
    /// the digest, as every cache and shared verdict assumes.
    pub fn rule_for_image(&self, name: &str, digest: &crate::oci::Digest) -> Rule {
        let pinned = self
            .pinned
            .iter()
            .find(|(pattern, pin)| pin == digest && pattern.matches(name));
        if let Some((pattern, pin)) = pinned {
            return Rule {
                source: RuleSource::Allowlist(format!("{}@{pin}", pattern.as_str())),
                evaluation: EvaluationMode::AlwaysAllow,
                enforcement: EnforcementMode::EnforcedBlockAndAuditLog,
                attestors: Vec::new(),
                signed_identity: SignedIdentity::Ignore,
                require_named_identity: false,
            };
        }
        self.rule_for(name)
    }

    /// The allowlist entries pinned to a digest, as `<pattern>@<digest>`.
    pub fn pinned_allowlist(&self) -> impl Iterator<Item = String> + '_ {
        self.pinned
            .iter()
            .map(|(p, d)| format!("{}@{d}", p.as_str()))
    }

    /// The allowlist, in the order written (the first match exempts).
    pub fn allowlist(&self) -> &[Pattern] {
        &self.allowlist
    }

    /// The repository rules, most specific first.
    pub fn repository_rules(&self) -> impl Iterator<Item = (&Pattern, &Rule)> {
        self.repository_rules.iter().map(|(p, r)| (p, r))
    }

    /// The rule for names no other rule matches.
    pub fn default_rule(&self) -> &Rule {
        &self.default_rule
    }

    /// Every rule a decision can name, once each: the allowlist entries,
    /// the repository rules, the default rule and the signature-artifact
    /// exemption.
    pub fn rule_sources(&self) -> Vec<RuleSource> {
        let mut sources: Vec<RuleSource> = self
            .allowlist
            .iter()
            .map(|p| RuleSource::Allowlist(p.as_str().to_owned()))
            .chain(self.pinned_allowlist().map(RuleSource::Allowlist))
            .collect();
        sources.extend(self.repository_rules.iter().map(|(_, r)| r.source.clone()));
        sources.push(self.default_rule.source.clone());
        sources.push(RuleSource::Artifact);
        sources.dedup();
        sources
    }

    /// The attestors, by name.
    pub fn attestors_by_name(&self) -> Vec<&Attestor> {
        let mut attestors: Vec<_> = self.attestors.values().collect();
        attestors.sort_by(|a, b| a.name.cmp(&b.name));
        attestors
    }
}

#[cfg(test)]
mod tests;
