//! The one entry point: [`Verifier::admit`] takes a manifest request (its
//! route, its reference and the fetch that resolves it) and answers with an
//! [`Outcome`]; [`Verifier::permit_blob`] answers for a blob. Both consult
//! the verdict cache first; a miss runs one verification per key
//! ([`super::decide`]), shared by every request that joins it, and
//! registers what an admitted manifest makes servable.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::admission::{Admission, BlobPermit, Denial, Failed, Outcome};
use super::cache::{self, Hit, Key, Scope};
use super::sources::Gathered;
use super::{State, Verifier, VerifyError};
use crate::breakglass::{Attempt, Use};
use crate::fleet::Table;
use crate::oci::manifest::{Kind, Manifest};
use crate::oci::{Digest, Reference};
use crate::policy::{self, Decision, EnforcementMode, EvaluationMode, Verdict};
use crate::routing::Route;

/// Manifests verified again for one refused blob, at most: the manifest
/// that listed it and the indexes above it (an index of indexes is legal,
/// deeper nesting is not what runtimes pull).
const MAX_READMISSIONS: usize = 4;

/// A verdict reached (or found cached) while the manifest was fetched.
#[derive(Debug)]
pub(super) struct Early {
    key: Key,
    result: Result<Hit, VerifyError>,
    cache_hit: bool,
}

impl Early {
    /// A verdict found in the cache.
    fn hit(key: Key, hit: Hit) -> Early {
        Early {
            key,
            result: Ok(hit),
            cache_hit: true,
        }
    }
}

impl Verifier {
    /// Decides whether the manifest `reference` names in `route` may be
    /// served: resolves it with `fetch` (the bytes, bounded and
    /// digest-checked by the caller), verifies it under the current policy
    /// (or finds the verdict cached) and, when the policy denies it and the
    /// request carries a valid break-glass credential (`glass`), admits it
    /// by break-glass.
    ///
    /// By digest, the evidence is looked up while the manifest is fetched
    /// (the evidence lookups need only the digest), saving a cold
    /// verification one upstream round trip; the verification time then
    /// includes the fetch.
    pub async fn admit<E, F>(
        &self,
        route: &Route,
        reference: &Reference,
        fetch: F,
        glass: &Attempt,
    ) -> Result<Outcome, Failed<E>>
    where
        F: Future<Output = Result<Manifest, E>>,
    {
        let mut started = Instant::now();
        let (manifest, early) = match reference {
            Reference::Digest(digest) => self
                .fetch_and_verify(route, digest, fetch)
                .await
                .map_err(Failed::Fetch)?,
            Reference::Tag(_) => {
                let manifest = fetch.await.map_err(Failed::Fetch)?;
                started = Instant::now();
                (manifest, None)
            }
        };
        let outcome = match self.admit_fetched(route, manifest, early).await {
            Ok(outcome) => outcome,
            Err((digest, error)) => return Err(Failed::Verify { digest, error }),
        };
        let took = |cache_hit: bool| (!cache_hit).then(|| started.elapsed());
        Ok(match outcome {
            Outcome::Admitted(mut admission) => {
                admission.verified_in = took(admission.cache_hit);
                Outcome::Admitted(admission)
            }
            Outcome::Denied(mut denial) => {
                denial.verified_in = took(denial.cache_hit);
                match glass {
                    Attempt::Valid(proof) => {
                        Outcome::Admitted(self.break_glass(route, denial, proof.clone()).await)
                    }
                    _ => Outcome::Denied(denial),
                }
            }
        })
    }

