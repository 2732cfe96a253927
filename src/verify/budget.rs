//! Bounded evidence work.
//!
//! Whoever can push to an upstream repository decides how much evidence a
//! verification finds: referrers listing many bundle layers, an `.att`
//! tag listing one 4 MiB envelope 64 times. Every evidence byte a
//! verification reads goes through its [`Budget`]:
//!
//! - **per verification** (`limits.evidenceBytes`): manifests, payloads,
//!   envelopes and bundles are charged before they are read; past the
//!   limit the lookup fails with [`VerifyError::Limit`], which the
//!   verifier turns into a denial ("evidence exceeds limits") cached for
//!   the deny TTL only;
//! - **once per digest**: a blob listed many times is fetched once and
//!   shared, and charged once;
//! - **in flight, in total** (`limits.evidenceBytesInFlight`): what every
//!   verification holds at once, so memory is bounded however many cold
//!   pulls run together; a verification waits for room (its total
//!   deadline still applies);
//! - **concurrency**: at most [`MAX_EVIDENCE_FETCHES`] evidence requests
//!   of one verification are in flight at a time.
//!
//! `.sig`, `.att`, referrers and the subject check of evidence artifacts
//! all use the same budget type, so no source escapes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};

use super::VerifyError;
use crate::config::Limits;
use crate::oci::Digest;
use crate::upstream::{Upstream, UpstreamBody};

/// Evidence requests of one verification in flight at once: enough to
/// overlap the round trips of a typical image (`.sig`, `.att`, referrers
/// and their blobs), few enough that one verification cannot occupy an
/// upstream's connection pool.
pub const MAX_EVIDENCE_FETCHES: usize = 8;
/// Largest evidence manifest or referrers index read (cosign `.sig`
/// manifests carry one annotation set per signature, a few KiB each with
/// certificates; 64 of them stay far below this).
pub const MAX_EVIDENCE_MANIFEST_BYTES: usize = 1024 * 1024;
/// The global budget's unit: permits are KiB so that 4 GiB fit a `u32`.
const UNIT: u64 = 1024;

/// The evidence limits every verification shares.
#[derive(Debug)]
pub struct EvidenceLimits {
    per_verification: u64,
    in_flight: Arc<Semaphore>,
    in_flight_units: u32,
}

impl EvidenceLimits {
    pub fn new(limits: &Limits) -> EvidenceLimits {
        let units = u32::try_from(limits.evidence_bytes_in_flight.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        EvidenceLimits {
            per_verification: limits.evidence_bytes,
            in_flight: Arc::new(Semaphore::new(units as usize)),
            in_flight_units: units,
        }
    }

    /// A fresh budget for one verification.
    pub fn budget(&self) -> Arc<Budget> {
        Arc::new(Budget {
            limit: self.per_verification,
            global: Arc::clone(&self.in_flight),
            global_units: self.in_flight_units,
            charged: Mutex::new(Charged::default()),
            blobs: Mutex::new(HashMap::new()),
            fetches: Semaphore::new(MAX_EVIDENCE_FETCHES),
        })
    }

    /// Evidence bytes currently held by all verifications (for tests and
    /// metrics).
    pub fn in_flight_bytes(&self) -> u64 {
        u64::from(self.in_flight_units).saturating_sub(self.in_flight.available_permits() as u64)
            * UNIT
    }
}

#[derive(Default)]
struct Charged {
    bytes: u64,
    permits: Vec<OwnedSemaphorePermit>,
}

type SharedBlob = Arc<OnceCell<Result<Bytes, VerifyError>>>;

/// One verification's evidence budget. Dropping it releases what it held
/// of the global budget.
pub struct Budget {
    limit: u64,
    global: Arc<Semaphore>,
    global_units: u32,
    charged: Mutex<Charged>,
    blobs: Mutex<HashMap<Digest, SharedBlob>>,
    fetches: Semaphore,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.limit)
            .field("charged", &self.charged_bytes())
            .finish_non_exhaustive()
    }
}

impl Budget {
    /// Bytes charged so far.
    pub fn charged_bytes(&self) -> u64 {
        self.charged.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// Charges `bytes` against this verification's limit, then waits for
    /// room in the global budget.
    async fn reserve(&self, bytes: u64, what: &str) -> Result<(), VerifyError> {
        {
            let mut charged = self.charged.lock().unwrap_or_else(|p| p.into_inner());
            if charged.bytes.saturating_add(bytes) > self.limit {
                return Err(VerifyError::Limit(format!(
                    "evidence exceeds limits: reading {what} ({bytes} bytes) would take this \
                     verification past {} bytes (limits.evidenceBytes)",
                    self.limit
                )));
            }
            charged.bytes += bytes;
        }
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.global_units);
        if units == 0 {
            return Ok(());
        }
        let permit = Arc::clone(&self.global)
            .acquire_many_owned(units)
            .await
            .map_err(|_| VerifyError::Internal("evidence budget closed".into()))?;
        self.charged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .permits
            .push(permit);
        Ok(())
    }

