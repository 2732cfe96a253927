//! Verification: decides whether a fetched manifest may be served, and
//! remembers what was admitted.
//!
//! [`Verifier::admit`] is the only way to obtain an [`Admission`], and the
//! serve layer only sends a manifest through an `Admission`: a manifest
//! that was not verified cannot be served by construction.
//!
//! - The policy ([`crate::policy`]) picks the rule and evaluates evidence
//!   (pure).
//! - Evidence comes from [`cosign`] (tag-based `.sig` signatures) and is
//!   checked by [`simple_signing`] (pure).
//! - Verdicts are cached by (generation, upstream, repository, digest) —
//!   never by tag — with separate allow/deny TTLs; the generation changes
//!   with the policy revision and with the attestation store's evidence.
//!   Concurrent misses for one key share one verification. Failures to
//!   check are errors, never cached as denials. See [`cache`].
//! - Admitted indexes admit the child manifests they list; admitted
//!   manifests admit their config and layer blobs ([`Verifier::blob_allowed`]),
//!   for as long as their verdict is served (a verdict-cache hit registers
//!   them again when they may have aged out).

mod artifact;
pub mod binauthz;
pub mod budget;
pub mod bundle;
mod cache;
pub mod cosign;
pub mod dsse;
pub mod evidence;
pub mod referrers;
pub mod simple_signing;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

use cache::{Clock, Content, Flights, Hit, Key, Scope, Verdicts};

use crate::config::{CacheConfig, Limits, Timeouts};
use crate::oci::manifest::{Kind, Reading};
use crate::oci::{Digest, Reference};
use crate::policy::{
    self, Attestor, Decision, EnforcementMode, EvaluationMode, Evidence, Policy, Rule, RuleSource,
    Verdict,
};
use crate::routing::{Endpoint, Route};
use crate::serve::manifest::Manifest;
use crate::upstream::{Upstream, UpstreamError};

/// Admitted child manifests and blobs remembered, at most (32 bytes
/// each). Each admitted image adds its config and layers; this bounds
/// memory whatever is pulled. Twice 7/8 of 2^20: each of the two segments
/// of [`cache::Content`] then fills a 2^20-bucket table exactly (~33 MiB)
/// instead of growing a 2^21 one for a few more entries.
pub const MAX_ADMITTED_CONTENT: u64 = 2 * (7 << 17);
/// Blobs and children of break-glass admissions remembered, at most: break
/// glass is rare and audited, a few thousand images' worth is plenty.
const MAX_BREAK_GLASS_CONTENT: usize = 64 * 1024;

/// Could not check: the image is not served, and nothing is cached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream answered {status} for {what}")]
    Status { what: String, status: StatusCode },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
    /// The manifest being verified could not be fetched (the fetching
    /// request reports why); see [`Verifier::fetch_and_verify`].
    #[error("the manifest could not be fetched")]
    ManifestUnavailable,
    /// Evidence beyond the verification's budget ([`budget`]): the
    /// verifier turns it into a denial, never an allow.
    #[error("{0}")]
    Limit(String),
    /// The verification ran past `timeouts.verification` (an upstream
    /// that answers, slowly, every lookup). Like every error here it is
    /// not cached: the next pull verifies again.
    #[error("verification did not finish within {after:?} (timeouts.verification)")]
    Deadline { after: Duration },
}

/// A verdict [`Verifier::fetch_and_verify`] reached (or found cached)
/// while fetching a manifest, for [`Verifier::admit_with`].
#[derive(Debug)]
pub struct Early {
    key: Key,
    result: Result<Hit, VerifyError>,
    cache_hit: bool,
}

/// What each signature location holds, with the attestors that keep their
/// evidence there, and the budget the bytes were read under (held until
/// the evidence is weighed, so the global in-flight budget counts them).
struct Gathered<'p> {
    locations: Vec<(Vec<&'p Attestor>, Found)>,
    _budget: Arc<budget::Budget>,
}

/// A manifest the verifier allowed to be served, with the decision.
#[derive(Debug)]
pub struct Admission<'m> {
    manifest: &'m Manifest,
    pub decision: Arc<Decision>,
    pub cache_hit: bool,
}

impl<'m> Admission<'m> {
    pub fn manifest(&self) -> &'m Manifest {
        self.manifest
    }
}

/// The verifier's answer for one manifest.
#[derive(Debug)]
pub enum Outcome<'m> {
    Admitted(Admission<'m>),
    Denied {
        image: String,
        decision: Arc<Decision>,
        cache_hit: bool,
    },
}

/// Counters other layers (metrics, tests, `verify`) read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Signature lookups sent upstream (one per `.sig` or `.att`
    /// manifest fetch).
    pub signature_lookups: AtomicU64,
    /// Referrer listings sent upstream (API, then tag fallback).
    pub referrer_lookups: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
}

/// Holds the current policy and the caches.
pub struct Verifier {
    state: RwLock<Arc<State>>,
    /// Serializes generation changes (policy and store).
    changing: Mutex<()>,
    verdicts: Verdicts,
    /// Blobs of admitted manifests (and of signature artifacts), and
    /// child manifests of admitted indexes.
    content: Content,
    flights: Flights<Result<Hit, VerifyError>>,
    /// The local attestation store, when configured.
    store: Option<Arc<store::Store>>,
    /// What evidence reads may cost, per verification and in total.
    evidence: budget::EvidenceLimits,
    /// Blobs and child manifests of break-glass admissions, served only to
    /// requests that present a valid break-glass credential.
    break_glass: cache::Content,
    /// `verification` and `evidence` bound every verification and every
    /// evidence lookup.
    timeouts: Timeouts,
    pub stats: Stats,
}

/// The policy in force and the generation of cache keys under it.
struct State {
    policy: Arc<Policy>,
    generation: u32,
    /// Decisions that depend on the rule alone (ALWAYS_ALLOW, ALWAYS_DENY,
    /// allowlist, the artifact exemption), one `Arc` per rule and
    /// enforcement shared by every image they decide; at most twice the
    /// policy's rules.
    shared: Mutex<HashMap<(RuleSource, bool), Arc<Decision>>>,
    /// The decision for everything when no policy is configured.
    unconfigured: OnceLock<Arc<Decision>>,
}