    /// The verdict for a fetched manifest: cached, reached while fetching
    /// (`early`), or verified now. A verdict-cache hit costs a key hash
    /// and a table lookup: the manifest is parsed again only when its
    /// admitted content may have aged out of the content table (once per
    /// rotation, for images still pulled), so blobs stay servable as long
    /// as the verdict is served.
    pub(super) async fn admit_fetched(
        &self,
        route: &Route,
        manifest: Manifest,
        early: Option<Early>,
    ) -> Result<Outcome, (Digest, VerifyError)> {
        let state = self.state();
        let policy = &state.policy;
        if !policy.configured {
            let decision = state.unconfigured.get_or_init(|| {
                Arc::new(policy::evaluate(
                    &policy.rule_for(&route.canonical()),
                    &Default::default(),
                ))
            });
            return Ok(admitted(manifest, Arc::clone(decision), false));
        }
        let scope = state.scope(route);
        let key = scope.key_of(manifest.digest());
        let found = match early {
            // Reached under the current generation for these bytes.
            Some(early) if early.key == key => early.result.map(|hit| (hit, early.cache_hit)),
            _ => self.verdict(&state, &scope, route, &manifest, key).await,
        };
        let (hit, cache_hit) = match found {
            Ok(found) => found,
            Err(error) => return Err((manifest.digest().clone(), error)),
        };
        let decision = hit.decision;
        if !decision.serves() {
            return Ok(Outcome::Denied(Denial {
                manifest,
                decision,
                cache_hit,
                verified_in: None,
            }));
        }
        if !self.content.is_current(hit.content) || self.fleet_recovered() {
            let content = self.register(&state, &scope, route, &manifest);
            self.verdicts.set_content(&key, content);
            // What the fleet held may have expired or been lost with it.
            if self.shares(&state, route) {
                self.share_verdict(&state, &scope, &key, &manifest, &decision)
                    .await;
            }
        }
        Ok(admitted(manifest, decision, cache_hit))
    }

