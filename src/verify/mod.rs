//! Verification: decides whether a fetched manifest may be served, and
//! remembers what was admitted.
//!
//! [`Verifier::admit`] is the only way to obtain an [`Admission`], and the
//! serve layer only sends a manifest through an `Admission`: a manifest
//! that was not verified cannot be served by construction.
//!
//! - The policy ([`crate::policy`]) picks the rule and evaluates evidence
//!   (pure).
//! - Evidence is fetched by the [`sources`] (I/O: cosign `.sig`/`.att`
//!   tags, OCI referrers, the local attestation store), read and checked
//!   by the [`formats`] (pure: simple-signing, DSSE, sigstore bundles,
//!   BinAuthz occurrences) and matched to attestors by [`evidence`]
//!   (pure), all within one evidence [`budget`].
//! - Verdicts are cached by (generation, upstream, repository, digest) —
//!   never by tag — with separate allow/deny TTLs; the generation changes
//!   with the policy revision and with the attestation store's evidence.
//!   Concurrent misses for one key share one verification. Failures to
//!   check are errors, never cached as denials (see the private `cache`).
//! - Admitted indexes admit the child manifests they list; admitted
//!   manifests admit their config and layer blobs ([`Verifier::permit_blob`]),
//!   for as long as their verdict is served (a verdict-cache hit registers
//!   them again when they may have aged out).
//! - A generation change serves nothing admitted before it, but a pull
//!   under way still asks for the blobs its manifest admitted: for a blob
//!   refused that way, [`Verifier::readmissions`] names the manifest (and
//!   the indexes listing it) to verify again under the current policy;
//!   the blob is served only if that admits it.
//!
//! - In a fleet (`state.redis`), verdicts and admitted content are also
//!   written to and read from the replicas' shared state ([`crate::fleet`]),
//!   behind these in-process tables and under a revision naming the
//!   policy, the upstreams and the store's evidence (the private `fleet`).
//!
//! May use: `oci`, `crypto`, `config`, `policy`, `routing`, `fleet`,
//! `upstream`, `breakglass`. Must never use: audit, alerts, serve, admin, server,
//! reload, app, cli: what happens to a decision after it is made is the
//! caller's business.

mod admission;
mod admit;
mod artifact;
pub mod budget;
mod cache;
mod decide;
pub mod evidence;
mod fleet;
pub mod formats;
pub mod sources;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use http::StatusCode;

use cache::{Clock, Content, Flights, Hit, Scope, Verdicts};

use crate::config::{CacheConfig, Limits, Timeouts};
use crate::policy::{Decision, EnforcementMode, Policy, Rule, RuleSource};
use crate::routing::Route;
use crate::upstream::{Upstream, UpstreamError};

pub use admission::{Admission, BlobPermit, Denial, Failed, Outcome};
/// For `fuzz/fuzz_targets/manifest.rs` only: how an artifact manifest's
/// evidence layers and config are judged. Not part of the API.
#[doc(hidden)]
pub use artifact::{config_is_inert, content_is, relation};
pub use sources::{Collected, Wants};

/// Admitted child manifests and blobs remembered, at most (36 bytes
/// each, and 32 per admitted manifest). Each admitted image adds its
/// config and layers; this bounds memory whatever is pulled. Twice 7/8 of
/// 2^20: each of the two segments of [`cache::Content`] then fills a
/// 2^20-bucket table exactly (~37 MiB) instead of growing a 2^21 one for a
/// few more entries. After a generation change the previous generation's
/// segments are kept, retired, for one allow TTL at most.
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

/// Counters other layers (metrics, tests, `verify`) read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Signature lookups sent upstream (one per `.sig` or `.att`
    /// manifest fetch).
    pub signature_lookups: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
}

/// Holds the current policy and the caches.
pub struct Verifier {
    /// One client per configured upstream, indexed by [`Route::upstream`].
    upstreams: Vec<Arc<Upstream>>,
    state: RwLock<Arc<State>>,
    /// Serializes generation changes (policy and store).
    changing: Mutex<()>,
    verdicts: Verdicts,
    /// Blobs of admitted manifests (and of signature artifacts), and
    /// child manifests of admitted indexes.
    content: Content,
    flights: Flights<Result<Hit, VerifyError>>,
    /// The local attestation store, when configured.
    store: Option<Arc<sources::store::Store>>,
    /// What evidence reads may cost, per verification and in total.
    evidence: budget::EvidenceLimits,
    /// Blobs and child manifests of break-glass admissions, served only to
    /// requests that present a valid break-glass credential.
    break_glass: cache::Content,
    /// `verification` and `evidence` bound every verification and every
    /// evidence lookup.
    timeouts: Timeouts,
    /// The fleet's shared state, when configured.
    fleet: Option<Arc<crate::fleet::Shared>>,
    /// The fleet's recoveries this verifier has renewed its content for.
    fleet_recoveries: AtomicU64,
    pub stats: Stats,
}

