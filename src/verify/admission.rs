//! Proofs as types: what verification hands the serving layer.
//!
//! Every type here has private fields and no public constructor, so only
//! [`crate::verify`] can make one:
//!
//! - an [`Admission`] owns the exact manifest bytes that were verified and
//!   the decision that admitted them; the serving layer can only send a
//!   manifest through one;
//! - a [`Denial`] owns the manifest the policy refused; the only way from a
//!   denial to an admission is a break-glass proof
//!   ([`crate::breakglass::Use`], which only [`crate::breakglass`] makes);
//! - a [`BlobPermit`] names the one blob it lets through; blob serving
//!   cannot be called without one.

use std::sync::Arc;
use std::time::Duration;

use crate::breakglass::Use;
use crate::oci::manifest::Manifest;
use crate::oci::Digest;
use crate::policy::Decision;

/// A manifest the verifier allowed to be served, with the decision.
#[derive(Debug)]
pub struct Admission {
    pub(super) manifest: Manifest,
    pub(super) decision: Arc<Decision>,
    pub(super) cache_hit: bool,
    pub(super) verified_in: Option<Duration>,
    /// Admitted by break-glass over this denial's decision.
    pub(super) break_glass: Option<Use>,
}

impl Admission {
    /// The verified bytes, exactly as they are served.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The policy's decision (for a break-glass admission: the denial that
    /// was overridden).
    pub fn decision(&self) -> &Arc<Decision> {
        &self.decision
    }

    /// Whether the verdict came from the cache.
    pub fn cache_hit(&self) -> bool {
        self.cache_hit
    }

    /// How long the verification took, when one ran for this request.
    pub fn verified_in(&self) -> Option<Duration> {
        self.verified_in
    }

    /// The break-glass use that admitted a denied manifest.
    pub fn break_glass(&self) -> Option<&Use> {
        self.break_glass.as_ref()
    }
}

/// A manifest the policy does not allow to be served.
#[derive(Debug)]
pub struct Denial {
    pub(super) manifest: Manifest,
    pub(super) decision: Arc<Decision>,
    pub(super) cache_hit: bool,
    pub(super) verified_in: Option<Duration>,
}

impl Denial {
    /// The digest of the refused manifest.
    pub fn digest(&self) -> &Digest {
        self.manifest.digest()
    }

    pub fn decision(&self) -> &Arc<Decision> {
        &self.decision
    }

    pub fn cache_hit(&self) -> bool {
        self.cache_hit
    }

    pub fn verified_in(&self) -> Option<Duration> {
        self.verified_in
    }
}

/// The verifier's answer for one manifest request.
#[derive(Debug)]
pub enum Outcome {
    Admitted(Admission),
    Denied(Denial),
}

impl Outcome {
    /// The decision, admitted or not.
    pub fn decision(&self) -> &Arc<Decision> {
        match self {
            Outcome::Admitted(a) => a.decision(),
            Outcome::Denied(d) => d.decision(),
        }
    }
}

/// Why [`crate::verify::Verifier::admit`] has no outcome: the manifest could
/// not be fetched (`E`, the fetch's own error), or it could not be checked.
#[derive(Debug)]
pub enum Failed<E> {
    Fetch(E),
    Verify {
        digest: Digest,
        error: super::VerifyError,
    },
}

/// Leave to serve one blob.
#[derive(Debug)]
pub struct BlobPermit {
    pub(super) digest: Digest,
    /// The blob belongs to an image admitted by break-glass: the denial it
    /// overrides and the use (audited by the caller's finish phase).
    pub(super) break_glass: Option<(Arc<Decision>, Use)>,
}

impl BlobPermit {
    /// The one blob this permit lets through.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Set when the blob is served by break-glass.
    pub fn break_glass(&self) -> Option<(&Arc<Decision>, &Use)> {
        self.break_glass.as_ref().map(|(d, u)| (d, u))
    }
}