    /// The cached verdict for `key`, or a verification of `manifest` in a
    /// flight shared by every request for the key.
    async fn verdict(
        &self,
        state: &Arc<State>,
        scope: &Scope,
        route: &Route,
        manifest: &Manifest,
        key: Key,
    ) -> Result<(Hit, bool), VerifyError> {
        if let Some(hit) = self.verdicts.get(&key) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((hit, true));
        }
        self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        let miss = Miss {
            state,
            scope,
            route,
            key: &key,
        };
        // Boxed: the verification's state (kilobytes of nested futures) is
        // only allocated on a miss, so the future of every request, hits
        // included, stays small.
        let flight = || {
            Box::pin(self.flights.run(key, || async {
                // A verification of this key may have finished between the
                // miss above and joining the flight.
                if let Some(hit) = self.verdicts.get(&key) {
                    return Ok(hit);
                }
                if self.shares(state, route) {
                    if let Some(shared) = self.shared_verdict(state, route, &key).await {
                        return Ok(self.adopt(&miss, manifest, shared).await);
                    }
                }
                self.within_deadline(self.verify_miss(&miss, manifest, None))
                    .await
            }))
        };
        let hit = match flight().await {
            // Joined a `fetch_and_verify` whose manifest fetch failed; this
            // request has the manifest, so it verifies it in a flight of
            // its own.
            Err(VerifyError::ManifestUnavailable) => flight().await?,
            result => result?,
        };
        Ok((hit, false))
    }

    /// Fetches a manifest requested by `digest` with `fetch` and, on a
    /// verdict-cache miss, verifies it while the fetch runs; concurrent
    /// requests for the digest share one verification. A failed fetch is
    /// returned as is, and then nothing else is looked up.
    pub(super) async fn fetch_and_verify<E, F>(
        &self,
        route: &Route,
        digest: &Digest,
        fetch: F,
    ) -> Result<(Manifest, Option<Early>), E>
    where
        F: Future<Output = Result<Manifest, E>>,
    {
        let state = self.state();
        if !state.policy.configured {
            return Ok((fetch.await?, None));
        }
        let scope = state.scope(route);
        let key = scope.key_of(digest);
        if let Some(hit) = self.verdicts.get(&key) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((fetch.await?, Some(Early::hit(key, hit))));
        }
        let name = route.canonical();
        let rule = state.policy.rule_for_image(&name, digest);
        if rule.evaluation != EvaluationMode::RequireAttestation
            || self.content.child(&key).is_some()
        {
            // Nothing to look up early: `admit_with` decides.
            return Ok((fetch.await?, None));
        }
        self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        let mut fetch = std::pin::pin!(fetch);
        // What this call's fetch gave, if it ran (not when it joined a
        // verification already in flight).
        let mut fetched: Option<Result<Manifest, E>> = None;
        let slot = &mut fetched;
        let fetching = fetch.as_mut();
        let result = Box::pin(self.flights.run(key, move || {
            self.within_deadline(async move {
                if let Some(hit) = self.verdicts.get(&key) {
                    return Ok(hit);
                }
                let mut fetching = fetching;
                let miss = Miss {
                    state: &state,
                    scope: &scope,
                    route,
                    key: &key,
                };
                if let Some(adopted) = self.adopt_fetching(&miss, fetching.as_mut(), slot).await {
                    return adopted;
                }
                let gather = self.gather(&state, route, &rule, digest);
                let mut gather = std::pin::pin!(gather);
                let mut gathered = None;
                let manifest = loop {
                    tokio::select! {
                        manifest = fetching.as_mut() => break manifest,
                        found = gather.as_mut(), if gathered.is_none() => gathered = Some(found),
                    }
                };
                let manifest = match manifest {
                    Ok(m) => m,
                    Err(e) => {
                        // The lookups are dropped: nothing more for a
                        // manifest that is not there.
                        *slot = Some(Err(e));
                        return Err(VerifyError::ManifestUnavailable);
                    }
                };
                // Kept before anything else is awaited: if the deadline
                // drops this verification from here on, the fetch has
                // completed and must not be polled again.
                *slot = Some(Ok(manifest.clone()));
                let gathered = match gathered {
                    Some(g) => g,
                    None => gather.await,
                };
                self.verify_miss(&miss, &manifest, Some(gathered)).await
            })
        }))
        .await;
        let manifest = match fetched {
            Some(manifest) => manifest?,
            // Joined another request's verification (or the verdict
            // appeared): this request still needs the bytes.
            None => fetch.await?,
        };
        let early = match result {
            // Another request's fetch failed: this one's did not, so
            // verify as usual.
            Err(VerifyError::ManifestUnavailable) => None,
            result => Some(Early {
                key,
                result,
                cache_hit: false,
            }),
        };
        Ok((manifest, early))
    }

    /// Another replica's verdict for `miss`, adopted once `fetching` gives
    /// the manifest (kept in `slot` for the request); `None` when the fleet
    /// has none (or is not used), and this replica verifies.
    async fn adopt_fetching<E>(
        &self,
        miss: &Miss<'_>,
        fetching: std::pin::Pin<&mut impl Future<Output = Result<Manifest, E>>>,
        slot: &mut Option<Result<Manifest, E>>,
    ) -> Option<Result<Hit, VerifyError>> {
        if !self.shares(miss.state, miss.route) {
            return None;
        }
        let shared = self
            .shared_verdict(miss.state, miss.route, miss.key)
            .await?;
        let manifest = match fetching.await {
            Ok(m) => m,
            Err(e) => {
                *slot = Some(Err(e));
                return Some(Err(VerifyError::ManifestUnavailable));
            }
        };
        *slot = Some(Ok(manifest.clone()));
        Some(Ok(self.adopt(miss, &manifest, shared).await))
    }

    /// A verdict-cache miss: decides, registers the admitted content and
    /// caches the verdict.
    async fn verify_miss(
        &self,
        miss: &Miss<'_>,
        manifest: &Manifest,
        gathered: Option<Result<Gathered<'_>, VerifyError>>,
    ) -> Result<Hit, VerifyError> {
        let Miss {
            state,
            scope,
            route,
            key,
        } = *miss;
        // Boxed: a decision's lookups nest deep futures; keeping them on
        // the heap keeps every caller's future (and stack frame) small.
        let mut decision = Box::pin(self.decide(state, route, manifest, key, gathered)).await?;
        if !decision.serves() {
            // An index listing it may have been admitted while this
            // verification ran (its denial would otherwise stick until
            // the deny TTL).
            if let Some(listed) = self.content.child(key) {
                decision = listed;
            }
        }
        let hit = self.keep(miss, manifest, decision);
        if self.shares(state, route) {
            self.share_verdict(state, scope, key, manifest, &hit.decision)
                .await;
        }
        Ok(hit)
    }

    /// Caches a verdict reached for `miss` (here, or by another replica),
    /// its admitted content registered first: a verdict is only found
    /// with its content in place.
    pub(super) fn keep(
        &self,
        miss: &Miss<'_>,
        manifest: &Manifest,
        decision: Arc<Decision>,
    ) -> Hit {
        let content = if decision.serves() {
            self.register(miss.state, miss.scope, miss.route, manifest)
        } else {
            self.content.epoch()
        };
        self.verdicts
            .insert(miss.key, Arc::clone(&decision), content);
        Hit { decision, content }
    }

    /// Admits a denied manifest because a valid break-glass credential was
    /// presented (`proof`, which only [`crate::breakglass`] makes). Nothing
    /// is admitted for anyone else: its blobs go to the break-glass table,
    /// which only requests carrying a valid credential consult
    /// ([`Verifier::permit_blob`]), and cached denials stay.
    pub async fn break_glass(&self, route: &Route, denial: Denial, proof: Use) -> Admission {
        let state = self.state();
        let scope = state.scope(route);
        if let Ok(reading) = denial.manifest.read() {
            let blobs: Vec<cache::Id> = reading
                .config
                .iter()
                .chain(reading.layers.iter())
                .map(|b| scope.key_of(&b.digest).id)
                .collect();
            self.break_glass.admit(
                state.generation,
                Some(denial.manifest.digest()),
                &blobs,
                &[],
                None,
            );
            self.share_break_glass(&state, &blobs).await;
        }
        Admission {
            manifest: denial.manifest,
            decision: denial.decision,
            cache_hit: false,
            verified_in: denial.verified_in,
            break_glass: Some(proof),
        }
    }

    /// Leave to serve the blob `digest` of `route`'s repository: always
    /// without a policy, under an ALWAYS_ALLOW or dry-run rule, when an
    /// admitted manifest in the same repository references it, or, for a
    /// request carrying a valid break-glass credential (`glass`), when an
    /// image admitted by break-glass does. Otherwise the denial.
    pub async fn permit_blob(
        &self,
        route: &Route,
        digest: &Digest,
        glass: &Attempt,
    ) -> Result<BlobPermit, Arc<Decision>> {
        let permit = |break_glass| BlobPermit {
            digest: digest.clone(),
            break_glass,
        };
        let denial = match self.blob_allowed(route, digest) {
            Ok(()) => return Ok(permit(None)),
            Err(denial) => denial,
        };
        let state = self.state();
        let key = state.scope(route).key_of(digest);
        let shared = match self.shares(&state, route) {
            true => self.in_fleet(&state, Table::Blob, &key).await,
            false => Ok(None),
        };
        let unproven = match shared {
            Ok(Some(manifest)) => {
                // Admitted by another replica: this one remembers it too.
                let manifest = std::str::from_utf8(&manifest)
                    .ok()
                    .and_then(|m| m.parse::<Digest>().ok());
                self.content
                    .admit(state.generation, manifest.as_ref(), &[key.id], &[], None);
                return Ok(permit(None));
            }
            Ok(None) => denial,
            Err(e) => {
                if let Some(fleet) = &self.fleet {
                    fleet.fell_back();
                }
                Arc::new(Decision {
                    reason: format!(
                        "blob is not part of an image this replica admitted, and the fleet's shared state cannot say whether another replica did ({e})"
                    ),
                    ..(*denial).clone()
                })
            }
        };
        match glass {
            Attempt::Valid(proof) if self.break_glass_blob(&state, &key).await => {
                Ok(permit(Some((unproven, proof.clone()))))
            }
            _ => Err(unproven),
        }
    }

    /// Whether `key`'s blob belongs to an image admitted by break-glass in
    /// its repository, here or on another replica (the caller has checked
    /// the request's credential).
    async fn break_glass_blob(&self, state: &State, key: &Key) -> bool {
        if self.break_glass.has_blob(key) {
            return true;
        }
        matches!(
            self.in_fleet(state, Table::BreakGlass, key).await,
            Ok(Some(_))
        )
    }

    /// For a blob [`Verifier::permit_blob`] refused: the manifests to
    /// admit again, outermost first, before asking once more. A pull whose
    /// manifest was admitted before the last generation change (a policy
    /// reload, new evidence) asks for its blobs after it, when they are no
    /// longer admitted; the retired generation's content names the
    /// manifest that listed the blob (here, or in the fleet under the
    /// previous revision) and the indexes that listed that manifest.
    /// Empty when nothing did: the refusal stands.
    ///
    /// Nothing here serves anything: each manifest named is verified under
    /// the current policy by [`Verifier::admit`], and the blob is served
    /// only if that registers it again.
    pub async fn readmissions(&self, route: &Route, digest: &Digest) -> Vec<Digest> {
        let state = self.state();
        let mut chain = Vec::new();
        if !state.policy.configured {
            return chain;
        }
        let scope = state.scope(route);
        let mut next = self
            .retired_origin(&state, route, Table::Blob, &scope.key_of(digest))
            .await;
        while let Some(manifest) = next.take() {
            if chain.contains(&manifest) {
                break;
            }
            if chain.len() < MAX_READMISSIONS {
                next = self
                    .retired_origin(&state, route, Table::Child, &scope.key_of(&manifest))
                    .await;
            }
            chain.push(manifest);
        }
        chain.reverse();
        chain
    }

    /// The manifest that admitted `key` (a blob, or a child manifest for
    /// [`Table::Child`]) under the retired generation: here, or on another
    /// replica under the previous revision.
    async fn retired_origin(
        &self,
        state: &State,
        route: &Route,
        table: Table,
        key: &Key,
    ) -> Option<Digest> {
        let here = match table {
            Table::Child => self.content.retired_child(&key.id),
            _ => self.content.retired_blob(&key.id),
        };
        if here.is_some() {
            return here;
        }
        let fleet = self.fleet.as_ref().filter(|_| self.shares(state, route))?;
        let revision = state.retired_revision.as_deref()?;
        let values = fleet.get(vec![fleet.key(revision, table, &key.id)]).await;
        let value = values.ok()?.into_iter().next().flatten()?;
        std::str::from_utf8(&value).ok()?.parse().ok()
    }

    /// Whether a blob may be served: always without a policy, under an
    /// ALWAYS_ALLOW or dry-run rule, or when an admitted manifest in the
    /// same repository references it.
    pub(super) fn blob_allowed(&self, route: &Route, digest: &Digest) -> Result<(), Arc<Decision>> {
        let state = self.state();
        let policy = &state.policy;
        if !policy.configured {
            return Ok(());
        }
        // The cheaper test first; the answer does not depend on the order.
        if self.content.has_blob(&state.scope(route).key_of(digest)) {
            return Ok(());
        }
        let rule = policy.rule_for(&route.canonical());
        if rule.evaluation == EvaluationMode::AlwaysAllow
            || rule.enforcement == EnforcementMode::DryrunAuditLogOnly
        {
            return Ok(());
        }
        Err(Arc::new(Decision {
            verdict: Verdict::Deny,
            rule: rule.source,
            evaluation: rule.evaluation,
            enforcement: rule.enforcement,
            attestors: Vec::new(),
            reason: "blob is not part of an admitted image".into(),
        }))
    }

    /// Makes the config and layers of an admitted manifest servable and,
    /// for an index, admits the manifests it lists (they are then allowed
    /// as "listed by admitted index …", one decision shared by them all);
    /// returns the content epoch they were registered in. A manifest
    /// without one unambiguous reading registers nothing.
    fn register(&self, state: &State, scope: &Scope, route: &Route, manifest: &Manifest) -> u32 {
        let Ok(reading) = manifest.read() else {
            // Nothing to register: current by definition.
            return self.content.epoch();
        };
        let blobs: Vec<cache::Id> = reading
            .config
            .iter()
            .chain(reading.layers.iter())
            .map(|b| scope.key_of(&b.digest).id)
            .collect();
        let digest = Some(manifest.digest());
        if reading.kind != Kind::Index {
            return self
                .content
                .admit(state.generation, digest, &blobs, &[], None);
        }
        let children: Vec<Key> = reading
            .children
            .iter()
            .map(|c| scope.key_of(&c.digest))
            .collect();
        let ids: Vec<cache::Id> = children.iter().map(|k| k.id).collect();
        let rule = state.policy.rule_for(&route.canonical());
        let listed = Arc::new(Decision {
            verdict: Verdict::Allow,
            rule: rule.source,
            evaluation: rule.evaluation,
            enforcement: rule.enforcement,
            attestors: Vec::new(),
            reason: format!("listed by admitted index {}", manifest.digest()),
        });
        let epoch = self
            .content
            .admit(state.generation, digest, &blobs, &ids, Some(&listed));
        // A child denied before its index was admitted is admitted now.
        for child in &children {
            self.verdicts.remove_denied(child);
        }
        epoch
    }
}

/// What a verdict-cache miss verifies under: the state it started with,
/// the key's scope, and the request's route.
#[derive(Clone, Copy)]
pub(super) struct Miss<'a> {
    pub(super) state: &'a State,
    pub(super) scope: &'a Scope,
    pub(super) route: &'a Route,
    pub(super) key: &'a Key,
}

fn admitted(manifest: Manifest, decision: Arc<Decision>, cache_hit: bool) -> Outcome {
    Outcome::Admitted(Admission {
        manifest,
        decision,
        cache_hit,
        verified_in: None,
        break_glass: None,
    })
}
