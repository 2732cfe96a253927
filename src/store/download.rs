//! One download into the store: the leader's upstream body, written to a
//! file in `tmp/`, hashed as it is written, renamed into `blobs/` once its
//! digest matched and it was flushed. Readers follow the file as it grows
//! ([`super::read`]); the task belongs to none of them.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::watch;

use super::{ContentStore, Phase};
use crate::oci::{Digest, Hasher};

/// Bytes gathered from the upstream before each write (and hash) on a
/// blocking thread.
const WRITE_CHUNK: usize = 256 * 1024;

/// Names temporary files apart within one process.
static TMP_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A number no other temporary file of this process has.
pub(super) fn next_tmp_sequence() -> u64 {
    TMP_SEQUENCE.fetch_add(1, Ordering::Relaxed)
}

/// How far a download is.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Bytes in the file so far.
    pub written: u64,
    pub state: State,
}

#[derive(Debug, Clone)]
pub enum State {
    Writing,
    /// All bytes are in the file and hashed to the digest.
    Verified,
    /// The download failed (the reason); nothing will be stored.
    Failed(Arc<str>),
}

/// A download in flight, as its readers see it.
#[derive(Debug)]
pub struct Download {
    digest: Digest,
    /// The file being written (readers use positional reads, so they share
    /// the handle; it stays readable after the rename).
    file: Arc<std::fs::File>,
    /// The upstream's `Content-Length`, when it sent one.
    length: Option<u64>,
    progress: watch::Receiver<Progress>,
}

impl Download {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn length(&self) -> Option<u64> {
        self.length
    }

    pub(super) fn file(&self) -> Arc<std::fs::File> {
        Arc::clone(&self.file)
    }

    /// The size, once every byte is written and matched the digest.
    pub(super) fn verified_size(&self) -> Option<u64> {
        let p = self.progress.borrow();
        matches!(p.state, State::Verified).then_some(p.written)
    }

    pub(super) fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }
}

/// The right to start the download of one digest: the request that found
/// it neither stored nor in flight holds it while it asks the upstream.
/// Dropped without [`Lead::start`], it tells waiting requests to go
/// elsewhere.
#[derive(Debug)]
pub struct Lead {
    store: Arc<ContentStore>,
    digest: Digest,
    phase: Option<watch::Sender<Phase>>,
}

impl Lead {
    pub(super) fn new(
        store: Arc<ContentStore>,
        digest: Digest,
        phase: watch::Sender<Phase>,
    ) -> Lead {
        Lead {
            store,
            digest,
            phase: Some(phase),
        }
    }

    /// Starts writing `body` (the upstream's `200` for this digest;
    /// `length` its `Content-Length`) into the store, holding `guard` (the
    /// upstream fetch slots) until the download ends. Gives `body` and
    /// `guard` back if the store cannot take it: larger than `maxSize`, or
    /// a disk error (no space for `length`).
    pub async fn start<B, G>(
        mut self,
        body: B,
        length: Option<u64>,
        guard: G,
    ) -> Result<Arc<Download>, (B, G)>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
        G: Send + 'static,
    {
        let reserved = length.unwrap_or(0);
        if !self.store.reserve(reserved) {
            return Err((body, guard));
        }
        let tmp = self.store.root.join("tmp").join(format!(
            "{}-{}.{}.{}",
            self.digest.algorithm().name(),
            self.digest.hex(),
            std::process::id(),
            next_tmp_sequence()
        ));
        let path = tmp.clone();
        let created = tokio::task::spawn_blocking(move || create(&path, length)).await;
        let file = match created {
            Ok(Ok(file)) => Arc::new(file),
            Ok(Err(e)) => {
                self.store.disk_error("creating a download file failed", &e);
                let _ = std::fs::remove_file(&tmp);
                self.store.unreserve(reserved);
                return Err((body, guard));
            }
            Err(_) => {
                self.store.unreserve(reserved);
                return Err((body, guard));
            }
        };
        let (progress_tx, progress_rx) = watch::channel(Progress {
            written: 0,
            state: State::Writing,
        });
        let download = Arc::new(Download {
            digest: self.digest.clone(),
            file,
            length,
            progress: progress_rx,
        });
        if let Some(phase) = self.phase.take() {
            phase.send_replace(Phase::Started(Arc::clone(&download)));
        }
        let writer = Writer {
            store: Arc::clone(&self.store),
            download: Arc::clone(&download),
            progress: progress_tx,
            tmp,
            reserved,
        };
        tokio::spawn(async move {
            let _guard = guard;
            writer.run(body).await;
        });
        Ok(download)
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if let Some(phase) = self.phase.take() {
            phase.send_replace(Phase::Abandoned);
            self.store.finished(&self.digest);
        }
    }
}

