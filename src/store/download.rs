//! One download into the store: the leader's upstream body, written to a
//! file in `tmp/`, hashed as it arrives, renamed into `blobs/` once its
//! digest matched and it was flushed. The request that leads the download
//! gets the upstream's frames as they arrive (a [`Tee`]), as it would
//! without a store; the others follow the file as it grows
//! ([`super::read`]). The task belongs to none of them: a leader that goes
//! away or falls behind is let go, and follows the file from where it was.
//! Each frame is hashed on arrival, while it is still in the CPU's cache
//! (as the pass-through path hashes it); writing runs one chunk behind
//! reading, on a blocking thread, so the disk never holds up the upstream
//! connection.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{ContentStore, Phase};
use crate::oci::{Digest, Hasher};

/// Bytes gathered from the upstream (as the frames it sent, not copied)
/// before each write on a blocking thread: one thread hop per 256 KiB. At
/// most two such chunks per download are held (one written while the next
/// is read), and downloads are bounded by `limits.upstreamFetches`. Small
/// enough that the allocator reuses the frames' memory: with 1 MiB chunks
/// a cold 256 MiB pull took two to three times the page faults of a
/// pass-through one and about 0.05 CPU-s more (measured with perf).
const WRITE_CHUNK: usize = 256 * 1024;

/// How much is written between two flushes to disk during a download. The
/// file must be on disk before it is renamed into `blobs/` (a power loss
/// must not leave a named file with missing bytes); flushing as it goes,
/// on a blocking thread beside the writes, spreads that work over the
/// download, so the flush before the rename is short and does not land on
/// the disk at the moment the client, which got the last byte, flushes
/// its own copy (skopeo's `dir:` and containerd's content store do).
const FLUSH_EVERY: u64 = 16 * 1024 * 1024;

/// Upstream frames queued for the leading request.
const TEE_FRAMES: usize = 16;

/// How long the download waits for a leading request whose queue is full
/// before it lets that request go (it then reads the file, at its own
/// pace): a slow client never slows the download the others follow.
const TEE_STALL: std::time::Duration = std::time::Duration::from_millis(100);

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
    /// Every frame reached the leading request, and together they hashed
    /// to the digest: it may send the frame it holds back, without
    /// waiting for the file.
    pub leader_checked: bool,
}

#[derive(Debug, Clone)]
pub enum State {
    Writing,
    /// All bytes are in the file and hashed to the digest.
    Verified,
    /// The download failed (the reason); nothing will be stored.
    Failed(Arc<str>),
    /// The disk failed during the download, which went on for the leading
    /// request alone: every byte it was handed hashed to the digest, and
    /// nothing is stored. Readers of the file fail, as with `Failed`.
    Passed,
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

    /// Whether nothing will be stored: the download failed, or goes on
    /// for its leading request alone.
    pub(super) fn failed(&self) -> bool {
        matches!(
            self.progress.borrow().state,
            State::Failed(_) | State::Passed
        )
    }

    /// Whether every frame reached the leading request and they hashed
    /// to the digest ([`Progress::leader_checked`]).
    pub(super) fn leader_checked(&self) -> bool {
        self.progress.borrow().leader_checked
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
    /// upstream fetch slots) until the download ends or `deadline` passes
    /// (then it fails, and nothing is stored). The [`Tee`] carries the
    /// upstream's frames to the leading request. Gives `body` and `guard`
    /// back if the store cannot take it: larger than `maxSize`, or a disk
    /// error (no space for `length`).
    pub async fn start<B, G>(
        mut self,
        body: B,
        length: Option<u64>,
        deadline: Instant,
        guard: G,
    ) -> Result<(Arc<Download>, Tee), (B, G)>
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
            leader_checked: false,
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
        let (tee_tx, tee_rx) = mpsc::channel(TEE_FRAMES);
        let writer = Writer {
            store: Arc::clone(&self.store),
            download: Arc::clone(&download),
            progress: progress_tx,
            tmp,
            reserved,
        };
        tokio::spawn(async move {
            let _guard = guard;
            writer.run(body, tee_tx, deadline).await;
        });
        let tee = Tee {
            download: Arc::clone(&download),
            frames: tee_rx,
        };
        Ok((download, tee))
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

/// The upstream's frames of a download, for the request that leads it, as
/// they arrive ([`super::read::lead`] turns them into a response body).
/// The frames stop (the channel closes) when the download ends or lets the
/// leader go; the rest, and the last byte in every case, comes from the
/// file once the digest matched.
#[derive(Debug)]
pub struct Tee {
    pub(super) download: Arc<Download>,
    pub(super) frames: mpsc::Receiver<Bytes>,
}

/// How a download that did not fail ended.
enum Copied {
    /// In the file, flushed, matched the digest: its size.
    Stored(u64),
    /// The disk failed; the leading request got every byte, which matched
    /// the digest; nothing to store.
    Passed,
}

/// Why a download failed.
enum Failure {
    /// The upstream body (its error, a wrong length, a wrong digest).
    Upstream(String),
    /// The disk.
    Disk(std::io::Error),
    /// The disk failed (already counted), and the leading request, for
    /// which the download went on, went away.
    Abandoned(std::io::Error),
}

/// Frames from the upstream, to be written together.
#[derive(Default)]
struct Chunk {
    frames: Vec<Bytes>,
    len: u64,
}

impl Chunk {
    fn push(&mut self, frame: Bytes) {
        self.len += frame.len() as u64;
        self.frames.push(frame);
    }
}

/// Flushes of a download's file while it is written: one at a time, each
/// started once [`FLUSH_EVERY`] more bytes were written.
#[derive(Default)]
struct Flusher {
    running: Option<JoinHandle<std::io::Result<()>>>,
    /// Where the file ended when the last flush started.
    started_at: u64,
}

impl Flusher {
    /// Starts a flush when enough was written since the last one and none
    /// is running; the error of one that ended in failure.
    async fn maybe_start(&mut self, download: &Download, written: u64) -> Result<(), Failure> {
        if written < self.started_at + FLUSH_EVERY {
            return Ok(());
        }
        if let Some(running) = &self.running {
            if !running.is_finished() {
                return Ok(());
            }
        }
        // Finished: this does not wait.
        self.finish().await?;
        let file = download.file();
        self.running = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        self.started_at = written;
        Ok(())
    }

    /// Waits for the flush running, if any.
    async fn finish(&mut self) -> Result<(), Failure> {
        match self.running.take() {
            Some(running) => match running.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Failure::Disk(e)),
                Err(e) => Err(Failure::Disk(std::io::Error::other(e))),
            },
            None => Ok(()),
        }
    }
}