impl State {
    fn new(policy: Arc<Policy>, generation: u32) -> State {
        State {
            policy,
            generation,
            shared: Mutex::new(HashMap::new()),
            unconfigured: OnceLock::new(),
        }
    }

    /// The shared decision of `rule` (made by `make` the first time).
    fn shared(&self, rule: &Rule, make: impl FnOnce() -> Decision) -> Arc<Decision> {
        let dry_run = rule.enforcement == EnforcementMode::DryrunAuditLogOnly;
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(
            shared
                .entry((rule.source.clone(), dry_run))
                .or_insert_with(|| Arc::new(make())),
        )
    }

    fn scope(&self, route: &Route) -> Scope {
        Scope::new(self.generation, route.upstream, &route.repository)
    }
}

/// Which tag-based evidence a lookup fetches (referrers are always read).
#[derive(Debug, Clone, Copy)]
pub struct Wants {
    /// The `.sig` tag.
    pub signatures: bool,
    /// The `.att` tag.
    pub attestations: bool,
}

impl Wants {
    pub const ALL: Wants = Wants {
        signatures: true,
        attestations: true,
    };

    /// What `attestors` can use: `.sig` for those a signature satisfies,
    /// `.att` for those requiring attestations.
    pub fn for_attestors(attestors: &[&Attestor]) -> Wants {
        Wants {
            signatures: attestors.iter().any(|a| a.attestations.is_empty()),
            attestations: attestors.iter().any(|a| !a.attestations.is_empty()),
        }
    }
}

/// What one signature location holds for an image.
#[derive(Default)]
pub struct Found {
    /// Simple-signing signatures from the `.sig` tag.
    pub signatures: Vec<cosign::Found>,
    /// DSSE envelopes from the `.att` tag.
    pub envelopes: Vec<(String, Result<Bytes, String>)>,
    /// Sigstore bundles attached as referrers.
    pub bundles: Vec<referrers::Found>,
}

impl Found {
    /// The evidence this holds for `attestor`: `.sig` signatures for
    /// attestors satisfied by a signature, `.att` envelopes for those that
    /// require attestations, bundles for both.
    pub fn check(&self, attestor: &Attestor, target: &evidence::Target<'_>) -> Vec<Evidence> {
        let mut out = if attestor.attestations.is_empty() {
            evidence::from_signatures(&self.signatures, attestor, target)
        } else {
            evidence::from_envelopes(&self.envelopes, attestor, target)
        };
        out.extend(evidence::from_bundles(&self.bundles, attestor, target));
        out
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(policy: Policy, cache: CacheConfig) -> Verifier {
        Verifier::with_content_capacity(policy, cache, MAX_ADMITTED_CONTENT as usize)
    }

    fn with_content_capacity(policy: Policy, cache: CacheConfig, content: usize) -> Verifier {
        let clock = Arc::new(Clock::new());
        Verifier {
            state: RwLock::new(Arc::new(State::new(Arc::new(policy), 0))),
            changing: Mutex::new(()),
            verdicts: Verdicts::new(
                cache.max_entries,
                cache.allow_ttl,
                cache.deny_ttl,
                Arc::clone(&clock),
            ),
            // Rotated every allow TTL: admitted content stays servable at
            // least that long after the last manifest request found it
            // current (see `admit`).
            content: Content::new(content, cache.allow_ttl, Arc::clone(&clock)),
            flights: Flights::new(),
            store: None,
            evidence: budget::EvidenceLimits::new(&Limits::default()),
            break_glass: Content::new(MAX_BREAK_GLASS_CONTENT, cache.allow_ttl, clock),
            timeouts: Timeouts::default(),
            stats: Stats::default(),
        }
    }

    /// Bounds evidence reads with `limits` (the defaults otherwise).
    pub fn with_limits(mut self, limits: &Limits) -> Verifier {
        self.evidence = budget::EvidenceLimits::new(limits);
        self
    }

    /// Evidence bytes all verifications hold right now.
    pub fn evidence_in_flight(&self) -> u64 {
        self.evidence.in_flight_bytes()
    }

    /// Bounds verifications and evidence lookups by `timeouts`
    /// (`verification`, `evidence`) instead of the defaults.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Verifier {
        self.timeouts = timeouts;
        self
    }

    /// Runs one verification under `timeouts.verification`. The deadline
    /// is inside the verification's flight, so every request joined to it
    /// gets [`VerifyError::Deadline`] at the same moment, and none of them
    /// is left waiting on an upstream that trickles.
    async fn within_deadline<T>(
        &self,
        verification: impl Future<Output = Result<T, VerifyError>>,
    ) -> Result<T, VerifyError> {
        let after = self.timeouts.verification;
        tokio::time::timeout(after, verification)
            .await
            .unwrap_or(Err(VerifyError::Deadline { after }))
    }

    /// Adds the local attestation store as an evidence source.
    pub fn with_store(mut self, store: Arc<store::Store>) -> Verifier {
        self.store = Some(store);
        self
    }

    pub fn store(&self) -> Option<&Arc<store::Store>> {
        self.store.as_ref()
    }

    /// Re-reads the attestation store (blocking I/O: call from a blocking
    /// thread). When its evidence changed, cached verdicts — and what they
    /// admitted — are dropped, so new evidence counts at the next pull and
    /// removed evidence stops counting.
    pub fn refresh_store(&self) -> bool {
        let changed = self.store.as_ref().is_some_and(|s| s.refresh());
        if changed {
            self.change(None);
        }
        changed
    }

