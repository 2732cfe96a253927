//! Reading the store: a stored blob (whole or a range), or a download as
//! it grows. Each body is fed by a task that reads the file in
//! [`READ_CHUNK`]s on blocking threads into a channel of
//! [`READ_AHEAD`] chunks, so memory per client is flat and the task ends
//! when the client goes away.
//!
//! Not `sendfile(2)`: a response body goes through hyper (and rustls on a
//! TLS listener), which writes buffers it owns, so the closest safe
//! equivalent is large positional reads from the page cache straight into
//! the buffers hyper sends.
//!
//! The request that leads a download gets the upstream's frames straight
//! from the download ([`lead`]), one frame behind, and the rest from the
//! file. Neither it nor the followers of a download ever get its last byte
//! before the whole file hashed to the digest: a download that turns out
//! wrong ends their responses short (an error), so no client can accept a
//! corrupt blob.

use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::buffers;
use super::download::{Download, State, Tee};
use super::ContentStore;
use crate::oci::{Digest, Hasher};

/// Bytes read from the file at a time.
pub const READ_CHUNK: usize = 1024 * 1024;

/// Chunks read ahead of the client, per response.
pub const READ_AHEAD: usize = 2;

/// Why a body from the store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error("reading the content store failed: {0}")]
    Disk(Arc<str>),
    #[error("the stored blob {digest} no longer matches its digest (got {actual}); removed from the store")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("the download of {digest} failed: {reason}")]
    DownloadFailed { digest: Digest, reason: Arc<str> },
}

/// A blob in the store, opened.
#[derive(Debug)]
pub struct StoredBlob {
    store: Arc<ContentStore>,
    digest: Digest,
    file: Arc<std::fs::File>,
    size: u64,
}

impl StoredBlob {
    pub(super) fn new(
        store: Arc<ContentStore>,
        digest: Digest,
        file: Arc<std::fs::File>,
        size: u64,
    ) -> StoredBlob {
        StoredBlob {
            store,
            digest,
            file,
            size,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Whether the store hashes blobs again when they are read.
    pub fn verifies_on_read(&self) -> bool {
        self.store.verify_on_read()
    }

    /// Hashes the whole file; a mismatch removes it from the store.
    pub async fn check(&self) -> Result<(), ReadError> {
        let file = Arc::clone(&self.file);
        let size = self.size;
        let algorithm = self.digest.algorithm();
        let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<Digest> {
            let mut hasher = Hasher::new(algorithm);
            let mut buf = vec![0u8; READ_CHUNK];
            let mut at = 0u64;
            while at < size {
                let n = (size - at).min(READ_CHUNK as u64) as usize;
                file.read_exact_at(&mut buf[..n], at)?;
                hasher.update(&buf[..n]);
                at += n as u64;
            }
            Ok(hasher.finish())
        })
        .await
        .map_err(|e| ReadError::Disk(e.to_string().into()))?
        .map_err(|e| ReadError::Disk(e.to_string().into()))?;
        if hashed != self.digest {
            self.store.corrupt(&self.digest, &hashed);
            return Err(ReadError::Corrupt {
                digest: self.digest.clone(),
                actual: hashed,
            });
        }
        Ok(())
    }

    /// The bytes `first..=last` (the whole blob when `range` is `None`).
    /// With `verifyOnRead`, a whole blob is hashed as it is sent and its
    /// last chunk held back until it matched; a range is served only after
    /// [`StoredBlob::check`].
    pub fn body(self, range: Option<(u64, u64)>) -> StoreBody {
        let (first, end) = match range {
            Some((first, last)) => (first, last.saturating_add(1).min(self.size)),
            None => (0, self.size),
        };
        let verify = (self.store.verify_on_read() && range.is_none())
            .then(|| Hasher::new(self.digest.algorithm()));
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        tokio::spawn(send_stored(self, first, end, verify, tx));
        StoreBody::new(rx, end.saturating_sub(first))
    }
}

/// Reads `len` bytes (at most [`READ_CHUNK`]) at `at` on a blocking thread, hashing them into
/// `hasher` if there is one.
async fn read_chunk(
    file: &Arc<std::fs::File>,
    at: u64,
    len: usize,
    hasher: Option<Hasher>,
) -> Result<(Bytes, Option<Hasher>), ReadError> {
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || {
        let mut buf = buffers::take();
        let filled = buf.fill(len);
        file.read_exact_at(filled, at)?;
        let mut hasher = hasher;
        if let Some(h) = hasher.as_mut() {
            h.update(filled);
        }
        Ok((buf.freeze(), hasher))
    })
    .await
    .map_err(|e| ReadError::Disk(e.to_string().into()))?
    .map_err(|e: std::io::Error| ReadError::Disk(e.to_string().into()))
}

type Sender = mpsc::Sender<Result<Bytes, ReadError>>;

