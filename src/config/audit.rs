//! `audit:` as written: where the audit trail goes, when it reaches the
//! disk, rotation, the queue and what happens when it is full, and the
//! checks of them. Writing the trail is the `audit` module's job.
//!
//! May use: std, serde, `super::duration` and `super` (the error type and
//! its line finder). Must never use: any other module of the crate.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, ConfigError, Source};

/// When audit lines reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Every line is synced before the next one is written.
    Always,
    /// Lines are synced at least every `fsyncInterval`.
    Interval,
}

/// What happens when the audit queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// The request waits for room: nothing is lost, pulls slow down.
    Block,
    /// The record is dropped and counted (`portcullis_audit_dropped_total`).
    Drop,
}

/// Audit trail settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditConfig {
    /// File to append to; without it, lines go to stdout.
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default = "default_fsync")]
    pub fsync: FsyncMode,
    #[serde(
        default = "default_fsync_interval",
        deserialize_with = "duration::deserialize"
    )]
    pub fsync_interval: Duration,
    /// Rotate when the file reaches this size (`0`: never).
    #[serde(default = "default_max_size")]
    pub max_size_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` … `.N`).
    #[serde(default = "default_max_files")]
    pub max_files: u32,
    /// Records waiting to be written, at most.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    #[serde(default = "default_on_full")]
    pub on_full: OnFull,
    /// Audit files (and rotated ones) are created `0640` instead of `0600`,
    /// for a log shipper running in the file's group. The trail names
    /// client addresses, user agents and break-glass justifications, so it
    /// is never world-readable.
    #[serde(default)]
    pub group_readable: bool,
}

fn default_fsync() -> FsyncMode {
    FsyncMode::Interval
}
fn default_fsync_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_size() -> u64 {
    100 * 1024 * 1024
}
fn default_max_files() -> u32 {
    5
}
fn default_queue_size() -> usize {
    10_000
}
fn default_on_full() -> OnFull {
    OnFull::Block
}

/// A non-zero fsync interval and queue.
pub(super) fn validate(audit: &AuditConfig, at: &Source) -> Result<(), ConfigError> {
    if audit.fsync_interval.is_zero() {
        return Err(at.invalid(
            "audit.fsyncInterval",
            "fsyncInterval",
            "",
            "must be greater than zero (use fsync: always to sync every line)",
        ));
    }
    if audit.queue_size == 0 {
        return Err(at.invalid("audit.queueSize", "queueSize", "", "must be at least 1"));
    }
    Ok(())
}
