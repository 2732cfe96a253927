//! The finish phase: the one place a decision is audited, counted,
//! alerted and logged. Each request that reaches a decision passes here
//! exactly once, with everything the record needs (break-glass included,
//! as part of the decision); nothing is patched afterwards.

use std::sync::Arc;
use std::time::SystemTime;

use super::{App, Ctx, ServeError};
use crate::audit::{Decided, Subject};
use crate::breakglass::Attempt;
use crate::oci::{Digest, Reference};
use crate::policy::{Decision, Verdict};
use crate::verify::{BlobPermit, Outcome};

/// Finishes a manifest request's decision. Returns whether it was routine
/// (a verdict-cache hit that only repeats a decision already logged).
pub(super) async fn manifest(
    app: &App,
    ctx: &Ctx<'_>,
    reference: &Reference,
    outcome: &Outcome,
) -> bool {
    let (digest, cache_hit, verified_in, break_glass) = match outcome {
        Outcome::Admitted(a) => (
            a.manifest().digest(),
            a.cache_hit(),
            a.verified_in(),
            a.break_glass(),
        ),
        Outcome::Denied(d) => (d.digest(), d.cache_hit(), d.verified_in(), None),
    };
    let stale = match outcome {
        Outcome::Admitted(a) => a.manifest().offline().cloned(),
        Outcome::Denied(_) => None,
    };
    if stale.is_some() {
        app.observer.metrics.stale_serve();
    }
    if let Some(took) = verified_in {
        app.observer.metrics.verification(took);
    }
    let decided = Decided {
        at: SystemTime::now(),
        client: ctx.client.clone(),
        subject: Subject::Manifest,
        reference: ctx.canonical.clone(),
        tag: match reference {
            Reference::Tag(t) => Some(t.clone()),
            Reference::Digest(_) => None,
        },
        digest: digest.clone(),
        decision: Arc::clone(outcome.decision()),
        cache_hit,
        latency: ctx.started.elapsed(),
        break_glass: break_glass.cloned(),
        replica: app.observer.replica(),
        stale,
    };
    let routine = log(ctx, &decided, matches!(outcome, Outcome::Denied(_)));
    app.observer.decided(decided).await;
    routine
}

/// Finishes a blob the policy does not let through; returns the error the
/// client gets.
pub(super) async fn blob_denied(
    app: &App,
    ctx: &Ctx<'_>,
    digest: &Digest,
    decision: Arc<Decision>,
) -> ServeError {
    let decided = blob_decided(app, ctx, digest, Arc::clone(&decision), None);
    let subject = decided.subject_text();
    app.observer.decided(decided).await;
    ServeError::Denied { subject, decision }
}

/// Finishes a permitted blob: only a break-glass permit is a decision
/// worth recording (blobs of admitted images are not audited one by one).
pub(super) async fn blob_permitted(app: &App, ctx: &Ctx<'_>, permit: &BlobPermit) {
    if let Some((decision, used)) = permit.break_glass() {
        let decided = blob_decided(
            app,
            ctx,
            permit.digest(),
            Arc::clone(decision),
            Some(used.clone()),
        );
        app.observer.decided(decided).await;
    }
}

fn blob_decided(
    app: &App,
    ctx: &Ctx<'_>,
    digest: &Digest,
    decision: Arc<Decision>,
    break_glass: Option<crate::breakglass::Use>,
) -> Decided {
    Decided {
        at: SystemTime::now(),
        client: ctx.client.clone(),
        subject: Subject::Blob,
        reference: ctx.canonical.clone(),
        tag: None,
        digest: digest.clone(),
        decision,
        cache_hit: false,
        latency: ctx.started.elapsed(),
        break_glass,
        replica: app.observer.replica(),
        stale: None,
    }
}

/// Logs a manifest decision in the request's span: denials, dry-run
/// denials and break-glass at warn, fresh decisions at info, cache hits at
/// debug (they repeat a decision logged when it was made). Returns whether
/// the decision was routine.
fn log(ctx: &Ctx<'_>, decided: &Decided, denied: bool) -> bool {
    let decision = &decided.decision;
    let cache_hit = decided.cache_hit;
    if let Some(used) = &decided.break_glass {
        ctx.log.in_scope(|| {
            tracing::warn!(
                verdict = "breakglass",
                identity = %used.identity(),
                justification = %used.justification(),
                "{}",
                decided.message()
            )
        });
        return false;
    }
    if denied {
        ctx.log.in_scope(|| {
            if let Attempt::Invalid(why) = &ctx.glass {
                tracing::warn!(%why, "break-glass refused");
            }
            tracing::warn!(
                verdict = "deny",
                rule = %decision.rule,
                cache_hit,
                "{}",
                decided.message()
            )
        });
        return false;
    }
    match decision.verdict {
        Verdict::DryRunDeny => {
            ctx.log.in_scope(|| {
                tracing::warn!(
                    verdict = "dryrun-deny",
                    rule = %decision.rule,
                    cache_hit,
                    "{}",
                    decided.message()
                )
            });
            false
        }
        _ if cache_hit => {
            if tracing::enabled!(tracing::Level::DEBUG) {
                ctx.log.in_scope(|| {
                    tracing::debug!(
                        verdict = ?decision.verdict,
                        rule = %decision.rule,
                        cache_hit,
                        "{}",
                        decided.message()
                    )
                });
            }
            true
        }
        _ => {
            ctx.log.in_scope(|| {
                tracing::info!(
                    verdict = ?decision.verdict,
                    rule = %decision.rule,
                    cache_hit,
                    "{}",
                    decided.message()
                )
            });
            false
        }
    }
}
