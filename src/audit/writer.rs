//! The audit trail writer: records go through a bounded queue to a task
//! that appends JSON lines to a file (rotated by size) or to stdout, off the
//! request path.
//!
//! Durability: with `fsync: always` every line is synced before the next
//! is written; with `fsync: interval` lines are synced at least every
//! `fsyncInterval`, so a crash or `kill -9` loses at most that much.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::record::DecisionRecord;
use crate::config::{AuditConfig, FsyncMode, OnFull};

/// Counters the metrics layer reads.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
}

/// The sending half: cheap to clone, used on the request path.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<DecisionRecord>,
    on_full: OnFull,
    pub stats: Arc<WriterStats>,
}

impl AuditSink {
    /// Queues a record. With `onFull: drop` a full queue drops it (counted);
    /// with `onFull: block` the request waits for room.
    pub async fn send(&self, record: DecisionRecord) {
        match self.on_full {
            OnFull::Drop => {
                if self.tx.try_send(record).is_err() {
                    let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    // Counted in metrics; logged on the first drop and then
                    // every 1000th, so a flood does not flood the log too.
                    if dropped == 1 || dropped % 1000 == 0 {
                        tracing::warn!(dropped, "audit queue full: records dropped (onFull: drop)");
                    }
                }
            }
            OnFull::Block => {
                if self.tx.send(record).await.is_err() {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

enum Output {
    Stdout,
    File {
        path: PathBuf,
        file: std::fs::File,
        size: u64,
    },
}

/// Opens the output and starts the writer task.
pub fn start(config: &AuditConfig) -> std::io::Result<AuditSink> {
    let output = match &config.path {
        None => Output::Stdout,
        Some(path) => {
            let file = open_append(path)?;
            let size = file.metadata()?.len();
            Output::File {
                path: path.clone(),
                file,
                size,
            }
        }
    };
    let (tx, rx) = mpsc::channel(config.queue_size.max(1));
    let stats = Arc::new(WriterStats::default());
    let writer = Writer {
        output,
        fsync: config.fsync,
        interval: config.fsync_interval,
        max_size: config.max_size_bytes,
        max_files: config.max_files,
        stats: Arc::clone(&stats),
        dirty: false,
        last_sync: Instant::now(),
    };
    tokio::spawn(writer.run(rx));
    Ok(AuditSink {
        tx,
        on_full: config.on_full,
        stats,
    })
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

struct Writer {
    output: Output,
    fsync: FsyncMode,
    interval: Duration,
    max_size: u64,
    max_files: u32,
    stats: Arc<WriterStats>,
    dirty: bool,
    last_sync: Instant,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<DecisionRecord>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                record = rx.recv() => match record {
                    Some(record) => self.write(&record),
                    None => {
                        self.sync();
                        return;
                    }
                },
                _ = tick.tick() => {
                    if self.dirty && self.last_sync.elapsed() >= self.interval {
                        self.sync();
                    }
                }
            }
        }
    }

    fn write(&mut self, record: &DecisionRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("audit record not serializable: {e}");
                return;
            }
        };
        line.push(b'\n');
        let result = match &mut self.output {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line).and_then(|()| out.flush())
            }
            Output::File { file, size, .. } => {
                let r = file.write_all(&line);
                *size += line.len() as u64;
                r
            }
        };
        match result {
            Ok(()) => {
                self.stats.written.fetch_add(1, Ordering::Relaxed);
                self.dirty = true;
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("audit write failed: {e}");
            }
        }
        if self.fsync == FsyncMode::Always {
            self.sync();
        }
        self.rotate_if_needed();
    }

    fn sync(&mut self) {
        if let Output::File { file, .. } = &self.output {
            if let Err(e) = file.sync_data() {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("audit fsync failed: {e}");
            }
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    /// `audit.jsonl` → `audit.jsonl.1` → … → `audit.jsonl.<maxFiles>`.
    fn rotate_if_needed(&mut self) {
        let Output::File { path, file, size } = &mut self.output else {
            return;
        };
        if self.max_size == 0 || *size < self.max_size {
            return;
        }
        let _ = file.sync_data();
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        let _ = std::fs::remove_file(numbered(self.max_files.max(1)));
        for n in (1..self.max_files.max(1)).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if let Err(e) = std::fs::rename(&*path, numbered(1)) {
            tracing::error!("audit rotation failed: {e}");
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match open_append(path) {
            Ok(f) => {
                *file = f;
                *size = 0;
            }
            Err(e) => {
                tracing::error!("audit file reopen failed: {e}");
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> DecisionRecord {
        serde_json::from_value(serde_json::json!({
            "time": "2026-01-01T00:00:00.000Z", "request_id": 1, "subject": "manifest",
            "reference": "r/x", "digest": "sha256:00", "rule": "default admission rule",
            "evaluation_mode": "REQUIRE_ATTESTATION", "enforcement_mode": "ENFORCED_BLOCK_AND_AUDIT_LOG",
            "verdict": "deny", "reason_category": "no-signatures", "reason": "r",
            "attestors": [], "cache_hit": false, "latency_ms": 1.0
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_when_asked_to() {
        // No writer task: the queue of one fills at once.
        let (tx, _rx) = mpsc::channel(1);
        let sink = AuditSink {
            tx,
            on_full: OnFull::Drop,
            stats: Arc::new(WriterStats::default()),
        };
        for _ in 0..3 {
            sink.send(record()).await;
        }
        assert_eq!(sink.stats.dropped.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn lines_are_appended_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let config = AuditConfig {
            path: Some(path.clone()),
            fsync: FsyncMode::Always,
            fsync_interval: Duration::from_secs(1),
            max_size_bytes: 1,
            max_files: 2,
            queue_size: 10,
            on_full: OnFull::Block,
        };
        let sink = start(&config).unwrap();
        for _ in 0..3 {
            sink.send(record()).await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.stats.written.load(Ordering::Relaxed) < 3 {
            assert!(Instant::now() < deadline, "records not written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Each line exceeds 1 byte: every write rotates; two files are kept.
        let lines = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        assert_eq!(lines(&path), 0);
        assert_eq!(lines(&dir.path().join("a.jsonl.1")), 1);
        assert_eq!(lines(&dir.path().join("a.jsonl.2")), 1);
        assert!(!dir.path().join("a.jsonl.3").exists());
    }
}
