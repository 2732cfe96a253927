//! `cache:` as written: how long verdicts and tag resolutions are reused,
//! and how much memory manifests fetched by digest may take. The caches
//! themselves are the `verify` and `serve` modules'.
//!
//! May use: std, serde, `super::duration`. Must never use: any other
//! module of the crate.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// Verdict cache settings.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CacheConfig {
    /// How long an allow verdict is reused.
    #[serde(deserialize_with = "duration::deserialize")]
    pub allow_ttl: Duration,
    /// How long a deny verdict is reused (short, so a newly signed image
    /// pulls soon after signing).
    #[serde(deserialize_with = "duration::deserialize")]
    pub deny_ttl: Duration,
    /// Most verdicts kept; the least recently used are evicted past it.
    pub max_entries: u64,
    /// How long a tag's resolution (tag → manifest bytes, per Accept) is
    /// reused. `0s` (the default) asks the upstream on every request, so a
    /// moved tag is seen at once.
    #[serde(deserialize_with = "duration::deserialize")]
    pub tag_ttl: Duration,
    /// Memory for manifests fetched by digest (immutable, so a warm
    /// by-digest request needs no upstream round trip); `0` disables it.
    pub manifest_cache_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            allow_ttl: Duration::from_secs(600),
            deny_ttl: Duration::from_secs(30),
            max_entries: 100_000,
            tag_ttl: Duration::ZERO,
            manifest_cache_bytes: 64 * 1024 * 1024,
        }
    }
}
