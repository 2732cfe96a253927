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

use std::path::Path;
use std::sync::Arc;

use super::{CliError, Exit, Outcome};
use crate::audit::record::DecisionRecord;
use crate::config::Config;
use crate::policy::{Decision, Rule, Verdict};

mod audit;
mod live;
mod offline;
mod report;
#[cfg(test)]
mod tests;

use audit::parse_audit;
use report::{classify, Diff};
pub use report::{Change, ReplayReport};

/// How to replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Use only the evidence recorded in the audit trail; no network.
    pub offline: bool,
}

/// Runs `portcullis policy replay`: the report as text, or as JSON with
/// `json`. Changes or not, a printed report is exit 0.
pub fn run(audit: &Path, config: &Path, options: ReplayOptions, json: bool) -> Outcome {
    // Loaded, not prepared: `replay` prepares the candidate itself, so a
    // policy that does not compile is reported as the candidate's fault.
    let config =
        Config::load(config).map_err(|e| CliError::error(format!("invalid configuration: {e}")))?;
    let report = super::block_on(replay(audit, &config, options))?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render());
    }
    Ok(Exit::Ok)
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
    let prepared = crate::app::prepare(config.clone())
        .map_err(|e| format!("invalid candidate policy: {e}"))?;
    let parsed = parse_audit(&bytes);
    let mut errors = parsed.errors;

    let evaluated = if options.offline {
        offline::offline_decisions(&prepared.policy, &parsed.images)
    } else {
        let app = Arc::new(
            crate::app::build_quiet(prepared).map_err(|e| format!("invalid candidate: {e}"))?,
        );
        live::live_decisions(&app, config, &parsed.images, &mut errors).await
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

/// Fuzzing entry point (`fuzz/fuzz_targets/audit_replay.rs`), not part of
/// the API: what `policy replay --offline` does with the audit file's
/// bytes once read, against a compiled `policy`. Returns (replayed,
/// skipped, bad lines).
#[doc(hidden)]
pub fn fuzz_offline(bytes: &[u8], policy: &crate::policy::Policy) -> (usize, usize, usize) {
    let parsed = parse_audit(bytes);
    let evaluated = offline::offline_decisions(policy, &parsed.images);
    let mut replayed = 0;
    for (image, decision) in parsed.images.iter().zip(evaluated) {
        if let Some(decision) = decision {
            replayed += 1;
            let _ = classify(image, decision);
        }
    }
    (replayed, parsed.skipped, parsed.errors.len())
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