/// The policy in force and the generation of cache keys under it.
struct State {
    policy: Arc<Policy>,
    generation: u32,
    /// The fleet's name for this policy, these upstreams and the store's
    /// evidence: shared keys live under it (see the private `fleet`).
    revision: String,
    /// The revision before the last generation change: what the fleet
    /// admitted under it names the manifests to verify again for a pull
    /// that spans the change ([`Verifier::readmissions`]).
    retired_revision: Option<String>,
    /// Decisions that depend on the rule alone (ALWAYS_ALLOW, ALWAYS_DENY,
    /// allowlist, the artifact exemption), one `Arc` per rule and
    /// enforcement shared by every image they decide; at most twice the
    /// policy's rules.
    shared: Mutex<HashMap<(RuleSource, bool), Arc<Decision>>>,
    /// The decision for everything when no policy is configured.
    unconfigured: OnceLock<Arc<Decision>>,
}

impl State {
    fn new(policy: Arc<Policy>, generation: u32, revision: String) -> State {
        State {
            policy,
            generation,
            revision,
            retired_revision: None,
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

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier enforcing `policy`, reading evidence from `upstreams`
    /// (one per configured upstream, in configuration order).
    pub fn new(policy: Policy, cache: CacheConfig, upstreams: Vec<Arc<Upstream>>) -> Verifier {
        Verifier::with_content_capacity(policy, cache, upstreams, MAX_ADMITTED_CONTENT as usize)
    }

    fn with_content_capacity(
        policy: Policy,
        cache: CacheConfig,
        upstreams: Vec<Arc<Upstream>>,
        content: usize,
    ) -> Verifier {
        let clock = Arc::new(Clock::new());
        Verifier {
            upstreams,
            state: RwLock::new(Arc::new(State::new(Arc::new(policy), 0, String::new()))),
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
            fleet: None,
            fleet_recoveries: AtomicU64::new(0),
            stats: Stats::default(),
        }
        .with_revision()
    }

    /// Recomputes the state's fleet revision (after the store or the
    /// upstreams it names were set).
    fn with_revision(self) -> Verifier {
        let old = self.state();
        let revision = self.revision_of(&old.policy);
        let new = Arc::new(State::new(
            Arc::clone(&old.policy),
            old.generation,
            revision,
        ));
        match self.state.write() {
            Ok(mut s) => *s = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        self
    }

    /// Shares verdicts and admitted content with the other replicas
    /// through `fleet`.
    pub fn with_fleet(mut self, fleet: Arc<crate::fleet::Shared>) -> Verifier {
        self.fleet = Some(fleet);
        self
    }

    /// The fleet's shared state, when configured.
    pub fn fleet(&self) -> Option<&Arc<crate::fleet::Shared>> {
        self.fleet.as_ref()
    }

    /// The revision shared keys are under right now.
    pub fn fleet_revision(&self) -> String {
        self.state().revision.clone()
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
    pub fn with_store(mut self, store: Arc<sources::store::Store>) -> Verifier {
        self.store = Some(store);
        self.with_revision()
    }

    pub fn store(&self) -> Option<&Arc<sources::store::Store>> {
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
    /// where the new generation looks. A pull under way asks for blobs its
    /// manifest admitted under the old generation: the caller verifies
    /// that manifest again ([`Verifier::readmissions`]) rather than
    /// refusing them.
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
            // Kept (retired) to finish the pulls under way: see
            // `Verifier::readmissions`.
            self.content.retire(generation);
            self.break_glass.clear(generation);
        }
        let revision = self.revision_of(&policy);
        let mut new = State::new(policy, generation, revision);
        new.retired_revision = match generation != old.generation {
            true => Some(old.revision.clone()),
            false => old.retired_revision.clone(),
        };
        let new = Arc::new(new);
        match self.state.write() {
            Ok(mut s) => *s = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    /// Verdicts currently cached (expired ones are dropped first).
    pub async fn cached_verdicts(&self) -> u64 {
        self.verdicts.purge_expired()
    }
}

#[cfg(test)]
mod tests;
