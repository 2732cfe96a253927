//! `cache:` as written: how long verdicts and tag resolutions are reused,
//! how much memory manifests fetched by digest may take, and the on-disk
//! content store (`cache.content`). The caches themselves are the
//! `verify`, `serve` and `store` modules'.
//!
//! May use: std, serde, `super::{duration, size, Source, ConfigError}`.
//! Must never use: any other module of the crate.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, size, ConfigError, Source};

/// Verdict cache settings.
#[derive(Debug, Clone, Deserialize)]
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
    /// The on-disk content store; absent = every pull goes to the upstream.
    pub content: Option<ContentConfig>,
}

/// `cache.content`: verified blobs on disk, by digest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContentConfig {
    /// The store's directory, private to Portcullis (created `0700`); a
    /// relative path is the config file's directory's.
    pub path: PathBuf,
    /// Most bytes the store keeps; the least recently used blobs are
    /// evicted past it.
    #[serde(deserialize_with = "size::deserialize")]
    pub max_size: u64,
    /// Hash every stored blob again each time it is served (a stored file
    /// is otherwise trusted: its digest was checked when it was written).
    #[serde(default)]
    pub verify_on_read: bool,
}

impl ContentConfig {
    /// Its line in `portcullis check`'s summary.
    pub fn summary(&self) -> String {
        format!(
            "content cache: {} (at most {} bytes{})\n",
            self.path.display(),
            self.max_size,
            if self.verify_on_read {
                ", hashed again on every read"
            } else {
                ""
            }
        )
    }
}

/// The smallest `cache.content.maxSize` accepted.
const MIN_CONTENT_SIZE: u64 = 1 << 20;

/// Checks `cache.content`: a size of at least 1 MiB. (The directory is
/// created when the proxy starts; a relative path is the config file's
/// directory's.)
pub(super) fn validate(cache: &CacheConfig, at: &Source) -> Result<(), ConfigError> {
    let Some(content) = &cache.content else {
        return Ok(());
    };
    if content.max_size < MIN_CONTENT_SIZE {
        return Err(at.invalid(
            "cache.content.maxSize",
            "maxSize",
            &content.max_size.to_string(),
            "the content store needs at least 1MiB",
        ));
    }
    Ok(())
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            allow_ttl: Duration::from_secs(600),
            deny_ttl: Duration::from_secs(30),
            max_entries: 100_000,
            tag_ttl: Duration::ZERO,
            manifest_cache_bytes: 64 * 1024 * 1024,
            content: None,
        }
    }
}
