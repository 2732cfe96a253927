//! The audit trail writer: records go through a bounded queue to a task
//! that appends JSON lines to a file (rotated by size) or to stdout, off the
//! request path.
//!
//! Durability: with `fsync: always` every line is synced before the next
//! is written; with `fsync: interval` lines are synced at least every
//! `fsyncInterval`, so a crash or `kill -9` loses at most that much.
//!
//! Permissions: the trail names client addresses, user agents and
//! break-glass justifications, so audit files are created `0600` (`0640`
//! with `groupReadable`), whatever the umask, and a file left with wider
//! permissions (by an older version, or by hand) is narrowed when it is
//! opened; rotated files keep the mode.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
                    if dropped == 1 || dropped.is_multiple_of(1000) {
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
        mode: u32,
    },
}

/// The permissions audit files get: owner read/write, and group read if
/// asked for. Never anything for others.
pub fn file_mode(config: &AuditConfig) -> u32 {
    if config.group_readable {
        0o640
    } else {
        0o600
    }
}

/// Opens the output and starts the writer task.
pub fn start(config: &AuditConfig) -> std::io::Result<AuditSink> {
    let output = match &config.path {
        None => Output::Stdout,
        Some(path) => {
            let mode = file_mode(config);
            let mut file = open_append(path, mode)?;
            let size = file.metadata()?.len();
            let size = size + end_partial_line(path, &mut file, size)?;
            // Rotated files from before (possibly written by a version that
            // created them world-readable) get the same narrowing.
            for n in 1..=config.max_files.max(1) {
                let rotated = rotated_path(path, n);
                if rotated.exists() {
                    restrict(&rotated, mode)?;
                }
            }
            Output::File {
                path: path.clone(),
                file,
                size,
                mode,
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

/// Opens `path` for appending, creating it with `mode`; an existing file
/// with more permissions than `mode` is narrowed to it (the umask may have
/// taken bits away at creation, never added them).
fn open_append(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .open(path)?;
    let current = file.metadata()?.permissions().mode() & 0o7777;
    if current != mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(file)
}

/// A process killed while writing a line (a SIGKILL between two pages of
/// one `write(2)`) leaves the file ending in part of a line. Appended to
/// as it is, the next record would be glued to that fragment, and neither
/// would parse: end it with a newline first, so the fragment stays a line
/// of its own and every record written from now on is a whole line. The
/// bytes added (0 or 1).
fn end_partial_line(path: &Path, file: &mut std::fs::File, size: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    if size == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    std::fs::File::open(path)?.read_exact_at(&mut last, size - 1)?;
    if last[0] == b'\n' {
        return Ok(0);
    }
    tracing::warn!(
        path = %path.display(),
        "the audit trail ends in part of a line (a crash while it was written); \
         it is kept, on a line of its own"
    );
    file.write_all(b"\n")?;
    Ok(1)
}

/// Sets an existing file's permissions to `mode` unless they already are.
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if current != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// `audit.jsonl.<n>`
fn rotated_path(path: &Path, n: u32) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
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
        let Output::File {
            path,
            file,
            size,
            mode,
        } = &mut self.output
        else {
            return;
        };
        if self.max_size == 0 || *size < self.max_size {
            return;
        }
        let _ = file.sync_data();
        let numbered = |n: u32| rotated_path(path, n);
        let _ = std::fs::remove_file(numbered(self.max_files.max(1)));
        for n in (1..self.max_files.max(1)).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if let Err(e) = std::fs::rename(&*path, numbered(1)) {
            tracing::error!("audit rotation failed: {e}");
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match open_append(path, *mode) {
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
            group_readable: false,
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
        for name in ["a.jsonl", "a.jsonl.1", "a.jsonl.2"] {
            assert_eq!(mode_of(&dir.path().join(name)), 0o600, "{name}");
        }
    }

    /// A file left ending in part of a line (its writer killed mid-write)
    /// gets a newline before the first new record: the fragment stays on a
    /// line of its own and the new record parses.
    #[tokio::test]
    async fn a_partial_last_line_is_ended_before_new_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let whole = serde_json::to_string(&record()).unwrap();
        let torn = &whole[..whole.len() / 2];
        std::fs::write(&path, format!("{whole}\n{torn}")).unwrap();
        let config = AuditConfig {
            path: Some(path.clone()),
            fsync: FsyncMode::Always,
            fsync_interval: Duration::from_secs(1),
            max_size_bytes: 0,
            max_files: 2,
            queue_size: 10,
            on_full: OnFull::Block,
            group_readable: false,
        };
        let sink = start(&config).unwrap();
        sink.send(record()).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.stats.written.load(Ordering::Relaxed) < 1 {
            assert!(Instant::now() < deadline, "record not written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, [whole.as_str(), torn, whole.as_str()], "{text:?}");
        assert!(text.ends_with('\n'));
        // A file that ends with a whole line is appended to as it is.
        drop(sink);
        let sink = start(&config).unwrap();
        sink.send(record()).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.stats.written.load(Ordering::Relaxed) < 1 {
            assert!(Instant::now() < deadline, "record not written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4, "{text:?}");
        assert!(!text.contains("\n\n"), "an empty line was added: {text:?}");
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[tokio::test]
    async fn existing_files_are_narrowed_and_group_read_is_opt_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        for name in ["a.jsonl", "a.jsonl.1"] {
            let p = dir.path().join(name);
            std::fs::write(&p, "").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
        let config = AuditConfig {
            path: Some(path.clone()),
            fsync: FsyncMode::Always,
            fsync_interval: Duration::from_secs(1),
            max_size_bytes: 0,
            max_files: 2,
            queue_size: 10,
            on_full: OnFull::Block,
            group_readable: true,
        };
        let _sink = start(&config).unwrap();
        assert_eq!(mode_of(&path), 0o640);
        assert_eq!(mode_of(&dir.path().join("a.jsonl.1")), 0o640);
    }
}
