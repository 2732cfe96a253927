//! `timeouts:` and `limits:` as written: every wait on a peer and every
//! cap on connections, fetches and evidence bytes, their defaults, and the
//! checks of them (no zero timeout, limits in range).
//!
//! May use: std, serde, `super::duration` and `super` (the error type and
//! its line finder). Must never use: any other module of the crate.

use std::time::Duration;

use serde::Deserialize;

use super::{duration, ConfigError, Source};

/// Timeouts, written as `500ms`, `10s`, `2m` or `1h`.
///
/// Every wait on a peer is bounded by one of these: silence from an
/// upstream (`read`), a client that stops reading (`clientStall`), a
/// connection that carries no request (`handshake`, `idle`), and the total
/// time of a manifest fetch, an evidence lookup and a verification
/// (`manifest`, `evidence`, `verification`), which a live but trickling
/// upstream cannot stretch.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Timeouts {
    /// Establishing a TCP (and TLS) connection to an upstream.
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect: Duration,
    /// Waiting for an upstream's response headers, and the longest silence
    /// tolerated while reading an upstream body.
    #[serde(deserialize_with = "duration::deserialize")]
    pub read: Duration,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    #[serde(deserialize_with = "duration::deserialize")]
    pub shutdown: Duration,
    /// A client connection with no request in flight is closed after this
    /// long (HTTP/1.1 keep-alive and HTTP/2 alike; an HTTP/2 connection
    /// gets a GOAWAY first). Also bounds reading an HTTP/1.1 request's
    /// headers.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle: Duration,
    /// From accepting a client connection to its first request: the TLS
    /// handshake, HTTP version detection, the HTTP/2 preface and the first
    /// request's headers together.
    #[serde(deserialize_with = "duration::deserialize")]
    pub handshake: Duration,
    /// Total time of one upstream manifest fetch (or tag list, or
    /// referrers list), headers and body.
    #[serde(deserialize_with = "duration::deserialize")]
    pub manifest: Duration,
    /// Total time of one evidence lookup (`.sig`, `.att`, referrers and
    /// the blobs they name) at one signature location.
    #[serde(deserialize_with = "duration::deserialize")]
    pub evidence: Duration,
    /// Total time of one verification: its evidence lookups and, for a
    /// manifest requested by digest, the manifest fetch that runs
    /// alongside them. Every request joined to the verification gets its
    /// outcome.
    #[serde(deserialize_with = "duration::deserialize")]
    pub verification: Duration,
    /// Total time of one download into the content store
    /// (`cache.content`): a blob still arriving after this long is
    /// dropped, nothing is stored, and the requests following it get an
    /// error. A download outlives the request that started it, so this,
    /// not a client, bounds how long an upstream can hold its fetch slot.
    #[serde(deserialize_with = "duration::deserialize")]
    pub download: Duration,
    /// A response stream whose client accepts no bytes for this long is
    /// reset (HTTP/2 `RST_STREAM`; HTTP/1.1 closes the connection), and the
    /// upstream fetch behind it is dropped. Unset: `read`, so one setting
    /// bounds silence on both sides.
    #[serde(deserialize_with = "duration::deserialize_optional")]
    pub client_stall: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(60),
            shutdown: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            handshake: Duration::from_secs(10),
            manifest: Duration::from_secs(60),
            evidence: Duration::from_secs(60),
            verification: Duration::from_secs(120),
            download: Duration::from_secs(30 * 60),
            client_stall: None,
        }
    }
}

impl Timeouts {
    /// `clientStall`, or `read` when it is not set.
    pub fn client_stall(&self) -> Duration {
        self.client_stall.unwrap_or(self.read)
    }
}

/// The largest value a `limits` key takes: far above any deployment, and
/// below what the semaphores that enforce the limits can count.
pub const MAX_LIMIT: usize = 1 << 24;

/// Caps that keep one client (or many) from taking every connection or
/// every upstream fetch.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Limits {
    /// Concurrent client connections, in total; past it new connections
    /// are closed at once rather than queued without bound.
    pub connections: usize,
    /// Concurrent client connections from one IP address, so that one
    /// host cannot take all of `connections`. Behind a load balancer that
    /// does not keep client addresses, raise it to `connections`.
    pub connections_per_client: usize,
    /// Concurrent upstream blob fetches, in total (each holds an upstream
    /// connection while it streams).
    pub upstream_fetches: usize,
    /// Concurrent upstream blob fetches per client connection (HTTP/2
    /// multiplexes many on one): more wait for a slot.
    pub upstream_fetches_per_connection: usize,
    /// Evidence bytes one verification may read (signature and
    /// attestation manifests, payloads, envelopes, bundles, referrers),
    /// each distinct digest counted once. An image whose evidence needs
    /// more is denied with "evidence exceeds limits" (cached for the deny
    /// TTL only). 8 MiB holds dozens of real signatures and provenance
    /// attestations; an upstream that lists one 4 MiB blob a hundred
    /// times cannot make a verification read it more than once.
    pub evidence_bytes: u64,
    /// Evidence bytes held by all verifications at once; verifications
    /// wait for room past it. Bounds memory whatever the number of
    /// concurrent cold pulls.
    pub evidence_bytes_in_flight: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 4096,
            connections_per_client: 256,
            upstream_fetches: 512,
            upstream_fetches_per_connection: 16,
            evidence_bytes: 8 * 1024 * 1024,
            evidence_bytes_in_flight: 64 * 1024 * 1024,
        }
    }
}