    fn state(&self) -> Arc<State> {
        match self.state.read() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.state().policy)
    }

    /// Replaces the policy. A changed revision starts a new generation:
    /// cached verdicts and admitted content are dropped, and verdicts of
    /// verifications still running under the old policy are never stored
    /// where the new generation looks.
    pub fn set_policy(&self, policy: Policy) {
        self.change(Some(policy));
    }

    /// Installs `policy` (or keeps the current one, for a store change);
    /// starts a new generation unless the policy's revision is unchanged.
    fn change(&self, policy: Option<Policy>) {
        let _changing = self
            .changing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = self.state();
        let (policy, generation) = match policy {
            Some(p) if p.revision == old.policy.revision => (Arc::new(p), old.generation),
            Some(p) => (Arc::new(p), old.generation.wrapping_add(1)),
            None => (Arc::clone(&old.policy), old.generation.wrapping_add(1)),
        };
        if generation != old.generation {
            // The tables first: from here on they ignore the old
            // generation (requests holding the old state miss, and what
            // their verifications store is dropped), and no request gets
            // the new generation before the tables hold it, so nothing
            // registered under it is dropped.
            self.verdicts.clear(generation);
            self.content.clear(generation);
            self.break_glass.clear(generation);
        }
        let new = Arc::new(State::new(policy, generation));
        match self.state.write() {
            Ok(mut s) => *s = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    /// Decides whether `manifest`, fetched for `route`, may be served.
    ///
    /// A verdict-cache hit costs a key hash and a table lookup: the
    /// manifest is parsed again only when its admitted content may have
    /// aged out of the content table (once per rotation, for images still
    /// pulled), so blobs stay servable as long as the verdict is served.
    pub async fn admit<'m>(
        &self,
        upstreams: &[Arc<Upstream>],
        route: &Route,
        manifest: &'m Manifest,
    ) -> Result<Outcome<'m>, VerifyError> {
        self.admit_with(upstreams, route, manifest, None).await
    }

    /// [`Verifier::admit`], taking the verdict [`Verifier::fetch_and_verify`]
    /// already reached for this manifest, if any.
    pub async fn admit_with<'m>(
        &self,
        upstreams: &[Arc<Upstream>],
        route: &Route,
        manifest: &'m Manifest,
        early: Option<Early>,
    ) -> Result<Outcome<'m>, VerifyError> {
        let state = self.state();
        let policy = &state.policy;
        if !policy.configured {
            let decision = state.unconfigured.get_or_init(|| {
                Arc::new(policy::evaluate(
                    &policy.rule_for(&route.canonical()),
                    &HashMap::new(),
                ))
            });
            return Ok(Outcome::Admitted(Admission {
                manifest,
                decision: Arc::clone(decision),
                cache_hit: false,
            }));
        }
        let scope = state.scope(route);
        let key = scope.key_of(&manifest.digest);
        let (hit, cache_hit) = match early {
            // Reached under the current generation for these bytes.
            Some(early) if early.key == key => (early.result?, early.cache_hit),
            _ => match self.verdicts.get(&key) {
                Some(hit) => {
                    self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    (hit, true)
                }
                None => {
                    self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
                    // Boxed: the verification's state (kilobytes of nested
                    // futures) is only allocated on a miss, so the future of
                    // every request, hits included, stays small.
                    let flight = || {
                        Box::pin(self.flights.run(key, || async {
                            // A verification of this key may have finished
                            // between the miss above and joining the flight.
                            if let Some(hit) = self.verdicts.get(&key) {
                                return Ok(hit);
                            }
                            self.within_deadline(self.verify_miss(
                                &state, &scope, upstreams, route, manifest, &key, None,
                            ))
                            .await
                        }))
                    };
                    let hit = match flight().await {
                        // Joined a `fetch_and_verify` whose manifest fetch
                        // failed; this request has the manifest, so it
                        // verifies it in a flight of its own.
                        Err(VerifyError::ManifestUnavailable) => flight().await?,
                        result => result?,
                    };
                    (hit, false)
                }
            },
        };
        let decision = hit.decision;
        if !decision.serves() {
            return Ok(Outcome::Denied {
                image: format!("{}@{}", route.canonical(), manifest.digest),
                decision,
                cache_hit,
            });
        }
        if !self.content.is_current(hit.content) {
            let content = self.register(&state, &scope, route, manifest);
            self.verdicts.set_content(&key, content);
        }
        Ok(Outcome::Admitted(Admission {
            manifest,
            decision,
            cache_hit,
        }))
    }

    /// Fetches a manifest requested by `digest` with `fetch` and, on a
    /// verdict-cache miss, verifies it: the evidence lookups need only the
    /// digest, so they run while the manifest is fetched, saving a cold
    /// verification one upstream round trip. Concurrent requests for the
    /// digest share one verification, as in [`Verifier::admit`]. Returns
    /// the manifest and what to hand [`Verifier::admit_with`]; a failed
    /// fetch is returned as is, and then nothing else is looked up.
    pub async fn fetch_and_verify<E, F>(
        &self,
        upstreams: &[Arc<Upstream>],
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
            let manifest = fetch.await?;
            let early = Early {
                key,
                result: Ok(hit),
                cache_hit: true,
            };
            return Ok((manifest, Some(early)));
        }
        let name = route.canonical();
        let rule = state.policy.rule_for(&name);
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
                let gather = self.gather(&state, upstreams, route, &rule, digest);
                let mut gather = std::pin::pin!(gather);
                let mut fetching = fetching;
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
                self.verify_miss(
                    &state,
                    &scope,
                    upstreams,
                    route,
                    &manifest,
                    &key,
                    Some(gathered),
                )
                .await
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

    /// A verdict-cache miss: decides, registers the admitted content and
    /// caches the verdict.
    #[allow(clippy::too_many_arguments)]
    async fn verify_miss(
        &self,
        state: &State,
        scope: &Scope,
        upstreams: &[Arc<Upstream>],
        route: &Route,
        manifest: &Manifest,
        key: &Key,
        gathered: Option<Result<Gathered<'_>, VerifyError>>,
    ) -> Result<Hit, VerifyError> {
        let mut decision = self
            .decide(state, upstreams, route, manifest, key, gathered)
            .await?;
        if !decision.serves() {
            // An index listing it may have been admitted while this
            // verification ran (its denial would otherwise stick until
            // the deny TTL).
            if let Some(listed) = self.content.child(key) {
                decision = listed;
            }
        }
        // Content first: a verdict is only found with its content in place.
        let content = if decision.serves() {
            self.register(state, scope, route, manifest)
        } else {
            self.content.epoch()
        };
        self.verdicts.insert(key, Arc::clone(&decision), content);
        Ok(Hit { decision, content })
    }

    /// Admits a denied manifest because a valid break-glass credential was
    /// presented (`proof`, which only [`crate::breakglass`] makes; the
    /// caller records the use). Nothing is admitted for anyone else: its
    /// blobs and children go to the break-glass table, which only
    /// requests carrying a valid credential consult
    /// ([`Verifier::break_glass_blob`]), and cached denials stay.
    pub async fn admit_break_glass<'m>(
        &self,
        route: &Route,
        manifest: &'m Manifest,
        decision: Arc<Decision>,
        proof: &crate::breakglass::Use,
    ) -> Admission<'m> {
        let _ = proof;
        let state = self.state();
        let scope = state.scope(route);
        if let Ok(reading) = read(manifest) {
            let blobs: Vec<cache::Id> = reading
                .config
                .iter()
                .chain(reading.layers.iter())
                .map(|b| scope.key_of(&b.digest).id)
                .collect();
            self.break_glass.admit(state.generation, &blobs, &[], None);
        }
        Admission {
            manifest,
            decision,
            cache_hit: false,
        }
    }

    /// Whether `digest` belongs to an image admitted by break-glass in this
    /// repository (the caller has checked the request's credential).
    pub fn break_glass_blob(&self, route: &Route, digest: &Digest) -> bool {
        let state = self.state();
        self.break_glass
            .has_blob(&state.scope(route).key_of(digest))
    }

    /// Whether a blob may be served: always without a policy, under an
    /// ALWAYS_ALLOW or dry-run rule, or when an admitted manifest in the
    /// same repository references it.
    pub async fn blob_allowed(&self, route: &Route, digest: &Digest) -> Result<(), Arc<Decision>> {
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

    /// Verdicts currently cached (expired ones are dropped first).
    pub async fn cached_verdicts(&self) -> u64 {
        self.verdicts.purge_expired()
    }

    /// Evaluates without the cache, for `portcullis verify`.
    pub async fn explain(
        &self,
        upstreams: &[Arc<Upstream>],
        route: &Route,
        manifest: &Manifest,
    ) -> Result<Decision, VerifyError> {
        let state = self.state();
        let key = state.scope(route).key_of(&manifest.digest);
        self.within_deadline(self.decide(&state, upstreams, route, manifest, &key, None))
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
    async fn decide(
        &self,
        state: &State,
        upstreams: &[Arc<Upstream>],
        route: &Route,
        manifest: &Manifest,
        key: &Key,
        gathered: Option<Result<Gathered<'_>, VerifyError>>,
    ) -> Result<Arc<Decision>, VerifyError> {
        let policy = &*state.policy;
        let name = route.canonical();
        let rule = policy.rule_for(&name);
        if rule.evaluation != EvaluationMode::RequireAttestation {
            // No evidence is read: the decision is the rule's alone.
            return Ok(state.shared(&rule, || {
                policy::evaluate_in(policy, &rule, &HashMap::new())
            }));
        }
        let reading = match read(manifest) {
            Ok(reading) => reading,
            Err(unreadable) => return Ok(Arc::new(policy::refuse(&rule, unreadable.to_string()))),
        };
        if let Some(listed) = self.content.child(key) {
            return Ok(listed);
        }
        // Evidence of an admitted image is served as evidence; a manifest
        // that fails that test is an image like any other.
        let not_evidence = match artifact::relation(route, &manifest.digest, &reading) {
            Ok(None) => None,
            Ok(Some(subject)) => {
                match self
                    .evidence_artifact(state, upstreams, route, &rule, &reading, &subject)
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
            None => {
                self.gather(state, upstreams, route, &rule, &manifest.digest)
                    .await
            }
        };
        let gathered = match gathered {
            Ok(gathered) => gathered,
            Err(VerifyError::Limit(why)) => return Ok(Arc::new(policy::refuse(&rule, why))),
            Err(e) => return Err(e),
        };
        let mut evidence: HashMap<String, Vec<Evidence>> = HashMap::new();
        let target = evidence::Target {
            name: &name,
            digest: &manifest.digest,
            manifest: &manifest.bytes,
            identity: &rule.signed_identity,
            require_named: rule.require_named_identity,
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
            let items = store.items_for(manifest.digest.hex());
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
        upstreams: &[Arc<Upstream>],
        route: &Route,
        rule: &Rule,
        reading: &Reading,
        subject: &Digest,
    ) -> Result<Result<Arc<Decision>, String>, VerifyError> {
        if let Err(why) = self
            .subject_admitted(state, upstreams, route, subject)
            .await?
        {
            return Ok(Err(why));
        }
        let budget = self.evidence.budget();
        let upstream = &upstreams[route.upstream];
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
        upstreams: &[Arc<Upstream>],
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
        let upstream = &upstreams[route.upstream];
        let Some(manifest) = fetch_manifest(upstream, &route.repository, subject).await? else {
            return Ok(Err(format!(
                "the image it is evidence for ({subject}) is not in the repository"
            )));
        };
        // Evidence of evidence is not followed: one level only.
        if read(&manifest).is_ok_and(|r| r.subject.is_some()) {
            return Ok(Err(format!(
                "{subject}, which it is evidence for, is itself a referrer"
            )));
        }
        let subject_route = Route {
            endpoint: Endpoint::Manifest(Reference::Digest(subject.clone())),
            ..route.clone()
        };
        match Box::pin(self.admit(upstreams, &subject_route, &manifest)).await? {
            Outcome::Admitted(_) => Ok(Ok(())),
            Outcome::Denied { decision, .. } => Ok(denied(&decision)),
        }
    }

    /// Looks up the evidence `rule`'s attestors can use for `digest`: one
    /// lookup per signature location, shared by the attestors that keep
    /// their signatures there, all under one evidence budget. Needs the
    /// digest only, not the manifest.
    async fn gather<'s>(
        &self,
        state: &'s State,
        upstreams: &[Arc<Upstream>],
        route: &Route,
        rule: &Rule,
        digest: &Digest,
    ) -> Result<Gathered<'s>, VerifyError> {
        let policy = &*state.policy;
        let name = route.canonical();
        let budget = self.evidence.budget();
        let mut locations: HashMap<(usize, String), Vec<&'s Attestor>> = HashMap::new();
        for attestor_name in &rule.attestors {
            let Some(attestor) = policy.attestors.get(attestor_name) else {
                continue;
            };
            let location =
                signature_location(upstreams, route, attestor.signature_repository.as_deref());
            locations.entry(location).or_default().push(attestor);
        }
        let mut gathered = Vec::with_capacity(locations.len());
        for ((upstream_index, repository), attestors) in locations {
            let found = self
                .lookup(
                    Arc::clone(&upstreams[upstream_index]),
                    &budget,
                    &repository,
                    &name,
                    digest,
                    Wants::for_attestors(&attestors),
                )
                .await?;
            gathered.push((attestors, found));
        }
        Ok(Gathered {
            locations: gathered,
            _budget: budget,
        })
    }

    /// Looks up, concurrently, everything one location holds for `digest`
    /// (an image of the repository `name`) that `attestors` can use:
    /// `.sig` signatures, `.att` envelopes and referrer bundles, every
    /// byte charged to `budget`; all of it within `timeouts.evidence`.
    pub async fn lookup(
        &self,
        upstream: Arc<Upstream>,
        budget: &Arc<budget::Budget>,
        repository: &str,
        name: &str,
        digest: &Digest,
        wants: Wants,
    ) -> Result<Found, VerifyError> {
        let signatures = async {
            if !wants.signatures {
                return Ok(Vec::new());
            }
            self.stats.signature_lookups.fetch_add(1, Ordering::Relaxed);
            let likely = simple_signing::likely_payloads(name, &digest.to_string());
            cosign::signatures(Arc::clone(&upstream), budget, repository, digest, &likely).await
        };
        let envelopes = async {
            if !wants.attestations {
                return Ok(Vec::new());
            }
            self.stats.signature_lookups.fetch_add(1, Ordering::Relaxed);
            cosign::attestations(Arc::clone(&upstream), budget, repository, digest).await
        };
        let bundles = async {
            self.stats.referrer_lookups.fetch_add(1, Ordering::Relaxed);
            referrers::bundles(Arc::clone(&upstream), budget, repository, digest).await
        };
        let (signatures, envelopes, bundles) = upstream
            .within(
                self.timeouts.evidence,
                "evidence",
                || format!("the evidence for {repository}@{digest}"),
                async { tokio::try_join!(signatures, envelopes, bundles) },
            )
            .await?;
        Ok(Found {
            signatures,
            envelopes,
            bundles,
        })
    }

    /// Every piece of evidence found for `manifest`, checked for every
    /// attestor of the policy (not only those its rule requires): what
    /// `portcullis attestations list` shows.
    pub async fn all_evidence(
        &self,
        upstreams: &[Arc<Upstream>],
        route: &Route,
        manifest: &Manifest,
    ) -> Result<Vec<(String, Vec<Evidence>)>, VerifyError> {
        let policy = self.policy();
        let name = route.canonical();
        let rule = policy.rule_for(&name);
        let target = evidence::Target {
            name: &name,
            digest: &manifest.digest,
            manifest: &manifest.bytes,
            identity: &rule.signed_identity,
            require_named: rule.require_named_identity,
        };
        let mut attestors: Vec<&Attestor> = policy.attestors.values().collect();
        attestors.sort_by(|a, b| a.name.cmp(&b.name));
        let mut locations: HashMap<(usize, String), Vec<&Attestor>> = HashMap::new();
        for attestor in &attestors {
            let location =
                signature_location(upstreams, route, attestor.signature_repository.as_deref());
            locations.entry(location).or_default().push(attestor);
        }
        let budget = self.evidence.budget();
        let mut found: HashMap<&str, Vec<Evidence>> = HashMap::new();
        for ((upstream_index, repository), at_location) in &locations {
            // Everything there, whatever these attestors would use.
            let all = self
                .lookup(
                    Arc::clone(&upstreams[*upstream_index]),
                    &budget,
                    repository,
                    &name,
                    &manifest.digest,
                    Wants::ALL,
                )
                .await?;
            for attestor in at_location {
                let mut evidence = evidence::from_signatures(&all.signatures, attestor, &target);
                evidence.extend(evidence::from_envelopes(&all.envelopes, attestor, &target));
                evidence.extend(evidence::from_bundles(&all.bundles, attestor, &target));
                found.entry(&attestor.name).or_default().extend(evidence);
            }
        }
        if let Some(store) = &self.store {
            let items = store.items_for(manifest.digest.hex());
            for attestor in &attestors {
                found
                    .entry(&attestor.name)
                    .or_default()
                    .extend(evidence::from_store(&items, attestor, &target));
            }
        }
        Ok(attestors
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    found.remove(a.name.as_str()).unwrap_or_default(),
                )
            })
            .collect())
    }

    /// Makes the config and layers of an admitted manifest servable and,
    /// for an index, admits the manifests it lists (they are then allowed
    /// as "listed by admitted index …", one decision shared by them all);
    /// returns the content epoch they were registered in. A manifest
    /// without one unambiguous reading registers nothing.
    fn register(&self, state: &State, scope: &Scope, route: &Route, manifest: &Manifest) -> u32 {
        let Ok(reading) = read(manifest) else {
            // Nothing to register: current by definition.
            return self.content.epoch();
        };
        let blobs: Vec<cache::Id> = reading
            .config
            .iter()
            .chain(reading.layers.iter())
            .map(|b| scope.key_of(&b.digest).id)
            .collect();
        if reading.kind != Kind::Index {
            return self.content.admit(state.generation, &blobs, &[], None);
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
            reason: format!("listed by admitted index {}", manifest.digest),
        });
        let epoch = self
            .content
            .admit(state.generation, &blobs, &ids, Some(&listed));
        // A child denied before its index was admitted is admitted now.
        for child in &children {
            self.verdicts.remove_denied(child);
        }
        epoch
    }
}