async fn send_stored(
    blob: StoredBlob,
    first: u64,
    end: u64,
    mut verify: Option<Hasher>,
    tx: Sender,
) {
    let mut at = first;
    let mut held: Option<Bytes> = None;
    while at < end {
        let len = (end - at).min(READ_CHUNK as u64) as usize;
        let (chunk, hasher) = match read_chunk(&blob.file, at, len, verify.take()).await {
            Ok(read) => read,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        verify = hasher;
        at += len as u64;
        blob.store
            .stats
            .bytes_from_store
            .fetch_add(len as u64, Ordering::Relaxed);
        let ready = if verify.is_some() {
            held.replace(chunk)
        } else {
            Some(chunk)
        };
        if let Some(chunk) = ready {
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    }
    if let Some(hasher) = verify {
        let actual = hasher.finish();
        if actual != blob.digest {
            blob.store.corrupt(&blob.digest, &actual);
            let _ = tx
                .send(Err(ReadError::Corrupt {
                    digest: blob.digest.clone(),
                    actual,
                }))
                .await;
            return;
        }
    }
    if let Some(chunk) = held {
        let _ = tx.send(Ok(chunk)).await;
    }
}

/// The body of a download as it is written: everything written so far but
/// the last byte, which waits for the digest to match.
pub fn follow(download: &Arc<Download>) -> StoreBody {
    StoreBody::with_source(Source::File(following_from(download, 0)), download.length())
}

/// The body of a download for the request that leads it: the upstream's
/// frames as they arrive, each sent once the next one came (so the last is
/// never sent from here), then — when the frames stop, because the
/// download ended or let this request go — the file from where they
/// stopped, which waits for the digest to match.
pub fn lead(tee: Tee) -> StoreBody {
    let total = tee.download.length();
    let source = Source::Tee {
        download: tee.download,
        frames: tee.frames,
        held: None,
        sent: 0,
    };
    StoreBody::with_source(source, total)
}

/// A task reading the download's file from `at` into a new channel.
fn following_from(download: &Arc<Download>, at: u64) -> mpsc::Receiver<Result<Bytes, ReadError>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(send_following(Arc::clone(download), tx, at));
    rx
}

async fn send_following(download: Arc<Download>, tx: Sender, mut at: u64) {
    let file = download.file();
    let mut progress = download.progress();
    loop {
        let (written, state) = {
            let p = progress.borrow_and_update();
            (p.written, p.state.clone())
        };
        let limit = match &state {
            State::Verified => written,
            State::Writing => written.saturating_sub(1),
            // Nothing stored: only the leading request had the bytes.
            State::Passed => {
                let reason = "the content store's disk failed during the download";
                return failed(&download, &tx, reason.into()).await;
            }
            State::Failed(reason) => return failed(&download, &tx, Arc::clone(reason)).await,
        };
        if at < limit {
            let len = (limit - at).min(READ_CHUNK as u64) as usize;
            match read_chunk(&file, at, len, None).await {
                Ok((chunk, _)) => {
                    at += len as u64;
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            continue;
        }
        if matches!(state, State::Verified) {
            return;
        }
        if progress.changed().await.is_err() && matches!(progress.borrow().state, State::Writing) {
            return failed(&download, &tx, "the download stopped".into()).await;
        }
    }
}

/// Tells a reader of `download` that it failed, and why.
async fn failed(download: &Download, tx: &Sender, reason: Arc<str>) {
    let digest = download.digest().clone();
    let _ = tx
        .send(Err(ReadError::DownloadFailed { digest, reason }))
        .await;
}

/// Where a [`StoreBody`]'s bytes come from.
#[derive(Debug)]
enum Source {
    /// A task reading the file.
    File(mpsc::Receiver<Result<Bytes, ReadError>>),
    /// A download's frames, for the request leading it.
    Tee {
        download: Arc<Download>,
        frames: mpsc::Receiver<Bytes>,
        /// The frame received last, sent once another follows it.
        held: Option<Bytes>,
        /// Bytes sent so far.
        sent: u64,
    },
    /// Every byte was sent.
    Ended,
}

/// A response body fed from the store.
#[derive(Debug)]
pub struct StoreBody {
    source: Source,
    /// Bytes still to come, when known.
    remaining: Option<u64>,
    done: bool,
}

impl StoreBody {
    fn new(rx: mpsc::Receiver<Result<Bytes, ReadError>>, len: u64) -> StoreBody {
        StoreBody::with_source(Source::File(rx), Some(len))
    }

    fn with_source(source: Source, len: Option<u64>) -> StoreBody {
        StoreBody {
            source,
            remaining: len,
            done: len == Some(0),
        }
    }

    /// The next chunk from the source (`None`: the source ended).
    fn poll_source(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ReadError>>> {
        loop {
            match &mut self.source {
                Source::File(rx) => return rx.poll_recv(cx),
                Source::Ended => return Poll::Ready(None),
                Source::Tee {
                    download,
                    frames,
                    held,
                    sent,
                } => match frames.poll_recv(cx) {
                    Poll::Pending => return Poll::Pending,
                    // Never hold an empty frame: the one held is what
                    // keeps the last byte back.
                    Poll::Ready(Some(frame)) if frame.is_empty() => {}
                    Poll::Ready(Some(frame)) => {
                        if let Some(ready) = held.replace(frame) {
                            *sent += ready.len() as u64;
                            return Poll::Ready(Some(Ok(ready)));
                        }
                    }
                    // This request got every frame, and they matched the
                    // digest: the held one is the last (also when the disk
                    // failed and the download went on for it alone).
                    Poll::Ready(None) if download.leader_checked() => {
                        let last = held.take();
                        self.source = Source::Ended;
                        if let Some(last) = last {
                            return Poll::Ready(Some(Ok(last)));
                        }
                    }
                    // The held frame is read again from the file, once the
                    // download says how it ended.
                    Poll::Ready(None) => {
                        let rx = following_from(download, *sent);
                        self.source = Source::File(rx);
                    }
                },
            }
        }
    }
}

impl Body for StoreBody {
    type Data = Bytes;
    type Error = ReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReadError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.poll_source(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.done = true;
                match this.remaining {
                    Some(left) if left > 0 => Poll::Ready(Some(Err(ReadError::Disk(
                        format!("the store's reader stopped {left} bytes short").into(),
                    )))),
                    _ => Poll::Ready(None),
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(left) = this.remaining.as_mut() {
                    *left = left.saturating_sub(chunk.len() as u64);
                    if *left == 0 {
                        this.done = true;
                    }
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}
