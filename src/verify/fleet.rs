//! The verifier's side of the fleet ([`crate::fleet`]): what it writes
//! after a verification and reads before one.
//!
//! - After a cold verification under a `REQUIRE_ATTESTATION` rule, the
//!   admitted content (blobs; an index's children, with the index's
//!   digest) and then the verdict are written, before the manifest is
//!   answered, so a blob request reaching another replica right after
//!   finds them. Content lives twice the allow TTL: a replica adopting a
//!   verdict just before it expires serves it for one more allow TTL.
//! - Before verifying, a replica looks for the verdict (or an index
//!   listing the manifest) in one round trip, and adopts what it finds:
//!   registers the content in its own tables and caches the verdict.
//! - A blob this replica did not admit is looked up; when Redis cannot
//!   answer the blob is refused (fail closed), never served on doubt.
//!
//! Everything is keyed by the state's revision: SHA-256 over the policy
//! revision, the upstreams (a route's upstream index must mean the same
//! registry) and the attestation store's evidence digest. Two replicas
//! share only when all three agree.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::cache::{Key, Scope};
use super::{State, Verifier};
use crate::fleet::{FleetError, Table};
use crate::oci::manifest::{Kind, Manifest};
use crate::policy::{Decision, EvaluationMode, Policy, Verdict};
use crate::routing::Route;

/// What another replica left for a manifest.
pub(super) enum Shared {
    /// Its verdict (content already shared by whoever reached it).
    Verdict(Arc<Decision>),
    /// Admitted as the child of an admitted index.
    Listed(Arc<Decision>),
}

/// Hex digits of the revision in keys (128 bits).
const REVISION_HEX: usize = 32;

impl Verifier {
    /// The fleet revision of `policy` with these upstreams and the store's
    /// current evidence.
    pub(super) fn revision_of(&self, policy: &Policy) -> String {
        let mut h = Sha256::new();
        h.update(b"portcullis fleet revision\0");
        h.update((policy.revision.len() as u64).to_le_bytes());
        h.update(policy.revision.as_bytes());
        h.update((self.upstreams.len() as u64).to_le_bytes());
        for upstream in &self.upstreams {
            h.update((upstream.registry.len() as u64).to_le_bytes());
            h.update(upstream.registry.as_bytes());
        }
        match &self.store {
            Some(store) => h.update(store.evidence_digest()),
            None => h.update([0u8; 32]),
        }
        let mut revision = hex::encode(h.finalize());
        revision.truncate(REVISION_HEX);
        revision
    }

    /// Whether Redis came back since this was last asked: then the
    /// content table is renewed, so each admitted manifest's next request
    /// shares its content again (Redis may have restarted empty).
    pub(super) fn fleet_recovered(&self) -> bool {
        let Some(fleet) = &self.fleet else {
            return false;
        };
        let now = fleet.stats.recoveries.load(Ordering::Relaxed);
        if self.fleet_recoveries.swap(now, Ordering::Relaxed) == now {
            return false;
        }
        self.content.renew();
        true
    }

    /// Whether decisions of `route` under `state` are shared: only
    /// `REQUIRE_ATTESTATION` rules verify anything (the others decide
    /// alone, and their blobs are allowed or refused by the rule).
    pub(super) fn shares(&self, state: &State, route: &Route) -> bool {
        self.fleet.is_some()
            && state.policy.configured
            && state.policy.rule_for(&route.canonical()).evaluation
                == EvaluationMode::RequireAttestation
    }

    /// Another replica's verdict on `key` (`Shared::Verdict`), or the
    /// admission of an index listing it (`Shared::Listed`); `None` when
    /// there is none or Redis cannot answer (then this replica verifies by
    /// itself, counted as a fallback).
    pub(super) async fn shared_verdict(
        &self,
        state: &State,
        route: &Route,
        key: &Key,
    ) -> Option<Shared> {
        let fleet = self.fleet.as_ref()?;
        let keys = vec![
            fleet.key(&state.revision, Table::Verdict, &key.id),
            fleet.key(&state.revision, Table::Child, &key.id),
        ];
        let values = match fleet.get(keys).await {
            Ok(values) => values,
            Err(_) => {
                fleet.fell_back();
                return None;
            }
        };
        let mut values = values.into_iter();
        if let Some(Some(verdict)) = values.next() {
            match serde_json::from_slice::<Decision>(&verdict) {
                Ok(decision) => return Some(Shared::Verdict(Arc::new(decision))),
                // Written by another version, or damaged: verify here.
                Err(e) => {
                    tracing::warn!("fleet: unreadable shared verdict, verifying locally: {e}")
                }
            }
        }
        if let Some(Some(index)) = values.next() {
            let index = String::from_utf8_lossy(&index).into_owned();
            return Some(Shared::Listed(Arc::new(self.listed(state, route, &index))));
        }
        None
    }