/// The one reading of a manifest ([`crate::oci::manifest::read`]).
fn read(manifest: &Manifest) -> Result<Reading, crate::oci::manifest::Unreadable> {
    crate::oci::manifest::read(&manifest.bytes, manifest.media_type.to_str().unwrap_or(""))
}

/// Every manifest type a client may accept, for fetching a subject image.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Fetches the manifest `digest` of `repository` (bounded, digest-checked);
/// `None` when the upstream does not have it.
async fn fetch_manifest(
    upstream: &Upstream,
    repository: &str,
    digest: &Digest,
) -> Result<Option<Manifest>, VerifyError> {
    let what = format!("{}/{repository}@{digest}", upstream.registry);
    let mut accept = http::HeaderMap::new();
    accept.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(ACCEPT_MANIFESTS),
    );
    let path = format!("/v2/{repository}/manifests/{digest}");
    let response = upstream
        .fetch(http::Method::GET, &path, repository, &accept)
        .await?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        status => return Err(VerifyError::Status { what, status }),
    }
    let media_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| http::HeaderValue::from_static(""));
    let bytes = cosign::read_bounded(
        response.into_body(),
        crate::serve::MAX_MANIFEST_BYTES,
        &what,
    )
    .await?;
    if digest.same_algorithm_of(&bytes) != *digest {
        return Err(VerifyError::Invalid {
            what,
            reason: "content does not match its digest".into(),
        });
    }
    Ok(Some(Manifest::new(bytes, digest.clone(), media_type)))
}

