//! One verification, without the cache: the rule first, then the
//! manifest's one reading, then evidence (as an artifact of an admitted
//! image, or gathered for the rule's attestors) weighed by the pure policy.

use std::collections::HashMap;
use std::sync::Arc;

use super::admission::Outcome;
use super::cache::Key;
use super::sources::{fetch_manifest, Gathered};
use super::{artifact, evidence, State, Verifier, VerifyError};
use crate::oci::manifest::{Manifest, Reading};
use crate::oci::{Digest, Reference};
use crate::policy::{self, Decision, EvaluationMode, Evidence, Rule, RuleSource, Verdict};
use crate::routing::{Endpoint, Route};

impl Verifier {
    /// Evaluates without the cache, for `portcullis verify`.
    pub async fn explain(
        &self,
        route: &Route,
        manifest: &Manifest,
    ) -> Result<Decision, VerifyError> {
        let state = self.state();
        let key = state.scope(route).key_of(manifest.digest());
        self.within_deadline(self.decide(&state, route, manifest, &key, None))
            .await
            .map(|d| (*d).clone())
    }

    /// Decides on `manifest` without the cache. The rule comes first: a
    /// rule that reads no evidence decides alone (`ALWAYS_DENY` serves
    /// nothing, whatever the manifest says it is). Under
    /// `REQUIRE_ATTESTATION`, the manifest must have one unambiguous
    /// reading ([`crate::oci::manifest`]); then it is allowed when an
    /// admitted index lists it, when it is evidence of an admitted image
    /// ([`artifact`]), or when its attestors are satisfied.
    pub(super) async fn decide(
        &self,
        state: &State,
        route: &Route,
        manifest: &Manifest,
        key: &Key,
        gathered: Option<Result<Gathered<'_>, VerifyError>>,
    ) -> Result<Arc<Decision>, VerifyError> {
        let policy = &*state.policy;
        let name = route.canonical();
        let rule = policy.rule_for_image(&name, manifest.digest());
        if rule.evaluation != EvaluationMode::RequireAttestation {
            // No evidence is read: the decision is the rule's alone.
            return Ok(state.shared(&rule, || {
                policy::evaluate_in(policy, &rule, &HashMap::new())
            }));
        }
        let reading = match manifest.read() {
            Ok(reading) => reading,
            Err(unreadable) => return Ok(Arc::new(policy::refuse(&rule, unreadable.to_string()))),
        };
        if let Some(listed) = self.content.child(key) {
            return Ok(listed);
        }
        // Evidence of an admitted image is served as evidence; a manifest
        // that fails that test is an image like any other.
        let not_evidence = match artifact::relation(route, manifest.digest(), &reading) {
            Ok(None) => None,
            Ok(Some(subject)) => {
                match self
                    .evidence_artifact(state, route, &rule, &reading, &subject)
                    .await?
                {
                    Ok(decision) => return Ok(decision),
                    Err(why) => Some(why),
                }
            }
            Err(why) => Some(why),
        };
        let gathered = match gathered {
            Some(gathered) => gathered,
            None => self.gather(state, route, &rule, manifest.digest()).await,
        };
        let gathered = match gathered {
            Ok(gathered) => gathered,
            Err(VerifyError::Limit(why)) => return Ok(Arc::new(policy::refuse(&rule, why))),
            Err(e) => return Err(e),
        };
        let mut evidence: HashMap<String, Vec<Evidence>> = HashMap::new();
        let target = evidence::Target {
            name: &name,
            digest: manifest.digest(),
            manifest: manifest.bytes(),
            identity: &rule.signed_identity,
            require_named: rule.require_named_identity,
            now_ms: evidence::now_ms(),
        };
        for (attestors, found) in &gathered.locations {
            for attestor in attestors {
                evidence
                    .entry(attestor.name.clone())
                    .or_default()
                    .extend(found.check(attestor, &target));
            }
        }
        if let Some(store) = &self.store {
            let items = store.items_for(manifest.digest().hex());
            for name in &rule.attestors {
                if let Some(attestor) = policy.attestors.get(name) {
                    evidence
                        .entry(name.clone())
                        .or_default()
                        .extend(evidence::from_store(&items, attestor, &target));
                }
            }
        }
        let mut decision = policy::evaluate_in(policy, &rule, &evidence);
        if let (Some(why), false) = (not_evidence, decision.serves()) {
            decision.reason = format!("{}; not served as evidence: {why}", decision.reason);
        }
        Ok(Arc::new(decision))
    }

    /// Whether a manifest reached as evidence of `subject` is served as
    /// evidence: `subject` is admitted, and the manifest's bytes are
    /// evidence ([`artifact::check_content`]). `Ok(Err(why))` when not.
    async fn evidence_artifact(
        &self,
        state: &State,
        route: &Route,
        rule: &Rule,
        reading: &Reading,
        subject: &Digest,
    ) -> Result<Result<Arc<Decision>, String>, VerifyError> {
        if let Err(why) = self.subject_admitted(state, route, subject).await? {
            return Ok(Err(why));
        }
        let budget = self.evidence.budget();
        let upstream = &self.upstreams[route.upstream];
        match artifact::check_content(upstream, &budget, &route.repository, reading).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) | Err(VerifyError::Limit(why)) => return Ok(Err(why)),
            Err(e) => return Err(e),
        }
        Ok(Ok(Arc::new(Decision {
            verdict: Verdict::Exempt,
            rule: RuleSource::Artifact,
            evaluation: rule.evaluation,
            enforcement: rule.enforcement,
            attestors: Vec::new(),
            reason: format!(
                "evidence for admitted image {subject}: every layer is a signature or \
                 attestation (content checked), so it cannot run"
            ),
        })))
    }

    /// Whether the image `subject` (in `route`'s repository) is admitted
    /// under the current policy: a cached verdict, an admitted index
    /// listing it, or a verification now. `Ok(Err(why))` when it is not.
    async fn subject_admitted(
        &self,
        state: &State,
        route: &Route,
        subject: &Digest,
    ) -> Result<Result<(), String>, VerifyError> {
        let key = state.scope(route).key_of(subject);
        let denied = |decision: &Decision| {
            Err(format!(
                "the image it is evidence for ({subject}) is not admitted: {}",
                decision.reason
            ))
        };
        if let Some(hit) = self.verdicts.get(&key) {
            return Ok(if hit.decision.serves() {
                Ok(())
            } else {
                denied(&hit.decision)
            });
        }
        if self.content.child(&key).is_some() {
            return Ok(Ok(()));
        }
        let upstream = &self.upstreams[route.upstream];
        let Some(manifest) = fetch_manifest(upstream, &route.repository, subject).await? else {
            return Ok(Err(format!(
                "the image it is evidence for ({subject}) is not in the repository"
            )));
        };
        // Evidence of evidence is not followed: one level only.
        if manifest.read().is_ok_and(|r| r.subject.is_some()) {
            return Ok(Err(format!(
                "{subject}, which it is evidence for, is itself a referrer"
            )));
        }
        let subject_route = Route {
            endpoint: Endpoint::Manifest(Reference::Digest(subject.clone())),
            ..route.clone()
        };
        match Box::pin(self.admit_fetched(&subject_route, manifest, None)).await {
            Ok(Outcome::Admitted(_)) => Ok(Ok(())),
            Ok(Outcome::Denied(denial)) => Ok(denied(denial.decision())),
            Err((_, error)) => Err(error),
        }
    }
}
