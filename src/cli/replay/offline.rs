//! Offline replay: the candidate's rule applied to the evidence recorded
//! at pull time, no network. A signature recorded as valid with key `K`
//! counts for any candidate attestor holding a key with id `K`; one
//! recorded as verified keyless counts for a candidate attestor one of
//! whose `keyless:` identities matches the recorded subject and issuer
//! (an identity that also requires Fulcio claims cannot be re-checked
//! offline, and does not match); recorded failures carry over.

use std::collections::{HashMap, HashSet};

use super::audit::Image;
use super::{admitted_index, through_index, Evaluated};
use crate::audit::record::{DecisionRecord, EvidenceRecord};
use crate::policy::{
    self, attestation::SIGNATURE_PREDICATE_TYPE, Check, EvaluationMode, Evidence, EvidenceKind,
    Keyless, KeylessSigner, Policy, Rule,
};
use crate::sigstore::Identity;

/// Whether a recorded keyless signer is one of `keyless`'s identities.
fn keyless_vouches(keyless: &Keyless, signer: &KeylessSigner) -> bool {
    let identity = Identity {
        subject: Some(signer.subject.clone()),
        issuer: Some(signer.issuer.clone()),
        claims: Vec::new(),
    };
    keyless
        .identities
        .iter()
        .any(|policy| policy.mismatch(&identity).is_none())
}

/// The recorded result string as a [`Check`].
pub(super) fn check_from_record(e: &EvidenceRecord) -> Check {
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
    let signer = match &check {
        Check::Valid { .. } => e.keyless.clone(),
        _ => None,
    };
    Evidence::new(kind, e.source.clone(), check)
        .with_predicate_type(e.predicate_type.clone())
        .with_keyless(signer)
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
        let keyless = policy.attestors.get(name).and_then(|a| a.keyless.as_ref());
        // Whether this attestor trusts what verified `e` then.
        let vouches = |e: &EvidenceRecord, key_id: &str| {
            keys.contains(key_id)
                || e.keyless.as_ref().is_some_and(|signer| {
                    key_id == signer.key_id && keyless.is_some_and(|k| keyless_vouches(k, signer))
                })
        };
        let mut found: Vec<Evidence> = Vec::new();
        // Signatures verified with a key this attestor holds, whoever
        // checked them at the time.
        for e in record.attestors.iter().flat_map(|a| &a.evidence) {
            if let Check::Valid { key_id } = check_from_record(e) {
                let already = found.iter().any(|f| {
                    f.source == e.source
                        && matches!(&f.check, Check::Valid { key_id: k } if *k == key_id)
                });
                if vouches(e, &key_id) && !already && fits(e) {
                    found.push(evidence_from_record(e, Check::Valid { key_id }));
                }
            }
        }
        match record.attestors.iter().find(|a| &a.name == name) {
            Some(same) => {
                for e in &same.evidence {
                    let check = match check_from_record(e) {
                        Check::Valid { key_id } if vouches(e, &key_id) && fits(e) => continue,
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
pub(super) fn offline_decision(policy: &Policy, record: &DecisionRecord) -> Evaluated {
    let rule = match record.digest.parse() {
        Ok(digest) => policy.rule_for_image(&record.reference, &digest),
        Err(_) => policy.rule_for(&record.reference),
    };
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
pub(super) fn offline_decisions(policy: &Policy, images: &[Image]) -> Vec<Option<Evaluated>> {
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
