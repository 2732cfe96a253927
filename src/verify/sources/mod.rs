//! Evidence sources (I/O) and gathering: where each attestor's evidence
//! lives (the image's repository, or its `signatureRepository`), one
//! lookup per location through the sources — cosign `.sig`/`.att` tags
//! ([`cosign`]), sigstore bundles attached as OCI referrers
//! ([`referrers`]), the local attestation store ([`store`]) — all under one
//! evidence budget and deadline.
//!
//! May use: `upstream` (I/O), the verifier's budget and the formats. Must
//! never decide what evidence proves: the formats and `evidence` do.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::StatusCode;

pub mod cosign;
pub mod referrers;
pub mod store;

use crate::oci::manifest::{Manifest, MAX_MANIFEST_BYTES};
use crate::oci::Digest;
use crate::policy::{Attestor, Evidence, Rule};
use crate::routing::Route;
use crate::upstream::Upstream;
use crate::verify::formats::simple_signing;
use crate::verify::{budget, evidence, State, Verifier, VerifyError};

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
pub struct Collected {
    /// Simple-signing signatures from the `.sig` tag.
    pub signatures: Vec<cosign::FoundSignature>,
    /// DSSE envelopes from the `.att` tag, with their layer annotations.
    pub envelopes: Vec<cosign::FoundLayer>,
    /// Sigstore bundles attached as referrers.
    pub bundles: Vec<referrers::FoundBundle>,
}

impl Collected {
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

/// What each signature location holds, with the attestors that keep their
/// evidence there, and the budget the bytes were read under (held until
/// the evidence is weighed, so the global in-flight budget counts them).
pub(super) struct Gathered<'p> {
    pub(super) locations: Vec<(Vec<&'p Attestor>, Collected)>,
    _budget: Arc<budget::Budget>,
}

impl Verifier {
    /// Looks up the evidence `rule`'s attestors can use for `digest`: one
    /// lookup per signature location, shared by the attestors that keep
    /// their signatures there, all under one evidence budget. Needs the
    /// digest only, not the manifest.
    pub(super) async fn gather<'s>(
        &self,
        state: &'s State,
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
            let location = signature_location(
                &self.upstreams,
                route,
                attestor.signature_repository.as_deref(),
            );
            locations.entry(location).or_default().push(attestor);
        }
        let mut gathered = Vec::with_capacity(locations.len());
        for ((upstream_index, repository), attestors) in locations {
            let found = self
                .lookup(
                    Arc::clone(&self.upstreams[upstream_index]),
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
    ) -> Result<Collected, VerifyError> {
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
        let bundles = referrers::bundles(Arc::clone(&upstream), budget, repository, digest);
        let (signatures, envelopes, bundles) = upstream
            .within(
                self.timeouts.evidence,
                "evidence",
                || format!("the evidence for {repository}@{digest}"),
                async { tokio::try_join!(signatures, envelopes, bundles) },
            )
            .await?;
        Ok(Collected {
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
        route: &Route,
        manifest: &Manifest,
    ) -> Result<Vec<(String, Vec<Evidence>)>, VerifyError> {
        let policy = self.policy();
        let name = route.canonical();
        let rule = policy.rule_for(&name);
        let target = evidence::Target {
            name: &name,
            digest: manifest.digest(),
            manifest: manifest.bytes(),
            identity: &rule.signed_identity,
            require_named: rule.require_named_identity,
            now_ms: evidence::now_ms(),
        };
        let mut attestors: Vec<&Attestor> = policy.attestors.values().collect();
        attestors.sort_by(|a, b| a.name.cmp(&b.name));
        let mut locations: HashMap<(usize, String), Vec<&Attestor>> = HashMap::new();
        for attestor in &attestors {
            let location = signature_location(
                &self.upstreams,
                route,
                attestor.signature_repository.as_deref(),
            );
            locations.entry(location).or_default().push(attestor);
        }
        let budget = self.evidence.budget();
        let mut found: HashMap<&str, Vec<Evidence>> = HashMap::new();
        for ((upstream_index, repository), at_location) in &locations {
            // Everything there, whatever these attestors would use.
            let all = self
                .lookup(
                    Arc::clone(&self.upstreams[*upstream_index]),
                    &budget,
                    repository,
                    &name,
                    manifest.digest(),
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
            let items = store.items_for(manifest.digest().hex());
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
}

/// Every manifest type a client may accept, for fetching a subject image.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Fetches the manifest `digest` of `repository` (bounded, digest-checked);
/// `None` when the upstream does not have it.
pub(super) async fn fetch_manifest(
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
    let bytes = cosign::read_bounded(response.into_body(), MAX_MANIFEST_BYTES, &what).await?;
    match Manifest::by_digest(bytes, digest, media_type) {
        Ok(manifest) => Ok(Some(manifest)),
        Err(_) => Err(VerifyError::Invalid {
            what,
            reason: "content does not match its digest".into(),
        }),
    }
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
