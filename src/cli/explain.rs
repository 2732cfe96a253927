//! A decision in words, for people: what `portcullis verify` prints.

use std::fmt::Write as _;

use crate::oci::Reference;
use crate::policy::{Decision, Verdict};

/// A decision in words, for people.
pub fn explain(decision: &Decision, image: &str, requested: &Reference) -> String {
    let mut out = String::new();
    let verdict = match decision.verdict {
        Verdict::Allow => "ALLOW",
        Verdict::Exempt => "ALLOW (exempt)",
        Verdict::Deny => "DENY",
        Verdict::DryRunDeny => "ALLOW (dry run: would deny)",
    };
    let _ = writeln!(out, "image:    {image}");
    if let Reference::Tag(tag) = requested {
        let _ = writeln!(out, "          (tag {tag} resolved at the registry)");
    }
    let _ = writeln!(
        out,
        "rule:     {} ({}, {})",
        decision.rule, decision.evaluation, decision.enforcement
    );
    let _ = writeln!(out, "verdict:  {verdict}");
    let _ = writeln!(
        out,
        "why:      {}",
        decision.message(&format!("image {image}"))
    );
    for a in &decision.attestors {
        let _ = writeln!(
            out,
            "attestor {}: {}",
            a.name,
            if a.satisfied {
                "satisfied"
            } else {
                "NOT satisfied"
            }
        );
        if a.evidence.is_empty() {
            let _ = writeln!(
                out,
                "  no evidence was found for this digest (looked in the cosign sha256-<hex>.{} tag, \
                 the referrers and the attestation store)",
                if a.wants_attestation { "att" } else { "sig" }
            );
        }
        for e in &a.evidence {
            let _ = write!(out, "  - [{}] {}", e.kind, e.source);
            if let Some(p) = &e.predicate_type {
                let _ = write!(out, " (predicate {p})");
            }
            let _ = writeln!(out, ": {}", e.check.describe());
            if let Some(note) = &e.note {
                let _ = writeln!(out, "    {note}");
            }
        }
    }
    out
}