/// `limits.evidenceBytes` and `limits.evidenceBytesInFlight`: enough for
/// real signatures, and one verification's worth at least in flight.
pub(super) fn validate_evidence(limits: &Limits, at: &Source) -> Result<(), ConfigError> {
    if limits.evidence_bytes < 64 * 1024 {
        return Err(at.invalid(
            "limits.evidenceBytes",
            "evidenceBytes",
            "",
            "must be at least 65536 (64 KiB): real signatures need that much",
        ));
    }
    if limits.evidence_bytes_in_flight < limits.evidence_bytes {
        return Err(at.invalid(
            "limits.evidenceBytesInFlight",
            "evidenceBytesInFlight",
            "",
            "must be at least limits.evidenceBytes",
        ));
    }
    Ok(())
}

/// No timeout is zero (`clientStall` as it applies: `read` when unset).
pub(super) fn validate_timeouts(t: &Timeouts, at: &Source) -> Result<(), ConfigError> {
    for (name, value) in [
        ("connect", t.connect),
        ("read", t.read),
        ("shutdown", t.shutdown),
        ("idle", t.idle),
        ("handshake", t.handshake),
        ("manifest", t.manifest),
        ("evidence", t.evidence),
        ("verification", t.verification),
        ("download", t.download),
        ("clientStall", t.client_stall()),
    ] {
        if value.is_zero() {
            return Err(at.invalid(
                format!("timeouts.{name}"),
                name,
                "",
                "must be greater than zero",
            ));
        }
    }
    Ok(())
}

/// Connection and fetch limits are between 1 and [`MAX_LIMIT`].
pub(super) fn validate_limits(l: &Limits, at: &Source) -> Result<(), ConfigError> {
    for (name, value) in [
        ("connections", l.connections),
        ("connectionsPerClient", l.connections_per_client),
        ("upstreamFetches", l.upstream_fetches),
        (
            "upstreamFetchesPerConnection",
            l.upstream_fetches_per_connection,
        ),
    ] {
        if value == 0 || value > MAX_LIMIT {
            return Err(at.invalid(
                format!("limits.{name}"),
                name,
                "",
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn load(text: &str) -> Result<Config, crate::config::ConfigError> {
        Config::from_yaml(text, Path::new("/"))
    }

    #[test]
    fn timeouts_are_durations() {
        let c = load("listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\ntimeouts: {read: 3s}\n")
            .unwrap();
        assert_eq!(c.timeouts.read, Duration::from_secs(3));
        assert_eq!(c.timeouts.connect, Duration::from_secs(10));
        assert!(load(
            "listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\ntimeouts: {read: 0s}\n"
        )
        .is_err());
    }

    #[test]
    fn connection_timeouts_and_limits() {
        let base = "listen: 127.0.0.1:1\nupstreams:\n  - registry: a.io\n";
        let c = load(base).unwrap();
        let t = c.timeouts;
        assert_eq!(t.idle, Duration::from_secs(60));
        assert_eq!(t.handshake, Duration::from_secs(10));
        assert_eq!(t.manifest, Duration::from_secs(60));
        assert_eq!(t.evidence, Duration::from_secs(60));
        assert_eq!(t.verification, Duration::from_secs(120));
        assert_eq!(t.client_stall(), t.read, "clientStall follows read");
        assert_eq!(c.limits.connections, 4096);
        assert_eq!(c.limits.connections_per_client, 256);
        assert_eq!(c.limits.upstream_fetches, 512);
        assert_eq!(c.limits.upstream_fetches_per_connection, 16);

        let c = load(&format!(
            "{base}timeouts: {{read: 7s, idle: 1s, handshake: 2s, manifest: 3s, evidence: 4s, verification: 5s}}\n\
             limits: {{connections: 10, connectionsPerClient: 2, upstreamFetches: 3, upstreamFetchesPerConnection: 1}}\n"
        ))
        .unwrap();
        let t = c.timeouts;
        assert_eq!(
            (t.idle, t.handshake, t.manifest, t.evidence, t.verification),
            (
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(3),
                Duration::from_secs(4),
                Duration::from_secs(5)
            )
        );
        assert_eq!(t.client_stall(), Duration::from_secs(7));
        assert_eq!(
            (
                c.limits.connections,
                c.limits.connections_per_client,
                c.limits.upstream_fetches,
                c.limits.upstream_fetches_per_connection
            ),
            (10, 2, 3, 1)
        );
        let c = load(&format!("{base}timeouts: {{clientStall: 9s}}\n")).unwrap();
        assert_eq!(c.timeouts.client_stall(), Duration::from_secs(9));

        for bad in [
            "timeouts: {idle: 0s}",
            "timeouts: {handshake: 0ms}",
            "timeouts: {manifest: 0s}",
            "timeouts: {evidence: 0s}",
            "timeouts: {verification: 0s}",
            "timeouts: {download: 0s}",
            "timeouts: {clientStall: 0s}",
            "limits: {connections: 0}",
            "limits: {connectionsPerClient: 0}",
            "limits: {upstreamFetches: 0}",
            "limits: {upstreamFetchesPerConnection: 0}",
            "limits: {bogus: 1}",
            "limits: {connections: 16777217}",
        ] {
            assert!(load(&format!("{base}{bad}\n")).is_err(), "{bad}");
        }
    }
}
