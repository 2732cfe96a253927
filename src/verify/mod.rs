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
//! - Verdicts are cached by (policy revision, upstream, repository,
//!   digest) — never by tag — with separate allow/deny TTLs; concurrent
//!   misses for one key share one verification. Failures to check are
//!   errors, never cached as denials.
//! - Admitted indexes admit the child manifests they list; admitted
//!   manifests admit their config and layer blobs ([`Verifier::blob_allowed`]).

pub mod binauthz;
pub mod bundle;
pub mod cosign;
pub mod dsse;
pub mod evidence;
pub mod referrers;
pub mod simple_signing;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use moka::future::Cache;

use crate::config::CacheConfig;
use crate::oci::Digest;
use crate::policy::{
    self, Attestor, Decision, EnforcementMode, EvaluationMode, Evidence, Policy, RuleSource,
    Verdict,
};
use crate::routing::Route;
use crate::serve::manifest::Manifest;
use crate::upstream::{Upstream, UpstreamError};

/// Admitted child manifests and blobs remembered, at most. Each admitted
/// image adds its layers; this bounds memory whatever is pulled.
pub const MAX_ADMITTED_CONTENT: u64 = 1_000_000;
/// Largest image config read to tell a signature artifact from an image.
const MAX_ARTIFACT_CONFIG_BYTES: usize = 64 * 1024;

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

#[derive(Clone, Hash, PartialEq, Eq)]
struct Key {
    revision: Arc<str>,
    upstream: usize,
    repository: Arc<str>,
    digest: Arc<str>,
}

impl Key {
    /// The key of `digest` in `route`'s repository under `policy`.
    fn new(policy: &Policy, route: &Route, digest: &Digest) -> Key {
        Key {
            revision: policy.revision.as_str().into(),
            upstream: route.upstream,
            repository: route.repository.as_str().into(),
            digest: digest.to_string().into(),
        }
    }
}

struct VerdictExpiry {
    allow: Duration,
    deny: Duration,
}