/// Creates the temporary file (`0600`, new) and, knowing the length,
/// allocates its blocks now, so a full disk shows here and not halfway
/// through a client's pull.
fn create(path: &std::path::Path, length: Option<u64>) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path)?;
    #[cfg(target_os = "linux")]
    if let Some(length) = length.filter(|l| *l > 0) {
        use rustix::fs::{fallocate, FallocateFlags};
        match fallocate(&file, FallocateFlags::empty(), 0, length) {
            Ok(()) => {}
            // Filesystems without fallocate still take the writes.
            Err(rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = length;
    Ok(file)
}

/// Why a download failed.
enum Failure {
    /// The upstream body (its error, a wrong length, a wrong digest).
    Upstream(String),
    /// The disk.
    Disk(std::io::Error),
}

struct Writer {
    store: Arc<ContentStore>,
    download: Arc<Download>,
    progress: watch::Sender<Progress>,
    tmp: PathBuf,
    reserved: u64,
}

impl Writer {
    async fn run<B>(self, body: B)
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let digest = self.download.digest.clone();
        match self.copy(body).await {
            Ok(size) => {
                self.progress.send_modify(|p| p.state = State::Verified);
                self.commit(size).await;
            }
            Err(failure) => {
                let reason: Arc<str> = match &failure {
                    Failure::Upstream(reason) => reason.as_str().into(),
                    Failure::Disk(e) => format!("writing the content store failed: {e}").into(),
                };
                tracing::warn!(%digest, reason = %reason, "download into the content store failed; nothing stored");
                self.progress
                    .send_modify(|p| p.state = State::Failed(reason));
                if let Failure::Disk(e) = &failure {
                    self.store.disk_error("writing a download failed", e);
                }
                let _ = tokio::fs::remove_file(&self.tmp).await;
                self.store.unreserve(self.reserved);
            }
        }
        self.store.finished(&digest);
    }

    /// Copies the body into the file, hashing it; the size on a match.
    async fn copy<B>(&self, mut body: B) -> Result<u64, Failure>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let download = &self.download;
        let limit = download.length.unwrap_or(self.store.max_size);
        let mut hasher = Hasher::new(download.digest.algorithm());
        let mut buf = BytesMut::with_capacity(WRITE_CHUNK);
        let mut offset = 0u64;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Err(e)) => {
                    return Err(Failure::Upstream(format!("the upstream body failed: {e}")))
                }
                Some(Ok(frame)) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if offset + (buf.len() + data.len()) as u64 > limit {
                return Err(Failure::Upstream(format!(
                    "the upstream sent more than {limit} bytes ({})",
                    if download.length.is_some() {
                        "its Content-Length"
                    } else {
                        "cache.content.maxSize"
                    }
                )));
            }
            buf.extend_from_slice(&data);
            if buf.len() >= WRITE_CHUNK {
                let chunk = buf.split().freeze();
                let len = chunk.len() as u64;
                hasher = self.flush(chunk, offset, hasher).await?;
                offset += len;
            }
        }
        if !buf.is_empty() {
            let chunk = buf.split().freeze();
            let len = chunk.len() as u64;
            hasher = self.flush(chunk, offset, hasher).await?;
            offset += len;
        }
        if let Some(length) = download.length {
            if offset != length {
                return Err(Failure::Upstream(format!(
                    "the upstream sent {offset} bytes, its Content-Length said {length}"
                )));
            }
        }
        let actual = hasher.finish();
        if actual != download.digest {
            self.store.stats.mismatches.fetch_add(1, Ordering::Relaxed);
            return Err(Failure::Upstream(format!(
                "the upstream's bytes hash to {actual}, not {}",
                download.digest
            )));
        }
        Ok(offset)
    }

    /// Writes (and hashes) `chunk` at `offset` on a blocking thread, then
    /// tells readers how far the file goes.
    async fn flush(
        &self,
        chunk: Bytes,
        offset: u64,
        mut hasher: Hasher,
    ) -> Result<Hasher, Failure> {
        let file = self.download.file();
        let len = chunk.len() as u64;
        let (hasher, written) = tokio::task::spawn_blocking(move || {
            hasher.update(&chunk);
            let written = file.write_all_at(&chunk, offset);
            (hasher, written)
        })
        .await
        .map_err(|e| Failure::Disk(std::io::Error::other(e)))?;
        written.map_err(Failure::Disk)?;
        self.store
            .stats
            .bytes_downloaded
            .fetch_add(len, Ordering::Relaxed);
        self.progress.send_modify(|p| p.written = offset + len);
        Ok(hasher)
    }

    /// Flushes the file, renames it into `blobs/` and records it.
    async fn commit(&self, size: u64) {
        let file = self.download.file();
        let tmp = self.tmp.clone();
        let target = self.store.blob_path(&self.download.digest);
        let done = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            file.sync_data()?;
            // The reserved blocks past the end, if the file came out
            // shorter (it cannot: the length was checked).
            file.set_len(size)?;
            std::fs::rename(&tmp, &target)?;
            if let Some(dir) = target.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await;
        match done {
            Ok(Ok(())) => self
                .store
                .committed(&self.download.digest, self.reserved, size),
            Ok(Err(e)) => {
                self.store
                    .disk_error("storing a downloaded blob failed", &e);
                let _ = tokio::fs::remove_file(&self.tmp).await;
                self.store.unreserve(self.reserved);
            }
            Err(_) => {
                let _ = tokio::fs::remove_file(&self.tmp).await;
                self.store.unreserve(self.reserved);
            }
        }
    }
}