/// A chunk written: where the file now ends.
struct Written {
    end: u64,
    len: u64,
    result: std::io::Result<()>,
}

/// Hands `data` to the leading request: at once when its queue has room,
/// else after at most [`TEE_STALL`]. `None` when the request is gone or
/// was let go (it then follows the file).
async fn pass_on(tee: mpsc::Sender<Bytes>, data: Bytes) -> Option<mpsc::Sender<Bytes>> {
    match tee.try_send(data) {
        Ok(()) => Some(tee),
        Err(mpsc::error::TrySendError::Closed(_)) => None,
        Err(mpsc::error::TrySendError::Full(data)) => {
            match tokio::time::timeout(TEE_STALL, tee.send(data)).await {
                Ok(Ok(())) => Some(tee),
                _ => None,
            }
        }
    }
}

struct Writer {
    store: Arc<ContentStore>,
    download: Arc<Download>,
    progress: watch::Sender<Progress>,
    tmp: PathBuf,
    reserved: u64,
}

impl Writer {
    async fn run<B>(self, body: B, tee: mpsc::Sender<Bytes>, deadline: Instant)
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let digest = self.download.digest.clone();
        let copied = match tokio::time::timeout_at(deadline, self.copy(body, tee)).await {
            Ok(copied) => copied,
            Err(_) => Err(Failure::Upstream(
                "the download ran past timeouts.download".to_string(),
            )),
        };
        match copied {
            Ok(Copied::Stored(size)) => {
                self.progress.send_modify(|p| p.state = State::Verified);
                self.commit(size).await;
            }
            // Already said (before the leader's frames ended); counted as
            // a disk error when it happened.
            Ok(Copied::Passed) => {
                tracing::warn!(%digest, "the content store's disk failed during a download; the leading request got the upstream's verified bytes, nothing stored");
                let _ = tokio::fs::remove_file(&self.tmp).await;
                self.store.unreserve(self.reserved);
            }
            Err(failure) => {
                let reason: Arc<str> = match &failure {
                    Failure::Upstream(reason) => reason.as_str().into(),
                    Failure::Disk(e) => format!("writing the content store failed: {e}").into(),
                    Failure::Abandoned(e) => format!(
                        "writing the content store failed ({e}), and the request leading the download went away"
                    )
                    .into(),
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

    /// Copies the body into the file, hashing it, and hands each frame to
    /// the leading request first.
    ///
    /// When the disk fails (a write or a flush), the download goes on for
    /// the leading request alone, as a pull without a store would: the
    /// frames still reach it, hashed, now waiting for it however slow it
    /// is (it can no longer be let go to the file, within
    /// `timeouts.download` still), and its last byte is released only if
    /// the digest matched ([`Copied::Passed`]). Requests following the
    /// file are told the download failed. Without a leading request the
    /// disk error ends the download.
    async fn copy<B>(&self, mut body: B, tee: mpsc::Sender<Bytes>) -> Result<Copied, Failure>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let download = &self.download;
        let limit = download.length.unwrap_or(self.store.max_size);
        let mut tee = Some(tee);
        let mut hasher = Hasher::new(download.digest.algorithm());
        // The chunk being written while the next one is read.
        let mut writing: Option<JoinHandle<Written>> = None;
        let mut chunk = Chunk::default();
        let mut received = 0u64;
        let mut offset = 0u64;
        let mut flusher = Flusher::default();
        // Set once the disk failed: nothing is written from then on.
        let mut disk: Option<std::io::Error> = None;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Err(e)) => {
                    return Err(Failure::Upstream(format!("the upstream body failed: {e}")))
                }
                Some(Ok(frame)) => frame,
            };
            // Empty frames carry nothing, and would break the leader's
            // hold-back: it holds the frame received last, so an empty
            // frame after the real last one (an HTTP/2 upstream can send
            // one) would release the last byte before the digest matched.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            received += data.len() as u64;
            if received > limit {
                return Err(Failure::Upstream(format!(
                    "the upstream sent more than {limit} bytes ({})",
                    if download.length.is_some() {
                        "its Content-Length"
                    } else {
                        "cache.content.maxSize"
                    }
                )));
            }
            hasher.update(&data);
            if let Some(sender) = tee.take() {
                tee = match disk {
                    None => pass_on(sender, data.clone()).await,
                    Some(_) => sender.send(data.clone()).await.ok().map(|()| sender),
                };
            }
            if let Some(e) = disk.take() {
                match tee {
                    Some(_) => disk = Some(e),
                    None => return Err(Failure::Abandoned(e)),
                }
                continue;
            }
            chunk.push(data);
            if chunk.len >= WRITE_CHUNK as u64 {
                let step = async {
                    self.written(writing.take()).await?;
                    flusher.maybe_start(&self.download, offset).await
                };
                match step.await {
                    Ok(()) => {
                        let full = std::mem::take(&mut chunk);
                        let len = full.len;
                        writing = Some(self.write(full, offset));
                        offset += len;
                    }
                    Err(Failure::Disk(e)) => {
                        disk = Some(self.degrade(e, tee.is_some())?);
                        chunk = Chunk::default();
                    }
                    Err(other) => return Err(other),
                }
            }
        }
        if let Some(length) = download.length {
            if received != length {
                return Err(Failure::Upstream(format!(
                    "the upstream sent {received} bytes, its Content-Length said {length}"
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
        // Every frame reached the leading request and they hashed to the
        // digest: it sends its last one now, as a pull without a store
        // would, not after the rest is written and flushed (said before
        // its frames end, so it sees it then).
        if let Some(sender) = tee.take() {
            self.progress.send_modify(|p| p.leader_checked = true);
            drop(sender);
        }
        if disk.is_none() {
            let rest = async {
                self.written(writing.take()).await?;
                if chunk.len > 0 {
                    let len = chunk.len;
                    let handle = self.write(std::mem::take(&mut chunk), offset);
                    self.written(Some(handle)).await?;
                    offset += len;
                }
                flusher.finish().await
            };
            // The leading request is served: a disk error now only means
            // nothing is stored.
            rest.await?;
        }
        match disk {
            None => Ok(Copied::Stored(offset)),
            Some(_) => {
                self.progress.send_modify(|p| p.state = State::Passed);
                Ok(Copied::Passed)
            }
        }
    }

    /// The disk failed (`e`) during the download. With the request leading
    /// it still on the frames (`leading`), the download goes on for it
    /// alone: the error is counted, requests following the file are told
    /// it failed, and it is given back to be kept. Otherwise it ends the
    /// download.
    fn degrade(&self, e: std::io::Error, leading: bool) -> Result<std::io::Error, Failure> {
        if !leading {
            return Err(Failure::Disk(e));
        }
        self.store.disk_error(
            "writing a download failed; it goes on for the request leading it, nothing stored",
            &e,
        );
        let reason: Arc<str> = format!("writing the content store failed: {e}").into();
        self.progress
            .send_modify(|p| p.state = State::Failed(reason));
        Ok(e)
    }

    /// Starts writing `chunk` at `offset` on a blocking thread.
    fn write(&self, chunk: Chunk, offset: u64) -> JoinHandle<Written> {
        let file = self.download.file();
        tokio::task::spawn_blocking(move || {
            let mut at = offset;
            let mut result = Ok(());
            for frame in &chunk.frames {
                result = file.write_all_at(frame, at);
                if result.is_err() {
                    break;
                }
                at += frame.len() as u64;
            }
            Written {
                end: offset + chunk.len,
                len: chunk.len,
                result,
            }
        })
    }

    /// Waits for the chunk being written, if there is one, then tells
    /// readers how far the file goes.
    async fn written(&self, writing: Option<JoinHandle<Written>>) -> Result<(), Failure> {
        let Some(handle) = writing else {
            return Ok(());
        };
        let done = handle
            .await
            .map_err(|e| Failure::Disk(std::io::Error::other(e)))?;
        done.result.map_err(Failure::Disk)?;
        self.store
            .stats
            .bytes_downloaded
            .fetch_add(done.len, Ordering::Relaxed);
        self.progress.send_modify(|p| p.written = done.end);
        Ok(())
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