impl moka::Expiry<Key, Arc<Decision>> for VerdictExpiry {
    fn expire_after_create(
        &self,
        _key: &Key,
        value: &Arc<Decision>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(if value.verdict == Verdict::Deny {
            self.deny
        } else {
            self.allow
        })
    }
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
    policy: RwLock<Arc<Policy>>,
    verdicts: Cache<Key, Arc<Decision>>,
    /// Child manifest → the admitted index that lists it.
    children: Cache<Key, Arc<str>>,
    /// Blobs of admitted manifests (and of signature artifacts).
    blobs: Cache<Key, ()>,
    /// The local attestation store, when configured.
    store: Option<Arc<store::Store>>,
    pub stats: Stats,
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
        let verdicts = Cache::builder()
            .max_capacity(cache.max_entries)
            .expire_after(VerdictExpiry {
                allow: cache.allow_ttl,
                deny: cache.deny_ttl,
            })
            .build();
        fn admitted<V: Clone + Send + Sync + 'static>(ttl: Duration) -> Cache<Key, V> {
            Cache::builder()
                .max_capacity(MAX_ADMITTED_CONTENT)
                .time_to_live(ttl)
                .build()
        }
        Verifier {
            policy: RwLock::new(Arc::new(policy)),
            verdicts,
            children: admitted(cache.allow_ttl),
            blobs: admitted(cache.allow_ttl),
            store: None,
            stats: Stats::default(),
        }
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
            self.verdicts.invalidate_all();
            self.children.invalidate_all();
            self.blobs.invalidate_all();
        }
        changed
    }

    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the policy. Cached verdicts of the old revision are never
    /// consulted again (the revision is part of every key) and are dropped.
    pub fn set_policy(&self, policy: Policy) {
        let changed = self.policy().revision != policy.revision;
        match self.policy.write() {
            Ok(mut p) => *p = Arc::new(policy),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(policy),
        }
        if changed {
            self.verdicts.invalidate_all();
            self.children.invalidate_all();
            self.blobs.invalidate_all();
        }
    }

    /// Decides whether `manifest`, fetched for `route`, may be served.
    pub async fn admit<'m>(
        &self,
        upstreams: &[Arc<Upstream>],
        route: &Route,
        manifest: &'m Manifest,
    ) -> Result<Outcome<'m>, VerifyError> {
        let policy = self.policy();
        let image = format!("{}@{}", route.canonical(), manifest.digest);
        if !policy.configured {
            return Ok(Outcome::Admitted(Admission {
                manifest,
                decision: Arc::new(policy::evaluate(&policy.rule_for(&image), &HashMap::new())),
                cache_hit: false,
            }));
        }
        let key = Key::new(&policy, route, &manifest.digest);
        let shape = cosign::shape(&manifest.bytes);
        let (decision, cache_hit) = match self.verdicts.get(&key).await {
            Some(d) => {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                (d, true)
            }
            None => {
                self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
                let upstream = Arc::clone(&upstreams[route.upstream]);
                let decision = self
                    .verdicts
                    .try_get_with(
                        key.clone(),
                        self.decide(
                            &policy,
                            upstreams,
                            upstream,
                            route,
                            manifest,
                            shape.as_ref(),
                            &key,
                        ),
                    )
                    .await
                    // The loader's error, shared by every waiter: keep its
                    // kind (a timeout stays a timeout).
                    .map_err(|e| (*e).clone())?;
                (decision, false)
            }
        };
        if !decision.serves() {
            return Ok(Outcome::Denied {
                image,
                decision,
                cache_hit,
            });
        }
        if let Some(shape) = &shape {
            self.remember_admitted(&key, shape, &manifest.media_type)
                .await;
        }
        Ok(Outcome::Admitted(Admission {
            manifest,
            decision,
            cache_hit,
        }))
    }

    /// Admits a denied manifest because a valid break-glass credential was
    /// presented (the caller has checked it and records the use). Its blobs
    /// become servable like an admitted image's.
    pub async fn admit_break_glass<'m>(
        &self,
        route: &Route,
        manifest: &'m Manifest,
        decision: Arc<Decision>,
    ) -> Admission<'m> {
        let policy = self.policy();
        let key = Key::new(&policy, route, &manifest.digest);
        if let Some(shape) = cosign::shape(&manifest.bytes) {
            self.remember_admitted(&key, &shape, &manifest.media_type)
                .await;
        }
        Admission {
            manifest,
            decision,
            cache_hit: false,
        }
    }

    /// Whether a blob may be served: always without a policy, under an
    /// ALWAYS_ALLOW or dry-run rule, or when an admitted manifest in the
    /// same repository references it.
    pub async fn blob_allowed(&self, route: &Route, digest: &Digest) -> Result<(), Arc<Decision>> {
        let policy = self.policy();
        if !policy.configured {
            return Ok(());
        }
        let rule = policy.rule_for(&route.canonical());
        if rule.evaluation == EvaluationMode::AlwaysAllow
            || rule.enforcement == EnforcementMode::DryrunAuditLogOnly
        {
            return Ok(());
        }
        let key = Key::new(&policy, route, digest);
        if self.blobs.contains_key(&key) {
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

    /// Verdicts currently cached.
    pub async fn cached_verdicts(&self) -> u64 {
        self.verdicts.run_pending_tasks().await;
        self.verdicts.entry_count()
    }

    /// Evaluates without the cache, for `portcullis verify`.
    pub async fn explain(
        &self,
        upstreams: &[Arc<Upstream>],
        route: &Route,
        manifest: &Manifest,
    ) -> Result<Decision, VerifyError> {
        let policy = self.policy();
        let key = Key::new(&policy, route, &manifest.digest);
        let shape = cosign::shape(&manifest.bytes);
        let upstream = Arc::clone(&upstreams[route.upstream]);
        self.decide(
            &policy,
            upstreams,
            upstream,
            route,
            manifest,
            shape.as_ref(),
            &key,
        )
        .await
        .map(|d| (*d).clone())
    }

    #[allow(clippy::too_many_arguments)]
    async fn decide(
        &self,
        policy: &Policy,
        upstreams: &[Arc<Upstream>],
        upstream: Arc<Upstream>,
        route: &Route,
        manifest: &Manifest,
        shape: Option<&cosign::ManifestShape>,
        key: &Key,
    ) -> Result<Arc<Decision>, VerifyError> {
        let name = route.canonical();
        let rule = policy.rule_for(&name);
        if let Some(shape) = shape {
            if shape.looks_like_artifact()
                && self
                    .artifact_config_is_inert(&upstream, route, shape)
                    .await?
            {
                return Ok(Arc::new(Decision {
                    verdict: Verdict::Exempt,
                    rule: RuleSource::Artifact,
                    evaluation: EvaluationMode::AlwaysAllow,
                    enforcement: rule.enforcement,
                    attestors: Vec::new(),
                    reason: "signature/attestation artifact: served unverified so verifiers can read it; it cannot run".into(),
                }));
            }
        }
        if let Some(index) = self.children.get(key).await {
            return Ok(Arc::new(Decision {
                verdict: Verdict::Allow,
                rule: rule.source,
                evaluation: rule.evaluation,
                enforcement: rule.enforcement,
                attestors: Vec::new(),
                reason: format!("listed by admitted index {index}"),
            }));
        }
        let mut evidence: HashMap<String, Vec<Evidence>> = HashMap::new();
        if rule.evaluation == EvaluationMode::RequireAttestation {
            let target = evidence::Target {
                name: &name,
                digest: &manifest.digest,
                manifest: &manifest.bytes,
                identity: &rule.signed_identity,
            };
            // One lookup per signature location, shared by the attestors
            // that keep their signatures there.
            let mut locations: HashMap<(usize, String), Vec<&Attestor>> = HashMap::new();
            for name in &rule.attestors {
                let Some(attestor) = policy.attestors.get(name) else {
                    continue;
                };
                let location =
                    signature_location(upstreams, route, attestor.signature_repository.as_deref());
                locations.entry(location).or_default().push(attestor);
            }
            for ((upstream_index, repository), attestors) in locations {
                let found = self
                    .lookup(
                        Arc::clone(&upstreams[upstream_index]),
                        &repository,
                        &manifest.digest,
                        Wants::for_attestors(&attestors),
                    )
                    .await?;
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
        }
        Ok(Arc::new(policy::evaluate_in(policy, &rule, &evidence)))
    }

    /// Looks up, concurrently, everything one location holds for `digest`
    /// that `attestors` can use: `.sig` signatures, `.att` envelopes and
    /// referrer bundles.
    pub async fn lookup(
        &self,
        upstream: Arc<Upstream>,
        repository: &str,
        digest: &Digest,
        wants: Wants,
    ) -> Result<Found, VerifyError> {
        let signatures = async {
            if !wants.signatures {
                return Ok(Vec::new());
            }
            self.stats.signature_lookups.fetch_add(1, Ordering::Relaxed);
            cosign::signatures(Arc::clone(&upstream), repository, digest).await
        };
        let envelopes = async {
            if !wants.attestations {
                return Ok(Vec::new());
            }
            self.stats.signature_lookups.fetch_add(1, Ordering::Relaxed);
            cosign::attestations(Arc::clone(&upstream), repository, digest).await
        };
        let bundles = async {
            self.stats.referrer_lookups.fetch_add(1, Ordering::Relaxed);
            referrers::bundles(Arc::clone(&upstream), repository, digest).await
        };
        let (signatures, envelopes, bundles) = tokio::try_join!(signatures, envelopes, bundles)?;
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
        };
        let mut attestors: Vec<&Attestor> = policy.attestors.values().collect();
        attestors.sort_by(|a, b| a.name.cmp(&b.name));
        let mut locations: HashMap<(usize, String), Vec<&Attestor>> = HashMap::new();
        for attestor in &attestors {
            let location =
                signature_location(upstreams, route, attestor.signature_repository.as_deref());
            locations.entry(location).or_default().push(attestor);
        }
        let mut found: HashMap<&str, Vec<Evidence>> = HashMap::new();
        for ((upstream_index, repository), at_location) in &locations {
            // Everything there, whatever these attestors would use.
            let all = self
                .lookup(
                    Arc::clone(&upstreams[*upstream_index]),
                    repository,
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

    async fn artifact_config_is_inert(
        &self,
        upstream: &Upstream,
        route: &Route,
        shape: &cosign::ManifestShape,
    ) -> Result<bool, VerifyError> {
        let Some(config) = &shape.config else {
            return Ok(false);
        };
        let Ok(digest) = config.digest.parse::<Digest>() else {
            return Ok(false);
        };
        if config.size > MAX_ARTIFACT_CONFIG_BYTES as u64 {
            return Ok(false);
        }
        let bytes = cosign::fetch_blob(
            upstream,
            &route.repository,
            &digest,
            MAX_ARTIFACT_CONFIG_BYTES,
        )
        .await?;
        Ok(cosign::config_is_inert(&bytes))
    }

    async fn remember_admitted(
        &self,
        key: &Key,
        shape: &cosign::ManifestShape,
        media_type: &http::HeaderValue,
    ) {
        let with_digest = |digest: &str| Key {
            digest: digest.into(),
            ..key.clone()
        };
        let content_type = media_type.to_str().unwrap_or("");
        if shape.is_index(content_type) {
            for child in &shape.children {
                let child_key = with_digest(child);
                // A child denied before its index was admitted is admitted now.
                if let Some(cached) = self.verdicts.get(&child_key).await {
                    if !cached.serves() {
                        self.verdicts.invalidate(&child_key).await;
                    }
                }
                self.children
                    .insert(child_key, Arc::clone(&key.digest))
                    .await;
            }
        }
        for blob in shape.config.iter().chain(shape.layers.iter()) {
            self.blobs.insert(with_digest(&blob.digest), ()).await;
        }
    }
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