    /// The decision admitting the children of admitted index `index`.
    pub(super) fn listed(&self, state: &State, route: &Route, index: &str) -> Decision {
        let rule = state.policy.rule_for(&route.canonical());
        Decision {
            verdict: Verdict::Allow,
            rule: rule.source,
            evaluation: rule.evaluation,
            enforcement: rule.enforcement,
            attestors: Vec::new(),
            reason: format!("listed by admitted index {index}"),
        }
    }

    /// Adopts what another replica decided (see [`Verifier::keep`]): a
    /// child manifest admitted through its index shares its own content,
    /// which the index's replica never read.
    pub(super) async fn adopt(
        &self,
        miss: &super::admit::Miss<'_>,
        manifest: &Manifest,
        shared: Shared,
    ) -> super::cache::Hit {
        match shared {
            Shared::Verdict(decision) => self.keep(miss, manifest, decision),
            Shared::Listed(decision) => {
                let hit = self.keep(miss, manifest, decision);
                self.share_content(miss.state, miss.scope, manifest).await;
                hit
            }
        }
    }

    /// Shares a verdict reached here: the content it admits first, then
    /// the verdict. A failure is counted and logged; the verdict still
    /// holds on this replica.
    pub(super) async fn share_verdict(
        &self,
        state: &State,
        scope: &Scope,
        key: &Key,
        manifest: &Manifest,
        decision: &Decision,
    ) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let allow = decision.serves();
        // Without its content, a shared verdict would send the others'
        // blob requests to a refusal: then keep it here.
        if allow && !self.share_content(state, scope, manifest).await {
            return;
        }
        let Ok(value) = serde_json::to_vec(decision) else {
            return;
        };
        let entry = (fleet.key(&state.revision, Table::Verdict, &key.id), value);
        let _ = fleet.put(vec![entry], fleet.ttl(allow)).await;
    }

    /// Shares what an admitted manifest makes servable: its blobs and, for
    /// an index, its children. Whether it was written.
    async fn share_content(&self, state: &State, scope: &Scope, manifest: &Manifest) -> bool {
        let Some(fleet) = self.fleet.as_ref() else {
            return false;
        };
        // An unreadable manifest admits no content: nothing to share.
        let Ok(reading) = manifest.read() else {
            return true;
        };
        // Each blob and child names the manifest that admitted it: a
        // replica refusing the blob after a policy change verifies that
        // manifest again (`Verifier::readmissions`).
        let admitting = manifest.digest().to_string().into_bytes();
        let mut content: Vec<(String, Vec<u8>)> = reading
            .config
            .iter()
            .chain(reading.layers.iter())
            .map(|b| {
                let id = scope.key_of(&b.digest).id;
                (
                    fleet.key(&state.revision, Table::Blob, &id),
                    admitting.clone(),
                )
            })
            .collect();
        if reading.kind == Kind::Index {
            content.extend(reading.children.iter().map(|c| {
                let id = scope.key_of(&c.digest).id;
                (
                    fleet.key(&state.revision, Table::Child, &id),
                    admitting.clone(),
                )
            }));
        }
        fleet.put(content, fleet.ttl(true) * 2).await.is_ok()
    }

    /// Shares the blobs of an image admitted by break-glass, for requests
    /// carrying a valid credential on any replica.
    pub(super) async fn share_break_glass(&self, state: &State, blobs: &[[u8; 32]]) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let entries = blobs
            .iter()
            .map(|id| {
                (
                    fleet.key(&state.revision, Table::BreakGlass, id),
                    b"1".to_vec(),
                )
            })
            .collect();
        let _ = fleet.put(entries, fleet.ttl(true) * 2).await;
    }

    /// What the fleet holds for `key` in `table` (for a blob another
    /// replica admitted: the manifest that admitted it), `None` when
    /// nothing. Errors are the caller's to fail closed on.
    pub(super) async fn in_fleet(
        &self,
        state: &State,
        table: Table,
        key: &Key,
    ) -> Result<Option<Vec<u8>>, FleetError> {
        let Some(fleet) = self.fleet.as_ref() else {
            return Ok(None);
        };
        let values = fleet
            .get(vec![fleet.key(&state.revision, table, &key.id)])
            .await?;
        Ok(values.into_iter().next().flatten())
    }
}