    /// Gives back `bytes` of a reservation that was not used.
    fn refund(&self, bytes: u64) {
        let mut charged = self.charged.lock().unwrap_or_else(|p| p.into_inner());
        charged.bytes = charged.bytes.saturating_sub(bytes);
        let mut units = bytes / UNIT;
        while units > 0 {
            let Some(mut last) = charged.permits.pop() else {
                break;
            };
            let held = last.num_permits() as u64;
            if held <= units {
                units -= held;
                drop(last);
            } else {
                // Keep the rest of this permit.
                let _ = last.split(units as usize);
                units = 0;
                charged.permits.push(last);
            }
        }
    }

    /// Reads an evidence manifest or referrers index: at most
    /// [`MAX_EVIDENCE_MANIFEST_BYTES`], charged before it is read (its
    /// `Content-Length` when the upstream sends one, else the maximum;
    /// the unused part is given back).
    pub async fn read_manifest(
        &self,
        response: http::Response<UpstreamBody>,
        what: &str,
    ) -> Result<Bytes, VerifyError> {
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > MAX_EVIDENCE_MANIFEST_BYTES as u64) {
            return Err(VerifyError::Limit(format!(
                "evidence exceeds limits: {what} is larger than {MAX_EVIDENCE_MANIFEST_BYTES} bytes"
            )));
        }
        let reserved = declared.unwrap_or(MAX_EVIDENCE_MANIFEST_BYTES as u64);
        self.reserve(reserved, what).await?;
        let _slot = self.fetch_slot().await?;
        let bytes =
            super::sources::cosign::read_bounded(response.into_body(), reserved as usize, what)
                .await
                .map_err(|e| match declared {
                    // Longer than it said, or than any evidence manifest.
                    None => VerifyError::Limit(format!(
                        "evidence exceeds limits: {what} is larger than \
                     {MAX_EVIDENCE_MANIFEST_BYTES} bytes"
                    )),
                    Some(_) => e,
                })?;
        self.refund(reserved.saturating_sub(bytes.len() as u64));
        Ok(bytes)
    }

    /// Fetches the evidence blob `digest` of declared `size` (at most
    /// `limit` bytes) once for this verification, whatever the number of
    /// places listing it; checks its digest.
    pub async fn blob(
        &self,
        upstream: &Upstream,
        repository: &str,
        digest: &Digest,
        size: u64,
        limit: usize,
    ) -> Result<Bytes, VerifyError> {
        let cell = {
            let mut blobs = self.blobs.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(blobs.entry(digest.clone()).or_default())
        };
        cell.get_or_init(|| async {
            // A descriptor without a size (0) reserves the type's limit.
            let size = if size == 0 {
                limit as u64
            } else {
                size.min(limit as u64)
            };
            let what = format!("{}/{repository}@{digest}", upstream.registry);
            self.reserve(size, &what).await?;
            let _slot = self.fetch_slot().await?;
            let bytes =
                super::sources::cosign::fetch_blob(upstream, repository, digest, size as usize)
                    .await?;
            self.refund(size.saturating_sub(bytes.len() as u64));
            Ok(bytes)
        })
        .await
        .clone()
    }

    async fn fetch_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, VerifyError> {
        self.fetches
            .acquire()
            .await
            .map_err(|_| VerifyError::Internal("evidence fetch slots closed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per: u64, total: u64) -> EvidenceLimits {
        EvidenceLimits::new(&Limits {
            evidence_bytes: per,
            evidence_bytes_in_flight: total,
            ..Limits::default()
        })
    }

    #[tokio::test]
    async fn a_verification_cannot_read_past_its_limit() {
        let limits = limits(10 * 1024, 1024 * 1024);
        let budget = limits.budget();
        budget.reserve(8 * 1024, "a").await.expect("fits");
        let err = budget.reserve(4 * 1024, "b").await.expect_err("over");
        assert!(
            matches!(err, VerifyError::Limit(ref m) if m.contains("evidence exceeds limits")),
            "{err}"
        );
        budget.refund(8 * 1024);
        budget.reserve(4 * 1024, "b").await.expect("room again");
    }

    #[tokio::test]
    async fn the_global_budget_is_released_when_a_verification_ends() {
        let limits = limits(64 * 1024, 64 * 1024);
        let first = limits.budget();
        first.reserve(64 * 1024, "a").await.expect("fits");
        assert_eq!(limits.in_flight_bytes(), 64 * 1024);
        let second = limits.budget();
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            second.reserve(1024, "b"),
        )
        .await;
        assert!(waiting.is_err(), "the second verification waits for room");
        drop(first);
        assert_eq!(limits.in_flight_bytes(), 0);
        second
            .reserve(1024, "b")
            .await
            .expect("room after the first ended");
        // A refund gives back global room too.
        second.refund(1024);
        assert_eq!(limits.in_flight_bytes(), 0);
    }
}