/// Statuses meaning "no referrers API here": the spec says 404; some
/// registries answer 405 or 501 for endpoints they do not implement.
pub(crate) fn no_referrers_api(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
    )
}

/// Where an attestor's signatures live: the image's repository, or its
/// `signatureRepository` (`repo/path` on the same upstream, or
/// `<registry>/repo/path` on the upstream with that registry).
fn signature_location(
    upstreams: &[Arc<Upstream>],
    route: &Route,
    signature_repository: Option<&str>,
) -> (usize, String) {
    let Some(repo) = signature_repository else {
        return (route.upstream, route.repository.clone());
    };
    if let Some((first, rest)) = repo.split_once('/') {
        if let Some(i) = upstreams.iter().position(|u| u.registry == first) {
            return (i, rest.to_owned());
        }
    }
    (route.upstream, repo.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::routing::{Routed, Router};
    use http::{HeaderValue, Method};
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    use std::path::Path;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Env {
        verifier: Verifier,
        upstreams: Vec<Arc<Upstream>>,
        router: Router,
        config: Config,
    }

    /// A proxy configuration for `registry.example` at `url` with `policy`
    /// (YAML, indented under `policy:`) and an attestor `ci`.
    fn config(url: &str, policy: &str) -> Config {
        let signing = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem");
        let pem: String = pem.lines().map(|l| format!("            {l}\n")).collect();
        let yaml = format!(
            "listen: 127.0.0.1:0\n\
             upstreams:\n  - registry: registry.example\n    url: {url}\n    default: true\n\
             policy:\n{policy}\
             attestors:\n  - name: ci\n    publicKeys:\n      - id: k1\n        pkixPublicKey:\n          publicKeyPem: |\n{pem}          signatureAlgorithm: ECDSA_P256_SHA256\n\
             cache: {{allowTtl: 10m, denyTtl: 30s, maxEntries: 1000}}\n"
        );
        Config::from_yaml(&yaml, Path::new(".")).expect("config")
    }

    const REQUIRE: &str = "  defaultAdmissionRule:\n    evaluationMode: REQUIRE_ATTESTATION\n    \
                           requireAttestationsBy: [ci]\n";
    const ALLOW: &str = "  defaultAdmissionRule:\n    evaluationMode: ALWAYS_ALLOW\n";

    fn env(url: &str, policy: &str, content_capacity: usize) -> Env {
        let config = config(url, policy);
        let verifier = Verifier::with_content_capacity(
            config.compile_policy().expect("policy"),
            config.cache,
            content_capacity,
        );
        let upstreams = vec![Arc::new(
            Upstream::new(&config.upstreams[0], config.timeouts).expect("upstream"),
        )];
        Env {
            verifier,
            upstreams,
            router: Router::new(&config),
            config,
        }
    }

    impl Env {
        fn route(&self, digest: &Digest) -> Route {
            match self
                .router
                .route(
                    &Method::GET,
                    &format!("/v2/demo/app/manifests/{digest}"),
                    None,
                )
                .expect("route")
            {
                Routed::Repository(r) => r,
                Routed::Base => panic!("not a repository route"),
            }
        }

        async fn admit(&self, manifest: &Manifest) -> (Arc<Decision>, bool) {
            let route = self.route(&manifest.digest);
            match self
                .verifier
                .admit(&self.upstreams, &route, manifest)
                .await
                .expect("admit")
            {
                Outcome::Admitted(a) => (a.decision, a.cache_hit),
                Outcome::Denied {
                    decision,
                    cache_hit,
                    ..
                } => (decision, cache_hit),
            }
        }

        async fn blob_allowed(&self, digest: &str) -> bool {
            let digest: Digest = digest.parse().expect("digest");
            let route = self.route(&digest);
            self.verifier.blob_allowed(&route, &digest).await.is_ok()
        }

        /// Caches `decision` for `manifest` as an earlier verification
        /// would have, its content registered in an epoch long gone.
        fn cache(&self, manifest: &Manifest, decision: Verdict) {
            let state = self.verifier.state();
            let key = state
                .scope(&self.route(&manifest.digest))
                .key_of(&manifest.digest);
            let decision = Arc::new(Decision {
                verdict: decision,
                rule: RuleSource::Default,
                evaluation: EvaluationMode::RequireAttestation,
                enforcement: EnforcementMode::EnforcedBlockAndAuditLog,
                attestors: Vec::new(),
                reason: "attestor ci: verified".into(),
            });
            let stale = self.verifier.content.epoch().wrapping_sub(7);
            self.verifier.verdicts.insert(&key, decision, stale);
        }
    }

    fn digest_text(n: u64) -> String {
        format!("sha256:{n:064x}")
    }

    /// An image manifest with config `n` and layer `n + 1`.
    fn image(n: u64) -> Manifest {
        let text = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
             \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{}\",\"size\":2}},\
             \"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"{}\",\"size\":3}}]}}",
            digest_text(n),
            digest_text(n + 1)
        );
        let bytes = Bytes::from(text);
        Manifest::new(
            bytes.clone(),
            Digest::sha256_of(&bytes),
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        )
    }

    fn index(children: &[&Manifest]) -> Manifest {
        let listed: Vec<String> = children
            .iter()
            .map(|m| {
                format!(
                    "{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"{}\",\"size\":{}}}",
                    m.digest,
                    m.bytes.len()
                )
            })
            .collect();
        let text = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{}]}}",
            listed.join(",")
        );
        let bytes = Bytes::from(text);
        Manifest::new(
            bytes.clone(),
            Digest::sha256_of(&bytes),
            HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
        )
    }

    /// An upstream answering 404 to everything, once `open` is sent
    /// `true`; counts the requests it received.
    async fn gated_upstream() -> (String, tokio::sync::watch::Sender<bool>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (open, gate) = tokio::sync::watch::channel(false);
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut gate = gate.clone();
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                        if !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            continue;
                        }
                        request.clear();
                        counted.fetch_add(1, Ordering::SeqCst);
                        if gate.wait_for(|open| *open).await.is_err() {
                            return;
                        }
                        let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, open, requests)
    }

    #[tokio::test]
    async fn a_verdict_decided_under_an_old_policy_is_never_served_after_a_change() {
        let (url, open, requests) = gated_upstream().await;
        let env = Arc::new(env(&url, REQUIRE, MAX_ADMITTED_CONTENT as usize));
        let manifest = image(1);
        // A cold pull under REQUIRE_ATTESTATION: its signature lookup waits
        // at the upstream.
        let old = {
            let env = Arc::clone(&env);
            let manifest = manifest.clone();
            tokio::spawn(async move { env.admit(&manifest).await })
        };
        for _ in 0..200 {
            if requests.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(requests.load(Ordering::SeqCst) > 0, "no lookup started");
        // The policy changes while that verification runs.
        let allow = config(&url, ALLOW).compile_policy().expect("policy");
        env.verifier.set_policy(allow);
        // A pull under the new policy neither waits for nor reuses the
        // running verification.
        let (decision, cache_hit) =
            tokio::time::timeout(Duration::from_secs(5), env.admit(&manifest))
                .await
                .expect("the new generation joined the old verification");
        assert_eq!(decision.verdict, Verdict::Allow);
        assert!(!cache_hit);
        // The old verification finishes: denied under the old policy (no
        // signature), which its own request gets.
        open.send(true).expect("open");
        let (decision, _) = old.await.expect("old admit");
        assert_eq!(decision.verdict, Verdict::Deny, "{}", decision.reason);
        // Its verdict was not stored for the new generation.
        let (decision, cache_hit) = env.admit(&manifest).await;
        assert_eq!(decision.verdict, Verdict::Allow, "{}", decision.reason);
        assert!(cache_hit, "the new generation's own verdict is cached");
    }

    #[tokio::test]
    async fn a_pull_joining_a_verification_whose_manifest_fetch_failed_verifies_on_its_own() {
        let (url, open, requests) = gated_upstream().await;
        let env = Arc::new(env(&url, REQUIRE, MAX_ADMITTED_CONTENT as usize));
        let manifest = image(20);
        // A pull by digest: its evidence lookups start (and wait at the
        // upstream) while its manifest fetch is pending.
        let (fail, failed) = tokio::sync::oneshot::channel::<()>();
        let by_digest = {
            let env = Arc::clone(&env);
            let digest = manifest.digest.clone();
            tokio::spawn(async move {
                let route = env.route(&digest);
                let fetch = async move {
                    let _ = failed.await;
                    Err::<Manifest, &str>("upstream answered 500")
                };
                env.verifier
                    .fetch_and_verify(&env.upstreams, &route, &digest, fetch)
                    .await
                    .map(|_| ())
            })
        };
        for _ in 0..200 {
            if requests.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(requests.load(Ordering::SeqCst) > 0, "no lookup started");
        // Another pull of the same digest, which has the manifest (by tag),
        // joins that verification; then the first fetch fails.
        let by_tag = {
            let env = Arc::clone(&env);
            let manifest = manifest.clone();
            tokio::spawn(async move {
                let route = env.route(&manifest.digest);
                env.verifier
                    .admit(&env.upstreams, &route, &manifest)
                    .await
                    .map(|o| matches!(o, Outcome::Admitted(_)))
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        fail.send(()).expect("fail the fetch");
        assert_eq!(
            by_digest.await.expect("task").err(),
            Some("upstream answered 500"),
            "the fetching pull gets its own fetch error"
        );
        open.send(true).expect("open");
        // The joined pull is not failed by the other pull's missing
        // manifest: it verifies (no signature upstream: denied).
        let admitted = tokio::time::timeout(Duration::from_secs(10), by_tag)
            .await
            .expect("the joined pull finished")
            .expect("task")
            .expect("verified on its own, not failed with the other fetch");
        assert!(!admitted, "no signature: denied");
    }

    #[tokio::test]
    async fn a_generation_change_drops_verdicts_and_content() {
        let env = env("http://127.0.0.1:9", REQUIRE, MAX_ADMITTED_CONTENT as usize);
        let manifest = image(10);
        env.cache(&manifest, Verdict::Allow);
        assert!(env.admit(&manifest).await.1);
        assert!(env.blob_allowed(&digest_text(10)).await);
        // The attestation store changed (what `refresh_store` does).
        env.verifier.change(None);
        assert!(!env.blob_allowed(&digest_text(10)).await);
        assert_eq!(env.verifier.cached_verdicts().await, 0);
        // The same revision again keeps everything.
        env.cache(&manifest, Verdict::Allow);
        env.admit(&manifest).await;
        env.verifier
            .set_policy(env.config.compile_policy().expect("policy"));
        assert!(env.blob_allowed(&digest_text(10)).await);
        assert!(env.admit(&manifest).await.1);
    }

    #[tokio::test]
    async fn blobs_of_an_admitted_image_stay_servable_while_its_verdict_is_served() {
        // Room for 8 blobs: 4 per segment, two images each.
        let env = env("http://127.0.0.1:9", REQUIRE, 8);
        let manifest = image(100);
        env.cache(&manifest, Verdict::Allow);
        assert!(!env.blob_allowed(&digest_text(100)).await);
        // A verdict-cache hit registers the content that aged out.
        assert!(env.admit(&manifest).await.1);
        assert!(env.blob_allowed(&digest_text(100)).await);
        assert!(env.blob_allowed(&digest_text(101)).await);
        assert!(
            !env.blob_allowed(&digest_text(102)).await,
            "a blob the image does not list"
        );
        // Other images push it out of the content table (two rotations).
        for n in 0..4 {
            let other = image(1000 + 10 * n);
            env.cache(&other, Verdict::Allow);
            env.admit(&other).await;
        }
        assert!(!env.blob_allowed(&digest_text(100)).await);
        // Its next pull is still a hit, and makes its blobs servable again.
        assert!(env.admit(&manifest).await.1);
        assert!(env.blob_allowed(&digest_text(100)).await);
        assert!(env.blob_allowed(&digest_text(101)).await);
        // A hit with the content current registers nothing again.
        let key = env
            .verifier
            .state()
            .scope(&env.route(&manifest.digest))
            .key_of(&manifest.digest);
        let epoch = env.verifier.content.epoch();
        assert!(env.admit(&manifest).await.1);
        assert_eq!(env.verifier.content.epoch(), epoch);
        assert_eq!(
            env.verifier.verdicts.get(&key).map(|h| h.content),
            Some(epoch)
        );
        // A denied image's blobs are not servable.
        let denied = image(200);
        env.cache(&denied, Verdict::Deny);
        assert_eq!(env.admit(&denied).await.0.verdict, Verdict::Deny);
        assert!(!env.blob_allowed(&digest_text(200)).await);
    }

    #[tokio::test]
    async fn an_admitted_index_admits_its_children_and_lifts_their_denials() {
        let env = env("http://127.0.0.1:9", REQUIRE, MAX_ADMITTED_CONTENT as usize);
        let (a, b) = (image(300), image(310));
        let list = index(&[&a, &b]);
        env.cache(&b, Verdict::Deny);
        assert_eq!(env.admit(&b).await.0.verdict, Verdict::Deny);
        env.cache(&list, Verdict::Allow);
        assert!(env.admit(&list).await.1);
        // The children are decided from the index alone (the upstream at
        // 127.0.0.1:9 would fail a lookup), with one shared decision.
        let (da, hit) = env.admit(&a).await;
        assert!(!hit);
        assert_eq!(da.verdict, Verdict::Allow);
        assert_eq!(
            da.reason,
            format!("listed by admitted index {}", list.digest)
        );
        let (db, _) = env.admit(&b).await;
        assert_eq!(db.verdict, Verdict::Allow, "the child's denial was kept");
        assert!(Arc::ptr_eq(&da, &db));
        assert!(env.blob_allowed(&digest_text(301)).await);
    }

    #[tokio::test]
    async fn a_child_verified_while_its_index_is_admitted_is_not_left_denied() {
        let (url, open, requests) = gated_upstream().await;
        let env = Arc::new(env(&url, REQUIRE, MAX_ADMITTED_CONTENT as usize));
        let child = image(500);
        let list = index(&[&child]);
        // The child's own verification starts (and waits at the upstream)
        // before the index is admitted.
        let verifying = {
            let env = Arc::clone(&env);
            let child = child.clone();
            tokio::spawn(async move { env.admit(&child).await })
        };
        for _ in 0..200 {
            if requests.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(requests.load(Ordering::SeqCst) > 0, "no lookup started");
        env.cache(&list, Verdict::Allow);
        assert!(env.admit(&list).await.1);
        // The child has no signature of its own: denied by the rule, but
        // listed by the index admitted meanwhile.
        open.send(true).expect("open");
        let (decision, _) = verifying.await.expect("child admit");
        assert_eq!(decision.verdict, Verdict::Allow, "{}", decision.reason);
        let (decision, hit) = env.admit(&child).await;
        assert!(hit);
        assert_eq!(decision.verdict, Verdict::Allow, "{}", decision.reason);
    }

    #[tokio::test]
    async fn decisions_that_depend_on_the_rule_alone_are_shared() {
        let env = env("http://127.0.0.1:9", ALLOW, MAX_ADMITTED_CONTENT as usize);
        let (first, _) = env.admit(&image(400)).await;
        let (second, hit) = env.admit(&image(410)).await;
        assert!(!hit);
        assert_eq!(second.reason, "ALWAYS_ALLOW");
        assert!(Arc::ptr_eq(&first, &second));
        let unconfigured = Verifier::new(Policy::allow_all(), CacheConfig::default());
        let route = env.route(&image(1).digest);
        let decide = |m: Manifest| {
            let unconfigured = &unconfigured;
            let route = &route;
            let upstreams = &env.upstreams;
            async move {
                match unconfigured
                    .admit(upstreams, route, &m)
                    .await
                    .expect("admit")
                {
                    Outcome::Admitted(a) => a.decision,
                    Outcome::Denied { .. } => panic!("denied without a policy"),
                }
            }
        };
        let (x, y) = (decide(image(1)).await, decide(image(2)).await);
        assert!(Arc::ptr_eq(&x, &y));
        assert_eq!(x.verdict, Verdict::Exempt);
    }
}
